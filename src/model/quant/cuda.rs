//! CUDA counterpart of the fused CPU kernels: one cubecl kernel that dequantizes int8, int4 and NF4
//! weights in registers and multiplies them by a batch of vectors (`y = W x`, `Y = X Wᵀ`), launched
//! on the compute client that burn-cuda uses for the same [`CudaDevice`].
//!
//! **Status: compiled, not run.** This was written and built on a machine with no GPU; the kernel has
//! not yet been run on hardware. The tests in `tests/quant_cuda.rs` compare it with
//! [`QTensor::matvec`] / [`QTensor::matmul`] (1e-4 relative, NF4 / int4 / int8, 4096×4096 and odd
//! shapes) and skip with a message when no CUDA device can be created ([`open_device`] turns
//! cubecl-cuda's panic into [`QuantCudaError::NoDevice`]; that path was not run here either, since
//! building the test binaries with `--features cuda` rebuilds the whole burn stack with the
//! dev-dependencies' features, longer than this machine allowed). To run them on a GPU machine
//! whose toolchain cannot build the crate, build the test binary here and carry it over:
//!
//! ```text
//! cargo test --release --features cuda --test quant_cuda --no-run   # prints target/release/deps/quant_cuda-<hash>
//! # on the GPU machine (the NVIDIA driver's libcuda and CUDA's libnvrtc on the loader path):
//! ./quant_cuda-<hash> --nocapture
//! ```
//!
//! The bench (`benches/quant_cuda.rs`) is carried the same way (`cargo bench --features cuda --bench
//! quant_cuda --no-run`, then run the binary with `--bench`).
//!
//! Device layout ([`CudaQTensor::upload`]): the packed 4-bit bytes of [`QData`] go up unchanged and
//! are read as little-endian `u32` words (a 4-bit row is `stride / 2` bytes, a multiple of 16, so a
//! row is whole words; word `w` of a row holds weights `32⌊w/4⌋ + 4(w mod 4) + k` in the low nibble
//! of byte `k` and `… + 16` in the high nibble); int8 rows are padded with zeros to a multiple of 4
//! bytes; int4 zero points and double-quantized NF4 scales (int8) go up as bytes packed four to a
//! word and are decoded in the kernel. `x` is padded with zeros to the row length in storage.
//!
//! Kernel: one cube of [`THREADS`] units per (output row, batch row); each unit walks the row's
//! words with a stride of [`THREADS`], dequantizes 8 (4-bit) or 4 (int8) weights per word and
//! accumulates their products with `x`, the scale applied once per word (4-bit) or per row (int8);
//! a shared-memory tree sums the units. The matmul is this matvec over a second grid axis: each
//! batch row dequantizes the weight again (from L2), which is right for decode and small batches,
//! not a tiled tensor-core GEMM.

pub use cubecl::cuda::CudaDevice;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;

use super::{DOUBLE_QUANT_BLOCK, NF4_CODE, Nf4Scales, QData, QTensor, QuantError};

/// The compute client of a CUDA device (shared with burn-cuda's `Cuda` backend on that device).
pub type CudaClient = ComputeClient<CudaRuntime>;

/// Units per cube (one output value each cube).
pub const THREADS: u32 = 128;
const THREADS_USIZE: usize = THREADS as usize;

const KIND_INT4: u32 = 0;
const KIND_NF4: u32 = 1;
const KIND_NF4_DQ: u32 = 2;
const KIND_INT8: u32 = 3;

/// Largest batch of one launch (CUDA's limit on the second grid dimension).
pub const MAX_BATCH: usize = 65_535;

// The kernel hard-codes the double-quantization block as 256.
const _: () = assert!(DOUBLE_QUANT_BLOCK == 256);

/// Errors of the CUDA quantized kernels.
#[derive(Debug, thiserror::Error)]
pub enum QuantCudaError {
    #[error("no CUDA device could be opened: {0}")]
    NoDevice(String),
    #[error("format {0} has no CUDA kernel (f32 weights use burn's own matmul)")]
    Unsupported(&'static str),
    #[error("{what} = {got} is too large for the CUDA kernel (at most {max})")]
    TooLarge {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("reading the result back from the device failed: {0}")]
    Read(String),
}

/// Opens CUDA device `index` and its compute client (the one burn-cuda shares for that device).
/// Fails, rather than panicking, where there is no driver, no device or no NVRTC.
pub fn open_device(index: usize) -> Result<(CudaDevice, CudaClient), QuantCudaError> {
    let device = CudaDevice::new(index);
    // cubecl-cuda panics inside client creation when libcuda / a device is missing (the panic
    // message is still printed: swapping the process-wide panic hook would race with other threads).
    match std::panic::catch_unwind(|| CudaRuntime::client(&device)) {
        Ok(c) => Ok((device, c)),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "client creation panicked".into());
            Err(QuantCudaError::NoDevice(msg))
        }
    }
}

/// 4-bit code (low nibble at `shift`) of a word, as f32.
#[cube]
fn nib(word: u32, #[comptime] shift: u32) -> f32 {
    f32::cast_from((word >> shift) & 15u32)
}

/// NF4 level of the nibble at `shift`.
#[cube]
fn nf4(code: &Array<f32>, word: u32, #[comptime] shift: u32) -> f32 {
    code[((word >> shift) & 15u32) as usize]
}

/// Byte `i` of an array of bytes packed four to a little-endian word.
#[cube]
fn byte_at(a: &Array<u32>, i: u32) -> u32 {
    (a[(i / 4u32) as usize] >> ((i % 4u32) * 8u32)) & 255u32
}

/// A byte (0..=255) read as a two's-complement i8, as f32.
#[cube]
fn sext8(b: u32) -> f32 {
    f32::cast_from(b) - f32::cast_from(b >> 7u32) * 256.0
}

/// `y[b, r] = Σ_c W[r, c] x[b, c]` for the cube's output row `r = CUBE_POS_X` and batch row
/// `b = CUBE_POS_Y`. `packed`: `[rows, words_per_row]` words; `x`: `[batch, x_stride]`; `y`:
/// `[batch, rows]`. `scales`: int8: per row; int4 / NF4: per group; NF4 double-quantized: the
/// second-level scales (one per 256 groups). `aux`: int4: zero points; NF4 double-quantized: the
/// int8 first-level scales (bytes); else unused. `code`: the 16 NF4 levels (NF4 only).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qmatmul_kernel(
    packed: &Array<u32>,
    x: &Array<f32>,
    y: &mut Array<f32>,
    scales: &Array<f32>,
    aux: &Array<u32>,
    code: &Array<f32>,
    rows: u32,
    words_per_row: u32,
    x_stride: u32,
    groups_per_row: u32,
    mean: f32,
    #[comptime] words_per_group: u32,
    #[comptime] kind: u32,
) {
    let r = CUBE_POS_X;
    let b = CUBE_POS_Y;
    let t = UNIT_POS;
    let x0 = b * x_stride;
    let mut acc = f32::new(0.0);
    let mut w = t;
    while w < words_per_row {
        let word = packed[(r * words_per_row + w) as usize];
        if comptime![kind == KIND_INT8] {
            let c = (x0 + w * 4u32) as usize;
            acc += sext8(word & 255u32) * x[c]
                + sext8((word >> 8u32) & 255u32) * x[c + 1]
                + sext8((word >> 16u32) & 255u32) * x[c + 2]
                + sext8(word >> 24u32) * x[c + 3];
        } else {
            // Word w of a row: block of 32 weights w / 4, bytes 4 (w % 4) .. 4 (w % 4) + 3.
            let c = (x0 + (w / 4u32) * 32u32 + (w % 4u32) * 4u32) as usize;
            let g = r * groups_per_row + w / words_per_group;
            if comptime![kind == KIND_INT4] {
                let z = f32::cast_from(byte_at(aux, g));
                let p = (nib(word, 0u32) - z) * x[c]
                    + (nib(word, 4u32) - z) * x[c + 16]
                    + (nib(word, 8u32) - z) * x[c + 1]
                    + (nib(word, 12u32) - z) * x[c + 17]
                    + (nib(word, 16u32) - z) * x[c + 2]
                    + (nib(word, 20u32) - z) * x[c + 18]
                    + (nib(word, 24u32) - z) * x[c + 3]
                    + (nib(word, 28u32) - z) * x[c + 19];
                acc += scales[g as usize] * p;
            } else {
                let p = nf4(code, word, 0u32) * x[c]
                    + nf4(code, word, 4u32) * x[c + 16]
                    + nf4(code, word, 8u32) * x[c + 1]
                    + nf4(code, word, 12u32) * x[c + 17]
                    + nf4(code, word, 16u32) * x[c + 2]
                    + nf4(code, word, 20u32) * x[c + 18]
                    + nf4(code, word, 24u32) * x[c + 3]
                    + nf4(code, word, 28u32) * x[c + 19];
                if comptime![kind == KIND_NF4_DQ] {
                    let s = sext8(byte_at(aux, g)) * scales[(g / 256u32) as usize] + mean;
                    acc += s * p;
                } else {
                    acc += scales[g as usize] * p;
                }
            }
        }
        w += CUBE_DIM;
    }

    let mut sum = SharedMemory::<f32>::new(THREADS_USIZE);
    sum[t as usize] = acc;
    sync_cube();
    let mut half = CUBE_DIM / 2u32;
    while half > 0u32 {
        if t < half {
            sum[t as usize] = sum[t as usize] + sum[(t + half) as usize];
        }
        sync_cube();
        half /= 2u32;
    }
    if t == 0u32 {
        let out = (b * rows + r) as usize;
        if comptime![kind == KIND_INT8] {
            y[out] = sum[0] * scales[r as usize];
        } else {
            y[out] = sum[0];
        }
    }
}

/// Bytes padded with zeros to a whole number of `u32` words (at least one).
fn words(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = bytes.to_vec();
    let n = v.len().div_ceil(4).max(1);
    v.resize(4 * n, 0);
    (v, n)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// A device array: its handle and length in elements.
struct DevArray {
    handle: cubecl::server::Handle,
    len: usize,
}

impl DevArray {
    fn arg(&self) -> ArrayArg<CudaRuntime> {
        // SAFETY: `len` is the element count of the buffer `handle` was created with.
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

/// A [`QTensor`] uploaded to a CUDA device, with its fused dequant-matvec / matmul.
pub struct CudaQTensor {
    client: ComputeClient<CudaRuntime>,
    rows: usize,
    cols: usize,
    /// Length of a padded input row on the device (`stride` of the 4-bit formats; `cols` rounded
    /// up to 4 for int8).
    x_stride: usize,
    words_per_row: usize,
    groups_per_row: usize,
    words_per_group: u32,
    kind: u32,
    mean: f32,
    packed: DevArray,
    scales: DevArray,
    aux: DevArray,
    code: DevArray,
}

impl CudaQTensor {
    /// Uploads the packed weight, its scales and zero points to `client`'s device. F32 weights are
    /// refused ([`QuantCudaError::Unsupported`]).
    pub fn upload(q: &QTensor, client: &CudaClient) -> Result<Self, QuantCudaError> {
        let too_large = |what, got: usize| QuantCudaError::TooLarge {
            what,
            got,
            max: u32::MAX as usize,
        };
        let (rows, cols, stride) = (q.rows, q.cols, q.stride);
        if rows > i32::MAX as usize {
            return Err(too_large("rows", rows));
        }
        let put_bytes = |b: &[u8]| {
            let (v, n) = words(b);
            DevArray {
                handle: client.create_from_slice(&v),
                len: n,
            }
        };
        let put_f32 = |s: &[f32]| {
            let s = if s.is_empty() { &[0f32][..] } else { s };
            DevArray {
                handle: client.create_from_slice(&f32_bytes(s)),
                len: s.len(),
            }
        };
        let dummy = || put_bytes(&[0u8; 4]);
        let code = put_f32(&NF4_CODE);
        let t = match &q.data {
            QData::F32(_) => return Err(QuantCudaError::Unsupported("f32")),
            QData::Int8 { q: qv, scales } => {
                let x_stride = cols.div_ceil(4) * 4;
                let mut bytes = vec![0u8; rows * x_stride];
                for (dst, src) in bytes
                    .chunks_exact_mut(x_stride.max(1))
                    .zip(qv.chunks_exact(cols.max(1)))
                {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s as u8;
                    }
                }
                CudaQTensor {
                    client: client.clone(),
                    rows,
                    cols,
                    x_stride,
                    words_per_row: x_stride / 4,
                    groups_per_row: 1,
                    words_per_group: 1,
                    kind: KIND_INT8,
                    mean: 0.0,
                    packed: put_bytes(&bytes),
                    scales: put_f32(scales),
                    aux: dummy(),
                    code,
                }
            }
            QData::Int4 {
                packed,
                scales,
                zeros,
                group_size,
            } => CudaQTensor {
                client: client.clone(),
                rows,
                cols,
                x_stride: stride,
                words_per_row: stride / 8,
                groups_per_row: stride / group_size,
                words_per_group: (group_size / 8) as u32,
                kind: KIND_INT4,
                mean: 0.0,
                packed: put_bytes(packed),
                scales: put_f32(scales),
                aux: put_bytes(zeros),
                code,
            },
            QData::Nf4 {
                packed,
                scales,
                block_size,
            } => {
                let (kind, scales, aux, mean) = match scales {
                    Nf4Scales::F32(s) => (KIND_NF4, put_f32(s), dummy(), 0.0),
                    Nf4Scales::Double {
                        q: sq,
                        scale2,
                        mean,
                    } => {
                        let b: Vec<u8> = sq.iter().map(|&v| v as u8).collect();
                        (KIND_NF4_DQ, put_f32(scale2), put_bytes(&b), *mean)
                    }
                };
                CudaQTensor {
                    client: client.clone(),
                    rows,
                    cols,
                    x_stride: stride,
                    words_per_row: stride / 8,
                    groups_per_row: stride / block_size,
                    words_per_group: (block_size / 8) as u32,
                    kind,
                    mean,
                    packed: put_bytes(packed),
                    scales,
                    aux,
                    code,
                }
            }
        };
        for (what, v) in [
            ("row length in storage", t.x_stride),
            ("packed words", t.rows * t.words_per_row),
        ] {
            if v > u32::MAX as usize / 8 {
                return Err(too_large(what, v));
            }
        }
        Ok(t)
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `y = W x` (`x`: `cols` values; returns `rows` values).
    pub fn matvec(&self, x: &[f32]) -> Result<Vec<f32>, QuantCudaError> {
        self.matmul(x, 1)
    }

    /// `Y = X Wᵀ` for a row-major batch `X [m, cols]`; returns row-major `Y [m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>, QuantCudaError> {
        if x.len() != m * self.cols {
            return Err(QuantError::InputLen {
                got: x.len(),
                expected: m * self.cols,
            }
            .into());
        }
        if m > MAX_BATCH {
            return Err(QuantCudaError::TooLarge {
                what: "batch",
                got: m,
                max: MAX_BATCH,
            });
        }
        if m == 0 || self.rows == 0 {
            return Ok(vec![0.0; m * self.rows]);
        }
        if self.cols == 0 {
            return Ok(vec![0.0; m * self.rows]);
        }
        // Padded input: [m, x_stride], zeros past `cols`.
        let mut xp = vec![0f32; m * self.x_stride];
        for (dst, src) in xp
            .chunks_exact_mut(self.x_stride)
            .zip(x.chunks_exact(self.cols))
        {
            dst[..self.cols].copy_from_slice(src);
        }
        let x_dev = DevArray {
            handle: self.client.create_from_slice(&f32_bytes(&xp)),
            len: xp.len(),
        };
        // Output: [m, rows].
        let y_dev = DevArray {
            handle: self.client.empty(4 * m * self.rows),
            len: m * self.rows,
        };
        qmatmul_kernel::launch::<CudaRuntime>(
            &self.client,
            CubeCount::Static(self.rows as u32, m as u32, 1),
            CubeDim::new_1d(THREADS),
            self.packed.arg(),
            x_dev.arg(),
            y_dev.arg(),
            self.scales.arg(),
            self.aux.arg(),
            self.code.arg(),
            self.rows as u32,
            self.words_per_row as u32,
            self.x_stride as u32,
            self.groups_per_row as u32,
            self.mean,
            self.words_per_group,
            self.kind,
        );
        let bytes = self
            .client
            .read_one(y_dev.handle)
            .map_err(|e| QuantCudaError::Read(format!("{e:?}")))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
