//! One GPU as the replay uses it: context, two streams (tokens and weight
//! transfers), the NVRTC-compiled kernels of `kernels/moe.cu`, a cuBLAS
//! handle (the GEMMs themselves are `gemm`'s), NCCL communicators, and a
//! caching allocator that keeps a high-water mark. Raw driver calls throughout: no hidden synchronisation
//! inside the timed region.

use super::GpuError;
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaModule};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use std::ffi::c_void;
use std::sync::Arc;

/// Kernel arguments for [`Dev::launch`]: the address of each value, as
/// `cuLaunchKernel` takes them (the values must live until the call returns).
macro_rules! params {
    ($($x:expr),* $(,)?) => {
        &mut [$(&$x as *const _ as *mut ::std::ffi::c_void),*]
    };
}
pub(super) use params;

/// The kernels, as CUDA C source embedded in the binary: the shared bf16
/// conversions and activation, then the layer's kernels.
pub const KERNEL_SRC: &str = concat!(
    include_str!("../../kernels/bf16_act.cuh"),
    include_str!("../../kernels/moe.cu")
);

pub(super) fn drv_err(what: &str) -> impl Fn(drv::DriverError) -> GpuError + '_ {
    move |e| {
        if e.0 == drv_sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
            GpuError::Oom(what.to_string())
        } else {
            GpuError::Cuda(format!("{what}: {e:?}"))
        }
    }
}

fn nccl_err(what: &str) -> impl Fn(nccl::NcclError) -> GpuError + '_ {
    move |e| GpuError::Nccl(format!("{what}: {e:?}"))
}

fn blas_err(what: &str) -> impl Fn(blas::CublasError) -> GpuError + '_ {
    move |e| GpuError::Cuda(format!("{what}: {e:?}"))
}

/// Check the CUDA libraries are loadable before cudarc touches them (it
/// panics on a missing library).
pub fn check_libraries() -> Result<(), GpuError> {
    // SAFETY: only tries to dlopen the libraries by name.
    let present = unsafe {
        [
            ("libcuda (the NVIDIA driver)", drv_sys::is_culib_present()),
            (
                "libnvrtc (CUDA toolkit)",
                cudarc::nvrtc::sys::is_culib_present(),
            ),
            ("libcublas (CUDA toolkit)", blas_sys::is_culib_present()),
            (
                "libcublasLt (CUDA toolkit)",
                cudarc::cublaslt::sys::is_culib_present(),
            ),
            ("libnccl", nccl_sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(GpuError::NoLibrary(missing.join(", ")))
    }
}

/// Number of visible GPUs (after the library check).
pub fn device_count() -> Result<usize, GpuError> {
    drv::init().map_err(drv_err("cuInit"))?;
    let n = drv::device::get_count().map_err(drv_err("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

/// The kernels compiled for the compute capability of device 0 (every
/// GPU of a replay or calibration is the same card).
pub fn compile_kernels_for_device0() -> Result<cudarc::nvrtc::Ptx, GpuError> {
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
    compile_kernels(cc)
}

/// Compile the kernels for compute capability `cc` (e.g. (9, 0)).
pub fn compile_kernels(cc: (i32, i32)) -> Result<cudarc::nvrtc::Ptx, GpuError> {
    let arch: &'static str = Box::leak(format!("sm_{}{}", cc.0, cc.1).into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        use_fast_math: Some(false),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SRC, opts)
        .map_err(|e| GpuError::Compile(format!("{e:?}")))
}

pub struct Kernels {
    pub gen_bf16: drv_sys::CUfunction,
    pub route_count: drv_sys::CUfunction,
    pub route_scan: drv_sys::CUfunction,
    pub route_slots: drv_sys::CUfunction,
    pub pack_rows: drv_sys::CUfunction,
    pub copy_rows: drv_sys::CUfunction,
    pub act_rows: drv_sys::CUfunction,
    pub combine_rows: drv_sys::CUfunction,
    pub ref_gate_up: drv_sys::CUfunction,
    pub ref_act: drv_sys::CUfunction,
    pub ref_down: drv_sys::CUfunction,
    pub gather_out: drv_sys::CUfunction,
    pub bwd_scatter: drv_sys::CUfunction,
    pub sum_copies: drv_sys::CUfunction,
    pub act_bwd_rows: drv_sys::CUfunction,
    pub fill_bf16: drv_sys::CUfunction,
    pub add_bf16: drv_sys::CUfunction,
    pub to_f32: drv_sys::CUfunction,
    pub gather_rows_f32: drv_sys::CUfunction,
    pub ref_bias_act: drv_sys::CUfunction,
    pub ref_router: drv_sys::CUfunction,
    pub ref_act_bwd: drv_sys::CUfunction,
    pub colsum_f32: drv_sys::CUfunction,
    pub scatter_add_f32: drv_sys::CUfunction,
    pub err_sums: drv_sys::CUfunction,
    pub spin_ns: drv_sys::CUfunction,
}

/// Element type of a [`Dev::gemm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    Bf16,
    F32,
}

/// A device allocation owned by the [`Arena`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Buf {
    pub ptr: u64,
    pub cap: usize,
}

/// The buffers the replay and calibration keep in the [`Arena`], one
/// allocation each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufKind {
    /// This rank's experts' weight blobs.
    Native,
    /// Every expert's down bias, one row each (`pack_rows` points at it).
    BiasTable,
    /// This rank's input tokens.
    X,
    /// `gather_f64` send and receive.
    GatherSend,
    GatherRecv,
    /// Token rows out to and in from peers (dispatch; reversed to combine).
    Send,
    Recv,
    /// Rows this rank computes, grouped by expert.
    Comp,
    /// gate_up output and activation of one GEMM unit.
    H,
    Act,
    /// Weight blobs received from peers.
    Foreign,
    /// Pack and copy segment tables.
    PackSegs,
    SegsIn,
    SegsOut,
    SegStart,
    /// Routing of this rank: expert ids, router weights, slots.
    Ids,
    W,
    Slot,
    /// Per-expert counts of this rank and of all ranks, and per block of
    /// 256 copies (then copies before the block) while the slots are
    /// numbered.
    Counts,
    CountsAll,
    BlockCounts,
    /// Per copy: where its result lands and its expert's bias.
    RetPtr,
    BiasPtr,
    /// The layer's output rows.
    Out,
    /// Dense check scratch.
    RefBlob,
    RefH,
    RefA,
    RefOut,
    RefGot,
    RefTok,
    RefRow,
    RefW,
    /// Training step: upstream gradient, input gradient (t x D) and
    /// router-weight gradients of this rank's tokens.
    DY,
    DX,
    DW,
    /// Training step: expert outputs (then dY, then dX) of the computed rows,
    /// apart from their inputs, which backward keeps.
    Yout,
    /// Training step: received rows into `Yout`.
    SegsYIn,
    /// Training step: activation gradient of one GEMM unit.
    DA,
    /// Training step: a row of ones (bias gradients as GEMMs).
    Ones,
    /// Training step: weight gradients of native experts, of received
    /// (foreign) experts, and foreign gradients returned to this owner.
    NGrad,
    FGrad,
    GRecv,
    /// Backward dense check scratch.
    RefX32,
    RefY32,
    RefG32,
    RefDA32,
    RefW32,
    RefGrad32,
    RefDX32,
    RefDw,
    RefErr,
    /// Calibration scratch.
    CalX,
    CalW,
    CalH,
    CalA,
    CalSend,
    CalRecv,
}

impl BufKind {
    /// The name an out-of-memory error reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BufKind::Native => "native",
            BufKind::BiasTable => "bias_table",
            BufKind::X => "x",
            BufKind::GatherSend => "gather_s",
            BufKind::GatherRecv => "gather_r",
            BufKind::Send => "send",
            BufKind::Recv => "recv",
            BufKind::Comp => "comp",
            BufKind::H => "h",
            BufKind::Act => "act",
            BufKind::Foreign => "foreign",
            BufKind::PackSegs => "packsegs",
            BufKind::SegsIn => "segs_in",
            BufKind::SegsOut => "segs_out",
            BufKind::SegStart => "seg_start",
            BufKind::Ids => "ids",
            BufKind::W => "w",
            BufKind::Slot => "slot",
            BufKind::Counts => "counts",
            BufKind::BlockCounts => "block counts",
            BufKind::CountsAll => "counts_all",
            BufKind::RetPtr => "ret_ptr",
            BufKind::BiasPtr => "bias_ptr",
            BufKind::Out => "out",
            BufKind::RefBlob => "ref_blob",
            BufKind::RefH => "ref_h",
            BufKind::RefA => "ref_a",
            BufKind::RefOut => "ref_out",
            BufKind::RefGot => "ref_got",
            BufKind::RefTok => "ref_tok",
            BufKind::RefRow => "ref_row",
            BufKind::RefW => "ref_w",
            BufKind::DY => "dy",
            BufKind::DX => "dx",
            BufKind::DW => "dw",
            BufKind::Yout => "yout",
            BufKind::SegsYIn => "segs_yin",
            BufKind::DA => "da",
            BufKind::Ones => "ones",
            BufKind::NGrad => "ngrad",
            BufKind::FGrad => "fgrad",
            BufKind::GRecv => "grecv",
            BufKind::RefX32 => "ref_x32",
            BufKind::RefY32 => "ref_y32",
            BufKind::RefG32 => "ref_g32",
            BufKind::RefDA32 => "ref_da32",
            BufKind::RefW32 => "ref_w32",
            BufKind::RefGrad32 => "ref_grad32",
            BufKind::RefDX32 => "ref_dx32",
            BufKind::RefDw => "ref_dw",
            BufKind::RefErr => "ref_err",
            BufKind::CalX => "cal_x",
            BufKind::CalW => "cal_w",
            BufKind::CalH => "cal_h",
            BufKind::CalA => "cal_a",
            BufKind::CalSend => "cal_s",
            BufKind::CalRecv => "cal_r",
        }
    }
}

/// Caching allocator: one buffer per [`BufKind`], each only growing, freed
/// together at the end of a case; `peak` is the high-water mark of bytes
/// held.
#[derive(Debug, Default)]
pub struct Arena {
    bufs: Vec<(BufKind, Buf)>,
    pub held: usize,
    pub peak: usize,
}

const GRAIN: usize = 2 << 20;

impl Arena {
    /// Pointer to buffer `kind` of at least `bytes`, growing it if needed.
    pub fn get(&mut self, kind: BufKind, bytes: usize) -> Result<u64, GpuError> {
        let bytes = bytes.max(256).div_ceil(GRAIN) * GRAIN;
        if let Some((_, b)) = self.bufs.iter_mut().find(|(n, _)| *n == kind) {
            if b.cap >= bytes {
                return Ok(b.ptr);
            }
            // SAFETY: the pointer came from cuMemAlloc and no queued work
            // uses it: buffers only grow between layer runs, after a sync.
            unsafe { drv::free_sync(b.ptr) }.map_err(drv_err("cuMemFree"))?;
            self.held -= b.cap;
            b.cap = 0;
            // SAFETY: plain device allocation.
            let p = unsafe { drv::malloc_sync(bytes) }.map_err(drv_err(kind.as_str()))?;
            b.ptr = p;
            b.cap = bytes;
        } else {
            // SAFETY: plain device allocation.
            let p = unsafe { drv::malloc_sync(bytes) }.map_err(drv_err(kind.as_str()))?;
            self.bufs.push((kind, Buf { ptr: p, cap: bytes }));
        }
        self.held += bytes;
        self.peak = self.peak.max(self.held);
        Ok(self.bufs.iter().find(|(n, _)| *n == kind).unwrap().1.ptr)
    }

    /// Whether `kind` already holds `bytes`.
    pub fn has(&self, kind: BufKind, bytes: usize) -> bool {
        let bytes = bytes.max(256).div_ceil(GRAIN) * GRAIN;
        self.bufs.iter().any(|(n, b)| *n == kind && b.cap >= bytes)
    }

    /// Free every buffer whose kind is not in `keep`.
    pub fn release_except(&mut self, keep: &[BufKind]) -> Result<(), GpuError> {
        let mut kept = Vec::new();
        for (n, b) in self.bufs.drain(..) {
            if keep.contains(&n) {
                kept.push((n, b));
            } else {
                // SAFETY: called after a device sync; nothing uses it.
                unsafe { drv::free_sync(b.ptr) }.map_err(drv_err("cuMemFree"))?;
                self.held -= b.cap;
            }
        }
        self.bufs = kept;
        Ok(())
    }

    pub fn reset_peak(&mut self) {
        self.peak = self.held;
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for (_, b) in self.bufs.drain(..) {
            // SAFETY: the context outlives the arena (field order in Dev).
            let _ = unsafe { drv::free_sync(b.ptr) };
        }
    }
}

/// A device event (timing enabled).
pub struct Event(pub drv_sys::CUevent);

impl Event {
    pub fn new() -> Result<Self, GpuError> {
        drv::event::create(drv_sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map(Event)
            .map_err(drv_err("cuEventCreate"))
    }
    pub(crate) fn record(&self, s: drv_sys::CUstream) -> Result<(), GpuError> {
        // SAFETY: live event and stream of the current context.
        unsafe { drv::event::record(self.0, s) }.map_err(drv_err("cuEventRecord"))
    }
    pub fn ms_since(&self, start: &Event) -> Result<f64, GpuError> {
        // SAFETY: both events recorded and complete (caller synchronised).
        unsafe { drv::event::elapsed(start.0, self.0) }
            .map(f64::from)
            .map_err(drv_err("cuEventElapsedTime"))
    }
    pub fn sync(&self) -> Result<(), GpuError> {
        // SAFETY: live event.
        unsafe { drv::event::synchronize(self.0) }.map_err(drv_err("cuEventSynchronize"))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: live event, destroyed once.
        let _ = unsafe { drv::event::destroy(self.0) };
    }
}

/// An NCCL communicator (not Send: one per thread or process).
pub struct Comm {
    pub comm: nccl_sys::ncclComm_t,
    pub rank: usize,
    pub world: usize,
}

pub type NcclId = [std::ffi::c_char; 128];

pub fn nccl_new_id() -> Result<NcclId, GpuError> {
    nccl::get_uniqueid()
        .map(|id| id.internal)
        .map_err(nccl_err("ncclGetUniqueId"))
}

impl Comm {
    pub fn init(world: usize, rank: usize, id: &NcclId) -> Result<Comm, GpuError> {
        let mut c = std::mem::MaybeUninit::uninit();
        // SAFETY: c is written by NCCL on success.
        let comm = unsafe {
            nccl::comm_init_rank(
                c.as_mut_ptr(),
                world as i32,
                nccl_sys::ncclUniqueId { internal: *id },
                rank as i32,
            )
            .map_err(nccl_err("ncclCommInitRank"))?;
            c.assume_init()
        };
        Ok(Comm { comm, rank, world })
    }

    /// # Safety
    /// `ptr` must hold `bytes` bytes on this communicator's device until
    /// the stream passes this point.
    pub unsafe fn send(
        &self,
        ptr: u64,
        bytes: usize,
        peer: usize,
        s: drv_sys::CUstream,
    ) -> Result<(), GpuError> {
        nccl::send(
            ptr as *const c_void,
            bytes,
            nccl_sys::ncclDataType_t::ncclUint8,
            peer as i32,
            self.comm,
            s as _,
        )
        .map(|_| ())
        .map_err(nccl_err("ncclSend"))
    }

    /// # Safety
    /// As [`Comm::send`], for writing.
    pub unsafe fn recv(
        &self,
        ptr: u64,
        bytes: usize,
        peer: usize,
        s: drv_sys::CUstream,
    ) -> Result<(), GpuError> {
        nccl::recv(
            ptr as *mut c_void,
            bytes,
            nccl_sys::ncclDataType_t::ncclUint8,
            peer as i32,
            self.comm,
            s as _,
        )
        .map(|_| ())
        .map_err(nccl_err("ncclRecv"))
    }

    /// # Safety
    /// `send` holds `count` elements, `recv` holds `count * world`.
    pub unsafe fn all_gather(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        ty: nccl_sys::ncclDataType_t,
        s: drv_sys::CUstream,
    ) -> Result<(), GpuError> {
        nccl::all_gather(
            send as *const c_void,
            recv as *mut c_void,
            count,
            ty,
            self.comm,
            s as _,
        )
        .map(|_| ())
        .map_err(nccl_err("ncclAllGather"))
    }

    /// In-place sum over ranks of `count` fp32 values.
    ///
    /// # Safety
    /// `buf` holds `count` floats on this communicator's device.
    pub unsafe fn all_reduce_f32(
        &self,
        buf: u64,
        count: usize,
        s: drv_sys::CUstream,
    ) -> Result<(), GpuError> {
        nccl::all_reduce(
            buf as *const c_void,
            buf as *mut c_void,
            count,
            nccl_sys::ncclDataType_t::ncclFloat32,
            nccl_sys::ncclRedOp_t::ncclSum,
            self.comm,
            s as _,
        )
        .map(|_| ())
        .map_err(nccl_err("ncclAllReduce"))
    }

    pub fn group_start() -> Result<(), GpuError> {
        nccl::group_start()
            .map(|_| ())
            .map_err(nccl_err("ncclGroupStart"))
    }
    pub fn group_end() -> Result<(), GpuError> {
        nccl::group_end()
            .map(|_| ())
            .map_err(nccl_err("ncclGroupEnd"))
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: live communicator, destroyed once, no work pending (the
        // owner synchronised before dropping).
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
        }
    }
}

/// One GPU, bound to the calling thread.
pub struct Dev {
    pub arena: Arena,
    /// The path of bf16 GEMMs (see `gemm`; `cublas` until `set_gemm`), and
    /// the cuBLASLt state once `lt` was chosen (dropped before the context).
    pub(super) gemm_impl: super::gemm::GemmImpl,
    pub(super) lt: Option<super::gemm::Lt>,
    /// The fused gate_up kernel once `fused` was chosen.
    pub(super) fused: Option<super::fused::Fused>,
    pub k: Kernels,
    pub blas: blas_sys::cublasHandle_t,
    pub main: drv_sys::CUstream,
    pub xfer: drv_sys::CUstream,
    /// Token exchange (dispatch and combine), overlapped with compute.
    pub net: drv_sys::CUstream,
    /// Copy-engine exchange, pipelined: the received rows placed into the
    /// compute buffer, chunk after chunk, beside the running GEMMs.
    pub side: drv_sys::CUstream,
    /// A second compute stream (`replay --compute-streams 2`): large expert
    /// units alternate between it and `main`.
    pub comp2: drv_sys::CUstream,
    pub name: String,
    pub total_mem: usize,
    /// Launch the kernels that open with `pdl_wait()` (`act_rows`) as
    /// programmatic dependents of the kernel before them (sm_90+; on by
    /// default there).
    pub pdl: std::cell::Cell<bool>,
    /// Blocks of 256 threads `act_rows` launches with: one resident wave
    /// (it is grid-stride; its callers size the grid per element pair).
    pub(crate) act_wave: u32,
    /// The main stream is being captured into a graph (`graphs`): a GEMM
    /// that would tune refuses instead (tuning synchronises the device).
    pub(super) capturing: std::cell::Cell<bool>,
    _module: Arc<CudaModule>,
    pub ctx: Arc<CudaContext>,
}

impl Dev {
    pub fn new(ordinal: usize, ptx: &cudarc::nvrtc::Ptx) -> Result<Dev, GpuError> {
        let ctx = CudaContext::new(ordinal).map_err(drv_err("cuCtxCreate"))?;
        ctx.bind_to_thread().map_err(drv_err("cuCtxSetCurrent"))?;
        let module = ctx
            .load_module(ptx.clone())
            .map_err(drv_err("cuModuleLoadData"))?;
        let f = |n: &str| -> Result<drv_sys::CUfunction, GpuError> {
            Ok(module
                .load_function(n)
                .map_err(|e| GpuError::Cuda(format!("kernel {n}: {e:?}")))?
                .cu_function())
        };
        let k = Kernels {
            gen_bf16: f("gen_bf16")?,
            route_count: f("route_count")?,
            route_scan: f("route_scan")?,
            route_slots: f("route_slots")?,
            pack_rows: f("pack_rows")?,
            copy_rows: f("copy_rows")?,
            act_rows: f("act_rows")?,
            combine_rows: f("combine_rows")?,
            ref_gate_up: f("ref_gate_up")?,
            ref_act: f("ref_act")?,
            ref_down: f("ref_down")?,
            gather_out: f("gather_out")?,
            bwd_scatter: f("bwd_scatter")?,
            sum_copies: f("sum_copies")?,
            act_bwd_rows: f("act_bwd_rows")?,
            fill_bf16: f("fill_bf16")?,
            add_bf16: f("add_bf16")?,
            to_f32: f("to_f32")?,
            gather_rows_f32: f("gather_rows_f32")?,
            ref_bias_act: f("ref_bias_act")?,
            ref_router: f("ref_router")?,
            ref_act_bwd: f("ref_act_bwd")?,
            colsum_f32: f("colsum_f32")?,
            scatter_add_f32: f("scatter_add_f32")?,
            err_sums: f("err_sums")?,
            spin_ns: f("spin_ns")?,
        };
        let mk = || {
            drv::stream::create(drv::stream::StreamKind::NonBlocking)
                .map_err(drv_err("cuStreamCreate"))
        };
        let main = mk()?;
        let xfer = mk()?;
        let net = mk()?;
        let side = mk()?;
        let comp2 = mk()?;
        let handle = blas::create_handle().map_err(blas_err("cublasCreate"))?;
        // SAFETY: live handle and stream.
        unsafe { blas::set_stream(handle, main as _) }.map_err(blas_err("cublasSetStream"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let total_mem = ctx.total_mem().unwrap_or(0);
        let pdl = ctx.compute_capability().is_ok_and(|(major, _)| major >= 9);
        let sms = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(0);
        // SAFETY: a loaded kernel of this context.
        let per_sm =
            unsafe { drv::occupancy::max_active_block_per_multiprocessor(k.act_rows, 256, 0) }
                .unwrap_or(0);
        let act_wave = (sms.max(0) as u32) * (per_sm.max(0) as u32);
        Ok(Dev {
            arena: Arena::default(),
            gemm_impl: super::gemm::GemmImpl::Cublas,
            lt: None,
            fused: None,
            k,
            blas: handle,
            main,
            xfer,
            net,
            side,
            comp2,
            name,
            total_mem,
            pdl: std::cell::Cell::new(pdl),
            act_wave,
            capturing: Default::default(),
            _module: module,
            ctx,
        })
    }

    /// Launch `f` on stream `s`. `act_rows` is launched with at most one
    /// resident wave of blocks (it is grid-stride) and, on sm_90+, as a
    /// programmatic dependent of the kernel before it ([`Dev::pdl`]).
    ///
    /// # Safety
    /// `params` must match the kernel's signature and every pointer in them
    /// must stay valid until the stream passes the kernel.
    pub unsafe fn launch(
        &self,
        f: drv_sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        s: drv_sys::CUstream,
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut grid = grid;
        if f == self.k.act_rows && block == 256 && self.act_wave > 0 {
            grid.0 = grid.0.min(self.act_wave);
        }
        if self.pdl.get() && f == self.k.act_rows {
            // SAFETY: a plain-old-data union, zero is a valid value
            let mut value: drv_sys::CUlaunchAttributeValue = std::mem::zeroed();
            value.programmaticStreamSerializationAllowed = 1;
            let mut attr = drv_sys::CUlaunchAttribute {
                id: drv_sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value,
            };
            let cfg = drv_sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem,
                hStream: s,
                attrs: &mut attr,
                numAttrs: 1,
            };
            return drv_sys::cuLaunchKernelEx(&cfg, f, params.as_mut_ptr(), std::ptr::null_mut())
                .result()
                .map_err(drv_err("cuLaunchKernelEx"));
        }
        drv::launch_kernel(f, grid, (block, 1, 1), smem, s, params)
            .map_err(drv_err("cuLaunchKernel"))
    }

    pub fn sync(&self) -> Result<(), GpuError> {
        // SAFETY: live streams.
        unsafe {
            drv::stream::synchronize(self.main).map_err(drv_err("cuStreamSynchronize"))?;
            drv::stream::synchronize(self.net).map_err(drv_err("cuStreamSynchronize"))?;
            drv::stream::synchronize(self.side).map_err(drv_err("cuStreamSynchronize"))?;
            drv::stream::synchronize(self.comp2).map_err(drv_err("cuStreamSynchronize"))?;
            drv::stream::synchronize(self.xfer).map_err(drv_err("cuStreamSynchronize"))
        }
    }

    /// # Safety
    /// `dst` must hold `src.len()` elements.
    pub unsafe fn upload<T>(&self, dst: u64, src: &[T]) -> Result<(), GpuError> {
        if src.is_empty() {
            return Ok(());
        }
        drv::memcpy_htod_async(dst, src, self.main).map_err(drv_err("cuMemcpyHtoD"))
    }

    /// Copy device memory to the host and wait.
    ///
    /// # Safety
    /// `src` must hold `dst.len()` elements.
    pub unsafe fn download<T>(&self, dst: &mut [T], src: u64) -> Result<(), GpuError> {
        if dst.is_empty() {
            return Ok(());
        }
        drv::memcpy_dtoh_async(dst, src, self.main).map_err(drv_err("cuMemcpyDtoH"))?;
        drv::stream::synchronize(self.main).map_err(drv_err("cuStreamSynchronize"))
    }

    pub fn memset0(&self, ptr: u64, bytes: usize) -> Result<(), GpuError> {
        // SAFETY: ptr holds bytes (caller's arena buffer).
        unsafe { drv::memset_d8_async(ptr, 0, bytes, self.main) }.map_err(drv_err("cuMemset"))
    }

    /// Device memory in use as the driver sees it (all processes' view of
    /// this GPU: total - free).
    pub fn driver_used(&self) -> usize {
        drv::mem_get_info().map(|(f, t)| t - f).unwrap_or(0)
    }

    /// Make the transfer stream wait for work queued so far on `main`, or
    /// the reverse.
    pub(crate) fn wait(&self, waiter: drv_sys::CUstream, ev: &Event) -> Result<(), GpuError> {
        // SAFETY: live stream and event.
        unsafe {
            drv::stream::wait_event(
                waiter,
                ev.0,
                drv_sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(drv_err("cuStreamWaitEvent"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.sync();
        // SAFETY: live handle and streams, destroyed once; the arena frees
        // its buffers when dropped, before the context (field order).
        unsafe {
            let _ = blas::destroy_handle(self.blas);
            let _ = drv::stream::destroy(self.main);
            let _ = drv::stream::destroy(self.xfer);
            let _ = drv::stream::destroy(self.net);
            let _ = drv::stream::destroy(self.side);
            let _ = drv::stream::destroy(self.comp2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KERNEL_SRC;

    /// The kernels `Dev::new` loads exist in the embedded source with C
    /// linkage, and the table structs the host fills have the fields, in
    /// the order, that `worker.rs` lays out (`#[repr(C)]` there).
    #[test]
    fn embedded_kernels_and_tables_match_the_host() {
        for k in [
            "gen_bf16",
            "route_count",
            "route_scan",
            "route_slots",
            "pack_rows",
            "copy_rows",
            "act_rows",
            "combine_rows",
            "ref_gate_up",
            "ref_act",
            "ref_down",
            "gather_out",
            "bwd_scatter",
            "sum_copies",
            "act_bwd_rows",
            "fill_bf16",
            "add_bf16",
            "to_f32",
            "gather_rows_f32",
            "ref_bias_act",
            "ref_router",
            "ref_act_bwd",
            "colsum_f32",
            "scatter_add_f32",
            "err_sums",
            "spin_ns",
        ] {
            assert!(
                KERNEL_SRC.contains(&format!("extern \"C\" __global__ void {k}(")),
                "kernel {k} missing from kernels/moe.cu"
            );
        }
        let flat: String = KERNEL_SRC.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("struct PackSeg { long long lo, hi; u64 dst, ret, bias; };"));
        assert!(flat.contains("struct CopySeg { long long vstart, len; u64 src, dst; };"));
        // no headers: NVRTC must compile it with its built-ins alone
        assert!(!KERNEL_SRC.contains("#include"));
    }
}
