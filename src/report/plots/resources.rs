//! Where time and memory go: stacked per-phase times and peak memory per
//! GPU against the card.

use super::DrawError;
use super::{
    bold, entry, legend, ms_label, seg, text, wrap, Ctx, Entry, Figure, Mark, LEGEND_W, PALETTE,
};
use crate::report::data::{
    lambda_label, trace_stem, MemoryPanel, PhaseBar, SeriesKey, FIRST_BWD_PHASE, PHASES,
};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Stacked mean per-layer-step phase times per policy and series.
pub struct PhaseFig {
    pub bars: Vec<PhaseBar>,
    pub title: String,
    pub with_knobs: bool,
}

const PHASE_COLORS: [RGBColor; 10] = [
    RGBColor(127, 127, 127),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    // backward: the forward's hues, lighter
    RGBColor(174, 199, 232),
    RGBColor(152, 223, 138),
    RGBColor(23, 190, 207),
    RGBColor(158, 218, 229),
    RGBColor(255, 187, 120),
];

impl Figure for PhaseFig {
    fn size(&self) -> (u32, u32) {
        (1280, (200 + 46 * self.bars.len() as u32).max(440))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
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
        let mut order: Vec<&SeriesKey> = vec![];
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
        // backward phases in the legend only when a bar has them
        let shown = if self.bars.iter().any(|b| b.has_backward()) {
            PHASES.len()
        } else {
            FIRST_BWD_PHASE
        };
        let mut entries: Vec<Entry> = PHASES
            .iter()
            .zip(PHASE_COLORS)
            .take(shown)
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

/// Saved activations, drawn inside the memory bars.
const SAVED: RGBColor = RGBColor(60, 60, 60);

/// Peak memory per GPU, EP against LLEP, with the card's capacity.
pub struct MemoryFig {
    pub panels: Vec<MemoryPanel>,
    pub title: String,
    pub with_knobs: bool,
}

impl Figure for MemoryFig {
    fn size(&self) -> (u32, u32) {
        (1280, 90 + 460 * self.panels.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        let root = root.titled(&self.title, bold(20)).s()?;
        let (charts, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let areas = charts.split_evenly((self.panels.len().max(1), 1));
        for (area, p) in areas.iter().zip(&self.panels) {
            self.draw_panel(area, p)?;
        }
        let mut entries = vec![
            entry("EP (max over layer-steps)", PALETTE[0], Mark::Box),
            entry("LLEP (max over layer-steps)", PALETTE[1], Mark::Box),
            entry("card memory capacity", PALETTE[3], Mark::Dashed),
        ];
        if self.panels.iter().any(|p| p.ep_saved + p.llep_saved > 0) {
            entries.push(entry(
                "of which activations saved for backward (the GPU keeping most, drawn on the highest bar)",
                SAVED,
                Mark::Box,
            ));
        }
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}

impl MemoryFig {
    /// One series: its heading and notes in a strip of their own (wrapped
    /// to the panel's width, so a long label is never cut), bars below.
    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        p: &MemoryPanel,
    ) -> Result<(), DrawError> {
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
        let (w, _) = area.dim_in_pixel();
        let chars = (w as usize).saturating_sub(40) / 9;
        let mut heading = wrap(
            &format!(
                "{} · LLEP {}",
                p.key.label(self.with_knobs),
                lambda_label(p.lambda)
            ),
            chars,
        );
        let mut notes = vec![];
        if p.ep_oom_rows + p.oom_rows > 0 {
            notes.push(format!(
                "out of memory in {} (EP) and {} (LLEP) layer-steps",
                p.ep_oom_rows, p.oom_rows
            ));
        }
        match (show_cap, cap) {
            (false, Some(c)) => notes.push(format!(
                "card capacity {c:.1} GiB is above this chart: peak use is {:.1}% of it",
                used / c * 100.0
            )),
            (_, None) => notes.push("card capacity unknown (no profile for this device)".into()),
            _ => {}
        }
        heading.truncate(3);
        let strip = 14 + 22 * heading.len() as u32 + 20 * notes.len() as u32;
        let (top, body) = area.split_vertically(strip);
        for (i, line) in heading.iter().enumerate() {
            let style = text(16).pos(Pos::new(HPos::Center, VPos::Top));
            top.draw(&Text::new(
                line.clone(),
                (w as i32 / 2, 10 + 22 * i as i32),
                style,
            ))
            .s()?;
        }
        for (i, n) in notes.iter().enumerate() {
            let y = 12 + 22 * heading.len() as i32 + 20 * i as i32;
            top.draw(&Text::new(n.clone(), (92, y), bold(14))).s()?;
        }
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .margin_top(4)
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
        // Saved activations are recorded as the most any GPU keeps: drawn
        // at the base of each policy's highest bar, where they sit in a
        // skewed step (the hot GPU computes the most rows).
        for (bars, saved, dx) in [(&p.ep, p.ep_saved, -0.21), (&p.llep, p.llep_saved, 0.21)] {
            let top = bars.iter().enumerate().max_by_key(|(_, &b)| b);
            if let (true, Some((gi, _))) = (saved > 0, top) {
                let x = gi as f64 + dx;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.12, 0.0), (x + 0.12, saved as f64 / GIB)],
                        SAVED.filled(),
                    )))
                    .s()?;
            }
        }
        if let (true, Some(c)) = (show_cap, cap) {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(-0.5, c), (g as f64 - 0.5, c)],
                    10,
                    6,
                    PALETTE[3].stroke_width(3),
                ))
                .s()?;
        }
        Ok(())
    }
}
