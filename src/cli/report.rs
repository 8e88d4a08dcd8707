//! `cadvlm report RUN`: PNG figures and `report/README.md` of a run folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// Run folder, e.g. runs/dpo-cpu.
    pub run: PathBuf,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let rep = crate::report::run::write_report(&a.run)?;
    for f in &rep.figures {
        println!("{}", f.display());
    }
    for n in &rep.notes {
        eprintln!("note: {n}");
    }
    println!("{}", rep.dir.join("README.md").display());
    Ok(())
}
