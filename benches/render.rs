//! Renderer and synthetic-data throughput: one render at 448 (GenCAD), at training sizes (224, 128),
//! the 4-view style, PNG encoding, and synthetic samples per second (generate + execute + render + PNG).

use std::hint::black_box;
use std::path::Path;

use cadvlm::cad::{Limits, execute};
use cadvlm::data::images::encode_png;
use cadvlm::data::images::{Jitter, render_samples};
use cadvlm::data::synth::{SynthConfig, generate};
use cadvlm::geom::csg::RayScratch;
use cadvlm::geom::render::{RenderOptions, Style, render_with};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn fixture(id: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/render")
            .join(format!("{id}.py")),
    )
    .unwrap()
}

fn bench_render(c: &mut Criterion) {
    // a 3-sketch part with cylinders and holes, and a 2-sketch part with arcs and holes
    for id in ["00059989", "00144677"] {
        let solid = execute(&fixture(id), &Limits::default()).unwrap();
        let mut scratch = RayScratch::default();
        let mut g = c.benchmark_group(format!("render/{id}"));
        for (style, size) in [
            (Style::Gencad, 448),
            (Style::Gencad, 224),
            (Style::Gencad, 128),
            (Style::Multiview, 256),
        ] {
            let opts = RenderOptions {
                size,
                ..RenderOptions::style(style)
            };
            g.bench_function(format!("{}-{size}", style.as_str()), |b| {
                b.iter(|| render_with(black_box(&solid), &opts, &mut scratch).unwrap())
            });
        }
        let img = render_with(
            &solid,
            &RenderOptions {
                size: 224,
                ..Default::default()
            },
            &mut scratch,
        )
        .unwrap();
        g.bench_function("png-encode-224", |b| {
            b.iter(|| encode_png(black_box(&img)).unwrap())
        });
        g.finish();
    }
}

fn bench_synth(c: &mut Criterion) {
    let cfg = SynthConfig::default();
    let n = 64;
    let mut g = c.benchmark_group("synth");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    let mut seed = 0;
    g.bench_function("programs", |b| {
        b.iter(|| {
            seed += 1;
            generate(&cfg, seed, n).unwrap()
        })
    });
    let progs = generate(&cfg, 12345, n).unwrap();
    for size in [224u32, 128] {
        let opts = RenderOptions {
            size,
            ..Default::default()
        };
        g.bench_function(format!("render-samples-{size}"), |b| {
            b.iter(|| render_samples(black_box(&progs), &opts, Jitter::default()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_render, bench_synth);
criterion_main!(benches);
