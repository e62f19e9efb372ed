//! Arguments shared by several commands, and their resolution into library
//! settings (environment defaults included).

use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::env;
use llep_trace::plan::{Gate, Policy};
use llep_trace::trace::synthetic::parse_scenarios;
use llep_trace::workload::{DimOverrides, InputSource, InputSpec, StepPick};
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
    /// it (unset, unparsable or <= 0 means always plan); for tune, the grid
    /// 1.0:3.0:0.05.
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
    /// Lambda gates: from --ratio, else from the environment as the
    /// reference reads it (with a warning where that reading is a quirk).
    pub fn gates(&self, p: &Printer) -> anyhow::Result<Vec<Gate>> {
        match &self.ratio {
            Some(spec) => Gate::parse_list(spec).map_err(|e| anyhow::anyhow!("--ratio: {e}")),
            None => Ok(vec![env_gate(p)]),
        }
    }

    pub fn alphas(&self) -> anyhow::Result<Vec<f64>> {
        resolve_alphas(&self.alpha)
    }

    pub fn min_gemms(&self) -> Vec<u64> {
        resolve_min_gemms(&self.min_gemm)
    }
}

/// `--ratio auto` is the `llep-auto` policy: take it out of the gates and
/// put the policy in (replacing `llep` when no other gate is left).
pub fn expand_auto(policies: &[Policy], gates: &[Gate]) -> (Vec<Policy>, Vec<Gate>) {
    let had_auto = gates.contains(&Gate::Auto);
    let gates: Vec<Gate> = gates.iter().copied().filter(|g| *g != Gate::Auto).collect();
    let mut policies = policies.to_vec();
    if had_auto && policies.contains(&Policy::Llep) {
        if !policies.contains(&Policy::LlepAuto) {
            let i = policies.iter().position(|p| *p == Policy::Llep).unwrap();
            policies.insert(i + 1, Policy::LlepAuto);
        }
        if gates.is_empty() {
            policies.retain(|p| *p != Policy::Llep);
        }
    }
    (policies, gates)
}

/// `$MOE_ADAPTIVE_LPT_ROUTING_RATIO` read as the reference reads it; an
/// unparsable value gets a one-line warning (the reference silently plans
/// every layer then).
pub fn env_gate(p: &Printer) -> Gate {
    let reading = Gate::from_reference(env::routing_ratio_raw().as_deref());
    if let Some(q) = &reading.quirk {
        p.warn(&format!("{}: {q}", env::ROUTING_RATIO));
    }
    reading.gate
}

/// A GPU count: a positive integer, with a plain message otherwise (clap
/// would take `-1` for a flag).
pub fn positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v as usize),
        Ok(v) => Err(format!("{v} is not a positive integer (at least 1)")),
        Err(_) => Err(format!("'{s}' is not a positive integer")),
    }
}

/// What to run on, shared by `simulate`, `tune` and `replay`.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Trace to run on (default for simulate and tune: the bundled
    /// OLMoE-1B-7B trace).
    #[arg(long, conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    /// Instead of a trace, the reference's synthetic scenarios, e.g.
    /// balanced,30:4,50:4,80:4,95:4,95:1 (shape from --experts, --top-k,
    /// --hidden-size, --intermediate-size, --tokens-per-rank; default the
    /// gpt-oss-120b layer with 32768 tokens per GPU).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Experts of a synthetic run (default 128).
    #[arg(long)]
    pub experts: Option<u32>,
    /// Top-k of a synthetic run (default 4).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Hidden size D (default 2880 for synthetic; overrides a trace's).
    #[arg(long)]
    pub hidden_size: Option<u32>,
    /// Expert intermediate size I (default 2880 for synthetic; overrides a trace's).
    #[arg(long)]
    pub intermediate_size: Option<u32>,
    /// MoE layers of the whole model, for the all-layer memory figure
    /// (default: the trace's; 36 for the default synthetic shape).
    #[arg(long)]
    pub num_layers: Option<u32>,
    /// Tokens per rank per step: synthetic batch size; rescales load-level
    /// counts or resamples whole sequences of token-level traces (seeded).
    #[arg(long)]
    pub tokens_per_rank: Option<u64>,
    /// Seed for resampling (and, in replay, weights and inputs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only these step ids of the trace (default: all; replay: the first).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// Only these layer ids of the trace (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<u32>,
}

impl InputArgs {
    /// The flags as a library input spec; `default_trace` fills a missing
    /// `--trace`, `first_step` makes "the first step" the default.
    pub fn spec(
        &self,
        gpus: usize,
        default_trace: Option<PathBuf>,
        first_step: bool,
    ) -> anyhow::Result<InputSpec> {
        let source = match (&self.synthetic, &self.trace, default_trace) {
            (Some(spec), _, _) => InputSource::Synthetic(
                parse_scenarios(spec).map_err(|e| anyhow::anyhow!("--synthetic: {e}"))?,
            ),
            (None, Some(t), _) => InputSource::Trace(t.clone()),
            (None, None, Some(t)) => InputSource::Trace(t),
            (None, None, None) => bail!("give --trace PATH or --synthetic SCENARIOS"),
        };
        if matches!(source, InputSource::Synthetic(_))
            && (!self.steps.is_empty() || !self.layers.is_empty())
        {
            bail!("--steps and --layers select from a trace; a synthetic scenario has one step and one layer");
        }
        Ok(InputSpec {
            source,
            dims: DimOverrides {
                experts: self.experts,
                top_k: self.top_k,
                hidden_size: self.hidden_size,
                intermediate_size: self.intermediate_size,
                num_layers: self.num_layers,
            },
            gpus,
            tokens_per_rank: self.tokens_per_rank,
            seed: self.seed,
            steps: match (self.steps.is_empty(), first_step) {
                (false, _) => StepPick::Ids(self.steps.clone()),
                (true, true) => StepPick::First,
                (true, false) => StepPick::All,
            },
            layers: self.layers.clone(),
        })
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
