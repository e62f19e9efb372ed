//! Arguments shared by several commands, and their resolution into library
//! settings (environment defaults included).

use anyhow::{bail, Context};
use clap::Args;
use llep_trace::env;
use llep_trace::sim::{parse_ratios, Gate};
use std::path::PathBuf;

/// The bundled default trace (real OLMoE-1B-7B routing counts).
pub const DEFAULT_TRACE: &str = "traces/olmoe-1b-7b.parquet";

/// The default trace: relative to the working directory, else to the
/// source tree this binary was built from.
pub fn default_trace() -> PathBuf {
    let local = PathBuf::from(DEFAULT_TRACE);
    if local.exists() {
        return local;
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_TRACE);
    if built.exists() {
        built
    } else {
        local
    }
}

/// Planner settings, with the reference's environment variables as defaults.
#[derive(Args, Debug, Clone)]
pub struct PlannerArgs {
    /// Imbalance gate lambda: one value, a list (1.1,1.3) or a range
    /// (1.0:3.0:0.1); 'always' or a value <= 0 plans every layer.
    /// Default: $MOE_ADAPTIVE_LPT_ROUTING_RATIO, read as the reference reads
    /// it (unset, unparsable or <= 0 means always plan).
    #[arg(long, allow_hyphen_values = true)]
    pub ratio: Option<String>,
    /// Capacity factor alpha; one value or a list.
    /// Default: $EP_MAX_TOKENS_FACTOR, else 1.0.
    #[arg(long, value_delimiter = ',')]
    pub alpha: Vec<f64>,
    /// Minimum tokens per GEMM m; one value or a list.
    /// Default: $EP_MIN_TOKENS_PER_GEMM, else 1024.
    #[arg(long = "min-gemm", value_delimiter = ',')]
    pub min_gemm: Vec<u64>,
}

impl PlannerArgs {
    /// Lambda gates: from --ratio, else from the environment.
    pub fn gates(&self) -> anyhow::Result<Vec<Gate>> {
        match &self.ratio {
            Some(spec) => parse_ratios(spec).map_err(|e| anyhow::anyhow!("--ratio: {e}")),
            None => {
                let raw = std::env::var(env::ROUTING_RATIO).ok();
                Ok(vec![match env::gate_from_str(raw.as_deref()) {
                    Some(r) => Gate::Ratio(r),
                    None => Gate::Always,
                }])
            }
        }
    }

    pub fn alphas(&self) -> anyhow::Result<Vec<f64>> {
        resolve_alphas(&self.alpha)
    }

    pub fn min_gemms(&self) -> Vec<u64> {
        resolve_min_gemms(&self.min_gemm)
    }
}

/// `--alpha` values, else `$EP_MAX_TOKENS_FACTOR`, else 1.0; each > 0.
pub fn resolve_alphas(given: &[f64]) -> anyhow::Result<Vec<f64>> {
    let v = if given.is_empty() {
        vec![env::alpha_default()]
    } else {
        given.to_vec()
    };
    for &a in &v {
        if !(a.is_finite() && a > 0.0) {
            bail!("--alpha: {a} is not a finite number > 0");
        }
    }
    Ok(v)
}

/// `--min-gemm` values, else `$EP_MIN_TOKENS_PER_GEMM`, else 1024.
pub fn resolve_min_gemms(given: &[u64]) -> Vec<u64> {
    if given.is_empty() {
        vec![env::min_gemm_default()]
    } else {
        given.to_vec()
    }
}

/// Describe a gate for tables.
pub fn gate_label(lambda: Option<f64>) -> String {
    match lambda {
        Some(l) => format!("{l}"),
        None => "always".into(),
    }
}

/// Parse a comma list of counts, naming the offending item.
pub fn parse_counts(spec: &str, what: &str) -> anyhow::Result<Vec<u64>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u64>().with_context(|| {
                if s.starts_with('-') {
                    format!("{what}: item {} ('{s}') is negative", i + 1)
                } else {
                    format!(
                        "{what}: item {} ('{s}') is not a non-negative integer",
                        i + 1
                    )
                }
            })
        })
        .collect()
}
