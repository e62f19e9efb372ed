//! Distributions and point clouds: the max/mean imbalance CDF and
//! simulated against measured layer time.

use super::DrawError;
use super::{
    bold, color, entry, legend, ms_label, pad_range, text, Ctx, Figure, Mark, GREY, LEGEND_W,
};
use crate::report::data::{lambda_label, ImbalanceCdf, Pair};
use plotters::coord::Shift;
use plotters::prelude::*;

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

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        let (chart_area, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let all: Vec<f64> = self
            .cdfs
            .iter()
            .flat_map(|(c, l)| {
                let d = &c.ratios;
                let ends = (!d.is_empty()).then(|| [d.min(), d.max()]);
                ends.into_iter().flatten().chain(*l)
            })
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
            let mut below = 0.0;
            // every ratio, or past the exact cap every bin's middle
            for (r, f) in c.ratios.steps() {
                pts.push((r, below));
                pts.push((r, f));
                below = f;
            }
            pts.push((xhi, 1.0));
            chart
                .draw_series(LineSeries::new(pts, col.stroke_width(3)))
                .s()?;
            entries.push(entry(
                format!(
                    "{} ({} layer-steps{})",
                    c.setup.label(self.with_knobs),
                    c.ratios.len(),
                    if c.ratios.binned() {
                        format!(", in {}% bins", crate::report::ratios::BIN_REL * 100.0)
                    } else {
                        String::new()
                    }
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

/// Simulated against measured layer time, y = x marked.
pub struct ScatterFig {
    pub pairs: Vec<Pair>,
    pub title: String,
}

impl Figure for ScatterFig {
    fn size(&self) -> (u32, u32) {
        (1280, 760)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
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
