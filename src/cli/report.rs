//! `cadvlm report RUN`: PNG figures and `report/README.md` of a run folder; `cadvlm report --compare
//! LABEL=DIR ... --out DIR`: several models' evaluations side by side.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// Run folder, e.g. runs/dpo-cpu.
    #[arg(required_unless_present = "compare")]
    pub run: Option<PathBuf>,
    /// Models side by side instead: LABEL=DIR, each DIR a stage folder with eval/<set>/ (a run folder
    /// for its SFT model, RUN/dpo, RUN/grpo); the first is the baseline of the paired differences.
    #[arg(long, num_args = 2.., value_name = "LABEL=DIR", conflicts_with = "run")]
    pub compare: Vec<String>,
    /// Where --compare writes README.md and its figures.
    #[arg(long, requires = "compare")]
    pub out: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let rep = match a.run {
        Some(r) => crate::report::run::write_report(&r)?,
        None => {
            let mut models = Vec::new();
            for m in &a.compare {
                let Some((l, d)) = m.split_once('=') else {
                    anyhow::bail!("--compare {m:?}: write LABEL=DIR, e.g. DPO=runs/dpo-cpu/dpo");
                };
                let d = PathBuf::from(d);
                if !d.join("eval").is_dir() {
                    anyhow::bail!(
                        "--compare {m:?}: {} has no eval/ folder (a run folder, RUN/dpo or RUN/grpo)",
                        d.display()
                    );
                }
                models.push((l.to_string(), d));
            }
            let Some(out) = a.out else {
                anyhow::bail!("--compare needs --out DIR");
            };
            crate::report::run::write_comparison(&models, &out)?
        }
    };
    for f in &rep.figures {
        println!("{}", f.display());
    }
    for n in &rep.notes {
        eprintln!("note: {n}");
    }
    println!("{}", rep.dir.join("README.md").display());
    Ok(())
}
