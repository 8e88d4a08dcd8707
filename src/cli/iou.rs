//! `cadvlm iou A B`: B executed once as the target, A scored against it (the evaluation's scoring
//! path): the IoU under `--normalize` and cadrille's Chamfer distance.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::exec::{SandboxArgs, read};
use crate::exec::{Failure, FailureKind, SandboxConfig, executor};
use crate::geom::Normalize;

#[derive(Args)]
pub struct IouArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// raw | unitcube | best
    #[arg(long, default_value = "unitcube")]
    pub normalize: Normalize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Serialize)]
struct IouLine<'a> {
    iou: Option<f64>,
    /// Chamfer distance (not ×1000; `null` where the backend does not compute it).
    chamfer: Option<f64>,
    error: Option<String>,
    error_kind: Option<FailureKind>,
    sandbox: &'a SandboxConfig,
}

pub fn run(a: IouArgs) -> Result<()> {
    let cfg = a.sandbox.config();
    let ex = executor(&cfg)?;
    if !a.json {
        eprintln!("{}", cfg.describe());
    }
    let res: Result<(f64, Option<f64>), Failure> = (|| {
        let pa = read(&a.a)
            .map_err(|f| Failure::new(f.kind, format!("first program: {}", f.message)))?;
        let pb = read(&a.b)
            .map_err(|f| Failure::new(f.kind, format!("second program: {}", f.message)))?;
        let target = ex
            .target(&pb)
            .map_err(|f| Failure::new(f.kind, format!("second program: {}", f.message)))?;
        let out = ex.score(&pa, &target);
        match out.result {
            Ok(m) => {
                let ious = m.ious.ok_or_else(|| {
                    Failure::new(FailureKind::Crash, "the executor returned no IoU")
                })?;
                let iou = match a.normalize {
                    Normalize::Raw => ious.raw,
                    Normalize::UnitCube => ious.unitcube,
                    Normalize::Best => ious.best,
                };
                Ok((iou, ious.chamfer))
            }
            Err(f) => Err(Failure::new(
                f.kind,
                format!("first program: {}", f.message),
            )),
        }
    })();
    if a.json {
        let line = match &res {
            Ok((v, cd)) => IouLine {
                iou: Some(*v),
                chamfer: *cd,
                error: None,
                error_kind: None,
                sandbox: &cfg,
            },
            Err(f) => IouLine {
                iou: None,
                chamfer: None,
                error: Some(f.message.clone()),
                error_kind: Some(f.kind),
                sandbox: &cfg,
            },
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        match res {
            Ok((v, cd)) => {
                let cd = cd.map_or("n/a (backend)".to_string(), |c| format!("{:.4}", 1e3 * c));
                println!("IoU ({:?}) = {v:.6}  CD×1000 = {cd}", a.normalize)
            }
            Err(f) => println!("IoU: FAILED ({})  {}", f.kind.as_str(), f.message),
        }
    }
    Ok(())
}
