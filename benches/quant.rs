//! Criterion benches of the weight-only quantized kernels: a 4096×4096 weight times a vector
//! (`quant_matvec`, decode) and times a 4096×64 batch (`quant_matmul`, prefill / training) in f32,
//! int8, int4 (group 64, zero points) and NF4 (block 64, double-quantized scales); plus this
//! machine's memory bandwidth (`membw`: a streaming copy and a streaming read), so each kernel's
//! GB/s can be read as a share of the limit. Throughput is in bytes of weight storage read per call.
//!
//! `quant_matvec` cycles through enough copies of the weight that the working set (≥ 256 MiB) is
//! far larger than the last-level cache, as when decoding through all the layers of a model;
//! `quant_matvec_l3` repeats one copy (≤ 64 MiB: the 4-bit weights then stay in a 32 MiB L3).

use std::hint::black_box;
use std::time::Duration;

use cadvlm::model::quant::{GaussRng, Isa, QTensor, QuantFormat, Quantize};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rayon::prelude::*;

const N: usize = 4096;
const M: usize = 64;
const COLD_WORKING_SET: usize = 256 << 20;
const MEMBW_BYTES: usize = 512 << 20;

fn gauss_matrix(n: usize, seed: u64) -> Vec<f32> {
    GaussRng(seed).gauss_vec(n, 0.02)
}

fn formats() -> Vec<(&'static str, QuantFormat)> {
    vec![
        ("f32", QuantFormat::F32),
        ("int8", Quantize::Int8.format().unwrap()),
        ("int4", Quantize::Int4.format().unwrap()),
        ("nf4", Quantize::Nf4.format().unwrap()),
    ]
}

fn bench_membw(c: &mut Criterion) {
    let n = MEMBW_BYTES / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let threads = rayon::current_num_threads();
    let chunk = n.div_ceil(threads * 8);
    let mut g = c.benchmark_group("membw");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    // STREAM convention: a copy moves 2 bytes per byte copied (read + write).
    g.throughput(Throughput::Bytes(2 * MEMBW_BYTES as u64));
    g.bench_function("copy", |b| {
        b.iter(|| {
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&dst);
        })
    });
    // A read-only stream (what a matvec does with its weight).
    g.throughput(Throughput::Bytes(MEMBW_BYTES as u64));
    g.bench_function("read", |b| {
        b.iter(|| {
            let s: f32 = src
                .par_chunks(chunk)
                .map(|c| {
                    let mut acc = [0f32; 32];
                    for v in c.chunks_exact(32) {
                        for k in 0..32 {
                            acc[k] += v[k];
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum();
            black_box(s)
        })
    });
    g.finish();
}

fn bench_matvec(c: &mut Criterion) {
    eprintln!(
        "quant bench: instruction set {:?}, {} rayon threads",
        Isa::detect(),
        rayon::current_num_threads()
    );
    let w = gauss_matrix(N * N, 1);
    let x: Vec<f32> = gauss_matrix(N, 2).iter().map(|v| 50.0 * v).collect();
    let mut y = vec![0f32; N];
    for (hot, group) in [(false, "quant_matvec"), (true, "quant_matvec_l3")] {
        let mut g = c.benchmark_group(group);
        g.sample_size(30)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(6));
        for (name, f) in formats() {
            let q = QTensor::quantize(&w, N, N, f).unwrap();
            let bytes = q.storage_bytes();
            let copies = if hot {
                1
            } else {
                COLD_WORKING_SET.div_ceil(bytes).max(2)
            };
            let qs: Vec<QTensor> = (0..copies).map(|_| q.clone()).collect();
            drop(q);
            eprintln!(
                "{group}/{name}: {bytes} bytes of weights, {copies} copies, {:.3} bits/weight",
                qs[0].bits_per_weight()
            );
            g.throughput(Throughput::Bytes(bytes as u64));
            let mut i = 0;
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    qs[i % copies].matvec(black_box(&x), &mut y).unwrap();
                    i += 1;
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

fn bench_matmul(c: &mut Criterion) {
    let w = gauss_matrix(N * N, 1);
    let x = gauss_matrix(M * N, 3);
    let mut y = vec![0f32; M * N];
    let mut g = c.benchmark_group("quant_matmul");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    for (name, f) in formats() {
        let q = QTensor::quantize(&w, N, N, f).unwrap();
        eprintln!(
            "quant_matmul/{name}: {:.2} GFLOP per call",
            2.0 * (N * N * M) as f64 / 1e9
        );
        g.throughput(Throughput::Bytes(q.storage_bytes() as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                q.matmul(black_box(&x), M, &mut y).unwrap();
                black_box(&y);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_membw, bench_matvec, bench_matmul);
criterion_main!(benches);
