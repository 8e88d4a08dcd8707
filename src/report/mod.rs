//! PNG figures (plotters, bitmap backend) and the markdown summary of a run (`cadvlm report RUN_DIR`).
//!
//! The plotting functions here take plain data (series of points, value lists, images) so they are
//! independent of where the numbers come from; [`run`] reads a run folder and calls them. Text is drawn
//! with DejaVu Sans embedded in the binary (`assets/fonts`, Bitstream Vera licence), so no system font
//! is needed at run time.

#[cfg(feature = "model")]
pub mod run;

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::element::BitMapElement;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
pub static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("drawing {path}: {msg}")]
    Draw { path: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("nothing to plot for {0}")]
    Empty(String),
}

fn derr(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Register the embedded font with plotters (once per process).
pub fn init_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // the bytes are a valid TTF compiled into the binary; a failure here is a build problem
        plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("embedded DejaVuSans.ttf is not a valid font"));
    });
}

/// Colours of series, in order (colour-blind-friendly Okabe–Ito palette).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
];

/// A named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn bounds(series: &[&Series]) -> Option<(f64, f64, f64, f64)> {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let mut b: Option<(f64, f64, f64, f64)> = None;
    for &(x, y) in pts {
        b = Some(match b {
            None => (x, x, y, y),
            Some((x0, x1, y0, y1)) => (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
        });
    }
    b.map(|(x0, x1, y0, y1)| {
        let (x1, y1) = (
            if x1 > x0 { x1 } else { x0 + 1.0 },
            if y1 > y0 { y1 } else { y0 + 1.0 },
        );
        let pad = 0.05 * (y1 - y0);
        (x0, x1, y0 - pad, y1 + pad)
    })
}

/// One line chart in a drawing area (a panel of a figure).
fn line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[&Series],
    hline: Option<(f64, &str)>,
) -> Result<(), String> {
    let Some((x0, x1, mut y0, mut y1)) = bounds(series) else {
        area.draw(&Text::new(
            format!("{title}: no data"),
            (20, 20),
            (FONT_NAME, 18).into_font(),
        ))
        .map_err(|e| e.to_string())?;
        return Ok(());
    };
    if let Some((h, _)) = hline {
        y0 = y0.min(h);
        y1 = y1.max(h);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_NAME, 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .x_label_formatter(&|v: &f64| {
            if (x1 - x0) >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| e.to_string())?;
    if let Some((h, name)) = hline {
        let col = RGBColor(150, 150, 150);
        chart
            .draw_series(LineSeries::new(vec![(x0, h), (x1, h)], col.stroke_width(1)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col));
    }
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let ann = chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        ann.label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        if pts.len() <= 40 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_NAME, 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A line chart: `panels` side by side, each (title, y label, series, optional reference line).
pub fn line_figure(
    path: &Path,
    xlabel: &str,
    panels: &[(&str, &str, Vec<Series>, Option<(f64, &str)>)],
    panel_size: (u32, u32),
) -> Result<(), ReportError> {
    init_font();
    if panels.is_empty() {
        return Err(ReportError::Empty(path.display().to_string()));
    }
    let w = panel_size.0 * panels.len() as u32;
    let root = BitMapBackend::new(path, (w, panel_size.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| derr(path, e))?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, (title, ylabel, series, hline)) in areas.iter().zip(panels) {
        let refs: Vec<&Series> = series.iter().collect();
        line_panel(area, title, xlabel, ylabel, &refs, *hline).map_err(|e| derr(path, e))?;
    }
    root.present().map_err(|e| derr(path, e))
}

/// Counts of `values` in `bins` equal bins over `[lo, hi]` (values outside are clamped in).
pub fn histogram_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut c = vec![0usize; bins.max(1)];
    let w = (hi - lo) / bins.max(1) as f64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / w).floor().max(0.0) as usize).min(c.len() - 1);
        c[i] += 1;
    }
    c
}

/// Overlaid histograms as shares (each series sums to 1) over `[lo, hi]`; an optional extra bar on
/// the left counts `failures[i]` for series `i` (programs without an IoU), labelled `fail_label`.
#[allow(clippy::too_many_arguments)]
pub fn histogram_figure(
    path: &Path,
    title: &str,
    xlabel: &str,
    series: &[(String, Vec<f64>, usize)],
    lo: f64,
    hi: f64,
    bins: usize,
    fail_label: Option<&str>,
) -> Result<(), ReportError> {
    init_font();
    if series.is_empty() {
        return Err(ReportError::Empty(path.display().to_string()));
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| derr(path, e))?;
    let w = (hi - lo) / bins as f64;
    let x0 = if fail_label.is_some() {
        lo - 1.5 * w
    } else {
        lo
    };
    let mut shares: Vec<(Vec<f64>, f64)> = Vec::new();
    let mut ymax: f64 = 0.0;
    for (_, v, fails) in series {
        let n = (v.len() + fails).max(1) as f64;
        let s: Vec<f64> = histogram_counts(v, lo, hi, bins)
            .iter()
            .map(|&c| c as f64 / n)
            .collect();
        let f = *fails as f64 / n;
        ymax = ymax.max(s.iter().cloned().fold(f, f64::max));
        shares.push((s, f));
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_NAME, 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..hi, 0.0..(ymax * 1.15).max(0.05))
        .map_err(|e| derr(path, e))?;
    let xdesc = match fail_label {
        Some(f) => format!("{xlabel}   (bar left of 0: {f})"),
        None => xlabel.to_string(),
    };
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc("share of programs")
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| derr(path, e))?;
    let k = series.len() as f64;
    for (i, ((name, v, fails), (s, f))) in series.iter().zip(&shares).enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        // bars of a bin side by side, one per series
        let bw = w / k;
        let mut rects: Vec<Rectangle<(f64, f64)>> = s
            .iter()
            .enumerate()
            .map(|(b, &y)| {
                let xl = lo + b as f64 * w + i as f64 * bw;
                Rectangle::new(
                    [(xl + 0.05 * bw, 0.0), (xl + 0.95 * bw, y)],
                    col.mix(0.8).filled(),
                )
            })
            .collect();
        if fail_label.is_some() {
            let xl = lo - 1.25 * w + i as f64 * bw;
            rects.push(Rectangle::new(
                [(xl + 0.05 * bw, 0.0), (xl + 0.95 * bw, *f)],
                col.mix(0.45).filled(),
            ));
        }
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        let label = if fail_label.is_some() {
            format!(
                "{name}: n {}, {} failed, mean (valid) {:.3}",
                v.len() + fails,
                fails,
                mean
            )
        } else {
            format!("{name}: n {}, mean {:.3}", v.len(), mean)
        };
        chart
            .draw_series(rects)
            .map_err(|e| derr(path, e))?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 16, y + 6)], col.mix(0.8).filled())
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_NAME, 14))
        .position(SeriesLabelPosition::UpperMiddle)
        .draw()
        .map_err(|e| derr(path, e))?;
    root.present().map_err(|e| derr(path, e))
}

/// Grouped bars: one group per category (x), one bar per series, values printed on the bars.
/// `panels` are drawn side by side: (title, y label, y max, categories, series of (name, values)).
#[allow(clippy::type_complexity)]
pub fn bar_figure(
    path: &Path,
    panels: &[(&str, &str, f64, Vec<String>, Vec<(String, Vec<f64>)>)],
) -> Result<(), ReportError> {
    init_font();
    if panels.is_empty() {
        return Err(ReportError::Empty(path.display().to_string()));
    }
    let root = BitMapBackend::new(path, (560 * panels.len() as u32, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| derr(path, e))?;
    for (area, (title, ylabel, ymax, cats, series)) in
        root.split_evenly((1, panels.len())).iter().zip(panels)
    {
        let n = cats.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(*title, (FONT_NAME, 20))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..*ymax)
            .map_err(|e| derr(path, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("evaluation set")
            .y_desc(*ylabel)
            // category names are drawn below the slots (plotters' segment labels drift off-centre)
            .x_label_formatter(&|_: &SegmentValue<usize>| String::new())
            .label_style((FONT_NAME, 14))
            .axis_desc_style((FONT_NAME, 15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| derr(path, e))?;
        let k = series.len().max(1) as f64;
        {
            let (xr, yr) = chart.plotting_area().get_pixel_range();
            let seg = (xr.end - xr.start) as f64 / n as f64;
            for (ci, cat) in cats.iter().enumerate() {
                let cx = xr.start + ((ci as f64 + 0.5) * seg) as i32;
                let est = (cat.chars().count() as i32) * 4; // ~half the text width at 14 px
                root.draw(&Text::new(
                    cat.clone(),
                    (cx - est, yr.end + 6),
                    (FONT_NAME, 14).into_font(),
                ))
                .map_err(|e| derr(path, e))?;
            }
        }
        for (si, (name, vals)) in series.iter().enumerate() {
            let col = PALETTE[si % PALETTE.len()];
            // bars in pixel space (backend coordinates), offset per series within a category
            let drawn: Vec<_> = vals
                .iter()
                .enumerate()
                .map(|(ci, &v)| {
                    // the plotting area split into n equal category slots
                    let (xr, _) = chart.plotting_area().get_pixel_range();
                    let seg = (xr.end - xr.start) as f64 / n as f64;
                    let l = xr.start + (ci as f64 * seg) as i32;
                    let (_, base) = chart.backend_coord(&(SegmentValue::CenterOf(ci), 0.0));
                    let (_, top) = chart.backend_coord(&(SegmentValue::CenterOf(ci), v.max(0.0)));
                    let bw = 0.8 * seg / k;
                    let x0 = l + (0.1 * seg + si as f64 * bw) as i32;
                    let x1 = x0 + bw as i32 - 2;
                    (x0, x1, top, base, v)
                })
                .collect();
            for &(x0, x1, top, base, v) in &drawn {
                root.draw(&Rectangle::new([(x0, top), (x1, base)], col.filled()))
                    .map_err(|e| derr(path, e))?;
                root.draw(&Text::new(
                    format!("{v:.3}"),
                    ((x0 + x1) / 2 - 18, top - 18),
                    (FONT_NAME, 13).into_font(),
                ))
                .map_err(|e| derr(path, e))?;
            }
            chart
                .draw_series(std::iter::empty::<Rectangle<(SegmentValue<usize>, f64)>>())
                .map_err(|e| derr(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], col.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_NAME, 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| derr(path, e))?;
    }
    root.present().map_err(|e| derr(path, e))
}

/// An RGB8 tile for the gallery.
#[derive(Clone, Debug)]
pub struct Tile {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// One gallery row: the target image and two programs rendered (SFT / DPO, or greedy / searched;
/// None: it failed to execute).
#[derive(Clone, Debug)]
pub struct GalleryRow {
    pub id: String,
    pub target: Tile,
    pub a: Option<Tile>,
    pub b: Option<Tile>,
    pub a_iou: Option<f64>,
    pub b_iou: Option<f64>,
}

/// Nearest-neighbour resize to a `side`×`side` tile (letterboxed on white).
pub fn fit_tile(t: &Tile, side: u32) -> Tile {
    let s = side as usize;
    let (w, h) = (t.width as usize, t.height as usize);
    let scale = (s as f64 / w.max(1) as f64).min(s as f64 / h.max(1) as f64);
    let (nw, nh) = (
        ((w as f64 * scale) as usize).max(1),
        ((h as f64 * scale) as usize).max(1),
    );
    let (ox, oy) = ((s - nw.min(s)) / 2, (s - nh.min(s)) / 2);
    let mut out = vec![255u8; s * s * 3];
    for y in 0..nh.min(s) {
        for x in 0..nw.min(s) {
            let sx = ((x as f64 + 0.5) / scale) as usize;
            let sy = ((y as f64 + 0.5) / scale) as usize;
            let (sx, sy) = (sx.min(w - 1), sy.min(h - 1));
            let i = (sy * w + sx) * 3;
            let o = ((y + oy) * s + x + ox) * 3;
            out[o..o + 3].copy_from_slice(&t.rgb[i..i + 3]);
        }
    }
    Tile {
        rgb: out,
        width: side,
        height: side,
    }
}

/// The gallery: `cols` samples per row, each as target | SFT | DPO with the IoUs under them.
/// `labels`: the column heads (target, first program, second program).
pub fn gallery_figure(
    path: &Path,
    title: &str,
    rows: &[GalleryRow],
    cols: usize,
    side: u32,
    iou_name: &str,
    labels: [&str; 3],
) -> Result<(), ReportError> {
    init_font();
    if rows.is_empty() {
        return Err(ReportError::Empty(path.display().to_string()));
    }
    let cols = cols.max(1);
    let nrows = rows.len().div_ceil(cols);
    let gap = 16u32;
    let cell_w = 3 * side + 2 * 4 + gap;
    let cell_h = side + 50;
    let head = 70u32;
    let (w, h) = (
        cols as u32 * cell_w + gap,
        head + nrows as u32 * cell_h + 10,
    );
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| derr(path, e))?;
    let font = |s: u32| (FONT_NAME, s).into_font();
    root.draw(&Text::new(title.to_string(), (gap as i32, 10), font(22)))
        .map_err(|e| derr(path, e))?;
    for c in 0..cols {
        for (j, name) in labels.iter().enumerate() {
            let x = (gap + c as u32 * cell_w + j as u32 * (side + 4)) as i32;
            root.draw(&Text::new(name.to_string(), (x + 4, 44), font(15)))
                .map_err(|e| derr(path, e))?;
        }
    }
    for (k, r) in rows.iter().enumerate() {
        let (c, rr) = ((k % cols) as u32, (k / cols) as u32);
        let x0 = gap + c * cell_w;
        let y0 = head + rr * cell_h;
        for (j, t) in [Some(&r.target), r.a.as_ref(), r.b.as_ref()]
            .into_iter()
            .enumerate()
        {
            let x = (x0 + j as u32 * (side + 4)) as i32;
            match t {
                Some(t) => {
                    let t = fit_tile(t, side);
                    let el = BitMapElement::<(i32, i32)>::with_owned_buffer(
                        (x, y0 as i32),
                        (side, side),
                        t.rgb,
                    )
                    .ok_or_else(|| derr(path, "tile buffer too small"))?;
                    root.draw(&el).map_err(|e| derr(path, e))?;
                }
                None => {
                    root.draw(&Rectangle::new(
                        [(x, y0 as i32), (x + side as i32, (y0 + side) as i32)],
                        RGBColor(250, 228, 228).filled(),
                    ))
                    .map_err(|e| derr(path, e))?;
                    root.draw(&Text::new(
                        "does not execute",
                        (x + 10, (y0 + side / 2) as i32 - 8),
                        font(15),
                    ))
                    .map_err(|e| derr(path, e))?;
                }
            }
            root.draw(&Rectangle::new(
                [(x, y0 as i32), (x + side as i32, (y0 + side) as i32)],
                RGBColor(200, 200, 200),
            ))
            .map_err(|e| derr(path, e))?;
        }
        let iou = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        let y = (y0 + side + 6) as i32;
        let short: String = r.id.chars().take(18).collect();
        root.draw(&Text::new(short, (x0 as i32 + 2, y), font(14)))
            .map_err(|e| derr(path, e))?;
        root.draw(&Text::new(
            format!("{iou_name} {}", iou(r.a_iou)),
            ((x0 + side + 4) as i32 + 2, y),
            font(14),
        ))
        .map_err(|e| derr(path, e))?;
        let better = match (r.a_iou, r.b_iou) {
            (Some(a), Some(b)) if b > a + 1e-9 => RGBColor(0, 130, 60),
            (_, Some(_)) | (None, None) => BLACK,
            (Some(_), None) => RGBColor(190, 30, 30),
        };
        root.draw(&Text::new(
            format!("{iou_name} {}", iou(r.b_iou)),
            ((x0 + 2 * (side + 4)) as i32 + 2, y),
            font(14).color(&better),
        ))
        .map_err(|e| derr(path, e))?;
    }
    root.present().map_err(|e| derr(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_difference_matches_ids_and_counts_failures_as_zero() {
        use super::run::{EvalRow, paired_difference};
        let row = |id: &str, iou: Option<f64>| EvalRow {
            id: id.into(),
            program: String::new(),
            ok: iou.is_some(),
            iou_unitcube: iou,
            iou_best: iou,
        };
        let a = vec![
            row("x", Some(0.5)),
            row("y", Some(0.2)),
            row("z", None),
            row("x", Some(0.9)),
        ];
        let b = vec![
            row("z", Some(0.4)),
            row("y", Some(0.2)),
            row("x", None),
            row("w", Some(1.0)),
        ];
        let p = paired_difference(&a, &b, |r| r.iou_unitcube).unwrap();
        // z: 0.4 − 0, y: 0, x: 0 − 0.5 (the first x of a); w has no partner
        assert_eq!((p.n, p.better, p.worse, p.tied), (3, 1, 1, 1));
        assert!((p.mean - (-0.1 / 3.0)).abs() < 1e-12);
        let var =
            ((0.4f64 + 0.1 / 3.0).powi(2) + (0.1f64 / 3.0).powi(2) + (-0.5f64 + 0.1 / 3.0).powi(2))
                / 2.0;
        assert!((p.se - (var / 3.0).sqrt()).abs() < 1e-12);
        assert!(paired_difference(&a[..1], &b, |r| r.iou_best).is_none());
    }

    #[test]
    fn histogram_counts_bins_and_clamps() {
        let c = histogram_counts(
            &[0.0, 0.05, 0.1, 0.95, 1.0, 1.5, -0.2, f64::NAN],
            0.0,
            1.0,
            10,
        );
        assert_eq!(c.iter().sum::<usize>(), 7);
        assert_eq!(c[0], 3); // 0.0, 0.05, -0.2 clamped
        assert_eq!(c[1], 1);
        assert_eq!(c[9], 3); // 0.95, 1.0, 1.5 clamped
    }

    #[test]
    fn fit_tile_letterboxes() {
        let t = Tile {
            rgb: vec![0u8; 4 * 2 * 3],
            width: 4,
            height: 2,
        };
        let f = fit_tile(&t, 8);
        assert_eq!((f.width, f.height, f.rgb.len()), (8, 8, 8 * 8 * 3));
        // rows 0-1 are white padding, row 4 is the (black) image
        assert_eq!(f.rgb[0], 255);
        assert_eq!(f.rgb[(4 * 8 + 3) * 3], 0);
    }
}
