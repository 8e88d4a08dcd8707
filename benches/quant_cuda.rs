//! Criterion benches of the CUDA quantized kernels (`quant_cuda`): a 4096×4096 weight in int8,
//! int4 (group 64) and NF4 (block 64, double-quantized scales) times one vector (`matvec`) and
//! times a batch of 8 (`matmul8`). Throughput is in bytes of weight storage read per call. Each
//! call includes uploading `x` and reading `y` back (the synchronisation point), as a decode step
//! would. Prints a message and benches nothing where no CUDA device can be opened. To run it on a
//! GPU machine, see the module doc of `src/model/quant/cuda.rs`.

use std::hint::black_box;
use std::time::Duration;

use cadvlm::model::quant::cuda::{CudaQTensor, open_device};
use cadvlm::model::quant::{GaussRng, QTensor, QuantFormat, Quantize};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const N: usize = 4096;

fn gauss_matrix(n: usize, seed: u64) -> Vec<f32> {
    GaussRng(seed).gauss_vec(n, 0.02)
}

fn bench_quant_cuda(c: &mut Criterion) {
    let client = match open_device(0) {
        Ok((_, client)) => client,
        Err(e) => {
            eprintln!("quant_cuda: skipping, {e}");
            return;
        }
    };
    let w = gauss_matrix(N * N, 1); // [N, N]
    let formats: [(&str, QuantFormat); 3] = [
        ("int8", Quantize::Int8.format().unwrap()),
        ("int4", Quantize::Int4.format().unwrap()),
        ("nf4", Quantize::Nf4.format().unwrap()),
    ];
    let mut g = c.benchmark_group("quant_cuda");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, f) in formats {
        let q = QTensor::quantize(&w, N, N, f).unwrap();
        let dq = CudaQTensor::upload(&q, &client).unwrap();
        g.throughput(Throughput::Bytes(q.storage_bytes() as u64));
        let x = gauss_matrix(N, 2); // [N]
        g.bench_function(BenchmarkId::new("matvec", name), |b| {
            b.iter(|| black_box(dq.matvec(black_box(&x)).unwrap()))
        });
        let x8 = gauss_matrix(8 * N, 3); // [8, N]
        g.bench_function(BenchmarkId::new("matmul8", name), |b| {
            b.iter(|| black_box(dq.matmul(black_box(&x8), 8).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_quant_cuda);
criterion_main!(benches);
