//! Speedup of LLEP over EP against lambda (lines, or bars per input when
//! there is at most one lambda per input), and `tune`'s regret panel.

use super::DrawError;
use super::{
    bold, color, entry, legend, legend_height, pad_range, text, Ctx, Entry, Figure, Mark, GREY,
    LEGEND_W, PALETTE,
};
use crate::report::data::{lambda_label, SpeedupCurve};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Speedup over EP against lambda (and, for `tune`, the regret of each
/// lambda against the best one, with the recommended lambda marked).
pub struct SpeedupFig {
    pub curves: Vec<SpeedupCurve>,
    pub title: String,
    pub recommended: Option<f64>,
    pub regret: bool,
    pub with_knobs: bool,
}

/// How [`SpeedupFig`] draws its curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedupStyle {
    /// Speedup against lambda, one line (or point set) per input.
    Lines,
    /// No input has two lambdas, so a curve would be one dot: one group of
    /// bars per input instead (LLEP at its lambda, no gate, ideal).
    Bars,
}

/// One bar: label, value, colour index, p10-p90 spread.
type Bar = (String, f64, usize, Option<(f64, f64)>);
type Panel<DB> = DrawingArea<DB, Shift>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

impl SpeedupFig {
    pub fn style(&self) -> SpeedupStyle {
        if self.curves.iter().all(|c| c.points.len() <= 1) {
            SpeedupStyle::Bars
        } else {
            SpeedupStyle::Lines
        }
    }

    /// The legend of the line chart, in drawing order (also sizes the figure).
    fn line_entries(&self) -> Vec<Entry> {
        let mut entries = vec![];
        for (i, c) in self.curves.iter().enumerate() {
            let col = color(i);
            let name = c.key.label(self.with_knobs);
            if c.key.measured() {
                let bars = if c.spread.iter().any(Option::is_some) {
                    " (bars: p10-p90 of timed runs)"
                } else {
                    ""
                };
                entries.push(entry(format!("LLEP, {name}{bars}"), col, Mark::Point));
            } else {
                entries.push(entry(format!("LLEP, {name}"), col, Mark::Line));
            }
            if let Some(a) = c.always {
                entries.push(entry(
                    format!("LLEP with no gate (λ=always): {a:.3}×"),
                    col,
                    Mark::Dashed,
                ));
            }
            if let Some(b) = c.ideal {
                entries.push(entry(
                    format!("ideal balance bound: {b:.3}×"),
                    col,
                    Mark::Dotted,
                ));
            }
        }
        if let Some(r) = self.recommended {
            entries.push(entry(
                format!("recommended {}", lambda_label(Some(r))),
                BLACK,
                Mark::Dashed,
            ));
        }
        entries.push(entry("EP (1×)", GREY, Mark::Line));
        entries
    }

    /// Bars per input, top to bottom.
    fn bars(&self) -> Vec<Vec<Bar>> {
        self.curves
            .iter()
            .map(|c| {
                let mut g = vec![];
                if let Some(&(l, s)) = c.points.first() {
                    let spread = c.spread.first().copied().flatten();
                    g.push((format!("LLEP {}", lambda_label(Some(l))), s, 0, spread));
                }
                if let Some(a) = c.always {
                    g.push(("LLEP, no gate".into(), a, 1, None));
                }
                if let Some(b) = c.ideal {
                    g.push(("ideal bound".into(), b, 2, None));
                }
                g
            })
            .collect()
    }

    fn bar_label_width(&self) -> u32 {
        let longest = self
            .curves
            .iter()
            .map(|c| c.key.label(self.with_knobs).chars().count())
            .max()
            .unwrap_or(10) as u32;
        (longest * 8 + 24).min(600)
    }

    fn draw_lines<DB: DrawingBackend>(&self, root: &Panel<DB>) -> Result<(), DrawError> {
        let (w, _) = self.size();
        let (chart_area, legend_area) = root.split_horizontally(w - LEGEND_W);
        let panels: Vec<Panel<DB>> = if self.regret {
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
            self.draw_curve(&mut chart, c, color(i), (xlo, xhi))?;
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
        }
        if self.regret {
            self.draw_regret(&panels[1], (xlo, xhi))?;
        }
        legend(
            &legend_area.margin(40, 0, 0, 0),
            "legend",
            &self.line_entries(),
        )
    }

    /// One input: its speedup line (or measured points with their spread)
    /// and its no-gate and ideal levels as horizontal lines.
    fn draw_curve<DB: DrawingBackend>(
        &self,
        chart: &mut Chart<DB>,
        c: &SpeedupCurve,
        col: RGBColor,
        (xlo, xhi): (f64, f64),
    ) -> Result<(), DrawError> {
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
        } else {
            chart
                .draw_series(LineSeries::new(c.points.clone(), col.stroke_width(3)))
                .s()?;
            if c.points.len() <= 60 {
                chart
                    .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, col.filled())))
                    .s()?;
            }
        }
        for (level, (dash, gap)) in [(c.always, (10, 6)), (c.ideal, (3, 5))] {
            if let Some(v) = level {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(xlo, v), (xhi, v)],
                        dash,
                        gap,
                        col.stroke_width(2),
                    ))
                    .s()?;
            }
        }
        Ok(())
    }

    /// `tune`'s second panel: time over the best lambda, in percent.
    fn draw_regret<DB: DrawingBackend>(
        &self,
        panel: &Panel<DB>,
        (xlo, xhi): (f64, f64),
    ) -> Result<(), DrawError> {
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
        let mut chart = ChartBuilder::on(panel)
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
        Ok(())
    }

    /// One group of horizontal bars per input, top to bottom in input order,
    /// each bar's value written at its end.
    fn draw_bars<DB: DrawingBackend>(&self, root: &Panel<DB>) -> Result<(), DrawError> {
        let (w, _) = self.size();
        let (chart_area, legend_area) = root.split_horizontally(w - LEGEND_W);
        let groups = self.bars();
        let n = groups.len().max(1);
        let mut vmax = 1.0f64;
        let mut text_px = 0.0f64;
        for (label, v, _, sp) in groups.iter().flatten() {
            vmax = vmax.max(*v).max(sp.map_or(0.0, |s| s.1));
            text_px = text_px.max(8.0 * (label.chars().count() + 9) as f64);
        }
        // Room right of the longest bar for its value, so no label runs
        // into the legend.
        let plot_px = (w - LEGEND_W - self.bar_label_width() - 24) as f64;
        let xmax = vmax / (1.0 - ((text_px + 12.0) / plot_px).min(0.6));
        let labels: Vec<String> = self
            .curves
            .iter()
            .map(|c| c.key.label(self.with_knobs))
            .collect();
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, bold(20))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(self.bar_label_width())
            .build_cartesian_2d(0.0..xmax, 0.0..n as f64)
            .s()?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n * 2 + 1)
            .x_desc("speedup over EP (×): EP layer time / LLEP layer time")
            .axis_desc_style(text(17))
            .label_style(text(14))
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| {
                // group i sits in [n-1-i, n-i]: label its centre
                let k = (v - v.floor() - 0.5).abs() < 1e-6;
                let i = n as i64 - 1 - v.floor() as i64;
                match (k, usize::try_from(i)) {
                    (true, Ok(i)) => labels.get(i).cloned().unwrap_or_default(),
                    _ => String::new(),
                }
            })
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        for (i, g) in groups.iter().enumerate() {
            let top = (n - i) as f64 - 0.1;
            let h = 0.8 / g.len().max(1) as f64;
            for (j, (label, v, ci, sp)) in g.iter().enumerate() {
                let (y1, y0) = (top - j as f64 * h, top - (j + 1) as f64 * h);
                let col = PALETTE[*ci];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, y0 + h * 0.08), (*v, y1 - h * 0.08)],
                        col.filled(),
                    )))
                    .s()?;
                let yc = (y0 + y1) / 2.0;
                if let Some((lo, hi)) = sp {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(*lo, yc), (*hi, yc)],
                            BLACK.stroke_width(2),
                        )))
                        .s()?;
                }
                let end = sp.map_or(*v, |s| s.1.max(*v));
                let (px, py) = chart.backend_coord(&(end, yc));
                let (bx, by) = chart_area.get_base_pixel();
                chart_area
                    .draw(&Text::new(
                        format!("{label}: {v:.3}×"),
                        (px - bx + 6, py - by - 8),
                        text(14),
                    ))
                    .s()?;
            }
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, 0.0), (1.0, n as f64)],
                GREY.stroke_width(2),
            )))
            .s()?;
        let kinds = [
            "LLEP at the λ simulated",
            "LLEP with no gate (λ=always)",
            "ideal balance bound",
        ];
        let mut entries: Vec<Entry> = kinds
            .iter()
            .enumerate()
            .filter(|(k, _)| groups.iter().flatten().any(|b| b.2 == *k))
            .map(|(k, name)| entry(*name, PALETTE[k], Mark::Box))
            .collect();
        if self
            .curves
            .iter()
            .any(|c| c.spread.iter().any(Option::is_some))
        {
            entries.push(entry("p10-p90 of timed runs", BLACK, Mark::Line));
        }
        entries.push(entry("EP (1×)", GREY, Mark::Line));
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}

impl Figure for SpeedupFig {
    fn size(&self) -> (u32, u32) {
        match self.style() {
            SpeedupStyle::Bars => {
                let bars: usize = self.bars().iter().map(|g| g.len().max(1) + 1).sum();
                // Long series labels widen the figure, not squeeze the bars.
                let w = 1280.max(LEGEND_W + self.bar_label_width() + 620);
                (w, (180 + 34 * bars as u32).max(420))
            }
            SpeedupStyle::Lines => {
                let base = if self.regret { 960 } else { 620 };
                let need = legend_height(&self.line_entries(), LEGEND_W) + 60;
                (1280, base.max(need))
            }
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        match self.style() {
            SpeedupStyle::Bars => self.draw_bars(root),
            SpeedupStyle::Lines => self.draw_lines(root),
        }
    }
}
