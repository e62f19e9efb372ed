//! GPU replay runtime (cudarc: driver, NVRTC, cuBLAS, NCCL, all loaded at
//! run time, so the crate builds and runs everything else with no CUDA): a
//! real expert-parallel MoE layer, standard EP and LLEP, measured.
//!
//! - [`layout`]: where every token-copy and weight goes (host math, tested
//!   without a GPU);
//! - [`inputs`]: replay cases from synthetic scenarios or traces, with the
//!   same row keys `simulate` emits;
//! - [`runtime`]: one GPU (streams, kernels, cuBLAS, NCCL, allocator);
//! - [`gemm`]: its GEMMs, through cuBLAS or autotuned cuBLASLt;
//! - [`gemm_bench`]: those GEMMs alone, per path (`gemm-bench`);
//! - `config`: what a replay is asked to do (the layer, its cases);
//! - `worker`: one rank's GPU, communicators, planner and buffers;
//! - `phases`: one run of the layer, phase by phase;
//! - [`decider`]: llep-auto's decision on a helper thread kept warm;
//! - `graphs`: its expert compute launched as CUDA graphs (`--cuda-graphs`);
//! - [`pipeline`]: its pipelined schedule (`--overlap on`) and chunk rule;
//! - [`copy_engine`]: tokens and weights moved by the copy engines
//!   (`--exchange copy-engine`) instead of NCCL;
//! - [`units`]: expert units (gate_up, activation, down) issued in
//!   batches that share one activation launch;
//! - `backward`: the training step's backward of that run;
//! - `dense`: the dense fp32 check of sampled tokens;
//! - `dense_bwd`: its backward counterpart (token and weight gradients);
//! - `timing`: warm-ups, timed runs, and the result rows;
//! - [`replay`]: validation and the entry that starts the ranks;
//! - [`replicas`]: EPLB's replicas (weights placed per slot, copies mapped
//!   to replicas) for the `eplb` and `eplb+llep` policies;
//! - [`calibrate`]: the hardware measurements behind a profile;
//! - [`overhead`]: its measurement of the layer's overhead phase;
//! - [`rendezvous`]: multi-process start under torchrun / srun / mpirun.

mod backward;
pub mod calibrate;
mod config;
pub mod copy_engine;
pub mod decider;
mod dense;
mod dense_bwd;
pub mod fused;
pub mod gemm;
pub mod gemm_bench;
mod graphs;
pub mod inputs;
pub mod layout;
pub mod overhead;
mod phases;
pub mod pipeline;
pub mod rendezvous;
pub mod replay;
pub mod replicas;
pub mod runtime;
mod timing;
pub mod units;
mod worker;

pub use copy_engine::{Exchange, PeerLink};
pub use gemm::GemmImpl;
pub use pipeline::Overlap;
pub use replay::{replay, Act, Case, EplbReplay, Launch, RankRouting, ReplayConfig};
pub use timing::{driver_version, quantile};
pub use worker::CHUNK;

use crate::plan::Gate;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU: cannot load {0}; `replay` and `calibrate` need an NVIDIA GPU with its driver, CUDA 13 (libcublas, libnvrtc) and NCCL on the library path (LD_LIBRARY_PATH)")]
    NoLibrary(String),
    #[error("no GPU: the CUDA driver reports no device (check CUDA_VISIBLE_DEVICES)")]
    NoDevice,
    #[error("out of device memory allocating {0}")]
    Oom(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("NCCL error: {0}")]
    Nccl(String),
    #[error("compiling the kernels with NVRTC failed: {0}")]
    Compile(String),
    #[error(transparent)]
    Launch(rendezvous::LaunchError),
    #[error("{0}")]
    Input(String),
}
