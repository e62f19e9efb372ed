//! The policy comparison: per input, each policy setting's layer time
//! (relative to EP's, EP's milliseconds in the input's label) and its peak
//! memory per GPU, side by side. Built from measured rows when the inputs
//! hold any, else from simulated ones; drawn by `report` when the rows
//! hold an EPLB policy (the "LLEP or EPLB?" question).

use super::{bold, color, entry, legend, legend_height, text, Ctx, DrawError, Figure, Mark};
use crate::plan::Policy;
use crate::report::data::trace_stem;
use crate::results::{ResultRow, Source};
use crate::sim::EplbSim;
use plotters::coord::Shift;
use plotters::prelude::*;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// One input's figures per setting (`None` where it was not run).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    pub label: String,
    /// Mean layer time per layer-step, ms, per setting.
    pub time_ms: Vec<Option<f64>>,
    /// Largest peak memory per GPU over its layer-steps, bytes, per
    /// setting: the driver's view where measured, else the allocator's (or
    /// the model's, simulated).
    pub peak_bytes: Vec<Option<u64>>,
}

/// Time and memory per policy setting, per input.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFig {
    pub title: String,
    /// Setting labels ("ep", "llep λ=1.3", "eplb R=16", ...), in order.
    pub settings: Vec<String>,
    pub inputs: Vec<PolicyInput>,
    /// Whether the figures are measured (else simulated).
    pub measured: bool,
}

/// A row's setting label, EPLB's setting included: its redundancy, its
/// placement when not the oracle ("prev W/P": the mean of the previous W
/// steps, rebalanced every P) and its replica split when not SGLang's.
pub fn setting_of(r: &ResultRow) -> String {
    match EplbSim::from_note(&r.input_note) {
        Some(e) if matches!(r.policy, Policy::Eplb | Policy::EplbLlep) => {
            let mut what = format!("R={}", e.redundant);
            if !e.oracle {
                what += &format!(" prev {}/{}", e.window, e.period);
            }
            if e.split != crate::sim::ReplicaSplit::Sglang {
                what += &format!(" {}", e.split);
            }
            let l = r.setting_label();
            match l.split_once(' ') {
                Some((p, rest)) => format!("{p} {what} {rest}"),
                None => format!("{l} {what}"),
            }
        }
        _ => r.setting_label(),
    }
}

fn input_of(r: &ResultRow, many_gpus: bool) -> String {
    let mut s = if r.scenario.is_empty() {
        trace_stem(&r.trace)
    } else {
        r.scenario.clone()
    };
    if many_gpus {
        s = format!("{s} P={}", r.gpus);
    }
    s
}

fn rank(r: &ResultRow) -> u8 {
    match r.policy {
        Policy::Ep => 0,
        Policy::Llep | Policy::LlepAuto | Policy::LlepTopo => 1,
        Policy::Eplb => 2,
        Policy::EplbLlep => 3,
        Policy::Ideal => 4,
    }
}

/// The R of an EPLB setting label (0 for the others).
fn redundancy(label: &str) -> usize {
    label
        .split(' ')
        .find_map(|w| w.strip_prefix("R=")?.parse().ok())
        .unwrap_or(0)
}

/// Colour of setting `k` of `n`: the palette while it lasts, else evenly
/// spaced hues (so no two settings share a colour).
fn shade(k: usize, n: usize) -> RGBColor {
    if n <= 10 {
        return color(k);
    }
    let h = k as f64 / n as f64;
    let (r, g, b) = HSLColor(h, 0.65, 0.45 + 0.12 * (k % 2) as f64).rgb();
    RGBColor(r, g, b)
}

/// Where a row comes on the page: its (trace, scenario) rank, then its
/// position among the inputs' rows (see `report::digest::Digest::rank`).
pub type Pos = ((usize, (u8, usize)), usize);

/// One input's rows of one setting: summed time, rows, largest peak.
#[derive(Debug, Clone, Default)]
struct Cell {
    sum_ms: f64,
    n: usize,
    peak: Option<u64>,
}

/// The rows of one source (measured or simulated), as running totals.
#[derive(Debug, Clone, Default)]
struct SourceAcc {
    eplb: bool,
    gpus: Option<u32>,
    many_gpus: bool,
    /// (first position, (policy rank, setting label)).
    settings: Vec<(Pos, (u8, String))>,
    /// (first position, (trace stem or scenario, GPUs)).
    inputs: Vec<(Pos, (String, u32))>,
    cells: std::collections::HashMap<(String, u32, String), Cell>,
}

/// Put `k` in `v` at its first position so far.
fn first_seen<K: PartialEq>(v: &mut Vec<(Pos, K)>, k: K, pos: Pos) {
    match v.iter_mut().find(|x| x.1 == k) {
        Some(x) => x.0 = x.0.min(pos),
        None => v.push((pos, k)),
    }
}

impl SourceAcc {
    fn add(&mut self, r: &ResultRow, pos: Pos) {
        self.eplb |= matches!(r.policy, Policy::Eplb | Policy::EplbLlep);
        match self.gpus {
            None => self.gpus = Some(r.gpus),
            Some(g) => self.many_gpus |= g != r.gpus,
        }
        let setting = setting_of(r);
        first_seen(&mut self.settings, (rank(r), setting.clone()), pos);
        let base = input_of(r, false);
        first_seen(&mut self.inputs, (base.clone(), r.gpus), pos);
        if !r.oom && r.t_total_ms.is_finite() {
            let c = self.cells.entry((base, r.gpus, setting)).or_default();
            c.sum_ms += r.t_total_ms;
            c.n += 1;
            let m = r
                .driver_mem_per_gpu
                .iter()
                .copied()
                .max()
                .unwrap_or(r.peak_mem_max_bytes);
            c.peak = Some(c.peak.map_or(m, |p| p.max(m)));
        }
    }

    fn finish(mut self, measured: bool) -> Option<PolicyFig> {
        if !self.eplb {
            return None;
        }
        self.settings.sort_by_key(|s| s.0);
        self.inputs.sort_by_key(|s| s.0);
        // EP, LLEP, EPLB, EPLB+LLEP; within one, by R, then first-seen order
        let mut settings: Vec<(u8, String)> = self.settings.into_iter().map(|s| s.1).collect();
        settings.sort_by_key(|s| (s.0, redundancy(&s.1)));
        let settings: Vec<String> = settings.into_iter().map(|s| s.1).collect();
        if settings.len() < 2 {
            return None;
        }
        let inputs = self
            .inputs
            .iter()
            .map(|(_, (base, gpus))| {
                let (time_ms, peak_bytes) = settings
                    .iter()
                    .map(
                        |s| match self.cells.get(&(base.clone(), *gpus, s.clone())) {
                            Some(c) if c.n > 0 => (Some(c.sum_ms / c.n as f64), c.peak),
                            _ => (None, None),
                        },
                    )
                    .unzip();
                PolicyInput {
                    label: if self.many_gpus {
                        format!("{base} P={gpus}")
                    } else {
                        base.clone()
                    },
                    time_ms,
                    peak_bytes,
                }
            })
            .collect();
        Some(PolicyFig {
            title: format!(
                "Policies compared: layer time and peak memory ({})",
                if measured { "measured" } else { "simulated" }
            ),
            settings,
            inputs,
            measured,
        })
    }
}

/// [`PolicyFig`]'s data as running totals of rows fed in any order with
/// their page position: per (input, setting) a time sum, a count and the
/// largest peak, so the comparison holds no rows.
#[derive(Debug, Clone, Default)]
pub struct PolicyAcc {
    any_measured: bool,
    measured: SourceAcc,
    simulated: SourceAcc,
}

impl PolicyAcc {
    pub fn add(&mut self, r: &ResultRow, pos: Pos) {
        self.any_measured |= r.source == Source::Measured;
        if r.policy == Policy::Ideal {
            return;
        }
        if r.source == Source::Measured {
            self.measured.add(r, pos);
        } else {
            self.simulated.add(r, pos);
        }
    }

    /// The comparison of measured rows when there are any, else simulated;
    /// `None` without at least two settings or any EPLB row.
    pub fn finish(self) -> Option<PolicyFig> {
        if self.any_measured {
            self.measured.finish(true)
        } else {
            self.simulated.finish(false)
        }
    }
}

impl PolicyFig {
    /// The comparison of `rows`, in their order (see [`PolicyAcc`]).
    pub fn from_rows(rows: &[ResultRow]) -> Option<PolicyFig> {
        let mut acc = PolicyAcc::default();
        for (i, r) in rows.iter().enumerate() {
            acc.add(r, ((0, (0, 0)), i));
        }
        acc.finish()
    }

    /// Each input's times relative to its first setting's (EP when run).
    fn relative(&self, i: &PolicyInput) -> Vec<Option<f64>> {
        let base = i.time_ms.first().copied().flatten();
        i.time_ms
            .iter()
            .map(|t| match (t, base) {
                (Some(t), Some(b)) if b > 0.0 => Some(t / b),
                _ => None,
            })
            .collect()
    }

    fn entries(&self) -> Vec<super::Entry> {
        self.settings
            .iter()
            .enumerate()
            .map(|(k, s)| entry(s.clone(), shade(k, self.settings.len()), Mark::Box))
            .collect()
    }
}

impl Figure for PolicyFig {
    fn size(&self) -> (u32, u32) {
        let w = (520 + 90 * self.inputs.len() as u32 * (self.settings.len() as u32).min(6) / 2)
            .clamp(1100, 1800);
        let h = 900.max(legend_height(&self.entries(), 340) + 60);
        (w, h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&WHITE).s()?;
        let root = root.titled(&self.title, bold(20)).s()?;
        let (charts, legend_area) = root.split_horizontally(self.size().0 - 340);
        let (top, bottom) = charts.split_vertically(charts.dim_in_pixel().1 / 2);
        let first = self.settings[0].clone();
        let rel: Vec<Vec<Option<f64>>> = self.inputs.iter().map(|i| self.relative(i)).collect();
        let tmax = rel
            .iter()
            .flatten()
            .flatten()
            .copied()
            .fold(1.0f64, f64::max)
            * 1.12;
        let labels: Vec<String> = self
            .inputs
            .iter()
            .map(|i| match i.time_ms.first().copied().flatten() {
                Some(t) => format!("{} ({first} {t:.2} ms)", i.label),
                None => i.label.clone(),
            })
            .collect();
        self.panel(
            &top,
            &rel,
            tmax,
            &format!("layer time / {first}'s (mean per layer-step; lower is better)"),
            &labels,
            |v| format!("{v:.2}"),
        )?;
        let mem: Vec<Vec<Option<f64>>> = self
            .inputs
            .iter()
            .map(|i| {
                i.peak_bytes
                    .iter()
                    .map(|b| b.map(|b| b as f64 / GIB))
                    .collect()
            })
            .collect();
        let mmax = mem
            .iter()
            .flatten()
            .flatten()
            .copied()
            .fold(0.0f64, f64::max)
            .max(1e-6)
            * 1.12;
        let names: Vec<String> = self.inputs.iter().map(|i| i.label.clone()).collect();
        self.panel(
            &bottom,
            &mem,
            mmax,
            if self.measured {
                "peak memory per GPU, GiB (busiest GPU; driver's view: context, NCCL, cuBLAS included)"
            } else {
                "peak memory per GPU, GiB (busiest GPU, simulated)"
            },
            &names,
            |v| format!("{v:.1}"),
        )?;
        legend(&legend_area.margin(40, 0, 0, 0), "policy", &self.entries())
    }
}

impl PolicyFig {
    /// Grouped bars: one group per input, one bar per setting.
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        vals: &[Vec<Option<f64>>],
        ymax: f64,
        ydesc: &str,
        labels: &[String],
        fmt: impl Fn(f64) -> String,
    ) -> Result<(), DrawError> {
        let n = self.inputs.len();
        let ns = self.settings.len().max(1);
        let mut chart = ChartBuilder::on(area)
            .margin(14)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .caption(ydesc, text(16))
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..ymax)
            .s()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .label_style(text(14))
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .s()?;
        for (i, row) in vals.iter().enumerate() {
            // only the settings this input ran, side by side
            let present: Vec<(usize, f64)> = row
                .iter()
                .enumerate()
                .filter_map(|(k, v)| Some((k, (*v)?)))
                .collect();
            let w = 0.84 / present.len().max(1) as f64;
            for (slot, &(k, v)) in present.iter().enumerate() {
                let x0 = i as f64 - 0.42 + slot as f64 * w;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0 + 0.005, 0.0), (x0 + w - 0.005, v)],
                        shade(k, ns).filled(),
                    )))
                    .s()?;
                if present.len() * n <= 24 {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            fmt(v),
                            (x0 + 0.01, v + ymax * 0.01),
                            text(11),
                        )))
                        .s()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Gate;

    fn row(scn: &str, policy: Policy, gate: Gate, note: &str, t: f64, mem: u64) -> ResultRow {
        ResultRow {
            scenario: scn.into(),
            policy,
            gate,
            input_note: note.into(),
            t_total_ms: t,
            peak_mem_max_bytes: mem,
            gpus: 2,
            source: Source::Measured,
            ..Default::default()
        }
    }

    #[test]
    fn settings_and_inputs_in_order_with_eplb_redundancy() {
        let e16 = "synthetic; eplb R=16: oracle placement from the same step's loads (an upper bound, not reachable online); replica split sglang";
        let e32 = e16.replace("R=16", "R=32");
        let w8 = "synthetic; eplb R=16: placement from the mean of the previous 1 steps, rebalanced every 2 steps; replica split vllm";
        let rows = vec![
            row("95:1", Policy::Eplb, Gate::Never, e16, 20.0, 9 << 30),
            row("95:1", Policy::Ep, Gate::Never, "synthetic", 40.0, 8 << 30),
            row("95:1", Policy::Eplb, Gate::Never, &e32, 15.0, 10 << 30),
            row(
                "95:1",
                Policy::Llep,
                Gate::Ratio(1.3),
                "synthetic",
                10.0,
                7 << 30,
            ),
            row(
                "balanced",
                Policy::Ep,
                Gate::Never,
                "synthetic",
                10.0,
                6 << 30,
            ),
            row(
                "95:1",
                Policy::EplbLlep,
                Gate::Ratio(1.3),
                e16,
                12.0,
                9 << 30,
            ),
            row("95:1", Policy::Eplb, Gate::Never, w8, 30.0, 9 << 30),
        ];
        let f = PolicyFig::from_rows(&rows).unwrap();
        assert_eq!(
            f.settings,
            [
                "ep",
                "llep λ=1.3",
                "eplb R=16",
                "eplb R=16 prev 1/2 vllm",
                "eplb R=32",
                "eplb+llep R=16 λ=1.3"
            ]
        );
        assert_eq!(f.inputs.len(), 2);
        assert_eq!(f.inputs[0].label, "95:1");
        assert_eq!(f.relative(&f.inputs[0])[2], Some(0.5));
        assert_eq!(f.inputs[1].time_ms[1], None);
        assert_eq!(f.inputs[0].peak_bytes[4], Some(10 << 30));
        assert_eq!(f.inputs[0].time_ms[5], Some(12.0));
        // no EPLB row: no figure
        assert!(PolicyFig::from_rows(&rows[1..2]).is_none());
        assert_eq!(f.inputs[0].time_ms[3], Some(30.0));
        // fed in another order with their page positions: the same figure
        let mut acc = PolicyAcc::default();
        for (i, r) in rows.iter().enumerate().rev() {
            acc.add(r, ((0, (0, 0)), i));
        }
        assert_eq!(acc.finish(), Some(f.clone()));
        // a later page rank puts "balanced" first whatever the row order
        let mut acc = PolicyAcc::default();
        for (i, r) in rows.iter().enumerate() {
            let rank = (0, (u8::from(r.scenario != "balanced"), 0));
            acc.add(r, (rank, i));
        }
        let g = acc.finish().unwrap();
        assert_eq!(g.inputs[0].label, "balanced");
        assert_eq!(g.inputs[1], f.inputs[0]);
        assert_eq!(g.settings, f.settings);
    }
}
