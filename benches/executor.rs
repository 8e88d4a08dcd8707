//! Criterion benches of the executor: parse + execute + measure per program, and IoU and Chamfer
//! distance per pair, over the real GenCAD-Code programs in fixtures/cadquery.

use std::hint::black_box;
use std::path::Path;

use cadvlm::cad::{Limits, execute};
use cadvlm::exec::exec_program;
use cadvlm::geom::{MeasureOptions, Normalize, chamfer, iou};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn programs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cadquery");
    let mut out = Vec::new();
    for folder in ["gencad-programs", "gencad-test100-dev"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.retain(|p| p.extension().is_some_and(|e| e == "py"));
        files.sort();
        out.extend(files.iter().map(|f| std::fs::read_to_string(f).unwrap()));
    }
    out
}

fn bench(c: &mut Criterion) {
    let srcs = programs();
    let (limits, opts) = (Limits::default(), MeasureOptions::default());
    let mut g = c.benchmark_group("executor");
    g.throughput(Throughput::Elements(srcs.len() as u64));
    g.bench_function("parse_execute", |b| {
        b.iter(|| {
            srcs.iter()
                .filter(|s| execute(black_box(s), &limits).is_ok())
                .count()
        })
    });
    g.bench_function("parse_execute_measure", |b| {
        b.iter(|| {
            srcs.iter()
                .map(|s| exec_program(black_box(s), &limits, &opts).0.ok as usize)
                .sum::<usize>()
        })
    });
    let solids: Vec<_> = srcs
        .iter()
        .filter_map(|s| execute(s, &limits).ok())
        .collect();
    let pairs = solids.len() - 1;
    g.throughput(Throughput::Elements(pairs as u64));
    for (name, norm) in [
        ("iou_raw", Normalize::Raw),
        ("iou_unitcube", Normalize::UnitCube),
        ("iou_best", Normalize::Best),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                solids
                    .windows(2)
                    .map(|w| iou(&w[0], &w[1], norm))
                    .sum::<f64>()
            })
        });
    }
    // cadrille's CD: two 8192-point surface samplings + two k-d trees and 16384 queries per pair
    g.bench_function("chamfer", |b| {
        b.iter(|| {
            solids
                .windows(2)
                .filter_map(|w| chamfer(&w[0], &w[1]).ok())
                .sum::<f64>()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
