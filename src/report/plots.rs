//! Drawing: each figure is a value that draws itself on any plotters
//! backend, rendered to PNG or SVG by the output's extension. Legends sit in
//! their own strip beside the chart so they never cover data.

use super::data::{
    lambda_label, trace_stem, Heatmap, ImbalanceCdf, MemoryPanel, Pair, PhaseBar, SpeedupCurve,
    PHASES,
};
use super::font::{self, FAMILY};
use super::ReportError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Something that can be drawn at a fixed pixel size.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

trait Ctx<T> {
    fn s(self) -> Result<T, String>;
}
impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn s(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Render `fig` to `out`: `.png` or `.svg`. Written under a temporary name
/// and renamed, so a failure leaves no partial file.
pub fn render(fig: &impl Figure, out: &Path) -> Result<(), ReportError> {
    font::ensure();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let size = fig.size();
    let fail = |e: String| ReportError::Draw(out.to_path_buf(), e);
    match ext.as_str() {
        "svg" => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                fig.draw(&root).map_err(fail)?;
                root.present().s().map_err(fail)?;
            }
            crate::io::write_atomic(out, svg.as_bytes())
                .map_err(|e| ReportError::Io(out.to_path_buf(), e))
        }
        "png" => {
            let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir {
                std::fs::create_dir_all(d).map_err(|e| ReportError::Io(d.to_path_buf(), e))?;
            }
            let name = out.file_name().unwrap_or_default().to_string_lossy();
            // The encoder picks the format from the extension, so keep ".png".
            let tmp = out.with_file_name(format!(".{name}.tmp{}.png", std::process::id()));
            let res = (|| {
                let root = BitMapBackend::new(&tmp, size).into_drawing_area();
                fig.draw(&root)?;
                root.present().s()
            })();
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(e));
            }
            std::fs::rename(&tmp, out).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ReportError::Io(out.to_path_buf(), e)
            })
        }
        _ => Err(ReportError::Extension(out.to_path_buf())),
    }
}

/// Tableau 10, readable on white and distinct in greyscale order.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const GREY: RGBColor = RGBColor(110, 110, 110);
const LEGEND_W: u32 = 360;

fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

fn bold(size: u32) -> TextStyle<'static> {
    (FAMILY, size)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK)
}

#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Dotted,
    Point,
    Box,
    Tick,
}

struct Entry {
    label: String,
    color: RGBColor,
    mark: Mark,
}

fn entry(label: impl Into<String>, color: RGBColor, mark: Mark) -> Entry {
    Entry {
        label: label.into(),
        color,
        mark,
    }
}

/// Split `label` into lines of at most `width` characters at spaces.
fn wrap(label: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in label.split(' ') {
        let cur = lines.last_mut().expect("non-empty");
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

/// A legend drawn in its own area, entries top to bottom, long labels wrapped.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[Entry],
) -> Result<(), String> {
    let (w, _) = area.dim_in_pixel();
    let chars = ((w as usize).saturating_sub(60) / 9).max(12);
    let mut y = 20i32;
    if !title.is_empty() {
        area.draw(&Text::new(title.to_string(), (8, y), bold(16)))
            .s()?;
        y += 26;
    }
    for e in entries {
        let yc = y + 8;
        let c = e.color;
        match e.mark {
            Mark::Line => area
                .draw(&PathElement::new(
                    vec![(8, yc), (44, yc)],
                    c.stroke_width(3),
                ))
                .s()?,
            Mark::Dashed => {
                for x in [8, 22, 36] {
                    area.draw(&PathElement::new(
                        vec![(x, yc), (x + 9, yc)],
                        c.stroke_width(3),
                    ))
                    .s()?;
                }
            }
            Mark::Dotted => {
                for x in (8..44).step_by(7) {
                    area.draw(&PathElement::new(
                        vec![(x, yc), (x + 3, yc)],
                        c.stroke_width(3),
                    ))
                    .s()?;
                }
            }
            Mark::Point => area.draw(&Circle::new((26, yc), 6, c.filled())).s()?,
            Mark::Box => area
                .draw(&Rectangle::new([(10, yc - 8), (42, yc + 8)], c.filled()))
                .s()?,
            Mark::Tick => area
                .draw(&PathElement::new(
                    vec![(26, yc - 9), (26, yc + 9)],
                    c.stroke_width(3),
                ))
                .s()?,
        }
        for (i, line) in wrap(&e.label, chars).iter().enumerate() {
            if i > 0 {
                y += 19;
            }
            area.draw(&Text::new(line.clone(), (52, y), text(15))).s()?;
        }
        y += 28;
    }
    Ok(())
}

/// An integer range with exactly `n` segments once segmented (plotters
/// counts both ends of an integer range); one spare segment when n = 1,
/// since a one-value range has no extent to map.
fn seg(n: i32) -> std::ops::Range<i32> {
    if n <= 1 {
        0..1
    } else {
        0..n - 1
    }
}

/// Tick label with as many decimals as the axis span needs.
fn ms_label(v: f64, span: f64) -> String {
    if span >= 100.0 {
        format!("{v:.0}")
    } else if span >= 10.0 {
        format!("{v:.1}")
    } else if span >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-9);
    (lo - span * frac, hi + span * frac)
}

/// Speedup over EP against lambda (and, for `tune`, the regret of each
/// lambda against the best one, with the recommended lambda marked).
pub struct SpeedupFig {
    pub curves: Vec<SpeedupCurve>,
    pub title: String,
    pub recommended: Option<f64>,
    pub regret: bool,
    pub with_knobs: bool,
}

impl Figure for SpeedupFig {
    fn size(&self) -> (u32, u32) {
        (1280, if self.regret { 960 } else { 620 })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let (w, _) = self.size();
        let (chart_area, legend_area) = root.split_horizontally(w - LEGEND_W);
        let panels: Vec<DrawingArea<DB, Shift>> = if self.regret {
            chart_area.split_evenly((2, 1))
        } else {
            vec![chart_area]
        };
        let lambdas: Vec<f64> = self
            .curves
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0))
            .chain(self.recommended)
            .collect();
        let (xlo, xhi) = if lambdas.is_empty() {
            (1.0, 2.0)
        } else {
            let lo = lambdas.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = lambdas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            pad_range(lo, hi.max(lo + 0.1), 0.03)
        };
        let mut ys: Vec<f64> = vec![1.0];
        for c in &self.curves {
            ys.extend(c.points.iter().map(|p| p.1));
            ys.extend(c.always);
            ys.extend(c.ideal);
            ys.extend(c.spread.iter().flatten().flat_map(|s| [s.0, s.1]));
        }
        let (ylo, yhi) = pad_range(
            ys.iter().copied().fold(f64::INFINITY, f64::min),
            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            0.08,
        );
        let mut entries = vec![];
        {
            let mut chart = ChartBuilder::on(&panels[0])
                .caption(&self.title, bold(20))
                .margin(12)
                .x_label_area_size(56)
                .y_label_area_size(80)
                .build_cartesian_2d(xlo..xhi, ylo..yhi)
                .s()?;
            chart
                .configure_mesh()
                .x_desc("λ = MOE_ADAPTIVE_LPT_ROUTING_RATIO (max/mean load threshold)")
                .y_desc("speedup over EP (×)")
                .axis_desc_style(text(17))
                .label_style(text(15))
                .y_label_formatter(&|v| format!("{v:.2}"))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .s()?;
            chart
                .draw_series(LineSeries::new(
                    vec![(xlo, 1.0), (xhi, 1.0)],
                    GREY.stroke_width(1),
                ))
                .s()?;
            for (i, c) in self.curves.iter().enumerate() {
                let col = color(i);
                let name = c.key.label(self.with_knobs);
                if c.key.measured() {
                    for (p, sp) in c.points.iter().zip(&c.spread) {
                        if let Some((lo, hi)) = sp {
                            chart
                                .draw_series(std::iter::once(PathElement::new(
                                    vec![(p.0, *lo), (p.0, *hi)],
                                    col.stroke_width(2),
                                )))
                                .s()?;
                        }
                    }
                    chart
                        .draw_series(
                            c.points
                                .iter()
                                .map(|&p| Circle::new(p, 7, col.filled().stroke_width(1))),
                        )
                        .s()?;
                    let bars = if c.spread.iter().any(Option::is_some) {
                        " (bars: p10-p90 of timed runs)"
                    } else {
                        ""
                    };
                    entries.push(entry(format!("LLEP, {name}{bars}"), col, Mark::Point));
                } else {
                    chart
                        .draw_series(LineSeries::new(c.points.clone(), col.stroke_width(3)))
                        .s()?;
                    if c.points.len() <= 60 {
                        chart
                            .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, col.filled())))
                            .s()?;
                    }
                    entries.push(entry(format!("LLEP, {name}"), col, Mark::Line));
                }
                if let Some(a) = c.always {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(xlo, a), (xhi, a)],
                            10,
                            6,
                            col.stroke_width(2),
                        ))
                        .s()?;
                    entries.push(entry(
                        format!("LLEP with no gate (λ=always): {a:.3}×"),
                        col,
                        Mark::Dashed,
                    ));
                }
                if let Some(b) = c.ideal {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(xlo, b), (xhi, b)],
                            3,
                            5,
                            col.stroke_width(2),
                        ))
                        .s()?;
                    entries.push(entry(
                        format!("ideal balance bound: {b:.3}×"),
                        col,
                        Mark::Dotted,
                    ));
                }
            }
            if let Some(r) = self.recommended {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(r, ylo), (r, yhi)],
                        8,
                        5,
                        BLACK.stroke_width(2),
                    ))
                    .s()?;
                entries.push(entry(
                    format!("recommended {}", lambda_label(Some(r))),
                    BLACK,
                    Mark::Dashed,
                ));
            }
        }
        entries.push(entry("EP (1×)", GREY, Mark::Line));
        if self.regret {
            let regrets: Vec<Vec<(f64, f64)>> = self
                .curves
                .iter()
                .map(|c| {
                    let best = c.totals.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
                    c.totals
                        .iter()
                        .map(|&(l, t)| (l, (t / best - 1.0) * 100.0))
                        .collect()
                })
                .collect();
            let rmax = regrets
                .iter()
                .flatten()
                .map(|p| p.1)
                .fold(0.0f64, f64::max)
                .max(0.5);
            let mut chart = ChartBuilder::on(&panels[1])
                .margin(12)
                .x_label_area_size(56)
                .y_label_area_size(80)
                .build_cartesian_2d(xlo..xhi, -rmax * 0.05..rmax * 1.1)
                .s()?;
            chart
                .configure_mesh()
                .x_desc("λ = MOE_ADAPTIVE_LPT_ROUTING_RATIO")
                .y_desc("regret: time over the best λ (%)")
                .axis_desc_style(text(17))
                .label_style(text(15))
                .y_label_formatter(&|v| format!("{v:.1}"))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .s()?;
            for (i, r) in regrets.iter().enumerate() {
                let col = color(i);
                if self.curves[i].key.measured() {
                    chart
                        .draw_series(r.iter().map(|&p| Circle::new(p, 6, col.filled())))
                        .s()?;
                } else {
                    chart
                        .draw_series(LineSeries::new(r.clone(), col.stroke_width(3)))
                        .s()?;
                }
            }
            if let Some(rec) = self.recommended {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(rec, -rmax * 0.05), (rec, rmax * 1.1)],
                        8,
                        5,
                        BLACK.stroke_width(2),
                    ))
                    .s()?;
            }
        }
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}

/// CDF of the max/mean native load over all layer-steps, lambda marked.
pub struct CdfFig {
    pub cdfs: Vec<(ImbalanceCdf, Option<f64>)>,
    pub title: String,
    pub with_knobs: bool,
}

impl Figure for CdfFig {
    fn size(&self) -> (u32, u32) {
        (1280, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let (chart_area, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let all: Vec<f64> = self
            .cdfs
            .iter()
            .flat_map(|(c, l)| c.ratios.iter().copied().chain(*l))
            .collect();
        let lo = all.iter().copied().fold(1.0f64, f64::min);
        let hi = all.iter().copied().fold(lo + 0.1, f64::max);
        let (xlo, xhi) = pad_range(lo, hi, 0.04);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, bold(20))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(xlo..xhi, 0.0..1.02)
            .s()?;
        chart
            .configure_mesh()
            .x_desc("max/mean GPU load of a layer-step under EP (ratio, 1 = balanced)")
            .y_desc("fraction of layer-steps ≤ x")
            .axis_desc_style(text(17))
            .label_style(text(15))
            .x_label_formatter(&|v| format!("{v:.2}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        let mut entries = vec![];
        for (i, (c, lam)) in self.cdfs.iter().enumerate() {
            let col = color(i);
            let n = c.ratios.len() as f64;
            let mut pts = vec![(xlo, 0.0)];
            for (j, &r) in c.ratios.iter().enumerate() {
                pts.push((r, j as f64 / n));
                pts.push((r, (j + 1) as f64 / n));
            }
            pts.push((xhi, 1.0));
            chart
                .draw_series(LineSeries::new(pts, col.stroke_width(3)))
                .s()?;
            entries.push(entry(
                format!(
                    "{} ({} layer-steps)",
                    c.setup.label(self.with_knobs),
                    c.ratios.len()
                ),
                col,
                Mark::Line,
            ));
            if let Some(l) = lam {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(*l, 0.0), (*l, 1.02)],
                        8,
                        5,
                        col.stroke_width(2),
                    ))
                    .s()?;
                let f = c.on_fraction(*l);
                let on = (f * n).round() as usize;
                entries.push(entry(
                    format!(
                        "{}: LLEP switches on in {:.0}% ({on} of {}) of layer-steps",
                        lambda_label(Some(*l)),
                        f * 100.0,
                        c.ratios.len()
                    ),
                    col,
                    Mark::Dashed,
                ));
            }
        }
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}

/// Map load/capacity to a colour: blues up to capacity, oranges to dark red
/// above it, so the capacity boundary is a visible break in the scale.
pub fn heat_color(v: f64, vmax: f64) -> RGBColor {
    let lerp = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        let t = t.clamp(0.0, 1.0);
        RGBColor(
            (a.0 + (b.0 - a.0) * t) as u8,
            (a.1 + (b.1 - a.1) * t) as u8,
            (a.2 + (b.2 - a.2) * t) as u8,
        )
    };
    if v <= 1.0 {
        lerp((239.0, 243.0, 255.0), (8.0, 69.0, 148.0), v)
    } else {
        lerp(
            (253.0, 174.0, 97.0),
            (140.0, 0.0, 20.0),
            (v - 1.0) / (vmax - 1.0).max(1e-9),
        )
    }
}

/// Per-GPU load over layer-steps, EP above LLEP, in units of capacity.
pub struct HeatmapFig {
    pub map: Heatmap,
    pub title: String,
    pub with_knobs: bool,
}

impl HeatmapFig {
    fn vmax(&self) -> f64 {
        self.map
            .ep
            .iter()
            .chain(&self.map.llep)
            .flatten()
            .copied()
            .fold(1.25f64, f64::max)
    }
}

impl Figure for HeatmapFig {
    fn size(&self) -> (u32, u32) {
        let rows = self.map.gpus as u32;
        (1280, 250 + 2 * (90 + (rows * 22).clamp(120, 420)))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let (w, _) = self.size();
        let root = root.titled(&self.title, bold(20)).s()?;
        let (maps, bar) = root.split_horizontally(w - 190);
        let halves = maps.split_evenly((2, 1));
        let h = &self.map;
        let n = h.columns.len() as i32;
        let p = h.gpus as i32;
        let vmax = self.vmax();
        let steps: Vec<u32> = {
            let mut s: Vec<u32> = h.columns.iter().map(|c| c.0).collect();
            s.dedup();
            s
        };
        let multi_step = steps.len() > 1;
        let layers_per_step = h.columns.iter().filter(|c| c.0 == h.columns[0].0).count();
        let label_every = (n as usize).div_ceil(24).max(1);
        for (half, (cells, name)) in halves.iter().zip([
            (
                &h.ep,
                format!(
                    "EP: native token-copies per GPU (peak {:.3}× capacity)",
                    h.ep.iter().flatten().copied().fold(0.0f64, f64::max)
                ),
            ),
            (
                &h.llep,
                format!(
                    "LLEP {}: token-copies each GPU computes (peak {:.3}× capacity)",
                    lambda_label(h.lambda),
                    h.llep.iter().flatten().copied().fold(0.0f64, f64::max)
                ),
            ),
        ]) {
            let cols = h.columns.clone();
            let mut chart = ChartBuilder::on(half)
                .caption(name, text(17))
                .margin(10)
                .x_label_area_size(if multi_step { 62 } else { 50 })
                .y_label_area_size(70)
                .build_cartesian_2d(seg(n).into_segmented(), seg(p).into_segmented())
                .s()?;
            let x_desc = if multi_step && layers_per_step > 1 {
                "layer-step (step/layer, step-major)"
            } else if multi_step {
                "step"
            } else {
                "layer"
            };
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(n as usize)
                .y_labels(p as usize)
                .x_desc(x_desc)
                .y_desc("GPU")
                .axis_desc_style(text(16))
                .label_style(text(14))
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(c) if (*c as usize) % label_every == 0 => cols
                        .get(*c as usize)
                        .map(|(s, l)| {
                            if multi_step && layers_per_step > 1 {
                                format!("{s}/{l}")
                            } else if multi_step {
                                s.to_string()
                            } else {
                                l.to_string()
                            }
                        })
                        .unwrap_or_default(),
                    _ => String::new(),
                })
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(g) => g.to_string(),
                    _ => String::new(),
                })
                .draw()
                .s()?;
            chart
                .draw_series(cells.iter().enumerate().flat_map(|(c, col)| {
                    col.iter().enumerate().map(move |(g, &v)| {
                        Rectangle::new(
                            [
                                (SegmentValue::Exact(c as i32), SegmentValue::Exact(g as i32)),
                                (
                                    SegmentValue::Exact(c as i32 + 1),
                                    SegmentValue::Exact(g as i32 + 1),
                                ),
                            ],
                            heat_color(v, vmax).filled(),
                        )
                    })
                }))
                .s()?;
            if multi_step && layers_per_step > 1 {
                for (c, w) in h.columns.windows(2).enumerate() {
                    if w[0].0 != w[1].0 {
                        let x = SegmentValue::Exact(c as i32 + 1);
                        chart
                            .draw_series(std::iter::once(PathElement::new(
                                vec![
                                    (x.clone(), SegmentValue::Exact(0)),
                                    (x, SegmentValue::Exact(p)),
                                ],
                                WHITE.stroke_width(3),
                            )))
                            .s()?;
                    }
                }
            }
        }
        // Colour bar with the capacity line.
        let mut cb = ChartBuilder::on(&bar.margin(60, 60, 70, 0))
            .margin(10)
            .y_label_area_size(0)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, 0.0..vmax)
            .s()?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc("load / capacity")
            .axis_desc_style(text(15))
            .label_style(text(14))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .s()?;
        let steps_n = 200;
        cb.draw_series((0..steps_n).map(|i| {
            let a = vmax * i as f64 / steps_n as f64;
            let b = vmax * (i + 1) as f64 / steps_n as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                heat_color((a + b) / 2.0, vmax).filled(),
            )
        }))
        .s()?;
        cb.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (1.0, 1.0)],
            BLACK.stroke_width(4),
        )))
        .s()?;
        // Label the capacity line beside the bar, at its height.
        let (x0, y1) = cb.backend_coord(&(0.0, 1.0));
        let (bx, by) = bar.get_base_pixel();
        let (lx, ly) = (x0 - bx - 58, y1 - by - 8);
        bar.draw(&Text::new("capacity", (lx.max(0), ly), bold(13)))
            .s()?;
        bar.draw(&PathElement::new(
            vec![(x0 - bx - 8, y1 - by), (x0 - bx, y1 - by)],
            BLACK.stroke_width(3),
        ))
        .s()?;
        Ok(())
    }
}

/// Stacked mean per-layer-step phase times per policy and series.
pub struct PhaseFig {
    pub bars: Vec<PhaseBar>,
    pub title: String,
    pub with_knobs: bool,
}

const PHASE_COLORS: [RGBColor; 5] = [
    RGBColor(127, 127, 127),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

impl Figure for PhaseFig {
    fn size(&self) -> (u32, u32) {
        (1280, (200 + 46 * self.bars.len() as u32).max(440))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let (chart_area, legend_area) = root.split_horizontally(self.size().0 - 300);
        let n = self.bars.len() as i32;
        let xmax = self
            .bars
            .iter()
            .map(|b| b.phases_ms.iter().sum::<f64>().max(b.total_ms))
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.05;
        let mut order: Vec<&super::data::SeriesKey> = vec![];
        for b in &self.bars {
            if !order.contains(&&b.key) {
                order.push(&b.key);
            }
        }
        let labels: Vec<String> = self
            .bars
            .iter()
            .map(|b| {
                let idx = order.iter().position(|k| *k == &b.key).unwrap_or(0) + 1;
                let src = if b.key.measured() {
                    "measured".to_string()
                } else {
                    format!("sim {}", b.key.origin)
                };
                let mut s = trace_stem(&b.key.setup.trace);
                if !b.key.setup.scenario.is_empty() {
                    s = format!("{} [{}]", s, b.key.setup.scenario);
                }
                format!(
                    "#{idx} {s} P={} {src} · {}",
                    b.key.setup.gpus,
                    b.policy_label()
                )
            })
            .collect();
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(10) as u32;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, bold(20))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size((longest * 8 + 20).min(560))
            .build_cartesian_2d(0.0..xmax, seg(n).into_segmented())
            .s()?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n as usize)
            .x_desc("mean time per layer-step (ms); #n = row n of the summary table")
            .axis_desc_style(text(17))
            .label_style(text(14))
            .x_label_formatter(&|v| ms_label(*v, xmax))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels
                    .get((n - 1 - *i) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .s()?;
        for (i, b) in self.bars.iter().enumerate() {
            // first bar at the top
            let y = n - 1 - i as i32;
            let mut x0 = 0.0;
            for (k, &v) in b.phases_ms.iter().enumerate() {
                if v <= 0.0 {
                    continue;
                }
                let mut rect = Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(y)),
                        (x0 + v, SegmentValue::Exact(y + 1)),
                    ],
                    PHASE_COLORS[k].filled(),
                );
                rect.set_margin(6, 6, 0, 0);
                chart.draw_series(std::iter::once(rect)).s()?;
                x0 += v;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (b.total_ms, SegmentValue::Exact(y)),
                        (b.total_ms, SegmentValue::Exact(y + 1)),
                    ],
                    BLACK.stroke_width(3),
                )))
                .s()?;
        }
        let mut entries: Vec<Entry> = PHASES
            .iter()
            .zip(PHASE_COLORS)
            .map(|(p, c)| entry(*p, c, Mark::Box))
            .collect();
        entries.push(entry(
            "layer time (dispatch and weight transfer overlap, so it can end before the stack)",
            BLACK,
            Mark::Tick,
        ));
        legend(&legend_area.margin(40, 0, 0, 0), "phase", &entries)
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Peak memory per GPU, EP against LLEP, with the card's capacity.
pub struct MemoryFig {
    pub panels: Vec<MemoryPanel>,
    pub title: String,
    pub with_knobs: bool,
}

impl Figure for MemoryFig {
    fn size(&self) -> (u32, u32) {
        (1280, 90 + 420 * self.panels.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let root = root.titled(&self.title, bold(20)).s()?;
        let (charts, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let areas = charts.split_evenly((self.panels.len().max(1), 1));
        let mut notes = vec![];
        for (area, p) in areas.iter().zip(&self.panels) {
            let g = p.ep.len().max(p.llep.len());
            let used = p.ep.iter().chain(&p.llep).copied().max().unwrap_or(0) as f64 / GIB;
            let cap = p.card_bytes.map(|b| b as f64 / GIB);
            // Draw the capacity in the chart when the bars stay visible
            // beside it; otherwise zoom in and say where the capacity is.
            let show_cap = cap.is_some_and(|c| used >= 0.2 * c);
            let ymax = match (show_cap, cap) {
                (true, Some(c)) => c.max(used) * 1.08,
                _ => used.max(1e-6) * 1.2,
            };
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{} · LLEP {}{}",
                        p.key.label(self.with_knobs),
                        lambda_label(p.lambda),
                        if p.ep_oom_rows + p.oom_rows > 0 {
                            format!(
                                " · out of memory in {} (EP) and {} (LLEP) layer-steps",
                                p.ep_oom_rows, p.oom_rows
                            )
                        } else {
                            String::new()
                        }
                    ),
                    text(16),
                )
                .margin(12)
                .x_label_area_size(50)
                .y_label_area_size(80)
                .build_cartesian_2d(-0.5..g as f64 - 0.5, 0.0..ymax)
                .s()?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(g + 1)
                .x_desc("GPU")
                .y_desc("peak memory (GiB)")
                .axis_desc_style(text(16))
                .label_style(text(14))
                .x_label_formatter(&|v| {
                    if (v - v.round()).abs() < 1e-6 && *v >= 0.0 {
                        format!("{}", v.round() as i64)
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| format!("{v:.2}"))
                .draw()
                .s()?;
            for (gi, (e, l)) in p.ep.iter().zip(&p.llep).enumerate() {
                let x = gi as f64;
                chart
                    .draw_series([
                        Rectangle::new(
                            [(x - 0.4, 0.0), (x - 0.02, *e as f64 / GIB)],
                            PALETTE[0].filled(),
                        ),
                        Rectangle::new(
                            [(x + 0.02, 0.0), (x + 0.4, *l as f64 / GIB)],
                            PALETTE[1].filled(),
                        ),
                    ])
                    .s()?;
            }
            match (show_cap, cap) {
                (true, Some(c)) => {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(-0.5, c), (g as f64 - 0.5, c)],
                            10,
                            6,
                            PALETTE[3].stroke_width(3),
                        ))
                        .s()?;
                }
                (false, Some(c)) => {
                    let msg = format!(
                        "card capacity {c:.1} GiB is above this chart: peak use is {:.1}% of it",
                        used / c * 100.0
                    );
                    area.draw(&Text::new(msg.clone(), (110, 44), bold(15)))
                        .s()?;
                    notes.push(msg);
                }
                _ => {
                    area.draw(&Text::new(
                        "card capacity unknown (no profile for this device)".to_string(),
                        (110, 44),
                        bold(15),
                    ))
                    .s()?;
                }
            }
        }
        let entries = vec![
            entry("EP (max over layer-steps)", PALETTE[0], Mark::Box),
            entry("LLEP (max over layer-steps)", PALETTE[1], Mark::Box),
            entry("card memory capacity", PALETTE[3], Mark::Dashed),
        ];
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}

/// Simulated against measured layer time, y = x marked.
pub struct ScatterFig {
    pub pairs: Vec<Pair>,
    pub title: String,
}

impl Figure for ScatterFig {
    fn size(&self) -> (u32, u32) {
        (1280, 760)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).s()?;
        let (chart_area, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let hi = self
            .pairs
            .iter()
            .flat_map(|p| [p.simulated_ms, p.measured_ms])
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.08;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, bold(20))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..hi, 0.0..hi)
            .s()?;
        chart
            .configure_mesh()
            .x_desc("simulated layer time (ms)")
            .y_desc("measured layer time (ms)")
            .axis_desc_style(text(17))
            .label_style(text(15))
            .x_label_formatter(&|v| ms_label(*v, hi))
            .y_label_formatter(&|v| ms_label(*v, hi))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (hi, hi)],
                10,
                6,
                BLACK.stroke_width(2),
            ))
            .s()?;
        // measured = simulated x 1.2 and / 1.2, each ending inside the chart
        for end in [(hi / 1.2, hi), (hi, hi / 1.2)] {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, 0.0), end],
                    3,
                    5,
                    GREY.stroke_width(1),
                ))
                .s()?;
        }
        let mut policies: Vec<&str> = self.pairs.iter().map(|p| p.policy.as_str()).collect();
        policies.sort();
        policies.dedup();
        let mut entries = vec![];
        for (i, pol) in policies.iter().enumerate() {
            let col = color(i);
            let ps: Vec<&Pair> = self.pairs.iter().filter(|p| p.policy == *pol).collect();
            chart
                .draw_series(
                    ps.iter()
                        .map(|p| Circle::new((p.simulated_ms, p.measured_ms), 5, col.filled())),
                )
                .s()?;
            let mut e: Vec<f64> = ps.iter().map(|p| p.rel_error().abs() * 100.0).collect();
            e.sort_by(f64::total_cmp);
            let med = e[e.len() / 2];
            entries.push(entry(
                format!("{pol}: {} points, median |error| {med:.1}%", ps.len()),
                col,
                Mark::Point,
            ));
        }
        entries.push(entry("y = x (simulation exact)", BLACK, Mark::Dashed));
        entries.push(entry(
            "measured = simulated × 1.2 and ÷ 1.2",
            GREY,
            Mark::Dotted,
        ));
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}
