//! The `cadquery` backend: real CadQuery 2.8.0 / OpenCascade in a Python subprocess, for cross-checks and programs outside our subset.
//!
//! Each program runs in a fresh `python3 -I` process (the interpreter named by `$CADVLM_PYTHON`,
//! else `python3`) with an empty environment, a fresh temporary working directory (removed after),
//! and, once CadQuery is imported, rlimits: address space (+`memory_mb`), CPU seconds, no file
//! writes (`RLIMIT_FSIZE` 0), no core dumps. The host kills it at `timeout_ms` (wall clock) and
//! caps its answer at 16 MiB. The runner script is `cadquery_runner.py`.
//!
//! Protects against: hangs, CPU and memory exhaustion, writing file contents, crashes of OCC
//! (a dead child is a `crash` outcome, never a dead host). Does NOT protect against: reading files,
//! creating empty files or directories, network access, spawning processes — Python's `exec` is no
//! security boundary. Use it on trusted programs (datasets, cross-checks), never on model output.
//! No fuel. A reward re-executes the target each time (the OCC shape is not cached across processes).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    Executor, Failure, FailureKind, Ious, Outcome, Report, SandboxConfig, SandboxError, Target,
};
use crate::geom::Normalize;

const RUNNER: &str = include_str!("cadquery_runner.py");
const MAX_ANSWER: u64 = 16 << 20;

/// The Python interpreter: `$CADVLM_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os("CADVLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Whether `python -c "import cadquery"` works (checked once per process); the error says why not.
pub fn available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE
        .get_or_init(|| {
            let py = python();
            let out = Command::new(&py)
                .args(["-I", "-c", "import cadquery"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                Err(format!(
                    "`{} -c \"import cadquery\"` failed: {}",
                    py.display(),
                    err.trim().lines().last().unwrap_or("")
                ))
            }
        })
        .clone()
}

#[derive(Serialize)]
struct Request<'a> {
    program: &'a str,
    target: Option<&'a str>,
    normalize: Option<Normalize>,
    memory_bytes: u64,
    cpu_s: u64,
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(flatten)]
    report: Report,
}

/// Runs programs with real CadQuery; see the module documentation for what it protects against.
pub struct CadqueryExecutor {
    cfg: SandboxConfig,
    python: PathBuf,
}

impl CadqueryExecutor {
    /// Fails (with the reason) when `python3 -c "import cadquery"` does not work.
    pub fn new(cfg: SandboxConfig) -> Result<CadqueryExecutor, SandboxError> {
        available().map_err(SandboxError::Unavailable)?;
        Ok(CadqueryExecutor {
            cfg,
            python: python(),
        })
    }

    fn run(&self, program: &str, target: Option<&str>, normalize: Option<Normalize>) -> Outcome {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let t0 = Instant::now();
        let dir = std::env::temp_dir().join(format!(
            "cadvlm-cq-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = std::fs::create_dir(&dir) {
            return Outcome::failed(
                FailureKind::Crash,
                format!("cannot create {}: {e}", dir.display()),
                t0.elapsed(),
            );
        }
        let out = self.run_in(&dir, program, target, normalize, t0);
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    fn run_in(
        &self,
        dir: &std::path::Path,
        program: &str,
        target: Option<&str>,
        normalize: Option<Normalize>,
        t0: Instant,
    ) -> Outcome {
        let req = Request {
            program,
            target,
            normalize,
            memory_bytes: self.cfg.memory_mb << 20,
            cpu_s: self.cfg.timeout_ms.div_ceil(1000) + 1,
        };
        let req = match serde_json::to_vec(&req) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::failed(
                    FailureKind::Crash,
                    format!("cannot encode the request: {e}"),
                    t0.elapsed(),
                );
            }
        };
        let mut child = match Command::new(&self.python)
            .args(["-I", "-c", RUNNER])
            .env_clear()
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return Outcome::failed(
                    FailureKind::Crash,
                    format!("cannot start {}: {e}", self.python.display()),
                    t0.elapsed(),
                );
            }
        };
        // Feed stdin and drain stdout on threads, so neither pipe can block the deadline.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&req);
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.take(MAX_ANSWER).read_to_end(&mut buf);
            buf
        });
        let deadline = t0 + Duration::from_millis(self.cfg.timeout_ms);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    return Outcome::failed(
                        FailureKind::Crash,
                        format!("waiting for python: {e}"),
                        t0.elapsed(),
                    );
                }
            }
        };
        let _ = writer.join();
        let answer = reader.join().unwrap_or_default();
        let elapsed = t0.elapsed();
        let Some(status) = status else {
            return Outcome::failed(
                FailureKind::Timeout,
                format!("the program ran past {} ms", self.cfg.timeout_ms),
                elapsed,
            );
        };
        match serde_json::from_slice::<Answer>(&answer) {
            // the runner's kinds include out_of_memory and crash, which `FailureKind` names too
            Ok(a) => Outcome::from_report(&a.report, None, elapsed),
            Err(_) => {
                use std::os::unix::process::ExitStatusExt;
                let (kind, why) = match status.signal() {
                    Some(24) => (FailureKind::Timeout, "CPU time limit (SIGXCPU)".to_string()),
                    Some(25) => (
                        FailureKind::Crash,
                        "tried to write a file (SIGXFSZ)".to_string(),
                    ),
                    Some(sig) => (FailureKind::Crash, format!("killed by signal {sig}")),
                    None => (
                        FailureKind::Crash,
                        format!("exited with {status} without an answer"),
                    ),
                };
                Outcome::failed(kind, format!("python: {why}"), elapsed)
            }
        }
    }
}

impl Executor for CadqueryExecutor {
    fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    fn execute(&self, program: &str) -> Outcome {
        self.run(program, None, None)
    }

    fn target(&self, program: &str) -> Result<Target, Failure> {
        let measured = self.run(program, None, None).result?;
        Ok(Target::from_program(program, measured))
    }

    fn reward(&self, program: &str, target: &Target, normalize: Normalize) -> Outcome {
        self.run(program, Some(target.program()), Some(normalize))
    }

    /// Three CadQuery runs, one per normalisation (a cross-check backend, not a fast one). No
    /// Chamfer distance here: `benches/chamfer_vs_cadquery.py` computes CadQuery's.
    fn score(&self, program: &str, target: &Target) -> Outcome {
        let mut out = self.reward(program, target, Normalize::Raw);
        let unitcube = self.reward(program, target, Normalize::UnitCube);
        let best = self.reward(program, target, Normalize::Best);
        let raw = out.iou();
        if let (Ok(m), Some(raw), Some(unitcube), Some(best)) =
            (&mut out.result, raw, unitcube.iou(), best.iou())
        {
            m.ious = Some(Ious {
                raw,
                unitcube,
                best,
                chamfer: None,
            });
        }
        out
    }
}
