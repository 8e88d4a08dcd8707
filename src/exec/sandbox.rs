//! Sandboxed execution of untrusted (model-written) programs: one [`Executor`] interface, three backends.
//!
//! - [`wasm`] (the default for model output): the executor core compiled to WebAssembly
//!   (`guest/`), run by wasmtime with fuel, a memory cap and a wall-clock deadline, and no WASI
//!   capabilities. A hostile or buggy program — or a bug of ours that it triggers — ends in a typed
//!   failure, never in a crash, hang or memory blow-up of the host.
//! - [`native`]: the same core in-process, bounded only by its own [`Limits`](crate::cad::Limits)
//!   and with panics caught: the fast path for trusted data (our synthetic programs).
//! - [`cadquery`]: real CadQuery in a `python3` subprocess with rlimits, a timeout, an empty
//!   environment and a temporary working directory, for cross-checks; only where
//!   `python3 -c "import cadquery"` works.
//!
//! All three return the same [`Outcome`]. IoU against a target goes through a [`Target`], which
//! holds the target's solid computed once, so a reward costs one execution ([`Reward`]).
//! [`SandboxConfig`] is the recipes' `[sandbox]` table.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{FailureKind, Ious, Report, Scored};
use crate::geom::csg::RayScratch;
use crate::geom::render::{RenderError, RenderOptions, RgbImage, render_with};
use crate::geom::{Normalize, Solid};

/// Which executor runs the programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The executor compiled to WebAssembly, under wasmtime (fuel, memory cap, deadline).
    #[default]
    Wasm,
    /// In-process, bounded by the executor's own budgets; for trusted programs.
    Native,
    /// Real CadQuery in a Python subprocess (rlimits, timeout); for cross-checks.
    Cadquery,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Wasm => "wasm",
            Backend::Native => "native",
            Backend::Cadquery => "cadquery",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wasm" => Ok(Backend::Wasm),
            "native" => Ok(Backend::Native),
            "cadquery" => Ok(Backend::Cadquery),
            _ => Err(format!(
                "unknown sandbox backend `{s}` (expected wasm, native or cadquery)"
            )),
        }
    }
}

/// The `[sandbox]` table of a recipe, and the CLI's `--sandbox/--timeout-ms/--memory-mb/--fuel`.
///
/// `timeout_ms` is wall-clock time per program, `memory_mb` the memory a program may use (the wasm
/// guest's linear memory; the Python process's address space for `cadquery`), `fuel` the number of
/// WebAssembly instructions (roughly) a program may execute. `native` enforces none of the three: it
/// relies on the executor's own budgets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub backend: Backend,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub fuel: u64,
}

impl SandboxConfig {
    /// Defaults: each of the 195 programs of `../shared/data` runs in the guest within 16 MiB of
    /// linear memory, ~11 ms and 4.2·10⁷ fuel; the defaults leave a wide margin (16×, 180×, 48×) and
    /// still end any hostile program within ~2 s and 256 MiB.
    pub const DEFAULT: SandboxConfig = SandboxConfig {
        backend: Backend::Wasm,
        timeout_ms: 2_000,
        memory_mb: 256,
        fuel: 2_000_000_000,
    };

    pub fn with_backend(backend: Backend) -> SandboxConfig {
        SandboxConfig {
            backend,
            ..SandboxConfig::DEFAULT
        }
    }

    /// One line for humans: `sandbox wasm (timeout 2000 ms, memory 512 MiB, fuel 10000000000)`.
    pub fn describe(&self) -> String {
        match self.backend {
            Backend::Native => {
                "sandbox native (in-process; core budgets only, no time/memory/fuel limits)"
                    .to_string()
            }
            Backend::Wasm => format!(
                "sandbox wasm (timeout {} ms, memory {} MiB, fuel {})",
                self.timeout_ms, self.memory_mb, self.fuel
            ),
            Backend::Cadquery => format!(
                "sandbox cadquery (timeout {} ms, memory {} MiB + interpreter, fuel n/a)",
                self.timeout_ms, self.memory_mb
            ),
        }
    }

    pub fn validate(&self) -> Result<(), SandboxError> {
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return Err(SandboxError::Config(format!(
                "timeout_ms must be in 1..=3600000, got {}",
                self.timeout_ms
            )));
        }
        if self.memory_mb < 16 || self.memory_mb > 65_536 {
            return Err(SandboxError::Config(format!(
                "memory_mb must be in 16..=65536, got {}",
                self.memory_mb
            )));
        }
        if self.fuel == 0 {
            return Err(SandboxError::Config("fuel must be positive".to_string()));
        }
        Ok(())
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig::DEFAULT
    }
}

/// Why an executor could not be set up (not a program's failure: those are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox settings: {0}")]
    Config(String),
    #[error("the wasm sandbox could not be set up: {0}")]
    Wasm(String),
    #[error("the cadquery backend is unavailable: {0}")]
    Unavailable(String),
}

/// A failed program: what kind of failure, and a message (with line and column where the executor knows them).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The 1-based line and column the failure names (those of the executor's [`crate::cad::CadError`]),
    /// and the message without them; `None` for failures without a place (timeouts, crashes, ...).
    pub fn location(&self) -> Option<(usize, usize, &str)> {
        crate::cad::CadError::locate(&self.message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// A program's measurements (and its IoU against the target, for a reward).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub volume: f64,
    pub bbox: [f64; 6],
    pub n_solids: usize,
    pub valid: bool,
    /// IoU against the target under the requested normalisation ([`Executor::reward`]).
    pub iou: Option<f64>,
    /// IoU against the target under all three normalisations ([`Executor::score`]).
    pub ious: Option<Ious>,
}

/// What running one program gave, with how long it took (and the fuel it used, for `wasm`).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub result: Result<Measured, Failure>,
    pub elapsed: Duration,
    pub fuel_used: Option<u64>,
}

impl Outcome {
    pub fn failed(kind: FailureKind, message: impl Into<String>, elapsed: Duration) -> Outcome {
        Outcome {
            result: Err(Failure::new(kind, message)),
            elapsed,
            fuel_used: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    pub fn failure_kind(&self) -> Option<FailureKind> {
        self.result.as_ref().err().map(|f| f.kind)
    }

    pub fn iou(&self) -> Option<f64> {
        self.result.as_ref().ok().and_then(|m| m.iou)
    }

    /// From the executor core's report (its `iou`, for rewards; `ious`, for scores).
    pub fn from_report(r: &Report, ious: Option<Ious>, elapsed: Duration) -> Outcome {
        let result = match (r.ok, r.volume, r.bbox) {
            (true, Some(volume), Some(bbox)) => Ok(Measured {
                volume,
                bbox,
                n_solids: r.n_solids.unwrap_or(0),
                valid: r.valid.unwrap_or(false),
                iou: r.iou,
                ious,
            }),
            (true, _, _) => Err(Failure::new(
                FailureKind::Crash,
                "executor reported success without measurements",
            )),
            (false, _, _) => Err(Failure::new(
                r.error_kind.unwrap_or(FailureKind::Runtime),
                r.error
                    .clone()
                    .unwrap_or_else(|| "unknown error".to_string()),
            )),
        };
        Outcome {
            result,
            elapsed,
            fuel_used: None,
        }
    }

    /// The flat JSON form (the `cadvlm exec --json` line, minus `file` and `sandbox`).
    pub fn report(&self) -> Report {
        let ms = self.elapsed.as_secs_f64() * 1e3;
        match &self.result {
            Ok(m) => Report {
                ok: true,
                error: None,
                error_kind: None,
                volume: Some(m.volume),
                bbox: Some(m.bbox),
                n_solids: Some(m.n_solids),
                valid: Some(m.valid),
                iou: m.iou,
                elapsed_ms: ms,
                fuel_used: self.fuel_used,
            },
            Err(f) => Report {
                ok: false,
                error: Some(f.message.clone()),
                error_kind: Some(f.kind),
                volume: None,
                bbox: None,
                n_solids: None,
                valid: None,
                iou: None,
                elapsed_ms: ms,
                fuel_used: self.fuel_used,
            },
        }
    }
}

/// A target program executed once: its measurements and its solid, kept in the forms the
/// backends need (a native [`Solid`], or its JSON for the wasm guest), each made at most once.
#[derive(Debug)]
pub struct Target {
    program: Arc<str>,
    pub measured: Measured,
    solid: OnceLock<Option<Arc<Solid>>>,
    json: OnceLock<Arc<str>>,
}

impl Target {
    pub(super) fn from_solid(program: &str, measured: Measured, solid: Solid) -> Target {
        let t = Target {
            program: program.into(),
            measured,
            solid: OnceLock::new(),
            json: OnceLock::new(),
        };
        let _ = t.solid.set(Some(Arc::new(solid)));
        t
    }

    pub(super) fn from_json(program: &str, measured: Measured, json: String) -> Target {
        let t = Target {
            program: program.into(),
            measured,
            solid: OnceLock::new(),
            json: OnceLock::new(),
        };
        let _ = t.json.set(json.into());
        t
    }

    pub(super) fn from_program(program: &str, measured: Measured) -> Target {
        Target {
            program: program.into(),
            measured,
            solid: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The target's program text.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The solid as a native value (None if it only exists inside CadQuery or its JSON is unreadable).
    pub fn solid(&self) -> Option<Arc<Solid>> {
        self.solid
            .get_or_init(|| {
                self.json
                    .get()
                    .and_then(|j| serde_json::from_str::<Solid>(j).ok())
                    .map(Arc::new)
            })
            .clone()
    }

    /// The solid as JSON, for the wasm guest.
    pub fn solid_json(&self) -> Option<Arc<str>> {
        if let Some(j) = self.json.get() {
            return Some(j.clone());
        }
        let s = self.solid.get().cloned().flatten()?;
        let j = serde_json::to_string(&*s).ok()?;
        Some(self.json.get_or_init(|| j.into()).clone())
    }
}

/// One interface over the backends. Every method turns any failure of the program into an
/// [`Outcome`]; none panics or blocks past the configured limits (except `native`, see there).
pub trait Executor: Send + Sync {
    fn config(&self) -> &SandboxConfig;

    /// Execute and measure one program.
    fn execute(&self, program: &str) -> Outcome;

    /// Execute a target program once, keeping its solid for [`Executor::reward`].
    fn target(&self, program: &str) -> Result<Target, Failure>;

    /// Execute `program` and measure its IoU against the cached `target` (one execution).
    fn reward(&self, program: &str, target: &Target, normalize: Normalize) -> Outcome;

    /// Execute `program` and measure its IoU against `target` under all three normalisations (the
    /// evaluation's numbers). A program whose solid is empty is a failure here (`no_result`).
    fn score(&self, program: &str, target: &Target) -> Outcome;

    /// [`Executor::execute`] over many programs on all cores (rayon), answers in input order.
    fn execute_batch(&self, programs: &[&str]) -> Vec<Outcome> {
        programs.par_iter().map(|p| self.execute(p)).collect()
    }

    /// [`Executor::reward`] over many programs on all cores, answers in input order.
    fn reward_batch(
        &self,
        programs: &[&str],
        target: &Target,
        normalize: Normalize,
    ) -> Vec<Outcome> {
        programs
            .par_iter()
            .map(|p| self.reward(p, target, normalize))
            .collect()
    }
}

/// The executor a configuration names (the wasm module is compiled once per process and shared).
pub fn executor(cfg: &SandboxConfig) -> Result<Box<dyn Executor>, SandboxError> {
    cfg.validate()?;
    Ok(match cfg.backend {
        Backend::Wasm => Box::new(super::wasm::WasmExecutor::new(cfg.clone())?),
        Backend::Native => Box::new(super::native::NativeExecutor::new(cfg.clone())),
        Backend::Cadquery => Box::new(super::cadquery::CadqueryExecutor::new(cfg.clone())?),
    })
}

/// An IoU reward against one target: the target executed once, each candidate once.
pub struct Reward<'a> {
    pub executor: &'a dyn Executor,
    pub target: Target,
    pub normalize: Normalize,
}

impl<'a> Reward<'a> {
    pub fn new(
        executor: &'a dyn Executor,
        target_program: &str,
        normalize: Normalize,
    ) -> Result<Reward<'a>, Failure> {
        Ok(Reward {
            executor,
            target: executor.target(target_program)?,
            normalize,
        })
    }

    /// IoU of one candidate (an `Outcome` whose `iou()` is the reward; failures carry their kind).
    pub fn score(&self, program: &str) -> Outcome {
        self.executor.reward(program, &self.target, self.normalize)
    }

    pub fn score_batch(&self, programs: &[&str]) -> Vec<Outcome> {
        self.executor
            .reward_batch(programs, &self.target, self.normalize)
    }
}

impl From<&Outcome> for Scored {
    fn from(o: &Outcome) -> Scored {
        match &o.result {
            Ok(m) => Scored {
                ok: true,
                error: None,
                iou_raw: m.ious.map(|i| i.raw),
                iou_unitcube: m.ious.map(|i| i.unitcube),
                iou_best: m.ious.map(|i| i.best),
                chamfer: m.ious.and_then(|i| i.chamfer),
            },
            Err(f) => Scored {
                ok: false,
                error: Some(f.message.clone()),
                iou_raw: None,
                iou_unitcube: None,
                iou_best: None,
                chamfer: None,
            },
        }
    }
}

/// Execute `prediction` and score it against `target` (executed once here): the evaluation's
/// [`Scored`]. A target that fails leaves the prediction's own validity with no IoU.
pub fn score_program(executor: &dyn Executor, prediction: &str, target: &str) -> Scored {
    match executor.target(target) {
        Ok(t) => Scored::from(&executor.score(prediction, &t)),
        Err(f) => {
            let own = Scored::from(&executor.execute(prediction));
            if own.ok {
                Scored {
                    error: Some(format!("target program fails: {}", f.message)),
                    ..own
                }
            } else {
                own
            }
        }
    }
}

/// Execute `program` in the sandbox and render its solid here (the guest returns the solid; the ray
/// caster is bounded by the image size and the solid the sandbox let through). The render-and-compare
/// search's one candidate: its measurements and its image. An empty solid is a `no_result` failure.
pub fn render_program(
    executor: &dyn Executor,
    program: &str,
    opts: &RenderOptions,
    scratch: &mut RayScratch,
) -> Result<(Measured, RgbImage), Failure> {
    let t = executor.target(program)?;
    let solid = t.solid().ok_or_else(|| {
        Failure::new(
            FailureKind::Crash,
            format!(
                "the {} backend gives no solid to render",
                executor.config().backend
            ),
        )
    })?;
    match render_with(&solid, opts, scratch) {
        Ok(img) => Ok((t.measured, img)),
        Err(RenderError::Empty) => Err(Failure::new(
            FailureKind::NoResult,
            "the solid is empty: nothing to render",
        )),
        Err(e) => Err(Failure::new(FailureKind::Runtime, e.to_string())),
    }
}

/// Decode program bytes: non-UTF-8 input is a syntax failure naming the first bad byte.
pub fn decode_program(bytes: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let col = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count();
        Failure::new(
            FailureKind::Syntax,
            format!(
                "line {line}, column {col}: not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}
