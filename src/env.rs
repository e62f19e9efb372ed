//! Environment variables the tool honours, in one place.
//!
//! The three planner variables are read by the deployed LLEP reference
//! implementation; reading them here as defaults means a user's shell setting
//! means the same thing in both tools (`docs/planner.md`, step 1).

/// Imbalance gate lambda: the planner runs iff max/mean GPU load >= lambda.
/// Unset, unparsable or <= 0 means "always plan".
pub const ROUTING_RATIO: &str = "MOE_ADAPTIVE_LPT_ROUTING_RATIO";
/// Capacity factor alpha (`max_tokens_factor` in the reference).
pub const MAX_TOKENS_FACTOR: &str = "EP_MAX_TOKENS_FACTOR";
/// Minimum tokens per GEMM m (`min_tokens_per_gemm` in the reference).
pub const MIN_TOKENS_PER_GEMM: &str = "EP_MIN_TOKENS_PER_GEMM";

/// Launcher variables for one-process-per-GPU replay (torchrun, srun, mpirun).
pub const RANK: &str = "RANK";
pub const WORLD_SIZE: &str = "WORLD_SIZE";
pub const LOCAL_RANK: &str = "LOCAL_RANK";
pub const MASTER_ADDR: &str = "MASTER_ADDR";
pub const MASTER_PORT: &str = "MASTER_PORT";

/// Reference defaults when neither the command line nor the environment says.
pub const DEFAULT_ALPHA: f64 = 1.0;
pub const DEFAULT_MIN_GEMM: u64 = 1024;
pub const DEFAULT_RATIO: f64 = 1.3;

/// The lambda gate as the reference reads it: `None` means "always plan"
/// (unset, unparsable or <= 0 all mean that).
pub fn gate_from_str(raw: Option<&str>) -> Option<f64> {
    let v: f64 = raw?.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v)
}

/// `EP_MAX_TOKENS_FACTOR` if set and parsable, else the reference default.
pub fn alpha_default() -> f64 {
    std::env::var(MAX_TOKENS_FACTOR)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(DEFAULT_ALPHA)
}

/// `EP_MIN_TOKENS_PER_GEMM` if set and parsable, else the reference default.
pub fn min_gemm_default() -> u64 {
    std::env::var(MIN_TOKENS_PER_GEMM)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_MIN_GEMM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_parsing_follows_the_reference() {
        assert_eq!(gate_from_str(None), None);
        assert_eq!(gate_from_str(Some("abc")), None);
        assert_eq!(gate_from_str(Some("0")), None);
        assert_eq!(gate_from_str(Some("-1.5")), None);
        assert_eq!(gate_from_str(Some(" 1.3 ")), Some(1.3));
    }
}
