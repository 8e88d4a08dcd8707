//! The `wasm` backend: the executor compiled to WebAssembly (`guest/`), run by wasmtime under fuel, memory and time limits.
//!
//! The guest module is built by `build.rs` from `guest/` and embedded in the binary; its machine code
//! is loaded from the disk cache (`super::guest_cache`, milliseconds) or compiled once (about half a
//! second) and cached, once per process (one [`Engine`] + [`InstancePre`], shared by all threads),
//! and every program runs in a fresh [`Store`] with its own linear memory.
//!
//! Protects against (for each program separately): unbounded computation (fuel: a count of executed
//! WebAssembly operations; and a wall-clock deadline by epoch interruption, checked by a ticker
//! thread every 10 ms), unbounded memory (a [`ResourceLimiter`] refuses linear-memory growth past
//! `memory_mb` and traps), stack overflow (wasmtime's stack limit traps), any panic, abort or
//! memory-safety bug of the executor (a trap confined to the guest's linear memory), and access to the
//! outside: the guest gets no files, no sockets, no environment variables, no arguments and no clock
//! (reads as 0); stdin is the request, stdout/stderr are capped in-memory buffers, randomness is a
//! fixed sequence; every other WASI call answers `EBADF` (fd calls) or `ENOSYS`. A malformed or oversized answer is a `crash`.
//! Does NOT protect against: bugs in wasmtime/Cranelift themselves, or host-side costs outside the
//! guest (compiling the module on a cold cache, ~0.5 s; the request and answer copies, capped at 64 MiB and 16 MiB).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::{
    AsContextMut, Caller, Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap, Val, ValType,
};

use super::guest_cache::{self, GuestSource};
use super::{
    Executor, Failure, FailureKind, Ious, Outcome, Report, SandboxConfig, SandboxError, Target,
};
use crate::cad::Limits;
use crate::geom::Normalize;

/// The guest module, built from `guest/` by `build.rs`.
pub static GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cadvlm-guest.wasm"));

/// Epoch ticker period: the deadline's resolution.
const TICK: Duration = Duration::from_millis(10);
/// Wall-clock bound on measuring an executed program's solid against its target (the guest's
/// `cadvlm.executed` call starts it): trusted code on a solid the executor's limits already
/// bounded, so neither the program's `timeout_ms` nor its fuel applies — on a loaded machine the
/// program's deadline turned scoring into timeouts, and the Chamfer distance of a part with tiny
/// holes (dev 00059989: four 0.003-radius holes) needs more than the program's 2·10⁹ fuel.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(120);
/// Fuel for measuring: unbounded in practice ([`MEASURE_TIMEOUT`] is the bound).
const MEASURE_FUEL: u64 = u64::MAX >> 2;
/// Largest request the host will copy into a guest (program + target solid).
const MAX_REQUEST: usize = 64 << 20;
/// Largest answer a guest may write to stdout.
const MAX_ANSWER: usize = 16 << 20;
/// Largest stderr kept (panic messages).
const MAX_STDERR: usize = 8 << 10;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_NOSYS: i32 = 52;
/// The WASI calls [`define_wasi`] implements.
const DEFINED: [&str; 9] = [
    "fd_write",
    "fd_read",
    "proc_exit",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "random_get",
];

/// Per-program host state: the request, the captured output, the memory limiter.
struct Ctx {
    stdin: Vec<u8>,
    stdin_pos: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    answer_too_big: bool,
    exit_code: Option<i32>,
    rng: u64,
    limiter: MemLimiter,
    /// The program's fuel budget (to tell what it used once measuring begins).
    program_budget: u64,
    /// Set when the guest reported its program executed and measuring began.
    measuring: bool,
    /// Fuel the program itself used (set when measuring begins).
    program_fuel: Option<u64>,
}

/// Refuses (with a trap, remembered in `hit`) linear memory beyond `max_bytes`, and extra tables/instances.
struct MemLimiter {
    max_bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "linear memory of {desired} bytes exceeds the limit of {} bytes",
                self.max_bytes
            )));
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        1
    }
}

/// proc_exit's unwinding error.
#[derive(Debug)]
struct Exit(i32);
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest exited with code {}", self.0)
    }
}
impl std::error::Error for Exit {}

/// The engine and the pre-linked module, shared by every executor of the process.
struct Shared {
    engine: Engine,
    pre: InstancePre<Ctx>,
    /// Where the compiled guest came from (the disk cache or Cranelift) and how long that took.
    source: GuestSource,
    load_time: Duration,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

fn shared() -> Result<&'static Shared, SandboxError> {
    SHARED
        .get_or_init(|| build_shared().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| SandboxError::Wasm(e.clone()))
}

/// How this process obtained the compiled guest and how long it took; sets the guest up if needed.
pub fn guest_source() -> Result<(GuestSource, Duration), SandboxError> {
    shared().map(|s| (s.source.clone(), s.load_time))
}

/// The engine configuration every guest runs under (fuel, epochs, the pooling allocator).
pub fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Pooling: instance slots are reused, and a slot's first 16 MiB of linear memory stay resident
    // (zeroed with memset), so a fresh store per program costs no mmap/munmap and few page faults.
    // Each store's own cap is the ResourceLimiter's `memory_mb`; slots bound concurrent programs.
    let slots = std::thread::available_parallelism()
        .map_or(16, |n| n.get())
        .saturating_mul(4)
        .max(64) as u32;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_memory_size(4 << 30)
        .linear_memory_keep_resident(16 << 20)
        .table_keep_resident(1 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

fn build_shared() -> wasmtime::Result<Shared> {
    let engine = engine()?;
    let dir = guest_cache::cache_dir();
    let guest =
        guest_cache::load_or_compile(&engine, GUEST_WASM, dir.as_deref().map_err(String::as_str))?;
    let module = guest.module;
    let mut linker: Linker<Ctx> = Linker::new(&engine);
    define_wasi(&mut linker)?;
    linker.func_wrap("cadvlm", "executed", |mut caller: Caller<'_, Ctx>| {
        let budget = caller.data().program_budget;
        let left = caller.get_fuel()?;
        let ctx = caller.data_mut();
        ctx.measuring = true;
        ctx.program_fuel = Some(budget.saturating_sub(left));
        caller.set_fuel(MEASURE_FUEL)?;
        caller
            .as_context_mut()
            .set_epoch_deadline(MEASURE_TIMEOUT.as_millis().div_ceil(TICK.as_millis()) as u64);
        Ok(())
    })?;
    // Anything else the module imports from WASI answers ENOSYS; imports from elsewhere trap.
    for imp in module.imports() {
        if imp.module() != WASI || DEFINED.contains(&imp.name()) {
            continue;
        }
        if let wasmtime::ExternType::Func(ft) = imp.ty() {
            let returns_errno =
                ft.results().len() == 1 && matches!(ft.results().next(), Some(ValType::I32));
            let name = imp.name().to_string();
            // No file descriptors beyond stdio (`fd_prestat_get` must say EBADF: no preopened dirs).
            let errno = if name.starts_with("fd_") {
                ERRNO_BADF
            } else {
                ERRNO_NOSYS
            };
            linker.func_new(WASI, imp.name(), ft.clone(), move |_c, _args, results| {
                if returns_errno {
                    results[0] = Val::I32(errno);
                    Ok(())
                } else {
                    Err(wasmtime::Error::msg(format!(
                        "the sandbox denies WASI `{name}`"
                    )))
                }
            })?;
        }
    }
    linker.define_unknown_imports_as_traps(&module)?;
    let pre = linker.instantiate_pre(&module)?;
    let shared = Shared {
        engine,
        pre,
        source: guest.source,
        load_time: guest.elapsed,
    };
    shared.ensure_ticker()?;
    Ok(shared)
}

/// The process whose epoch ticker runs (0: none yet).
static TICKER_PID: AtomicU32 = AtomicU32::new(0);

impl Shared {
    /// The deadline clock: one detached thread per process. A `fork`ed child (a Python
    /// multiprocessing worker, say) inherits `SHARED` but not the thread, so each run checks the
    /// process id and starts the child's own ticker; without it no deadline would ever fire there.
    fn ensure_ticker(&self) -> std::io::Result<()> {
        let pid = std::process::id();
        let was = TICKER_PID.load(Ordering::Acquire);
        if was == pid
            || TICKER_PID
                .compare_exchange(was, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Ok(()); // running, or another thread of this process is starting it
        }
        let ticker = self.engine.clone();
        std::thread::Builder::new()
            .name("cadvlm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .map(|_| ())
            .inspect_err(|_| TICKER_PID.store(0, Ordering::Release))
    }
}

fn dummy_ctx() -> Ctx {
    Ctx {
        stdin: Vec::new(),
        stdin_pos: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
        answer_too_big: false,
        exit_code: None,
        rng: 0,
        limiter: MemLimiter {
            max_bytes: 0,
            hit: false,
        },
        program_budget: 0,
        measuring: false,
        program_fuel: None,
    }
}

/// The guest's memory and the host state, or None if the guest exports no memory.
fn mem_ctx<'a>(caller: &'a mut Caller<'_, Ctx>) -> Option<(&'a mut [u8], &'a mut Ctx)> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m.data_and_store_mut(caller)),
        _ => None,
    }
}

fn get_u32(mem: &[u8], at: u32) -> Option<u32> {
    let at = at as usize;
    mem.get(at..at.checked_add(4)?)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
}

fn put(mem: &mut [u8], at: u32, bytes: &[u8]) -> bool {
    let at = at as usize;
    match at
        .checked_add(bytes.len())
        .and_then(|end| mem.get_mut(at..end))
    {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// The WASI calls Rust's std makes, each as little as it needs.
fn define_wasi(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, Ctx>,
         fd: i32,
         iovs: i32,
         n_iovs: i32,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            let Some((mem, ctx)) = mem_ctx(&mut caller) else {
                return Ok(ERRNO_FAULT);
            };
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            let mut total = 0u32;
            for i in 0..n_iovs.max(0) as u32 {
                let base = (iovs as u32).wrapping_add(8 * i);
                let (Some(ptr), Some(len)) =
                    (get_u32(mem, base), get_u32(mem, base.wrapping_add(4)))
                else {
                    return Ok(ERRNO_FAULT);
                };
                let Some(buf) = mem.get(ptr as usize..(ptr as usize).saturating_add(len as usize))
                else {
                    return Ok(ERRNO_FAULT);
                };
                if fd == 1 {
                    if ctx.stdout.len() + buf.len() > MAX_ANSWER {
                        ctx.answer_too_big = true;
                        return Err(wasmtime::Error::msg("guest answer too large"));
                    }
                    ctx.stdout.extend_from_slice(buf);
                } else {
                    let room = MAX_STDERR.saturating_sub(ctx.stderr.len());
                    ctx.stderr.extend_from_slice(&buf[..buf.len().min(room)]);
                }
                total = total.wrapping_add(len);
            }
            Ok(if put(mem, nwritten as u32, &total.to_le_bytes()) {
                ERRNO_SUCCESS
            } else {
                ERRNO_FAULT
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |mut caller: Caller<'_, Ctx>, fd: i32, iovs: i32, n_iovs: i32, nread: i32| -> i32 {
            let Some((mem, ctx)) = mem_ctx(&mut caller) else {
                return ERRNO_FAULT;
            };
            if fd != 0 {
                return ERRNO_BADF;
            }
            let mut total = 0u32;
            for i in 0..n_iovs.max(0) as u32 {
                let base = (iovs as u32).wrapping_add(8 * i);
                let (Some(ptr), Some(len)) =
                    (get_u32(mem, base), get_u32(mem, base.wrapping_add(4)))
                else {
                    return ERRNO_FAULT;
                };
                let rest = &ctx.stdin[ctx.stdin_pos..];
                let n = rest.len().min(len as usize);
                if !put(mem, ptr, &rest[..n]) {
                    return ERRNO_FAULT;
                }
                ctx.stdin_pos += n;
                total += n as u32;
                if n < len as usize {
                    break;
                }
            }
            if put(mem, nread as u32, &total.to_le_bytes()) {
                ERRNO_SUCCESS
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |mut caller: Caller<'_, Ctx>, code: i32| -> wasmtime::Result<()> {
            caller.data_mut().exit_code = Some(code);
            Err(wasmtime::Error::new(Exit(code)))
        },
    )?;
    for (sizes, get) in [
        ("environ_sizes_get", "environ_get"),
        ("args_sizes_get", "args_get"),
    ] {
        linker.func_wrap(
            WASI,
            sizes,
            |mut caller: Caller<'_, Ctx>, count: i32, size: i32| -> i32 {
                let Some((mem, _)) = mem_ctx(&mut caller) else {
                    return ERRNO_FAULT;
                };
                if put(mem, count as u32, &0u32.to_le_bytes())
                    && put(mem, size as u32, &0u32.to_le_bytes())
                {
                    ERRNO_SUCCESS
                } else {
                    ERRNO_FAULT
                }
            },
        )?;
        linker.func_wrap(
            WASI,
            get,
            |_: Caller<'_, Ctx>, _ptrs: i32, _buf: i32| -> i32 { ERRNO_SUCCESS },
        )?;
    }
    // No clock: time stands at 0 (std panics if the call fails).
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, Ctx>, _id: i32, _precision: i64, out: i32| -> i32 {
            let Some((mem, _)) = mem_ctx(&mut caller) else {
                return ERRNO_FAULT;
            };
            if put(mem, out as u32, &0u64.to_le_bytes()) {
                ERRNO_SUCCESS
            } else {
                ERRNO_FAULT
            }
        },
    )?;
    // Deterministic "randomness" (HashMap seeds): a fixed SplitMix64 sequence per program.
    linker.func_wrap(
        WASI,
        "random_get",
        |mut caller: Caller<'_, Ctx>, buf: i32, len: i32| -> i32 {
            let Some((mem, ctx)) = mem_ctx(&mut caller) else {
                return ERRNO_FAULT;
            };
            let (start, len) = (buf as u32 as usize, len as u32 as usize);
            let Some(dst) = start
                .checked_add(len)
                .and_then(|end| mem.get_mut(start..end))
            else {
                return ERRNO_FAULT;
            };
            for b in dst.iter_mut() {
                ctx.rng = ctx.rng.wrapping_add(0x9E3779B97F4A7C15);
                let mut z = ctx.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                *b = (z ^ (z >> 31)) as u8;
            }
            ERRNO_SUCCESS
        },
    )?;
    Ok(())
}

/// The request the guest reads from stdin (see `guest/src/main.rs`); `target` is appended as raw JSON.
/// With a target, `normalize` asks for one IoU (a reward), none for all three (a score).
#[derive(Serialize)]
struct Request<'a> {
    program: &'a str,
    limits: &'a Limits,
    normalize: Option<Normalize>,
    return_solid: bool,
    fault: Option<&'a str>,
}

/// The guest's answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(flatten)]
    report: Report,
    #[serde(default)]
    ious: Option<Ious>,
    #[serde(default)]
    solid: Option<serde_json::Value>,
}

/// Runs programs in the wasm guest; see the module documentation for what it protects against.
pub struct WasmExecutor {
    cfg: SandboxConfig,
    limits: Limits,
    shared: &'static Shared,
}

impl WasmExecutor {
    /// Sets up the guest on the first call in the process (from the disk cache, or compiled and
    /// cached), then reuses it.
    pub fn new(cfg: SandboxConfig) -> Result<WasmExecutor, SandboxError> {
        Ok(WasmExecutor {
            cfg,
            limits: Limits::default(),
            shared: shared()?,
        })
    }

    /// Run one request. `fault` asks the guest to misbehave on purpose (tests of the host's defences:
    /// `spin`, `alloc`, `panic`, `stack`, `trap`, `exit`, `garbage`, `flood`, `escape`).
    pub fn run_request(
        &self,
        program: &str,
        target_json: Option<&str>,
        normalize: Option<Normalize>,
        return_solid: bool,
        fault: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let t0 = Instant::now();
        if let Err(e) = self.shared.ensure_ticker() {
            return (
                Outcome::failed(
                    FailureKind::Crash,
                    format!("cannot start the deadline clock: {e}"),
                    t0.elapsed(),
                ),
                None,
            );
        }
        let req = Request {
            program,
            limits: &self.limits,
            normalize,
            return_solid,
            fault,
        };
        let mut stdin = match serde_json::to_vec(&req) {
            Ok(v) => v,
            Err(e) => {
                return (
                    Outcome::failed(
                        FailureKind::Crash,
                        format!("cannot encode the request: {e}"),
                        t0.elapsed(),
                    ),
                    None,
                );
            }
        };
        if let Some(t) = target_json {
            stdin.pop(); // the closing brace
            stdin.extend_from_slice(b",\"target\":");
            stdin.extend_from_slice(t.as_bytes());
            stdin.push(b'}');
        }
        if stdin.len() > MAX_REQUEST {
            let msg = format!(
                "line 1, column 1: request of {} bytes exceeds the sandbox's {} bytes",
                stdin.len(),
                MAX_REQUEST
            );
            return (
                Outcome::failed(FailureKind::Budget, msg, t0.elapsed()),
                None,
            );
        }
        let max_bytes = (self.cfg.memory_mb as usize).saturating_mul(1 << 20);
        let ctx = Ctx {
            stdin,
            limiter: MemLimiter {
                max_bytes,
                hit: false,
            },
            program_budget: self.cfg.fuel,
            ..dummy_ctx()
        };
        let mut store = Store::new(&self.shared.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        let ticks = self.cfg.timeout_ms.div_ceil(TICK.as_millis() as u64) + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        if let Err(e) = store.set_fuel(self.cfg.fuel) {
            return (
                Outcome::failed(
                    FailureKind::Crash,
                    format!("cannot set fuel: {e}"),
                    t0.elapsed(),
                ),
                None,
            );
        }
        let res = self
            .shared
            .pre
            .instantiate(&mut store)
            .and_then(|inst| inst.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        let fuel_left = store.get_fuel().ok();
        let ctx = store.into_data();
        let fuel_used = ctx
            .program_fuel
            .or_else(|| fuel_left.map(|left| self.cfg.fuel.saturating_sub(left)));
        let elapsed = t0.elapsed();
        let mut out = match res {
            Ok(()) => parse_answer(&ctx, elapsed),
            Err(_) if ctx.exit_code == Some(0) => parse_answer(&ctx, elapsed),
            Err(e) => (classify_error(&e, &ctx, &self.cfg, elapsed), None),
        };
        out.0.fuel_used = fuel_used;
        out
    }
}

fn stderr_tail(ctx: &Ctx) -> String {
    let s = String::from_utf8_lossy(&ctx.stderr);
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn classify_error(
    e: &wasmtime::Error,
    ctx: &Ctx,
    cfg: &SandboxConfig,
    elapsed: Duration,
) -> Outcome {
    let (kind, msg) = if ctx.limiter.hit {
        (
            FailureKind::OutOfMemory,
            format!("the program needed more than {} MiB", cfg.memory_mb),
        )
    } else if ctx.answer_too_big {
        (
            FailureKind::Crash,
            format!("the guest's answer exceeded {MAX_ANSWER} bytes"),
        )
    } else if let Some(code) = ctx.exit_code {
        (
            FailureKind::Crash,
            format!("the guest exited with code {code}{}", stderr_tail(ctx)),
        )
    } else {
        let measuring = "measuring the program's solid against its target";
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) if ctx.measuring => (
                FailureKind::OutOfFuel,
                format!("{measuring} used all its fuel ({MEASURE_FUEL})"),
            ),
            Some(Trap::Interrupt) if ctx.measuring => (
                FailureKind::Timeout,
                format!("{measuring} ran past {} s", MEASURE_TIMEOUT.as_secs()),
            ),
            Some(Trap::OutOfFuel) => (
                FailureKind::OutOfFuel,
                format!("the program used all its fuel ({})", cfg.fuel),
            ),
            Some(Trap::Interrupt) => (
                FailureKind::Timeout,
                format!("the program ran past {} ms", cfg.timeout_ms),
            ),
            Some(Trap::StackOverflow) => (
                FailureKind::Crash,
                format!("the executor overflowed its stack{}", stderr_tail(ctx)),
            ),
            Some(t) => (
                FailureKind::Crash,
                format!("the executor trapped ({t}){}", stderr_tail(ctx)),
            ),
            None => (
                FailureKind::Crash,
                format!("the executor failed: {e}{}", stderr_tail(ctx)),
            ),
        }
    };
    Outcome::failed(kind, msg, elapsed)
}

fn parse_answer(ctx: &Ctx, elapsed: Duration) -> (Outcome, Option<String>) {
    match serde_json::from_slice::<Answer>(&ctx.stdout) {
        Ok(a) => {
            let solid = a.solid.map(|v| v.to_string());
            (Outcome::from_report(&a.report, a.ious, elapsed), solid)
        }
        Err(e) => {
            let msg = format!(
                "the guest's answer is not valid JSON ({e}){}",
                stderr_tail(ctx)
            );
            (Outcome::failed(FailureKind::Crash, msg, elapsed), None)
        }
    }
}

impl Executor for WasmExecutor {
    fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    fn execute(&self, program: &str) -> Outcome {
        self.run_request(program, None, None, false, None).0
    }

    fn target(&self, program: &str) -> Result<Target, Failure> {
        let (out, solid) = self.run_request(program, None, None, true, None);
        let measured = out.result?;
        let solid = solid.ok_or_else(|| {
            Failure::new(
                FailureKind::Crash,
                "the guest returned no solid for the target",
            )
        })?;
        Ok(Target::from_json(program, measured, solid))
    }

    fn reward(&self, program: &str, target: &Target, normalize: Normalize) -> Outcome {
        match target.solid_json() {
            Some(t) => {
                self.run_request(program, Some(&t), Some(normalize), false, None)
                    .0
            }
            None => Outcome::failed(
                FailureKind::Crash,
                "the target has no solid the wasm executor can read",
                Duration::ZERO,
            ),
        }
    }

    fn score(&self, program: &str, target: &Target) -> Outcome {
        match target.solid_json() {
            Some(t) => self.run_request(program, Some(&t), None, false, None).0,
            None => Outcome::failed(
                FailureKind::Crash,
                "the target has no solid the wasm executor can read",
                Duration::ZERO,
            ),
        }
    }
}
