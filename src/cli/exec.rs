//! `cadvlm exec`: execute program files through one executor (sandboxed by default), and the
//! `--sandbox/--timeout-ms/--memory-mb/--fuel` options it shares with `cadvlm iou`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::exec::{
    Backend, Failure, FailureKind, Outcome, Report, SandboxConfig, decode_program, executor,
};

#[derive(Args)]
pub struct ExecArgs {
    /// Program files (`.py`).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Print the total and per-program time to stderr.
    #[arg(long)]
    pub timing: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Which executor runs the programs, and its limits (the recipes' `[sandbox]` table).
#[derive(Args, Clone, Debug)]
pub struct SandboxArgs {
    /// Executor: wasm (sandboxed; for model output), native (in-process; trusted programs only),
    /// cadquery (real CadQuery via python3; needs `import cadquery` to work).
    #[arg(
        long = "sandbox",
        id = "sandbox",
        default_value = "wasm",
        value_name = "BACKEND"
    )]
    pub backend: Backend,
    /// Wall-clock limit per program, in ms (wasm, cadquery).
    #[arg(long, default_value_t = SandboxConfig::DEFAULT.timeout_ms)]
    pub timeout_ms: u64,
    /// Memory limit per program, in MiB (wasm: linear memory; cadquery: address space beyond the interpreter's).
    #[arg(long, default_value_t = SandboxConfig::DEFAULT.memory_mb)]
    pub memory_mb: u64,
    /// Fuel per program: about one unit per WebAssembly instruction (wasm).
    #[arg(long, default_value_t = SandboxConfig::DEFAULT.fuel)]
    pub fuel: u64,
}

impl SandboxArgs {
    pub fn config(&self) -> SandboxConfig {
        SandboxConfig {
            backend: self.backend,
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
            fuel: self.fuel,
        }
    }
}

#[derive(Serialize)]
struct ExecLine<'a> {
    file: String,
    sandbox: &'a SandboxConfig,
    #[serde(flatten)]
    report: Report,
}

/// A program file's text, or the failure that reading it is (missing file, not UTF-8).
pub(super) fn read(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path).map_err(|e| {
        Failure::new(
            FailureKind::Runtime,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    decode_program(&bytes).map(str::to_string)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `cadvlm exec`: all files through one executor, in parallel; answers in input order.
pub fn run(a: ExecArgs) -> Result<()> {
    let cfg = a.sandbox.config();
    let t_setup = Instant::now();
    let ex = executor(&cfg)?;
    let setup = t_setup.elapsed().as_secs_f64();
    if !a.json {
        eprintln!("{}", cfg.describe());
    }
    let t0 = Instant::now();
    let texts: Vec<Result<String, Failure>> = a.files.iter().map(|f| read(f)).collect();
    let programs: Vec<&str> = texts.iter().filter_map(|t| t.as_deref().ok()).collect();
    let mut ran = ex.execute_batch(&programs).into_iter();
    let outcomes: Vec<Outcome> = texts
        .iter()
        .map(|t| match t {
            Ok(_) => ran.next().expect("one outcome per program"),
            Err(f) => Outcome {
                result: Err(f.clone()),
                elapsed: Default::default(),
                fuel_used: None,
            },
        })
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    for (f, o) in a.files.iter().zip(&outcomes) {
        if a.json {
            let line = ExecLine {
                file: f.display().to_string(),
                sandbox: &cfg,
                report: o.report(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            match &o.result {
                Ok(m) => {
                    let b = m.bbox;
                    writeln!(
                        out,
                        "{}: ok  volume {:.6}  bbox [{:.4}, {:.4}, {:.4}] – [{:.4}, {:.4}, {:.4}]  solids {}",
                        f.display(),
                        m.volume,
                        b[0],
                        b[1],
                        b[2],
                        b[3],
                        b[4],
                        b[5],
                        m.n_solids
                    )?;
                }
                Err(e) => writeln!(
                    out,
                    "{}: FAILED ({})  {}",
                    f.display(),
                    e.kind.as_str(),
                    e.message
                )?,
            }
        }
    }
    if a.timing {
        let guest = match cfg.backend {
            Backend::Wasm => match crate::exec::wasm::guest_source() {
                Ok((source, t)) => format!("; guest {source} in {:.1} ms", 1e3 * t.as_secs_f64()),
                Err(_) => String::new(),
            },
            _ => String::new(),
        };
        eprintln!(
            "exec [{}]: set-up {:.1} ms{guest}",
            cfg.backend,
            1e3 * setup
        );
        let n = outcomes.len().max(1) as f64;
        let busy: f64 = outcomes.iter().map(|o| o.elapsed.as_secs_f64()).sum();
        eprintln!(
            "exec [{}]: {} programs in {:.3} s wall ({:.1} programs/s on {} threads); {:.3} ms per program (mean of per-program times); peak RSS {:.0} MiB",
            cfg.backend,
            outcomes.len(),
            wall,
            n / wall.max(1e-9),
            rayon::current_num_threads(),
            1e3 * busy / n,
            peak_rss_mib().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
