//! Rollouts for DPO and GRPO, and preference pairs for DPO: K sampled programs per training image from
//! the current policy, executed in the sandbox and scored by IoU against the target's cached solid
//! (or by the image score against the image); then pairs (chosen = better, rejected = worse by at
//! least a margin) chosen by a configurable strategy.
//!
//! Generation runs on the model's backend; execution runs in parallel (rayon) in the sandbox
//! ([`crate::exec`], the wasm guest by default, since the programs are model output). Pair selection
//! and hard-example mining are pure functions of the rewards (and a seed), tested below.

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::policy::Policy;
use super::{TrainError, ioerr};
use crate::data::Sample;
use crate::exec::{self, Executor, SandboxConfig};
use crate::geom::Normalize;
use crate::model::generate::GenerateConfig;

/// How programs are sampled and scored (`[dpo.rollout]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Programs sampled per image.
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Rows per generation batch (images × k).
    pub batch: usize,
    /// Reward of a program that does not execute to a solid (IoU is in [0, 1]).
    pub invalid_reward: f64,
    /// Normalisation of the IoU reward (`unitcube` as in cadrille).
    pub normalize: Normalize,
    /// What a sample is rewarded by: `iou` against the image's target program, or `image`: the
    /// image score of its render against the training image (no program needed; see
    /// [`crate::geom::imscore`]), so that preference data can come from images alone.
    pub reward: RewardKind,
    /// The image reward's score settings and render size.
    pub image_score: crate::geom::imscore::ImageScoreConfig,
    pub render_size: u32,
    /// Also score each image's target program as a candidate (reward: its IoU with itself), so that
    /// an image whose samples all score the same (e.g. none executes) still gives a pair.
    pub include_target: bool,
    /// The executor of the programs: the recipe's `[sandbox]` (wasm by default: model output is untrusted).
    #[serde(skip)]
    pub sandbox: SandboxConfig,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            k: 8,
            temperature: 1.0,
            top_p: 0.95,
            max_new_tokens: 448,
            batch: 32,
            invalid_reward: -0.5,
            normalize: Normalize::UnitCube,
            include_target: false,
            reward: RewardKind::Iou,
            image_score: Default::default(),
            render_size: 128,
            sandbox: SandboxConfig::DEFAULT,
        }
    }
}

/// What a rollout is rewarded by (`[dpo.rollout] reward`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// IoU (`normalize`) against the image's target program.
    #[default]
    Iou,
    /// Image score of the program's render against the training image.
    Image,
}

/// One sampled, executed and scored program.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rollout {
    /// The image's id.
    pub id: String,
    /// Index of the image in the round's image list.
    pub image: usize,
    pub program: String,
    /// Whether generation ended with `<|end|>` (else the length limit cut it).
    pub finished: bool,
    /// IoU (or image score, with `reward = "image"`) if the program executed, else the configured
    /// `invalid_reward`.
    pub reward: f64,
    /// IoU against the target program, when the image has one (with the image reward: for
    /// monitoring only).
    pub iou: Option<f64>,
    /// `syntax`, `runtime`, `timeout`, ... (`None` when the program executed).
    pub failure: Option<String>,
    /// DPO round and the policy's optimizer step when it was sampled.
    pub round: usize,
    pub policy_step: usize,
}

/// Sample `cfg.k` programs per image with `policy`, execute them with `executor` and score them
/// against each image's target (plus the target itself with `include_target`). Targets that
/// themselves fail to execute are skipped (with a note on stderr).
pub fn sample_rollouts(
    policy: &dyn Policy,
    images: &[Sample],
    cfg: &RolloutConfig,
    executor: &dyn Executor,
    seed: u64,
    round: usize,
    policy_step: usize,
) -> Result<Vec<Rollout>, TrainError> {
    let k = cfg.k.max(1);
    // one generation call per batch of images, seeded by the batch's first image
    let per_batch = (cfg.batch / k).max(1);
    let mut programs = Vec::with_capacity(images.len() * k);
    for (c, chunk) in images.chunks(per_batch).enumerate() {
        let first = (c * per_batch) as u64;
        let gen_cfg = GenerateConfig {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            seed: seed ^ first.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            threads: 0,
        };
        let refs: Vec<&Sample> = chunk.iter().collect();
        programs.extend(policy.generate(&refs, k, &gen_cfg, cfg.batch, &mut |_| {})?);
    }
    let mut out = Vec::with_capacity(images.len() * (k + 1));
    for (i, image) in images.iter().enumerate() {
        let has_target = !image.program.trim().is_empty();
        let target = if has_target {
            match exec::Reward::new(executor, &image.program, cfg.normalize) {
                Ok(t) => Some(t),
                Err(f) if cfg.reward == RewardKind::Iou => {
                    eprintln!(
                        "rollout: target {} does not execute ({f}); image skipped",
                        image.id
                    );
                    continue;
                }
                Err(_) => None,
            }
        } else if cfg.reward == RewardKind::Iou {
            eprintln!(
                "rollout: image {} has no target program (use reward = \"image\" for images alone); skipped",
                image.id
            );
            continue;
        } else {
            None
        };
        let mut rows: Vec<(&str, bool)> = programs[i * k..(i + 1) * k]
            .iter()
            .map(|g| (g.program.as_str(), g.finished))
            .collect();
        if cfg.include_target && has_target {
            rows.push((image.program.as_str(), true));
        }
        let texts: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let ious: Vec<exec::Outcome> = match &target {
            Some(t) => t.score_batch(&texts),
            None => texts.iter().map(|p| executor.execute(p)).collect(),
        };
        let image_rewards: Option<Vec<Result<f64, String>>> = match cfg.reward {
            RewardKind::Iou => None,
            RewardKind::Image => {
                let rgb = crate::geom::render::RgbImage {
                    width: image.width as u32,
                    height: image.height as u32,
                    pixels: image.rgb.clone(),
                };
                let Some(goal) = crate::geom::imscore::normalize(&rgb, cfg.image_score.side) else {
                    eprintln!("rollout: image {} has no foreground; skipped", image.id);
                    continue;
                };
                Some(image_rewards(executor, &goal, &texts, cfg))
            }
        };
        for (j, ((program, finished), o)) in rows.iter().zip(ious).enumerate() {
            let iou = o.iou();
            let (reward, failure) = match &image_rewards {
                None => (
                    iou.unwrap_or(cfg.invalid_reward),
                    o.failure_kind().map(|f| f.as_str().to_string()),
                ),
                Some(r) => match &r[j] {
                    Ok(v) => (*v, None),
                    Err(kind) => (cfg.invalid_reward, Some(kind.clone())),
                },
            };
            out.push(Rollout {
                id: image.id.clone(),
                image: i,
                program: program.to_string(),
                finished: *finished,
                reward,
                iou,
                failure,
                round,
                policy_step,
            });
        }
    }
    Ok(out)
}

/// The images and rollouts of one round of an on-policy loop (DPO, GRPO): `n` images of `pool` drawn
/// by [`round_images`], `cfg.k` samples each from `policy`; cached in `path` (a resumed run reads them
/// back instead of sampling again).
#[allow(clippy::too_many_arguments)]
pub fn round_rollouts(
    policy: &dyn Policy,
    pool: &[Sample],
    n: usize,
    cfg: &RolloutConfig,
    executor: &dyn Executor,
    seed: u64,
    round: usize,
    policy_step: usize,
    path: &Path,
    pb: &indicatif::ProgressBar,
) -> Result<(Vec<Sample>, Vec<Rollout>), TrainError> {
    let imgs: Vec<Sample> = round_images(pool.len(), n, seed, round)
        .iter()
        .map(|&i| pool[i].clone())
        .collect();
    if path.exists() {
        return Ok((imgs, read_rollouts(path)?));
    }
    pb.set_message(format!(
        "round {round}: sampling {} × {} programs",
        imgs.len(),
        cfg.k
    ));
    let (t, cpu0) = (std::time::Instant::now(), super::metrics::cpu_seconds());
    let rs = sample_rollouts(
        policy,
        &imgs,
        cfg,
        executor,
        seed ^ ((round as u64) << 32),
        round,
        policy_step,
    )?;
    write_rollouts(path, &rs)?;
    let wall = t.elapsed().as_secs_f64();
    let cores = match (cpu0, super::metrics::cpu_seconds()) {
        (Some(a), Some(b)) => format!(", CPU {:.2} cores", (b - a) / wall),
        _ => String::new(),
    };
    super::say(
        pb,
        format!("round {round}: {} rollouts in {wall:.1} s{cores}", rs.len(),),
    );
    Ok((imgs, rs))
}

/// Image-score rewards of `programs` against a normalised training image: each executed in the
/// sandbox and rendered (on all cores); failures give their failure kind.
fn image_rewards(
    executor: &dyn Executor,
    goal: &crate::geom::imscore::Normalized,
    programs: &[&str],
    cfg: &RolloutConfig,
) -> Vec<Result<f64, String>> {
    use rayon::prelude::*;
    let opts = crate::geom::render::RenderOptions {
        size: cfg.render_size,
        ..Default::default()
    };
    programs
        .par_iter()
        .map_init(crate::geom::csg::RayScratch::default, |scratch, p| {
            let (_, img) = exec::render_program(executor, p, &opts, scratch)
                .map_err(|f| f.kind.as_str().to_string())?;
            let n = crate::geom::imscore::normalize(&img, cfg.image_score.side)
                .ok_or_else(|| "no_result".to_string())?;
            Ok(crate::geom::imscore::score(goal, &n, cfg.image_score.edge_weight).total)
        })
        .collect()
}

/// Write rollouts as parquet (id, image, program, finished, reward, iou, failure, round, policy_step).
pub fn write_rollouts(path: &Path, rs: &[Rollout]) -> Result<(), TrainError> {
    use polars::prelude::*;
    let mut df = DataFrame::new(
        rs.len(),
        vec![
            Column::new(
                "id".into(),
                rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "image".into(),
                rs.iter().map(|r| r.image as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "program".into(),
                rs.iter().map(|r| r.program.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "finished".into(),
                rs.iter().map(|r| r.finished).collect::<Vec<_>>(),
            ),
            Column::new(
                "reward".into(),
                rs.iter().map(|r| r.reward).collect::<Vec<_>>(),
            ),
            Column::new("iou".into(), rs.iter().map(|r| r.iou).collect::<Vec<_>>()),
            Column::new(
                "failure".into(),
                rs.iter().map(|r| r.failure.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "round".into(),
                rs.iter().map(|r| r.round as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "policy_step".into(),
                rs.iter().map(|r| r.policy_step as u64).collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(|e| ioerr(path, e))?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| ioerr(d, e))?;
    }
    let tmp = path.with_extension("parquet.tmp");
    let f = std::fs::File::create(&tmp).map_err(|e| ioerr(&tmp, e))?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| ioerr(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ioerr(path, e))
}

/// Read rollouts written by [`write_rollouts`].
pub fn read_rollouts(path: &Path) -> Result<Vec<Rollout>, TrainError> {
    use polars::prelude::*;
    let f = std::fs::File::open(path).map_err(|e| ioerr(path, e))?;
    let df = ParquetReader::new(f).finish().map_err(|e| ioerr(path, e))?;
    let col = |n: &str| {
        df.column(n)
            .map_err(|e| ioerr(path, format!("column {n}: {e}")))
    };
    let id = col("id")?.str().map_err(|e| ioerr(path, e))?.clone();
    let image = col("image")?.u64().map_err(|e| ioerr(path, e))?.clone();
    let program = col("program")?.str().map_err(|e| ioerr(path, e))?.clone();
    let finished = col("finished")?.bool().map_err(|e| ioerr(path, e))?.clone();
    let reward = col("reward")?.f64().map_err(|e| ioerr(path, e))?.clone();
    let iou = col("iou")?.f64().map_err(|e| ioerr(path, e))?.clone();
    let failure = col("failure")?.str().map_err(|e| ioerr(path, e))?.clone();
    let round = col("round")?.u64().map_err(|e| ioerr(path, e))?.clone();
    let step = col("policy_step")?
        .u64()
        .map_err(|e| ioerr(path, e))?
        .clone();
    Ok((0..df.height())
        .map(|i| Rollout {
            id: id.get(i).unwrap_or("").to_string(),
            image: image.get(i).unwrap_or(0) as usize,
            program: program.get(i).unwrap_or("").to_string(),
            finished: finished.get(i).unwrap_or(false),
            reward: reward.get(i).unwrap_or(f64::NAN),
            iou: iou.get(i),
            failure: failure.get(i).map(str::to_string),
            round: round.get(i).unwrap_or(0) as usize,
            policy_step: step.get(i).unwrap_or(0) as usize,
        })
        .collect())
}

/// How chosen/rejected pairs are drawn from one image's scored samples.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PairStrategy {
    /// The best against the worst sample (one pair per image).
    #[default]
    BestVsWorst,
    /// Every pair whose rewards differ by at least the margin (capped per image).
    AllAboveMargin,
    /// Random pairs whose rewards differ by at least the margin, oriented by reward (cadrille).
    Random,
}

/// `[dpo.pairs]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PairConfig {
    pub strategy: PairStrategy,
    /// Least reward gap between chosen and rejected; groups without one are skipped.
    pub margin: f64,
    /// Most pairs per image (`all_above_margin`, `random`).
    pub max_per_image: usize,
    /// Hard-example mining: keep only images whose mean reward under the SFT policy is below this
    /// (None = keep all).
    pub hard_threshold: Option<f64>,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            strategy: PairStrategy::BestVsWorst,
            margin: 0.1,
            max_per_image: 4,
            hard_threshold: None,
        }
    }
}

/// A preference pair: indices into the rollout list (same image), `chosen` rewarded higher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    pub chosen: usize,
    pub rejected: usize,
}

/// Indices of `rollouts` grouped by image, groups in image order (pure).
pub fn groups(rollouts: &[Rollout]) -> Vec<Vec<usize>> {
    let mut m: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, r) in rollouts.iter().enumerate() {
        m.entry(r.image).or_default().push(i);
    }
    m.into_values().collect()
}

/// Pairs from one group of candidates `(index, reward, program)` (pure; `rng` only for `Random`).
/// Two candidates with the same program text never form a pair (their gradient would cancel).
pub fn select_group_pairs(
    cands: &[(usize, f64, &str)],
    cfg: &PairConfig,
    rng: &mut StdRng,
) -> Vec<Pair> {
    let ok = |a: &(usize, f64, &str), b: &(usize, f64, &str)| a.1 - b.1 >= cfg.margin && a.2 != b.2;
    let mut order: Vec<&(usize, f64, &str)> = cands.iter().collect();
    // best first; ties broken by index for determinism
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    match cfg.strategy {
        PairStrategy::BestVsWorst => {
            let (Some(best), Some(worst)) = (order.first(), order.last()) else {
                return Vec::new();
            };
            // the worst sample whose program differs from the best one
            let worst = if best.2 == worst.2 {
                order.iter().rev().find(|c| c.2 != best.2).copied()
            } else {
                Some(*worst)
            };
            match worst {
                Some(w) if ok(best, w) => vec![Pair {
                    chosen: best.0,
                    rejected: w.0,
                }],
                _ => Vec::new(),
            }
        }
        PairStrategy::AllAboveMargin => {
            let mut out = Vec::new();
            for (i, a) in order.iter().enumerate() {
                for b in order.iter().skip(i + 1).rev() {
                    if out.len() >= cfg.max_per_image {
                        return out;
                    }
                    if ok(a, b) {
                        out.push(Pair {
                            chosen: a.0,
                            rejected: b.0,
                        });
                    }
                }
            }
            out
        }
        PairStrategy::Random => {
            let mut all: Vec<Pair> = Vec::new();
            for (i, a) in order.iter().enumerate() {
                for b in order.iter().skip(i + 1) {
                    if ok(a, b) {
                        all.push(Pair {
                            chosen: a.0,
                            rejected: b.0,
                        });
                    }
                }
            }
            all.shuffle(rng);
            all.truncate(cfg.max_per_image);
            all
        }
    }
}

/// Pairs over all images of a round (pure given `seed`), skipping images not in `keep` when given.
pub fn select_pairs(
    rollouts: &[Rollout],
    cfg: &PairConfig,
    keep: Option<&std::collections::BTreeSet<String>>,
    seed: u64,
) -> Vec<Pair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for g in groups(rollouts) {
        if let Some(k) = keep
            && !k.contains(&rollouts[g[0]].id)
        {
            continue;
        }
        let cands: Vec<(usize, f64, &str)> = g
            .iter()
            .map(|&i| (i, rollouts[i].reward, rollouts[i].program.as_str()))
            .collect();
        out.extend(select_group_pairs(&cands, cfg, &mut rng));
    }
    out
}

/// Hard-example mining: ids of images whose mean reward is below `threshold` (pure).
pub fn hard_examples(rollouts: &[Rollout], threshold: f64) -> std::collections::BTreeSet<String> {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for r in rollouts {
        let e = sums.entry(r.id.as_str()).or_insert((0.0, 0));
        e.0 += r.reward;
        e.1 += 1;
    }
    sums.into_iter()
        .filter(|(_, (s, n))| *s / (*n as f64) < threshold)
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Summary of one round's rollouts: mean reward, VSR, mean IoU over all samples (failures as 0),
/// and the number of training pairs drawn from them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RolloutStats {
    pub n: usize,
    pub reward_mean: f64,
    pub vsr: f64,
    pub iou_mean_all: f64,
    pub pairs: usize,
}

pub fn rollout_stats(rs: &[Rollout], pairs: usize) -> RolloutStats {
    let n = rs.len().max(1) as f64;
    RolloutStats {
        n: rs.len(),
        reward_mean: rs.iter().map(|r| r.reward).sum::<f64>() / n,
        vsr: rs.iter().filter(|r| r.iou.is_some()).count() as f64 / n,
        iou_mean_all: rs.iter().map(|r| r.iou.unwrap_or(0.0)).sum::<f64>() / n,
        pairs,
    }
}

/// Images of a round: `n` of `pool` drawn without replacement by a seeded shuffle (all if `n` ≥ len).
pub fn round_images(pool_len: usize, n: usize, seed: u64, round: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..pool_len).collect();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (round as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    idx.shuffle(&mut rng);
    idx.truncate(n.min(pool_len));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_reward_ranks_renders_against_the_training_image() {
        let p = |w: f64, h: f64| {
            format!(
                "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, 0.5).lineTo(0.0, 0.5).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude({h})\nsolid=solid0\n"
            )
        };
        let truth = crate::cad::execute(&p(1.0, 0.2), &Default::default()).unwrap();
        let image = crate::geom::render::render(&truth, &Default::default()).unwrap();
        let goal = crate::geom::imscore::normalize(&image, 96).unwrap();
        let ex = exec::executor(&SandboxConfig::with_backend(exec::Backend::Native)).unwrap();
        let cfg = RolloutConfig {
            reward: RewardKind::Image,
            ..Default::default()
        };
        let progs = [
            p(1.0, 0.2),
            p(1.0, 0.3),
            p(0.3, 1.0),
            "import os".to_string(),
        ];
        let refs: Vec<&str> = progs.iter().map(|s| s.as_str()).collect();
        let r = image_rewards(ex.as_ref(), &goal, &refs, &cfg);
        let v: Vec<f64> = r[..3].iter().map(|x| *x.as_ref().unwrap()).collect();
        assert!(v[0] > 0.85 && v[0] > v[1] && v[1] > v[2], "{v:?}");
        assert_eq!(r[3].as_ref().unwrap_err(), "unsupported");
    }

    fn c(v: &[(f64, &'static str)]) -> Vec<(usize, f64, &'static str)> {
        v.iter().enumerate().map(|(i, &(r, p))| (i, r, p)).collect()
    }

    #[test]
    fn best_vs_worst_and_margin() {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = PairConfig {
            margin: 0.1,
            ..Default::default()
        };
        let g = c(&[(0.3, "a"), (0.9, "b"), (-0.5, "c"), (0.5, "d")]);
        assert_eq!(
            select_group_pairs(&g, &cfg, &mut rng),
            vec![Pair {
                chosen: 1,
                rejected: 2
            }]
        );
        // no margin: skipped
        let g = c(&[(0.50, "a"), (0.55, "b"), (0.52, "c")]);
        assert!(select_group_pairs(&g, &cfg, &mut rng).is_empty());
        // identical programs never pair; the worst *different* program is taken
        let g = c(&[(0.9, "x"), (0.2, "y"), (0.9, "x"), (-0.5, "x")]);
        assert_eq!(
            select_group_pairs(&g, &cfg, &mut rng),
            vec![Pair {
                chosen: 0,
                rejected: 1
            }]
        );
        assert!(select_group_pairs(&[], &cfg, &mut rng).is_empty());
    }

    #[test]
    fn all_above_margin_caps_and_orients() {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = PairConfig {
            strategy: PairStrategy::AllAboveMargin,
            margin: 0.2,
            max_per_image: 10,
            hard_threshold: None,
        };
        let g = c(&[(0.1, "a"), (0.9, "b"), (0.5, "c"), (0.45, "d")]);
        let p = select_group_pairs(&g, &cfg, &mut rng);
        // gaps ≥ 0.2: b>a, b>c, b>d, c>a, d>a
        let mut got: Vec<(usize, usize)> = p.iter().map(|p| (p.chosen, p.rejected)).collect();
        got.sort();
        assert_eq!(got, vec![(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)]);
        let capped = select_group_pairs(
            &g,
            &PairConfig {
                max_per_image: 2,
                ..cfg
            },
            &mut rng,
        );
        assert_eq!(capped.len(), 2);
        // the biggest gap comes first
        assert_eq!(
            capped[0],
            Pair {
                chosen: 1,
                rejected: 0
            }
        );
    }

    #[test]
    fn random_pairs_are_valid_and_seeded() {
        let cfg = PairConfig {
            strategy: PairStrategy::Random,
            margin: 0.1,
            max_per_image: 3,
            hard_threshold: None,
        };
        let g = c(&[(0.1, "a"), (0.9, "b"), (0.5, "c"), (0.3, "d"), (0.7, "e")]);
        let p1 = select_group_pairs(&g, &cfg, &mut StdRng::seed_from_u64(7));
        let p2 = select_group_pairs(&g, &cfg, &mut StdRng::seed_from_u64(7));
        assert_eq!(p1, p2);
        assert_eq!(p1.len(), 3);
        for p in &p1 {
            assert!(g[p.chosen].1 - g[p.rejected].1 >= 0.1 - 1e-12, "{p:?}");
        }
    }

    fn ro(id: &str, image: usize, reward: f64, p: &str) -> Rollout {
        Rollout {
            id: id.into(),
            image,
            program: p.into(),
            finished: true,
            reward,
            iou: (reward >= 0.0).then_some(reward),
            failure: (reward < 0.0).then(|| "syntax".to_string()),
            round: 0,
            policy_step: 0,
        }
    }

    #[test]
    fn select_pairs_over_images_and_hard_mining() {
        let rs = vec![
            ro("a", 0, 0.9, "p1"),
            ro("a", 0, 0.1, "p2"),
            ro("b", 1, 0.95, "q1"),
            ro("b", 1, 0.9, "q2"),
            ro("c", 2, -0.5, "r1"),
            ro("c", 2, 0.4, "r2"),
        ];
        let cfg = PairConfig::default();
        let p = select_pairs(&rs, &cfg, None, 0);
        assert_eq!(
            p,
            vec![
                Pair {
                    chosen: 0,
                    rejected: 1
                },
                Pair {
                    chosen: 5,
                    rejected: 4
                }
            ]
        );
        let hard = hard_examples(&rs, 0.6);
        assert_eq!(
            hard.iter().cloned().collect::<Vec<_>>(),
            vec!["a".to_string(), "c".to_string()]
        );
        let p = select_pairs(
            &rs,
            &cfg,
            Some(&[String::from("c")].into_iter().collect()),
            0,
        );
        assert_eq!(
            p,
            vec![Pair {
                chosen: 5,
                rejected: 4
            }]
        );
        let s = rollout_stats(&rs, p.len());
        assert!((s.vsr - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.iou_mean_all - (0.9 + 0.1 + 0.95 + 0.9 + 0.4) / 6.0).abs() < 1e-12);
    }

    #[test]
    fn rollouts_round_trip_parquet() {
        let rs = vec![ro("a", 0, 0.9, "p1"), ro("b", 1, -0.5, "bad")];
        let dir = std::env::temp_dir().join(format!("cadvlm-rollouts-{}", std::process::id()));
        let p = dir.join("r.parquet");
        write_rollouts(&p, &rs).unwrap();
        assert_eq!(read_rollouts(&p).unwrap(), rs);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn round_images_seeded_subset() {
        let a = round_images(10, 4, 3, 0);
        assert_eq!(a, round_images(10, 4, 3, 0));
        assert_ne!(a, round_images(10, 4, 3, 1));
        assert_eq!(a.len(), 4);
        assert_eq!(round_images(3, 10, 0, 0).len(), 3);
    }
}
