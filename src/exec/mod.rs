//! Execution: program text → solid → measurements, in-process or sandboxed; the one way a model's
//! program is run and scored.
//!
//! The core ([`exec_program`], [`Report`]) has no heavy dependencies and also builds into the wasm
//! guest (`guest/`). With the `sandbox` feature, [`Executor`] runs programs through one of three
//! backends — [`wasm`] (the default for model output), [`native`] (trusted programs), [`cadquery`]
//! (real CadQuery, for cross-checks) — and every failure is a typed [`Outcome`] with one
//! [`FailureKind`] (the executor's own six and the sandbox's four).

#[cfg(feature = "sandbox")]
pub mod cadquery;
#[cfg(feature = "sandbox")]
pub mod guest_cache;
#[cfg(feature = "sandbox")]
pub mod native;
#[cfg(feature = "sandbox")]
mod sandbox;
#[cfg(feature = "sandbox")]
pub mod wasm;

#[cfg(feature = "sandbox")]
pub use sandbox::*;

use serde::{Deserialize, Serialize};

pub use crate::cad::FailureKind;
use crate::cad::{self, Limits};
use crate::geom::{self, MeasureOptions, Normalize, Solid};

/// The outcome of executing and measuring one program as one flat JSON object: the `cadvlm exec
/// --json` line (minus `file` and `sandbox`), the wasm guest's and the CadQuery runner's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub ok: bool,
    pub error: Option<String>,
    pub error_kind: Option<FailureKind>,
    pub volume: Option<f64>,
    pub bbox: Option<[f64; 6]>,
    pub n_solids: Option<usize>,
    pub valid: Option<bool>,
    /// IoU against a target (rewards only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iou: Option<f64>,
    /// Wall time of the execution (set by the host).
    #[serde(default)]
    pub elapsed_ms: f64,
    /// WebAssembly fuel used (the wasm sandbox only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fuel_used: Option<u64>,
}

impl Report {
    pub fn failure(kind: Option<FailureKind>, msg: String) -> Report {
        Report {
            ok: false,
            error: Some(msg),
            error_kind: kind,
            ..Default::default()
        }
    }
}

/// A program scored against a target: IoU under the three normalisations ([`Normalize`]) and the
/// Chamfer distance of cadrille / CAD-Recode ([`geom::chamfer`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ious {
    pub raw: f64,
    pub unitcube: f64,
    pub best: f64,
    /// Chamfer distance (not ×1000); `None` where it could not be computed (an empty solid) or the
    /// backend does not compute it.
    #[serde(default)]
    pub chamfer: Option<f64>,
}

impl Ious {
    /// The three IoUs (exact ray-interval CSG) and the Chamfer distance of `pred` against `target`.
    pub fn of(pred: &Solid, target: &Solid) -> Ious {
        Ious {
            raw: geom::iou(pred, target, Normalize::Raw),
            unitcube: geom::iou(pred, target, Normalize::UnitCube),
            best: geom::iou(pred, target, Normalize::Best),
            chamfer: geom::chamfer(pred, target).ok(),
        }
    }
}

/// One generated program scored against its target (a row of an evaluation's `samples.parquet`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scored {
    pub ok: bool,
    pub error: Option<String>,
    pub iou_raw: Option<f64>,
    pub iou_unitcube: Option<f64>,
    pub iou_best: Option<f64>,
    /// Chamfer distance to the target (cadrille's: unit cube, 8192 points, squared; not ×1000).
    #[serde(default)]
    pub chamfer: Option<f64>,
}

/// Execute `src` and measure the result.
pub fn exec_program(src: &str, limits: &Limits, opts: &MeasureOptions) -> (Report, Option<Solid>) {
    match cad::execute(src, limits) {
        Ok(solid) => {
            let m = geom::measure(&solid, opts);
            let r = Report {
                ok: true,
                volume: Some(m.volume),
                bbox: Some(m.bbox),
                n_solids: Some(m.n_solids),
                valid: Some(m.valid),
                ..Default::default()
            };
            (r, Some(solid))
        }
        Err(e) => (Report::failure(Some(e.kind), e.to_string()), None),
    }
}

/// The program in a model's completion: the body of its markdown code fence (```` ```python …``` ````)
/// if it has one — the first fence tagged `python`/`py`, else the first fence; an unclosed fence runs
/// to the end — otherwise the whole text. Chat models often fence their code; the reward must score
/// the code, not the fence.
pub fn code_from_completion(text: &str) -> &str {
    const FENCE: &str = "```";
    let mut first: Option<&str> = None;
    let mut rest = text;
    while let Some(open) = rest.find(FENCE) {
        let after = &rest[open + FENCE.len()..];
        let (info, body) = after.split_once('\n').unwrap_or((after, ""));
        let (code, next) = match body.find(FENCE) {
            Some(close) => (&body[..close], &body[close + FENCE.len()..]),
            None => (body, ""),
        };
        let lang = info.trim().to_ascii_lowercase();
        if lang == "python" || lang == "py" || lang == "python3" {
            return code;
        }
        first.get_or_insert(code);
        rest = next;
    }
    first.unwrap_or(text)
}

/// IoU of two programs' solids, in-process (benchmarks and tests; model output goes through an [`Executor`]).
pub fn iou_programs(a: &str, b: &str, norm: Normalize, limits: &Limits) -> Result<f64, String> {
    let sa = cad::execute(a, limits).map_err(|e| format!("first program: {e}"))?;
    let sb = cad::execute(b, limits).map_err(|e| format!("second program: {e}"))?;
    Ok(geom::iou(&sa, &sb, norm))
}

#[cfg(test)]
mod tests {
    use super::code_from_completion as code;

    #[test]
    fn code_comes_out_of_a_fence() {
        let prog = "import cadquery as cq\nr = cq.Workplane('XY').box(1, 2, 3)\n";
        assert_eq!(code(prog), prog);
        assert_eq!(
            code(&format!("Here it is:\n```python\n{prog}```\nDone.")),
            prog
        );
        assert_eq!(code(&format!("```\n{prog}```")), prog);
        // unclosed fence: to the end
        assert_eq!(code(&format!("```py\n{prog}")), prog);
        // a python fence wins over an earlier untagged one
        assert_eq!(
            code(&format!("```text\nnot code\n```\n```python\n{prog}```")),
            prog
        );
        // no python fence: the first one
        assert_eq!(code("```\na\n```\n```\nb\n```"), "a\n");
        assert_eq!(code("```"), "");
    }
}
