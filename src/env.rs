//! Environment variables the tool honours, in one place.
//!
//! The three planner variables are read by the deployed LLEP reference
//! implementation; reading them here as defaults means a user's shell setting
//! means the same thing in both tools (`docs/planner.md`, step 1); [`crate::plan::Gate::from_reference`] does the
//! reading.

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

/// Diagnostics of `capture`: worker threads for logits routing (default:
/// all cores) and per-stage timing on stderr.
pub const CAPTURE_THREADS: &str = "LLEP_CAPTURE_THREADS";
pub const CAPTURE_TIMING: &str = "LLEP_CAPTURE_TIMING";

/// The raw value of `MOE_ADAPTIVE_LPT_ROUTING_RATIO`, if set; read it with
/// [`crate::plan::Gate::from_reference`].
pub fn routing_ratio_raw() -> Option<String> {
    std::env::var(ROUTING_RATIO).ok()
}

/// `LLEP_CAPTURE_THREADS` if set to a positive integer.
pub fn capture_threads() -> Option<usize> {
    std::env::var(CAPTURE_THREADS)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// Whether `LLEP_CAPTURE_TIMING` is set.
pub fn capture_timing() -> bool {
    std::env::var_os(CAPTURE_TIMING).is_some()
}

/// The launcher's view of one variable (`RANK`, `SLURM_PROCID`, ...).
pub fn launcher_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
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
