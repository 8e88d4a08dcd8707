//! The CUDA quantized kernels (`cadvlm::model::quant::cuda`) against the CPU `QTensor::matvec` /
//! `QTensor::matmul`: NF4 (plain and double-quantized scales), int4 and int8 at 4096×4096 and at
//! small odd shapes, within 1e-4 relative. Every test prints a message and returns (passes) when no
//! CUDA device can be opened, so the suite never fails on a CPU-only machine. How to run it on a
//! GPU machine: see the module doc of `src/model/quant/cuda.rs`.
#![cfg(feature = "cuda")]

use cadvlm::model::quant::cuda::{CudaClient, CudaQTensor, QuantCudaError, open_device};
use cadvlm::model::quant::{GaussRng as Rng, QTensor, QuantFormat};

const FORMATS: [QuantFormat; 6] = [
    QuantFormat::Nf4 {
        block_size: 64,
        double_quant: false,
    },
    QuantFormat::Nf4 {
        block_size: 64,
        double_quant: true,
    },
    QuantFormat::Nf4 {
        block_size: 128,
        double_quant: true,
    },
    QuantFormat::Int4 { group_size: 64 },
    QuantFormat::Int4 { group_size: 32 },
    QuantFormat::Int8,
];

/// The CUDA client, or `None` (with a message) where there is no usable device.
fn client() -> Option<CudaClient> {
    match open_device(0) {
        Ok((_, c)) => Some(c),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// `‖y − ref‖ / ‖ref‖`.
fn rel_err(y: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = y
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|&b| (b as f64).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn check_matvec(rows: usize, cols: usize, seed: u64) {
    let Some(client) = client() else { return };
    let mut rng = Rng(seed);
    let w = rng.gauss_vec(rows * cols, 0.05); // [rows, cols]
    // A biased input, so that the int4 zero-point term matters.
    let x: Vec<f32> = (0..cols).map(|_| 0.3 + rng.gauss()).collect(); // [cols]
    for f in FORMATS {
        let q = QTensor::quantize(&w, rows, cols, f).unwrap();
        let mut reference = vec![0f32; rows]; // [rows]
        q.matvec(&x, &mut reference).unwrap();
        let dq = CudaQTensor::upload(&q, &client).unwrap();
        let y = dq.matvec(&x).unwrap(); // [rows]
        assert_eq!(y.len(), rows);
        let e = rel_err(&y, &reference);
        eprintln!("{rows}×{cols} {f:?}: relative error {e:.2e}");
        assert!(e <= 1e-4, "{rows}×{cols} {f:?}: relative error {e}");
    }
}

#[test]
fn matvec_4096_matches_cpu() {
    check_matvec(4096, 4096, 1);
}

#[test]
fn matvec_odd_shapes_match_cpu() {
    for (i, (rows, cols)) in [(1, 1), (3, 7), (37, 200), (5, 64), (129, 1000), (2, 4097)]
        .into_iter()
        .enumerate()
    {
        check_matvec(rows, cols, 10 + i as u64);
    }
}

#[test]
fn matmul_matches_cpu() {
    let Some(client) = client() else { return };
    let mut rng = Rng(7);
    for (rows, cols, m) in [(37, 200, 5), (4096, 4096, 8), (70, 1100, 3)] {
        let w = rng.gauss_vec(rows * cols, 0.05); // [rows, cols]
        let x: Vec<f32> = (0..m * cols).map(|_| 0.3 + rng.gauss()).collect(); // [m, cols]
        for f in FORMATS {
            let q = QTensor::quantize(&w, rows, cols, f).unwrap();
            let mut reference = vec![0f32; m * rows]; // [m, rows]
            q.matmul(&x, m, &mut reference).unwrap();
            let y = CudaQTensor::upload(&q, &client)
                .unwrap()
                .matmul(&x, m)
                .unwrap(); // [m, rows]
            let e = rel_err(&y, &reference);
            assert!(e <= 1e-4, "{rows}×{cols}·{m} {f:?}: relative error {e}");
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let Some(client) = client() else { return };
    let w = vec![0.5f32; 64 * 3];
    let f32_weight = QTensor::quantize(&w, 3, 64, QuantFormat::F32).unwrap();
    assert!(matches!(
        CudaQTensor::upload(&f32_weight, &client),
        Err(QuantCudaError::Unsupported(_))
    ));
    let q = QTensor::quantize(
        &w,
        3,
        64,
        QuantFormat::Nf4 {
            block_size: 64,
            double_quant: true,
        },
    )
    .unwrap();
    let dq = CudaQTensor::upload(&q, &client).unwrap();
    assert!(matches!(
        dq.matvec(&[1.0; 63]),
        Err(QuantCudaError::Quant(_))
    ));
    assert!(matches!(
        dq.matmul(&[1.0; 64], 2),
        Err(QuantCudaError::Quant(_))
    ));
    assert_eq!(dq.matmul(&[], 0).unwrap(), Vec::<f32>::new());
}
