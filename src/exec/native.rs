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

use super::{
    Executor, Failure, FailureKind, Ious, Measured, Outcome, Report, SandboxConfig, Target,
    exec_program,
};
use crate::cad::Limits;
use crate::geom::{self, MeasureOptions, Normalize, Solid};

pub struct NativeExecutor {
    cfg: SandboxConfig,
    limits: Limits,
    opts: MeasureOptions,
}

impl NativeExecutor {
    pub fn new(cfg: SandboxConfig) -> NativeExecutor {
        NativeExecutor {
            cfg,
            limits: Limits::default(),
            opts: MeasureOptions::default(),
        }
    }

    /// Execute, measure, and (if asked) compute the IoU against `target` — under one normalisation,
    /// or all three (`None`; an empty solid is then a failure) — all under `catch_unwind`.
    fn run(
        &self,
        program: &str,
        target: Option<(&Solid, Option<Normalize>)>,
    ) -> (Outcome, Option<Solid>) {
        let t0 = Instant::now();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let (mut report, solid) = exec_program(program, &self.limits, &self.opts);
            let mut ious = None;
            match (&solid, target) {
                (Some(s), Some((t, Some(norm)))) => report.iou = Some(geom::iou(s, t, norm)),
                (Some(s), Some((_, None))) if s.is_empty() => {
                    report = Report::failure(Some(FailureKind::NoResult), "empty solid".into())
                }
                (Some(s), Some((t, None))) => ious = Some(Ious::of(s, t)),
                _ => {}
            }
            (report, solid, ious)
        }));
        match res {
            Ok((report, solid, ious)) => (Outcome::from_report(&report, ious, t0.elapsed()), solid),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                (
                    Outcome::failed(
                        FailureKind::Crash,
                        format!("executor panicked: {msg}"),
                        t0.elapsed(),
                    ),
                    None,
                )
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
        let solid = solid
            .ok_or_else(|| Failure::new(FailureKind::Crash, "target executed without a solid"))?;
        Ok(Target::from_solid(program, measured, solid))
    }

    fn reward(&self, program: &str, target: &Target, normalize: Normalize) -> Outcome {
        match target.solid() {
            Some(t) => self.run(program, Some((&t, Some(normalize)))).0,
            None => Outcome::failed(
                FailureKind::Crash,
                "the target has no solid the native executor can read",
                Default::default(),
            ),
        }
    }

    fn score(&self, program: &str, target: &Target) -> Outcome {
        match target.solid() {
            Some(t) => self.run(program, Some((&t, None))).0,
            None => Outcome::failed(
                FailureKind::Crash,
                "the target has no solid the native executor can read",
                Default::default(),
            ),
        }
    }
}
