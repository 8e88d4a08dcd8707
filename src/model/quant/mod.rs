//! Weight-only quantization of linear layers: int8 per output channel, int4 group-wise (scale + zero
//! point), NF4 (QLoRA's 4-bit NormalFloat, optionally double-quantized scales), with fused
//! dequant-matvec / dequant-matmul CPU kernels (AVX2/FMA or AVX-512 chosen at run time, scalar
//! fallback, rayon over output rows).
//!
//! A [`QTensor`] holds one 2-D weight `[rows = out_features, cols = in_features]` (the PyTorch /
//! Hugging Face `Linear` layout) in packed form. `y = W x` is [`QTensor::matvec`]; `Y = X Wᵀ` for a
//! row-major batch `X [m, cols]` is [`QTensor::matmul`]. The dequantized weight never exists as a
//! whole during either: the kernels dequantize in registers (matvec) or one small block of rows at
//! a time into a thread-local buffer (matmul).
//!
//! Packed 4-bit layout: each row is padded with zeros to a multiple of the group size (a multiple
//! of 32); every run of 32 weights takes 16 bytes, byte `j` holding weight `j` in its low nibble and
//! weight `j + 16` in its high nibble, so a SIMD unpack needs no shuffle.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kernels;

use serde::{Deserialize, Serialize};

pub use kernels::Isa;

/// The 16 NF4 levels (QLoRA, Dettmers et al. 2023; the values of bitsandbytes' `NF4` table):
/// quantiles of N(0, 1) normalised to [-1, 1], with an exact zero.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Number of first-level NF4 scales that share one second-level scale under double quantization
/// (QLoRA uses 256).
pub const DOUBLE_QUANT_BLOCK: usize = 256;

/// Errors of quantization and of the quantized kernels.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("weight has {len} values, expected rows × cols = {rows} × {cols}")]
    ShapeMismatch {
        len: usize,
        rows: usize,
        cols: usize,
    },
    #[error("group size {0} is not supported (use a positive multiple of 32, e.g. 32, 64, 128)")]
    BadGroupSize(usize),
    #[error("input has {got} values, expected {expected}")]
    InputLen { got: usize, expected: usize },
    #[error("output has {got} values, expected {expected}")]
    OutputLen { got: usize, expected: usize },
    #[error("weight contains a non-finite value at index {0}")]
    NonFinite(usize),
    #[error("instruction set {0:?} is not available on this CPU")]
    IsaUnavailable(Isa),
}

/// Recipe setting `[model] quantize = "none" | "int8" | "int4" | "nf4"`: how the frozen base
/// weights of linear layers are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// Plain f32.
    #[default]
    None,
    /// int8, one scale per output channel.
    Int8,
    /// int4, group size 64, scale + zero point per group.
    Int4,
    /// NF4, block size 64, double-quantized scales (the QLoRA defaults).
    Nf4,
}

impl Quantize {
    /// The storage format this setting selects, with the default group sizes; `None` for f32.
    pub fn format(self) -> Option<QuantFormat> {
        match self {
            Quantize::None => None,
            Quantize::Int8 => Some(QuantFormat::Int8),
            Quantize::Int4 => Some(QuantFormat::Int4 { group_size: 64 }),
            Quantize::Nf4 => Some(QuantFormat::Nf4 {
                block_size: 64,
                double_quant: true,
            }),
        }
    }
}

/// A weight-only quantization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum QuantFormat {
    /// Unquantized f32 (kept so that every linear layer can hold a `QTensor`).
    F32,
    /// Symmetric int8 with one f32 scale per output channel (row): `w ≈ s_r · q`, q ∈ [-127, 127].
    Int8,
    /// Asymmetric int4 per group of `group_size` consecutive inputs of a row:
    /// `w ≈ s_g · (q − z_g)`, q, z ∈ [0, 15]; the range of each group is widened to contain 0 so
    /// that zero is exact.
    Int4 { group_size: usize },
    /// NF4 per block of `block_size` consecutive inputs: `w ≈ absmax_b · NF4_CODE[q]`. With
    /// `double_quant`, the absmax scales are themselves stored as int8 (minus their mean, one f32
    /// scale per [`DOUBLE_QUANT_BLOCK`] of them).
    Nf4 {
        block_size: usize,
        double_quant: bool,
    },
}

impl QuantFormat {
    /// Width of a group (int4/NF4), or 1 for the formats without groups.
    fn group(self) -> usize {
        match self {
            QuantFormat::F32 | QuantFormat::Int8 => 1,
            QuantFormat::Int4 { group_size } => group_size,
            QuantFormat::Nf4 { block_size, .. } => block_size,
        }
    }

    fn validate(self) -> Result<(), QuantError> {
        let g = self.group();
        if g != 1 && (g == 0 || !g.is_multiple_of(32)) {
            return Err(QuantError::BadGroupSize(g));
        }
        Ok(())
    }
}

/// Scales of an NF4 tensor: plain f32 absmax per block, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Nf4Scales {
    F32(Vec<f32>),
    /// `absmax_b ≈ q_b · scale2[b / DOUBLE_QUANT_BLOCK] + mean`.
    Double {
        q: Vec<i8>,
        scale2: Vec<f32>,
        mean: f32,
    },
}

impl Nf4Scales {
    /// Writes the f32 scales of blocks `[start, start + out.len())`.
    fn decode_into(&self, start: usize, out: &mut [f32]) {
        match self {
            Nf4Scales::F32(s) => out.copy_from_slice(&s[start..start + out.len()]),
            Nf4Scales::Double { q, scale2, mean } => {
                // Run by run of blocks sharing a second-level scale (a loop the compiler
                // vectorizes; the matvec decodes one row's scales per row).
                let (mut b, mut done) = (start, 0);
                while done < out.len() {
                    let s2 = scale2[b / DOUBLE_QUANT_BLOCK];
                    let n = (DOUBLE_QUANT_BLOCK - b % DOUBLE_QUANT_BLOCK).min(out.len() - done);
                    for (o, &qb) in out[done..done + n].iter_mut().zip(&q[b..b + n]) {
                        *o = qb as f32 * s2 + mean;
                    }
                    b += n;
                    done += n;
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Nf4Scales::F32(s) => 4 * s.len(),
            Nf4Scales::Double { q, scale2, .. } => q.len() + 4 * scale2.len() + 4,
        }
    }
}

/// Packed storage of a [`QTensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum QData {
    F32(Vec<f32>),
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    /// `packed`: rows × stride/2 bytes; `scales`, `zeros`: one per group, row-major.
    Int4 {
        packed: Vec<u8>,
        scales: Vec<f32>,
        zeros: Vec<u8>,
        group_size: usize,
    },
    Nf4 {
        packed: Vec<u8>,
        scales: Nf4Scales,
        block_size: usize,
    },
}

/// A quantized 2-D weight `[rows, cols]` (`[out_features, in_features]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    rows: usize,
    cols: usize,
    /// Row length in storage: `cols` rounded up to the group size (4-bit formats), else `cols`.
    stride: usize,
    data: QData,
}

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Index of the NF4 level nearest to `v` (v in [-1, 1]).
fn nf4_index(v: f32) -> u8 {
    // Midpoints between consecutive levels; the first level whose midpoint lies above v wins.
    let mut i = 0u8;
    while i < 15 && v > 0.5 * (NF4_CODE[i as usize] + NF4_CODE[i as usize + 1]) {
        i += 1;
    }
    i
}

/// Packs a row of 4-bit codes (length a multiple of 32) in the layout described in the module docs.
pub fn pack_nibbles(codes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(codes.len() % 32, 0);
    debug_assert_eq!(out.len() * 2, codes.len());
    for (chunk, o) in codes.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        for j in 0..16 {
            o[j] = (chunk[j] & 0x0F) | ((chunk[j + 16] & 0x0F) << 4);
        }
    }
}

/// Inverse of [`pack_nibbles`].
pub fn unpack_nibbles(packed: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed.len() * 2);
    for (p, chunk) in packed.chunks_exact(16).zip(out.chunks_exact_mut(32)) {
        for j in 0..16 {
            chunk[j] = p[j] & 0x0F;
            chunk[j + 16] = p[j] >> 4;
        }
    }
}

impl QTensor {
    /// Quantizes a row-major `[rows, cols]` f32 weight.
    pub fn quantize(
        w: &[f32],
        rows: usize,
        cols: usize,
        format: QuantFormat,
    ) -> Result<Self, QuantError> {
        format.validate()?;
        if w.len() != rows * cols {
            return Err(QuantError::ShapeMismatch {
                len: w.len(),
                rows,
                cols,
            });
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite(i));
        }
        let g = format.group();
        let stride = if g == 1 {
            cols
        } else {
            round_up(cols.max(1), g)
        };
        let padded_row = |r: usize, buf: &mut Vec<f32>| {
            buf.clear();
            buf.extend_from_slice(&w[r * cols..(r + 1) * cols]);
            buf.resize(stride, 0.0);
        };
        let data = match format {
            QuantFormat::F32 => QData::F32(w.to_vec()),
            QuantFormat::Int8 => {
                let mut q = vec![0i8; rows * cols];
                let mut scales = vec![0f32; rows];
                for r in 0..rows {
                    let row = &w[r * cols..(r + 1) * cols];
                    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                    scales[r] = s;
                    for (qo, &v) in q[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                        *qo = (v / s).round().clamp(-127.0, 127.0) as i8;
                    }
                }
                QData::Int8 { q, scales }
            }
            QuantFormat::Int4 { group_size } => {
                let groups = stride / group_size;
                let mut packed = vec![0u8; rows * stride / 2];
                let mut scales = vec![0f32; rows * groups];
                let mut zeros = vec![0u8; rows * groups];
                let mut row = Vec::with_capacity(stride);
                let mut codes = vec![0u8; stride];
                for r in 0..rows {
                    padded_row(r, &mut row);
                    for gi in 0..groups {
                        let grp = &row[gi * group_size..(gi + 1) * group_size];
                        let lo = grp.iter().fold(0f32, |a, &v| a.min(v));
                        let hi = grp.iter().fold(0f32, |a, &v| a.max(v));
                        let (s, z) = if hi > lo {
                            let s = (hi - lo) / 15.0;
                            (s, (-lo / s).round().clamp(0.0, 15.0))
                        } else {
                            (1.0, 0.0)
                        };
                        scales[r * groups + gi] = s;
                        zeros[r * groups + gi] = z as u8;
                        for (c, &v) in codes[gi * group_size..(gi + 1) * group_size]
                            .iter_mut()
                            .zip(grp)
                        {
                            *c = ((v / s).round() + z).clamp(0.0, 15.0) as u8;
                        }
                    }
                    pack_nibbles(&codes, &mut packed[r * stride / 2..(r + 1) * stride / 2]);
                }
                QData::Int4 {
                    packed,
                    scales,
                    zeros,
                    group_size,
                }
            }
            QuantFormat::Nf4 {
                block_size,
                double_quant,
            } => {
                let blocks = stride / block_size;
                let mut packed = vec![0u8; rows * stride / 2];
                let mut absmax = vec![0f32; rows * blocks];
                let mut row = Vec::with_capacity(stride);
                let mut codes = vec![0u8; stride];
                for r in 0..rows {
                    padded_row(r, &mut row);
                    for b in 0..blocks {
                        let blk = &row[b * block_size..(b + 1) * block_size];
                        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                        absmax[r * blocks + b] = amax;
                        let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
                        for (c, &v) in codes[b * block_size..(b + 1) * block_size]
                            .iter_mut()
                            .zip(blk)
                        {
                            *c = nf4_index(v * inv);
                        }
                    }
                    pack_nibbles(&codes, &mut packed[r * stride / 2..(r + 1) * stride / 2]);
                }
                let scales = if double_quant {
                    double_quantize(&absmax)
                } else {
                    Nf4Scales::F32(absmax)
                };
                QData::Nf4 {
                    packed,
                    scales,
                    block_size,
                }
            }
        };
        Ok(QTensor {
            rows,
            cols,
            stride,
            data,
        })
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed storage.
    pub fn data(&self) -> &QData {
        &self.data
    }

    /// The storage format.
    pub fn format(&self) -> QuantFormat {
        match &self.data {
            QData::F32(_) => QuantFormat::F32,
            QData::Int8 { .. } => QuantFormat::Int8,
            QData::Int4 { group_size, .. } => QuantFormat::Int4 {
                group_size: *group_size,
            },
            QData::Nf4 {
                scales, block_size, ..
            } => QuantFormat::Nf4 {
                block_size: *block_size,
                double_quant: matches!(scales, Nf4Scales::Double { .. }),
            },
        }
    }

    /// Bytes of weight storage (codes + scales + zero points), i.e. what one matvec reads.
    pub fn storage_bytes(&self) -> usize {
        match &self.data {
            QData::F32(w) => 4 * w.len(),
            QData::Int8 { q, scales } => q.len() + 4 * scales.len(),
            QData::Int4 {
                packed,
                scales,
                zeros,
                ..
            } => packed.len() + 4 * scales.len() + zeros.len(),
            QData::Nf4 { packed, scales, .. } => packed.len() + scales.bytes(),
        }
    }

    /// Storage bits per weight (of the unpadded `rows × cols`).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Dequantizes row `r` (its first `cols` values) into `out`.
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "row index or output length out of range"
        );
        if self.stride == self.cols {
            kernels::dequant_row(Isa::Scalar, self, r, out);
        } else {
            let mut buf = vec![0f32; self.stride];
            kernels::dequant_row(Isa::Scalar, self, r, &mut buf);
            out.copy_from_slice(&buf[..self.cols]);
        }
    }

    /// The whole weight as row-major f32 `[rows, cols]` (the reference the kernels are tested against).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, o) in out
            .chunks_exact_mut(self.cols.max(1))
            .enumerate()
            .take(self.rows)
        {
            self.dequantize_row_into(r, o);
        }
        out
    }

    /// As [`Self::dequantize`], with the SIMD dequantizers and rayon over rows (what a layer that
    /// keeps only the quantized weight calls in its forward). Equal to `dequantize` up to the
    /// rounding of a fused multiply-add.
    pub fn dequantize_fast(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let isa = Isa::detect();
        let (s, c) = (self.stride, self.cols);
        let mut out = vec![0f32; self.rows * c];
        if c == 0 {
            return out;
        }
        out.par_chunks_mut(c).enumerate().for_each_init(
            || vec![0f32; s],
            |buf, (r, o)| {
                kernels::dequant_row(isa, self, r, buf);
                o.copy_from_slice(&buf[..c]);
            },
        );
        out
    }

    /// `y = W x` (`x`: `cols` values, `y`: `rows` values) with the fastest kernel this CPU has.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
        self.matvec_with(Isa::detect(), x, y)
    }

    /// [`Self::matvec`] with a chosen instruction set (fails if the CPU lacks it).
    pub fn matvec_with(&self, isa: Isa, x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
        isa.check()?;
        if x.len() != self.cols {
            return Err(QuantError::InputLen {
                got: x.len(),
                expected: self.cols,
            });
        }
        if y.len() != self.rows {
            return Err(QuantError::OutputLen {
                got: y.len(),
                expected: self.rows,
            });
        }
        if self.stride == self.cols {
            kernels::matvec(isa, self, x, y);
        } else {
            let mut xp = x.to_vec();
            xp.resize(self.stride, 0.0);
            kernels::matvec(isa, self, &xp, y);
        }
        Ok(())
    }

    /// `Y = X Wᵀ` for a row-major batch `X [m, cols]`, giving row-major `Y [m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError> {
        self.matmul_with(Isa::detect(), x, m, y)
    }

    /// [`Self::matmul`] with a chosen instruction set (fails if the CPU lacks it).
    pub fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), QuantError> {
        isa.check()?;
        if x.len() != m * self.cols {
            return Err(QuantError::InputLen {
                got: x.len(),
                expected: m * self.cols,
            });
        }
        if y.len() != m * self.rows {
            return Err(QuantError::OutputLen {
                got: y.len(),
                expected: m * self.rows,
            });
        }
        if self.stride == self.cols {
            kernels::matmul(isa, self, x, m, y);
        } else {
            let mut xp = vec![0f32; m * self.stride];
            for (dst, src) in xp
                .chunks_exact_mut(self.stride)
                .zip(x.chunks_exact(self.cols))
            {
                dst[..self.cols].copy_from_slice(src);
            }
            kernels::matmul(isa, self, &xp, m, y);
        }
        Ok(())
    }
}

/// Double quantization of positive NF4 block scales: subtract the mean, then symmetric int8 per
/// [`DOUBLE_QUANT_BLOCK`] scales.
fn double_quantize(absmax: &[f32]) -> Nf4Scales {
    let mean = if absmax.is_empty() {
        0.0
    } else {
        (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len() as f64) as f32
    };
    let mut q = vec![0i8; absmax.len()];
    let mut scale2 = Vec::with_capacity(absmax.len().div_ceil(DOUBLE_QUANT_BLOCK));
    for (chunk, qc) in absmax
        .chunks(DOUBLE_QUANT_BLOCK)
        .zip(q.chunks_mut(DOUBLE_QUANT_BLOCK))
    {
        let amax = chunk.iter().fold(0f32, |a, &v| a.max((v - mean).abs()));
        let s2 = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale2.push(s2);
        for (o, &v) in qc.iter_mut().zip(chunk) {
            *o = ((v - mean) / s2).round().clamp(-127.0, 127.0) as i8;
        }
    }
    Nf4Scales::Double { q, scale2, mean }
}

/// Deterministic Gaussian numbers (xorshift64* + Box–Muller, no dependency): the synthetic weights
/// and inputs of the quantization tests and benches, identical on every machine for a given seed.
pub struct GaussRng(pub u64);

impl GaussRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    /// `n` draws of N(0, sigma²).
    pub fn gauss_vec(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| sigma * self.gauss()).collect()
    }
}

/// Relative Frobenius error `‖W − Ŵ‖_F / ‖W‖_F` of a quantized weight against the original.
pub fn relative_frobenius_error(original: &[f32], q: &QTensor) -> f64 {
    let d = q.dequantize();
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in original.iter().zip(&d) {
        num += ((a - b) as f64).powi(2);
        den += (a as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
