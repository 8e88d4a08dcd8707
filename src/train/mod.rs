//! Training: SFT (`sft`), the optimizer and schedule (`optim`), atomic checkpoints (`checkpoint`).

pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod optim;
pub mod sft;
