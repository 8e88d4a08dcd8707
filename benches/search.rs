//! The render-and-compare search's unit of work: one candidate program executed (wasm sandbox or
//! native), rendered in the GenCAD style and scored against a target image; and each part alone.
//! Target: the fixture program's own 448 px render (as a real input image would be).

use std::hint::black_box;
use std::path::Path;

use cadvlm::cad::{Limits, execute};
use cadvlm::exec::{Backend, SandboxConfig, executor, render_program};
use cadvlm::geom::csg::RayScratch;
use cadvlm::geom::imscore::{ImageScoreConfig, normalize, score};
use cadvlm::geom::render::{RenderOptions, render_with};
use criterion::{Criterion, criterion_group, criterion_main};

fn fixture(id: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/render")
            .join(format!("{id}.py")),
    )
    .unwrap()
}

fn bench_candidate(c: &mut Criterion) {
    let cfg = ImageScoreConfig::default();
    for id in ["00059989", "00144677"] {
        let program = fixture(id);
        let solid = execute(&program, &Limits::default()).unwrap();
        let mut scratch = RayScratch::default();
        let image = render_with(&solid, &RenderOptions::default(), &mut scratch).unwrap();
        let target = normalize(&image, cfg.side).unwrap();
        let mut g = c.benchmark_group(format!("search/{id}"));
        for backend in [Backend::Wasm, Backend::Native] {
            let ex = executor(&SandboxConfig::with_backend(backend)).unwrap();
            for size in [128u32, 224] {
                let opts = RenderOptions {
                    size,
                    ..Default::default()
                };
                g.bench_function(format!("candidate-{}-{size}", backend.as_str()), |b| {
                    b.iter(|| {
                        let (_, img) =
                            render_program(ex.as_ref(), black_box(&program), &opts, &mut scratch)
                                .unwrap();
                        score(
                            &target,
                            &normalize(&img, cfg.side).unwrap(),
                            cfg.edge_weight,
                        )
                    })
                });
            }
            g.bench_function(format!("execute-{}", backend.as_str()), |b| {
                b.iter(|| ex.target(black_box(&program)).unwrap())
            });
        }
        let opts = RenderOptions {
            size: 128,
            ..Default::default()
        };
        g.bench_function("render-128", |b| {
            b.iter(|| render_with(black_box(&solid), &opts, &mut scratch).unwrap())
        });
        let img = render_with(&solid, &opts, &mut scratch).unwrap();
        g.bench_function("score-128", |b| {
            b.iter(|| {
                score(
                    &target,
                    &normalize(black_box(&img), cfg.side).unwrap(),
                    cfg.edge_weight,
                )
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench_candidate);
criterion_main!(benches);
