//! Our Chamfer distance against the same computation on CadQuery's tessellation: cadrille's
//! evaluate.py (tessellate(0.001, 0.1), unit cube, 8192 trimesh surface samples, cKDTree, squared
//! distances summed over both directions), averaged over 8 samplings per pair, in
//! `fixtures/cadquery/chamfer-cadquery.jsonl` (made by `benches/chamfer_vs_cadquery.py`). Pairs:
//! real programs against the next one, against themselves (the sampling floor), and against a copy
//! with every extrusion ×1.15.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cadvlm::cad::{Limits, execute};
use cadvlm::geom::chamfer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cadquery")
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

#[test]
fn chamfer_matches_cadquery_tessellation() {
    let text = std::fs::read_to_string(fixtures().join("chamfer-cadquery.jsonl")).unwrap();
    let limits = Limits::default();
    // a few real programs are outside what we execute (OCC makes invalid solids of them; see
    // tests/executor_reference.rs): their pairs are skipped and counted
    let run = |src: &str| execute(src, &limits).ok();
    let mut skipped = 0usize;
    // kind -> (ours, CadQuery) per pair
    let mut by_kind: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut worst = (0.0f64, String::new());
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let (a, b, kind) = (
            r["a"].as_str().unwrap(),
            r["b"].as_str().unwrap(),
            r["kind"].as_str().unwrap(),
        );
        let sa = run(&std::fs::read_to_string(fixtures().join(a)).unwrap());
        let sb = match r["b_program"].as_str() {
            Some(p) => run(p),
            None => run(&std::fs::read_to_string(fixtures().join(b)).unwrap()),
        };
        let (Some(sa), Some(sb)) = (sa, sb) else {
            skipped += 1;
            continue;
        };
        let ours = chamfer(&sa, &sb).unwrap();
        let cq = r["cd_cadquery"].as_f64().unwrap();
        let rel = (ours - cq).abs() / cq;
        if rel > worst.0 {
            worst = (
                rel,
                format!("{a} vs {b} ({kind}): ours {ours:.3e}, CadQuery {cq:.3e}"),
            );
        }
        by_kind
            .entry(kind.to_string())
            .or_default()
            .push((ours, cq));
    }
    let all: Vec<(f64, f64)> = by_kind.values().flatten().copied().collect();
    assert!(all.len() >= 100, "only {} pairs compared", all.len());
    assert!(skipped * 20 < all.len(), "{skipped} pairs skipped");
    println!("CD×1000, ours vs CadQuery (mean of 8 samplings):");
    let mut failures = Vec::new();
    for (kind, v) in by_kind.iter().chain([(&"all".to_string(), &all)]) {
        let (o, c): (Vec<f64>, Vec<f64>) = v.iter().copied().unzip();
        let rel: Vec<f64> = v.iter().map(|(o, c)| (o - c).abs() / c).collect();
        let (dm, dmed) = (mean(&o) / mean(&c) - 1.0, median(&o) / median(&c) - 1.0);
        println!(
            "  {kind:13} n {:3}  mean {:8.3} vs {:8.3} ({:+.2}%)  median {:7.3} vs {:7.3} ({:+.2}%)  |rel| mean {:.2}% max {:.2}%",
            v.len(),
            1e3 * mean(&o),
            1e3 * mean(&c),
            100.0 * dm,
            1e3 * median(&o),
            1e3 * median(&c),
            100.0 * dmed,
            100.0 * mean(&rel),
            100.0 * rel.iter().cloned().fold(0.0, f64::max),
        );
        // the goal: mean and median of CD×1000 within 5 %, and pairs within 5 % on average
        if dm.abs() > 0.05 || dmed.abs() > 0.05 || mean(&rel) > 0.05 {
            failures.push(kind.clone());
        }
    }
    println!("  {skipped} pairs skipped (a program we reject)");
    println!("  worst pair: {:.2}%  {}", 100.0 * worst.0, worst.1);
    assert!(failures.is_empty(), "outside 5 % of CadQuery: {failures:?}");
    // no single pair far off (sampling noise is ~1–2 % per pair)
    assert!(
        worst.0 < 0.2,
        "worst pair {:.1}%: {}",
        100.0 * worst.0,
        worst.1
    );
}
