//! Qwen2-VL / Qwen2.5-VL on programs: the chat-formatted example (user turn = the image + the prompt,
//! assistant turn = the CadQuery program), the teacher-forced loss on the assistant answer tokens only
//! ([`qwen_sft_loss`]), summed answer log-probs ([`answer_logprobs`]), and QLoRA preparation
//! ([`prepare_qlora`], [`seed_adapters`]). The training steps on top are in `train::qwen`.
//!
//! Tokens: the prompt is [`chat_prompt`] (system, user turn with `<|vision_start|>` + image pads +
//! `<|vision_end|>` + prompt, then `<|im_start|>assistant\n`) tokenized alone, and the answer is the program
//! tokenized alone followed by `<|im_end|>`: exactly the ids that greedy generation conditions on and
//! produces, so training and decoding see the same token boundaries.

use burn::module::{AutodiffModule, Module};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use super::preprocess::{PreprocessConfig, chat_prompt, encode};
use super::{ImageInput, QwenConfig, QwenError, QwenVl};
use crate::model::lora::{LinearLayers, LoraConfig, apply_lora, quantize_linears};
use crate::model::quant::Quantize;

/// Linear layers whose base stays f32 under quantization (QLoRA keeps the output head in 16 bits).
pub const KEEP_F32: &[&str] = &["lm_head"];

/// One image with its chat prompt: the prompt ids (through `<|im_start|>assistant\n`) and the image's
/// `pixel_values` (`[n_patches, C·T·P·P]`, row-major) with their grid `[t, h, w]` in patches.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptInput {
    pub ids: Vec<u32>,
    pub pixels: Vec<f32>,
    pub grid: [usize; 3],
}

impl PromptInput {
    /// Preprocess `image` with `pre` and build the chat prompt around `prompt`.
    pub fn new(
        tok: &tokenizers::Tokenizer,
        pre: &PreprocessConfig,
        image: &ImageInput,
        prompt: &str,
    ) -> Result<Self, QwenError> {
        let (pixels, grid) = pre.preprocess(image)?;
        let n_tokens = grid.iter().product::<usize>() / (pre.merge_size * pre.merge_size);
        let ids = encode(tok, &chat_prompt(prompt, n_tokens))?;
        Ok(PromptInput { ids, pixels, grid })
    }

    /// `pixel_values` as a tensor `[n_patches, C·T·P·P]`.
    pub fn pixel_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let n: usize = self.grid.iter().product();
        Tensor::from_data(
            TensorData::new(self.pixels.clone(), [n, self.pixels.len() / n.max(1)]),
            device,
        )
    }
}

/// The id of `<|im_end|>` (end of the assistant turn).
pub fn im_end_id(tok: &tokenizers::Tokenizer) -> Result<u32, QwenError> {
    tok.token_to_id("<|im_end|>")
        .ok_or_else(|| QwenError::Tokenizer("the tokenizer has no <|im_end|> token".into()))
}

/// The assistant answer's ids: `answer` tokenized, then `<|im_end|>`.
pub fn answer_ids(tok: &tokenizers::Tokenizer, answer: &str) -> Result<Vec<u32>, QwenError> {
    let mut ids = encode(tok, answer)?;
    ids.push(im_end_id(tok)?);
    Ok(ids)
}

/// Per-token log-probs `[answer_len]` of `answer` after `prompt` (teacher forcing: one forward of
/// `prompt ++ answer`, the head applied to the positions that predict the answer only).
pub fn answer_token_logprobs<B: Backend>(
    model: &QwenVl<B>,
    c: &QwenConfig,
    prompt: &PromptInput,
    answer: &[u32],
) -> Result<Tensor<B, 1>, QwenError> {
    if answer.is_empty() {
        return Err(QwenError::Input("empty answer".into()));
    }
    if prompt.ids.is_empty() {
        return Err(QwenError::Input("empty prompt".into()));
    }
    if answer.contains(&c.image_token_id) {
        return Err(QwenError::Input("the answer contains image tokens".into()));
    }
    let device = model.model.embed_tokens.weight.device();
    let ids: Vec<u32> = prompt.ids.iter().chain(answer).copied().collect();
    let (p, a) = (prompt.ids.len(), answer.len());
    let h = model.forward_hidden(
        c,
        &ids,
        Some(prompt.pixel_tensor::<B>(&device)),
        &[prompt.grid],
    )?; // [1, seq, hidden]
    let logits = model.head(h.narrow(1, p - 1, a)).reshape([a as i32, -1]); // [answer, vocab]
    let targets = Tensor::<B, 2, Int>::from_data(
        TensorData::new(answer.iter().map(|&t| t as i64).collect::<Vec<_>>(), [a, 1]),
        &device,
    );
    Ok(log_softmax(logits, 1).gather(1, targets).reshape([a])) // [answer]
}

/// Summed log-prob `log π(answer | image, prompt)` of each answer: `[answers.len()]`.
pub fn answer_logprobs<B: Backend>(
    model: &QwenVl<B>,
    c: &QwenConfig,
    prompt: &PromptInput,
    answers: &[&[u32]],
) -> Result<Tensor<B, 1>, QwenError> {
    if answers.is_empty() {
        return Err(QwenError::Input("no answers".into()));
    }
    let sums = answers
        .iter()
        .map(|a| Ok(answer_token_logprobs(model, c, prompt, a)?.sum()))
        .collect::<Result<Vec<_>, QwenError>>()?; // each [1]
    Ok(Tensor::cat(sums, 0)) // [answers]
}

/// The SFT loss of a batch of `(prompt, answer ids)` pairs: the mean negative log-likelihood over every
/// assistant answer token of the batch (prompt and image tokens carry no loss). `[1]`.
pub fn qwen_sft_loss<B: Backend>(
    model: &QwenVl<B>,
    c: &QwenConfig,
    batch: &[(&PromptInput, &[u32])],
) -> Result<Tensor<B, 1>, QwenError> {
    if batch.is_empty() {
        return Err(QwenError::Input("empty batch".into()));
    }
    let mut total: Option<Tensor<B, 1>> = None;
    let mut n = 0;
    for (p, a) in batch {
        let s = answer_token_logprobs(model, c, p, a)?.sum(); // [1]
        n += a.len();
        total = Some(match total {
            Some(t) => t.add(s),
            None => s,
        });
    }
    let total = total.ok_or_else(|| QwenError::Input("empty batch".into()))?;
    Ok(total.neg().div_scalar(n as f64)) // [1]
}

/// Freezes `model`, quantizes the base of every linear layer except [`KEEP_F32`] (`Quantize::None`:
/// none) and attaches the adapters of `lora` (the only trainable parameters afterwards).
pub fn prepare_qlora<B: Backend>(
    model: QwenVl<B>,
    quantize: Quantize,
    lora: &LoraConfig,
    device: &B::Device,
) -> Result<QwenVl<B>, QwenError> {
    let lerr = |e: crate::model::lora::LoraError| QwenError::Config(format!("QLoRA: {e}"));
    let mut model = model.no_grad();
    quantize_linears(&mut model, quantize, |p| !KEEP_F32.contains(&p)).map_err(lerr)?;
    if lora.rank > 0 {
        apply_lora(&mut model, lora, device).map_err(lerr)?;
    }
    Ok(model)
}

/// Redraws every adapter's `A: [rank, in]` from `U(±1/√in)` (the bound of [`crate::model::lora::LoraLinear::add_adapter`])
/// with a generator seeded by `seed`, and sets `B` to zero: the adapters then depend on the seed alone,
/// not on the backend's global RNG (which parallel tests and other threads share).
pub fn seed_adapters<B: Backend>(model: &mut QwenVl<B>, seed: u64, device: &B::Device) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    model.for_each_linear(&mut |_, lin| {
        if !lin.has_adapter() {
            return;
        }
        let (r, d_in, d_out) = (lin.rank(), lin.in_features(), lin.out_features());
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> = (0..r * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_data(TensorData::new(a, [r, d_in]), device); // [rank, in]
        let b = Tensor::zeros([d_out, r], device); // [out, rank]
        lin.set_adapter(a, b, lin.lora_alpha, lin.lora_dropout);
    });
}

/// The inference copy of an autodiff model (no graph), e.g. for generation between training stages.
pub fn inference_copy<AB: AutodiffBackend>(model: &QwenVl<AB>) -> QwenVl<AB::InnerBackend> {
    model.valid()
}
