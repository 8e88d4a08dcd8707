//! Build script: with feature `sandbox`, builds the executor guest (`guest/`) for `wasm32-wasip1` and puts it in `OUT_DIR` for `include_bytes!`.
//!
//! The guest is built by a nested `cargo build -p cadvlm-guest --release --target wasm32-wasip1`
//! with its own target directory (`$CARGO_TARGET_DIR/wasm-guest`, else `<target>/wasm-guest`), so
//! it never waits on the lock of the outer build. Host flags (`RUSTFLAGS`, the jobserver, …) are not
//! passed on; paths are remapped so the module does not depend on where the checkout lives.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_SANDBOX").is_none() {
        return;
    }
    for p in [
        "src/cad",
        "src/geom",
        "src/exec.rs",
        "src/lib.rs",
        "guest/src",
        "guest/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = guest_target_dir(&out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    ensure_wasm_target();

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest_dir)
        .args([
            "build",
            "-p",
            "cadvlm-guest",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(["--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"));
    // A clean environment for the nested build: no host flags, no jobserver, no outer target dir.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_FEATURE_")
            || k.starts_with("CARGO_CFG_")
            || matches!(
                k.as_str(),
                "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "CARGO_BUILD_RUSTFLAGS"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_MAKEFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(&k);
        }
    }
    // SIMD (wasm simd128, supported by wasmtime) lets LLVM vectorise the ray-span loops as it does natively.
    let flags = format!(
        "--remap-path-prefix={}=/cadvlm\x1f-Ctarget-feature=+simd128",
        manifest_dir.display()
    );
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags)
        // small module, fast to compile in wasmtime: no debug info, one codegen unit
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3");

    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the sandbox guest: {e}"));
    if !status.success() {
        panic!(
            "building the sandbox guest (guest/, for wasm32-wasip1) failed with {status}.\n\
             If the target is missing: `rustup target add wasm32-wasip1` (./test.sh does it)."
        );
    }
    let wasm = target_dir.join("wasm32-wasip1/release/cadvlm-guest.wasm");
    std::fs::copy(&wasm, out_dir.join("cadvlm-guest.wasm"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", wasm.display()));
}

/// Add the `wasm32-wasip1` standard library when it is missing (rustup does not install a missing
/// target of an installed toolchain by itself), so `cargo build` / `cargo run` carry their own set-up.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(sysroot) =
        sysroot.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()))
    else {
        return;
    };
    if sysroot.join("lib/rustlib/wasm32-wasip1").exists() {
        return;
    }
    println!(
        "cargo:warning=adding the wasm32-wasip1 target (rustup target add wasm32-wasip1) for the sandbox guest"
    );
    match Command::new("rustup")
        .args(["target", "add", "wasm32-wasip1"])
        .status()
    {
        Ok(s) if s.success() => {}
        other => println!(
            "cargo:warning=`rustup target add wasm32-wasip1` did not succeed ({other:?}); the guest build will say why"
        ),
    }
}

/// `$CARGO_TARGET_DIR/wasm-guest`, else the outer target dir (found above `OUT_DIR`) + `/wasm-guest`.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    if let Some(t) = env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_absolute() {
            t
        } else {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap()).join(t)
        };
        return t.join("wasm-guest");
    }
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out
    out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-guest"))
        .unwrap_or_else(|| out_dir.join("wasm-guest"))
}
