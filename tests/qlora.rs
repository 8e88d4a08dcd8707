//! LoRA / QLoRA on the real VLM: the shipped f32 checkpoint still loads into the LoRA-capable
//! `Linear`; QLoRA SFT (NF4 base + adapters) lowers the loss like LoRA on the f32 base; the weights
//! of a `small` model take ≥ 3.5× less memory as NF4; the exported model equals the adapted one;
//! an interrupted QLoRA run resumes exactly; DPO with adapters leaves the reference (adapters off)
//! untouched while the preferred log-ratio grows.

#![cfg(all(feature = "model", feature = "sandbox"))]

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::{Distribution, Tensor};
use cadvlm::data::{GENCAD_PROMPT, Sample};
use cadvlm::model::VlmConfig;
use cadvlm::model::inputs::prefix_tokens;
use cadvlm::model::lora::{
    LinearLayers, LoraConfig, linear_weight_bytes, model_weight_bytes, with_adapters_disabled,
};
use cadvlm::model::quant::Quantize;
use cadvlm::model::tokenizer::CodeTokenizer;
use cadvlm::model::vlm::{TokenBatch, Vlm};
use cadvlm::model::weights;
use cadvlm::pipeline::Recipe;
use cadvlm::train::adapt::Adaptation;
use cadvlm::train::optim::{AdamW, OptimConfig};
use cadvlm::train::policy::{PairExample, dpo_train_step, reference_logprobs};
use cadvlm::train::sft::{Example, SftConfig, prepare_examples, train_sft_adapted};

type AB = Autodiff<NdArray<f32>>;
type B = NdArray<f32>;

/// burn's backend RNG is global: tests that seed it and draw run one at a time.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn program(w: f64, h: f64, d: f64) -> String {
    format!(
        "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, {h}).lineTo(0.0, {h}).close()\nsolid0=wp_sketch0.add(loop0).extrude({d})\nsolid=solid0\n"
    )
}

fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let (w, h, d) = (
                0.25 + 0.125 * (i % 5) as f64,
                0.25 + 0.25 * (i % 3) as f64,
                0.125 * (1 + i % 4) as f64,
            );
            let rgb: Vec<u8> = (0..32 * 32 * 3)
                .map(|k| ((k * (i + 3)) % 251) as u8)
                .collect();
            Sample {
                id: format!("q{i}"),
                prompt: GENCAD_PROMPT.into(),
                program: program(w, h, d),
                rgb,
                width: 32,
                height: 32,
            }
        })
        .collect()
}

fn setup(n: usize, cfg: &SftConfig) -> (CodeTokenizer, VlmConfig, Vec<Example>) {
    let s = samples(n);
    let mut corpus: Vec<String> = s.iter().map(|x| x.program.clone()).collect();
    corpus.push(GENCAD_PROMPT.to_string());
    let tok = cadvlm::model::tokenizer::train(&corpus, &Default::default()).unwrap();
    let c = VlmConfig::named("tiny", tok.vocab_size()).unwrap();
    let (ex, skipped) = prepare_examples(s, &tok, &c, cfg).unwrap();
    assert_eq!(skipped, 0);
    (tok, c, ex)
}

fn qlora(quantize: Quantize) -> Adaptation {
    Adaptation {
        quantize,
        lora: Some(LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: vec!["all-linear".into()],
        }),
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cadvlm-qlora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn shipped_f32_checkpoint_loads_with_identical_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sft-cpu-small");
    let c: VlmConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let file = weights::read_safetensors(&dir.join("model.safetensors")).unwrap();
    let m = weights::load_module(
        c.init::<B>(&Default::default()),
        &dir.join("model.safetensors"),
    )
    .unwrap();
    let named = weights::named_params(&m);
    // the same key set (no adapter keys, no key missing) and the very same values
    assert_eq!(
        named.keys().collect::<Vec<_>>(),
        file.keys().collect::<Vec<_>>()
    );
    assert!(
        named.contains_key("model.layers.0.self_attn.q_proj.weight")
            && named.contains_key("model.layers.0.self_attn.q_proj.bias")
    );
    assert!(named.iter().all(|(k, v)| &file[k] == v));
}

#[test]
fn recipe_qlora_smoke_parses_with_nf4_and_lora() {
    let r = Recipe::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/qlora-smoke.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(r.model.quantize, Quantize::Nf4);
    assert!(r.lora.as_ref().is_some_and(|l| l.rank > 0));
    assert!(!r.adaptation().is_full());
}

#[test]
fn qlora_smoke_recipe_trains_adapters_and_evaluates_the_merged_model() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/qlora-smoke.toml");
    let sets = [
        "data.n_train=48",
        "sft.steps=6",
        "sft.checkpoint_every=3",
        "eval.max_new_tokens=16",
        "sft.max_new_tokens=16",
    ]
    .map(String::from);
    let r = Recipe::load(&file, &sets).unwrap();
    let runs = tmp("recipe");
    let rep = cadvlm::pipeline::run(&r, &runs, false).unwrap();
    assert!(rep.stages.iter().all(|s| s.1 == "done"), "{:?}", rep.stages);
    let dir = runs.join("qlora-smoke");
    for f in [
        "base.safetensors",
        "adapters.safetensors",
        "model.safetensors",
        "config.json",
        "eval.json",
        "checkpoints/step-0000006/meta.json",
    ] {
        assert!(dir.join(f).exists(), "missing {f}");
    }
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoints/step-0000006/meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["adapt"]["quantize"], "nf4");
    assert_eq!(meta["adapt"]["lora"]["rank"], 8);
    // eval loads model.safetensors as a plain model (what `cadvlm eval --run` does)
    let c: VlmConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    weights::load_module(
        c.init::<B>(&Default::default()),
        &dir.join("model.safetensors"),
    )
    .unwrap();
    let rep2 = cadvlm::pipeline::run(&r, &runs, false).unwrap();
    assert!(
        rep2.stages.iter().all(|s| s.1 == "reused"),
        "{:?}",
        rep2.stages
    );
    let _ = std::fs::remove_dir_all(&runs);
}

/// Mean of the last `k` losses.
fn tail_mean(l: &[(usize, f64)], k: usize) -> f64 {
    l[l.len() - k..].iter().map(|x| x.1).sum::<f64>() / k as f64
}

#[test]
fn qlora_sft_loss_falls_like_lora_on_the_f32_base() {
    let _rng = rng_lock();
    let cfg = SftConfig {
        steps: 30,
        batch_size: 8,
        optim: OptimConfig {
            lr: 1e-2,
            warmup_steps: 3,
            weight_decay: 0.0,
            ..Default::default()
        },
        log_every: 5,
        checkpoint_every: 100,
        val_samples: 0,
        seed: 11,
        ..Default::default()
    };
    let (tok, c, ex) = setup(24, &cfg);
    let device = Default::default();
    let mut curves = Vec::new();
    for q in [Quantize::None, Quantize::Nf4] {
        let run = tmp(&format!("sft-{q:?}"));
        let out = train_sft_adapted::<AB>(
            &run,
            &cfg,
            &c,
            &qlora(q),
            &tok,
            &ex,
            &[],
            &device,
            None,
            false,
        )
        .unwrap();
        assert_eq!(out.losses.len(), cfg.steps);
        for f in [
            "model.safetensors",
            "adapters.safetensors",
            "base.safetensors",
            "config.json",
        ] {
            assert!(run.join(f).exists(), "{q:?}: missing {f}");
        }
        // the exported model is a plain f32 checkpoint
        let m = weights::load_module(c.init::<B>(&device), &run.join("model.safetensors")).unwrap();
        assert!(
            weights::named_params(&m)
                .keys()
                .all(|k| !k.contains("lora"))
        );
        curves.push(out.losses);
        let _ = std::fs::remove_dir_all(&run);
    }
    let (lora, ql) = (&curves[0], &curves[1]);
    let fmt = |l: &[(usize, f64)]| {
        l.iter()
            .step_by(5)
            .map(|x| format!("{:.3}", x.1))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!("LoRA  (f32 base) loss every 5 steps: {}", fmt(lora));
    eprintln!("QLoRA (nf4 base) loss every 5 steps: {}", fmt(ql));
    let (l0, q0) = (lora[0].1, ql[0].1);
    let (l1, q1) = (tail_mean(lora, 5), tail_mean(ql, 5));
    eprintln!("first {l0:.4} / {q0:.4}, mean of the last 5: {l1:.4} / {q1:.4}");
    // both learn: the loss of the last 5 steps is under 60 % of the first
    assert!(l1 < 0.6 * l0, "LoRA: {l0} -> {l1}");
    assert!(q1 < 0.6 * q0, "QLoRA: {q0} -> {q1}");
    // the same start (up to the NF4 error of the base) and an end within 10 % of LoRA's
    assert!((q0 - l0).abs() < 0.05 * l0, "first losses {q0} vs {l0}");
    assert!((q1 - l1).abs() < 0.10 * l1, "final losses {q1} vs {l1}");
}

#[test]
fn interrupted_qlora_run_resumes_exactly() {
    let _rng = rng_lock();
    let cfg = SftConfig {
        steps: 6,
        batch_size: 4,
        optim: OptimConfig {
            lr: 5e-3,
            warmup_steps: 2,
            ..Default::default()
        },
        log_every: 1,
        checkpoint_every: 3,
        val_samples: 0,
        ..Default::default()
    };
    let (tok, c, ex) = setup(8, &cfg);
    let device = Default::default();
    let a = qlora(Quantize::Nf4);
    let root = tmp("resume");
    let full = train_sft_adapted::<AB>(
        &root.join("a"),
        &cfg,
        &c,
        &a,
        &tok,
        &ex,
        &[],
        &device,
        None,
        false,
    )
    .unwrap();
    let first = train_sft_adapted::<AB>(
        &root.join("b"),
        &cfg,
        &c,
        &a,
        &tok,
        &ex,
        &[],
        &device,
        Some(4),
        false,
    )
    .unwrap();
    assert_eq!(first.step, 4);
    std::fs::remove_dir_all(root.join("b/checkpoints/step-0000004")).unwrap();
    // the checkpoint holds the adapters and the f32 rest, not the quantized bases
    let ck = weights::read_safetensors(&root.join("b/checkpoints/step-0000003/model.safetensors"))
        .unwrap();
    assert!(
        ck.contains_key("model.layers.0.self_attn.q_proj.lora_a")
            && ck.contains_key("lm_head.weight")
    );
    assert!(!ck.contains_key("model.layers.0.self_attn.q_proj.weight"));
    // other settings refuse to resume it
    let other = Adaptation {
        quantize: Quantize::Int8,
        ..a.clone()
    };
    let e = train_sft_adapted::<AB>(
        &root.join("b"),
        &cfg,
        &c,
        &other,
        &tok,
        &ex,
        &[],
        &device,
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("new run name"), "{e}");
    let second = train_sft_adapted::<AB>(
        &root.join("b"),
        &cfg,
        &c,
        &a,
        &tok,
        &ex,
        &[],
        &device,
        None,
        false,
    )
    .unwrap();
    assert_eq!(second.resumed_from, Some(3));
    for ((s1, l1), (s2, l2)) in full.losses[3..].iter().zip(&second.losses) {
        assert_eq!(s1, s2);
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0),
            "step {s1}: uninterrupted {l1} vs resumed {l2}"
        );
    }
    let wa = weights::read_safetensors(&root.join("a/model.safetensors")).unwrap();
    let wb = weights::read_safetensors(&root.join("b/model.safetensors")).unwrap();
    let max_diff = wa
        .iter()
        .map(|(k, (_, v))| {
            v.iter()
                .zip(&wb[k].1)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "final weights differ by {max_diff}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn exported_model_equals_the_adapted_model() {
    let _rng = rng_lock();
    let (tok, c, ex) = setup(4, &SftConfig::default());
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 5);
    let a = qlora(Quantize::Nf4);
    let mut m = a.prepare(c.init::<B>(&device), &device).unwrap();
    // non-zero adapters
    m.for_each_linear(&mut |_, l| {
        if let Some(a_) = l.lora_a.take() {
            let r = a_.shape().dims::<2>()[0];
            let b = Tensor::random(
                [l.out_features(), r],
                Distribution::Normal(0.0, 0.05),
                &device,
            );
            l.set_adapter(a_.val(), b, l.lora_alpha, l.lora_dropout);
        }
    });
    let rows: Vec<(Vec<u32>, Vec<u32>)> = ex
        .iter()
        .map(|e| (e.prefix.clone(), e.code.clone()))
        .collect();
    let batch = TokenBatch::from_rows(&rows, tok.pad);
    let samples: Vec<&Sample> = ex.iter().map(|e| &e.sample).collect();
    let loss = |m: &Vlm<B>| {
        m.sft_loss(
            cadvlm::model::inputs::patches_tensor::<B>(&samples, &c, &device),
            &batch,
        )
        .into_scalar() as f64
    };
    let adapted = loss(&m);
    let base_only = with_adapters_disabled(|| loss(&m));
    assert!(
        (adapted - base_only).abs() > 1e-3,
        "the adapters change the model: {adapted} vs {base_only}"
    );
    let dir = tmp("export");
    std::fs::create_dir_all(&dir).unwrap();
    let exported = a.export(m, &dir, &device).unwrap();
    assert!(dir.join("adapters.safetensors").exists());
    let mut plain = exported.clone();
    assert_eq!(
        linear_weight_bytes(&mut plain).0,
        linear_weight_bytes(&mut plain).1,
        "no quantized base is left"
    );
    assert!(
        (loss(&exported) - adapted).abs() < 1e-4,
        "{} vs {adapted}",
        loss(&exported)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `(linears as f32, linears stored, whole model as f32, whole model stored)` in bytes of a model of
/// size `size` before (`quantize = None`, no adapters) or after `adapt`.
fn weight_bytes(size: &str, vocab: usize, adapt: &Adaptation) -> [usize; 4] {
    let c = VlmConfig::named(size, vocab).unwrap();
    let device = Default::default();
    let mut m = adapt.prepare(c.init::<B>(&device), &device).unwrap();
    let (l32, lq) = linear_weight_bytes(&mut m);
    let (a32, aq) = model_weight_bytes(&mut m);
    [l32, lq, a32, aq]
}

#[test]
fn nf4_small_model_weights_take_over_3_5x_less_memory() {
    let _rng = rng_lock();
    // the shipped `small` model (models/sft-cpu-small: vocabulary 378) with the default adapters
    // (rank 16 on the decoder's q/k/v/o/gate/up/down); lm_head and the embeddings stay f32
    let plain = weight_bytes("small", 378, &Adaptation::default());
    assert_eq!(
        (plain[0], plain[2]),
        (plain[1], plain[3]),
        "an f32 model stores f32"
    );
    let a = Adaptation {
        quantize: Quantize::Nf4,
        lora: Some(LoraConfig::default()),
    };
    let [l32, lq, a32, aq] = weight_bytes("small", 378, &a);
    // adapters are counted in both columns (f32 parameters either way)
    assert!(
        l32 > plain[0] && a32 > plain[2],
        "adapters add f32 parameters"
    );
    let (lr, ar) = (l32 as f64 / lq as f64, a32 as f64 / aq as f64);
    eprintln!(
        "small, vocab 378, NF4 + LoRA r16 (decoder): linears {l32} -> {lq} B ({lr:.2}x), whole model {a32} -> {aq} B ({ar:.2}x)"
    );
    assert!(lr >= 3.5, "linear-only ratio {lr}");
    assert!(ar >= 3.5, "whole-model ratio {ar}");
    // without the adapters' and the f32-kept layers' bytes (lm_head, image_cond), the NF4 bases alone
    // are ~7.5x smaller
    let q_only = Adaptation {
        quantize: Quantize::Nf4,
        lora: Some(LoraConfig {
            targets: vec!["lm_head".into()],
            rank: 1,
            ..LoraConfig::default()
        }),
    };
    let [l32, lq, ..] = weight_bytes("small", 378, &q_only);
    let kept_f32 = 4 * (192 * 378 + 378 + 192) + 4 * (192 * 192 + 192); // lm_head (+ its rank-1 adapter), image_cond
    let r = (l32 - kept_f32) as f64 / (lq - kept_f32) as f64;
    assert!(r > 7.0, "NF4 bases alone: {r}");
}

/// The table of reports/qlora.md: `cargo test --test qlora -- --ignored --nocapture weight_memory_table`.
#[test]
#[ignore = "measurement for reports/qlora.md (builds a `base` model: ~10 s)"]
fn weight_memory_table() {
    let _rng = rng_lock();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "| size | vocab | adapters | quantize | linears f32 | linears stored | ratio | whole f32 | whole stored | ratio |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|");
    for (size, vocab) in [("small", 378), ("small", 1024), ("base", 2048)] {
        for (name, lora) in [
            ("r16 decoder", LoraConfig::default()),
            (
                "r8 all-linear",
                LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    targets: vec!["all-linear".into()],
                    ..LoraConfig::default()
                },
            ),
        ] {
            for q in [Quantize::None, Quantize::Int8, Quantize::Nf4] {
                let [l32, lq, a32, aq] = weight_bytes(
                    size,
                    vocab,
                    &Adaptation {
                        quantize: q,
                        lora: Some(lora.clone()),
                    },
                );
                eprintln!(
                    "| {size} | {vocab} | {name} | {q:?} | {:.2} MiB | {:.2} MiB | {:.2}x | {:.2} MiB | {:.2} MiB | {:.2}x |",
                    mib(l32),
                    mib(lq),
                    l32 as f64 / lq as f64,
                    mib(a32),
                    mib(aq),
                    a32 as f64 / aq as f64
                );
            }
        }
    }
}

#[test]
fn dpo_with_lora_keeps_the_reference_and_raises_the_preferred_log_ratio() {
    let _rng = rng_lock();
    let (tok, c, _) = setup(4, &SftConfig::default());
    let device = Default::default();
    <AB as burn::tensor::backend::Backend>::seed(&device, 3);
    let a = qlora(Quantize::Nf4);
    let mut policy = a.prepare(c.init::<AB>(&device), &device).unwrap();
    let s = samples(2);
    let img = &s[0];
    let prefix = prefix_tokens(&tok, GENCAD_PROMPT).unwrap();
    let code = |p: &str| {
        let mut t = tok.encode(p).unwrap();
        t.push(tok.end);
        t
    };
    let pair = PairExample {
        image: img,
        prefix,
        chosen: code(&program(0.5, 0.25, 0.25)),
        rejected: code(&program(0.75, 0.5, 0.125)),
    };
    let pairs = [&pair];
    let frozen = |m: &Vlm<AB>| {
        let mut n = weights::named_params(&m.valid());
        n.retain(|k, _| !k.contains("lora"));
        n
    };
    let base_before = frozen(&policy);
    let refs = with_adapters_disabled(|| {
        reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device)
    });
    let p0 = reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device);
    let h0 = (p0[0].0 - refs[0].0) - (p0[0].1 - refs[0].1);
    assert!(
        h0.abs() < 1e-6,
        "fresh adapters (B = 0) change nothing: {h0}"
    );
    let lr = 2e-3;
    let mut opt = AdamW::<B>::new(OptimConfig {
        lr,
        warmup_steps: 0,
        weight_decay: 0.0,
        ..Default::default()
    });
    let mut ratios = vec![h0];
    let mut losses = Vec::new();
    for _ in 0..4 {
        let (p, st, g) = dpo_train_step(
            policy, &mut opt, &c, &pairs, &refs, 0.1, 0.0, 0.0, lr, tok.pad, &device,
        );
        policy = p;
        assert!(g.is_finite() && g > 0.0, "grad norm {g}");
        losses.push(st.loss);
        let p = reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device);
        ratios.push((p[0].0 - refs[0].0) - (p[0].1 - refs[0].1));
    }
    eprintln!("DPO + QLoRA: preferred log-ratios {ratios:?}, losses {losses:?}");
    assert!(
        (losses[0] - std::f64::consts::LN_2).abs() < 1e-4,
        "first loss {}",
        losses[0]
    );
    assert!(
        ratios.windows(2).all(|w| w[1] > w[0]),
        "log-ratios {ratios:?}"
    );
    assert!(ratios[4] > 0.5, "log-ratios {ratios:?}");
    // the reference (adapters off) is bit-for-bit what it was: same frozen parameters, same log-probs
    assert_eq!(frozen(&policy), base_before);
    let refs_after = with_adapters_disabled(|| {
        reference_logprobs(&policy.valid(), &c, &pairs, tok.pad, &device)
    });
    assert_eq!(refs_after, refs);
    // while the adapters moved
    let n = weights::named_params(&policy.valid());
    assert!(
        n.iter()
            .any(|(k, (_, v))| k.contains("lora_b") && v.iter().any(|x| *x != 0.0))
    );
}

#[test]
fn dpo_rounds_with_qlora_resume_exactly_and_export_a_plain_model() {
    use cadvlm::train::dpo::{DpoConfig, train_dpo_adapted};
    use cadvlm::train::rollout::{
        PairConfig, PairStrategy, Rollout, RolloutConfig, write_rollouts,
    };
    let _rng = rng_lock();
    let (tok, c, _) = setup(4, &SftConfig::default());
    let device = Default::default();
    let root = tmp("dpo");
    std::fs::create_dir_all(&root).unwrap();
    <AB as burn::tensor::backend::Backend>::seed(&device, 5);
    let init = root.join("sft.safetensors");
    weights::save_module(&c.init::<B>(&device), &init).unwrap();
    let images = vec![samples(1).remove(0)];
    let cfg = DpoConfig {
        rounds: 1,
        images_per_round: 1,
        steps_per_round: 4,
        batch_pairs: 2,
        beta: 0.5,
        optim: OptimConfig {
            lr: 1e-3,
            warmup_steps: 0,
            weight_decay: 0.0,
            ..Default::default()
        },
        checkpoint_every: 2,
        rollout: RolloutConfig {
            k: 4,
            sandbox: cadvlm::exec::SandboxConfig::with_backend(cadvlm::exec::Backend::Native),
            ..Default::default()
        },
        pairs: PairConfig {
            strategy: PairStrategy::AllAboveMargin,
            margin: 0.1,
            max_per_image: 3,
            hard_threshold: None,
        },
        ..Default::default()
    };
    let a = qlora(Quantize::Nf4);
    // reset_reference needs a second model: refused with adapters
    let e = train_dpo_adapted::<AB>(
        &root.join("x"),
        &DpoConfig {
            reset_reference: true,
            ..cfg.clone()
        },
        &c,
        &a,
        &tok,
        &init,
        &images,
        &device,
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("reset_reference"), "{e}");
    let progs = [
        (program(0.5, 0.25, 0.25), 1.0),
        (program(0.5, 0.25, 0.125), 0.5),
        (program(0.75, 0.5, 0.25), 0.66),
        ("wp = cq.Workplane(".to_string(), -0.5),
    ];
    let rollouts: Vec<Rollout> = progs
        .iter()
        .map(|(p, r)| Rollout {
            id: "q0".into(),
            image: 0,
            program: p.clone(),
            finished: true,
            reward: *r,
            iou: (*r >= 0.0).then_some(*r),
            failure: (*r < 0.0).then(|| "syntax".into()),
            round: 0,
            policy_step: 0,
        })
        .collect();
    let mut finals = Vec::new();
    for (name, stop) in [("straight", None), ("resumed", Some(2))] {
        let run = root.join(name);
        write_rollouts(&run.join("rollouts").join("round-00.parquet"), &rollouts).unwrap();
        if let Some(s) = stop {
            assert_eq!(
                train_dpo_adapted::<AB>(
                    &run,
                    &cfg,
                    &c,
                    &a,
                    &tok,
                    &init,
                    &images,
                    &device,
                    Some(s),
                    false
                )
                .unwrap()
                .step,
                s
            );
        }
        let o = train_dpo_adapted::<AB>(
            &run, &cfg, &c, &a, &tok, &init, &images, &device, None, false,
        )
        .unwrap();
        assert_eq!((o.step, o.resumed_from), (4, stop));
        let losses: Vec<f64> = o.metrics.iter().filter_map(|m| m.loss).collect();
        assert!(
            (losses[0] - std::f64::consts::LN_2).abs() < 1e-4 || stop.is_some(),
            "first loss {losses:?}"
        );
        assert!(run.join("adapters.safetensors").exists());
        let m = weights::load_module(c.init::<B>(&device), &run.join("model.safetensors")).unwrap();
        finals.push(weights::named_params(&m));
    }
    let (x, y) = (&finals[0], &finals[1]);
    let max_diff = x
        .iter()
        .map(|(k, (_, v))| {
            v.iter()
                .zip(&y[k].1)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "resumed DPO weights differ by {max_diff}");
    // the export is the NF4 base + merged adapters: it differs from the SFT weights (quantization and
    // training) but keeps its non-linear parameters (embeddings, norms) bit for bit
    let sft = weights::read_safetensors(&init).unwrap();
    assert_eq!(x.keys().collect::<Vec<_>>(), sft.keys().collect::<Vec<_>>());
    assert_eq!(
        x["model.embed_tokens.weight"],
        sft["model.embed_tokens.weight"]
    );
    assert_ne!(
        x["model.layers.0.self_attn.q_proj.weight"],
        sft["model.layers.0.self_attn.q_proj.weight"]
    );
    let _ = std::fs::remove_dir_all(&root);
}
