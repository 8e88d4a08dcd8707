//! Data: the procedural program generator, rendering to PNG, parquet shards in the GenCAD-Code
//! schema, image/program samples for training and evaluation, statistics.
//!
//! Everything here needs the `data` feature (polars, image, rayon, indicatif).

pub mod images;
pub mod samples;
pub mod shards;
pub mod stats;
pub mod synth;

pub use samples::{Sample, SampleError, load_samples, load_samples_at};

/// The instruction GenCAD-Code pairs with each image (CAD-Coder's prompt), spelled "CADQuery" exactly
/// as in the real `index.jsonl`: synthetic training data must use the prompt the real evaluation uses.
pub const GENCAD_PROMPT: &str = "Generate the CADQuery code needed to create the CAD for the provided image. Just the code, no other words.";
