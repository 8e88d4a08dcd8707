//! Code tokenizer: byte-level BPE trained with `tokenizers` on the training programs, digits one per token.
//!
//! Special tokens: [`IMAGE`] (one placeholder per image token in the model's input), [`BEGIN`] (start of
//! the code), [`END`] (end of the code, the stop token) and [`PAD`]. Saved as `tokenizer.json`.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

pub const PAD: &str = "<|pad|>";
pub const IMAGE: &str = "<|image|>";
pub const BEGIN: &str = "<|begin|>";
pub const END: &str = "<|end|>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer: {0}")]
    Tok(String),
    #[error("tokenizer file {path}: {msg}")]
    File { path: String, msg: String },
    #[error("tokenizer has no special token {0} (was it trained by cadvlm?)")]
    MissingSpecial(&'static str),
    #[error("cannot train a tokenizer on an empty corpus")]
    EmptyCorpus,
}

/// Settings of [`train`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    /// Target vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge.
    pub min_frequency: u64,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            vocab_size: 1024,
            min_frequency: 2,
        }
    }
}

/// A trained tokenizer with its special-token ids resolved.
#[derive(Clone)]
pub struct CodeTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub pad: u32,
    pub image: u32,
    pub begin: u32,
    pub end: u32,
}

fn tok_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tok(e.to_string())
}

/// Train a BPE tokenizer on `corpus` (program texts).
pub fn train<S: AsRef<str> + Send + Sync>(
    corpus: &[S],
    cfg: &TokenizerConfig,
) -> Result<CodeTokenizer, TokenizerError> {
    if corpus.is_empty() {
        return Err(TokenizerError::EmptyCorpus);
    }
    let specials: Vec<AddedToken> = [PAD, IMAGE, BEGIN, END]
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .show_progress(false)
        .special_tokens(specials.clone())
        .initial_alphabet(alphabet)
        .build();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    tk.train(&mut trainer, corpus.iter().map(|s| s.as_ref()))
        .map_err(tok_err)?;
    tk.add_special_tokens(specials).map_err(tok_err)?;
    CodeTokenizer::from_tokenizer(tk.into())
}

impl CodeTokenizer {
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Result<Self, TokenizerError> {
        let id = |s: &'static str| {
            inner
                .token_to_id(s)
                .ok_or(TokenizerError::MissingSpecial(s))
        };
        Ok(CodeTokenizer {
            pad: id(PAD)?,
            image: id(IMAGE)?,
            begin: id(BEGIN)?,
            end: id(END)?,
            inner,
        })
    }

    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::from_tokenizer(inner)
    }

    /// Write `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let tmp = path.with_extension("json.tmp");
        let ferr = |e: &dyn std::fmt::Display| TokenizerError::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        };
        self.inner.save(&tmp, false).map_err(|e| ferr(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| ferr(&e))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(tok_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 1.5).close()\n";

    #[test]
    fn round_trips_and_splits_digits() {
        let corpus = vec![P.to_string(); 20];
        let t = train(
            &corpus,
            &TokenizerConfig {
                vocab_size: 400,
                min_frequency: 2,
            },
        )
        .unwrap();
        let ids = t.encode(P).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), P);
        // every digit is its own token
        for &id in &ids {
            let s = t.inner.id_to_token(id).unwrap();
            if s.chars().any(|c| c.is_ascii_digit()) {
                assert_eq!(s.chars().count(), 1, "token {s:?} holds a digit and more");
            }
        }
        let dir = std::env::temp_dir().join(format!("cadvlm-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        t.save(&path).unwrap();
        let t2 = CodeTokenizer::load(&path).unwrap();
        assert_eq!(t2.encode(P).unwrap(), ids);
        assert_eq!(
            (t2.pad, t2.image, t2.begin, t2.end),
            (t.pad, t.image, t.begin, t.end)
        );
        assert!(t.encode("<|end|>").unwrap() == vec![t.end]);
    }
}
