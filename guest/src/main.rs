//! The sandbox guest: executes one CadQuery-subset program inside wasmtime and answers in JSON.
//!
//! Built for `wasm32-wasip1` by `cadvlm`'s `build.rs` and embedded in the host (`src/sandbox/wasm.rs`).
//! Protocol: the request is read from stdin, the answer written to stdout, both one JSON object (see
//! [`Request`] and [`Answer`]). The host gives the guest no files, no environment, no clock and no
//! network: stdin/stdout/stderr are in-memory buffers and every other WASI call is denied. A panic
//! prints its message to stderr and traps; the host turns that into a `crash` outcome.

use std::io::{Read, Write};

use cadvlm::cad::Limits;
use cadvlm::exec::{FailureKind, Ious, Report, exec_program};
use cadvlm::geom::{self, MeasureOptions, Normalize, Solid};
use serde::{Deserialize, Serialize};

#[link(wasm_import_module = "cadvlm")]
unsafe extern "C" {
    /// Tells the host that the program has run and measuring its solid against the target begins:
    /// the host then gives measuring its own fuel and deadline (the program's limits are for the
    /// program; IoU_best and the Chamfer distance of a large solid may take longer than its program,
    /// and on a loaded machine they must not turn into the program's timeout).
    fn executed();
}

/// What the host asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    program: String,
    #[serde(default)]
    limits: Limits,
    /// IoU of the program's solid against this (cached) target solid.
    #[serde(default)]
    target: Option<Solid>,
    #[serde(default)]
    normalize: Option<Normalize>,
    /// Also return the program's solid (serialized), to cache it as a target.
    #[serde(default)]
    return_solid: bool,
    /// Test hook: misbehave on purpose, to check that the host survives a hostile guest.
    #[serde(default)]
    fault: Option<String>,
}

/// The guest's answer: the `cadvlm exec --json` report (with the IoU of a reward), the three IoUs of a
/// score, and the solid when asked for.
#[derive(Serialize)]
struct Answer<'a> {
    #[serde(flatten)]
    report: &'a Report,
    ious: Option<Ious>,
    solid: Option<&'a Solid>,
}

fn fault(kind: &str) {
    match kind {
        // Burn fuel / wall-clock time forever.
        "spin" => {
            let mut x = 1u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        // Allocate (and touch) memory without bound.
        "alloc" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        "panic" => panic!("deliberate guest panic (fault injection)"),
        "stack" => {
            #[allow(unconditional_recursion)]
            fn down(n: u64) -> u64 {
                let pad = std::hint::black_box([n; 64]);
                down(n + 1).wrapping_add(pad[3])
            }
            std::hint::black_box(down(0));
        }
        "trap" => std::process::abort(),
        "exit" => std::process::exit(3),
        // An answer that is not JSON.
        "garbage" => {
            let _ = std::io::stdout().write_all(b"\x00\xff not json {{{");
            std::process::exit(0);
        }
        // Write to stdout without end.
        "flood" => {
            let chunk = vec![b'x'; 1 << 16];
            let mut out = std::io::stdout();
            while out.write_all(&chunk).is_ok() {}
            loop {
                std::hint::black_box(&chunk);
            }
        }
        // Try the capabilities a sandbox must deny; report what happened (each must fail).
        "escape" => {
            let file = std::fs::write("/tmp/cadvlm-guest-escape", b"x").is_ok();
            let read = std::fs::read("/etc/passwd").is_ok();
            let env = std::env::vars().count();
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let msg = format!(
                "{{\"ok\":false,\"error\":\"escape: file={file} read={read} env={env} clock={clock}\",\"error_kind\":null,\"volume\":null,\"bbox\":null,\"n_solids\":null,\"valid\":null,\"iou\":null,\"solid\":null}}"
            );
            let _ = std::io::stdout().write_all(msg.as_bytes());
            std::process::exit(0);
        }
        _ => {}
    }
}

fn main() {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        panic!("cannot read the request: {e}");
    }
    let req: Request = match serde_json::from_str(&input) {
        Ok(r) => r,
        Err(e) => panic!("malformed request: {e}"),
    };
    drop(input);
    if let Some(f) = &req.fault {
        fault(f);
    }
    let (mut report, solid) = exec_program(&req.program, &req.limits, &MeasureOptions::default());
    // with a target: one IoU (a reward) under `normalize`, or all three (a score; an empty solid fails)
    let mut ious = None;
    if solid.is_some() && req.target.is_some() {
        // SAFETY: an import without arguments or results; the host only resets this store's limits
        unsafe { executed() };
    }
    match (&solid, &req.target, req.normalize) {
        (Some(s), Some(t), Some(norm)) => report.iou = Some(geom::iou(s, t, norm)),
        (Some(s), Some(_), None) if s.is_empty() => {
            report = Report::failure(Some(FailureKind::NoResult), "empty solid".into())
        }
        (Some(s), Some(t), None) => ious = Some(Ious::of(s, t)),
        _ => {}
    }
    let answer = Answer {
        report: &report,
        ious,
        solid: if req.return_solid {
            solid.as_ref()
        } else {
            None
        },
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &answer).expect("writing the answer");
    out.flush().expect("flushing the answer");
}
