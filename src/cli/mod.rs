//! The `cadvlm` command line: argument parsing and dispatch, one file per subcommand. All work lives
//! in the library layers below; nothing here is imported by them.

mod bench_sample;
mod bench_train;
mod data;
mod eval;
mod exec;
mod infer;
mod iou;
mod qwen_generate;
mod recipe;
mod render;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exec::peak_rss_mib;

#[derive(Parser)]
#[command(
    name = "cadvlm",
    version,
    about = "Train VLMs to write CadQuery code; execute and measure CadQuery programs exactly"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Execute programs and report volume, bbox, solids and validity (one line per file).
    Exec(exec::ExecArgs),
    /// IoU of two programs' solids.
    Iou(iou::IouArgs),
    /// Render a program to a PNG (GenCAD-Code style or cadrille's four views).
    Render(render::RenderArgs),
    /// Synthetic training data, shard statistics, the renderer's golden check.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Run a recipe: data, tokenizer, SFT, eval, DPO, report (finished stages are reused); the small
    /// VLM or a Qwen2-VL / Qwen2.5-VL checkpoint (`[model] path`).
    Recipe(recipe::RecipeArgs),
    /// Generate programs for a data folder with a trained run, execute them, score VSR and IoU.
    Eval(eval::EvalArgs),
    /// Image → CadQuery program: propose with a trained model, render and compare, refine (images only).
    Infer(infer::InferArgs),
    /// Measure training throughput (tokens/s) of a model size on a CPU backend.
    BenchTrain(bench_train::BenchTrainArgs),
    /// Measure batched KV-cache decoding throughput (tokens/s) and CPU cores used.
    BenchSample(bench_sample::BenchSampleArgs),
    /// PNG figures and report/README.md of a run folder (SFT/DPO curves, rollouts, IoU, gallery).
    Report(report::ReportArgs),
    /// Greedy generation with a local Qwen2-VL / Qwen2.5-VL checkpoint directory for one image (CPU, f32).
    QwenGenerate(qwen_generate::QwenGenerateArgs),
}

pub fn main() -> ExitCode {
    let res = match Cli::parse().cmd {
        Cmd::Exec(a) => exec::run(a),
        Cmd::Iou(a) => iou::run(a),
        Cmd::Render(a) => render::run(a),
        Cmd::Data(c) => data::run(c),
        Cmd::Recipe(a) => recipe::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Infer(a) => infer::run(a),
        Cmd::BenchTrain(a) => bench_train::run(a),
        Cmd::BenchSample(a) => bench_sample::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::QwenGenerate(a) => qwen_generate::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap's own checks of every subcommand (unique argument names, valid defaults, ...)
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
