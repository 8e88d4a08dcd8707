//! Golden checks of the renderer against the real GenCAD-Code images, and the render API's errors.

#![cfg(feature = "data")]

use std::path::{Path, PathBuf};

use cadvlm::cad::{Limits, execute};
use cadvlm::data::images::{self, ImageError, compare, golden_pairs, read_png, render_program};
use cadvlm::geom::csg::RayScratch;
use cadvlm::geom::render::{FACE_GREY, RenderOptions, Style, render};

fn real_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gencad-test100-dev");
    p.is_dir().then_some(p)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/render")
        .join(name)
}

/// Pairs checked in under fixtures/render (a real image + its program), so the golden check runs
/// without the shared data too.
#[test]
fn golden_fixtures_match_the_real_images() {
    let pairs = golden_pairs(&fixture("")).expect("fixtures/render has ID.png + ID.py pairs");
    assert!(pairs.len() >= 3);
    let mut scratch = RayScratch::default();
    for (id, png, py) in pairs {
        let real = read_png(&png).unwrap();
        let src = std::fs::read_to_string(&py).unwrap();
        let ours = render_program(&src, &py, &RenderOptions::default(), &mut scratch).unwrap();
        let r = compare(&id, &real, &ours);
        // framing rule reproduced: same extent (±2 px) and centre (±1 px) without normalisation
        assert!(
            r.extent_ours.abs_diff(r.extent_real) <= 2,
            "{id}: extent {} vs real {}",
            r.extent_ours,
            r.extent_real
        );
        assert!(
            r.centre_offset.iter().all(|d| d.abs() <= 1.0),
            "{id}: centre offset {:?}",
            r.centre_offset
        );
        assert!(
            r.mask_iou >= 0.97,
            "{id}: normalised mask IoU {}",
            r.mask_iou
        );
        assert!(
            r.raw_mask_iou >= 0.97,
            "{id}: raw mask IoU {}",
            r.raw_mask_iou
        );
        assert_eq!(r.grey_ours, Some(FACE_GREY), "{id}");
        assert!(
            r.face_grey_mae < 2.0,
            "{id}: face grey MAE {}",
            r.face_grey_mae
        );
        // thin lines: the black share of the foreground is close to the real one
        assert!(
            (r.line_share_ours - r.line_share_real).abs() < 0.02,
            "{id}: line share {} vs {}",
            r.line_share_ours,
            r.line_share_real
        );
    }
}

/// The bar over every real pair in the shared data (skipped when it is absent).
#[test]
fn golden_all_real_pairs_mean_mask_iou() {
    let Some(dir) = real_dir() else {
        eprintln!("skipped: ../shared/data/gencad-test100-dev not present");
        return;
    };
    let rows = images::golden(&dir, &RenderOptions::default()).unwrap();
    let ok: Vec<_> = rows.iter().filter_map(|(r, _)| r.as_ref().ok()).collect();
    assert!(
        ok.len() >= 45,
        "only {} of {} pairs rendered",
        ok.len(),
        rows.len()
    );
    let mean = ok.iter().map(|r| r.mask_iou).sum::<f64>() / ok.len() as f64;
    assert!(mean >= 0.98, "mean normalised mask IoU {mean}");
    let grey_ok = ok
        .iter()
        .filter(|r| r.grey_ours.is_some_and(|g| (g as i32 - 141).abs() <= 10))
        .count();
    assert!(
        grey_ok as f64 >= 0.95 * ok.len() as f64,
        "face grey off in {} renders",
        ok.len() - grey_ok
    );
}

#[test]
fn a_program_that_does_not_execute_is_a_clear_error() {
    let bad = "import cadquery as cq\nsolid = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0))).extrude(1.0)\n";
    let err = render_program(
        bad,
        Path::new("bad.py"),
        &RenderOptions::default(),
        &mut RayScratch::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::Program { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("bad.py: the program does not execute: line "),
        "{msg}"
    );
}

#[test]
fn sizes_styles_and_png_round_trip() {
    let src = std::fs::read_to_string(fixture("00059989.py")).unwrap();
    let solid = execute(&src, &Limits::default()).unwrap();
    for (style, size) in [
        (Style::Gencad, 224),
        (Style::Gencad, 97),
        (Style::Multiview, 256),
        (Style::Multiview, 128),
    ] {
        let img = render(
            &solid,
            &RenderOptions {
                size,
                ..RenderOptions::style(style)
            },
        )
        .unwrap();
        assert_eq!((img.width, img.height), (size, size));
        let png = images::encode_png(&img).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(images::decode_png(&png, "x").unwrap(), img);
        let fg = img.pixels.chunks_exact(3).filter(|p| p[0] < 230).count();
        assert!(
            fg > (size * size / 40) as usize,
            "{style:?} {size}: only {fg} foreground pixels"
        );
    }
    assert!(
        images::decode_png(b"not a png", "junk")
            .unwrap_err()
            .to_string()
            .starts_with("junk: not a decodable PNG")
    );
}
