//! Per-GPU load against the planner's capacity: a heatmap over
//! layer-steps, or per-GPU bars when there is a single layer-step.

use super::DrawError;
use super::{bold, entry, legend, seg, text, Ctx, Figure, Mark, LEGEND_W, PALETTE};
use crate::report::data::{lambda_label, Heatmap};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Map load/capacity to a colour on one continuous scale (viridis, dark
/// purple at 0 to yellow at `vmax`): neighbouring loads get neighbouring
/// colours whichever side of capacity they fall, so 1.0005× capacity does
/// not look like a large overload beside 0.9995×. The capacity itself is
/// marked on the colour bar.
pub fn heat_color(v: f64, vmax: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = (v / vmax.max(1e-9)).clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
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

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        let (w, _) = self.size();
        let root = root.titled(&self.title, bold(20)).s()?;
        let (maps, bar) = root.split_horizontally(w - 190);
        let halves = maps.split_evenly((2, 1));
        let h = &self.map;
        let peak = |v: &[Vec<f64>]| v.iter().flatten().copied().fold(0.0f64, f64::max);
        let ep_name = format!(
            "EP: native token-copies per GPU (peak {:.3}× capacity)",
            peak(&h.ep)
        );
        let ll_name = format!(
            "LLEP {}: token-copies each GPU computes (peak {:.3}× capacity)",
            lambda_label(h.lambda),
            peak(&h.llep)
        );
        self.draw_half(&halves[0], &h.ep, ep_name)?;
        self.draw_half(&halves[1], &h.llep, ll_name)?;
        self.draw_color_bar(&bar)
    }
}

impl HeatmapFig {
    /// One map: layer-steps across, GPUs up, white lines between steps.
    fn draw_half<DB: DrawingBackend>(
        &self,
        half: &DrawingArea<DB, Shift>,
        cells: &[Vec<f64>],
        name: String,
    ) -> Result<(), DrawError> {
        let h = &self.map;
        let n = h.columns.len() as i32;
        let p = h.gpus as i32;
        let vmax = self.vmax();
        let mut steps: Vec<u32> = h.columns.iter().map(|c| c.0).collect();
        steps.dedup();
        let multi_step = steps.len() > 1;
        let layers_per_step = h.columns.iter().filter(|c| c.0 == h.columns[0].0).count();
        let both = multi_step && layers_per_step > 1;
        let label_every = (n as usize).div_ceil(24).max(1);
        let cols = h.columns.clone();
        let mut chart = ChartBuilder::on(half)
            .caption(name, text(17))
            .margin(10)
            .x_label_area_size(if multi_step { 62 } else { 50 })
            .y_label_area_size(70)
            .build_cartesian_2d(seg(n).into_segmented(), seg(p).into_segmented())
            .s()?;
        let x_desc = if both {
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
                    .map(|(s, l)| match (both, multi_step) {
                        (true, _) => format!("{s}/{l}"),
                        (false, true) => s.to_string(),
                        _ => l.to_string(),
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
        let x = |c: usize| SegmentValue::Exact(c as i32);
        let y = |g: usize| SegmentValue::Exact(g as i32);
        chart
            .draw_series(cells.iter().enumerate().flat_map(|(c, col)| {
                col.iter().enumerate().map(move |(g, &v)| {
                    Rectangle::new(
                        [(x(c), y(g)), (x(c + 1), y(g + 1))],
                        heat_color(v, vmax).filled(),
                    )
                })
            }))
            .s()?;
        if both {
            for (c, w) in h.columns.windows(2).enumerate() {
                if w[0].0 != w[1].0 {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(x(c + 1), y(0)), (x(c + 1), SegmentValue::Exact(p))],
                            WHITE.stroke_width(3),
                        )))
                        .s()?;
                }
            }
        }
        Ok(())
    }

    /// The colour scale, 0 to the largest load, capacity marked and named.
    fn draw_color_bar<DB: DrawingBackend>(
        &self,
        bar: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawError> {
        let vmax = self.vmax();
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
        // White under black, so the mark shows on dark and light colours.
        for (c, w) in [(WHITE, 7), (BLACK, 3)] {
            cb.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (1.0, 1.0)],
                c.stroke_width(w),
            )))
            .s()?;
        }
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
        .s()
    }
}

/// The load of a single layer-step: per-GPU token-copies, EP beside LLEP,
/// against the planner's capacity line. A one-column heatmap says little
/// and fills half the frame; bars show how far each GPU is from capacity.
pub struct LoadBarsFig {
    pub map: Heatmap,
    pub title: String,
}

impl Figure for LoadBarsFig {
    fn size(&self) -> (u32, u32) {
        (1280, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        let (chart_area, legend_area) = root.split_horizontally(self.size().0 - LEGEND_W);
        let h = &self.map;
        let (ep, ll, cap) = (&h.ep_raw[0], &h.llep_raw[0], h.capacity[0] as f64);
        let g = h.gpus;
        let top = ep.iter().chain(ll).map(|&v| v as f64).fold(cap, f64::max) * 1.1;
        let (step, layer) = h.columns[0];
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.title, bold(20))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(100)
            .build_cartesian_2d(-0.5..g as f64 - 0.5, 0.0..top)
            .s()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(g + 1)
            .x_desc(format!(
                "GPU (step {step}, layer {layer}: the only layer-step)"
            ))
            .y_desc("token-copies per GPU")
            .axis_desc_style(text(17))
            .label_style(text(15))
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 && *v >= 0.0 {
                    format!("{}", v.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .s()?;
        for (gi, (e, l)) in ep.iter().zip(ll).enumerate() {
            let x = gi as f64;
            chart
                .draw_series([
                    Rectangle::new([(x - 0.4, 0.0), (x - 0.02, *e as f64)], PALETTE[0].filled()),
                    Rectangle::new([(x + 0.02, 0.0), (x + 0.4, *l as f64)], PALETTE[1].filled()),
                ])
                .s()?;
        }
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, cap), (g as f64 - 0.5, cap)],
                10,
                6,
                BLACK.stroke_width(2),
            ))
            .s()?;
        let peak = |v: &[u64]| v.iter().copied().max().unwrap_or(0) as f64 / cap;
        let entries = vec![
            entry(
                format!("EP: native token-copies (peak {:.3}× capacity)", peak(ep)),
                PALETTE[0],
                Mark::Box,
            ),
            entry(
                format!(
                    "LLEP {}: token-copies each GPU computes (peak {:.3}× capacity)",
                    lambda_label(h.lambda),
                    peak(ll)
                ),
                PALETTE[1],
                Mark::Box,
            ),
            entry(
                format!("capacity ⌊α·(total div P)⌋ = {}", h.capacity[0]),
                BLACK,
                Mark::Dashed,
            ),
        ];
        legend(&legend_area.margin(40, 0, 0, 0), "legend", &entries)
    }
}
