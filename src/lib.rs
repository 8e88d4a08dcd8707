//! cadvlm: train vision-language models to write CadQuery code, with an exact, sandboxed executor as the reward.
//!
//! `cad` (parse + interpret the GenCAD-Code CadQuery subset) and `geom` (exact ray-interval CSG,
//! volume, IoU) have no heavy dependencies and also build for `wasm32-wasip1` (the sandbox guest).

pub mod cad;
#[cfg(feature = "data")]
pub mod data;
pub mod exec;
pub mod geom;
pub mod model;
#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "model")]
pub mod eval;
#[cfg(feature = "model")]
pub mod recipe;
#[cfg(feature = "model")]
pub mod tokenizer;
#[cfg(feature = "model")]
pub mod train;
#[cfg(feature = "report")]
pub mod report;
