//! The reference's synthetic routing scenarios (`docs/anchors.md`), so
//! replays and simulations can run the exact inputs the published figures
//! used.
//!
//! For token `i` of `T` on every rank and slot `k` of `K`:
//! - `balanced`: expert `(i + k) mod N`;
//! - `PCT:H`: with `hot = floor(T * PCT / 100)`, a token `i < hot` sends
//!   slot k to expert `k mod H`; any other token sends slot k to expert
//!   `H + ((i + k) mod (N - H))`;
//!
//! router weight `1/K` on every slot; identical on every rank.

use super::tokens::TokenTrace;
use std::fmt;
use std::str::FromStr;

/// A scenario the generator cannot make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Balanced,
    Hot { pct: u32, hot: u32 },
}

impl FromStr for Scenario {
    type Err = ScenarioError;
    fn from_str(s: &str) -> Result<Self, ScenarioError> {
        Self::parse(s).map_err(ScenarioError)
    }
}

impl Scenario {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("balanced") {
            return Ok(Scenario::Balanced);
        }
        let (p, h) = s
            .split_once(':')
            .ok_or_else(|| format!("scenario '{s}': expected 'balanced' or PCT:H such as 95:4"))?;
        let pct: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("scenario '{s}': PCT must be an integer 0..=100"))?;
        let hot: u32 = h
            .trim()
            .parse()
            .map_err(|_| format!("scenario '{s}': H must be a positive integer"))?;
        if pct > 100 || hot == 0 {
            return Err(format!("scenario '{s}': need 0 <= PCT <= 100 and H >= 1"));
        }
        Ok(Scenario::Hot { pct, hot })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scenario::Balanced => f.write_str("balanced"),
            Scenario::Hot { pct, hot } => write!(f, "{pct}:{hot}"),
        }
    }
}

impl Scenario {
    /// Expert of token `i`, slot `k` (`t` tokens per rank, `n` experts).
    #[inline]
    pub fn expert(&self, i: u64, k: u64, t: u64, n: u64) -> u64 {
        match *self {
            Scenario::Balanced => (i + k) % n,
            Scenario::Hot { pct, hot } => {
                let h = hot as u64;
                let hot_tokens = t * pct as u64 / 100;
                if i < hot_tokens {
                    k % h
                } else {
                    h + (i + k) % (n - h)
                }
            }
        }
    }

    pub fn validate(&self, experts: u32, top_k: u32) -> Result<(), ScenarioError> {
        if let Scenario::Hot { hot, .. } = *self {
            if hot >= experts {
                return Err(ScenarioError(format!(
                    "scenario {self}: H = {hot} must be below the number of experts ({experts})"
                )));
            }
        }
        if top_k == 0 || top_k > experts {
            return Err(ScenarioError(format!(
                "top_k {top_k} must be between 1 and the number of experts ({experts})"
            )));
        }
        Ok(())
    }

    /// Token-level routing: `ranks` ranks of `tokens` tokens, one layer
    /// (id 0), one step (id 0). Each token is its own sequence.
    pub fn tokens(&self, ranks: u32, tokens: u32, experts: u32, top_k: u32) -> TokenTrace {
        let mut t = TokenTrace::new(top_k as usize);
        let w = vec![1.0 / top_k as f32; top_k as usize];
        let mut ids = vec![0u16; top_k as usize];
        for r in 0..ranks {
            for i in 0..tokens {
                for (k, id) in ids.iter_mut().enumerate() {
                    *id = self.expert(i as u64, k as u64, tokens as u64, experts as u64) as u16;
                }
                t.push(0, 0, r, i, i, &ids, &w);
            }
        }
        t
    }

    /// Per-rank counts `[experts]` of one rank (identical on every rank),
    /// without materialising tokens.
    pub fn rank_counts(&self, tokens: u64, experts: u64, top_k: u64) -> Vec<u64> {
        let mut c = vec![0u64; experts as usize];
        for i in 0..tokens {
            for k in 0..top_k {
                c[self.expert(i, k, tokens, experts) as usize] += 1;
            }
        }
        c
    }
}

/// Parse `balanced,30:4,95:1`.
pub fn parse_scenarios(spec: &str) -> Result<Vec<Scenario>, ScenarioError> {
    let v: Result<Vec<_>, _> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect();
    let v = v?;
    if v.is_empty() {
        return Err(ScenarioError("no scenario given".into()));
    }
    Ok(v)
}

/// The six scenarios of the reference test.
pub const REFERENCE_SCENARIOS: &str = "balanced,30:4,50:4,80:4,95:4,95:1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_follows_the_reference() {
        // 95:1 with N = 8, K = 2, T = 20: 19 hot tokens send both slots to expert 0
        let s: Scenario = "95:1".parse().unwrap();
        let c = s.rank_counts(20, 8, 2);
        assert_eq!(c[0], 38);
        // token 19: slots to 1 + (19 + k) mod 7 = 1 + {5, 6}
        assert_eq!(c.iter().sum::<u64>(), 40);
        assert_eq!(c[6], 1);
        assert_eq!(c[7], 1);
        let b = Scenario::Balanced.rank_counts(16, 8, 4);
        assert!(b.iter().all(|&x| x == 8));
        assert_eq!(parse_scenarios(REFERENCE_SCENARIOS).unwrap().len(), 6);
        assert!("101:4".parse::<Scenario>().is_err());
        let t = s.tokens(2, 20, 8, 2);
        assert_eq!(t.to_loads(8).block(0, 0)[..8], c[..]);
    }
}

/// Model shape of a synthetic run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticShape {
    pub experts: u32,
    pub top_k: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
}

impl SyntheticShape {
    /// The paper's gpt-oss-120b layer (`docs/anchors.md`).
    pub const GPT_OSS_120B: SyntheticShape = SyntheticShape {
        experts: 128,
        top_k: 4,
        hidden_size: 2880,
        intermediate_size: 2880,
    };
}

/// A one-step, one-layer load-level trace of `scenario` on `ranks` ranks of
/// `tokens_per_rank` tokens each (identical on every rank, as the reference
/// test generates it).
pub fn scenario_trace(
    scenario: Scenario,
    ranks: u32,
    tokens_per_rank: u64,
    shape: SyntheticShape,
) -> Result<super::Trace, ScenarioError> {
    use super::meta::{command_line, tool_version, CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
    scenario.validate(shape.experts, shape.top_k)?;
    let counts = scenario.rank_counts(tokens_per_rank, shape.experts as u64, shape.top_k as u64);
    let mut loads = super::Loads::zeros(vec![0], vec![0], ranks as usize, shape.experts as usize);
    for row in loads
        .block_mut(0, 0)
        .chunks_exact_mut(shape.experts as usize)
    {
        row.copy_from_slice(&counts);
    }
    let model = ModelMeta {
        name: format!(
            "synthetic E={} k={} D={} I={}",
            shape.experts, shape.top_k, shape.hidden_size, shape.intermediate_size
        ),
        num_experts: shape.experts,
        top_k: shape.top_k,
        hidden_size: shape.hidden_size,
        intermediate_size: shape.intermediate_size,
        num_layers: 1,
        dtype: "bf16".into(),
        routing: RoutingFn::Recorded,
    };
    let capture = CaptureMeta {
        source_format: format!("synthetic {scenario}"),
        ranks,
        tokens_per_rank: Some(tokens_per_rank),
        rank_assignment: "recorded".into(),
        tool_version: tool_version(),
        command: command_line(),
        ..Default::default()
    };
    let mut meta = TraceMeta::new(model, capture);
    meta.provenance =
        "generated: the reference LLEP test's synthetic routing (docs/anchors.md)".into();
    Ok(super::Trace {
        meta,
        loads,
        tokens: None,
    })
}
