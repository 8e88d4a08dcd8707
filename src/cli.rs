//! Command-line interface: argument parsing and dispatch to the library's stages.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::geom::Normalize;
// The plain (unsandboxed) `exec` / `iou`; with feature `sandbox` they go through `crate::sandbox::cli`.
#[cfg(not(feature = "sandbox"))]
use {
    crate::cad::Limits,
    crate::exec::{ExecReport, exec_program, iou_programs},
    crate::geom::MeasureOptions,
    anyhow::{Context, Result},
    std::io::Write,
    std::time::Instant,
};

#[derive(Parser)]
#[command(name = "cadvlm", version, about = "Train VLMs to write CadQuery code; execute and measure CadQuery programs exactly")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Execute programs and report volume, bbox, solids and validity (one line per file).
    Exec(ExecArgs),
    /// IoU of two programs' solids.
    Iou(IouArgs),
    /// Render a program to a PNG (GenCAD-Code style or cadrille's four views).
    #[cfg(feature = "data")]
    Render(crate::data::cli::RenderArgs),
    /// Synthetic training data, shard statistics, the renderer's golden check.
    #[cfg(feature = "data")]
    #[command(subcommand)]
    Data(crate::data::cli::DataCmd),
    /// Run a recipe: data, tokenizer, SFT, eval (finished stages are reused).
    #[cfg(feature = "model")]
    Recipe(crate::train::cli::RecipeArgs),
    /// Generate programs for a data folder with a trained run, execute them, score VSR and IoU.
    #[cfg(feature = "model")]
    Eval(crate::train::cli::EvalArgs),
    /// Measure training throughput (tokens/s) of a model size on a CPU backend.
    #[cfg(feature = "model")]
    BenchTrain(crate::train::cli::BenchTrainArgs),
    /// PNG figures and report/README.md of a run folder (SFT/DPO curves, rollouts, IoU, gallery).
    #[cfg(all(feature = "report", feature = "model", feature = "sandbox"))]
    Report(ReportArgs),
    /// A Qwen2-VL / Qwen2.5-VL recipe (e.g. recipes/qwen2_5_vl_3b_qlora.toml): checks the local checkpoint and data, then QLoRA SFT, eval, DPO.
    #[cfg(feature = "model")]
    QwenRecipe {
        /// Recipe file (TOML).
        file: PathBuf,
    },
    /// Greedy generation with a local Qwen2-VL / Qwen2.5-VL checkpoint directory for one image (CPU, f32).
    #[cfg(feature = "model")]
    QwenGenerate {
        /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json, preprocessor_config.json).
        #[arg(long)]
        model: PathBuf,
        /// Image file (PNG).
        #[arg(long)]
        image: PathBuf,
        /// User prompt after the image (default: the GenCAD-Code prompt).
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value_t = 512)]
        max_new_tokens: usize,
    },
}

#[cfg(all(feature = "report", feature = "model", feature = "sandbox"))]
#[derive(Args)]
pub(crate) struct ReportArgs {
    /// Run folder, e.g. runs/dpo-cpu.
    pub(crate) run: PathBuf,
}

#[cfg(all(feature = "report", feature = "model", feature = "sandbox"))]
fn cmd_report(a: ReportArgs) -> anyhow::Result<()> {
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

#[derive(Args)]
pub(crate) struct ExecArgs {
    /// Program files (`.py`).
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the total and per-program time to stderr.
    #[arg(long)]
    pub(crate) timing: bool,
    #[cfg(feature = "sandbox")]
    #[command(flatten)]
    pub(crate) sandbox: crate::sandbox::cli::SandboxArgs,
}

#[derive(Args)]
pub(crate) struct IouArgs {
    pub(crate) a: PathBuf,
    pub(crate) b: PathBuf,
    /// raw | unitcube | best
    #[arg(long, default_value = "unitcube")]
    pub(crate) normalize: Normalize,
    #[arg(long)]
    pub(crate) json: bool,
    #[cfg(feature = "sandbox")]
    #[command(flatten)]
    pub(crate) sandbox: crate::sandbox::cli::SandboxArgs,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        #[cfg(not(feature = "sandbox"))]
        Cmd::Exec(a) => cmd_exec(a),
        #[cfg(not(feature = "sandbox"))]
        Cmd::Iou(a) => cmd_iou(a),
        #[cfg(feature = "sandbox")]
        Cmd::Exec(a) => crate::sandbox::cli::exec(a),
        #[cfg(feature = "sandbox")]
        Cmd::Iou(a) => crate::sandbox::cli::iou(a),
        #[cfg(feature = "data")]
        Cmd::Render(a) => crate::data::cli::render(a),
        #[cfg(feature = "data")]
        Cmd::Data(c) => crate::data::cli::data(c),
        #[cfg(feature = "model")]
        Cmd::Recipe(a) => crate::train::cli::recipe(a),
        #[cfg(feature = "model")]
        Cmd::Eval(a) => crate::train::cli::eval(a),
        #[cfg(feature = "model")]
        Cmd::BenchTrain(a) => crate::train::cli::bench_train(a),
        #[cfg(all(feature = "report", feature = "model", feature = "sandbox"))]
        Cmd::Report(a) => cmd_report(a),
        #[cfg(feature = "model")]
        Cmd::QwenRecipe { file } => crate::model::qwen2vl::recipe::run(&file).map_err(anyhow::Error::from),
        #[cfg(feature = "model")]
        Cmd::QwenGenerate { model, image, prompt, max_new_tokens } => (|| {
            let img = crate::model::qwen2vl::ImageInput::open(&image)?;
            let prompt = prompt.unwrap_or_else(|| crate::eval::GENCAD_PROMPT.to_string());
            let g = crate::model::qwen2vl::generate_from_dir::<burn::backend::NdArray<f32>>(&model, &img, &prompt, max_new_tokens, &Default::default())?;
            println!("{}", g.text);
            Ok::<(), anyhow::Error>(())
        })(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(feature = "sandbox"))]
fn read_program(path: &PathBuf) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
}

#[cfg(not(feature = "sandbox"))]
#[derive(serde::Serialize)]
struct ExecLine<'a> {
    file: String,
    #[serde(flatten)]
    report: &'a ExecReport,
}

#[cfg(not(feature = "sandbox"))]
fn cmd_exec(a: ExecArgs) -> Result<()> {
    let limits = Limits::default();
    let opts = MeasureOptions::default();
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    for f in &a.files {
        let report = match read_program(f) {
            Ok(src) => exec_program(&src, &limits, &opts).0,
            Err(e) => ExecReport::failure(None, e),
        };
        if a.json {
            let line = ExecLine { file: f.display().to_string(), report: &report };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else if report.ok {
            let b = report.bbox.unwrap_or_default();
            writeln!(
                out,
                "{}: ok  volume {:.6}  bbox [{:.4}, {:.4}, {:.4}] – [{:.4}, {:.4}, {:.4}]  solids {}",
                f.display(),
                report.volume.unwrap_or(f64::NAN),
                b[0], b[1], b[2], b[3], b[4], b[5],
                report.n_solids.unwrap_or(0)
            )?;
        } else {
            writeln!(out, "{}: FAILED  {}", f.display(), report.error.as_deref().unwrap_or("?"))?;
        }
    }
    if a.timing {
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("exec: {} programs in {:.3} s ({:.3} ms per program)", a.files.len(), dt, 1e3 * dt / a.files.len() as f64);
    }
    Ok(())
}

#[cfg(not(feature = "sandbox"))]
fn cmd_iou(a: IouArgs) -> Result<()> {
    let pa = read_program(&a.a).map_err(anyhow::Error::msg).context("reading the first program")?;
    let pb = read_program(&a.b).map_err(anyhow::Error::msg).context("reading the second program")?;
    let r = iou_programs(&pa, &pb, a.normalize, &Limits::default());
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        match (r.iou, &r.error) {
            (Some(v), _) => println!("IoU ({:?}) = {v:.6}", a.normalize),
            (None, Some(e)) => println!("IoU: FAILED  {e}"),
            _ => unreachable!(),
        }
    }
    Ok(())
}
