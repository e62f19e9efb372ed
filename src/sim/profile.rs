//! Hardware profiles: the parameters the cost model prices a plan with.
//! A profile is a JSON file a user can write; `h100` and `h200` are built in.

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
        let prof: Profile =
            serde_json::from_str(&text).map_err(|e| ProfileError::Parse(src.clone(), e))?;
        prof.validate().map_err(|m| ProfileError::Invalid(src, m))?;
        Ok(prof)
    }

    pub fn validate(&self) -> Result<(), String> {
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
        if self.gpu_mem_bytes == 0 {
            return Err("gpu_mem_bytes must be > 0".into());
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
            Some(e) => format!(
                "{} ({}, median |error| {:.1}%, worst {:.1}%)",
                self.name, self.status, e.median_abs_pct, e.worst_abs_pct
            ),
            None if self.status == "estimate" => format!(
                "{} (estimate from published figures; error not yet measured)",
                self.name
            ),
            None => format!("{} ({}; error not measured)", self.name, self.status),
        }
    }
}
