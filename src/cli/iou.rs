//! `cadvlm iou A B`: B executed once as the target, A scored against it (the reward path).

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
    let res: Result<f64, Failure> = (|| {
        let pa = read(&a.a)
            .map_err(|f| Failure::new(f.kind, format!("first program: {}", f.message)))?;
        let pb = read(&a.b)
            .map_err(|f| Failure::new(f.kind, format!("second program: {}", f.message)))?;
        let target = ex
            .target(&pb)
            .map_err(|f| Failure::new(f.kind, format!("second program: {}", f.message)))?;
        let out = ex.reward(&pa, &target, a.normalize);
        match out.result {
            Ok(m) => m
                .iou
                .ok_or_else(|| Failure::new(FailureKind::Crash, "the executor returned no IoU")),
            Err(f) => Err(Failure::new(
                f.kind,
                format!("first program: {}", f.message),
            )),
        }
    })();
    if a.json {
        let line = match &res {
            Ok(v) => IouLine {
                iou: Some(*v),
                error: None,
                error_kind: None,
                sandbox: &cfg,
            },
            Err(f) => IouLine {
                iou: None,
                error: Some(f.message.clone()),
                error_kind: Some(f.kind),
                sandbox: &cfg,
            },
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        match res {
            Ok(v) => println!("IoU ({:?}) = {v:.6}", a.normalize),
            Err(f) => println!("IoU: FAILED ({})  {}", f.kind.as_str(), f.message),
        }
    }
    Ok(())
}
