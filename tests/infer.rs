//! `cadvlm infer` end to end with the committed small model on real GenCAD-Code images: images only
//! in, a program per image out; the programs beside the images change nothing; a bad image does not
//! stop the others; the search never returns a program scoring below the greedy one.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEV: &str = "../shared/data/gencad-test100-dev";
const IDS: [&str; 3] = ["00002718", "00024819", "00059989"];

fn dev() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEV);
    if d.exists() {
        Some(d)
    } else {
        eprintln!("skipped: {DEV} is absent");
        None
    }
}

fn fresh(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cadvlm-infer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn infer(images: &Path, out: &Path) -> (String, Vec<serde_json::Value>) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sft-cpu-small");
    let o = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .args(["infer", "--run"])
        .arg(&model)
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out)
        .args(["--search-samples", "3", "--budget", "40", "--threads", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "infer failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = std::fs::read_to_string(out.join("infer.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (stdout, lines)
}

/// `infer.jsonl` without its timings.
fn untimed(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("ms");
            l
        })
        .collect()
}

#[test]
fn infer_on_images_only_with_a_bad_image_and_programs_beside() {
    let Some(dev) = dev() else { return };
    let only = fresh("only");
    for id in IDS {
        std::fs::copy(
            dev.join(format!("{id}.png")),
            only.join(format!("{id}.png")),
        )
        .unwrap();
    }
    std::fs::write(only.join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(only.join("empty.jpg"), b"").unwrap();
    let out_a = fresh("out-a");
    let (stdout, lines) = infer(&only, &out_a);
    assert!(
        stdout.contains("5 images: 3 programs written, 2 errors"),
        "{stdout}"
    );
    assert_eq!(lines.len(), 5);
    let by_image = |name: &str| {
        lines
            .iter()
            .find(|l| l["image"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    assert!(
        by_image("broken.png")["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the image")
    );
    assert!(
        by_image("empty.jpg")["error"]
            .as_str()
            .unwrap()
            .contains("empty file")
    );
    for id in IDS {
        let l = by_image(&format!("{id}.png"));
        assert!(l["error"].is_null(), "{l}");
        let program = std::fs::read_to_string(out_a.join(format!("{id}.py"))).unwrap();
        assert!(program.contains("cq.Workplane"), "{program}");
        // the chosen program executes, and scores at least as well as the greedy one
        let (score, greedy) = (
            l["score"].as_f64().unwrap(),
            l["greedy_score"].as_f64().unwrap(),
        );
        assert!(score >= greedy, "{id}: search {score} < greedy {greedy}");
        assert!(l["renders"].as_u64().unwrap() <= 40);
        let cands = l["candidates"].as_array().unwrap();
        assert_eq!(
            cands.iter().filter(|c| c["source"] != "template").count(),
            4,
            "greedy + 3 samples"
        );
        assert_eq!(cands[0]["source"], "greedy");
    }

    // the same images with their ground-truth programs beside them: identical outputs
    let beside = fresh("beside");
    for id in IDS {
        std::fs::copy(
            dev.join(format!("{id}.png")),
            beside.join(format!("{id}.png")),
        )
        .unwrap();
        std::fs::copy(
            dev.join(format!("{id}.py")),
            beside.join(format!("{id}.py")),
        )
        .unwrap();
    }
    std::fs::write(beside.join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(beside.join("empty.jpg"), b"").unwrap();
    let out_b = fresh("out-b");
    let (_, lines_b) = infer(&beside, &out_b);
    for id in IDS {
        let a = std::fs::read(out_a.join(format!("{id}.py"))).unwrap();
        let b = std::fs::read(out_b.join(format!("{id}.py"))).unwrap();
        assert_eq!(
            a, b,
            "{id}: outputs differ with the program beside the image"
        );
    }
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        untimed(&v)
            .into_iter()
            .map(|mut l| {
                l["image"] = l["image"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .into();
                l
            })
            .collect()
    };
    assert_eq!(strip(lines), strip(lines_b));
    for d in [only, beside, out_a, out_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn infer_names_a_missing_input_and_a_bad_flag() {
    let o = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .args([
            "infer",
            "--run",
            "models/sft-cpu-small",
            "--images",
            "/nonexistent/dir",
            "--out",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/dir: no such file or folder")
    );
    let o = Command::new(env!("CARGO_BIN_EXE_cadvlm"))
        .args([
            "infer",
            "--run",
            "models/sft-cpu-small",
            "--images",
            ".",
            "--out",
            "/tmp/x",
            "--budget",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--budget must be at least 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
