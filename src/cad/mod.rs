//! The CadQuery subset of GenCAD-Code programs: parsing, interpretation, resource limits, errors.
//!
//! [`execute`] turns program text into a [`Solid`](crate::geom::Solid) or a [`CadError`] that says
//! what went wrong and where (line, column). Every program ends quickly: the [`Limits`] bound the
//! program size, nesting, edges, loops, extrusions and boolean nodes.

pub mod fmt;
pub mod interp;
pub mod parse;

use serde::{Deserialize, Serialize};

use crate::geom::Solid;

/// Resource bounds, part of the semantics: a program over any of them is an error.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_source_bytes: usize,
    pub max_tokens: usize,
    pub max_statements: usize,
    /// Bracket / expression nesting.
    pub max_depth: usize,
    pub max_workplanes: usize,
    pub max_edges: usize,
    pub max_loops: usize,
    pub max_prisms: usize,
    /// Distinct boolean nodes (after hash-consing).
    pub max_nodes: usize,
    /// Largest accepted |number| used as geometry.
    pub max_abs_coord: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: 256 * 1024,
            max_tokens: 100_000,
            max_statements: 5_000,
            max_depth: 64,
            max_workplanes: 256,
            max_edges: 1_000,
            max_loops: 256,
            max_prisms: 128,
            max_nodes: 512,
            max_abs_coord: 1e4,
        }
    }
}

/// What kind of failure a program hit (stable names, used in JSON and rollouts): the executor's own
/// six, and the four only a sandbox (`crate::exec`) reports. The one failure type of the project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Not valid Python of the subset's grammar.
    Syntax,
    /// Valid Python, but outside the supported CadQuery subset.
    Unsupported,
    /// A type or name error, a missing argument, nothing to extrude, ...
    Runtime,
    /// The geometry is invalid (crossing loops, an island in a hole, degenerate edges, ...).
    InvalidGeometry,
    /// A resource limit was hit.
    Budget,
    /// The program ran but left no solid result.
    NoResult,
    /// (Sandbox) the wasm guest executed more instructions than `fuel` allows.
    OutOfFuel,
    /// (Sandbox) the program wanted more than `memory_mb`.
    OutOfMemory,
    /// (Sandbox) the program ran past `timeout_ms`.
    Timeout,
    /// (Sandbox) the executor itself failed: a panic / trap in the guest, a killed subprocess, a malformed answer.
    Crash,
}

impl FailureKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureKind::Syntax => "syntax",
            FailureKind::Unsupported => "unsupported",
            FailureKind::Runtime => "runtime",
            FailureKind::InvalidGeometry => "invalid_geometry",
            FailureKind::Budget => "budget",
            FailureKind::NoResult => "no_result",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::Timeout => "timeout",
            FailureKind::Crash => "crash",
        }
    }
}

/// An error with the 1-based line and column of the construct it names.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct CadError {
    pub kind: FailureKind,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl CadError {
    /// The line and column a message of this type's `Display` form (`line L, column C: …`) starts
    /// with, and the rest of it; `None` for messages without a location (a sandbox's own failures).
    /// This is how a location survives the wasm guest, whose answer carries the message as text.
    pub fn locate(message: &str) -> Option<(usize, usize, &str)> {
        let rest = message.strip_prefix("line ")?;
        let (line, rest) = rest.split_once(", column ")?;
        let (col, rest) = rest.split_once(": ")?;
        Some((line.parse().ok()?, col.parse().ok()?, rest))
    }
}

/// Parse and run a program; its result is `solid`, else `result`, else `r`, else the last assigned workplane.
pub fn execute(src: &str, limits: &Limits) -> Result<Solid, CadError> {
    let stmts = parse::parse(src, limits)?;
    interp::run(&stmts, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_inverts_display() {
        let e = CadError {
            kind: FailureKind::Syntax,
            line: 12,
            col: 7,
            message: "unexpected `)`: expected an expression".into(),
        };
        let shown = e.to_string();
        assert_eq!(
            CadError::locate(&shown),
            Some((12, 7, "unexpected `)`: expected an expression"))
        );
        let real = execute(
            "r = cq.Workplane('XY').box(1, 1, 1)\nx = )",
            &Limits::default(),
        )
        .unwrap_err();
        let (line, col, _) = CadError::locate(&real.to_string()).unwrap();
        assert_eq!((line, col), (real.line, real.col));
        assert_eq!(
            CadError::locate("out of fuel after 2000000000 instructions"),
            None
        );
        assert_eq!(CadError::locate("line x, column 2: no"), None);
    }
}
