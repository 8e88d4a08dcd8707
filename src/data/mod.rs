//! Training data: the procedural program generator, rendering to PNG, parquet shards, statistics.
//!
//! Everything here needs the `data` feature (polars, image, rayon, indicatif).

pub mod images;
pub mod shards;
pub mod stats;
pub mod synth;
#[cfg(feature = "cli")]
pub mod cli;
