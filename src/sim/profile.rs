//! Hardware profiles: the parameters the cost model prices a plan with.
//! A profile is a JSON file a user can write; `h100` and `h200` are built in.
//! [`fit_profile`] turns `calibrate`'s raw measurements into one.

use super::bwd::{self, BwdTable};
use super::model::{self, GemmTable, Launches, LayerFit, MemModel, MsgModel};
#[cfg(test)]
use crate::gpu::calibrate::MemRaw;
use crate::gpu::calibrate::{Calibration, MsgRaw};
use crate::gpu::CHUNK;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Measured GEMM time of one expert group (gate_up + down) against tokens,
/// for one model shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmCurve {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    /// (tokens, milliseconds) sorted by tokens.
    pub points: Vec<(f64, f64)>,
}

/// How well the profile's predictions matched measurement, when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredError {
    pub median_abs_pct: f64,
    pub worst_abs_pct: f64,
    pub mem_worst_abs_pct: f64,
    pub rows: u32,
    pub report: String,
    /// The same rows split into the expert shapes the profile's layer fit
    /// was fitted on and the shapes held out of it, when the stamp split
    /// them (`compare --held-out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitError>,
    /// Median |error| of the layer time per replayed batch size, as
    /// (tokens per GPU, percent): the cost-aware gate's margin at that
    /// size (decode-sized layers are priced less surely than prefill ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_tokens: Vec<(u64, f64)>,
    /// The same over rows replayed with `--cuda-graphs on` (then
    /// `by_tokens` is over the others): the gate's margin when the layer
    /// is priced in that mode, where decode-sized layers no longer measure
    /// the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_by_tokens: Vec<(u64, f64)>,
    /// The cost-aware gate's margin chosen on the stamped rows' inputs
    /// where both EP and a switched-on LLEP were measured (issued one by
    /// one; `graph_gate_margin`: as CUDA graphs). When present it is the
    /// gate's margin in that mode, in place of `by_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_margin: Option<GateMargin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_gate_margin: Option<GateMargin>,
}

/// A margin for the cost-aware gate, chosen on measured inputs
/// (`sim::accuracy::Accuracy::gate_margin`): of the margins tried, those
/// that send the fewest inputs to a plan more than 3% slower than the
/// other, and the middle one of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateMargin {
    /// llep-auto takes LLEP when its predicted time times (1 + margin)
    /// is below EP's; percent.
    pub margin_pct: f64,
    /// Inputs it was chosen on.
    pub inputs: u32,
    /// Of those, how many the gate at this margin sends to the plan that
    /// measured more than 3% slower than the other, and their mean loss
    /// over all inputs, percent.
    pub losses: u32,
    pub mean_loss_pct: f64,
}

/// Error on the calibration shapes' rows and on the held-out shapes' rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitError {
    /// (hidden, intermediate) of the held-out expert shapes.
    pub held_out_shapes: Vec<(u32, u32)>,
    pub in_sample_rows: u32,
    pub in_sample_median_abs_pct: f64,
    pub in_sample_worst_abs_pct: f64,
    pub held_out_rows: u32,
    pub held_out_median_abs_pct: f64,
    pub held_out_worst_abs_pct: f64,
    /// Peak memory over all rows: median |error|, and how many rows are
    /// more than 3% below the measured peak (the unsafe direction).
    pub mem_median_abs_pct: f64,
    pub mem_below_3pct_rows: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub card: String,
    /// "estimate" (from published anchors) or "measured" (by `calibrate`).
    pub status: String,
    pub note: String,
    pub gpu_mem_bytes: u64,
    /// Sustained dense bf16 GEMM throughput, TFLOP/s.
    pub gemm_peak_tflops: f64,
    /// Tokens per group at which a group reaches half the peak throughput.
    pub gemm_half_tokens: f64,
    /// Fixed cost per expert group (launches), microseconds.
    pub gemm_launch_us: f64,
    #[serde(default)]
    pub gemm_curves: Vec<GemmCurve>,
    /// All-to-all bandwidth per GPU per direction, GB/s, and latency.
    pub link_gbps: f64,
    pub link_latency_us: f64,
    /// Point-to-point weight-transfer bandwidth per GPU, GB/s, and latency.
    pub p2p_gbps: f64,
    pub p2p_latency_us: f64,
    /// Inter-node link per GPU (its own NIC), GB/s per direction, and its
    /// latency; prices what crosses nodes (tokens and weights) when the
    /// GPUs are split over several nodes. Without them in a profile: the
    /// estimate for one 400 Gb/s NIC per GPU (50 GB/s, 35 us), not measured.
    #[serde(default = "default_inter_gbps")]
    pub inter_gbps: f64,
    #[serde(default = "default_inter_latency_us")]
    pub inter_latency_us: f64,
    /// The inter-node link carries both directions on one budget of
    /// `inter_gbps` (bytes out plus in), as NCCL's socket transport over
    /// one host's loopback does for pseudo-nodes (`calibrate --nodes` finds
    /// it); off, a NIC is full duplex and the larger direction counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inter_shared: bool,
    /// Nodes the GPUs are split over, evenly (`--nodes`, `--topology`): a
    /// setting of the run rather than of the card, carried here so that
    /// everything that prices a plan sees it. 1: every link is intra-node.
    #[serde(default = "one_node", skip_serializing_if = "is_one_node")]
    pub nodes: u32,
    /// The layer's schedule (`--overlap`), a setting of the run like
    /// `nodes`: sequential, or pipelined in chunks (`sim::overlap`).
    #[serde(skip)]
    pub overlap: crate::gpu::pipeline::Overlap,
    /// How replay issues the expert units (`--cuda-graphs`), a setting of
    /// the run: one host call per GEMM (false), or each compute phase as
    /// one CUDA graph (true), which prices no host floor per unit.
    #[serde(skip)]
    pub cuda_graphs: bool,
    /// How tokens and weights move (`--exchange`), a setting of the run:
    /// NCCL, or the copy engines (priced with `ce_tokens` and
    /// `ce_weights`).
    #[serde(skip)]
    pub exchange: crate::gpu::Exchange,
    /// The expert GEMMs' path (`--gemm`), a setting of the run: `fused`
    /// is priced with `fused_gemm_tables` where the profile has them.
    #[serde(skip)]
    pub gemm: crate::gpu::GemmImpl,
    /// Count exchange, planning and synchronisation per layer, microseconds.
    pub overhead_us: f64,
    /// Memory in use before the layer runs (context, allocator), bytes.
    pub mem_baseline_bytes: u64,
    /// Communicator buffers per peer GPU (NCCL grows with the EP size), bytes.
    #[serde(default)]
    pub mem_per_peer_bytes: u64,
    /// On-device copy bandwidth, GB/s of bytes read plus written (packing
    /// and unpacking token rows); 0 leaves copies unpriced.
    #[serde(default)]
    pub copy_gbps: f64,
    /// Rows of one activation chunk (gate_up and activation scratch are
    /// sized for this many copies at most).
    #[serde(default = "default_act_chunk")]
    pub act_chunk_tokens: u64,
    /// Backward input-gradient and weight-gradient GEMM time, as a factor
    /// of the forward GEMM time of the same group (`simulate --pass train`);
    /// 1.0 (equal FLOPs, equal efficiency) until calibrated.
    #[serde(default = "one")]
    pub bwd_dgrad_factor: f64,
    #[serde(default = "one")]
    pub bwd_wgrad_factor: f64,
    /// Measured backward GEMMs per expert shape (`calibrate --bwd`); a
    /// shape with all four tables is priced by them, others by the
    /// factors above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bwd_tables: Vec<BwdTable>,
    /// Per-projection GEMM tables over (M, N, K) (`sim::model`); used for
    /// shapes without a whole-group curve, instead of the efficiency formula.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gemm_tables: Vec<GemmTable>,
    /// The same tables timed with each sample's units launched as one CUDA
    /// graph (`calibrate --gemm-only --cuda-graphs on`): they price
    /// `--cuda-graphs on`, where the host no longer issues each GEMM
    /// (without them, `gemm_tables` do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub graph_gemm_tables: Vec<GemmTable>,
    /// The same tables timed through `--gemm fused` (gate_up and its
    /// activation in the own Hopper kernel, `calibrate --gemm-only --gemm
    /// fused`): they price `--gemm fused` (without them, `gemm_tables` do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fused_gemm_tables: Vec<GemmTable>,
    /// The parts the calibration that wrote this file measured into its
    /// base (e.g. "graph_gemm_tables", "launches"): `calibrate --merge`
    /// takes only these, not the base's parts the file carries. Empty (files
    /// written before it, merged profiles): every part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured: Vec<String>,
    /// Token exchange (dispatch and combine) priced per message; without it,
    /// `link_gbps` and `link_latency_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_tokens: Option<MsgModel>,
    /// Weight transfers priced per message (one per expert blob); without
    /// it, `p2p_gbps` and `p2p_latency_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_weights: Option<MsgModel>,
    /// The token exchange pushed by the copy engines (`--exchange
    /// copy-engine`), per copy as `msg_tokens` is per message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_tokens: Option<MsgModel>,
    /// Weight transfers pulled by the copy engines, one copy per blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_weights: Option<MsgModel>,
    /// Kernel launches of dispatch and combine; without it they are unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launches: Option<Launches>,
    /// Memory baseline by component and the buffers' allocation grain;
    /// without it, `mem_baseline_bytes` + peers x `mem_per_peer_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_model: Option<MemModel>,
    /// Layer costs the calibrated parts miss at small sizes (overhead by
    /// groups and copies, GEMM units inside a layer, link sharing), fitted
    /// to replays of the calibration shapes; without it, `overhead_us` and
    /// the tables as measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_fit: Option<LayerFit>,
    /// The power cap's slowdown by how busy a GPU's GEMMs keep it; its
    /// presence says the GEMM tables were timed in bursts, on a rested GPU
    /// (`sim::power`). Without it, the tables as measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<super::power::PowerFit>,
    /// Weight transfers overlap the native groups' compute too, as replay
    /// schedules a GPU's work (dispatch, native groups, a wait for the
    /// transfers, foreign groups); off, they overlap dispatch only and
    /// compute is one phase after both (profiles before issue 12).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transfer_overlaps_native: bool,
    #[serde(default)]
    pub measured_error: Option<MeasuredError>,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub gpus: u32,
    /// Raw calibration points, kept for audit.
    #[serde(default)]
    pub raw: Option<serde_json::Value>,
    /// Raw points of later calibrations merged into this profile, oldest
    /// first (`calibrate --gemm-only`, `calibrate --merge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_merged: Vec<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile '{0}': use a built-in profile (h100, h200) or the path of a profile JSON file")]
    Unknown(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not a valid profile: {1}")]
    Parse(String, serde_json::Error),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

fn one() -> f64 {
    1.0
}

fn default_inter_gbps() -> f64 {
    50.0
}

fn default_inter_latency_us() -> f64 {
    35.0
}

fn one_node() -> u32 {
    1
}

fn is_one_node(n: &u32) -> bool {
    *n == 1
}

fn default_act_chunk() -> u64 {
    16384
}

const BUILTIN_H100: &str = include_str!("../../profiles/h100.json");
const BUILTIN_H200: &str = include_str!("../../profiles/h200.json");

impl Profile {
    pub fn builtin_names() -> &'static [&'static str] {
        &["h100", "h200"]
    }

    /// A built-in name or a path to a JSON file.
    pub fn load(spec: &str) -> Result<Profile, ProfileError> {
        let (src, text) = match spec.to_ascii_lowercase().as_str() {
            "h100" => ("built-in h100".to_string(), BUILTIN_H100.to_string()),
            "h200" => ("built-in h200".to_string(), BUILTIN_H200.to_string()),
            _ => {
                let p = Path::new(spec);
                if !p.exists() {
                    return Err(ProfileError::Unknown(spec.into()));
                }
                (
                    spec.to_string(),
                    std::fs::read_to_string(p).map_err(|e| ProfileError::Io(spec.into(), e))?,
                )
            }
        };
        let mut prof: Profile =
            serde_json::from_str(&text).map_err(|e| ProfileError::Parse(src.clone(), e))?;
        model::monotone_tables(&mut prof.gemm_tables);
        model::monotone_tables(&mut prof.graph_gemm_tables);
        model::monotone_tables(&mut prof.fused_gemm_tables);
        prof.validate().map_err(|e| match e {
            ProfileError::Invalid(_, m) => ProfileError::Invalid(src, m),
            other => other,
        })?;
        Ok(prof)
    }

    /// Whether this profile can price its run's `exchange`: the copy
    /// engines' needs one node and the profile's copy-engine measurements.
    pub fn check_exchange(&self) -> Result<(), String> {
        if self.exchange != crate::gpu::Exchange::CopyEngine {
            return Ok(());
        }
        if self.nodes > 1 {
            return Err("--exchange copy-engine is one node's (peer copies over NVLink); use --exchange nccl with --nodes".into());
        }
        if self.ce_tokens.is_none() || self.ce_weights.is_none() {
            return Err(format!(
                "--exchange copy-engine: profile {} has no copy-engine measurements (ce_tokens, ce_weights); calibrate it on 2+ GPUs",
                self.name
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ProfileError> {
        self.check()
            .map_err(|m| ProfileError::Invalid(self.name.clone(), m))
    }

    fn check(&self) -> Result<(), String> {
        let pos = |v: f64, n: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{n} must be > 0 (got {v})"))
            }
        };
        pos(self.gemm_peak_tflops, "gemm_peak_tflops")?;
        pos(self.link_gbps, "link_gbps")?;
        pos(self.p2p_gbps, "p2p_gbps")?;
        pos(self.inter_gbps, "inter_gbps")?;
        if !(self.inter_latency_us.is_finite() && self.inter_latency_us >= 0.0) {
            return Err("inter_latency_us must be >= 0".into());
        }
        if self.nodes == 0 {
            return Err("nodes must be >= 1".into());
        }
        if self.gpu_mem_bytes == 0 {
            return Err("gpu_mem_bytes must be > 0".into());
        }
        model::check_tables(&self.gemm_tables)?;
        model::check_tables(&self.graph_gemm_tables)?;
        model::check_tables(&self.fused_gemm_tables)?;
        bwd::check(self)?;
        for (n, m) in [
            ("msg_tokens", &self.msg_tokens),
            ("msg_weights", &self.msg_weights),
            ("ce_tokens", &self.ce_tokens),
            ("ce_weights", &self.ce_weights),
        ] {
            if let Some(m) = m {
                pos(m.gbps, &format!("{n}.gbps"))?;
                if !(m.latency_us >= 0.0 && m.per_msg_us >= 0.0) {
                    return Err(format!("{n}: latency_us and per_msg_us must be >= 0"));
                }
            }
        }
        if let Some(f) = &self.layer_fit {
            f.check()?;
        }
        if let Some(f) = &self.power {
            f.check()?;
        }
        if let Some(l) = &self.launches {
            if ![l.launch_us, l.host_sync_us, l.upload_us]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
            {
                return Err("launches: every field must be >= 0".into());
            }
        }
        for c in &self.gemm_curves {
            if c.points.is_empty() || c.points.windows(2).any(|w| w[1].0 <= w[0].0) {
                return Err(
                    "gemm_curves points must be non-empty with tokens strictly increasing".into(),
                );
            }
        }
        Ok(())
    }

    /// "h200 (estimate)" or "h200 (measured, median error 3.1%)".
    pub fn label(&self) -> String {
        match &self.measured_error {
            Some(e) => {
                let held = e.split.as_ref().map_or(String::new(), |x| {
                    format!(
                        "; shapes held out of its fit {:.1}% / {:.1}%",
                        x.held_out_median_abs_pct, x.held_out_worst_abs_pct
                    )
                });
                format!(
                    "{} ({}, median |error| {:.1}%, worst {:.1}%{held})",
                    self.name, self.status, e.median_abs_pct, e.worst_abs_pct
                )
            }
            None if self.status == "estimate" => format!(
                "{} (estimate from published figures; error not yet measured)",
                self.name
            ),
            None => format!("{} ({}; error not measured)", self.name, self.status),
        }
    }
}

/// Device-to-device copy bandwidth (bytes read + written) of the cards
/// `docs/anchors.md` measured; calibrate does not measure it yet, so other
/// cards get 0 (copies unpriced) and the note says so.
fn anchor_copy_gbps(card: &str) -> f64 {
    if card.contains("H200") {
        4300.0
    } else if card.contains("H100") {
        3000.0
    } else {
        0.0
    }
}

/// Fit the profile's fields from the raw measurements.
/// `date` is the day it was measured (YYYY-MM-DD).
pub fn fit_profile(c: &Calibration, name: &str, date: &str) -> Profile {
    let (d0, i0, pts0) = &c.gemm[0];
    let flops = |t: f64| 6.0 * t * *d0 as f64 * *i0 as f64;
    let peak = pts0
        .iter()
        .map(|&(t, ms)| flops(t) / (ms * 1e-3) / 1e12)
        .fold(0.0, f64::max);
    let mut halves: Vec<f64> = pts0
        .iter()
        .filter(|&&(t, _)| (64.0..=4096.0).contains(&t))
        .map(|&(t, ms)| {
            let eff = flops(t) / (ms * 1e-3) / 1e12 / peak;
            t * (1.0 / eff - 1.0)
        })
        .collect();
    halves.sort_by(f64::total_cmp);
    let half = halves.get(halves.len() / 2).copied().unwrap_or(256.0);
    let launch_us = pts0.first().map_or(10.0, |p| p.1 * 1e3);
    let bw = |pts: &[(f64, f64)]| -> (f64, f64) {
        let (a, b) = fit_line(pts);
        // ms per byte -> GB/s; intercept ms -> us
        (if b > 0.0 { 1e-6 / b } else { 0.0 }, (a * 1e3).max(0.0))
    };
    let (link_gbps, link_lat) = bw(&c.link);
    let (p2p_gbps, p2p_lat) = bw(&c.p2p);
    Profile {
        name: name.into(),
        card: c.card.clone(),
        status: "measured".into(),
        note: format!(
            "measured by llep-trace calibrate on {} x {} ({}); GEMM curves are one expert group (gate_up + activation + down) as replay runs it",
            c.gpus, c.card, c.driver
        ),
        gpu_mem_bytes: c.total_mem,
        gemm_peak_tflops: peak,
        gemm_half_tokens: half,
        gemm_launch_us: launch_us,
        gemm_curves: c
            .gemm
            .iter()
            .map(|(d, i, p)| GemmCurve {
                hidden_size: *d as u32,
                intermediate_size: *i as u32,
                points: p.clone(),
            })
            .collect(),
        link_gbps: if link_gbps > 0.0 { link_gbps } else { 1.0 },
        link_latency_us: link_lat,
        p2p_gbps: if p2p_gbps > 0.0 { p2p_gbps } else { 1.0 },
        p2p_latency_us: p2p_lat,
        // calibrate runs inside one node: the inter-node link stays the estimate
        inter_gbps: default_inter_gbps(),
        inter_latency_us: default_inter_latency_us(),
        inter_shared: false,
        nodes: 1,
        overlap: Default::default(),
        cuda_graphs: false,
        exchange: Default::default(),
        gemm: Default::default(),
        overhead_us: c.overhead_ms * 1e3,
        // one calibration sees one GPU count, so it cannot split its
        // baseline into context and per-peer communicator buffers
        mem_baseline_bytes: c.mem_baseline,
        mem_per_peer_bytes: 0,
        copy_gbps: anchor_copy_gbps(&c.card),
        act_chunk_tokens: CHUNK,
        bwd_dgrad_factor: 1.0,
        bwd_wgrad_factor: 1.0,
        bwd_tables: Vec::new(),
        gemm_tables: Vec::new(),
        graph_gemm_tables: Vec::new(),
        fused_gemm_tables: Vec::new(),
        measured: Vec::new(),
        msg_tokens: None,
        msg_weights: None,
        ce_tokens: None,
        ce_weights: None,
        launches: None,
        mem_model: None,
        layer_fit: None,
        power: c.power.as_ref().and_then(super::power::PowerFit::fit),
        transfer_overlaps_native: true,
        measured_error: None,
        driver: c.driver.clone(),
        date: date.into(),
        gpus: c.gpus as u32,
        raw: serde_json::to_value(c).ok(),
        raw_merged: Vec::new(),
    }
}

/// GEMM tables of a calibration's grid: gate_up (N = 2I, K = D, with its
/// activation) and down (N = D, K = I) per shape.
pub fn grid_tables(c: &Calibration) -> Vec<GemmTable> {
    let mut out = Vec::new();
    for (d, i, gu, dn) in &c.grid {
        let (d, i) = (*d as u32, *i as u32);
        out.push(GemmTable {
            proj: model::Proj::GateUp,
            n: 2 * i,
            k: d,
            points: gu.clone(),
        });
        out.push(GemmTable {
            proj: model::Proj::Down,
            n: d,
            k: i,
            points: dn.clone(),
        });
    }
    out
}

/// Put `new` tables into `tables`, replacing any of the same projection and
/// (N, K); whether any table changed.
fn upsert_tables(tables: &mut Vec<GemmTable>, new: &[GemmTable]) -> bool {
    let mut changed = false;
    for t in new {
        match tables
            .iter_mut()
            .find(|x| x.proj == t.proj && x.n == t.n && x.k == t.k)
        {
            Some(x) if x == t => continue,
            Some(x) => *x = t.clone(),
            None => tables.push(t.clone()),
        }
        changed = true;
    }
    changed
}

/// Weighted least-squares line y = a + b x minimising relative residuals
/// (weights 1 / y^2), so a small message's latency is fitted as well as a
/// large one's bandwidth; returns (a, b).
pub fn fit_line_rel(pts: &[(f64, f64)]) -> (f64, f64) {
    let ws: Vec<f64> = pts.iter().map(|p| 1.0 / (p.1 * p.1).max(1e-30)).collect();
    let sw: f64 = ws.iter().sum();
    if pts.len() < 2 || sw <= 0.0 {
        return fit_line(pts);
    }
    let mx = pts.iter().zip(&ws).map(|(p, w)| w * p.0).sum::<f64>() / sw;
    let my = pts.iter().zip(&ws).map(|(p, w)| w * p.1).sum::<f64>() / sw;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (p, w) in pts.iter().zip(&ws) {
        sxy += w * (p.0 - mx) * (p.1 - my);
        sxx += w * (p.0 - mx) * (p.0 - mx);
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// A message model from a byte sweep (`msgs_base` messages per GPU) and a
/// split sweep (the same bytes in more messages): the split sweep's slope
/// is the price of one message, the byte sweep's slope the bandwidth, and
/// what is left of its intercept the latency of one grouped call.
///
/// The token sweep's bytes are per peer (every GPU sends that much to each
/// of its `msgs_base / 2` peers), while the model prices a GPU's bytes over
/// all its peers: the sweep is read in those bytes, so a calibration on
/// more than 2 GPUs gives the GPU's bandwidth, not one peer's (on 2 GPUs,
/// and for the weight sweep's one message, the two are the same).
pub fn fit_msg(raw: &MsgRaw) -> Option<MsgModel> {
    let peers = (raw.msgs_base / 2).max(1) as f64;
    let per_gpu: Vec<(f64, f64)> = raw.bytes.iter().map(|&(b, t)| (b * peers, t)).collect();
    let (a, b) = fit_line_rel(&per_gpu);
    if b <= 0.0 || raw.bytes.len() < 2 {
        return None;
    }
    let per_msg_us = (fit_line(&raw.split).1 * 1e3).max(0.0);
    Some(MsgModel {
        latency_us: (a * 1e3 - per_msg_us * raw.msgs_base as f64).max(0.0),
        per_msg_us,
        gbps: 1e-6 / b,
    })
}

/// Put a calibration's generalising parts into `p`: GEMM grid tables
/// (replacing those of the same shapes), message models and the memory
/// model when measured, launches. `fallback` gives what one GPU cannot
/// measure: communicator buffers per peer, and a floor for the context
/// (a one-rank communicator misses NCCL's multi-rank buffers, which the
/// fallback's baseline measured). Returns the names of the parts set.
pub fn apply_measured(
    p: &mut Profile,
    c: &Calibration,
    fallback: Option<&Profile>,
) -> Vec<&'static str> {
    let mut set = Vec::new();
    if !p.transfer_overlaps_native {
        // a calibration's profile models replay's schedule
        p.transfer_overlaps_native = true;
        set.push("transfer_overlaps_native");
    }
    if !c.grid.is_empty() && c.grid_fused {
        upsert_tables(&mut p.fused_gemm_tables, &grid_tables(c));
        model::monotone_tables(&mut p.fused_gemm_tables);
        set.push("fused_gemm_tables");
    } else if !c.grid.is_empty() && c.grid_graphs {
        upsert_tables(&mut p.graph_gemm_tables, &grid_tables(c));
        model::monotone_tables(&mut p.graph_gemm_tables);
        set.push("graph_gemm_tables");
    } else if !c.grid.is_empty() {
        upsert_tables(&mut p.gemm_tables, &grid_tables(c));
        model::monotone_tables(&mut p.gemm_tables);
        set.push("gemm_tables");
    }
    if !c.bwd_grid.is_empty() {
        bwd::set(p, &bwd::tables(&c.bwd_grid));
        set.push("bwd_tables");
    }
    if let Some(mut f) = c.power.as_ref().and_then(super::power::PowerFit::fit) {
        // the exchange's weight is fitted to replays, not measured here
        f.comm_weight = p.power.map_or(0.0, |b| b.comm_weight);
        p.power = Some(f);
        set.push("power");
    }
    if let Some(m) = c.msg_tokens.as_ref().and_then(fit_msg) {
        p.msg_tokens = Some(m);
        set.push("msg_tokens");
    }
    if let Some(m) = c.msg_weights.as_ref().and_then(fit_msg) {
        p.msg_weights = Some(m);
        set.push("msg_weights");
    }
    if let Some(m) = c.ce_tokens.as_ref().and_then(fit_msg) {
        p.ce_tokens = Some(m);
        set.push("ce_tokens");
    }
    if let Some(m) = c.ce_weights.as_ref().and_then(fit_msg) {
        p.ce_weights = Some(m);
        set.push("ce_weights");
    }
    if c.launch_us > 0.0 {
        p.launches = Some(Launches {
            launch_us: c.launch_us,
            host_sync_us: c.host_sync_us,
            upload_us: c.upload_us,
        });
        set.push("launches");
    }
    if c.mem.context > 0 {
        let ws = c.mem.cublas_workspace;
        let per_peer = c
            .mem
            .per_peer
            .or(fallback.map(|f| f.mem_per_peer_bytes))
            .unwrap_or(0);
        let mut context = c.mem.context;
        if c.mem.per_peer.is_none() {
            if let Some(f) = fallback {
                context = context.max(f.mem_baseline_bytes.saturating_sub(ws));
            }
        }
        p.mem_model = Some(MemModel {
            context_bytes: context,
            cublas_workspace_bytes: ws,
            nccl_per_peer_bytes: per_peer,
            // unmeasured: a weight connection priced like a token one
            nccl_xfer_per_peer_bytes: c.mem.xfer_per_peer.unwrap_or(per_peer),
            nccl_xfer_recv_per_peer_bytes: c.mem.xfer_recv_per_peer.unwrap_or(0),
            nccl_xfer_send_per_peer_bytes: c.mem.xfer_send_per_peer.unwrap_or(0),
            // the steady state of a process running LLEP (`sim::cost`)
            xfer_all_peers: true,
            grain_bytes: c.mem.grain,
        });
        set.push("mem_model");
    }
    set
}

/// `p`'s power fit; else one fitted to the newest power measurement in its
/// raw records (a calibration written before the fit was part of it).
fn power_of(p: &Profile) -> Option<super::power::PowerFit> {
    p.power.or_else(|| {
        p.raw_merged
            .iter()
            .rev()
            .chain(p.raw.iter())
            .filter_map(|v| v.get("power"))
            .find_map(|v| serde_json::from_value(v.clone()).ok())
            .and_then(|raw| super::power::PowerFit::fit(&raw))
    })
}

/// `base` with the generalising parts of `new` (GEMM tables upserted,
/// message models, launches and memory model where `new` has them). With
/// `drop_curves`, whole-group curves whose shape now has exact tables of
/// both projections are removed, so those shapes are priced by the tables.
/// The measured error is cleared when anything but new tables changed
/// (the stamped rows would be priced differently), and the note says what
/// was merged.
pub fn merge_profiles(base: &Profile, new: &Profile, drop_curves: bool, date: &str) -> Profile {
    let mut out = base.clone();
    out.measured.clear();
    // a calibration measured into a base names what it measured; the
    // base's other parts it carries are not merged
    let takes = |part: &str| new.measured.is_empty() || new.measured.iter().any(|m| m == part);
    let mut set: Vec<&str> = Vec::new();
    // tables the base already has (a calibration measured into it carries
    // them) change nothing and are not named
    if takes("gemm_tables") && upsert_tables(&mut out.gemm_tables, &new.gemm_tables) {
        set.push("gemm_tables");
    }
    if takes("graph_gemm_tables")
        && upsert_tables(&mut out.graph_gemm_tables, &new.graph_gemm_tables)
    {
        set.push("graph_gemm_tables");
    }
    if takes("fused_gemm_tables")
        && upsert_tables(&mut out.fused_gemm_tables, &new.fused_gemm_tables)
    {
        set.push("fused_gemm_tables");
    }
    if takes("bwd_tables") && !new.bwd_tables.is_empty() && new.bwd_tables != out.bwd_tables {
        bwd::set(&mut out, &new.bwd_tables);
        set.push("bwd_tables");
    }
    for (dst, src, name) in [
        (&mut out.msg_tokens, new.msg_tokens, "msg_tokens"),
        (&mut out.msg_weights, new.msg_weights, "msg_weights"),
        (&mut out.ce_tokens, new.ce_tokens, "ce_tokens"),
        (&mut out.ce_weights, new.ce_weights, "ce_weights"),
    ] {
        if src.is_some() && takes(name) {
            *dst = src;
            set.push(name);
        }
    }
    if new.transfer_overlaps_native
        && !out.transfer_overlaps_native
        && takes("transfer_overlaps_native")
    {
        out.transfer_overlaps_native = true;
        set.push("transfer_overlaps_native");
    }
    // the exchange's weight is fitted to replays: the base keeps its own;
    // a fit only the raw record gives was measured by that calibration
    let power = power_of(new).map(|mut f| {
        f.comm_weight = out.power.map_or(f.comm_weight, |b| b.comm_weight);
        f
    });
    let measured = if new.power.is_some() {
        takes("power")
    } else {
        power.is_some()
    };
    if measured && power != out.power {
        out.power = power;
        set.push("power");
    }
    if new.launches.is_some() && takes("launches") {
        out.launches = new.launches;
        set.push("launches");
    }
    if new.mem_model.is_some() && takes("mem_model") {
        out.mem_model = new.mem_model;
        set.push("mem_model");
    }
    let dropped = if drop_curves {
        drop_covered_curves(&mut out)
    } else {
        0
    };
    finish_merge(&mut out, &set, dropped, date);
    // a profile measured into a base carries the base's raw points too:
    // keep each raw record once
    for v in new.raw.iter().chain(&new.raw_merged) {
        if out.raw.as_ref() != Some(v) && !out.raw_merged.contains(v) {
            out.raw_merged.push(v.clone());
        }
    }
    out
}

/// Remove whole-group curves whose shape has exact GEMM tables of both
/// projections (so the tables price it); returns how many went.
pub fn drop_covered_curves(p: &mut Profile) -> usize {
    let has = |proj, n: u32, k: u32| {
        p.gemm_tables
            .iter()
            .any(|t| t.proj == proj && t.n == n && t.k == k)
    };
    let keep: Vec<GemmCurve> = p
        .gemm_curves
        .iter()
        .filter(|c| {
            let (d, i) = (c.hidden_size, c.intermediate_size);
            !(has(model::Proj::GateUp, 2 * i, d) && has(model::Proj::Down, d, i))
        })
        .cloned()
        .collect();
    let dropped = p.gemm_curves.len() - keep.len();
    p.gemm_curves = keep;
    dropped
}

/// Note what a merge set, and clear a stamped error it made stale.
pub fn finish_merge(out: &mut Profile, set: &[&str], dropped_curves: usize, date: &str) {
    // backward tables price no forward row, fused tables only rows run
    // through the fused kernel: the stamped error stays valid
    if set
        .iter()
        .any(|s| !matches!(*s, "gemm_tables" | "bwd_tables" | "fused_gemm_tables"))
        || dropped_curves > 0
    {
        out.measured_error = None;
    }
    out.note.push_str(&format!(
        " Merged on {date}: {}{}.",
        if set.is_empty() {
            "nothing".to_string()
        } else {
            set.join(", ")
        },
        if dropped_curves > 0 {
            format!("; {dropped_curves} whole-group curves dropped for GEMM tables")
        } else {
            String::new()
        }
    ));
    out.date = date.into();
}

/// Least-squares line y = a + b x; returns (a, b).
pub fn fit_line(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return (0.0, pts.first().map_or(0.0, |p| p.1 / p.0.max(1e-12)));
    }
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for p in pts {
        sxy += (p.0 - mx) * (p.1 - my);
        sxx += (p.0 - mx) * (p.0 - mx);
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_recovers_latency_and_bandwidth() {
        let pts: Vec<(f64, f64)> = (1..6)
            .map(|i| (i as f64 * 1e6, 0.02 + i as f64 * 1e6 / 3e8))
            .collect();
        let (a, b) = fit_line(&pts);
        assert!((a - 0.02).abs() < 1e-9 && (1.0 / b - 3e8).abs() < 1.0);
    }

    #[test]
    fn fitted_profile_recovers_link_figures_and_validates() {
        // 50 GB/s + 10 us token exchange, 25 GB/s + 20 us weight transfer
        let line = |gbps: f64, us: f64| -> Vec<(f64, f64)> {
            [1e6, 4e6, 16e6, 64e6]
                .iter()
                .map(|&b| (b, us * 1e-3 + b / (gbps * 1e9) * 1e3))
                .collect()
        };
        // a group of t tokens: 20 us launch, then 400 TFLOP/s with half
        // efficiency at 512 tokens
        let (d, i) = (2880usize, 2880usize);
        let gemm: Vec<(f64, f64)> = [1.0, 64.0, 256.0, 1024.0, 4096.0, 65536.0]
            .iter()
            .map(|&t| {
                let fl = 6.0 * t * d as f64 * i as f64;
                (t, 0.02 + fl / (400e12 * t / (t + 512.0)) * 1e3)
            })
            .collect();
        let c = Calibration {
            card: "NVIDIA H200".into(),
            driver: "580.159.04 (CUDA 13.0)".into(),
            gpus: 2,
            total_mem: 150_000_000_000,
            gemm: vec![(d, i, gemm)],
            link: line(50.0, 10.0),
            p2p: line(25.0, 20.0),
            overhead_ms: 0.25,
            mem_baseline: 1 << 30,
            ..Default::default()
        };
        let p = fit_profile(&c, "h200", "2026-11-29");
        assert!((p.link_gbps - 50.0).abs() < 1e-6, "{}", p.link_gbps);
        assert!((p.link_latency_us - 10.0).abs() < 1e-6);
        assert!((p.p2p_gbps - 25.0).abs() < 1e-6, "{}", p.p2p_gbps);
        assert!((p.p2p_latency_us - 20.0).abs() < 1e-6);
        assert!((p.overhead_us - 250.0).abs() < 1e-9);
        assert!(p.gemm_peak_tflops > 0.0 && p.gemm_peak_tflops < 400.0);
        assert_eq!(p.act_chunk_tokens, CHUNK);
        assert_eq!(p.copy_gbps, 4300.0);
        assert_eq!(
            (p.status.as_str(), p.date.as_str()),
            ("measured", "2026-11-29")
        );
        assert_eq!(p.gemm_curves.len(), 1);
        p.validate().unwrap();
    }

    fn msg_raw(lat_us: f64, per_msg_us: f64, gbps: f64, base: u64) -> MsgRaw {
        let t = |msgs: f64, b: f64| (lat_us + per_msg_us * msgs) * 1e-3 + b / (gbps * 1e9) * 1e3;
        MsgRaw {
            msgs_base: base,
            bytes: [4096.0, 65536.0, 1048576.0, 16777216.0, 67108864.0]
                .iter()
                .map(|&b| (b, t(base as f64, b)))
                .collect(),
            split: [1.0, 2.0, 4.0, 8.0]
                .iter()
                .map(|&s| (s * base as f64, t(s * base as f64, 1048576.0)))
                .collect(),
        }
    }

    #[test]
    fn token_sweep_on_four_gpus_is_read_in_bytes_per_gpu() {
        // 3 peers, 6 messages: each point moves 3 x its bytes per GPU
        let mut raw = msg_raw(12.0, 3.0, 300.0, 6);
        let t = |msgs: f64, b: f64| (12.0 + 3.0 * msgs) * 1e-3 + 3.0 * b / 300e9 * 1e3;
        for p in &mut raw.bytes {
            p.1 = t(6.0, p.0);
        }
        for p in &mut raw.split {
            p.1 = t(p.0, 1048576.0);
        }
        let m = fit_msg(&raw).unwrap();
        assert!((m.gbps - 300.0).abs() < 1e-6, "{m:?}");
        assert!((m.latency_us - 12.0).abs() < 1e-6, "{m:?}");
        assert!((m.per_msg_us - 3.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn message_fit_separates_call_message_and_byte_costs() {
        let m = fit_msg(&msg_raw(12.0, 3.0, 300.0, 2)).unwrap();
        assert!((m.latency_us - 12.0).abs() < 1e-6, "{m:?}");
        assert!((m.per_msg_us - 3.0).abs() < 1e-6, "{m:?}");
        assert!((m.gbps - 300.0).abs() < 1e-6, "{m:?}");
        // relative weighting keeps the small sizes right under noise at the
        // large end: 2% slow 64 MiB point barely moves the latency
        let mut raw = msg_raw(12.0, 3.0, 300.0, 2);
        raw.bytes.last_mut().unwrap().1 *= 1.02;
        let m = fit_msg(&raw).unwrap();
        let small = m.ms(2, 4096);
        let want = (12.0 + 6.0) * 1e-3 + 4096.0 / 300e9 * 1e3;
        assert!((small - want).abs() / want < 0.03, "{small} vs {want}");
    }

    fn calibration_with_model() -> Calibration {
        Calibration {
            card: "NVIDIA H200".into(),
            gpus: 1,
            grid: vec![(
                7168,
                2048,
                vec![(1.0, 0.010), (512.0, 0.050)],
                vec![(1.0, 0.008), (512.0, 0.030)],
            )],
            launch_us: 2.0,
            host_sync_us: 15.0,
            upload_us: 5.0,
            mem: MemRaw {
                context: 600 << 20,
                cublas_workspace: 32 << 20,
                grain: 2 << 20,
                per_peer: None,
                xfer_per_peer: None,
                xfer_recv_per_peer: None,
                xfer_send_per_peer: None,
                ranks: 1,
            },
            ..Default::default()
        }
    }

    #[test]
    fn one_gpu_measurements_go_into_a_base_and_keep_its_multi_gpu_figures() {
        let base = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/profiles/h200-curves-2026-11-28.json"
        ))
        .unwrap();
        let mut p = base.clone();
        let set = apply_measured(&mut p, &calibration_with_model(), Some(&base));
        assert_eq!(
            set,
            [
                "transfer_overlaps_native",
                "gemm_tables",
                "launches",
                "mem_model"
            ]
        );
        let t = &p.gemm_tables;
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].proj, t[0].n, t[0].k),
            (model::Proj::GateUp, 4096, 7168)
        );
        assert_eq!((t[1].proj, t[1].n, t[1].k), (model::Proj::Down, 7168, 2048));
        let mm = p.mem_model.unwrap();
        // a one-rank context misses NCCL's multi-rank buffers: floored at
        // the base's multi-GPU baseline
        assert_eq!(
            mm.context_bytes + mm.cublas_workspace_bytes,
            base.mem_baseline_bytes
        );
        assert_eq!(mm.nccl_per_peer_bytes, base.mem_per_peer_bytes);
        assert_eq!(mm.nccl_xfer_per_peer_bytes, base.mem_per_peer_bytes);
        assert_eq!(mm.grain_bytes, 2 << 20);
        assert!(p.msg_tokens.is_none() && p.msg_weights.is_none());
        p.validate().unwrap();
        // applying again replaces the tables rather than adding copies
        apply_measured(&mut p, &calibration_with_model(), Some(&base));
        assert_eq!(p.gemm_tables.len(), 2);
    }

    #[test]
    fn merge_adds_tables_drops_covered_curves_and_clears_stale_error() {
        let base = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/profiles/h200-curves-2026-11-28.json"
        ))
        .unwrap();
        assert!(base.measured_error.is_some());
        let mut new = base.clone();
        new.gemm_tables.clear();
        let mut c = calibration_with_model();
        c.grid
            .push((2880, 2880, vec![(1.0, 0.01)], vec![(1.0, 0.01)]));
        c.launch_us = 0.0;
        c.mem.context = 0;
        apply_measured(&mut new, &c, None);
        new.transfer_overlaps_native = false;
        // tables only, curves kept: the stamped rows are priced as before
        let m = merge_profiles(&base, &new, false, "2026-11-29");
        assert_eq!(m.gemm_tables.len(), 4);
        assert_eq!(m.gemm_curves, base.gemm_curves);
        assert_eq!(m.measured_error, base.measured_error);
        assert!(
            m.note.ends_with("Merged on 2026-11-29: gemm_tables."),
            "{}",
            m.note
        );
        // dropping the gpt-oss curve for its tables makes the error stale
        let m = merge_profiles(&base, &new, true, "2026-11-29");
        assert_eq!(m.gemm_curves.len(), base.gemm_curves.len() - 1);
        assert!(m.gemm_curves.iter().all(|c| c.hidden_size != 2880));
        assert!(m.measured_error.is_none());
        m.validate().unwrap();
    }

    #[test]
    fn merge_takes_only_what_a_calibration_measured_not_the_base_it_carries() {
        // two one-GPU grids measured into the same base, which has an eager
        // table of the shape: eager tables, then graph tables; each file
        // carries the base's other table
        let mut base = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/profiles/h200-curves-2026-11-28.json"
        ))
        .unwrap();
        let grid = |ms: f64, graphs: bool| {
            let mut c = calibration_with_model();
            c.grid = vec![(7168, 2048, vec![(1.0, ms)], vec![(1.0, ms)])];
            c.grid_graphs = graphs;
            c
        };
        apply_measured(&mut base, &grid(0.05, false), None);
        let measured_into = |c: &Calibration| {
            let mut p = base.clone();
            let set = apply_measured(&mut p, c, Some(&base));
            p.measured = set.iter().map(|s| s.to_string()).collect();
            p
        };
        let (eager, graphs) = (
            measured_into(&grid(0.02, false)),
            measured_into(&grid(0.01, true)),
        );
        assert!(graphs.measured.contains(&"graph_gemm_tables".to_string()));
        assert!(!graphs.measured.contains(&"gemm_tables".to_string()));
        let m = merge_profiles(&base, &eager, false, "2026-11-30");
        let m = merge_profiles(&m, &graphs, false, "2026-11-30");
        let at = |ts: &[GemmTable]| ts.iter().find(|t| t.k == 7168).map(|t| t.points[0].1);
        assert_eq!(
            at(&m.gemm_tables),
            Some(0.02),
            "the eager file's tables kept"
        );
        assert_eq!(at(&m.graph_gemm_tables), Some(0.01));
        assert!(
            m.measured.is_empty(),
            "a merged profile is no calibration's"
        );
        // a file without the list (older ones) merges every part, as before
        let mut old = graphs.clone();
        old.measured.clear();
        let m2 = merge_profiles(&m, &old, false, "2026-11-30");
        assert_eq!(at(&m2.gemm_tables), Some(0.05));
        // a grid timed through the fused kernel goes to its own tables
        let mut f = grid(0.03, false);
        f.grid_fused = true;
        let fused = measured_into(&f);
        assert!(fused.measured.contains(&"fused_gemm_tables".to_string()));
        assert!(!fused.measured.contains(&"gemm_tables".to_string()));
        let m3 = merge_profiles(&m, &fused, false, "2026-11-30");
        assert_eq!(at(&m3.fused_gemm_tables), Some(0.03));
        assert_eq!(at(&m3.gemm_tables), Some(0.02), "lt's tables untouched");
        assert_eq!(at(&m3.graph_gemm_tables), Some(0.01));
    }

    #[test]
    fn invalid_new_parts_are_refused() {
        let mut p = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/profiles/h200-curves-2026-11-28.json"
        ))
        .unwrap();
        p.msg_tokens = Some(MsgModel {
            latency_us: 1.0,
            per_msg_us: 1.0,
            gbps: 0.0,
        });
        assert!(p.validate().is_err());
        p.msg_tokens = None;
        p.gemm_tables = vec![GemmTable {
            proj: model::Proj::Down,
            n: 10,
            k: 10,
            points: vec![(4.0, 1.0), (2.0, 2.0)],
        }];
        assert!(p.validate().is_err());
    }

    #[test]
    fn a_power_measurement_is_fitted_and_keeps_the_bases_exchange_weight() {
        use crate::gpu::calibrate::PowerRaw;
        let base = Profile::load("h200").unwrap();
        let w = base.power.expect("built-in power fit").comm_weight;
        assert!(w > 0.0);
        let mut c = calibration_with_model();
        c.power = Some(PowerRaw {
            m: 8192,
            n: 5760,
            k: 2880,
            burst_ms: 0.3,
            sustained_ms: 0.36,
            duty: vec![(0.5, 0.3, 0.3), (0.7, 0.1286, 0.3), (0.9, 0.0333, 0.36)],
        });
        let mut p = base.clone();
        let set = apply_measured(&mut p, &c, None);
        assert!(set.contains(&"power"));
        let f = p.power.unwrap();
        assert_eq!(f.comm_weight, w);
        assert!((f.sustained_over_burst - 1.2).abs() < 1e-9);
        // a calibration written before the fit existed: its raw record only
        let mut old = base.clone();
        old.power = None;
        old.measured = vec!["gemm_tables".into()];
        old.raw_merged = vec![serde_json::to_value(&c).unwrap()];
        let m = merge_profiles(&base, &old, false, "2026-11-30");
        assert_eq!(m.power, Some(f));
        assert!(m.note.contains("power"), "{}", m.note);
    }
}
