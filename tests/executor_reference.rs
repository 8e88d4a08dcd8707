//! The executor against real CadQuery 2.8.0 / OpenCascade values (fixtures/cadquery/*/reference-cadquery.jsonl).

use std::path::{Path, PathBuf};

use cadvlm::cad::{Limits, execute};
use cadvlm::exec::exec_program;
use cadvlm::geom::{MeasureOptions, Normalize, iou};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cadquery")
}

/// (folder, reference row) for every program in the three folders.
fn references() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for folder in ["semantics", "gencad-programs", "gencad-test100-dev"] {
        let dir = fixtures().join(folder);
        let text = std::fs::read_to_string(dir.join("reference-cadquery.jsonl")).unwrap();
        for line in text.lines() {
            out.push((dir.clone(), serde_json::from_str(line).unwrap()));
        }
    }
    out
}

fn program(dir: &Path, file: &str) -> String {
    let name = Path::new(file).file_name().unwrap();
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn occ_valid(r: &Value) -> bool {
    r["ok"].as_bool() == Some(true) && r["valid"].as_bool() == Some(true)
}

/// OCC made a solid of it (valid or not).
fn occ_ok(r: &Value) -> bool {
    r["ok"].as_bool() == Some(true) && r["volume"].as_f64().is_some_and(|v| v > 0.0)
}

/// Programs OCC makes a solid of (all invalid but the crossing rectangles) where ours differs, and why.
/// OCC's volume of an invalid face is the outer loop's area minus every inner loop's, which no
/// point set has once an inner loop crosses the outer one or lies inside another inner loop.
const KNOWN_GAPS: [(&str, &str); 11] = [
    (
        "p17_island_in_hole.py",
        "an island inside a hole: OCC subtracts it twice; we refuse",
    ),
    (
        "p25_moveto_midloop.py",
        "a moveTo inside a loop: OCC closes another wire; we refuse",
    ),
    (
        "gt051.py",
        "a loop that touches and crosses the outer one; we refuse (loop crosses itself)",
    ),
    (
        "pred002.py",
        "a loop that crosses itself (bow-tie): OCC's face has the lobes' signed area; we refuse",
    ),
    (
        "gt023.py",
        "loops that touch and cross: OCC's volume is outer − Σ inner; ours the even-odd region",
    ),
    (
        "touching/t011.py",
        "a hole tangent to another and crossing the outer loop (outer − Σ inner)",
    ),
    (
        "touching/t044.py",
        "a hole tangent to another and crossing the outer loop (outer − Σ inner)",
    ),
    (
        "touching/t009.py",
        "two crossing outer rectangles: OCC unions them (valid); ours is even-odd",
    ),
    (
        "touching/t020.py",
        "two crossing outer rectangles: OCC unions them (valid); ours is even-odd",
    ),
    (
        "touching/t031.py",
        "two crossing outer rectangles: OCC unions them (valid); ours is even-odd",
    ),
    (
        "touching/t042.py",
        "two crossing outer rectangles: OCC unions them (valid); ours is even-odd",
    ),
];

fn known_gap(file: &str) -> bool {
    file.ends_with("00904404.py") || KNOWN_GAPS.iter().any(|(f, _)| file.ends_with(f))
}

/// Programs OpenCascade turns into a solid it calls invalid because loops touch (tangent holes, a
/// hole on the outer boundary, a hole sharing a vertex or an edge with it, a circle tangent inside
/// a circle) get one from us too, with `valid: false` and OCC's volume; outer loops touching side
/// by side and figure-eight loops are valid in both. The `touching/` fixtures are synthetic
/// (`benches/touching_programs.py`), their references OCC's; with them every real program OCC
/// makes an invalid solid of (`KNOWN_GAPS` aside).
#[test]
fn touching_loops_give_occs_solid_and_validity() {
    let (limits, opts) = (Limits::default(), MeasureOptions::default());
    let dir = fixtures().join("touching");
    let text = std::fs::read_to_string(dir.join("reference-cadquery.jsonl")).unwrap();
    let mut rows: Vec<(PathBuf, Value)> = text
        .lines()
        .map(|l| (dir.clone(), serde_json::from_str(l).unwrap()))
        .collect();
    rows.extend(
        references()
            .into_iter()
            .filter(|(_, r)| occ_ok(r) && !occ_valid(r)),
    );
    let (mut n, mut invalid, mut bad) = (0, 0, Vec::new());
    for (dir, r) in rows.iter().filter(|(_, r)| occ_ok(r)) {
        let file = r["file"].as_str().unwrap();
        let text = program(dir, file);
        // a symmetric bow-tie: OCC's face has zero volume (see KNOWN_GAPS, pred002)
        if known_gap(file) || text.contains("# kind: bowtie") {
            continue;
        }
        n += 1;
        invalid += usize::from(r["valid"].as_bool() == Some(false));
        let (ours, _) = exec_program(&text, &limits, &opts);
        let v_ref = r["volume"].as_f64().unwrap();
        let problem = if !ours.ok {
            Some(format!("we fail: {:?}", ours.error))
        } else if ours.valid != r["valid"].as_bool() {
            Some(format!("valid {:?}, OCC {}", ours.valid, r["valid"]))
        } else if (ours.volume.unwrap() - v_ref).abs() > 0.005 * v_ref {
            Some(format!("volume {:?} vs OCC {v_ref}", ours.volume))
        } else {
            None
        };
        if let Some(p) = problem {
            bad.push(format!("{file}: {p}"));
        }
    }
    eprintln!(
        "{n} programs OCC makes a solid of, {invalid} of them invalid: {} differ",
        bad.len()
    );
    assert!(
        n >= 40 && invalid >= 25,
        "too few touching programs ({n}, {invalid} invalid)"
    );
    assert!(
        bad.is_empty(),
        "{} of {n} differ from OCC:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn volumes_bboxes_and_failures_match_cadquery() {
    let (limits, opts) = (Limits::default(), MeasureOptions::default());
    let (mut n_valid, mut vol_ok, mut bbox_ok) = (0, 0, 0);
    let mut report = Vec::new();
    for (dir, r) in references() {
        let file = r["file"].as_str().unwrap();
        let (ours, _) = exec_program(&program(&dir, file), &limits, &opts);
        if !occ_valid(&r) {
            // whatever CadQuery rejects or makes invalid must be a failure in ours
            if file.ends_with("00904404.py") {
                // known gap: OCC flags the result of this cut invalid (tiny circle on a face); we accept it
                continue;
            }
            assert!(
                !ours.ok || ours.valid == Some(false),
                "{file}: CadQuery fails or is invalid, we accept it: {ours:?}"
            );
            continue;
        }
        n_valid += 1;
        if !ours.ok {
            report.push(format!("{file}: we fail: {:?}", ours.error));
            continue;
        }
        let v_ref = r["volume"].as_f64().unwrap();
        let rel = (ours.volume.unwrap() - v_ref).abs() / v_ref;
        if rel <= 0.005 {
            vol_ok += 1;
        } else {
            report.push(format!("{file}: volume off by {:.3}%", 100.0 * rel));
        }
        let bb_ref: Vec<f64> = r["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let bb = ours.bbox.unwrap();
        let scale = (0..3)
            .map(|i| bb_ref[i + 3] - bb_ref[i])
            .fold(0.0, f64::max);
        if (0..6).all(|i| (bb[i] - bb_ref[i]).abs() <= 0.01 * scale) {
            bbox_ok += 1;
        } else {
            report.push(format!("{file}: bbox {bb:?} vs {bb_ref:?}"));
        }
    }
    eprintln!(
        "{n_valid} valid programs: volume within 0.5% for {vol_ok}, bbox within 1% for {bbox_ok}"
    );
    for l in &report {
        eprintln!("  {l}");
    }
    assert!(n_valid >= 180, "fixtures incomplete: {n_valid}");
    assert!(
        vol_ok as f64 >= 0.99 * n_valid as f64,
        "volume within 0.5% for only {vol_ok}/{n_valid}"
    );
    assert!(
        bbox_ok as f64 >= 0.99 * n_valid as f64,
        "bbox within 1% for only {bbox_ok}/{n_valid}"
    );
}

#[test]
fn semantic_probes_match_exactly() {
    // the probes are simple: polygonal parts agree to rounding, curved ones to the quadrature (< 1e-4)
    let (limits, opts) = (Limits::default(), MeasureOptions::default());
    for (dir, r) in references()
        .into_iter()
        .filter(|(d, _)| d.ends_with("semantics"))
    {
        let file = r["file"].as_str().unwrap();
        let (ours, _) = exec_program(&program(&dir, file), &limits, &opts);
        if occ_valid(&r) {
            let v_ref = r["volume"].as_f64().unwrap();
            assert!(ours.ok, "{file}: {:?}", ours.error);
            assert!(
                (ours.volume.unwrap() - v_ref).abs() <= 1e-4 * v_ref,
                "{file}: {:?} vs {v_ref}",
                ours.volume
            );
            assert_eq!(
                ours.n_solids,
                r["n_solids"].as_u64().map(|x| x as usize),
                "{file}"
            );
        }
    }
}

#[test]
fn pairwise_iou_matches_occ() {
    let limits = Limits::default();
    for (norm, key, tol, share) in [
        (Normalize::Raw, "iou_pair_raw", 0.01, 0.99),
        (Normalize::UnitCube, "iou_pair_unitcube", 0.01, 0.99),
        // IOU_best depends on principal axes, which are ill-defined for symmetric parts
        (Normalize::Best, "iou_pair_best", 0.01, 0.95),
    ] {
        let (mut n, mut good) = (0, 0);
        let all = references();
        for (dir, r) in &all {
            let (Some(pair), Some(want)) = (r["pair"].as_str(), r[key].as_f64()) else {
                continue;
            };
            let file = r["file"].as_str().unwrap();
            let Some((_, rb)) = all.iter().find(|(d, x)| {
                d == dir && x["file"].as_str().unwrap().ends_with(&format!("/{pair}"))
            }) else {
                continue;
            };
            // OCC's invalid solids count too where we make the same one (touching loops)
            if !occ_ok(r) || !occ_ok(rb) || known_gap(file) || known_gap(pair) {
                continue;
            }
            let (Ok(a), Ok(b)) = (
                execute(&program(dir, file), &limits),
                execute(&program(dir, pair), &limits),
            ) else {
                assert!(
                    !occ_valid(r) || !occ_valid(rb),
                    "{file} vs {pair}: OCC makes both valid, we refuse one"
                );
                continue;
            };
            let got = iou(&a, &b, norm);
            n += 1;
            if (got - want).abs() <= tol {
                good += 1;
            } else {
                eprintln!("{norm:?} {file} vs {pair}: {got:.4} vs OCC {want:.4}");
            }
        }
        eprintln!("{norm:?}: {good}/{n} pairs within {tol}");
        assert!(n >= 140, "{norm:?}: too few pairs ({n})");
        assert!(
            good as f64 >= share * n as f64,
            "{norm:?}: only {good}/{n} within {tol}"
        );
    }
}
