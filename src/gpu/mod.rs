//! GPU replay runtime (cudarc: driver, NVRTC, cuBLAS, NCCL, loaded at run
//! time). Not built yet: every entry point says so.

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("GPU replay is not implemented in this build yet")]
    NotImplemented,
}
