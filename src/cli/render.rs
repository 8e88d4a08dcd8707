//! `cadvlm render`: one program to a PNG (GenCAD-Code style or cadrille's four views).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::data::images;
use crate::geom::csg::RayScratch;
use crate::geom::render::{RenderOptions, Style};

#[derive(Args)]
pub struct RenderArgs {
    /// The program (`.py`, GenCAD-Code CadQuery subset).
    pub program: PathBuf,
    /// Output PNG file.
    #[arg(long)]
    pub out: PathBuf,
    /// gencad | multiview
    #[arg(long, default_value = "gencad")]
    pub style: Style,
    /// Image side in pixels (default: 448 for gencad, 256 for multiview).
    #[arg(long)]
    pub size: Option<u32>,
}

pub fn run(a: RenderArgs) -> Result<()> {
    let src = std::fs::read_to_string(&a.program)
        .with_context(|| format!("cannot read {}", a.program.display()))?;
    let opts = RenderOptions {
        size: a.size.unwrap_or(a.style.default_size()),
        ..RenderOptions::style(a.style)
    };
    let t0 = Instant::now();
    let img = images::render_program(&src, &a.program, &opts, &mut RayScratch::default())?;
    let png = images::encode_png(&img)?;
    std::fs::write(&a.out, png).with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!(
        "rendered {} ({}×{}, {}) in {:.1} ms",
        a.out.display(),
        img.width,
        img.height,
        a.style.as_str(),
        1e3 * t0.elapsed().as_secs_f64()
    );
    Ok(())
}
