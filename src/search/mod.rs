//! Render-and-compare search at inference: from an image alone (no program, no ground truth), propose
//! programs with a [`Policy`] (greedy + K samples), execute each in the sandbox, render it in the
//! GenCAD-Code style, score the render against the image ([`crate::geom::imscore`]), keep the best,
//! then refine the best ones: coordinate descent over the program's numbers ([`params`]) with
//! shrinking steps, plus structural edits (drop a loop or a boolean, swap union and cut). Every
//! candidate costs one execution and one render (a "render" in the budget); identical programs are
//! scored once. Deterministic: the proposals come from the policy's seeded sampling, the refinement
//! has no randomness, and each image is searched on one thread.
//!
//! The search never returns a program that scores below the greedy one: the greedy program is a
//! candidate and the best-scoring candidate wins.

pub mod infer;
pub mod params;

use params::Param;

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::exec::{Executor, render_program};
use crate::geom::csg::RayScratch;
use crate::geom::imscore::{ImageScore, ImageScoreConfig, Normalized, normalize, score};
use crate::geom::render::{RenderOptions, RgbImage};
use crate::model::generate::{GenerateConfig, Program};
use crate::train::TrainError;
use crate::train::policy::Policy;

/// The search's settings: `[eval.search]` of a recipe, the flags of `cadvlm infer` / `cadvlm eval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Sampled proposals per image besides the greedy one.
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Renders per image in all (proposals and refinement); the search stops there.
    pub budget: usize,
    /// How many of the best proposals share the refinement budget evenly; a descent that converges
    /// early leaves its renders to the next proposals in score order, then to restarts from the best.
    pub refine_top: usize,
    /// Side of the candidates' renders in pixels.
    pub render_size: u32,
    /// First step of the coordinate descent, as a share of the part's largest extent.
    pub step: f64,
    /// The descent stops when the step falls below this share.
    pub min_step: f64,
    pub score: ImageScoreConfig,
    /// Add the image-agnostic [`templates`] to the proposals (default on: on the synthetic split the
    /// search with them scored best, see `reports/search.md`).
    pub templates: bool,
    /// Seed of the sampled proposals.
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            samples: 7,
            temperature: 1.0,
            top_p: 0.95,
            budget: 1000,
            refine_top: 2,
            render_size: 128,
            step: 0.1,
            min_step: 0.005,
            score: ImageScoreConfig::default(),
            templates: true,
            seed: 0,
        }
    }
}

impl SearchConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.samples > 0 && self.temperature <= 0.0 {
            return Err(format!(
                "search.samples = {} needs search.temperature > 0 (0 gives the greedy program every time)",
                self.samples
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err(format!(
                "search.top_p must be in (0, 1], got {}",
                self.top_p
            ));
        }
        if self.budget == 0 {
            return Err("search.budget must be at least 1 (renders per image)".into());
        }
        if !(32..=1024).contains(&self.render_size) {
            return Err(format!(
                "search.render_size must be in 32..=1024 pixels, got {}",
                self.render_size
            ));
        }
        if !(self.step > 0.0
            && self.step <= 1.0
            && self.min_step > 0.0
            && self.min_step <= self.step)
        {
            return Err(format!(
                "search.step ({}) and search.min_step ({}) must satisfy 0 < min_step <= step <= 1",
                self.step, self.min_step
            ));
        }
        self.score
            .validate()
            .map_err(|e| format!("search.score: {e}"))
    }
}

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Greedy,
    Sample,
    /// One of [`TEMPLATES`] (with `templates = true`).
    Template,
    Refined,
}

const PLANE_XY: &str =
    "cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0))";
const PLANE_YZ: &str =
    "cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0))";
const PLANE_XZ: &str =
    "cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0))";

fn template(plane: &str, loops: &[&str], depth: f64) -> String {
    let mut s = format!("import cadquery as cq\nwp_sketch0 = cq.Workplane({plane})\n");
    for (k, l) in loops.iter().enumerate() {
        s.push_str(&format!("loop{k}=wp_sketch0.{l}\n"));
    }
    let adds: String = (0..loops.len()).map(|k| format!(".add(loop{k})")).collect();
    s.push_str(&format!(
        "solid0=wp_sketch0{adds}.extrude({depth})\nsolid=solid0\n"
    ));
    s
}

/// Image-agnostic starting shapes in the GenCAD-Code style (a box, a plate with a hole, an L
/// profile, a cylinder and a tube along each axis): with `templates = true` they join the policy's
/// proposals, so that the refinement can fit a plain shape when the policy's programs are far off.
pub fn templates() -> Vec<String> {
    let rect = "moveTo(1.0, 0.0).lineTo(1.0, 0.6).lineTo(0.0, 0.6).lineTo(0.0, 0.0).close()";
    let ell = "moveTo(1.0, 0.0).lineTo(1.0, 0.2).lineTo(0.2, 0.2).lineTo(0.2, 0.8).lineTo(0.0, 0.8).lineTo(0.0, 0.0).close()";
    let disc = "moveTo(0.5, 0.5).circle(0.5)";
    let hole = "moveTo(0.5, 0.3).circle(0.15)";
    let bore = "moveTo(0.5, 0.5).circle(0.3)";
    let mut out = vec![
        template(PLANE_XY, &[rect], 0.2),
        template(PLANE_XY, &[rect], 0.8),
        template(PLANE_XY, &[rect, hole], 0.15),
        template(PLANE_XY, &[ell], 0.6),
    ];
    for plane in [PLANE_XY, PLANE_YZ, PLANE_XZ] {
        out.push(template(plane, &[disc], 0.3));
        out.push(template(plane, &[disc], 1.5));
        out.push(template(plane, &[disc, bore], 0.5));
    }
    out
}

/// One proposal and its image score (`None` when it failed: `error` says why).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub source: Source,
    pub program: String,
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The best program after a number of renders (one entry per improvement).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracePoint {
    pub renders: usize,
    pub score: f64,
    #[serde(skip)]
    pub program: String,
}

/// What the search of one image found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// The chosen program (`None` when no candidate executed).
    pub program: Option<String>,
    pub score: Option<ImageScore>,
    pub source: Option<Source>,
    pub greedy_score: Option<f64>,
    /// The proposals (greedy first), scored.
    pub candidates: Vec<Candidate>,
    /// Renders spent (distinct programs executed and rendered).
    pub renders: usize,
    pub trace: Vec<TracePoint>,
    pub ms: f64,
}

impl SearchResult {
    /// The best program found within the first `renders` renders (`None` if none executed by then).
    pub fn best_within(&self, renders: usize) -> Option<&str> {
        self.trace
            .iter()
            .take_while(|t| t.renders <= renders)
            .last()
            .map(|t| t.program.as_str())
    }
}

/// An image's target in the normalised framing (`None` when the image has no foreground).
pub fn image_target(image: &RgbImage, cfg: &SearchConfig) -> Option<Normalized> {
    normalize(image, cfg.score.side)
}

/// The RGB image of a sample.
pub fn sample_image(s: &Sample) -> RgbImage {
    RgbImage {
        width: s.width as u32,
        height: s.height as u32,
        pixels: s.rgb.clone(),
    }
}

/// The scoring state of one image's search: the target, the budget, the memo of scored programs.
struct Scorer<'a> {
    executor: &'a dyn Executor,
    target: &'a Normalized,
    cfg: &'a SearchConfig,
    opts: RenderOptions,
    scratch: RayScratch,
    memo: HashMap<String, Option<(ImageScore, f64)>>,
    renders: usize,
    best: Option<(f64, String, Source, ImageScore)>,
    trace: Vec<TracePoint>,
}

impl Scorer<'_> {
    fn left(&self) -> usize {
        self.cfg.budget.saturating_sub(self.renders)
    }

    /// Score a program (memoised): `Ok((score, largest extent))` or the failure's message. `None`
    /// when the budget is spent.
    fn eval(&mut self, program: &str, source: Source) -> Option<Result<(ImageScore, f64), String>> {
        if let Some(m) = self.memo.get(program) {
            return Some(m.ok_or_else(|| "failed before".to_string()));
        }
        if self.left() == 0 {
            return None;
        }
        self.renders += 1;
        let r = render_program(self.executor, program, &self.opts, &mut self.scratch)
            .map_err(|f| f.to_string())
            .and_then(|(m, img)| {
                let n = normalize(&img, self.cfg.score.side)
                    .ok_or_else(|| "the render is empty".to_string())?;
                let ext = (0..3)
                    .map(|k| m.bbox[k + 3] - m.bbox[k])
                    .fold(0.0, f64::max);
                Ok((score(self.target, &n, self.cfg.score.edge_weight), ext))
            });
        self.memo
            .insert(program.to_string(), r.as_ref().ok().copied());
        if let Ok((s, _)) = &r
            && self.best.as_ref().is_none_or(|b| s.total > b.0)
        {
            self.best = Some((s.total, program.to_string(), source, *s));
            self.trace.push(TracePoint {
                renders: self.renders,
                score: s.total,
                program: program.to_string(),
            });
        }
        Some(r)
    }

    /// Coordinate descent from `start` with at most `budget` more renders.
    fn refine(&mut self, start: &str, start_score: f64, extent: f64, budget: usize) {
        let stop = (self.renders + budget).min(self.cfg.budget);
        let (mut cur, mut cur_s) = (start.to_string(), start_score);
        let extent = if extent > 1e-9 { extent } else { 1.0 };
        let mut step = self.cfg.step;
        let mut structural = true;
        while step >= self.cfg.min_step && self.renders < stop {
            let mut improved = false;
            if structural {
                for e in params::structural_edits(&cur) {
                    if self.renders >= stop {
                        break;
                    }
                    if let Some(Ok((s, _))) = self.eval(&e, Source::Refined)
                        && s.total > cur_s + 1e-9
                    {
                        (cur, cur_s, improved) = (e, s.total, true);
                        break;
                    }
                }
                structural = false;
            }
            let mut k = 0;
            'params: while let Some(p) = params::extract(&cur).into_iter().nth(k) {
                k += 1;
                for dir in [1.0, -1.0] {
                    let (mut p, mut moved) = (p.clone(), false);
                    loop {
                        if self.renders >= stop {
                            break 'params;
                        }
                        let v = p.value + dir * step * extent;
                        let cand = params::with_value(&cur, &p, v);
                        match self.eval(&cand, Source::Refined) {
                            Some(Ok((s, _))) if s.total > cur_s + 1e-9 => {
                                (cur, cur_s, improved, moved) = (cand, s.total, true, true);
                                // the literals' positions moved with the new text; follow the parameter
                                match params::extract(&cur).into_iter().nth(k - 1) {
                                    Some(q) => p = Param { value: v, ..q },
                                    None => break,
                                }
                            }
                            _ => break,
                        }
                    }
                    if moved {
                        break;
                    }
                }
            }
            if !improved {
                step *= 0.5;
                structural = true;
            }
        }
    }
}

/// Search one image given its proposals (greedy first, then samples). Pure apart from the executor.
pub fn search(
    executor: &dyn Executor,
    image: &RgbImage,
    proposals: &[(Source, String)],
    cfg: &SearchConfig,
) -> Result<SearchResult, String> {
    let t0 = Instant::now();
    let target = image_target(image, cfg)
        .ok_or_else(|| "the image has no foreground (an empty or all-white image)".to_string())?;
    let opts = RenderOptions {
        size: cfg.render_size,
        ..Default::default()
    };
    let mut sc = Scorer {
        executor,
        target: &target,
        cfg,
        opts,
        scratch: RayScratch::default(),
        memo: HashMap::new(),
        renders: 0,
        best: None,
        trace: Vec::new(),
    };
    let mut candidates = Vec::with_capacity(proposals.len());
    let mut starts: Vec<(f64, String, f64)> = Vec::new();
    let extra: Vec<(Source, String)> = if cfg.templates {
        templates()
            .into_iter()
            .map(|t| (Source::Template, t))
            .collect()
    } else {
        Vec::new()
    };
    for (src, p) in proposals.iter().chain(&extra) {
        let r = sc.eval(p, *src);
        let (score, error) = match &r {
            Some(Ok((s, ext))) => {
                if !starts.iter().any(|(_, q, _)| q == p) {
                    starts.push((s.total, p.clone(), *ext));
                }
                (Some(s.total), None)
            }
            Some(Err(e)) => (None, Some(e.clone())),
            None => (
                None,
                Some("not scored: the render budget was spent".to_string()),
            ),
        };
        candidates.push(Candidate {
            source: *src,
            program: p.clone(),
            score,
            error,
        });
    }
    let greedy_score = candidates
        .iter()
        .find(|c| c.source == Source::Greedy)
        .and_then(|c| c.score);
    starts.sort_by(|a, b| b.0.total_cmp(&a.0));
    // the best `refine_top` proposals share the budget; a descent that converges early leaves its
    // renders to the next proposals in score order, and then to restarts from the best program
    let top = cfg.refine_top.min(starts.len());
    for (i, (s, p, ext)) in starts.into_iter().enumerate() {
        if sc.left() == 0 {
            break;
        }
        let share = if i < top {
            sc.left() / (top - i)
        } else {
            sc.left()
        };
        sc.refine(&p, s, ext, share);
    }
    while sc.left() > 0 {
        let Some((s, p, _, _)) = sc.best.clone() else {
            break;
        };
        let ext = sc.memo.get(&p).copied().flatten().map_or(1.0, |m| m.1);
        sc.refine(&p, s, ext, sc.left());
        if sc.best.as_ref().is_none_or(|b| b.0 <= s + 1e-9) {
            break;
        }
    }
    let (program, score, source) = match sc.best.take() {
        Some((_, p, src, s)) => (Some(p), Some(s), Some(src)),
        None => (None, None, None),
    };
    Ok(SearchResult {
        program,
        score,
        source,
        greedy_score,
        candidates,
        renders: sc.renders,
        trace: sc.trace,
        ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// The proposals of each image: the greedy program, then `cfg.samples` sampled ones.
pub fn propose(
    policy: &dyn Policy,
    images: &[&Sample],
    cfg: &SearchConfig,
    max_new_tokens: usize,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<(Source, String)>>, TrainError> {
    let greedy_cfg = GenerateConfig {
        max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: cfg.seed,
        threads: 0,
    };
    let greedy = policy.generate(images, 1, &greedy_cfg, batch, &mut |_| {})?;
    let mut out: Vec<Vec<(Source, String)>> = greedy
        .into_iter()
        .map(|g: Program| vec![(Source::Greedy, g.program)])
        .collect();
    if cfg.samples > 0 {
        let sample_cfg = GenerateConfig {
            max_new_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            seed: cfg.seed,
            threads: 0,
        };
        let sampled = policy.generate(images, cfg.samples, &sample_cfg, batch, progress)?;
        for (r, g) in sampled.into_iter().enumerate() {
            out[r / cfg.samples].push((Source::Sample, g.program));
        }
    } else {
        progress(images.len());
    }
    Ok(out)
}

/// Search every image on `threads` threads (each image on one thread; results in input order).
pub fn search_all(
    executor: &dyn Executor,
    images: &[RgbImage],
    proposals: &[Vec<(Source, String)>],
    cfg: &SearchConfig,
    progress: &(dyn Fn() + Sync),
) -> Vec<Result<SearchResult, String>> {
    use rayon::prelude::*;
    images
        .par_iter()
        .zip(proposals.par_iter())
        .map(|(img, props)| {
            let r = search(executor, img, props, cfg);
            progress();
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Backend, SandboxConfig, executor};
    use crate::geom::render::render;

    fn plate(w: f64, d: f64, h: f64, r: f64) -> String {
        format!(
            "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, {d}).lineTo(0.0, {d}).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo(0.3, 0.25).circle({r})\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude({h})\nsolid=solid0\n"
        )
    }

    #[test]
    fn refinement_moves_a_wrong_program_towards_the_image() {
        let ex = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
        let truth = plate(0.75, 0.5, 0.1, 0.1);
        let solid = crate::cad::execute(&truth, &crate::cad::Limits::default()).unwrap();
        let image = render(&solid, &RenderOptions::default()).unwrap();
        let greedy = plate(0.6, 0.5, 0.3, 0.05);
        let cfg = SearchConfig {
            budget: 150,
            ..Default::default()
        };
        let props = vec![
            (Source::Greedy, greedy.clone()),
            (Source::Sample, "import os".to_string()),
        ];
        let r = search(ex.as_ref(), &image, &props, &cfg).unwrap();
        assert_eq!(r.candidates[1].score, None);
        assert!(
            r.candidates[1]
                .error
                .as_deref()
                .unwrap()
                .contains("unsupported"),
            "{:?}",
            r.candidates[1]
        );
        let g = r.greedy_score.unwrap();
        let best = r.score.unwrap().total;
        assert!(best > g + 0.1, "search {best} vs greedy {g}");
        assert_eq!(r.source, Some(Source::Refined));
        assert!(r.renders <= cfg.budget);
        let iou = |p: &str| {
            crate::geom::iou(
                &crate::cad::execute(p, &Default::default()).unwrap(),
                &solid,
                crate::geom::Normalize::Best,
            )
        };
        let chosen = r.program.as_deref().unwrap();
        assert!(
            iou(chosen) > iou(&greedy) + 0.1,
            "IoU_best {} vs greedy {}",
            iou(chosen),
            iou(&greedy)
        );
        // the trace is the best-so-far: increasing scores, ending at the result
        assert!(
            r.trace
                .windows(2)
                .all(|w| w[0].score < w[1].score && w[0].renders < w[1].renders)
        );
        assert_eq!(r.best_within(usize::MAX), Some(chosen));
        assert_eq!(r.best_within(1), Some(greedy.as_str()));
        // deterministic
        assert_eq!(
            search(ex.as_ref(), &image, &props, &cfg).unwrap().program,
            r.program
        );
    }

    #[test]
    fn templates_execute() {
        let ex = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
        for t in templates() {
            let o = ex.execute(&t);
            assert!(o.is_ok(), "{t}: {o:?}");
            assert!(!params::extract(&t).is_empty());
        }
    }

    #[test]
    fn no_candidate_below_greedy_and_budget_one_is_greedy() {
        let ex = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
        let image = render(
            &crate::cad::execute(&plate(0.75, 0.5, 0.1, 0.1), &Default::default()).unwrap(),
            &RenderOptions::default(),
        )
        .unwrap();
        let props = vec![
            (Source::Greedy, plate(0.7, 0.5, 0.1, 0.1)),
            (Source::Sample, plate(0.2, 0.9, 0.9, 0.05)),
        ];
        let one = search(
            ex.as_ref(),
            &image,
            &props,
            &SearchConfig {
                budget: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(one.program.as_deref(), Some(props[0].1.as_str()));
        assert_eq!(one.candidates[1].score, None, "over budget: not scored");
        let r = search(
            ex.as_ref(),
            &image,
            &props,
            &SearchConfig {
                budget: 60,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(r.score.unwrap().total >= r.greedy_score.unwrap());
        let white = RgbImage::new(64, 64, [255, 255, 255]);
        assert!(
            search(ex.as_ref(), &white, &props, &SearchConfig::default())
                .unwrap_err()
                .contains("no foreground")
        );
    }
}
