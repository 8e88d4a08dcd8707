//! `cadvlm infer`'s work: a user's images (PNG/JPEG files or folders of them; never a program file) →
//! one searched program per image (`OUT/<image stem>.py`) and a log line per image
//! (`OUT/infer.jsonl`). A bad image gets an error line and the others go on.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{SearchConfig, SearchResult, Source, TracePoint, propose, search_all};
use crate::data::samples::decode_image;
use crate::data::{GENCAD_PROMPT, Sample};
use crate::exec::Executor;
use crate::geom::render::RgbImage;
use crate::train::TrainError;
use crate::train::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{0}")]
    Policy(#[from] TrainError),
}

fn ierr(path: &Path, msg: impl std::fmt::Display) -> InferError {
    InferError::Io {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Image files named by `inputs`: files as given, folders' `.png`/`.jpg`/`.jpeg` files sorted by name.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, InferError> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| ierr(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                            ["png", "jpg", "jpeg"].contains(&x.to_ascii_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
            out.extend(files);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(ierr(p, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(InferError::Io {
            path: inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            msg: "no .png/.jpg/.jpeg images found".into(),
        });
    }
    Ok(out)
}

/// Read one image as a sample for the policy (no program).
pub fn read_image(path: &Path) -> Result<Sample, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let (rgb, width, height) = decode_image(&bytes)?;
    if width == 0 || height == 0 {
        return Err("the image has no pixels".into());
    }
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(Sample {
        id,
        prompt: GENCAD_PROMPT.to_string(),
        program: String::new(),
        rgb,
        width,
        height,
    })
}

/// One line of `infer.jsonl`.
#[derive(Serialize)]
pub struct InferLine<'a> {
    pub image: String,
    /// The written program's file name (absent when nothing executed).
    pub program: Option<String>,
    pub score: Option<f64>,
    pub mask_iou: Option<f64>,
    pub edge: Option<f64>,
    pub source: Option<Source>,
    pub greedy_score: Option<f64>,
    pub renders: usize,
    pub ms: f64,
    pub candidates: Vec<CandidateLine<'a>>,
    /// `[renders, score]` at each improvement of the best program.
    pub trace: Vec<(usize, f64)>,
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct CandidateLine<'a> {
    pub source: Source,
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// What `infer` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferSummary {
    pub images: usize,
    pub written: usize,
    pub errors: usize,
    pub seconds: f64,
}

/// Settings of `infer` besides the search's.
#[derive(Clone, Debug)]
pub struct InferSettings {
    pub search: SearchConfig,
    pub max_new_tokens: usize,
    /// Generation rows per batch.
    pub batch: usize,
    /// Threads of the search (`None`: all cores).
    pub threads: Option<usize>,
}

/// Search a program for every image of `images` and write `out/<stem>.py` + `out/infer.jsonl`.
/// `on_phase(name, total)` starts a progress phase, `tick()` advances it.
pub fn infer(
    policy: &dyn Policy,
    executor: &dyn Executor,
    images: &[PathBuf],
    settings: &InferSettings,
    out: &Path,
    on_phase: &mut dyn FnMut(&str, usize),
    tick: &(dyn Fn() + Sync),
) -> Result<InferSummary, InferError> {
    settings.search.validate().map_err(|e| ierr(out, e))?;
    std::fs::create_dir_all(out).map_err(|e| ierr(out, e))?;
    let t0 = std::time::Instant::now();
    let read: Vec<Result<Sample, String>> = images.iter().map(|p| read_image(p)).collect();
    let ok: Vec<(usize, &Sample)> = read
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().map(|s| (i, s)))
        .collect();
    let samples: Vec<&Sample> = ok.iter().map(|(_, s)| *s).collect();
    on_phase("propose", samples.len());
    let proposals = if samples.is_empty() {
        Vec::new()
    } else {
        propose(
            policy,
            &samples,
            &settings.search,
            settings.max_new_tokens,
            settings.batch,
            &mut |_| tick(),
        )?
    };
    let rgb: Vec<RgbImage> = samples.iter().map(|s| super::sample_image(s)).collect();
    on_phase("search", samples.len());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(settings.threads.unwrap_or(0))
        .build()
        .map_err(|e| ierr(out, e))?;
    let found = pool.install(|| search_all(executor, &rgb, &proposals, &settings.search, tick));
    let mut results: Vec<Option<Result<SearchResult, String>>> =
        (0..images.len()).map(|_| None).collect();
    for ((i, _), r) in ok.iter().zip(found) {
        results[*i] = Some(r);
    }
    let log = out.join("infer.jsonl");
    let tmp = out.join("infer.jsonl.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| ierr(&tmp, e))?);
    let mut summary = InferSummary {
        images: images.len(),
        ..Default::default()
    };
    let mut used = std::collections::BTreeSet::new();
    for (k, path) in images.iter().enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("image{k}"));
        let mut name = format!("{stem}.py");
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{stem}-{n}.py");
            n += 1;
        }
        let err = |e: String| InferLine {
            image: path.display().to_string(),
            program: None,
            score: None,
            mask_iou: None,
            edge: None,
            source: None,
            greedy_score: None,
            renders: 0,
            ms: 0.0,
            candidates: Vec::new(),
            trace: Vec::new(),
            error: Some(e),
        };
        let line = match (&read[k], &results[k]) {
            (Err(e), _) => err(format!("cannot read the image: {e}")),
            (Ok(_), Some(Err(e))) => err(e.clone()),
            (Ok(_), None) => err("not searched".into()),
            (Ok(_), Some(Ok(r))) => {
                let program = match &r.program {
                    Some(p) => {
                        let file = out.join(&name);
                        std::fs::write(&file, p).map_err(|e| ierr(&file, e))?;
                        summary.written += 1;
                        Some(name.clone())
                    }
                    None => None,
                };
                InferLine {
                    image: path.display().to_string(),
                    error: program
                        .is_none()
                        .then(|| "no candidate program executed".to_string()),
                    program,
                    score: r.score.map(|s| s.total),
                    mask_iou: r.score.map(|s| s.mask_iou),
                    edge: r.score.map(|s| s.edge),
                    source: r.source,
                    greedy_score: r.greedy_score,
                    renders: r.renders,
                    ms: r.ms,
                    candidates: r
                        .candidates
                        .iter()
                        .map(|c| CandidateLine {
                            source: c.source,
                            score: c.score,
                            error: c.error.as_deref(),
                        })
                        .collect(),
                    trace: r
                        .trace
                        .iter()
                        .map(|t: &TracePoint| (t.renders, t.score))
                        .collect(),
                }
            }
        };
        summary.errors += line.error.is_some() as usize;
        serde_json::to_writer(&mut f, &line).map_err(|e| ierr(&tmp, e))?;
        f.write_all(b"\n").map_err(|e| ierr(&tmp, e))?;
    }
    f.flush().map_err(|e| ierr(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &log).map_err(|e| ierr(&log, e))?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}
