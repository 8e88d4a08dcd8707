//! Statistics of GenCAD-style program collections (sketches, loops, curve kinds, booleans,
//! extrusion kinds) and the side-by-side table that compares two collections (e.g. ours vs real).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shards::{read_shard, shard_files};

/// Counts for one program, from its text (GenCAD-Code style).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramCounts {
    pub sketches: usize,
    pub loops: usize,
    /// `lineTo` calls plus the line each `close()` draws.
    pub lines: usize,
    pub arcs: usize,
    pub circles: usize,
    pub unions: usize,
    pub cuts: usize,
    pub intersects: usize,
    pub negative_extrusions: usize,
    pub both_extrusions: usize,
    /// Sketch planes whose normal is not a coordinate axis.
    pub tilted_planes: usize,
    pub chars: usize,
}

/// Count the constructs of one program.
pub fn count(code: &str) -> ProgramCounts {
    let mut c = ProgramCounts {
        chars: code.len(),
        ..Default::default()
    };
    for line in code.lines() {
        let l = line.trim();
        if l.starts_with('#') {
            continue;
        }
        if l.contains("cq.Workplane(") {
            c.sketches += 1;
            if let Some(normal) = plane_normal(l)
                && !normal.iter().any(|x| (x.abs() - 1.0).abs() < 1e-9)
            {
                c.tilted_planes += 1;
            }
        }
        if l.starts_with("loop") && l.contains('=') {
            c.loops += 1;
        }
        c.lines += l.matches(".lineTo(").count() + l.matches(".close()").count();
        c.arcs += l.matches(".threePointArc(").count();
        c.circles += l.matches(".circle(").count();
        c.unions += l.matches(".union(").count();
        c.cuts += l.matches(".cut(").count();
        c.intersects += l.matches(".intersect(").count();
        if let Some(i) = l.find(".extrude(") {
            let arg = &l[i + 9..];
            if arg.trim_start().starts_with('-') {
                c.negative_extrusions += 1;
            }
            if arg.contains("both=True") {
                c.both_extrusions += 1;
            }
        }
    }
    c
}

/// The third `cq.Vector(...)` of a `cq.Plane(...)` line (the normal), if parsable.
fn plane_normal(l: &str) -> Option<[f64; 3]> {
    let parts: Vec<&str> = l.split("cq.Vector(").collect();
    let v = parts.get(3)?;
    let inner = v.split(')').next()?;
    let xs: Vec<f64> = inner
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    (xs.len() == 3).then(|| [xs[0], xs[1], xs[2]])
}

/// Summary statistics of a collection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    /// (name, median, mean, max, share of programs with ≥ 1)
    pub rows: Vec<(String, f64, f64, f64, f64)>,
}

/// Summarise the counts of many programs.
pub fn summarize(counts: &[ProgramCounts]) -> Summary {
    type Getter = fn(&ProgramCounts) -> usize;
    let fields: [(&str, Getter); 12] = [
        ("sketches", |c| c.sketches),
        ("loops", |c| c.loops),
        ("lines", |c| c.lines),
        ("arcs", |c| c.arcs),
        ("circles", |c| c.circles),
        ("union", |c| c.unions),
        ("cut", |c| c.cuts),
        ("intersect", |c| c.intersects),
        ("negative extrude", |c| c.negative_extrusions),
        ("both=True", |c| c.both_extrusions),
        ("tilted plane", |c| c.tilted_planes),
        ("characters", |c| c.chars),
    ];
    let n = counts.len();
    let rows = fields
        .iter()
        .map(|(name, get)| {
            let mut v: Vec<usize> = counts.iter().map(get).collect();
            v.sort_unstable();
            let median = if n == 0 {
                0.0
            } else if n % 2 == 1 {
                v[n / 2] as f64
            } else {
                0.5 * (v[n / 2 - 1] + v[n / 2]) as f64
            };
            let mean = v.iter().sum::<usize>() as f64 / n.max(1) as f64;
            let max = v.last().copied().unwrap_or(0) as f64;
            let share = v.iter().filter(|&&x| x > 0).count() as f64 / n.max(1) as f64;
            (name.to_string(), median, mean, max, share)
        })
        .collect();
    Summary { n, rows }
}

/// A markdown table of one or more summaries side by side (median / mean / max / share ≥ 1).
pub fn table(named: &[(&str, &Summary)]) -> String {
    let mut s = String::from("| statistic |");
    for (name, sm) in named {
        let _ = write!(s, " {name} (n={}) median | mean | max | share ≥1 |", sm.n);
    }
    s.push('\n');
    s.push_str("|---|");
    for _ in named {
        s.push_str("---:|---:|---:|---:|");
    }
    s.push('\n');
    let k = named.first().map(|(_, sm)| sm.rows.len()).unwrap_or(0);
    for i in 0..k {
        let _ = write!(s, "| {} |", named[0].1.rows[i].0);
        for (_, sm) in named {
            let (_, med, mean, max, share) = &sm.rows[i];
            let _ = write!(s, " {med} | {mean:.2} | {max} | {:.0} % |", share * 100.0);
        }
        s.push('\n');
    }
    s
}

/// Errors loading programs for statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{path}: cannot read: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error(transparent)]
    Shard(#[from] super::shards::ShardError),
    #[error("{0}: no programs (.py files or .parquet shards) found")]
    Empty(PathBuf),
}

/// Program texts from `.py` files, `.parquet` shards, or directories of either.
pub fn load_programs(inputs: &[PathBuf]) -> Result<Vec<String>, StatsError> {
    let mut out = Vec::new();
    for p in inputs {
        let before = out.len();
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| StatsError::Read {
                path: p.clone(),
                msg: e.to_string(),
            })?;
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            let pys: Vec<PathBuf> = files
                .iter()
                .filter(|f| f.extension().is_some_and(|x| x == "py"))
                .cloned()
                .collect();
            for f in &pys {
                out.push(read_py(f)?);
            }
            if files
                .iter()
                .any(|f| f.extension().is_some_and(|x| x == "parquet"))
            {
                for f in shard_files(std::slice::from_ref(p))? {
                    out.extend(read_shard(&f)?.into_iter().map(|r| r.code));
                }
            }
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.extend(read_shard(p)?.into_iter().map(|r| r.code));
        } else {
            out.push(read_py(p)?);
        }
        if out.len() == before {
            return Err(StatsError::Empty(p.clone()));
        }
    }
    Ok(out)
}

fn read_py(p: &Path) -> Result<String, StatsError> {
    std::fs::read_to_string(p).map_err(|e| StatsError::Read {
        path: p.to_path_buf(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_gencad_program() {
        let code = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.75, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.1)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(-0.0625)\nsolid=solid0\n# Generating a workplane for sketch 1\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(0.9993977281025862, 0.024541228522912326, 0.024533837163709046), cq.Vector(0.024541228522912326, 0.0, -0.9996988186962042)))\nloop2=wp_sketch1.moveTo(0.1, 0.0).threePointArc((0.2, 0.1), (0.1, 0.2)).lineTo(0.0, 0.0).close()\nsolid1=wp_sketch1.add(loop2).extrude(0.1, both=True)\nsolid=solid.cut(solid1)";
        let c = count(code);
        assert_eq!(
            (c.sketches, c.loops, c.lines, c.arcs, c.circles),
            (2, 3, 6, 1, 1)
        );
        assert_eq!(
            (
                c.unions,
                c.cuts,
                c.negative_extrusions,
                c.both_extrusions,
                c.tilted_planes
            ),
            (0, 1, 1, 1, 1)
        );
        let s = summarize(&[c, ProgramCounts::default()]);
        assert_eq!(s.rows[0].0, "sketches");
        assert_eq!(s.rows[0].1, 1.0); // median of 2 and 0
        assert_eq!(s.rows[0].4, 0.5);
        assert!(table(&[("a", &s), ("b", &s)]).contains("| sketches | 1 |"));
    }
}
