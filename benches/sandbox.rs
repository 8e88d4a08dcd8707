//! Sandbox overhead and throughput: wasm vs native execute+measure on the real programs, batches on all cores, cached-target rewards.
//!
//! `cargo bench --no-default-features --features sandbox --bench sandbox`. Programs: every `*.py`
//! of `../shared/data/{semantics,gencad-programs,gencad-test100-dev}` (falls back to two inline
//! programs). At the end it prints the wasm/native ratios from criterion's own estimates.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use cadvlm::exec::{Backend, Reward, SandboxConfig, executor};
use cadvlm::geom::Normalize;
use criterion::{Criterion, Throughput};

const FALLBACK: [&str; 2] = [
    "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp.moveTo(1.5, 0.0).lineTo(1.5, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()\nloop1=wp.moveTo(0.75, 0.75).circle(0.25)\nsolid=wp.add(loop0).add(loop1).extrude(0.5)\n",
    "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nsolid=wp.moveTo(0.5, 0.5).circle(0.4).extrude(1.0)\n",
];

fn programs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let mut files: Vec<PathBuf> = Vec::new();
    for d in ["semantics", "gencad-programs", "gencad-test100-dev"] {
        if let Ok(rd) = std::fs::read_dir(root.join(d)) {
            files.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "py")),
            );
        }
    }
    files.sort();
    let progs: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    if progs.is_empty() {
        eprintln!("note: ../shared/data not found; benchmarking two inline programs");
        return FALLBACK.iter().map(|s| s.to_string()).collect();
    }
    progs
}

fn bench(c: &mut Criterion) {
    let progs = programs();
    let srcs: Vec<&str> = progs.iter().map(String::as_str).collect();
    let native = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    let wasm = executor(&SandboxConfig::default()).unwrap();
    let n = srcs.len() as u64;
    eprintln!(
        "{n} programs, {} rayon threads",
        rayon::current_num_threads()
    );

    // One thread: the cost of one execute+measure, per backend (a whole pass over the programs).
    let mut g = c.benchmark_group("execute_measure");
    g.throughput(Throughput::Elements(n));
    g.sample_size(20);
    g.bench_function("native", |b| {
        b.iter(|| {
            srcs.iter()
                .map(|p| native.execute(black_box(p)).is_ok() as usize)
                .sum::<usize>()
        })
    });
    g.bench_function("wasm", |b| {
        b.iter(|| {
            srcs.iter()
                .map(|p| wasm.execute(black_box(p)).is_ok() as usize)
                .sum::<usize>()
        })
    });
    g.finish();

    // The fixed cost of one call: an empty program (fails at once with no_result).
    let mut g = c.benchmark_group("empty_program");
    g.bench_function("native", |b| b.iter(|| native.execute(black_box(""))));
    g.bench_function("wasm", |b| b.iter(|| wasm.execute(black_box(""))));
    g.finish();

    // All cores: a batch of 4 passes (programs/s = elements/s).
    let batch: Vec<&str> = srcs.iter().cycle().take(4 * srcs.len()).copied().collect();
    let mut g = c.benchmark_group("batch_all_cores");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(10);
    g.bench_function("native", |b| {
        b.iter(|| native.execute_batch(black_box(&batch)).len())
    });
    g.bench_function("wasm", |b| {
        b.iter(|| wasm.execute_batch(black_box(&batch)).len())
    });
    g.finish();

    // A reward: candidate vs target, unitcube IoU; the target's solid cached vs both programs executed each time.
    let target = srcs[srcs.len() / 2];
    let reward = Reward::new(&*wasm, target, Normalize::UnitCube).unwrap();
    let reward_native = Reward::new(&*native, target, Normalize::UnitCube).unwrap();
    let limits = Default::default();
    let mut g = c.benchmark_group("reward_unitcube");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.bench_function("wasm_cached_target", |b| {
        b.iter(|| {
            srcs.iter()
                .filter_map(|p| reward.score(black_box(p)).iou())
                .sum::<f64>()
        })
    });
    g.bench_function("native_cached_target", |b| {
        b.iter(|| {
            srcs.iter()
                .filter_map(|p| reward_native.score(black_box(p)).iou())
                .sum::<f64>()
        })
    });
    g.bench_function("native_both_executed", |b| {
        b.iter(|| {
            srcs.iter()
                .filter_map(|p| {
                    cadvlm::exec::iou_programs(black_box(p), target, Normalize::UnitCube, &limits)
                        .ok()
                })
                .sum::<f64>()
        })
    });
    g.finish();
}

/// Criterion's point estimate (mean, ns) of one benchmark, from its output folder.
fn mean_ns(dir: &Path, group: &str, name: &str) -> Option<f64> {
    let s = std::fs::read_to_string(dir.join(group).join(name).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("criterion");
    let n = programs().len() as f64;
    for (group, per) in [("execute_measure", n), ("batch_all_cores", 4.0 * n)] {
        if let (Some(nat), Some(w)) = (mean_ns(&dir, group, "native"), mean_ns(&dir, group, "wasm"))
        {
            println!(
                "{group}: native {:.1} µs/program ({:.0} programs/s), wasm {:.1} µs/program ({:.0} programs/s), wasm/native = {:.2}×",
                nat / per / 1e3,
                per / (nat / 1e9),
                w / per / 1e3,
                per / (w / 1e9),
                w / nat
            );
        }
    }
    let r = |name| mean_ns(&dir, "reward_unitcube", name);
    if let (Some(a), Some(b), Some(c)) = (
        r("wasm_cached_target"),
        r("native_cached_target"),
        r("native_both_executed"),
    ) {
        println!(
            "reward_unitcube (execute+measure+IoU): wasm cached target {:.1} µs/reward, native cached target {:.1} µs/reward (wasm/native = {:.2}×); native executing both programs, no measure: {:.1} µs/reward",
            a / n / 1e3,
            b / n / 1e3,
            a / b,
            c / n / 1e3
        );
    }
}
