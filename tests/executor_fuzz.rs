//! Mutation fuzzing of the executor: thousands of corrupted real programs must each end in a result or
//! an error — never a panic, never unbounded time.

use std::path::Path;
use std::time::{Duration, Instant};

use cadvlm::cad::Limits;
use cadvlm::exec::exec_program;
use cadvlm::geom::{MeasureOptions, Normalize, iou};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn programs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cadquery/gencad-programs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "py"));
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

const SNIPPETS: &[&str] = &[
    "(",
    ")",
    ",",
    ".",
    "=",
    "-",
    "*",
    "/",
    "1e308",
    "-0.0",
    "0",
    "nan",
    "inf",
    "1e-300",
    "solid",
    "cq",
    "circle(0)",
    ".union(solid)",
    ".cut(solid)",
    ".intersect(solid)",
    "close()",
    "\n",
    "    ",
    "#",
    "'",
    "\"x\"",
    "[",
    "]",
    ".extrude(",
    "both=True",
    "moveTo(",
    "lineTo(0, 0)",
    "threePointArc((0, 0), (0, 0))",
    "\u{0}",
    "é",
];

fn mutate(src: &str, rng: &mut Rng) -> String {
    let mut s: Vec<char> = src.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(5) {
            0 if !s.is_empty() => {
                let end = (at + 1 + rng.below(20)).min(s.len());
                s.drain(at.min(end)..end);
            }
            1 => {
                let snip = SNIPPETS[rng.below(SNIPPETS.len())];
                s.splice(at..at, snip.chars());
            }
            2 => {
                // duplicate a line (repeats booleans, loops, extrusions)
                let lines: Vec<&str> = src.lines().collect();
                let l = lines[rng.below(lines.len())];
                let line: Vec<char> = format!("{l}\n").chars().collect();
                let pos = s.iter().take(at).filter(|c| **c == '\n').count();
                let byte = s
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == '\n')
                    .nth(pos)
                    .map(|(i, _)| i + 1)
                    .unwrap_or(s.len());
                s.splice(byte..byte, line);
            }
            3 => {
                // change a digit
                if let Some(i) = (at..s.len()).find(|&i| s[i].is_ascii_digit()) {
                    s[i] = char::from(b'0' + rng.below(10) as u8);
                }
            }
            _ => {
                s.truncate(at);
            }
        }
    }
    s.into_iter().collect()
}

#[test]
fn mutated_programs_never_panic_or_hang() {
    let srcs = programs();
    let (limits, opts) = (Limits::default(), MeasureOptions::default());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut failed) = (0, 0);
    let mut slowest = (Duration::ZERO, String::new());
    let mut prev = None;
    for i in 0..3000 {
        let src = mutate(&srcs[i % srcs.len()], &mut rng);
        let t = Instant::now();
        let result = std::panic::catch_unwind(|| exec_program(&src, &limits, &opts));
        let (report, solid) = result.unwrap_or_else(|_| panic!("panic on mutated program:\n{src}"));
        if let (Some(a), Some(b)) = (&solid, &prev) {
            let v = iou(a, b, Normalize::UnitCube);
            assert!((0.0..=1.0).contains(&v), "IoU out of range: {v}");
        }
        let dt = t.elapsed();
        if dt > slowest.0 {
            slowest = (dt, src.clone());
        }
        if report.ok {
            ok += 1;
            let v = report.volume.unwrap();
            assert!(v.is_finite() && v > 0.0, "bad volume {v} for\n{src}");
            prev = solid;
        } else {
            failed += 1;
            let msg = report.error.unwrap();
            assert!(msg.starts_with("line "), "error without a position: {msg}");
        }
    }
    eprintln!(
        "{ok} executed, {failed} failed cleanly; slowest {:?}",
        slowest.0
    );
    assert!(
        ok > 300 && failed > 300,
        "mutations too mild or too harsh: {ok} ok, {failed} failed"
    );
    assert!(
        slowest.0 < Duration::from_secs(2),
        "slowest program took {:?}:\n{}",
        slowest.0,
        slowest.1
    );
}
