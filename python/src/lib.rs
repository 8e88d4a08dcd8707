//! `cadvlm._native`: the Python extension module over the crate's executor, IoU, renderer and reward.
//!
//! A thin layer: every call parses its arguments, then releases the GIL (`Python::detach`) while
//! the crate's [`Executor`] (wasm sandbox by default) does the work, on the calling thread or, for the
//! `*_many` calls, on a rayon pool. Executors and pools are cached per process id, so a `fork`ed
//! worker (multiprocessing) builds its own instead of waiting on threads it did not inherit. The
//! Python package `cadvlm` (`python/cadvlm/__init__.py`) wraps these functions with docstrings,
//! numpy images and the TRL reward; `CadError` is defined there and raised from here.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cadvlm::exec::{
    self, Backend, Executor, Failure, Measured, Outcome, SandboxConfig, Target, render_program,
};
use cadvlm::geom::Normalize;
use cadvlm::geom::csg::RayScratch;
use cadvlm::geom::render::{RenderError, RenderOptions, Style};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList};
use rayon::prelude::*;

/// The executors and thread pools of this process (rebuilt in a forked child).
struct Cache {
    pid: u32,
    executors: HashMap<(Backend, u64, u64, u64), Arc<dyn Executor>>,
    pools: HashMap<usize, Arc<rayon::ThreadPool>>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.as_ref().is_none_or(|c| c.pid != pid) {
        // A new process (or a fork): the parent's pool threads do not exist here.
        if let Some(old) = guard.take() {
            std::mem::forget(old); // its pools' threads are gone; dropping would wait for them
        }
        *guard = Some(Cache {
            pid,
            executors: HashMap::new(),
            pools: HashMap::new(),
        });
    }
    f(guard.as_mut().expect("cache set above"))
}

/// The sandbox settings a call names (None: the crate's defaults).
fn sandbox_config(
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<SandboxConfig> {
    let d = SandboxConfig::DEFAULT;
    let cfg = SandboxConfig {
        backend: Backend::from_str(sandbox).map_err(PyValueError::new_err)?,
        timeout_ms: timeout_ms.unwrap_or(d.timeout_ms),
        memory_mb: memory_mb.unwrap_or(d.memory_mb),
        fuel: fuel.unwrap_or(d.fuel),
    };
    cfg.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(cfg)
}

fn executor_for(cfg: &SandboxConfig) -> PyResult<Arc<dyn Executor>> {
    let key = (cfg.backend, cfg.timeout_ms, cfg.memory_mb, cfg.fuel);
    if let Some(e) = with_cache(|c| c.executors.get(&key).cloned()) {
        return Ok(e);
    }
    // Built outside the lock: the first wasm executor compiles the guest (about a second).
    let made: Arc<dyn Executor> =
        Arc::from(exec::executor(cfg).map_err(|e| PyRuntimeError::new_err(e.to_string()))?);
    Ok(with_cache(|c| {
        c.executors.entry(key).or_insert(made).clone()
    }))
}

fn pool_for(threads: Option<usize>) -> PyResult<Arc<rayon::ThreadPool>> {
    let n = match threads {
        Some(0) => return Err(PyValueError::new_err("threads must be positive")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(p) = with_cache(|c| c.pools.get(&n).cloned()) {
        return Ok(p);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("cadvlm-{i}"))
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start {n} threads: {e}")))?;
    Ok(with_cache(|c| {
        c.pools.entry(n).or_insert(Arc::new(pool)).clone()
    }))
}

fn parse_normalize(s: &str) -> PyResult<Normalize> {
    Normalize::from_str(s).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `cadvlm.CadError(kind, message, line, column, program)` for a failed program.
fn cad_error(py: Python<'_>, f: &Failure, program: Option<&str>) -> PyErr {
    let (line, column, message) = match f.location() {
        Some((l, c, rest)) => (Some(l), Some(c), rest),
        None => (None, None, f.message.as_str()),
    };
    let made = py
        .import("cadvlm._errors")
        .and_then(|m| m.getattr("CadError"))
        .and_then(|cls| cls.call1((f.kind.as_str(), message, line, column, program)));
    match made {
        Ok(inst) => PyErr::from_value(inst),
        Err(e) => e,
    }
}

/// The `execute` dict of one outcome.
fn outcome_dict<'py>(py: Python<'py>, o: &Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match &o.result {
        Ok(m) => {
            d.set_item("ok", true)?;
            d.set_item("valid", m.valid)?;
            d.set_item("volume", m.volume)?;
            d.set_item("bbox", m.bbox.to_vec())?;
            d.set_item("n_solids", m.n_solids)?;
            d.set_item("error", py.None())?;
            d.set_item("kind", py.None())?;
            d.set_item("line", py.None())?;
            d.set_item("column", py.None())?;
        }
        Err(f) => {
            let loc = f.location();
            d.set_item("ok", false)?;
            d.set_item("valid", false)?;
            d.set_item("volume", py.None())?;
            d.set_item("bbox", py.None())?;
            d.set_item("n_solids", py.None())?;
            d.set_item("error", &f.message)?;
            d.set_item("kind", f.kind.as_str())?;
            d.set_item("line", loc.map(|l| l.0))?;
            d.set_item("column", loc.map(|l| l.1))?;
        }
    }
    d.set_item("elapsed_ms", o.elapsed.as_secs_f64() * 1e3)?;
    Ok(d)
}

#[pyfunction]
#[pyo3(signature = (code, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
fn execute<'py>(
    py: Python<'py>,
    code: String,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    let o = py.detach(|| ex.execute(&code));
    outcome_dict(py, &o)
}

#[pyfunction]
#[pyo3(signature = (codes, threads=None, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
fn execute_many<'py>(
    py: Python<'py>,
    codes: Vec<String>,
    threads: Option<usize>,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<Bound<'py, PyList>> {
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    let pool = pool_for(threads)?;
    let outs = py.detach(|| {
        let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
        pool.install(|| ex.execute_batch(&refs))
    });
    let items = outs
        .iter()
        .map(|o| outcome_dict(py, o))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// Why a (prediction, target) pair has no IoU.
enum PairError {
    Target(Failure),
    Prediction(Failure),
}

/// IoU of each prediction against its target: each distinct target executed once, all on `pool`.
fn score_pairs(
    ex: &dyn Executor,
    pool: &rayon::ThreadPool,
    preds: &[&str],
    targets: &[String],
    norm: Normalize,
) -> Vec<Result<f64, PairError>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let slot: Vec<usize> = targets
        .iter()
        .map(|t| {
            *index.entry(t.as_str()).or_insert_with(|| {
                distinct.push(t.as_str());
                distinct.len() - 1
            })
        })
        .collect();
    pool.install(|| {
        let made: Vec<Result<Target, Failure>> =
            distinct.par_iter().map(|t| ex.target(t)).collect();
        preds
            .par_iter()
            .zip(slot.par_iter())
            .map(|(p, &s)| match &made[s] {
                Err(f) => Err(PairError::Target(f.clone())),
                Ok(t) => match ex.reward(p, t, norm).result {
                    Ok(Measured { iou: Some(v), .. }) => Ok(v),
                    Ok(_) => Err(PairError::Prediction(Failure::new(
                        exec::FailureKind::Crash,
                        "the executor gave no IoU",
                    ))),
                    Err(f) => Err(PairError::Prediction(f)),
                },
            })
            .collect()
    })
}

fn same_length(a: usize, b: usize, what: &str) -> PyResult<()> {
    if a != b {
        return Err(PyValueError::new_err(format!(
            "{what}: {a} predictions but {b} targets"
        )));
    }
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (a, b, normalize="unitcube", *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
#[allow(clippy::too_many_arguments)]
fn iou(
    py: Python<'_>,
    a: String,
    b: String,
    normalize: &str,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<f64> {
    let norm = parse_normalize(normalize)?;
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    pair_value(py, &*ex, &a, &b, "IoU", |ex, a, t| {
        ex.reward(a, t, norm).result.map(|m| m.iou)
    })
}

/// One number of program `a` against target `b` (`measure` runs `a` against the target), with the
/// GIL released; a failure is a `CadError` naming the program (`"a"` or `"b"`).
fn pair_value(
    py: Python<'_>,
    ex: &dyn Executor,
    a: &str,
    b: &str,
    what: &str,
    measure: impl FnOnce(&dyn Executor, &str, &Target) -> Result<Option<f64>, Failure> + Send,
) -> PyResult<f64> {
    let res = py.detach(|| {
        let t = ex.target(b).map_err(PairError::Target)?;
        match measure(ex, a, &t) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(PairError::Prediction(Failure::new(
                exec::FailureKind::Crash,
                format!("the {} executor gives no {what}", ex.config().backend),
            ))),
            Err(f) => Err(PairError::Prediction(f)),
        }
    });
    match res {
        Ok(v) => Ok(v),
        Err(PairError::Prediction(f)) => Err(cad_error(py, &f, Some("a"))),
        Err(PairError::Target(f)) => Err(cad_error(py, &f, Some("b"))),
    }
}

#[pyfunction]
#[pyo3(signature = (a, b, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
fn chamfer(
    py: Python<'_>,
    a: String,
    b: String,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<f64> {
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    pair_value(py, &*ex, &a, &b, "Chamfer distance", |ex, a, t| {
        ex.score(a, t)
            .result
            .map(|m| m.ious.and_then(|i| i.chamfer))
    })
}

#[pyfunction]
#[pyo3(signature = (preds, targets, normalize="unitcube", threads=None, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
#[allow(clippy::too_many_arguments)]
fn iou_many(
    py: Python<'_>,
    preds: Vec<String>,
    targets: Vec<String>,
    normalize: &str,
    threads: Option<usize>,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<Vec<Option<f64>>> {
    same_length(preds.len(), targets.len(), "iou_many")?;
    let norm = parse_normalize(normalize)?;
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    let pool = pool_for(threads)?;
    Ok(py.detach(|| {
        let refs: Vec<&str> = preds.iter().map(String::as_str).collect();
        score_pairs(&*ex, &pool, &refs, &targets, norm)
            .into_iter()
            .map(Result::ok)
            .collect()
    }))
}

/// Rewards of completions against targets, and the targets that failed: `(index, kind, message)`.
#[pyfunction]
#[pyo3(signature = (completions, targets, normalize="unitcube", invalid=-0.5, threads=None, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
#[allow(clippy::too_many_arguments)]
fn reward(
    py: Python<'_>,
    completions: Vec<String>,
    targets: Vec<String>,
    normalize: &str,
    invalid: f64,
    threads: Option<usize>,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<(Vec<f64>, Vec<(usize, String, String)>)> {
    same_length(completions.len(), targets.len(), "reward")?;
    let norm = parse_normalize(normalize)?;
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    let pool = pool_for(threads)?;
    Ok(py.detach(|| {
        let codes: Vec<&str> = completions
            .iter()
            .map(|c| exec::code_from_completion(c))
            .collect();
        let mut bad_targets = Vec::new();
        let rewards = score_pairs(&*ex, &pool, &codes, &targets, norm)
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(v) if v.is_finite() => v,
                Ok(_) | Err(PairError::Prediction(_)) => invalid,
                Err(PairError::Target(f)) => {
                    bad_targets.push((i, f.kind.as_str().to_string(), f.message));
                    invalid
                }
            })
            .collect();
        (rewards, bad_targets)
    }))
}

/// `(height, width, RGB bytes)` of the program's render.
#[pyfunction]
#[pyo3(signature = (code, style="gencad", size=None, *, sandbox="wasm", timeout_ms=None, memory_mb=None, fuel=None))]
#[allow(clippy::too_many_arguments)]
fn render<'py>(
    py: Python<'py>,
    code: String,
    style: &str,
    size: Option<u32>,
    sandbox: &str,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    fuel: Option<u64>,
) -> PyResult<(u32, u32, Bound<'py, PyByteArray>)> {
    let style = Style::from_str(style).map_err(PyValueError::new_err)?;
    let mut opts = RenderOptions::style(style);
    if let Some(s) = size {
        opts.size = s;
    }
    if !(8..=8192).contains(&opts.size) {
        return Err(PyValueError::new_err(
            RenderError::BadSize(opts.size).to_string(),
        ));
    }
    let ex = executor_for(&sandbox_config(sandbox, timeout_ms, memory_mb, fuel)?)?;
    let res = py.detach(|| render_program(&*ex, &code, &opts, &mut RayScratch::default()));
    match res {
        Ok((_, img)) => Ok((img.height, img.width, PyByteArray::new(py, &img.pixels))),
        Err(f) => Err(cad_error(py, &f, None)),
    }
}

/// The program inside a completion's markdown fence (the whole text without one).
#[pyfunction]
fn code_from_completion(text: &str) -> String {
    exec::code_from_completion(text).to_string()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(execute, m)?)?;
    m.add_function(wrap_pyfunction!(execute_many, m)?)?;
    m.add_function(wrap_pyfunction!(iou, m)?)?;
    m.add_function(wrap_pyfunction!(iou_many, m)?)?;
    m.add_function(wrap_pyfunction!(chamfer, m)?)?;
    m.add_function(wrap_pyfunction!(reward, m)?)?;
    m.add_function(wrap_pyfunction!(render, m)?)?;
    m.add_function(wrap_pyfunction!(code_from_completion, m)?)?;
    m.add("DEFAULT_TIMEOUT_MS", SandboxConfig::DEFAULT.timeout_ms)?;
    m.add("DEFAULT_MEMORY_MB", SandboxConfig::DEFAULT.memory_mb)?;
    m.add("DEFAULT_FUEL", SandboxConfig::DEFAULT.fuel)?;
    Ok(())
}
