//! `cadvlm data synth | stats | golden`: synthetic shards, program statistics, the renderer's golden check.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::geom::csg::RayScratch;
use crate::geom::render::{RenderOptions, Style};

use crate::data::images;

#[derive(Subcommand)]
pub enum DataCmd {
    /// Generate synthetic GenCAD-style programs, render them, write parquet shards (GenCAD-Code schema).
    Synth(SynthArgs),
    /// Statistics of programs (.py files, .parquet shards, or directories of either); `--vs` adds a second column set.
    Stats(StatsArgs),
    /// Compare our renders of `ID.py` with the real `ID.png` images in a directory (mask IoU, grey).
    Golden(GoldenArgs),
}

#[derive(Args)]
pub struct SynthArgs {
    /// Number of samples.
    #[arg(long)]
    pub count: usize,
    /// Output directory (created): `{train,val,test}-NNNNN.parquet`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// gencad | multiview
    #[arg(long, default_value = "gencad")]
    pub style: Style,
    /// Image side in pixels (default: 448 for gencad, 256 for multiview).
    #[arg(long)]
    pub size: Option<u32>,
    /// Rows per parquet shard.
    #[arg(long, default_value_t = 5000)]
    pub shard_rows: usize,
    /// Render without the framing jitter (zoom 0.9–1.05, shift ±2.5 %).
    #[arg(long)]
    pub no_jitter: bool,
    /// Generator settings (JSON of `SynthConfig`; unknown fields are errors).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also write a contact sheet of the first 16 samples (4×4) to this PNG.
    #[arg(long)]
    pub preview: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Programs: .py files, .parquet shards, or directories.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// A second collection to compare against (e.g. the real programs).
    #[arg(long, num_args = 1..)]
    pub vs: Vec<PathBuf>,
    /// Also execute every program and report the share that runs.
    #[arg(long)]
    pub exec: bool,
}

#[derive(Args)]
pub struct GoldenArgs {
    /// Directory of `ID.png` + `ID.py` pairs (e.g. ../shared/data/gencad-test100-dev).
    pub dir: PathBuf,
    /// Write a side-by-side PNG (real | ours) of the first `--show` pairs here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How many pairs the side-by-side shows.
    #[arg(long, default_value_t = 6)]
    pub show: usize,
    /// Camera direction `x,y,z` (default: the GenCAD view).
    #[arg(long, allow_hyphen_values = true)]
    pub view: Option<String>,
    /// Print one line per pair.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(c: DataCmd) -> Result<()> {
    match c {
        DataCmd::Golden(a) => golden(a),
        DataCmd::Synth(a) => synth(a),
        DataCmd::Stats(a) => stats(a),
    }
}

fn golden(a: GoldenArgs) -> Result<()> {
    let mut opts = RenderOptions::default();
    if let Some(v) = &a.view {
        let xs: Vec<f64> = v
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--view {v}: expected x,y,z"))?;
        if xs.len() != 3 {
            bail!("--view {v}: expected three numbers x,y,z");
        }
        opts.view = [xs[0], xs[1], xs[2]];
    }
    let t0 = Instant::now();
    let rows = images::golden(&a.dir, &opts)?;
    let dt = t0.elapsed().as_secs_f64();
    let (mut n, mut sum, mut min, mut fails) = (0usize, 0.0, f64::INFINITY, 0usize);
    let mut greys = Vec::new();
    let mut ratio = Vec::new();
    let (mut raw_sum, mut mae_sum, mut line_r, mut line_o) = (0.0, 0.0, 0.0, 0.0);
    let mut off = Vec::new();
    let mut shown = Vec::new();
    for (row, imgs) in &rows {
        match row {
            Ok(r) => {
                n += 1;
                sum += r.mask_iou;
                raw_sum += r.raw_mask_iou;
                mae_sum += r.face_grey_mae;
                line_r += r.line_share_real;
                line_o += r.line_share_ours;
                off.push(r.centre_offset[0].abs().max(r.centre_offset[1].abs()));
                min = min.min(r.mask_iou);
                greys.push(r.grey_ours);
                ratio.push(r.extent_ours as f64 / r.extent_real.max(1) as f64);
                if a.verbose {
                    println!(
                        "{}  mask IoU {:.4}  raw {:.4}  extent real {} ours {}  centre offset {:+.1} {:+.1}  grey real {:?} ours {:?}  face grey MAE {:.2}  line share real {:.3} ours {:.3}",
                        r.id,
                        r.mask_iou,
                        r.raw_mask_iou,
                        r.extent_real,
                        r.extent_ours,
                        r.centre_offset[0],
                        r.centre_offset[1],
                        r.grey_real,
                        r.grey_ours,
                        r.face_grey_mae,
                        r.line_share_real,
                        r.line_share_ours
                    );
                }
                if shown.len() < a.show
                    && let Some((real, ours)) = imgs
                {
                    shown.push(images::side_by_side(&[real, ours], 8));
                }
            }
            Err(e) => {
                fails += 1;
                println!("FAILED {e}");
            }
        }
    }
    if n == 0 {
        bail!("no pair could be compared");
    }
    ratio.sort_by(f64::total_cmp);
    off.sort_by(f64::total_cmp);
    let nf = n as f64;
    println!(
        "golden: raw (unnormalised) mask IoU {:.4}; centre offset max(|dx|,|dy|) median {:.1} px, max {:.1} px; face grey MAE {:.2}; line pixels / foreground real {:.4} ours {:.4}",
        raw_sum / nf,
        off[off.len() / 2],
        off[off.len() - 1],
        mae_sum / nf,
        line_r / nf,
        line_o / nf
    );
    let grey_ok = greys
        .iter()
        .filter(|g| g.is_some_and(|g| (g as i32 - 141).abs() <= 10))
        .count();
    println!(
        "golden: {n} pairs ({fails} failed) in {dt:.2} s; mean mask IoU {:.4} (min {:.4}); face grey within 10 of 141 in {grey_ok}/{n}; extent ours/real median {:.3} (p10 {:.3}, p90 {:.3})",
        sum / n as f64,
        min,
        ratio[ratio.len() / 2],
        ratio[ratio.len() / 10],
        ratio[ratio.len() * 9 / 10]
    );
    if let Some(out) = &a.out {
        // two pairs per row: real | ours   real | ours
        let rows: Vec<_> = shown
            .chunks(2)
            .map(|r| images::side_by_side(&r.iter().collect::<Vec<_>>(), 24))
            .collect();
        let img = images::stack(&rows, 8);
        std::fs::write(out, images::encode_png(&img)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "wrote {} ({} pairs, real | ours)",
            out.display(),
            shown.len()
        );
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    use crate::data::images::{Jitter, render_sample};
    use crate::data::shards::{Row, Split, SplitConfig, split_of, write_shard};
    use crate::data::synth::{SynthConfig, generate_with_progress};
    use indicatif::{ProgressBar, ProgressStyle};
    use rayon::prelude::*;
    use std::collections::HashMap;

    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if a.shard_rows == 0 {
        bail!("--shard-rows must be at least 1");
    }
    let cfg: SynthConfig = match &a.config {
        Some(p) => {
            let txt = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&txt)
                .with_context(|| format!("{}: not a valid synth config", p.display()))?
        }
        None => SynthConfig::default(),
    };
    let opts = RenderOptions {
        size: a.size.unwrap_or(a.style.default_size()),
        ..RenderOptions::style(a.style)
    };
    let jitter = if a.no_jitter {
        Jitter::NONE
    } else {
        Jitter::default()
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let style = ProgressStyle::with_template(
        "{msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    )?;

    let t0 = Instant::now();
    let pb = ProgressBar::new(a.count as u64)
        .with_style(style.clone())
        .with_message("programs");
    let progs = generate_with_progress(&cfg, a.seed, a.count, &|n| pb.inc(n as u64))?;
    pb.finish();
    let t_gen = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let pb = ProgressBar::new(a.count as u64)
        .with_style(style)
        .with_message("renders");
    let split_cfg = SplitConfig::default();
    let mut buffers: HashMap<Split, (Vec<Row>, usize)> = HashMap::new();
    let mut written = Vec::new();
    let mut flush =
        |split: Split, rows: &mut Vec<Row>, k: &mut usize, out: &PathBuf| -> Result<()> {
            let path = out.join(format!("{}-{:05}.parquet", split.as_str(), *k));
            write_shard(&path, rows)?;
            written.push((path, rows.len()));
            rows.clear();
            *k += 1;
            Ok(())
        };
    let chunk = 512.min(a.shard_rows.max(64));
    let mut preview: Vec<crate::geom::render::RgbImage> = Vec::new();
    for part in progs.chunks(chunk) {
        let samples: Vec<_> = part
            .par_iter()
            .map_init(RayScratch::default, |scratch, p| {
                let r = render_sample(p, &opts, jitter, scratch);
                pb.inc(1);
                r
            })
            .collect::<Result<Vec<_>, _>>()?;
        for s in samples {
            if a.preview.is_some() && preview.len() < 16 {
                preview.push(images::decode_png(&s.image_png, &s.id)?);
            }
            let split = split_of(&s.id, &split_cfg);
            let (rows, k) = buffers.entry(split).or_insert_with(|| (Vec::new(), 0));
            rows.push(Row::new(&s.id, &s.program, s.image_png));
            if rows.len() >= a.shard_rows {
                flush(split, rows, k, &a.out)?;
            }
        }
    }
    for split in [Split::Train, Split::Val, Split::Test] {
        if let Some((rows, k)) = buffers.get_mut(&split)
            && !rows.is_empty()
        {
            flush(split, rows, k, &a.out)?;
        }
    }
    pb.finish();
    let t_render = t1.elapsed().as_secs_f64();
    if let Some(p) = &a.preview {
        let rows: Vec<_> = preview
            .chunks(4)
            .map(|r| images::side_by_side(&r.iter().collect::<Vec<_>>(), 4))
            .collect();
        std::fs::write(p, images::encode_png(&images::stack(&rows, 4))?)
            .with_context(|| format!("cannot write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    let total = t0.elapsed().as_secs_f64();
    for (p, n) in &written {
        println!("{}: {n} rows", p.display());
    }
    println!(
        "synth: {} samples ({} {}px, seed {}) in {total:.1} s on {} threads: {:.0} samples/s (programs {:.1} s = {:.0}/s; render+encode+write {:.1} s = {:.0}/s); 100k would take {:.1} min",
        a.count,
        a.style.as_str(),
        opts.size,
        a.seed,
        rayon::current_num_threads(),
        a.count as f64 / total,
        t_gen,
        a.count as f64 / t_gen,
        t_render,
        a.count as f64 / t_render,
        100_000.0 / (a.count as f64 / total) / 60.0
    );
    Ok(())
}

fn stats(a: StatsArgs) -> Result<()> {
    use crate::data::stats::{count, load_programs, summarize, table};
    let ours = load_programs(&a.inputs)?;
    let sa = summarize(&ours.iter().map(|c| count(c)).collect::<Vec<_>>());
    let label = |ps: &[PathBuf]| match ps {
        [one] => one.display().to_string(),
        [first, rest @ ..] => format!("{} (+{} more)", first.display(), rest.len()),
        [] => String::new(),
    };
    let name_a = label(&a.inputs);
    let mut cols = vec![(name_a, sa, ours)];
    if !a.vs.is_empty() {
        let other = load_programs(&a.vs)?;
        let sb = summarize(&other.iter().map(|c| count(c)).collect::<Vec<_>>());
        cols.push((label(&a.vs), sb, other));
    }
    let named: Vec<(&str, &crate::data::stats::Summary)> =
        cols.iter().map(|(n, s, _)| (n.as_str(), s)).collect();
    print!("{}", table(&named));
    if a.exec {
        use rayon::prelude::*;
        for (n, _, progs) in &cols {
            let ok = progs
                .par_iter()
                .filter(|c| crate::cad::execute(c, &crate::cad::Limits::default()).is_ok())
                .count();
            println!(
                "{n}: {ok}/{} programs execute ({:.1} %)",
                progs.len(),
                100.0 * ok as f64 / progs.len().max(1) as f64
            );
        }
    }
    Ok(())
}
