//! Drawing: each figure is a value that draws itself on any plotters
//! backend, rendered to PNG or SVG by the output's extension. Legends sit in
//! their own strip beside the chart so they never cover data.

mod cdf;
mod load;
mod policies;
mod resources;
mod speedup;

pub use cdf::{CdfFig, ScatterFig};
pub use load::{heat_color, HeatmapFig, LoadBarsFig};
pub use policies::{PolicyAcc, PolicyFig, PolicyInput};
pub use resources::{MemoryFig, PhaseFig};
pub use speedup::{SpeedupFig, SpeedupStyle};

use super::font::{self, FAMILY};
use super::ReportError;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Something that can be drawn at a fixed pixel size.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError>;
}

/// Why a figure could not be drawn (the drawing backend's message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DrawError(pub String);

impl From<String> for DrawError {
    fn from(s: String) -> Self {
        DrawError(s)
    }
}

impl From<&str> for DrawError {
    fn from(s: &str) -> Self {
        DrawError(s.to_string())
    }
}

pub(crate) trait Ctx<T> {
    fn s(self) -> Result<T, DrawError>;
}
impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn s(self) -> Result<T, DrawError> {
        self.map_err(|e| DrawError(e.to_string()))
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
    let fail = |e: DrawError| ReportError::Draw(out.to_path_buf(), e.0);
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

pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub(crate) const GREY: RGBColor = RGBColor(110, 110, 110);
pub(crate) const LEGEND_W: u32 = 360;

pub(crate) fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

pub(crate) fn bold(size: u32) -> TextStyle<'static> {
    (FAMILY, size)
        .into_font()
        .style(FontStyle::Bold)
        .color(&BLACK)
}

#[derive(Clone, Copy)]
pub(crate) enum Mark {
    Line,
    Dashed,
    Dotted,
    Point,
    Box,
    Tick,
}

pub(crate) struct Entry {
    pub label: String,
    pub color: RGBColor,
    pub mark: Mark,
}

pub(crate) fn entry(label: impl Into<String>, color: RGBColor, mark: Mark) -> Entry {
    Entry {
        label: label.into(),
        color,
        mark,
    }
}

/// Split `label` into lines of at most `width` characters at spaces.
pub(crate) fn wrap(label: &str, width: usize) -> Vec<String> {
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

fn legend_chars(width: u32) -> usize {
    ((width as usize).saturating_sub(60) / 9).max(12)
}

/// Pixels a titled legend of `entries` needs in an area `width` wide, with
/// the 40 px top margin every figure gives it: a figure sizes itself so
/// its legend never runs off the image.
pub(crate) fn legend_height(entries: &[Entry], width: u32) -> u32 {
    let chars = legend_chars(width);
    let lines: usize = entries
        .iter()
        .map(|e| 28 + 19 * (wrap(&e.label, chars).len() - 1))
        .sum();
    40 + 20 + 26 + lines as u32
}

/// A legend drawn in its own area, entries top to bottom, long labels wrapped.
pub(crate) fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[Entry],
) -> Result<(), DrawError> {
    let (w, _) = area.dim_in_pixel();
    let chars = legend_chars(w);
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
pub(crate) fn seg(n: i32) -> std::ops::Range<i32> {
    if n <= 1 {
        0..1
    } else {
        0..n - 1
    }
}

/// Tick label with as many decimals as the axis span needs.
pub(crate) fn ms_label(v: f64, span: f64) -> String {
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

pub(crate) fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-9);
    (lo - span * frac, hi + span * frac)
}
