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

/// Launcher variables for one-process-per-GPU replay, read through
/// [`launcher_var`] by `gpu::rendezvous` in this order: torchrun (or a
/// hand-set world), Open MPI's mpirun, Slurm's srun.
/// torchrun: its own variables; MASTER_ADDR and MASTER_PORT serve all three.
pub const RANK: &str = "RANK";
pub const WORLD_SIZE: &str = "WORLD_SIZE";
pub const LOCAL_RANK: &str = "LOCAL_RANK";
pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
pub const MASTER_ADDR: &str = "MASTER_ADDR";
pub const MASTER_PORT: &str = "MASTER_PORT";
/// "True" when torchrun's agent already serves a store on MASTER_PORT
/// (recent torchrun); the rendezvous then uses the next port.
pub const TORCHELASTIC_USE_AGENT_STORE: &str = "TORCHELASTIC_USE_AGENT_STORE";
/// Open MPI (`mpirun`, `mpiexec`).
pub const OMPI_RANK: &str = "OMPI_COMM_WORLD_RANK";
pub const OMPI_SIZE: &str = "OMPI_COMM_WORLD_SIZE";
pub const OMPI_LOCAL_RANK: &str = "OMPI_COMM_WORLD_LOCAL_RANK";
pub const OMPI_LOCAL_SIZE: &str = "OMPI_COMM_WORLD_LOCAL_SIZE";
/// Slurm (`srun`): the step's node list wins over the job's (a step may
/// use part of the allocation); the step's node count over the job's.
pub const SLURM_PROCID: &str = "SLURM_PROCID";
pub const SLURM_NTASKS: &str = "SLURM_NTASKS";
pub const SLURM_LOCALID: &str = "SLURM_LOCALID";
pub const SLURM_STEP_NUM_NODES: &str = "SLURM_STEP_NUM_NODES";
pub const SLURM_NNODES: &str = "SLURM_NNODES";
pub const SLURM_STEP_NODELIST: &str = "SLURM_STEP_NODELIST";
pub const SLURM_JOB_NODELIST: &str = "SLURM_JOB_NODELIST";
/// NCCL switches that force its network transport between GPUs of one
/// host (pseudo-nodes); read only to warn when they are missing.
pub const NCCL_P2P_DISABLE: &str = "NCCL_P2P_DISABLE";
pub const NCCL_SHM_DISABLE: &str = "NCCL_SHM_DISABLE";

/// Reference defaults when neither the command line nor the environment says.
pub const DEFAULT_ALPHA: f64 = 1.0;
pub const DEFAULT_MIN_GEMM: u64 = 1024;
pub const DEFAULT_RATIO: f64 = 1.3;

/// Diagnostics of `capture`: worker threads for logits routing (default:
/// all cores) and per-stage timing on stderr.
pub const CAPTURE_THREADS: &str = "LLEP_CAPTURE_THREADS";
pub const CAPTURE_TIMING: &str = "LLEP_CAPTURE_TIMING";
/// Set: `replay` prints each rank's GEMM tunings (the `lt` path's winners)
/// to stderr at the end, for whoever studies a replay's GEMMs.
pub const TUNE_LOG: &str = "LLEP_TRACE_TUNE_LOG";
/// Set: `replay` prints, per case and setting, rank 0's host time through
/// the overhead phase (medians over the case's runs, warm-ups included) to
/// stderr.
pub const HOST_TIMING: &str = "LLEP_TRACE_HOST_TIMING";
/// `--gemm fused`'s kernel variant, for whoever studies it: `staged` (the
/// default) or `noepi` (the epilogue warps skip their work: what it costs;
/// outputs are left unwritten). Unset: the default.
pub const FUSED_KERNEL: &str = "LLEP_TRACE_FUSED_KERNEL";

/// `--gemm fused`'s down GEMMs, for whoever measures them: `split` (the
/// default: units under `gpu::fused::DOWN_GROUPED_ROWS` rows through one
/// launch of the own grouped kernel, larger ones one cuBLASLt GEMM each),
/// `grouped` (every unit through the own kernel) or `lt` (every unit
/// through cuBLASLt, as before the grouped kernel). Unset: the default.
pub const FUSED_DOWN: &str = "LLEP_TRACE_FUSED_DOWN";

/// `--exchange copy-engine`'s forward token path, for whoever measures it:
/// `direct` (the default: each piece pushed straight into the peer's
/// compute rows, results straight into the owner's send rows) or `staged`
/// (one push per peer into its receive buffer, then a copy kernel placing
/// the rows; results copied out by a kernel first). Unset: the default.
pub const CE_ROWS: &str = "LLEP_TRACE_CE_ROWS";

/// The pipeline's end-chunk weight (`gpu::pipeline::END_WEIGHT`), for
/// whoever measures it: a number in (0, 1]; replay and the cost model
/// both follow it.
pub const CHUNK_ENDS: &str = "LLEP_TRACE_CHUNK_ENDS";

/// The cost model's drag of the copy engines' exchange on the GEMMs beside
/// it (`sim::overlap::COMM_DRAG_CE`), for whoever fits it again: a number
/// in [0, 1].
pub const CE_DRAG: &str = "LLEP_TRACE_CE_DRAG";

/// The raw value of `MOE_ADAPTIVE_LPT_ROUTING_RATIO`, if set; read it with
/// [`crate::plan::Gate::from_reference`].
pub fn routing_ratio_raw() -> Option<String> {
    std::env::var(ROUTING_RATIO).ok()
}

/// `LLEP_TRACE_FUSED_KERNEL`, if set.
pub fn fused_kernel() -> Option<String> {
    std::env::var(FUSED_KERNEL)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// `LLEP_TRACE_FUSED_DOWN`, if set.
pub fn fused_down() -> Option<String> {
    std::env::var(FUSED_DOWN)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Whether `LLEP_TRACE_CE_ROWS` asks for the staged copy-engine rows
/// (anything else, or unset: direct).
pub fn ce_rows_staged() -> bool {
    std::env::var(CE_ROWS).is_ok_and(|s| s.trim() == "staged")
}

/// Variable `name` read as a number, if set to one.
fn number(name: &str) -> Option<f64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// `LLEP_TRACE_CHUNK_ENDS` if set to a number in (0, 1].
pub fn chunk_ends() -> Option<f64> {
    number(CHUNK_ENDS).filter(|w| *w > 0.0 && *w <= 1.0)
}

/// `LLEP_TRACE_CE_DRAG` if set to a number in [0, 1].
pub fn ce_drag() -> Option<f64> {
    number(CE_DRAG).filter(|d| (0.0..=1.0).contains(d))
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

/// Whether `LLEP_TRACE_HOST_TIMING` is set.
pub fn host_timing() -> bool {
    std::env::var_os(HOST_TIMING).is_some()
}

/// Whether `LLEP_TRACE_TUNE_LOG` is set.
pub fn tune_log() -> bool {
    std::env::var_os(TUNE_LOG).is_some()
}

/// The launcher's view of one variable (`RANK`, `SLURM_PROCID`, ...).
pub fn launcher_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether NCCL is told to keep off NVLink/PCIe peer access and shared
/// memory (`NCCL_P2P_DISABLE=1` and `NCCL_SHM_DISABLE=1`), so GPUs of one
/// host talk over its network transport as on separate nodes.
pub fn nccl_network_forced() -> bool {
    let on = |k| std::env::var(k).is_ok_and(|v| v.trim() == "1");
    on(NCCL_P2P_DISABLE) && on(NCCL_SHM_DISABLE)
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
