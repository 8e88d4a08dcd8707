//! `cadvlm recipe FILE [--set k=v]...`: run a recipe's stages (either model family) and print what
//! each stage did.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::pipeline::{self, Recipe};

#[derive(Args)]
pub struct RecipeArgs {
    /// Recipe file (TOML), e.g. recipes/smoke.toml.
    pub file: PathBuf,
    /// Override a value: --set sft.steps=200 (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Folder that holds run folders.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: RecipeArgs) -> Result<()> {
    let r = Recipe::load(&a.file, &a.sets)?;
    let rep = pipeline::run(&r, &a.runs, !a.quiet)?;
    for (stage, what, detail) in &rep.stages {
        println!("{stage:<24} {what:<7} {detail}");
    }
    println!("run: {}", rep.run.display());
    Ok(())
}
