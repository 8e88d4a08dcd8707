//! The wasm guest compiled ahead of time: machine code cached on disk, keyed by the module and the engine's settings, checked before use.
//!
//! Compiling the guest with Cranelift takes about half a second; loading its machine code takes a
//! few milliseconds. The first process to start compiles the guest and writes
//! `<cache dir>/guest-<key>.cwasm`; later processes load it. The key is the SHA-256 of the guest's
//! wasm bytes and of wasmtime's [`Engine::precompile_compatibility_hash`] (the wasmtime version and
//! every code-generation setting), so a new guest, a new wasmtime or another engine configuration
//! never loads stale code. The file starts with the SHA-256 of the code after it, checked at every
//! load: a truncated or corrupted file is recompiled and replaced, never run. Files are written to a
//! temporary name and renamed (atomic: concurrent first starts are safe), readable only by the user.
//!
//! The cache directory is `$CADVLM_CACHE_DIR`, else `$XDG_CACHE_HOME/cadvlm`, else
//! `$HOME/.cache/cadvlm`; `CADVLM_CACHE_DIR=off` turns the cache off. Whoever can write that directory
//! can make this process run their machine code — the same trust as the user's own files.
//! Where the cache cannot be read or written the guest is simply compiled in memory.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Environment variable naming the cache directory (`off` disables the cache).
pub const CACHE_DIR_ENV: &str = "CADVLM_CACHE_DIR";
/// Length of the checksum header of a cache file.
const SUM: usize = 32;

/// How the guest module of this process was obtained.
#[derive(Clone, Debug, PartialEq)]
pub enum GuestSource {
    /// Loaded from a valid cache file.
    Cached(PathBuf),
    /// Compiled, then written to the cache.
    Compiled(PathBuf),
    /// Compiled in memory only; why the cache was not used.
    Uncached(String),
}

/// The compiled guest and where it came from.
pub struct GuestModule {
    pub module: Module,
    pub source: GuestSource,
    /// Time to load or compile (and write) the module.
    pub elapsed: Duration,
}

impl fmt::Display for GuestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestSource::Cached(p) => write!(f, "loaded from {}", p.display()),
            GuestSource::Compiled(p) => write!(f, "compiled, cached at {}", p.display()),
            GuestSource::Uncached(why) => write!(f, "compiled ({why})"),
        }
    }
}

/// The cache directory the environment names; `Err` says why there is none.
pub fn cache_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os(CACHE_DIR_ENV) {
        if d == "off" {
            return Err(format!("{CACHE_DIR_ENV}=off"));
        }
        if !d.is_empty() {
            return Ok(PathBuf::from(d));
        }
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("cadvlm"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("cadvlm")),
        None => Err(
            "no cache directory: neither CADVLM_CACHE_DIR, XDG_CACHE_HOME nor HOME is set".into(),
        ),
    }
}

/// Feeds `Hash` output into SHA-256.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

/// The cache key of `wasm` compiled by `engine` (hex, 32 characters).
pub fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut h = ShaHasher(Sha256::new());
    h.0.update(Sha256::digest(wasm));
    engine.precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The module of `wasm` for `engine`: from `dir`'s cache when a valid entry exists, else compiled
/// (and written there). `dir = Err(why)` compiles without a cache. Fails only when compiling fails.
pub fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    dir: Result<&Path, &str>,
) -> wasmtime::Result<GuestModule> {
    let t0 = Instant::now();
    let dir = match dir {
        Ok(d) => d,
        Err(why) => return compiled(engine, wasm, GuestSource::Uncached(why.to_string()), t0),
    };
    let path = dir.join(format!("guest-{}.cwasm", cache_key(engine, wasm)));
    if let Some(module) = load(engine, &path) {
        return Ok(GuestModule {
            module,
            source: GuestSource::Cached(path),
            elapsed: t0.elapsed(),
        });
    }
    let module = Module::new(engine, wasm)?;
    let source = match module
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|code| {
            store(dir, &path, &code).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }) {
        Ok(()) => GuestSource::Compiled(path),
        Err(why) => GuestSource::Uncached(why),
    };
    Ok(GuestModule {
        module,
        source,
        elapsed: t0.elapsed(),
    })
}

fn compiled(
    engine: &Engine,
    wasm: &[u8],
    source: GuestSource,
    t0: Instant,
) -> wasmtime::Result<GuestModule> {
    let module = Module::new(engine, wasm)?;
    Ok(GuestModule {
        module,
        source,
        elapsed: t0.elapsed(),
    })
}

/// The cached module at `path` if the file exists, its checksum matches and wasmtime accepts it.
fn load(engine: &Engine, path: &Path) -> Option<Module> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() <= SUM || Sha256::digest(&bytes[SUM..])[..] != bytes[..SUM] {
        return None;
    }
    // SAFETY: `deserialize` runs the machine code it is given. These bytes are what
    // `Module::serialize` wrote for this very module and engine configuration (the file name is
    // their key) and are unchanged since (the checksum), in a directory only the user can write.
    // wasmtime itself refuses code made by another version or configuration.
    unsafe { Module::deserialize(engine, &bytes[SUM..]) }.ok()
}

/// Writes checksum + `code` to `path` atomically (a temporary file renamed), user-only permissions.
fn store(dir: &Path, path: &Path, code: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("guest"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(&Sha256::digest(code))?;
        f.write_all(code)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}
