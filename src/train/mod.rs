//! Training: SFT (`sft`), DPO on executed-IoU preferences (`dpo`, `rollout`), the optimizer and schedule (`optim`), atomic checkpoints (`checkpoint`),
//! LoRA / QLoRA instead of full fine-tuning (`adapt`).

pub mod adapt;
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod optim;
pub mod sft;
// DPO and its rollouts execute model output in the sandbox.
#[cfg(feature = "sandbox")]
pub mod dpo;
#[cfg(feature = "sandbox")]
pub mod rollout;
