//! Training algorithms: SFT (`sft`), DPO on executed-IoU preferences (`dpo`, its loss in `dpo_loss`,
//! rollouts and pairs in `rollout`), online RL on the executed reward (`grpo`, Dr. GRPO; its loss in
//! `grpo_loss`), the [`Policy`](policy::Policy) trait that lets one DPO loop, one GRPO loop and
//! one eval runner serve both model families (`policy`: the small VLM; `qwen`: Qwen2-VL / 2.5-VL),
//! the optimizer and schedule (`optim`), atomic checkpoints (`checkpoint`), metrics files
//! (`metrics`), LoRA / QLoRA instead of full fine-tuning (`adapt`).

pub mod adapt;
pub mod checkpoint;
pub mod dpo;
pub mod dpo_loss;
pub mod grpo;
pub mod grpo_loss;
pub mod metrics;
pub mod optim;
pub mod policy;
pub mod qwen;
pub mod rollout;
pub mod sft;

/// Everything training can fail with; each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    #[error("{0}")]
    Samples(#[from] crate::data::SampleError),
    #[error("{0}")]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    #[error("{0}")]
    Qwen(#[from] crate::model::qwen2vl::QwenError),
    #[error("{0}")]
    Sandbox(#[from] crate::exec::SandboxError),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("training data: {0}")]
    Data(String),
    #[error("{0}")]
    Lora(#[from] crate::model::lora::LoraError),
}

/// The progress bar of a training loop: `total` steps, at `step` (a resumed run), hidden unless
/// `show`.
pub(crate) fn step_bar(total: usize, step: usize, show: bool) -> indicatif::ProgressBar {
    let pb = if show {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(step as u64);
    pb
}

/// A line above the progress bar; on stderr when the bar is hidden (stderr not a terminal, e.g. a
/// log file), where indicatif would drop it.
pub(crate) fn say(pb: &indicatif::ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

pub(crate) fn ioerr(path: &std::path::Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}
