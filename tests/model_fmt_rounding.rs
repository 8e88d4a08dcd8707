//! What rounding the canonical printer's numbers costs in IoU on the real GenCAD-Code programs
//! (`gencad-programs` and `gencad-test100-dev` under `$CADVLM_SHARED_DATA`, default `../shared/data`,
//! when present).
//! Run with `--nocapture` to see the table.

use std::path::Path;

use cadvlm::cad::{Limits, execute, fmt::canonicalize};
use cadvlm::geom::{Normalize, iou};

fn programs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = std::env::var("CADVLM_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    for d in ["gencad-programs", "gencad-test100-dev"] {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        let mut files: Vec<_> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("pred") {
                continue; // model outputs, not ground truth
            }
            out.push((name, std::fs::read_to_string(&f).unwrap()));
        }
    }
    out
}

#[test]
fn rounding_cost_on_real_programs() {
    let progs = programs();
    if progs.is_empty() {
        eprintln!("no real programs found next to the repository; nothing measured");
        return;
    }
    let lim = Limits::default();
    println!("decimals  n_valid  mean_iou_raw  min_iou_raw  mean_iou_best  broken  chars_ratio");
    for decimals in [2u32, 3, 4, 5] {
        let (mut n, mut sum, mut min, mut sum_best, mut broken, mut chars, mut chars0) =
            (0, 0.0, 1.0f64, 0.0, 0, 0usize, 0usize);
        for (_, src) in &progs {
            let Ok(orig) = execute(src, &lim) else {
                continue;
            };
            let canon = canonicalize(src, decimals, &lim).unwrap();
            chars += canon.len();
            chars0 += src.len();
            match execute(&canon, &lim) {
                Ok(s) => {
                    let v = iou(&orig, &s, Normalize::Raw);
                    n += 1;
                    sum += v;
                    min = min.min(v);
                    sum_best += iou(&orig, &s, Normalize::Best);
                }
                Err(_) => broken += 1,
            }
        }
        println!(
            "{decimals:>8}  {n:>7}  {:>12.5}  {min:>11.5}  {:>13.5}  {broken:>6}  {:>11.3}",
            sum / n as f64,
            sum_best / n as f64,
            chars as f64 / chars0 as f64
        );
        if decimals == 4 {
            assert!(
                sum / n as f64 > 0.995,
                "4 decimals cost more than 0.5 % mean IoU"
            );
        }
    }
}
