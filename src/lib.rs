//! cadvlm: train vision-language models to write CadQuery code, with an exact, sandboxed executor as the reward.
//!
//! Layers, each importing only from those above it in this list (see `ARCHITECTURE.md`):
//! `geom` (exact ray-interval CSG) and `cad` (the CadQuery subset) → `exec` (one way to run a
//! program: native or sandboxed) → `data` → `model` → `train` → `search`
//! (render-and-compare inference) → `eval` → `report` → `pipeline`
//! (recipes and stages) → `cli`. `geom`, `cad` and the core of `exec` have no heavy dependencies and
//! also build for `wasm32-wasip1` (the sandbox guest).

pub mod cad;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "data")]
pub mod data;
#[cfg(feature = "model")]
pub mod eval;
pub mod exec;
pub mod geom;
pub mod model;
#[cfg(all(feature = "model", feature = "report"))]
pub mod pipeline;
#[cfg(feature = "report")]
pub mod report;
#[cfg(feature = "model")]
pub mod search;
#[cfg(feature = "model")]
pub mod train;
