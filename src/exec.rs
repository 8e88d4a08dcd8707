//! One call from program text to a JSON-ready report: the unit the CLI, the sandbox guest and rewards share.

use serde::{Deserialize, Serialize};

use crate::cad::{self, ErrorKind, Limits};
use crate::geom::{self, MeasureOptions, Normalize, Solid};

/// The outcome of executing and measuring one program (the `cadvlm exec --json` line, minus `file`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecReport {
    pub ok: bool,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub volume: Option<f64>,
    pub bbox: Option<[f64; 6]>,
    pub n_solids: Option<usize>,
    pub valid: Option<bool>,
}

impl ExecReport {
    pub fn failure(kind: Option<ErrorKind>, msg: String) -> ExecReport {
        ExecReport { ok: false, error: Some(msg), error_kind: kind, volume: None, bbox: None, n_solids: None, valid: None }
    }
}

/// Execute `src` and measure the result.
pub fn exec_program(src: &str, limits: &Limits, opts: &MeasureOptions) -> (ExecReport, Option<Solid>) {
    match cad::execute(src, limits) {
        Ok(solid) => {
            let m = geom::measure(&solid, opts);
            let r = ExecReport {
                ok: true,
                error: None,
                error_kind: None,
                volume: Some(m.volume),
                bbox: Some(m.bbox),
                n_solids: Some(m.n_solids),
                valid: Some(m.valid),
            };
            (r, Some(solid))
        }
        Err(e) => (ExecReport::failure(Some(e.kind), e.to_string()), None),
    }
}

/// The `cadvlm iou --json` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IouReport {
    pub iou: Option<f64>,
    pub error: Option<String>,
}

/// IoU of two programs' solids.
pub fn iou_programs(a: &str, b: &str, norm: Normalize, limits: &Limits) -> IouReport {
    let sa = cad::execute(a, limits).map_err(|e| format!("first program: {e}"));
    let sb = cad::execute(b, limits).map_err(|e| format!("second program: {e}"));
    match (sa, sb) {
        (Ok(a), Ok(b)) => IouReport { iou: Some(geom::iou(&a, &b, norm)), error: None },
        (Err(e), _) | (_, Err(e)) => IouReport { iou: None, error: Some(e) },
    }
}
