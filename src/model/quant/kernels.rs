//! Fused dequantize-and-multiply CPU kernels for [`QTensor`]: matvec (decode) and matmul
//! (prefill / training), in AVX-512, AVX2 + FMA and portable scalar versions, parallel over output
//! rows with rayon.
//!
//! The AVX2 4-bit matvec kernels are exact in f32 (up to summation order) and shuffle-light: int4
//! masks each nibble in place inside its dword (and, convert, FMA: no widening shuffles), NF4 looks
//! the levels up bit for bit from four byte planes with `vpshufb` (12 in-lane shuffles per 32
//! weights, where two `vpermps` and a blend per 8 weights took 18 shuffles, 16 of them cross-lane,
//! and 4 blends); both read a copy of `x` permuted once per
//! matvec into their unpack order ([`Avx2Layout`]) and prefetch the codes ahead. Measurements:
//! `reports/quant-avx2.md`.
//!
//! Soundness of the `unsafe` here: every `#[target_feature]` function is reached only through
//! [`matvec`], [`matmul`] or [`dequant_row`], which first assert that the CPU has the instruction set
//! (`Isa::available`, i.e. `is_x86_feature_detected!`); all pointer reads stay inside slices whose
//! lengths are checked (`debug_assert`ed in the kernels, guaranteed by `QTensor`'s invariants:
//! rows are `stride` long, 4-bit strides are multiples of 32, the inputs were length-checked).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{NF4_CODE, QData, QTensor, QuantError};

/// Instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (the compiler may still auto-vectorise it for the baseline target).
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F (+ AVX2 + FMA).
    Avx512,
}

impl Isa {
    /// Whether this CPU can run kernels of this instruction set.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub(crate) fn check(self) -> Result<(), QuantError> {
        if self.available() {
            Ok(())
        } else {
            Err(QuantError::IsaUnavailable(self))
        }
    }

    /// All instruction sets this CPU can run, slowest first.
    pub fn all_available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    /// The best available instruction set, unless the environment variable `CADVLM_ISA`
    /// (`scalar` | `avx2` | `avx512`) asks for a lower one. Cached after the first call.
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let best = *Isa::all_available().last().unwrap_or(&Isa::Scalar);
            match std::env::var("CADVLM_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if Isa::Avx2.available() => Isa::Avx2,
                _ => best,
            }
        })
    }
}

/// Below this many weights a matvec runs on the calling thread (rayon's overhead would dominate).
const PAR_MIN_WEIGHTS: usize = 1 << 16;
/// Output rows per rayon task in matvec.
const MATVEC_ROWS_PER_TASK: usize = 16;
/// Output rows per rayon task in matmul (the rows dequantized together).
const MATMUL_ROWS_PER_TASK: usize = 32;
/// Columns per K block in matmul (rounded up to a multiple of the group size).
const MATMUL_KC: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

fn dot_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa {
        // SAFETY: `isa` was checked available by the public entry point (see module docs).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
        _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

fn dot_i8(isa: Isa, q: &[i8], x: &[f32]) -> f32 {
    debug_assert_eq!(q.len(), x.len());
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_i8_avx512(q, x) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_i8_avx2(q, x) },
        _ => q.iter().zip(x).map(|(&a, &b)| a as f32 * b).sum(),
    }
}

/// The order in which the AVX2 4-bit dot products read `x`: within each run of 64 weights (32
/// packed bytes, one 256-bit load) the kernels produce 8 vectors of 8 weights in the order their
/// nibble unpack yields them, and read a copy of `x` permuted (and for int4 scaled) to match, made
/// once per matvec by [`avx2_x_layout`]. A trailing run of 32 weights (`stride % 64 == 32`) keeps
/// the natural order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Avx2Layout {
    /// int4: vector `2t + h` (t < 4, h < 2) lane `i` holds the nibble `h` (0 low, 1 high) of byte
    /// `t` of dword `i` of the 32 bytes, i.e. weight `32(i/4) + 16h + 4(i%4) + t`, masked in place
    /// (`q · 2^{8t}`), so `x` is scaled by `2^{-8t}` (exact: a power of two).
    Int4,
    /// NF4: vector `4h + m` (h < 2, m < 4) lane `4L + e` (L, the 128-bit half, < 2; e < 4) holds
    /// weight `32L + 16h + 4m + e` (the order of the byte-plane lookups' unpacks).
    Nf4,
}

/// `x` permuted (and scaled) into `layout` (see [`Avx2Layout`]); the inverse of what the kernels do.
fn avx2_x_layout(layout: Avx2Layout, x: &[f32]) -> Vec<f32> {
    let mut xp = x.to_vec();
    let full = x.len() / 64 * 64;
    for (c, o) in x[..full].chunks_exact(64).zip(xp.chunks_exact_mut(64)) {
        for v in 0..8 {
            for i in 0..8 {
                o[8 * v + i] = match layout {
                    Avx2Layout::Int4 => {
                        let (t, h) = (v / 2, v % 2);
                        let scale = [1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16_777_216.0][t];
                        c[32 * (i / 4) + 16 * h + 4 * (i % 4) + t] * scale
                    }
                    Avx2Layout::Nf4 => {
                        let (h, m, l, e) = (v / 4, v % 4, i / 4, i % 4);
                        c[32 * l + 16 * h + 4 * m + e]
                    }
                };
            }
        }
    }
    xp
}

/// `Σ_g s_g · Σ_{j∈g} (q_j − z_g) x_j`, using `xsum[g] = Σ_{j∈g} x_j`; `xp` is `x` in
/// [`Avx2Layout::Int4`] order (read by the AVX2 kernel only).
#[allow(clippy::too_many_arguments)]
fn dot_q4(
    isa: Isa,
    packed: &[u8],
    scales: &[f32],
    zeros: &[u8],
    group: usize,
    x: &[f32],
    xp: &[f32],
    xsum: &[f32],
) -> f32 {
    debug_assert_eq!(packed.len() * 2, x.len());
    debug_assert_eq!(scales.len() * group, x.len());
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_q4_avx512(packed, scales, zeros, group, x, xsum) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            debug_assert_eq!(xp.len(), x.len());
            // SAFETY: as above; xp is as long as x.
            unsafe { x86::dot_q4_avx2(packed, scales, zeros, group, xp, xsum) }
        }
        _ => {
            let mut acc = 0f32;
            for g in 0..scales.len() {
                let mut d = 0f32;
                for (p, xc) in packed[g * group / 2..(g + 1) * group / 2]
                    .chunks_exact(16)
                    .zip(x[g * group..].chunks_exact(32))
                {
                    for j in 0..16 {
                        d += (p[j] & 0x0F) as f32 * xc[j] + (p[j] >> 4) as f32 * xc[j + 16];
                    }
                }
                acc += scales[g] * (d - zeros[g] as f32 * xsum[g]);
            }
            acc
        }
    }
}

/// `Σ_b absmax_b · Σ_{j∈b} NF4[q_j] x_j`; `xp` is `x` in [`Avx2Layout::Nf4`] order (read by the
/// AVX2 kernel only).
fn dot_nf4(isa: Isa, packed: &[u8], absmax: &[f32], block: usize, x: &[f32], xp: &[f32]) -> f32 {
    debug_assert_eq!(packed.len() * 2, x.len());
    debug_assert_eq!(absmax.len() * block, x.len());
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_nf4_avx512(packed, absmax, block, x) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            debug_assert_eq!(xp.len(), x.len());
            // SAFETY: as above; xp is as long as x.
            unsafe { x86::dot_nf4_avx2(packed, absmax, block, xp) }
        }
        _ => {
            let mut acc = 0f32;
            for (b, &s) in absmax.iter().enumerate() {
                let mut d = 0f32;
                for (p, xc) in packed[b * block / 2..(b + 1) * block / 2]
                    .chunks_exact(16)
                    .zip(x[b * block..].chunks_exact(32))
                {
                    for j in 0..16 {
                        d += NF4_CODE[(p[j] & 0x0F) as usize] * xc[j]
                            + NF4_CODE[(p[j] >> 4) as usize] * xc[j + 16];
                    }
                }
                acc += s * d;
            }
            acc
        }
    }
}

/// Dequantizes columns `[k0, k0 + out.len())` of row `r` (k0 and the length are multiples of the
/// group size for 4-bit formats; `k0 + out.len() <= stride`).
fn dequant_range(isa: Isa, t: &QTensor, r: usize, k0: usize, out: &mut [f32]) {
    let s = t.stride;
    let len = out.len();
    debug_assert!(k0 + len <= s);
    match &t.data {
        QData::F32(w) => out.copy_from_slice(&w[r * s + k0..r * s + k0 + len]),
        QData::Int8 { q, scales } => {
            let qs = &q[r * s + k0..r * s + k0 + len];
            let sc = scales[r];
            for (o, &v) in out.iter_mut().zip(qs) {
                *o = v as f32 * sc;
            }
        }
        QData::Int4 {
            packed,
            scales,
            zeros,
            group_size,
        } => {
            let g = *group_size;
            debug_assert!(k0.is_multiple_of(g) && len.is_multiple_of(g));
            let gpr = s / g;
            let p = &packed[(r * s + k0) / 2..(r * s + k0 + len) / 2];
            let sc = &scales[r * gpr + k0 / g..r * gpr + (k0 + len) / g];
            let zs = &zeros[r * gpr + k0 / g..r * gpr + (k0 + len) / g];
            match isa {
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512 => unsafe { x86::dequant_q4_avx2(p, sc, zs, g, out) },
                _ => {
                    for gi in 0..sc.len() {
                        let (scale, off) = (sc[gi], -(zs[gi] as f32) * sc[gi]);
                        for (pc, oc) in p[gi * g / 2..(gi + 1) * g / 2]
                            .chunks_exact(16)
                            .zip(out[gi * g..].chunks_exact_mut(32))
                        {
                            for j in 0..16 {
                                oc[j] = (pc[j] & 0x0F) as f32 * scale + off;
                                oc[j + 16] = (pc[j] >> 4) as f32 * scale + off;
                            }
                        }
                    }
                }
            }
        }
        QData::Nf4 {
            packed,
            scales,
            block_size,
        } => {
            let b = *block_size;
            debug_assert!(k0.is_multiple_of(b) && len.is_multiple_of(b));
            let bpr = s / b;
            let p = &packed[(r * s + k0) / 2..(r * s + k0 + len) / 2];
            let mut absmax = [0f32; 64];
            let mut start = 0;
            // Decode the scales in pieces of 64 blocks (no allocation).
            while start < len / b {
                let n = (len / b - start).min(64);
                scales.decode_into(r * bpr + k0 / b + start, &mut absmax[..n]);
                for (bi, &amax) in absmax[..n].iter().enumerate() {
                    let blk = start + bi;
                    let pc = &p[blk * b / 2..(blk + 1) * b / 2];
                    let oc = &mut out[blk * b..(blk + 1) * b];
                    match isa {
                        // SAFETY: as above.
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 | Isa::Avx512 => unsafe { x86::dequant_nf4_avx2(pc, amax, oc) },
                        _ => {
                            for (pp, o32) in pc.chunks_exact(16).zip(oc.chunks_exact_mut(32)) {
                                for j in 0..16 {
                                    o32[j] = NF4_CODE[(pp[j] & 0x0F) as usize] * amax;
                                    o32[j + 16] = NF4_CODE[(pp[j] >> 4) as usize] * amax;
                                }
                            }
                        }
                    }
                }
                start += n;
            }
        }
    }
}

/// Dequantizes the whole (padded, `stride`-long) row `r` into `out`.
pub(crate) fn dequant_row(isa: Isa, t: &QTensor, r: usize, out: &mut [f32]) {
    assert!(
        isa.available(),
        "kernel called with an unavailable instruction set"
    );
    assert_eq!(out.len(), t.stride);
    dequant_range(isa, t, r, 0, out);
}

// ---------------------------------------------------------------------------------------------
// matvec
// ---------------------------------------------------------------------------------------------

/// `y = W x`; `x` is `stride` long (zero-padded by the caller).
pub(crate) fn matvec(isa: Isa, t: &QTensor, x: &[f32], y: &mut [f32]) {
    assert!(
        isa.available(),
        "kernel called with an unavailable instruction set"
    );
    assert!(x.len() == t.stride && y.len() == t.rows);
    let s = t.stride;
    let xsum: Vec<f32> = match &t.data {
        QData::Int4 { group_size, .. } => x
            .chunks_exact(*group_size)
            .map(|c| c.iter().sum())
            .collect(),
        _ => Vec::new(),
    };
    // The AVX2 4-bit kernels read x in the order of their nibble unpack (made once per call).
    let xp: Vec<f32> = match (&t.data, isa) {
        (QData::Int4 { .. }, Isa::Avx2) => avx2_x_layout(Avx2Layout::Int4, x),
        (QData::Nf4 { .. }, Isa::Avx2) => avx2_x_layout(Avx2Layout::Nf4, x),
        _ => Vec::new(),
    };
    let row_dot = |r: usize, sbuf: &mut Vec<f32>| -> f32 {
        match &t.data {
            QData::F32(w) => dot_f32(isa, &w[r * s..(r + 1) * s], x),
            QData::Int8 { q, scales } => scales[r] * dot_i8(isa, &q[r * s..(r + 1) * s], x),
            QData::Int4 {
                packed,
                scales,
                zeros,
                group_size,
            } => {
                let gpr = s / group_size;
                dot_q4(
                    isa,
                    &packed[r * s / 2..(r + 1) * s / 2],
                    &scales[r * gpr..(r + 1) * gpr],
                    &zeros[r * gpr..(r + 1) * gpr],
                    *group_size,
                    x,
                    &xp,
                    &xsum,
                )
            }
            QData::Nf4 {
                packed,
                scales,
                block_size,
            } => {
                let bpr = s / block_size;
                sbuf.resize(bpr, 0.0);
                scales.decode_into(r * bpr, sbuf);
                dot_nf4(
                    isa,
                    &packed[r * s / 2..(r + 1) * s / 2],
                    sbuf,
                    *block_size,
                    x,
                    &xp,
                )
            }
        }
    };
    if t.rows * s < PAR_MIN_WEIGHTS {
        let mut sbuf = Vec::new();
        for (r, yo) in y.iter_mut().enumerate() {
            *yo = row_dot(r, &mut sbuf);
        }
    } else {
        y.par_chunks_mut(MATVEC_ROWS_PER_TASK)
            .enumerate()
            .for_each_init(Vec::new, |sbuf, (ci, yc)| {
                for (i, yo) in yc.iter_mut().enumerate() {
                    *yo = row_dot(ci * MATVEC_ROWS_PER_TASK + i, sbuf);
                }
            });
    }
}

// ---------------------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------------------

/// `Y [m, rows] = X [m, stride] · Wᵀ`: each task dequantizes a block of rows one K block at a time
/// into a thread-local buffer and multiplies it with the matching K block of X.
pub(crate) fn matmul(isa: Isa, t: &QTensor, x: &[f32], m: usize, y: &mut [f32]) {
    assert!(
        isa.available(),
        "kernel called with an unavailable instruction set"
    );
    let (rows, s) = (t.rows, t.stride);
    assert!(x.len() == m * s && y.len() == m * rows);
    if m == 0 || rows == 0 {
        return;
    }
    let group = match &t.data {
        QData::Int4 { group_size, .. } => *group_size,
        QData::Nf4 { block_size, .. } => *block_size,
        _ => 1,
    };
    let kc = round_up_to(MATMUL_KC, group).min(s).max(1);
    let is_f32 = matches!(t.data, QData::F32(_));
    // Output transposed ([rows, m]) so that each task owns a contiguous chunk.
    let mut yt = vec![0f32; rows * m];
    let task = |buf: &mut Vec<f32>, (bi, ytc): (usize, &mut [f32])| {
        let r0 = bi * MATMUL_ROWS_PER_TASK;
        let nr = ytc.len() / m;
        let mut k0 = 0;
        while k0 < s {
            let len = kc.min(s - k0);
            // The rows' K block as f32: straight from storage for f32 weights, else dequantized.
            let (w, ldw, woff): (&[f32], usize, usize) =
                if let (true, QData::F32(wf)) = (is_f32, &t.data) {
                    (&wf[r0 * s..(r0 + nr) * s], s, k0)
                } else {
                    buf.resize(nr * kc, 0.0);
                    for i in 0..nr {
                        dequant_range(isa, t, r0 + i, k0, &mut buf[i * kc..i * kc + len]);
                    }
                    (&buf[..], kc, 0)
                };
            gemm_block(isa, w, ldw, woff, nr, x, s, k0, len, m, ytc);
            k0 += len;
        }
    };
    if rows * s * m < PAR_MIN_WEIGHTS {
        let mut buf = Vec::new();
        for (bi, ytc) in yt.chunks_mut(MATMUL_ROWS_PER_TASK * m).enumerate() {
            task(&mut buf, (bi, ytc));
        }
    } else {
        yt.par_chunks_mut(MATMUL_ROWS_PER_TASK * m)
            .enumerate()
            .for_each_init(Vec::new, task);
    }
    for r in 0..rows {
        for j in 0..m {
            y[j * rows + r] = yt[r * m + j];
        }
    }
}

fn round_up_to(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// `out[i * m + j] += Σ_{k<len} w[i * ldw + woff + k] · x[j * ldx + xoff + k]` for i < nr, j < m.
#[allow(clippy::too_many_arguments)]
fn gemm_block(
    isa: Isa,
    w: &[f32],
    ldw: usize,
    woff: usize,
    nr: usize,
    x: &[f32],
    ldx: usize,
    xoff: usize,
    len: usize,
    m: usize,
    out: &mut [f32],
) {
    debug_assert!(nr == 0 || (nr - 1) * ldw + woff + len <= w.len());
    debug_assert!(m == 0 || (m - 1) * ldx + xoff + len <= x.len());
    debug_assert!(out.len() >= nr * m);
    let (ri, tj) = match isa {
        // SAFETY: as above; the bounds were asserted just before.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            x86::gemm_micro_avx512(w, ldw, woff, nr, x, ldx, xoff, len, m, out)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::gemm_micro_avx2(w, ldw, woff, nr, x, ldx, xoff, len, m, out) },
        _ => (0, 0),
    };
    // The micro-kernel covered rows [0, ri) × tokens [0, tj); the rest pair by pair.
    for i in 0..nr {
        let wr = &w[i * ldw + woff..i * ldw + woff + len];
        let jstart = if i < ri { tj } else { 0 };
        for j in jstart..m {
            out[i * m + j] += dot_f32(isa, wr, &x[j * ldx + xoff..j * ldx + xoff + len]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64 SIMD
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::NF4_CODE;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    // ---- f32 ----

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n.
        unsafe {
            while i + 32 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(pa.add(i + 8 * u)),
                        _mm256_loadu_ps(pb.add(i + 8 * u)),
                        *a,
                    );
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
        }
        let mut s = hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        for k in i..n {
            s += a[k] * b[k];
        }
        s
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 64 (resp. 16) <= n.
        unsafe {
            while i + 64 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(
                        _mm512_loadu_ps(pa.add(i + 16 * u)),
                        _mm512_loadu_ps(pb.add(i + 16 * u)),
                        *a,
                    );
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i)),
                    _mm512_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 16;
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
        for k in i..n {
            s += a[k] * b[k];
        }
        s
    }

    // ---- int8 ----

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i8_avx2(q: &[i8], x: &[f32]) -> f32 {
        let n = q.len().min(x.len());
        let (pq, px) = (q.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + 32 <= n for every load.
        unsafe {
            while i + 32 <= n {
                let b = _mm256_loadu_si256(pq.add(i) as *const __m256i);
                let lo = _mm256_castsi256_si128(b);
                let hi = _mm256_extracti128_si256::<1>(b);
                let parts = [
                    lo,
                    _mm_unpackhi_epi64(lo, lo),
                    hi,
                    _mm_unpackhi_epi64(hi, hi),
                ];
                for (u, a) in acc.iter_mut().enumerate() {
                    let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[u]));
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(px.add(i + 8 * u)), *a);
                }
                i += 32;
            }
        }
        let mut s = hsum256(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        for k in i..n {
            s += q[k] as f32 * x[k];
        }
        s
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn dot_i8_avx512(q: &[i8], x: &[f32]) -> f32 {
        let n = q.len().min(x.len());
        let (pq, px) = (q.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + 64 <= n for every load.
        unsafe {
            while i + 64 <= n {
                for (u, a) in acc.iter_mut().enumerate() {
                    let b = _mm_loadu_si128(pq.add(i + 16 * u) as *const __m128i);
                    let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                    *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(px.add(i + 16 * u)), *a);
                }
                i += 64;
            }
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(acc[0], acc[1]),
            _mm512_add_ps(acc[2], acc[3]),
        ));
        for k in i..n {
            s += q[k] as f32 * x[k];
        }
        s
    }

    // ---- int4 (group-wise, zero point) ----

    /// How far ahead of the packed 4-bit codes being read the AVX2 kernels prefetch, in bytes. The
    /// kernels spend longer per byte than a plain stream, and the hardware prefetcher alone does
    /// not run far enough ahead to hide the memory latency behind that work (nor across 4 KiB
    /// pages); reaching into the next rows is fine, as they are read next.
    const PREFETCH_BYTES: usize = 1024;

    /// Prefetches the cache line `PREFETCH_BYTES` after `p` into L1 (a hint: never faults, so the
    /// address may lie past the end of the weights).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn prefetch_ahead(p: *const u8) {
        // A prefetch reads nothing architecturally (a safe intrinsic); wrapping_add keeps the
        // address computation defined when it leaves the allocation.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES) as *const i8);
    }

    /// The group index of each successive 32-weight run (no division per chunk).
    struct RunGroups {
        per_group: usize,
        group: usize,
        left: usize,
    }

    impl RunGroups {
        fn new(group: usize) -> Self {
            let per_group = group / 32;
            RunGroups {
                per_group,
                group: 0,
                left: per_group,
            }
        }

        #[inline]
        fn next(&mut self) -> usize {
            let g = self.group;
            self.left -= 1;
            if self.left == 0 {
                self.group += 1;
                self.left = self.per_group;
            }
            g
        }
    }

    /// `[s0 ×4 | s1 ×4]`: the scales of the two 32-weight runs of a 64-weight chunk when a group
    /// boundary may fall between them (group size an odd multiple of 32).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn halves(s0: f32, s1: f32) -> __m256 {
        _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0))
    }

    /// One 64-weight chunk of int4 codes (32 bytes at `p`) times `x` in [`super::Avx2Layout::Int4`]
    /// order (64 floats at `x`), into two accumulators. Each nibble is masked in place in its
    /// dword (`q · 2^{8t}`, at most 15 · 2^24, so the int → f32 conversion is exact) and meets an
    /// `x` pre-scaled by `2^{-8t}`: 8 × (and, convert, FMA) per 64 weights, no shuffles.
    ///
    /// # Safety
    /// `p` is readable for 32 bytes and `x` for 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4_chunk(p: *const u8, x: *const f32, a: &mut [__m256; 2]) {
        prefetch_ahead(p);
        // SAFETY: the caller's contract.
        unsafe {
            let b = _mm256_loadu_si256(p as *const __m256i);
            let b4 = _mm256_srli_epi32::<4>(b);
            let m = [
                _mm256_set1_epi32(0x0F),
                _mm256_set1_epi32(0x0F00),
                _mm256_set1_epi32(0x0F_0000),
                _mm256_set1_epi32(0x0F00_0000),
            ];
            for (t, &mt) in m.iter().enumerate() {
                let w0 = _mm256_cvtepi32_ps(_mm256_and_si256(b, mt));
                let w1 = _mm256_cvtepi32_ps(_mm256_and_si256(b4, mt));
                a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.add(16 * t)), a[0]);
                a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(16 * t + 8)), a[1]);
            }
        }
    }

    /// `Σ_g s_g (Σ_{j∈g} q_j x_j − z_g xsum_g)` with `xp` in [`super::Avx2Layout::Int4`] order.
    /// Exact in f32 up to summation order (the weights are converted exactly, `x` only scaled by
    /// powers of two).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4_avx2(
        packed: &[u8],
        scales: &[f32],
        zeros: &[u8],
        group: usize,
        xp: &[f32],
        xsum: &[f32],
    ) -> f32 {
        debug_assert!(packed.len() * 2 == xp.len() && scales.len() * group == xp.len());
        let chunks = xp.len() / 64;
        let (pp, px) = (packed.as_ptr(), xp.as_ptr());
        let mut acc = _mm256_setzero_ps();
        if group.is_multiple_of(64) {
            let per = group / 64;
            for (g, &s) in scales.iter().enumerate() {
                let mut d = [_mm256_setzero_ps(); 2];
                for c in g * per..(g + 1) * per {
                    // SAFETY: c < chunks = packed.len() / 32 = xp.len() / 64.
                    unsafe { q4_chunk(pp.add(32 * c), px.add(64 * c), &mut d) };
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_add_ps(d[0], d[1]), acc);
            }
        } else {
            let mut runs = RunGroups::new(group);
            for c in 0..chunks {
                let mut d = [_mm256_setzero_ps(); 2];
                // SAFETY: as above.
                unsafe { q4_chunk(pp.add(32 * c), px.add(64 * c), &mut d) };
                let sv = halves(scales[runs.next()], scales[runs.next()]);
                acc = _mm256_fmadd_ps(sv, _mm256_add_ps(d[0], d[1]), acc);
            }
        }
        let mut sum = hsum256(acc);
        // A trailing run of 32 weights (natural order in xp).
        if xp.len() % 64 == 32 {
            let (p, x) = (&packed[32 * chunks..], &xp[64 * chunks..]);
            let mut d = 0f32;
            for j in 0..16 {
                d += (p[j] & 0x0F) as f32 * x[j] + (p[j] >> 4) as f32 * x[j + 16];
            }
            sum += scales[64 * chunks / group] * d;
        }
        // The zero-point term Σ_g s_g z_g xsum_g, 8 groups at a time.
        let ng = scales.len();
        let mut zacc = _mm256_setzero_ps();
        let mut g = 0;
        while g + 8 <= ng {
            // SAFETY: g + 8 <= ng = scales.len() = zeros.len() = xsum.len().
            unsafe {
                let z = _mm_loadl_epi64(zeros.as_ptr().add(g) as *const __m128i);
                let zf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(z));
                let sz = _mm256_mul_ps(_mm256_loadu_ps(scales.as_ptr().add(g)), zf);
                zacc = _mm256_fmadd_ps(sz, _mm256_loadu_ps(xsum.as_ptr().add(g)), zacc);
            }
            g += 8;
        }
        let mut zterm = hsum256(zacc);
        for k in g..ng {
            zterm += scales[k] * zeros[k] as f32 * xsum[k];
        }
        sum - zterm
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn dot_q4_avx512(
        packed: &[u8],
        scales: &[f32],
        zeros: &[u8],
        group: usize,
        x: &[f32],
        xsum: &[f32],
    ) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut zterm = 0f32;
        let chunks = group / 32;
        let (pp, px) = (packed.as_ptr(), x.as_ptr());
        for g in 0..scales.len() {
            let mut d = [_mm512_setzero_ps(); 2];
            for c in 0..chunks {
                let base = g * chunks + c;
                // SAFETY: base < packed.len() / 16 = x.len() / 32 (checked by the dispatcher).
                unsafe {
                    let b = _mm_loadu_si128(pp.add(base * 16) as *const __m128i);
                    let lo = _mm_and_si128(b, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
                    let xp = px.add(base * 32);
                    let q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
                    let q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
                    d[0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(xp), d[0]);
                    d[1] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xp.add(16)), d[1]);
                }
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(scales[g]), _mm512_add_ps(d[0], d[1]), acc);
            zterm += scales[g] * zeros[g] as f32 * xsum[g];
        }
        _mm512_reduce_add_ps(acc) - zterm
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequant_q4_avx2(
        packed: &[u8],
        scales: &[f32],
        zeros: &[u8],
        group: usize,
        out: &mut [f32],
    ) {
        let mask = _mm_set1_epi8(0x0F);
        let chunks = group / 32;
        let (pp, po) = (packed.as_ptr(), out.as_mut_ptr());
        for g in 0..scales.len() {
            let s = _mm256_set1_ps(scales[g]);
            let off = _mm256_set1_ps(-(zeros[g] as f32) * scales[g]);
            for c in 0..chunks {
                let base = g * chunks + c;
                // SAFETY: base < packed.len() / 16 and out.len() = 2 * packed.len().
                unsafe {
                    let b = _mm_loadu_si128(pp.add(base * 16) as *const __m128i);
                    let lo = _mm_and_si128(b, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
                    let parts = [
                        lo,
                        _mm_unpackhi_epi64(lo, lo),
                        hi,
                        _mm_unpackhi_epi64(hi, hi),
                    ];
                    for (u, p) in parts.into_iter().enumerate() {
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(p));
                        _mm256_storeu_ps(po.add(base * 32 + 8 * u), _mm256_fmadd_ps(q, s, off));
                    }
                }
            }
        }
    }

    // ---- NF4 ----

    /// NF4 lookup of 8 indices (0..16 as i32): two 8-entry permutes and a blend on bit 3.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn nf4_lut8(idx: __m256i, tlo: __m256, thi: __m256) -> __m256 {
        let a = _mm256_permutevar8x32_ps(tlo, idx);
        let b = _mm256_permutevar8x32_ps(thi, idx);
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx)))
    }

    /// Byte `t` of the f32 bit patterns of the 16 NF4 levels, for `t` = 0..4 (little-endian): four
    /// 16-entry byte tables, so that `vpshufb` looks up 32 levels at once, exactly.
    const NF4_PLANES: [[u8; 16]; 4] = {
        let mut planes = [[0u8; 16]; 4];
        let mut i = 0;
        while i < 16 {
            let bytes = NF4_CODE[i].to_bits().to_le_bytes();
            let mut t = 0;
            while t < 4 {
                planes[t][i] = bytes[t];
                t += 1;
            }
            i += 1;
        }
        planes
    };

    /// The NF4 levels of 32 nibble indices (one per byte, 0..16): four byte-plane `vpshufb`
    /// lookups, then two rounds of in-lane unpacks assemble the f32 bit patterns. Returns 4
    /// vectors; vector `m` lane `4L + e` is the level of index byte `16L + 4m + e`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn nf4_levels32(idx: __m256i, planes: &[__m256i; 4]) -> [__m256; 4] {
        let b0 = _mm256_shuffle_epi8(planes[0], idx);
        let b1 = _mm256_shuffle_epi8(planes[1], idx);
        let b2 = _mm256_shuffle_epi8(planes[2], idx);
        let b3 = _mm256_shuffle_epi8(planes[3], idx);
        let l01 = _mm256_unpacklo_epi8(b0, b1);
        let h01 = _mm256_unpackhi_epi8(b0, b1);
        let l23 = _mm256_unpacklo_epi8(b2, b3);
        let h23 = _mm256_unpackhi_epi8(b2, b3);
        [
            _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23)),
            _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23)),
        ]
    }

    /// One 64-weight chunk of NF4 codes (32 bytes at `p`) times `x` in
    /// [`super::Avx2Layout::Nf4`] order (64 floats at `x`), into two accumulators.
    ///
    /// # Safety
    /// `p` is readable for 32 bytes and `x` for 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nf4_chunk(p: *const u8, x: *const f32, planes: &[__m256i; 4], a: &mut [__m256; 2]) {
        let mask = _mm256_set1_epi8(0x0F);
        prefetch_ahead(p);
        // SAFETY: the caller's contract.
        unsafe {
            let b = _mm256_loadu_si256(p as *const __m256i);
            let lo = _mm256_and_si256(b, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask);
            for (h, idx) in [lo, hi].into_iter().enumerate() {
                let w = nf4_levels32(idx, planes);
                for m in 0..4 {
                    let xv = _mm256_loadu_ps(x.add(32 * h + 8 * m));
                    a[m % 2] = _mm256_fmadd_ps(w[m], xv, a[m % 2]);
                }
            }
        }
    }

    /// `Σ_b absmax_b Σ_{j∈b} NF4[q_j] x_j` with `xp` in [`super::Avx2Layout::Nf4`] order. Exact
    /// in f32 up to summation order: the levels are looked up bit for bit (byte planes), not
    /// rounded to a narrower table.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_nf4_avx2(
        packed: &[u8],
        absmax: &[f32],
        block: usize,
        xp: &[f32],
    ) -> f32 {
        debug_assert!(packed.len() * 2 == xp.len() && absmax.len() * block == xp.len());
        // SAFETY: each plane has 16 bytes.
        let planes: [__m256i; 4] = std::array::from_fn(|t| unsafe {
            _mm256_broadcastsi128_si256(_mm_loadu_si128(NF4_PLANES[t].as_ptr() as *const __m128i))
        });
        let chunks = xp.len() / 64;
        let (pp, px) = (packed.as_ptr(), xp.as_ptr());
        let mut acc = _mm256_setzero_ps();
        if block.is_multiple_of(64) {
            let per = block / 64;
            for (bi, &s) in absmax.iter().enumerate() {
                let mut d = [_mm256_setzero_ps(); 2];
                for c in bi * per..(bi + 1) * per {
                    // SAFETY: c < chunks = packed.len() / 32 = xp.len() / 64.
                    unsafe { nf4_chunk(pp.add(32 * c), px.add(64 * c), &planes, &mut d) };
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_add_ps(d[0], d[1]), acc);
            }
        } else {
            let mut runs = RunGroups::new(block);
            for c in 0..chunks {
                let mut d = [_mm256_setzero_ps(); 2];
                // SAFETY: as above.
                unsafe { nf4_chunk(pp.add(32 * c), px.add(64 * c), &planes, &mut d) };
                let sv = halves(absmax[runs.next()], absmax[runs.next()]);
                acc = _mm256_fmadd_ps(sv, _mm256_add_ps(d[0], d[1]), acc);
            }
        }
        let mut sum = hsum256(acc);
        // A trailing run of 32 weights (natural order in xp).
        if xp.len() % 64 == 32 {
            let (p, x) = (&packed[32 * chunks..], &xp[64 * chunks..]);
            let mut d = 0f32;
            for j in 0..16 {
                d += NF4_CODE[(p[j] & 0x0F) as usize] * x[j]
                    + NF4_CODE[(p[j] >> 4) as usize] * x[j + 16];
            }
            sum += absmax[64 * chunks / block] * d;
        }
        sum
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn dot_nf4_avx512(
        packed: &[u8],
        absmax: &[f32],
        block: usize,
        x: &[f32],
    ) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        // SAFETY: NF4_CODE has 16 entries.
        let table = unsafe { _mm512_loadu_ps(NF4_CODE.as_ptr()) };
        let mut acc = _mm512_setzero_ps();
        let chunks = block / 32;
        let (pp, px) = (packed.as_ptr(), x.as_ptr());
        for (bi, &s) in absmax.iter().enumerate() {
            let mut d = [_mm512_setzero_ps(); 2];
            for c in 0..chunks {
                let base = bi * chunks + c;
                // SAFETY: base < packed.len() / 16 = x.len() / 32 (checked by the dispatcher).
                unsafe {
                    let b = _mm_loadu_si128(pp.add(base * 16) as *const __m128i);
                    let lo = _mm_and_si128(b, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
                    let xp = px.add(base * 32);
                    let w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(lo), table);
                    let w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(hi), table);
                    d[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), d[0]);
                    d[1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(16)), d[1]);
                }
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_add_ps(d[0], d[1]), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequant_nf4_avx2(packed: &[u8], absmax: f32, out: &mut [f32]) {
        let mask = _mm_set1_epi8(0x0F);
        // SAFETY: NF4_CODE has 16 entries.
        let (tlo, thi) = unsafe {
            (
                _mm256_loadu_ps(NF4_CODE.as_ptr()),
                _mm256_loadu_ps(NF4_CODE.as_ptr().add(8)),
            )
        };
        let s = _mm256_set1_ps(absmax);
        let (pp, po) = (packed.as_ptr(), out.as_mut_ptr());
        for base in 0..packed.len() / 16 {
            // SAFETY: base < packed.len() / 16 and out.len() = 2 * packed.len().
            unsafe {
                let b = _mm_loadu_si128(pp.add(base * 16) as *const __m128i);
                let lo = _mm_and_si128(b, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
                let parts = [
                    lo,
                    _mm_unpackhi_epi64(lo, lo),
                    hi,
                    _mm_unpackhi_epi64(hi, hi),
                ];
                for (u, p) in parts.into_iter().enumerate() {
                    let w = nf4_lut8(_mm256_cvtepu8_epi32(p), tlo, thi);
                    _mm256_storeu_ps(po.add(base * 32 + 8 * u), _mm256_mul_ps(w, s));
                }
            }
        }
    }

    // ---- GEMM micro-kernels over f32 (dequantized) blocks ----

    /// Register-blocked `out[i*m+j] += dot(w_i, x_j)` for 4 rows × 2 tokens at a time. Returns the
    /// (rows, tokens) extent it covered; the caller finishes the edges.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm_micro_avx2(
        w: &[f32],
        ldw: usize,
        woff: usize,
        nr: usize,
        x: &[f32],
        ldx: usize,
        xoff: usize,
        len: usize,
        m: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        const R: usize = 4;
        const T: usize = 2;
        let (ri, tj) = (nr / R * R, m / T * T);
        let kv = len / 8 * 8;
        for i0 in (0..ri).step_by(R) {
            for j0 in (0..tj).step_by(T) {
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                let mut k = 0;
                // SAFETY: rows i0..i0+R < nr and tokens j0..j0+T < m, k + 8 <= len; the caller
                // asserted that every (row, k < len) and (token, k < len) index is in bounds.
                unsafe {
                    let wp: [*const f32; R] =
                        std::array::from_fn(|r| w.as_ptr().add((i0 + r) * ldw + woff));
                    let xp: [*const f32; T] =
                        std::array::from_fn(|t| x.as_ptr().add((j0 + t) * ldx + xoff));
                    while k < kv {
                        let mut xv = [_mm256_setzero_ps(); T];
                        for t in 0..T {
                            xv[t] = _mm256_loadu_ps(xp[t].add(k));
                        }
                        for r in 0..R {
                            let wv = _mm256_loadu_ps(wp[r].add(k));
                            for t in 0..T {
                                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
                            }
                        }
                        k += 8;
                    }
                }
                for r in 0..R {
                    for t in 0..T {
                        let (wi, xj) = ((i0 + r) * ldw + woff, (j0 + t) * ldx + xoff);
                        let mut s = hsum256(acc[r][t]);
                        for kk in kv..len {
                            s += w[wi + kk] * x[xj + kk];
                        }
                        out[(i0 + r) * m + j0 + t] += s;
                    }
                }
            }
        }
        (ri, tj)
    }

    /// As [`gemm_micro_avx2`] with 512-bit vectors and 4 rows × 4 tokens (16 accumulators).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gemm_micro_avx512(
        w: &[f32],
        ldw: usize,
        woff: usize,
        nr: usize,
        x: &[f32],
        ldx: usize,
        xoff: usize,
        len: usize,
        m: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        const R: usize = 4;
        const T: usize = 4;
        let (ri, tj) = (nr / R * R, m / T * T);
        let kv = len / 16 * 16;
        for i0 in (0..ri).step_by(R) {
            for j0 in (0..tj).step_by(T) {
                let mut acc = [[_mm512_setzero_ps(); T]; R];
                let mut k = 0;
                // SAFETY: as in gemm_micro_avx2.
                unsafe {
                    let wp: [*const f32; R] =
                        std::array::from_fn(|r| w.as_ptr().add((i0 + r) * ldw + woff));
                    let xp: [*const f32; T] =
                        std::array::from_fn(|t| x.as_ptr().add((j0 + t) * ldx + xoff));
                    while k < kv {
                        let mut xv = [_mm512_setzero_ps(); T];
                        for t in 0..T {
                            xv[t] = _mm512_loadu_ps(xp[t].add(k));
                        }
                        for r in 0..R {
                            let wv = _mm512_loadu_ps(wp[r].add(k));
                            for t in 0..T {
                                acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
                            }
                        }
                        k += 16;
                    }
                }
                for r in 0..R {
                    for t in 0..T {
                        let (wi, xj) = ((i0 + r) * ldw + woff, (j0 + t) * ldx + xoff);
                        let mut s = _mm512_reduce_add_ps(acc[r][t]);
                        for kk in kv..len {
                            s += w[wi + kk] * x[xj + kk];
                        }
                        out[(i0 + r) * m + j0 + t] += s;
                    }
                }
            }
        }
        (ri, tj)
    }
}
