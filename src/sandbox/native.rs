//! The `native` backend: the executor core in-process, panics caught; the fast path for trusted programs.
//!
//! Protects against: programs outside the subset and resource-hungry programs *as far as the core's
//! own [`Limits`] reach* (source size, tokens, nesting, edges, loops, prisms, boolean nodes,
//! coordinates), and panics (bugs of ours) — caught with `catch_unwind` and reported as `crash`.
//! Does NOT protect against: a bug that loops forever, allocates without bound, overflows the stack
//! (that aborts the process) or corrupts memory; `timeout_ms`, `memory_mb` and `fuel` are not
//! enforced. Use it for our own synthetic programs and benchmarks, `wasm` for model output.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::{Executor, Failure, FailureKind, Measured, Outcome, SandboxConfig, Target};
use crate::cad::Limits;
use crate::exec::exec_program;
use crate::geom::{self, MeasureOptions, Normalize, Solid};

pub struct NativeExecutor {
    cfg: SandboxConfig,
    limits: Limits,
    opts: MeasureOptions,
}

impl NativeExecutor {
    pub fn new(cfg: SandboxConfig) -> NativeExecutor {
        NativeExecutor { cfg, limits: Limits::default(), opts: MeasureOptions::default() }
    }

    /// Execute, measure, and (if asked) compute the IoU against `target`, all under `catch_unwind`.
    fn run(&self, program: &str, target: Option<(&Solid, Normalize)>) -> (Outcome, Option<Solid>) {
        let t0 = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let (report, solid) = exec_program(program, &self.limits, &self.opts);
            let iou = match (&solid, target) {
                (Some(s), Some((t, norm))) => Some(geom::iou(s, t, norm)),
                _ => None,
            };
            (report, solid, iou)
        }));
        match res {
            Ok((report, solid, iou)) => (Outcome::from_report(&report, iou, t0.elapsed()), solid),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                (Outcome::failed(FailureKind::Crash, format!("executor panicked: {msg}"), t0.elapsed()), None)
            }
        }
    }
}

impl Executor for NativeExecutor {
    fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    fn execute(&self, program: &str) -> Outcome {
        self.run(program, None).0
    }

    fn target(&self, program: &str) -> Result<Target, Failure> {
        let (out, solid) = self.run(program, None);
        let measured: Measured = out.result?;
        let solid = solid.ok_or_else(|| Failure::new(FailureKind::Crash, "target executed without a solid"))?;
        Ok(Target::from_solid(program, measured, solid))
    }

    fn reward(&self, program: &str, target: &Target, normalize: Normalize) -> Outcome {
        match target.solid() {
            Some(t) => self.run(program, Some((&t, normalize))).0,
            None => Outcome::failed(FailureKind::Crash, "the target has no solid the native executor can read", Default::default()),
        }
    }
}
