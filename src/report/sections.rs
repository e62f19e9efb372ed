//! The report's sections, one function each: what every figure shows, the
//! numbers printed under it, and the summary table. The page itself is
//! `page.rs`; the drawing is `plots/`.

use super::data::{self, ImbalanceCdf, SeriesKey, SetupKey, SpeedupCurve};
use super::digest::Digest;
use super::plots::{
    render, CdfFig, Figure, HeatmapFig, LoadBarsFig, MemoryFig, PhaseFig, PolicyFig, ScatterFig,
    SpeedupFig,
};
use super::{Input, ReportError, ReportOptions, Section, SummaryRow, FIG_LIMIT};
use crate::results::{ResultRow, ResultsMeta};
use crate::sim::Profile;
use std::path::{Path, PathBuf};

/// What every section reads, computed once, and the files drawn so far.
pub(super) struct Build<'a> {
    inputs: &'a [Input],
    /// Running aggregates of every row, in page order.
    digest: Digest,
    /// The rows the accuracy plot reads whole (see `super::kept_rows`).
    rows: &'a [ResultRow],
    /// The policy comparison, where the rows hold an EPLB policy.
    policies: Option<PolicyFig>,
    opts: &'a ReportOptions,
    stage: &'a Path,
    progress: &'a dyn crate::progress::Progress,
    knobs: bool,
    curves: Vec<SpeedupCurve>,
    cdfs: Vec<ImbalanceCdf>,
    pub files: Vec<PathBuf>,
}

fn section(id: &str, title: &str, caption: &str) -> Section {
    Section {
        id: id.into(),
        title: title.into(),
        caption: caption.into(),
        figures: vec![],
        missing: None,
        numbers: vec![],
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0 * 1024.0)
}

fn argmax(v: &[u64]) -> usize {
    v.iter()
        .enumerate()
        .max_by_key(|(i, x)| (**x, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

impl<'a> Build<'a> {
    pub fn new(
        inputs: &'a [Input],
        mut digest: Digest,
        (rows, policies): (&'a [ResultRow], Option<PolicyFig>),
        opts: &'a ReportOptions,
        stage: &'a Path,
        progress: &'a dyn crate::progress::Progress,
    ) -> Self {
        let curves = digest.curves();
        let cdfs = digest.cdfs();
        Self {
            inputs,
            knobs: digest.knobs_vary,
            digest,
            rows,
            policies,
            opts,
            stage,
            progress,
            curves,
            cdfs,
            files: vec![],
        }
    }

    fn lambda_of(&self, s: &SetupKey) -> Option<f64> {
        data::chosen_lambda(&self.curves, s, self.opts.lambda)
    }

    /// Draw `f` as `stem.png` and `stem.svg` into the staging folder.
    fn fig(&mut self, s: &mut Section, stem: &str, f: &impl Figure) -> Result<(), ReportError> {
        for ext in ["png", "svg"] {
            let p = self.stage.join(format!("{stem}.{ext}"));
            render(f, &p)?;
            self.progress.inc(1);
            self.files.push(p);
        }
        s.figures.push(stem.into());
        Ok(())
    }

    /// Every section, in page order.
    pub fn sections(&mut self) -> Result<Vec<Section>, ReportError> {
        let mut v = vec![
            self.load()?,
            self.imbalance()?,
            self.speedup()?,
            self.phases()?,
            self.memory()?,
            self.accuracy()?,
        ];
        // only where the rows hold an EPLB policy: other pages stay as they were
        if let Some(f) = self.policies.take() {
            v.push(self.policies(f)?);
        }
        Ok(v)
    }

    /// EP, LLEP, EPLB and EPLB+LLEP side by side, per input.
    fn policies(&mut self, f: PolicyFig) -> Result<Section, ReportError> {
        let mut s = section(
            "policies",
            "Policies compared: EP, LLEP, EPLB, EPLB+LLEP",
            "Per input, every policy setting's mean layer time per layer-step relative to the first setting's (EP where it ran; its milliseconds in the label), and its peak memory on the busiest GPU (EPLB's replica weights and LLEP's received weights included). Measured rows where the inputs hold any, else simulated.",
        );
        for i in &f.inputs {
            let parts: Vec<String> = f
                .settings
                .iter()
                .zip(i.time_ms.iter().zip(&i.peak_bytes))
                .filter_map(|(name, (t, m))| {
                    Some(format!("{name} {:.2} ms / {:.2} GiB", (*t)?, gib((*m)?)))
                })
                .collect();
            s.numbers
                .push(format!("{}: {}.", i.label, parts.join(", ")));
        }
        self.fig(&mut s, "policies", &f)?;
        Ok(s)
    }

    /// Per-GPU load, EP against LLEP: a heatmap over layer-steps, or bars
    /// against the capacity line when a series has one layer-step.
    fn load(&mut self) -> Result<Section, ReportError> {
        let mut s = section(
            "load",
            "Per-GPU load over steps and layers: EP against LLEP",
            "Each cell is one GPU in one layer-step; colour is its token-copies divided by the planner's capacity ⌊α·(total div P)⌋ for that layer-step, on one continuous scale from 0 (dark) to the largest load (yellow), with the capacity marked on the colour bar, so a load just over capacity looks like one just under it. Top: EP (every copy on its native GPU). Bottom: what each GPU computes under LLEP at the λ shown. A series with a single layer-step is drawn as per-GPU bars instead, EP beside LLEP, against the capacity as a dashed line.",
        );
        let n_series = self.digest.series.len();
        let mut drawn = 0;
        for i in 0..n_series {
            if drawn == FIG_LIMIT {
                s.numbers.push(format!(
                    "{} more series not drawn (at most {FIG_LIMIT} load charts per page).",
                    n_series - FIG_LIMIT
                ));
                break;
            }
            let key = self.digest.series[i].key.clone();
            let Some(h) = self.digest.series[i].heatmap(self.lambda_of(&key.setup)) else {
                continue;
            };
            let key = &key;
            s.numbers.extend(self.load_numbers(key, &h));
            let stem = format!("load_heatmap_{}", i + 1);
            let title = format!("Per-GPU load · {}", key.label(self.knobs));
            match data::load_chart(&h) {
                data::LoadChart::Bars => self.fig(&mut s, &stem, &LoadBarsFig { map: h, title })?,
                data::LoadChart::Heatmap => self.fig(
                    &mut s,
                    &stem,
                    &HeatmapFig {
                        map: h,
                        title,
                        with_knobs: self.knobs,
                    },
                )?,
            }
            drawn += 1;
        }
        if s.figures.is_empty() {
            s.missing = Some("No series has both EP rows and LLEP rows with per-GPU loads, so there is no EP/LLEP load map to draw.".into());
        }
        Ok(s)
    }

    fn load_numbers(&self, key: &SeriesKey, h: &data::Heatmap) -> Vec<String> {
        let (c, e) = (h.columns[0], &h.ep_raw[0]);
        let peak = |v: &[Vec<f64>]| v.iter().flatten().copied().fold(0.0f64, f64::max);
        let mut out = vec![format!(
            "{}: step {} layer {}: capacity {} token-copies; EP loads per GPU {:?}; LLEP {} loads {:?}. Peak load/capacity: EP {:.3}, LLEP {:.3}.",
            key.label(self.knobs),
            c.0,
            c.1,
            h.capacity[0],
            e,
            data::lambda_label(h.lambda),
            h.llep_raw[0],
            peak(&h.ep),
            peak(&h.llep)
        )];
        if h.columns.len() == data::HEATMAP_MAX_COLUMNS {
            out.push(format!(
                "{}: only the first {} layer-steps are drawn.",
                key.label(self.knobs),
                data::HEATMAP_MAX_COLUMNS
            ));
        }
        out
    }

    fn imbalance(&mut self) -> Result<Section, ReportError> {
        let mut s = section(
            "imbalance",
            "How often would LLEP switch on? Distribution of max/mean load",
            "Cumulative distribution of the max/mean native GPU load over all layer-steps of each input (EP placement). LLEP plans a layer-step when its ratio is at least λ, so the share of layer-steps right of the dashed λ line is how often LLEP switches on.",
        );
        let with_l: Vec<(ImbalanceCdf, Option<f64>)> = self
            .cdfs
            .iter()
            .map(|c| (c.clone(), self.lambda_of(&c.setup)))
            .collect();
        for (c, l) in &with_l {
            let d = &c.ratios;
            let mut line = format!(
                "{}: {} layer-steps, max/mean from {:.3} to {:.3} (median {:.3}{})",
                c.setup.label(self.knobs),
                d.len(),
                d.min(),
                d.max(),
                d.median(),
                if d.binned() {
                    binned_note()
                } else {
                    String::new()
                }
            );
            if let Some(l) = l {
                line.push_str(&format!(
                    "; at {} LLEP is on in {:.1}% of layer-steps",
                    data::lambda_label(Some(*l)),
                    c.on_fraction(*l) * 100.0
                ));
            }
            s.numbers.push(line + ".");
        }
        if with_l.is_empty() {
            s.missing = Some("No layer-steps in the inputs.".into());
            return Ok(s);
        }
        let f = CdfFig {
            cdfs: with_l,
            title: "Max/mean GPU load over all layer-steps".into(),
            with_knobs: self.knobs,
        };
        self.fig(&mut s, "imbalance_cdf", &f)?;
        Ok(s)
    }

    fn speedup(&mut self) -> Result<Section, ReportError> {
        let mut s = section(
            "speedup",
            "Speedup over EP against λ",
            "Total layer time of EP divided by that of LLEP at each λ, summed over the same layer-steps. Simulated results are lines, measured results points (with the p10-p90 spread of their timed runs where recorded). Dashed: LLEP with no gate; dotted: the ideal-balance bound; the black dashed line, where drawn, is the λ that llep-trace tune recommends. When no input has two λ, a line would be a single dot: the speedups are drawn as bars per input instead.",
        );
        for c in &self.curves {
            s.numbers.push(speedup_line(c, self.knobs));
        }
        if self.curves.is_empty() {
            s.missing =
                Some("No series has both EP and LLEP rows, so there is no speedup to plot.".into());
            return Ok(s);
        }
        if !self.curves.iter().any(|c| c.key.measured()) {
            s.numbers
                .push("No measured rows in the inputs: only simulated curves are drawn.".into());
        }
        // Mark what `tune` recommends when the simulated inputs agree on one
        // threshold (and the user did not pick the λ to show).
        let mut shown: Vec<f64> = self
            .curves
            .iter()
            .filter(|c| !c.key.measured())
            .filter_map(|c| c.shown.flatten())
            .collect();
        shown.dedup();
        let recommended = match shown.as_slice() {
            [l] if self.opts.lambda.is_none() => Some(*l),
            _ => None,
        };
        let f = SpeedupFig {
            curves: self.curves.clone(),
            title: "LLEP speedup over EP against λ".into(),
            recommended,
            regret: false,
            with_knobs: self.knobs,
        };
        self.fig(&mut s, "speedup_vs_lambda", &f)?;
        Ok(s)
    }

    fn phases(&mut self) -> Result<Section, ReportError> {
        let bars: Vec<data::PhaseBar> = (self.digest.series.iter())
            .flat_map(|x| x.phase_bars(self.lambda_of(&x.key.setup)))
            .collect();
        let mut s = section(
            "phases",
            "Where the time goes: per-phase time per policy",
            "Mean time per layer-step in each phase (overhead, dispatch, weight transfer, compute, combine; for a training step also combine-bwd, dgrad, wgrad, dispatch-bwd and the weight-gradient return) for EP, LLEP at the λ shown, and the ideal bound. Dispatch and weight transfer overlap (the layer waits for the longer), as do dispatch-bwd and the gradient return, so the black tick, the layer time, can end before the stack does.",
        );
        for b in &bars {
            s.numbers.push(format!(
                "{} · {}: {} layer-steps, mean layer time {:.4} ms (overhead {:.4}, dispatch {:.4}, weight transfer {:.4}, compute {:.4}, combine {:.4}).",
                b.key.label(self.knobs),
                b.policy_label(),
                b.layer_steps,
                b.total_ms,
                b.phases_ms[0],
                b.phases_ms[1],
                b.phases_ms[2],
                b.phases_ms[3],
                b.phases_ms[4]
            ));
            if b.has_backward() {
                let p = &b.phases_ms;
                s.numbers.push(format!(
                    "{} · {} backward: combine-bwd {:.4}, dgrad {:.4}, wgrad {:.4}, dispatch-bwd {:.4}, weight-gradient return {:.4} ms.",
                    b.key.label(self.knobs),
                    b.policy_label(),
                    p[5], p[6], p[7], p[8], p[9]
                ));
            }
        }
        if let Some(line) = inter_node_line(self.digest.inter_node()) {
            s.numbers.push(line);
        }
        if bars.is_empty() {
            s.missing = Some("No rows with phase times.".into());
            return Ok(s);
        }
        let f = PhaseFig {
            bars: bars.into_iter().take(36).collect(),
            title: "Mean per-phase time per layer-step".into(),
            with_knobs: self.knobs,
        };
        self.fig(&mut s, "phases", &f)?;
        Ok(s)
    }

    fn memory(&mut self) -> Result<Section, ReportError> {
        let mut panels: Vec<data::MemoryPanel> = (self.digest.series.iter())
            .filter_map(|x| x.memory_panel(self.lambda_of(&x.key.setup)))
            .collect();
        let mut s = section(
            "memory",
            "Peak memory per GPU against the card's capacity",
            "Peak memory of each GPU (max over layer-steps): native expert weights, received foreign weights, token buffers and activations; EP against LLEP at the λ shown. The card's capacity is the dashed line, or stated above the chart when the bars would be invisible beside it.",
        );
        let metas: Vec<&ResultsMeta> = self.inputs.iter().map(|i| &i.meta).collect();
        for p in &mut panels {
            let cap = card_bytes(&p.key, &metas);
            p.card_bytes = cap.as_ref().map(|c| c.0);
            let mx = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
            s.numbers.push(format!(
                "{}: peak EP {:.3} GiB (GPU {}), LLEP {} {:.3} GiB (GPU {}); card {}; out of memory in {} layer-steps under EP and {} under LLEP.",
                p.key.label(self.knobs),
                gib(mx(&p.ep)),
                argmax(&p.ep),
                data::lambda_label(p.lambda),
                gib(mx(&p.llep)),
                argmax(&p.llep),
                match &cap {
                    Some((b, src)) => format!("{:.1} GiB from the {src}", gib(*b)),
                    None => "capacity unknown".into(),
                },
                p.ep_oom_rows,
                p.oom_rows
            ));
            if p.ep_saved + p.llep_saved > 0 {
                s.numbers.push(format!(
                    "{}: activations saved for backward, the most one GPU keeps: EP {:.3} GiB, LLEP {:.3} GiB (inside the peaks above).",
                    p.key.label(self.knobs),
                    gib(p.ep_saved),
                    gib(p.llep_saved)
                ));
            }
        }
        if panels.is_empty() {
            s.missing = Some("No series has both EP and LLEP rows with memory figures.".into());
            return Ok(s);
        }
        let f = MemoryFig {
            panels: panels.into_iter().take(FIG_LIMIT).collect(),
            title: "Peak memory per GPU".into(),
            with_knobs: self.knobs,
        };
        self.fig(&mut s, "memory", &f)?;
        Ok(s)
    }

    fn accuracy(&mut self) -> Result<Section, ReportError> {
        let pairs = data::sim_measured_pairs(self.rows);
        let measured = self.digest.measured;
        let mut s = section(
            "accuracy",
            "Simulated against measured layer time",
            "Each point is one measured layer-step under one policy and λ, against the simulation of the same layer-step, setup and policy. On the dashed y = x line the simulation is exact; the dotted lines are measured = simulated × 1.2 and ÷ 1.2. Error = (simulated − measured) / measured.",
        );
        let Some((med, worst)) = data::error_stats(&pairs) else {
            s.missing = Some(if measured == 0 {
                "No measured rows in the inputs. Give the results of `llep-trace replay` together with their simulated twins to draw this plot.".into()
            } else {
                format!("{measured} measured rows, but none has a simulated twin (same trace, scenario, GPUs, α, m, step, layer, policy and λ) in the inputs; simulate the same trace and settings and pass both files.")
            });
            return Ok(s);
        };
        s.numbers.push(format!(
            "{} matched layer-steps ({} measured rows in all): median |error| {med:.2}%, worst {worst:.2}%.",
            pairs.len(),
            measured
        ));
        for p in pairs.iter().take(2) {
            s.numbers.push(format!(
                "step {} layer {} {} {}: simulated {:.4} ms ({} profile), measured {:.4} ms on {} (error {:+.1}%).",
                p.step,
                p.layer,
                p.policy,
                if p.policy == "llep" { data::lambda_label(p.lambda) } else { String::new() },
                p.simulated_ms,
                p.profile,
                p.measured_ms,
                p.device,
                p.rel_error() * 100.0
            ));
        }
        let f = ScatterFig {
            title: format!(
                "Simulated vs measured layer time: median |error| {med:.1}%, worst {worst:.1}%"
            ),
            pairs,
        };
        self.fig(&mut s, "sim_vs_measured", &f)?;
        Ok(s)
    }

    /// One row per series: the λ shown and what LLEP gains there.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let mut summary = vec![];
        for x in &self.digest.series {
            let key = &x.key;
            let lam = self.lambda_of(&key.setup);
            let c = self.curves.iter().find(|c| &c.key == key);
            let cdf = self.cdfs.iter().find(|c| c.setup == key.setup);
            summary.push(SummaryRow {
                series: key.label(self.knobs),
                layer_steps: x.layer_steps(),
                mean_ratio: cdf.map_or(f64::NAN, |c| c.ratios.mean()),
                lambda: lam,
                llep_on_pct: match (cdf, lam) {
                    (Some(c), Some(l)) => Some(c.on_fraction(l) * 100.0),
                    (Some(_), None) => Some(100.0),
                    _ => None,
                },
                speedup: c.and_then(|c| match lam {
                    Some(l) => c.points.iter().find(|p| p.0 == l).map(|p| p.1),
                    None => c.always,
                }),
                always: c.and_then(|c| c.always),
                ideal: c.and_then(|c| c.ideal),
            });
        }
        summary
    }
}

/// What a binned median says of itself on the page.
fn binned_note() -> String {
    format!(
        ", to within {}%: past {} layer-steps the median and the CDF come from \
         a histogram of bins {}% wide; the count, the range, the mean and the \
         share of layer-steps at or above λ are exact",
        super::ratios::BIN_REL * 100.0,
        super::ratios::EXACT_CAP,
        super::ratios::BIN_REL * 100.0
    )
}

/// Bytes crossing nodes per layer-step for each setting, when the rows
/// were simulated on several nodes (`simulate --nodes`); `None` otherwise.
fn inter_node_line(sums: Option<Vec<(String, u64, usize)>>) -> Option<String> {
    let sums = sums?;
    let parts: Vec<String> = sums
        .iter()
        .map(|(l, b, n)| format!("{l} {:.3} GB", *b as f64 / *n as f64 / 1e9))
        .collect();
    Some(format!(
        "Bytes crossing nodes per layer-step (tokens dispatched and combined, weights sent): {}.",
        parts.join(", ")
    ))
}

/// The numbers under the speedup figure for one series, led by what
/// `llep-trace tune` recommends on the same rows.
fn speedup_line(c: &SpeedupCurve, knobs: bool) -> String {
    let mut line = format!("{}:", c.key.label(knobs));
    if let Some(r) = &c.recommended {
        let gain = if r.never {
            Some(1.0)
        } else if let Some(l) = r.lambda {
            c.points.iter().find(|p| p.0 == l).map(|p| p.1)
        } else {
            c.always
        };
        let what = if r.never {
            "never (plain EP)".to_string()
        } else {
            format!("λ={}", r.label())
        };
        line.push_str(&format!(" llep-trace tune recommends {what}"));
        if let Some(g) = gain {
            line.push_str(&format!(", {g:.4}× over EP"));
        }
        if r.never {
            if let Some(Some(l)) = c.shown {
                line.push_str(&format!(
                    " (LLEP shown at {}, the best LLEP setting)",
                    data::lambda_label(Some(l))
                ));
            }
        }
    }
    if let [p] = c.points.as_slice() {
        line.push_str(&format!(
            "; {} gives {:.4}×",
            data::lambda_label(Some(p.0)),
            p.1
        ));
    } else if let (Some(f), Some(l)) = (c.points.first(), c.points.last()) {
        line.push_str(&format!(
            "; {} gives {:.4}×, {} gives {:.4}×",
            data::lambda_label(Some(f.0)),
            f.1,
            data::lambda_label(Some(l.0)),
            l.1
        ));
    }
    if let Some(a) = c.always {
        line.push_str(&format!("; no gate {a:.4}×"));
    }
    if let Some(b) = c.ideal {
        line.push_str(&format!("; ideal {b:.4}×"));
    }
    line + "."
}

/// Card memory per series: the profile a simulation used (from the results
/// metadata, else the built-in of that name); for measured rows the
/// built-in profile whose card matches the device.
pub(super) fn card_bytes(key: &SeriesKey, metas: &[&ResultsMeta]) -> Option<(u64, String)> {
    let builtins: Vec<Profile> = ["h100", "h200"]
        .iter()
        .filter_map(|n| Profile::load(n).ok())
        .collect();
    let named = |p: &Profile, how: &str| {
        (
            p.gpu_mem_bytes,
            format!("{how} {} profile ({})", p.name, p.card),
        )
    };
    if key.measured() {
        let dev = key.origin.to_ascii_uppercase();
        return builtins
            .iter()
            .find(|p| {
                p.card.eq_ignore_ascii_case(&key.origin)
                    || dev.contains(&p.name.to_ascii_uppercase())
            })
            .map(|p| named(p, "built-in"));
    }
    for m in metas {
        if let Some(p) = m
            .profile
            .as_ref()
            .and_then(|v| serde_json::from_value::<Profile>(v.clone()).ok())
        {
            if p.name == key.origin {
                return Some((p.gpu_mem_bytes, format!("profile {} ({})", p.name, p.card)));
            }
        }
    }
    builtins
        .iter()
        .find(|p| p.name == key.origin)
        .map(|p| named(p, "built-in"))
}
