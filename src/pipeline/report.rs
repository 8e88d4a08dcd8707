//! The `report` stage: PNG figures and `report/README.md` of the run (`report::run`).

use std::path::Path;

use super::recipe::RecipeError;
use super::{RunReport, stage_err};

pub fn stage(run_dir: &Path, rep: &mut RunReport) -> Result<(), RecipeError> {
    let out = crate::report::run::write_report(run_dir).map_err(|e| stage_err("report", e))?;
    rep.push(
        "report",
        "done",
        format!("{} figures in {}", out.figures.len(), out.dir.display()),
    );
    Ok(())
}
