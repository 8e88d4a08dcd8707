//! Attacks on the sandboxed executor, one property per test: hostile programs, a hostile guest, batches, rewards, settings.
//!
//! Hostile programs go through the real `cadvlm` binary (`exec --json --timing`), so each test sees
//! what a user sees: one JSON answer, the wall time of the whole process and its peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cadvlm::exec::wasm::WasmExecutor;
use cadvlm::exec::{Backend, Executor, FailureKind, Outcome, Reward, SandboxConfig, executor};
use cadvlm::geom::Normalize;

const SQUARE_HOLE: &str = "import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()
loop1=wp_sketch0.moveTo(0.75, 0.75).circle(0.25)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.5)
solid=solid0
";

const UNION: &str = "import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).close()
solid0=wp_sketch0.add(loop0).extrude(0.5)
solid=solid0
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.5, 0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop1=wp_sketch1.moveTo(0.0, 0.0).circle(0.4)
solid1=wp_sketch1.add(loop1).extrude(1.0)
solid=solid.union(solid1)
";

const HEADER: &str = "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\n";

fn wasm() -> WasmExecutor {
    WasmExecutor::new(SandboxConfig::default()).expect("the wasm sandbox sets up")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

/// Same result up to float noise (libm differences between wasm and native).
fn same(a: &Outcome, b: &Outcome) -> bool {
    match (&a.result, &b.result) {
        (Ok(x), Ok(y)) => {
            close(x.volume, y.volume)
                && x.bbox.iter().zip(&y.bbox).all(|(p, q)| close(*p, *q))
                && x.n_solids == y.n_solids
                && x.valid == y.valid
                && match (x.iou, y.iou) {
                    (Some(p), Some(q)) => close(p, q),
                    (None, None) => true,
                    _ => false,
                }
        }
        (Err(x), Err(y)) => x.kind == y.kind && x.message == y.message,
        _ => false,
    }
}

fn shared_programs() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let mut out = Vec::new();
    for d in ["semantics", "gencad-programs", "gencad-test100-dev"] {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .collect();
        files.sort();
        for f in files {
            let s = std::fs::read_to_string(&f).unwrap();
            out.push((f, s));
        }
    }
    if out.is_empty() {
        eprintln!("note: ../shared/data not present; using the inline programs only");
    }
    out
}

// ---------------------------------------------------------------- hostile programs, through the CLI

struct CliAnswer {
    json: serde_json::Value,
    wall: Duration,
    peak_rss_mib: f64,
}

/// `cadvlm exec FILE --json --timing [extra]` on one program (bytes), in a scratch dir.
fn cli_exec(name: &str, program: &[u8], extra: &[&str]) -> CliAnswer {
    let dir =
        std::env::temp_dir().join(format!("cadvlm-sandbox-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.py"));
    std::fs::write(&file, program).unwrap();
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .arg("exec")
        .arg(&file)
        .args(["--json", "--timing"])
        .args(extra)
        .current_dir(&dir)
        .output()
        .expect("cadvlm runs");
    let wall = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: cadvlm exited with {}: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{name}: expected one JSON line, got {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {}", lines[0]));
    let peak_rss_mib = stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no peak RSS in {stderr}"));
    CliAnswer {
        json,
        wall,
        peak_rss_mib,
    }
}

/// A hostile program must get a clear error (one of `kinds`, a message with a line) within 5 s and well under 1 GiB.
fn assert_rejected(name: &str, program: &[u8], kinds: &[&str]) -> CliAnswer {
    let a = cli_exec(name, program, &[]);
    assert_eq!(a.json["ok"], false, "{name}: accepted: {}", a.json);
    assert_eq!(a.json["sandbox"]["backend"], "wasm", "{name}: {}", a.json);
    let kind = a.json["error_kind"].as_str().unwrap_or("");
    assert!(
        kinds.contains(&kind),
        "{name}: error_kind {kind:?}, expected one of {kinds:?}: {}",
        a.json
    );
    let msg = a.json["error"].as_str().unwrap_or("");
    assert!(!msg.is_empty(), "{name}: empty error message");
    if kinds.iter().all(|k| {
        [
            "syntax",
            "unsupported",
            "runtime",
            "budget",
            "invalid_geometry",
            "no_result",
        ]
        .contains(k)
    }) {
        assert!(
            msg.starts_with("line "),
            "{name}: no position in the error: {msg}"
        );
    }
    assert!(a.wall < Duration::from_secs(5), "{name}: took {:?}", a.wall);
    assert!(
        a.peak_rss_mib < 512.0,
        "{name}: peak RSS {} MiB",
        a.peak_rss_mib
    );
    a
}

#[test]
fn infinite_loop_is_rejected() {
    let p = format!("{HEADER}while True:\n    pass\n");
    assert_rejected("while", p.as_bytes(), &["syntax", "unsupported"]);
    let p = format!("{HEADER}for i in range(10**12):\n    solid = wp\n");
    assert_rejected("for", p.as_bytes(), &["syntax", "unsupported"]);
    let p = format!("{HEADER}def f():\n    return f()\nf()\n");
    assert_rejected("recursion", p.as_bytes(), &["syntax", "unsupported"]);
}

#[test]
fn memory_bomb_is_rejected() {
    for (name, bomb) in [
        ("list", "x = [0] * 10**10\n"),
        ("string", "x = 'a' * 10**10\n"),
        ("power", "x = 10 ** 10 ** 10\n"),
        ("circle", "solid = wp.circle(1e300).extrude(1e300)\n"),
    ] {
        assert_rejected(
            name,
            format!("{HEADER}{bomb}").as_bytes(),
            &["syntax", "unsupported", "runtime", "budget"],
        );
    }
}

#[test]
fn deep_nesting_is_rejected() {
    let n = 100_000;
    let p = format!("{HEADER}x = {}1{}\n", "(".repeat(n), ")".repeat(n));
    assert_rejected("parens", p.as_bytes(), &["syntax", "budget"]);
    let p = format!("{HEADER}x = {}1\n", "-".repeat(n));
    assert_rejected("unary", p.as_bytes(), &["syntax", "budget"]);
    let p = format!("{HEADER}solid = wp{}\n", ".moveTo(0.0, 0.0)".repeat(20_000));
    assert_rejected(
        "chain",
        p.as_bytes(),
        &["syntax", "budget", "runtime", "no_result"],
    );
}

#[test]
fn exponential_csg_dag_stays_bounded() {
    // `solid = solid.union(solid)` ×80 is 2^80 leaves as a tree; hash-consed it stays small.
    let mut p = SQUARE_HOLE.to_string();
    for _ in 0..80 {
        p.push_str("solid = solid.union(solid)\n");
    }
    let a = cli_exec("dag", p.as_bytes(), &[]);
    assert!(a.wall < Duration::from_secs(5), "took {:?}", a.wall);
    let native = executor(&SandboxConfig::with_backend(Backend::Native))
        .unwrap()
        .execute(SQUARE_HOLE);
    let v = native.result.as_ref().unwrap().volume;
    assert_eq!(a.json["ok"], true, "{}", a.json);
    assert!(
        close(a.json["volume"].as_f64().unwrap(), v),
        "{} vs {v}",
        a.json
    );
    // Two solids feeding each other: a DAG of 160 distinct nodes, each a union/cut of the previous two.
    let mut p = UNION.to_string();
    p.push_str("a = solid0\nb = solid1\n");
    for i in 0..80 {
        p.push_str(if i % 2 == 0 {
            "a = a.union(b)\n"
        } else {
            "b = b.cut(a)\n"
        });
    }
    p.push_str("solid = a.union(b)\n");
    let a = cli_exec("dag2", p.as_bytes(), &[]);
    assert!(a.wall < Duration::from_secs(5), "took {:?}", a.wall);
    assert!(
        a.json["error_kind"].is_null() || a.json["error_kind"] == "budget",
        "{}",
        a.json
    );
}

#[test]
fn one_megabyte_program_is_rejected() {
    let mut p = String::from(HEADER);
    while p.len() < 1 << 20 {
        p.push_str("loop0 = wp.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).close()\n");
    }
    assert_rejected("megabyte", p.as_bytes(), &["budget"]);
    let p = format!("{HEADER}# {}\n", "x".repeat(1 << 20));
    assert_rejected("comment", p.as_bytes(), &["budget"]);
}

#[test]
fn escapes_to_python_are_rejected() {
    let cases = [
        (
            "import_os",
            "import os\nos.system('touch /tmp/cadvlm-pwned')\n",
        ),
        ("from_import", "from os import system\n"),
        ("open", "open('/etc/passwd').read()\n"),
        ("dunder_import", "__import__('os').system('true')\n"),
        ("exec", "exec('import os')\n"),
        ("eval", "eval('1+1')\n"),
        ("getattr", "getattr(cq, 'Workplane')\n"),
        ("dunder_attr", "x = cq.__dict__\n"),
        (
            "subclasses",
            "x = ().__class__.__bases__[0].__subclasses__()\n",
        ),
        ("lambda", "f = lambda: 1\n"),
        ("string_for_number", "solid = wp.circle('1').extrude(1.0)\n"),
    ];
    for (name, body) in cases {
        assert_rejected(
            name,
            format!("{HEADER}{body}").as_bytes(),
            &["syntax", "unsupported", "runtime"],
        );
    }
}

#[test]
fn writing_a_file_is_rejected_and_nothing_is_written() {
    let target = std::env::temp_dir().join(format!("cadvlm-pwned-{}", std::process::id()));
    let t = target.display();
    for (name, body) in [
        ("write", format!("open('{t}', 'w').write('x')\n")),
        (
            "with",
            format!("with open('{t}', 'w') as f:\n    f.write('x')\n"),
        ),
        (
            "export",
            format!("solid = wp.circle(1.0).extrude(1.0)\ncq.exporters.export(solid, '{t}')\n"),
        ),
    ] {
        assert_rejected(
            name,
            format!("{HEADER}{body}").as_bytes(),
            &["syntax", "unsupported", "runtime"],
        );
        assert!(!target.exists(), "{name}: {t} was written");
    }
}

#[test]
fn nan_inf_and_absurd_magnitudes_are_rejected() {
    for (name, body) in [
        ("nan", "solid = wp.circle(float('nan')).extrude(1.0)\n"),
        ("inf", "solid = wp.circle(float('inf')).extrude(1.0)\n"),
        ("overflow", "solid = wp.circle(1e308 * 10).extrude(1.0)\n"),
        (
            "nan_arith",
            "x = 1e308 * 10 - 1e308 * 10\nsolid = wp.circle(x).extrude(1.0)\n",
        ),
        ("huge_extrude", "solid = wp.circle(1.0).extrude(1e300)\n"),
        (
            "huge_coord",
            "solid = wp.moveTo(1e200, 0.0).circle(1.0).extrude(1.0)\n",
        ),
        ("tiny_zero", "solid = wp.circle(0.0).extrude(1.0)\n"),
        (
            "long_literal",
            &format!("solid = wp.circle(1{}).extrude(1.0)\n", "0".repeat(5000)),
        ),
    ] {
        assert_rejected(
            name,
            format!("{HEADER}{body}").as_bytes(),
            &[
                "syntax",
                "unsupported",
                "runtime",
                "budget",
                "invalid_geometry",
                "no_result",
            ],
        );
    }
}

#[test]
fn binary_garbage_and_empty_files_are_rejected() {
    let mut x = 0x2545F4914F6CDD1Du64;
    let garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert_rejected("garbage", &garbage, &["syntax"]);
    let utf8: String = garbage.iter().map(|&b| char::from(b)).collect();
    assert_rejected("garbage_utf8", utf8.as_bytes(), &["syntax", "unsupported"]);
    assert_rejected(
        "nul",
        b"import cadquery as cq\n\0\0\0solid = 1\n",
        &["syntax"],
    );
    assert_rejected("empty", b"", &["no_result", "syntax"]);
    assert_rejected(
        "whitespace",
        b"\n\n   \n# only a comment\n",
        &["no_result", "syntax"],
    );
}

// ---------------------------------------------------------------- a hostile guest (fault injection)

fn fault(ex: &WasmExecutor, f: &str) -> Outcome {
    ex.run_request(SQUARE_HOLE, None, None, false, Some(f)).0
}

/// After any failure the executor still answers correctly.
fn still_works(ex: &WasmExecutor) {
    let o = ex.execute(SQUARE_HOLE);
    assert!(o.is_ok(), "{o:?}");
}

#[test]
fn guest_spinning_hits_fuel_or_deadline() {
    let ex = WasmExecutor::new(SandboxConfig {
        fuel: 200_000_000,
        ..SandboxConfig::default()
    })
    .unwrap();
    let o = fault(&ex, "spin");
    assert_eq!(o.failure_kind(), Some(FailureKind::OutOfFuel), "{o:?}");
    assert_eq!(o.fuel_used, Some(200_000_000));
    still_works(&ex);
    let ex = WasmExecutor::new(SandboxConfig {
        fuel: u64::MAX / 2,
        timeout_ms: 300,
        ..SandboxConfig::default()
    })
    .unwrap();
    let o = fault(&ex, "spin");
    assert_eq!(o.failure_kind(), Some(FailureKind::Timeout), "{o:?}");
    assert!(
        o.elapsed >= Duration::from_millis(300) && o.elapsed < Duration::from_secs(2),
        "{:?}",
        o.elapsed
    );
    still_works(&ex);
    // With the defaults, a spinning guest ends well within 5 s.
    let o = fault(&wasm(), "spin");
    assert!(
        matches!(
            o.failure_kind(),
            Some(FailureKind::OutOfFuel | FailureKind::Timeout)
        ),
        "{o:?}"
    );
    assert!(o.elapsed < Duration::from_secs(5), "{:?}", o.elapsed);
}

#[test]
fn measuring_against_a_target_is_not_held_to_the_programs_deadline() {
    // 10 ms for the program (the deadline's resolution): running SQUARE_HOLE takes well under a
    // millisecond, scoring it against UNION (three IoUs and the Chamfer distance) far longer
    let ex = WasmExecutor::new(SandboxConfig {
        timeout_ms: 10,
        ..SandboxConfig::default()
    })
    .unwrap();
    let target = ex.target(UNION).expect("the target executes");
    let t = Instant::now();
    let o = ex.score(SQUARE_HOLE, &target);
    let took = t.elapsed();
    let r = o.result.as_ref().expect("scored, not timed out");
    let ious = r
        .ious
        .as_ref()
        .expect("all three IoUs and the Chamfer distance");
    assert!(
        ious.chamfer.is_some() && took > Duration::from_millis(20),
        "{ious:?} in {took:?}"
    );
    // the program's fuel is reported (with reading the target from the request), not the measuring's
    let run = ex.execute(SQUARE_HOLE).fuel_used.unwrap();
    let used = o.fuel_used.unwrap();
    assert!(
        used >= run && used < 4 * run,
        "{used} vs {run} to run the program alone"
    );
    // the program itself still gets its 10 ms
    let o = fault(&ex, "spin");
    assert_eq!(o.failure_kind(), Some(FailureKind::Timeout), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(1), "{:?}", o.elapsed);
}

#[test]
fn measuring_a_part_with_tiny_holes_is_not_held_to_the_programs_fuel() {
    // GenCAD-Code 00059989 (four holes of radius 0.003): scoring a plain disk against it needs more
    // than the program's 2·10⁹ fuel (the Chamfer distance); that was reported as the disk's failure
    let target = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/cadquery/gencad-test100-dev/00059989.py"),
    )
    .unwrap();
    let disk = "import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.464, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)))
loop0=wp_sketch0.moveTo(0.464, 0.0).circle(0.464)
solid0=wp_sketch0.add(loop0).extrude(0.031)
solid=solid0
";
    let ex = wasm();
    let t = ex.target(&target).expect("the target executes");
    let o = ex.score(disk, &t);
    let ious = o.result.expect("scored").ious.expect("all IoUs");
    assert!(ious.chamfer.is_some_and(|c| c > 0.0), "{ious:?}");
    assert!(o.fuel_used.unwrap() < SandboxConfig::default().fuel / 10);
}

#[test]
fn guest_allocating_without_bound_is_out_of_memory() {
    let ex = WasmExecutor::new(SandboxConfig {
        memory_mb: 64,
        ..SandboxConfig::default()
    })
    .unwrap();
    let o = fault(&ex, "alloc");
    assert_eq!(o.failure_kind(), Some(FailureKind::OutOfMemory), "{o:?}");
    still_works(&ex);
    let o = fault(&wasm(), "alloc");
    assert_eq!(o.failure_kind(), Some(FailureKind::OutOfMemory), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(5));
}

#[test]
fn guest_panics_and_traps_are_crashes() {
    let ex = wasm();
    let o = fault(&ex, "panic");
    assert_eq!(o.failure_kind(), Some(FailureKind::Crash), "{o:?}");
    let msg = &o.result.as_ref().unwrap_err().message;
    assert!(
        msg.contains("deliberate guest panic"),
        "the panic message is lost: {msg}"
    );
    for f in ["stack", "trap", "exit", "garbage", "flood"] {
        let o = fault(&ex, f);
        assert_eq!(o.failure_kind(), Some(FailureKind::Crash), "{f}: {o:?}");
        assert!(o.elapsed < Duration::from_secs(5), "{f}: {:?}", o.elapsed);
        still_works(&ex);
    }
}

#[test]
fn guest_has_no_files_environment_or_clock() {
    let marker = Path::new("/tmp/cadvlm-guest-escape");
    let _ = std::fs::remove_file(marker);
    assert!(
        std::env::vars().count() > 0,
        "the host has environment variables; the guest must see none"
    );
    let o = fault(&wasm(), "escape");
    let msg = &o.result.as_ref().unwrap_err().message;
    assert_eq!(msg, "escape: file=false read=false env=0 clock=0");
    assert!(!marker.exists(), "the guest wrote a file");
}

// ---------------------------------------------------------------- correctness, batches, rewards

#[test]
fn wasm_agrees_with_native_on_the_real_programs() {
    let native = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    let ex = wasm();
    let mut progs = shared_programs();
    progs.push(("inline/square_hole".into(), SQUARE_HOLE.into()));
    progs.push(("inline/union".into(), UNION.into()));
    let srcs: Vec<&str> = progs.iter().map(|(_, s)| s.as_str()).collect();
    let (a, b) = (native.execute_batch(&srcs), ex.execute_batch(&srcs));
    for ((f, _), (x, y)) in progs.iter().zip(a.iter().zip(&b)) {
        assert!(same(x, y), "{}: native {x:?} vs wasm {y:?}", f.display());
    }
}

#[test]
fn batch_of_1000_with_hostile_programs_mixed_in() {
    let hostile: Vec<String> = vec![
        format!("{HEADER}while True:\n    pass\n"),
        format!("{HEADER}import os\n"),
        format!("{HEADER}x = [0] * 10**10\n"),
        format!("{HEADER}x = {}1{}\n", "(".repeat(5000), ")".repeat(5000)),
        format!("{HEADER}solid = wp.circle(float('nan')).extrude(1.0)\n"),
        format!("{HEADER}open('/tmp/x', 'w').write('x')\n"),
        String::new(),
        "\u{0}\u{1}garbage\u{7f}".to_string(),
        format!("{HEADER}# {}\n", "x".repeat(300 << 10)),
    ];
    let mut good: Vec<String> = shared_programs().into_iter().map(|(_, s)| s).collect();
    good.push(SQUARE_HOLE.into());
    good.push(UNION.into());
    let batch: Vec<&str> = (0..1000)
        .map(|i| {
            if i % 2 == 0 {
                good[(i / 2) % good.len()].as_str()
            } else {
                hostile[(i / 2) % hostile.len()].as_str()
            }
        })
        .collect();
    let native = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    let expected = native.execute_batch(&batch);
    let got = wasm().execute_batch(&batch);
    assert_eq!(got.len(), 1000);
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        if i % 2 == 0 {
            assert!(same(e, g), "program {i}: expected {e:?}, got {g:?}");
        } else {
            assert!(!g.is_ok(), "hostile program {i} accepted: {g:?}");
            assert!(g.elapsed < Duration::from_secs(5));
        }
    }
}

#[test]
fn reward_uses_the_cached_target() {
    let native = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    let ex = wasm();
    for norm in [Normalize::Raw, Normalize::UnitCube, Normalize::Best] {
        let rw = Reward::new(&ex, UNION, norm).unwrap();
        let rn = Reward::new(&*native, UNION, norm).unwrap();
        let (a, b) = (rw.score(SQUARE_HOLE), rn.score(SQUARE_HOLE));
        assert!(same(&a, &b), "{norm:?}: wasm {a:?} vs native {b:?}");
        let direct =
            cadvlm::exec::iou_programs(SQUARE_HOLE, UNION, norm, &Default::default()).unwrap();
        assert!(
            close(a.iou().unwrap(), direct),
            "{norm:?}: {:?} vs {direct}",
            a.iou()
        );
        // A shape against itself.
        let same_shape = rw.score(UNION).iou().unwrap();
        assert!(
            (same_shape - 1.0).abs() < 1e-9,
            "{norm:?}: self-IoU {same_shape}"
        );
        // A failing candidate is a failure, not an IoU of 0.
        assert_eq!(
            rw.score("import os\n").failure_kind(),
            Some(FailureKind::Unsupported)
        );
    }
    // A target cached by one backend is usable by another.
    let t = ex.target(UNION).unwrap();
    let o = native.reward(SQUARE_HOLE, &t, Normalize::UnitCube);
    assert!(close(
        o.iou().unwrap(),
        ex.reward(SQUARE_HOLE, &t, Normalize::UnitCube)
            .iou()
            .unwrap()
    ));
    // The target must itself execute.
    assert_eq!(
        ex.target("import os\n").unwrap_err().kind,
        FailureKind::Unsupported
    );
    // Many candidates against one target, in parallel.
    let rw = Reward::new(&ex, UNION, Normalize::UnitCube).unwrap();
    let scores = rw.score_batch(&[SQUARE_HOLE, UNION, "", SQUARE_HOLE]);
    assert_eq!(scores.iter().filter(|o| o.is_ok()).count(), 3);
    assert!(same(&scores[0], &scores[3]));
}

#[test]
fn sandbox_config_is_a_strict_table() {
    let c: SandboxConfig = serde_json::from_str(r#"{"backend": "native", "fuel": 5}"#).unwrap();
    assert_eq!(
        c,
        SandboxConfig {
            backend: Backend::Native,
            fuel: 5,
            ..SandboxConfig::default()
        }
    );
    let e =
        serde_json::from_str::<SandboxConfig>(r#"{"backend": "wasm", "timeout": 5}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `timeout`"), "{e}");
    assert!(serde_json::from_str::<SandboxConfig>(r#"{"backend": "docker"}"#).is_err());
    assert!(
        executor(&SandboxConfig {
            memory_mb: 1,
            ..SandboxConfig::default()
        })
        .is_err()
    );
    assert!(
        executor(&SandboxConfig {
            timeout_ms: 0,
            ..SandboxConfig::default()
        })
        .is_err()
    );
}

#[test]
fn cli_shows_the_backend_and_limits() {
    let a = cli_exec(
        "flags",
        SQUARE_HOLE.as_bytes(),
        &["--sandbox", "native", "--timeout-ms", "1234"],
    );
    assert_eq!(a.json["ok"], true);
    assert_eq!(a.json["sandbox"]["backend"], "native");
    assert_eq!(a.json["sandbox"]["timeout_ms"], 1234);
    let a = cli_exec("fuel", SQUARE_HOLE.as_bytes(), &["--fuel", "1000"]);
    assert_eq!(a.json["error_kind"], "out_of_fuel", "{}", a.json);
    let a = cli_exec("mem", SQUARE_HOLE.as_bytes(), &["--memory-mb", "16"]);
    assert_eq!(a.json["ok"], true, "{}", a.json);
    let out = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .args(["exec", "--sandbox", "docker", "x.py"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown sandbox backend"));
}

#[test]
fn cadquery_backend_matches_when_available() {
    let cfg = SandboxConfig {
        timeout_ms: 60_000,
        memory_mb: 2048,
        ..SandboxConfig::with_backend(Backend::Cadquery)
    };
    let cq = match executor(&cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let native = executor(&SandboxConfig::with_backend(Backend::Native)).unwrap();
    for p in [SQUARE_HOLE, UNION] {
        let (a, b) = (cq.execute(p), native.execute(p));
        let (a, b) = (a.result.unwrap(), b.result.unwrap());
        assert!(
            (a.volume - b.volume).abs() < 5e-3 * b.volume,
            "{} vs {}",
            a.volume,
            b.volume
        );
    }
    assert!(
        !cq.execute("import cadquery as cq\nopen('x', 'w').write('x')\n")
            .is_ok()
    );
    let t = cq.target(UNION).unwrap();
    let iou = cq
        .reward(SQUARE_HOLE, &t, Normalize::UnitCube)
        .iou()
        .unwrap();
    let ours = native
        .reward(
            SQUARE_HOLE,
            &native.target(UNION).unwrap(),
            Normalize::UnitCube,
        )
        .iou()
        .unwrap();
    assert!((iou - ours).abs() < 0.01, "{iou} vs {ours}");
}

/// A fresh, empty directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cadvlm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The compiled guest is cached on disk under a key of the module and the engine's settings, loaded
/// on the next start, and recompiled (never run) when the file is corrupt or truncated.
#[test]
fn compiled_guest_is_cached_checked_and_rebuilt_when_corrupt() {
    use cadvlm::exec::guest_cache::{GuestSource, load_or_compile};
    use cadvlm::exec::wasm::{GUEST_WASM, engine};
    let engine = engine().unwrap();
    let dir = temp_dir("guest-cache");
    let source = |dir: &Path| load_or_compile(&engine, GUEST_WASM, Ok(dir)).unwrap();
    let first = source(&dir);
    let GuestSource::Compiled(path) = &first.source else {
        panic!("a cold cache compiles: {:?}", first.source)
    };
    let second = source(&dir);
    assert_eq!(second.source, GuestSource::Cached(path.clone()));
    let names = |g: &cadvlm::exec::guest_cache::GuestModule| {
        g.module
            .exports()
            .map(|e| e.name().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&second), names(&first));
    assert!(!names(&first).is_empty());
    // one flipped bit in the machine code: detected, recompiled, the file replaced
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(source(&dir).source, GuestSource::Compiled(path.clone()));
    assert_eq!(source(&dir).source, GuestSource::Cached(path.clone()));
    // a truncated file
    std::fs::write(path, &bytes[..100]).unwrap();
    assert_eq!(source(&dir).source, GuestSource::Compiled(path.clone()));
    // a cache directory that cannot be made: compiled in memory, with the reason
    let blocked = dir.join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let third = source(&blocked.join("cache"));
    assert!(
        matches!(&third.source, GuestSource::Uncached(why) if why.contains("cannot write")),
        "{:?}",
        third.source
    );
    let off = load_or_compile(&engine, GUEST_WASM, Err("CADVLM_CACHE_DIR=off")).unwrap();
    assert_eq!(
        off.source,
        GuestSource::Uncached("CADVLM_CACHE_DIR=off".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cadvlm exec` compiles the guest on a cold cache, loads it on the next start, and answers the same.
#[test]
fn cli_loads_the_guest_from_the_cache() {
    let dir = temp_dir("cli-guest-cache");
    let file = dir.join("square_hole.py");
    std::fs::write(&file, SQUARE_HOLE).unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
            .args(["exec", "--json", "--timing"])
            .arg(&file)
            .env("CADVLM_CACHE_DIR", dir.join("cache"))
            .output()
            .expect("cadvlm runs");
        assert!(out.status.success());
        let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["elapsed_ms"] = 0.into();
        json["fuel_used"] = 0.into();
        (json, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (cold, cold_err) = run();
    let (warm, warm_err) = run();
    assert!(cold_err.contains("guest compiled, cached at"), "{cold_err}");
    assert!(warm_err.contains("guest loaded from"), "{warm_err}");
    assert_eq!(cold, warm);
    assert_eq!(cold["ok"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
