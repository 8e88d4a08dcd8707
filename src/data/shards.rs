//! Parquet shards in the GenCAD-Code schema (polars), so the real dataset and ours load the same way,
//! and the deterministic train/val/test split by id.
//!
//! Schema (Hugging Face `CADCODER/GenCAD-Code`): `image` struct {`bytes`: binary, `path`: str},
//! `deepcad_id` str, `cadquery` str, `token_count` int64, `prompt` str, `hundred_subset` bool.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::synth::fxhash;

/// One row of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// `deepcad_id` (ours: `synth<seed>/<index>`).
    pub id: String,
    /// `cadquery`: the program text.
    pub code: String,
    /// `image.bytes`: PNG.
    pub image_png: Vec<u8>,
    /// `image.path` (may be null in the real data).
    pub image_path: Option<String>,
    pub token_count: i64,
    pub prompt: String,
    pub hundred_subset: bool,
}

impl Row {
    /// A row for one of our samples, with our token-count proxy and the default prompt.
    pub fn new(id: &str, code: &str, image_png: Vec<u8>) -> Row {
        Row {
            id: id.to_string(),
            code: code.to_string(),
            image_png,
            image_path: Some(format!("{}.png", id.replace('/', "_"))),
            token_count: token_count_proxy(code),
            prompt: super::GENCAD_PROMPT.to_string(),
            hundred_subset: false,
        }
    }
}

/// A tokenizer-free stand-in for `token_count` (GenCAD's counts come from the Qwen tokenizer, which
/// we do not ship): every digit, every other non-space symbol, and every run of letters/underscores
/// is one token. It tracks BPE counts with digits split to within tens of percent; use it only to
/// bucket lengths.
pub fn token_count_proxy(code: &str) -> i64 {
    let mut n = 0i64;
    let mut in_word = false;
    for c in code.chars() {
        if c.is_alphabetic() || c == '_' {
            if !in_word {
                n += 1;
            }
            in_word = true;
        } else {
            in_word = false;
            if !c.is_whitespace() {
                n += 1;
            }
        }
    }
    n
}

/// Errors reading or writing shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{path}: not a GenCAD-Code shard: {msg}")]
    Schema { path: PathBuf, msg: String },
    #[error("building the shard table: {0}")]
    Build(String),
    #[error("{0}: no .parquet files")]
    NoShards(PathBuf),
}

fn build_frame(rows: &[Row]) -> PolarsResult<DataFrame> {
    let n = rows.len();
    let bytes: Vec<Vec<u8>> = rows.iter().map(|r| r.image_png.clone()).collect();
    let paths: Vec<Option<&str>> = rows.iter().map(|r| r.image_path.as_deref()).collect();
    let bytes = Series::new("bytes".into(), &bytes[..]);
    let paths = Series::new("path".into(), &paths[..]);
    let image = StructChunked::from_series("image".into(), n, [bytes, paths].iter())?.into_series();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let code: Vec<&str> = rows.iter().map(|r| r.code.as_str()).collect();
    let tok: Vec<i64> = rows.iter().map(|r| r.token_count).collect();
    let prompt: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    let hundred: Vec<bool> = rows.iter().map(|r| r.hundred_subset).collect();
    DataFrame::new(
        n,
        vec![
            image.into_column(),
            Column::new("deepcad_id".into(), &ids[..]),
            Column::new("cadquery".into(), &code[..]),
            Column::new("token_count".into(), &tok[..]),
            Column::new("prompt".into(), &prompt[..]),
            Column::new("hundred_subset".into(), &hundred[..]),
        ],
    )
}

/// Write rows as one parquet file (zstd).
pub fn write_shard(path: &Path, rows: &[Row]) -> Result<(), ShardError> {
    let mut df = build_frame(rows).map_err(|e| ShardError::Build(e.to_string()))?;
    let f = File::create(path).map_err(|e| ShardError::Io {
        path: path.to_path_buf(),
        msg: format!("cannot create: {e}"),
    })?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| ShardError::Io {
            path: path.to_path_buf(),
            msg: format!("cannot write parquet: {e}"),
        })?;
    Ok(())
}

/// Read one shard (ours or the real GenCAD-Code parquet). `token_count`, `prompt`,
/// `hundred_subset` and `image.path` may be missing (defaults: proxy count, default prompt, false, null).
pub fn read_shard(path: &Path) -> Result<Vec<Row>, ShardError> {
    let schema_err = |msg: String| ShardError::Schema {
        path: path.to_path_buf(),
        msg,
    };
    let f = File::open(path).map_err(|e| ShardError::Io {
        path: path.to_path_buf(),
        msg: format!("cannot open: {e}"),
    })?;
    let df = ParquetReader::new(f).finish().map_err(|e| ShardError::Io {
        path: path.to_path_buf(),
        msg: format!("cannot read parquet: {e}"),
    })?;
    let n = df.height();
    let col = |name: &str| {
        df.column(name).map_err(|_| {
            schema_err(format!(
                "no `{name}` column (columns: {:?})",
                df.get_column_names()
            ))
        })
    };
    let strings = |name: &str| -> Result<Vec<Option<String>>, ShardError> {
        let c = col(name)?;
        let s = c
            .str()
            .map_err(|e| schema_err(format!("`{name}` is not a string column: {e}")))?;
        Ok(s.iter().map(|x| x.map(str::to_string)).collect())
    };
    let ids = strings("deepcad_id")?;
    let code = strings("cadquery")?;
    let image = col("image")?;
    let st = image
        .struct_()
        .map_err(|e| schema_err(format!("`image` is not a struct column: {e}")))?;
    let bytes_s = st
        .field_by_name("bytes")
        .map_err(|e| schema_err(format!("`image` has no `bytes` field: {e}")))?;
    let bytes = bytes_s
        .binary()
        .map_err(|e| schema_err(format!("`image.bytes` is not binary: {e}")))?;
    let bytes: Vec<Option<Vec<u8>>> = bytes.iter().map(|b| b.map(<[u8]>::to_vec)).collect();
    let paths: Vec<Option<String>> = match st.field_by_name("path") {
        Ok(p) => p
            .str()
            .map_err(|e| schema_err(format!("`image.path` is not a string: {e}")))?
            .iter()
            .map(|x| x.map(str::to_string))
            .collect(),
        Err(_) => vec![None; n],
    };
    let tok: Option<Vec<Option<i64>>> = match df.column("token_count") {
        Ok(c) => {
            let c = c
                .cast(&DataType::Int64)
                .map_err(|e| schema_err(format!("`token_count` is not an integer: {e}")))?;
            Some(
                c.i64()
                    .map_err(|e| schema_err(e.to_string()))?
                    .iter()
                    .collect(),
            )
        }
        Err(_) => None,
    };
    let prompt: Option<Vec<Option<String>>> = df
        .column("prompt")
        .ok()
        .map(|_| strings("prompt"))
        .transpose()?;
    let hundred: Option<Vec<Option<bool>>> = match df.column("hundred_subset") {
        Ok(c) => Some(
            c.bool()
                .map_err(|e| schema_err(format!("`hundred_subset` is not boolean: {e}")))?
                .iter()
                .collect(),
        ),
        Err(_) => None,
    };
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let id = ids[i]
            .clone()
            .ok_or_else(|| schema_err(format!("row {i}: null deepcad_id")))?;
        let code = code[i]
            .clone()
            .ok_or_else(|| schema_err(format!("row {i} ({id}): null cadquery")))?;
        let image_png = bytes[i]
            .clone()
            .ok_or_else(|| schema_err(format!("row {i} ({id}): null image bytes")))?;
        let token_count = tok
            .as_ref()
            .and_then(|t| t[i])
            .unwrap_or_else(|| token_count_proxy(&code));
        rows.push(Row {
            id,
            image_png,
            image_path: paths[i].clone(),
            token_count,
            prompt: prompt
                .as_ref()
                .and_then(|p| p[i].clone())
                .unwrap_or_else(|| super::GENCAD_PROMPT.to_string()),
            hundred_subset: hundred.as_ref().and_then(|h| h[i]).unwrap_or(false),
            code,
        });
    }
    Ok(rows)
}

/// The `.parquet` files named, or found (sorted) in the directories named.
pub fn shard_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ShardError> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| ShardError::Io {
                path: p.clone(),
                msg: format!("cannot list: {e}"),
            })?;
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|q| q.extension().is_some_and(|x| x == "parquet"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(ShardError::NoShards(p.clone()));
            }
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Which part of the data a sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Shares of the validation and test splits (the rest is train).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    pub val: f64,
    pub test: f64,
}

impl Default for SplitConfig {
    /// GenCAD-Code's proportions: 147,289 / 8,204 / 7,355 ≈ 90.3 % / 5.0 % / 4.5 %.
    fn default() -> Self {
        SplitConfig {
            val: 0.05,
            test: 0.045,
        }
    }
}

/// The split of an id: a stable hash of the id, so a sample never moves between splits.
pub fn split_of(id: &str, cfg: &SplitConfig) -> Split {
    let u = (fxhash(id) >> 11) as f64 / (1u64 << 53) as f64;
    if u < cfg.test {
        Split::Test
    } else if u < cfg.test + cfg.val {
        Split::Val
    } else {
        Split::Train
    }
}
