//! The replay's GEMMs, row-major with fp32 accumulation, through one of the
//! paths every caller shares (forward, backward, calibration); `fused`
//! (`super::fused`) is `lt` here, its own kernel serving only the expert
//! units' forward gate_up:
//!
//! - `cublas`: `cublasGemmEx` with its default algorithm;
//! - `lt`: cuBLASLt with the algorithm chosen per shape by a small
//!   autotune. For each bucket of (M, N, K) (each rounded up to a power of
//!   two or the midpoint between two), transposes, element type and
//!   pointer alignment, the first GEMM asks the heuristic for up to
//!   [`LT_CANDIDATES`] algorithms, times each on the call's own buffers
//!   (one untimed run, then the median of [`TUNE_REPS`] between CUDA
//!   events, each after the L2 cache was overwritten, once the device's
//!   streams drained), and keeps the fastest in-process. Later
//!   shapes of the same bucket reuse the winner once `cublasLtMatmulAlgoCheck`
//!   accepts it for their exact size (a host call, no device work).
//!
//! When tuning happens: at the first GEMM of a bucket. The replay's
//! warm-up runs (`--warmup`, default 3) run exactly the units of the timed
//! runs, so every bucket is tuned in the first warm-up and no timed run
//! ever tunes; calibration's timings likewise discard their first two
//! samples. A GEMM that accumulates (beta != 0) never tunes (re-running it
//! would change its output): it takes its bucket's winner, else the
//! heuristic's first choice. Nor does one whose output overlaps an input.
//!
//! fp32 GEMMs (the dense check) stay on cuBLAS under either path.

use super::runtime::{Dev, Dt, Event};
use super::GpuError;
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::result as drv;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;

/// Device memory the `lt` path allocates once per GPU for cuBLASLt's
/// workspace (outside the arena; a memory model counts it apart).
pub const LT_WORKSPACE_BYTES: usize = 32 << 20;

/// Algorithms the heuristic is asked for, each timed once per bucket.
pub const LT_CANDIDATES: usize = 16;

/// Timed runs per candidate algorithm.
pub const TUNE_REPS: usize = 3;

/// Which library runs the replay's bf16 GEMMs. The default is `lt`: on
/// H200 its expert compute was within noise of `cublas`'s on balanced
/// layers and 8-9% faster with uneven units (reports/replay-floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmImpl {
    /// cublasGemmEx, default algorithm.
    Cublas,
    /// cuBLASLt, autotuned algorithm per shape bucket.
    #[default]
    Lt,
    /// `lt`, except the forward gate_up GEMM of expert units: an own Hopper
    /// kernel with the activation in its epilogue (`super::fused`).
    Fused,
}

impl GemmImpl {
    pub fn as_str(self) -> &'static str {
        match self {
            GemmImpl::Cublas => "cublas",
            GemmImpl::Lt => "lt",
            GemmImpl::Fused => "fused",
        }
    }

    /// Whether plain GEMMs go through cuBLASLt (`lt` and `fused`).
    pub fn uses_lt(self) -> bool {
        matches!(self, GemmImpl::Lt | GemmImpl::Fused)
    }
}

impl std::str::FromStr for GemmImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cublas" => Ok(GemmImpl::Cublas),
            "lt" => Ok(GemmImpl::Lt),
            "fused" => Ok(GemmImpl::Fused),
            _ => Err(format!("'{s}' is not a GEMM path (lt, fused or cublas)")),
        }
    }
}

/// One row-major problem C[m,n] = beta C + op(A) op(B): sizes, stored
/// columns of A and B, transposes, element type, and the alignment (bytes,
/// at most 256) every pointer of the call has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ta: bool,
    tb: bool,
    bf16: bool,
    align: u32,
}

/// Smallest power of two or midpoint between two (1, 2, 3, 4, 6, 8, 12,
/// ...) at least `x`.
fn bucket(x: usize) -> usize {
    let p = x.max(1).next_power_of_two();
    if p >= 4 && x <= p / 4 * 3 {
        p / 4 * 3
    } else {
        p
    }
}

impl Shape {
    fn bucket(&self) -> Shape {
        Shape {
            m: bucket(self.m),
            n: bucket(self.n),
            k: bucket(self.k),
            lda: 0,
            ldb: 0,
            ..*self
        }
    }
}

/// One [`Dev::gemm`] call, described once for both paths: its shape (the
/// `lt` path's plan key), its row-major pointers and beta.
struct Call {
    s: Shape,
    a: u64,
    b: u64,
    c: u64,
    beta: f32,
}

/// An operand as the column-major libraries take it: pointer, leading
/// dimension, transposed.
#[derive(Clone, Copy)]
struct Operand {
    ptr: u64,
    ld: usize,
    t: bool,
}

/// The column-major problem cuBLAS and cuBLASLt are both given for a
/// row-major C[m,n] = beta C + op(A) op(B): C^T (n x m) = op(B)^T op(A)^T,
/// so its first operand is B's memory and its second A's.
struct ColMajor {
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: u64,
    ldc: usize,
    bf16: bool,
}

impl Call {
    /// Row-major C[m,n] = beta C + op(A) op(B), each operand (pointer,
    /// columns as stored, transposed), as [`Dev::gemm`] takes them.
    #[allow(clippy::too_many_arguments)]
    fn new(
        m: usize,
        n: usize,
        k: usize,
        a: (u64, usize, bool),
        b: (u64, usize, bool),
        c: u64,
        beta: f32,
        dt: Dt,
    ) -> Call {
        Call {
            s: Shape {
                m,
                n,
                k,
                lda: a.1,
                ldb: b.1,
                ta: a.2,
                tb: b.2,
                bf16: dt == Dt::Bf16,
                align: alignment(&[a.0, b.0, c]),
            },
            a: a.0,
            b: b.0,
            c,
            beta,
        }
    }

    /// The one place the row-major to column-major mapping is written.
    fn col_major(&self) -> ColMajor {
        let s = &self.s;
        ColMajor {
            m: s.n,
            n: s.m,
            k: s.k,
            a: Operand {
                ptr: self.b,
                ld: s.ldb,
                t: s.tb,
            },
            b: Operand {
                ptr: self.a,
                ld: s.lda,
                t: s.ta,
            },
            c: self.c,
            ldc: s.n,
            bf16: s.bf16,
        }
    }
}

impl ColMajor {
    /// Stored (rows, columns) of the first and second operand: op(A) is
    /// m x k, op(B) k x n, each stored transposed when `t`.
    fn stored(&self) -> [(usize, usize); 2] {
        let (a, b) = ((self.m, self.k), (self.k, self.n));
        let flip = |(r, c): (usize, usize), t: bool| if t { (c, r) } else { (r, c) };
        [flip(a, self.a.t), flip(b, self.b.t)]
    }
}

/// Descriptors of one exact shape and the algorithm it runs.
struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    la: lt_sys::cublasLtMatrixLayout_t,
    lb: lt_sys::cublasLtMatrixLayout_t,
    lc: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
    /// Chosen by timing (this shape's or its bucket's), not by the
    /// heuristic alone.
    tuned: bool,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: descriptors created once by `Plan::new`, destroyed once.
        unsafe {
            lt_sys::cublasLtMatrixLayoutDestroy(self.la);
            lt_sys::cublasLtMatrixLayoutDestroy(self.lb);
            lt_sys::cublasLtMatrixLayoutDestroy(self.lc);
            lt_sys::cublasLtMatmulDescDestroy(self.desc);
        }
    }
}

fn lt_err(what: &'static str) -> impl Fn(lt_sys::cublasStatus_t) -> GpuError {
    move |s| GpuError::Cuda(format!("{what}: {s:?}"))
}

fn ok(s: lt_sys::cublasStatus_t, what: &'static str) -> Result<(), GpuError> {
    if s == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(lt_err(what)(s))
    }
}

impl Plan {
    /// Descriptors of `cm`'s problem (its pointers play no part: a plan
    /// serves every call of its shape).
    fn new(cm: &ColMajor) -> Result<Plan, GpuError> {
        let ty = if cm.bf16 {
            lt_sys::cudaDataType::CUDA_R_16BF
        } else {
            lt_sys::cudaDataType::CUDA_R_32F
        };
        let mut p = Plan {
            desc: std::ptr::null_mut(),
            la: std::ptr::null_mut(),
            lb: std::ptr::null_mut(),
            lc: std::ptr::null_mut(),
            algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            tuned: false,
        };
        // SAFETY: out-pointers to the fields; a partly built plan is
        // destroyed by Drop (the library accepts null descriptors there).
        unsafe {
            ok(
                lt_sys::cublasLtMatmulDescCreate(
                    &mut p.desc,
                    lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    lt_sys::cudaDataType::CUDA_R_32F,
                ),
                "cublasLtMatmulDescCreate",
            )?;
            // cublasOperation_t: 0 = N, 1 = T
            for (attr, t) in [
                (
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    cm.a.t,
                ),
                (
                    lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    cm.b.t,
                ),
            ] {
                let op: i32 = t as i32;
                ok(
                    lt_sys::cublasLtMatmulDescSetAttribute(
                        p.desc,
                        attr,
                        &op as *const i32 as *const c_void,
                        4,
                    ),
                    "cublasLtMatmulDescSetAttribute",
                )?;
            }
            let [(ar, ac), (br, bc)] = cm.stored();
            for (l, r, c, ld) in [
                (&mut p.la, ar, ac, cm.a.ld),
                (&mut p.lb, br, bc, cm.b.ld),
                (&mut p.lc, cm.m, cm.n, cm.ldc),
            ] {
                ok(
                    lt_sys::cublasLtMatrixLayoutCreate(l, ty, r as u64, c as u64, ld as i64),
                    "cublasLtMatrixLayoutCreate",
                )?;
            }
        }
        Ok(p)
    }

    /// Whether `algo` runs this exact shape within the workspace.
    fn check(&self, lt: &Lt, algo: &lt_sys::cublasLtMatmulAlgo_t) -> bool {
        let mut r = std::mem::MaybeUninit::<lt_sys::cublasLtMatmulHeuristicResult_t>::zeroed();
        // SAFETY: live handle and descriptors; r is written on success.
        let s = unsafe {
            lt_sys::cublasLtMatmulAlgoCheck(
                lt.handle,
                self.desc,
                self.la,
                self.lb,
                self.lc,
                self.lc,
                algo,
                r.as_mut_ptr(),
            )
        };
        // SAFETY: zero-initialised, written by the call on success.
        let r = unsafe { r.assume_init() };
        s == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            && r.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            && r.workspaceSize <= LT_WORKSPACE_BYTES
    }

    /// Up to [`LT_CANDIDATES`] algorithms the heuristic proposes, best
    /// first, for pointers aligned to `align` bytes.
    fn candidates(
        &self,
        lt: &Lt,
        align: u32,
    ) -> Result<Vec<lt_sys::cublasLtMatmulAlgo_t>, GpuError> {
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        let mut pref: lt_sys::cublasLtMatmulPreference_t = std::ptr::null_mut();
        let mut found = 0i32;
        let mut res: Vec<lt_sys::cublasLtMatmulHeuristicResult_t> = (0..LT_CANDIDATES)
            .map(|_| lt_sys::cublasLtMatmulHeuristicResult_t {
                algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
                workspaceSize: 0,
                state: lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS,
                wavesCount: 0.0,
                reserved: [0; 4],
            })
            .collect();
        // SAFETY: live handle and descriptors; the preference is destroyed
        // below; res holds LT_CANDIDATES results.
        unsafe {
            ok(
                lt_sys::cublasLtMatmulPreferenceCreate(&mut pref),
                "cublasLtMatmulPreferenceCreate",
            )?;
            let ws = LT_WORKSPACE_BYTES as u64;
            let al = align;
            let mut attrs: Vec<(P, *const c_void, usize)> = vec![(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as _,
                8,
            )];
            for a in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                attrs.push((a, &al as *const u32 as _, 4));
            }
            let mut st = lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS;
            for (a, v, n) in attrs {
                st = lt_sys::cublasLtMatmulPreferenceSetAttribute(pref, a, v, n);
                if st != lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    break;
                }
            }
            if st == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                st = lt_sys::cublasLtMatmulAlgoGetHeuristic(
                    lt.handle,
                    self.desc,
                    self.la,
                    self.lb,
                    self.lc,
                    self.lc,
                    pref,
                    LT_CANDIDATES as i32,
                    res.as_mut_ptr(),
                    &mut found,
                );
            }
            lt_sys::cublasLtMatmulPreferenceDestroy(pref);
            ok(st, "cublasLtMatmulAlgoGetHeuristic")?;
        }
        Ok(res
            .into_iter()
            .take(found.max(0) as usize)
            .filter(|r| {
                r.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    && r.workspaceSize <= LT_WORKSPACE_BYTES
            })
            .map(|r| r.algo)
            .collect())
    }
}

/// One tuning of the `lt` path: the row-major shape and, per candidate
/// in the heuristic's order, its configuration and ms per GEMM (NaN:
/// rejected at launch); `winner` indexes the kept one.
#[derive(Debug, Clone)]
pub struct TuneLog {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub cands: Vec<(String, f64)>,
    pub winner: Option<usize>,
}

impl TuneLog {
    /// One line: the shape, the winner against the heuristic's first.
    pub fn summary(&self) -> String {
        let first = self.cands.first().map_or(f64::NAN, |c| c.1);
        let best = self.winner.map_or(f64::NAN, |w| self.cands[w].1);
        format!(
            "lt tuned M={} N={} K={}{}{}: {} candidates, winner #{} {:.4} ms vs heuristic's first {:.4} ms ({:+.1}%)",
            self.m,
            self.n,
            self.k,
            if self.ta { " A^T" } else { "" },
            if self.tb { " B^T" } else { "" },
            self.cands.len(),
            self.winner.map_or("-".into(), |w| w.to_string()),
            best,
            first,
            (first / best - 1.0) * 100.0
        )
    }
}

/// An algorithm's configuration as cuBLASLt numbers it (algorithm id,
/// tile, stages, split-K, reduction, swizzle, cluster shape ids; `?` where
/// it does not say).
fn describe(algo: &lt_sys::cublasLtMatmulAlgo_t) -> String {
    use lt_sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr: A| -> String {
        let mut need = 0usize;
        let mut v = 0u64;
        // SAFETY: the first call only reports the attribute's size; the
        // second writes at most 8 bytes into v.
        let ok = unsafe {
            lt_sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                std::ptr::null_mut(),
                0,
                &mut need,
            );
            need > 0
                && need <= 8
                && lt_sys::cublasLtMatmulAlgoConfigGetAttribute(
                    algo,
                    attr,
                    &mut v as *mut u64 as *mut c_void,
                    need,
                    &mut need,
                ) == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        };
        if ok {
            v.to_string()
        } else {
            "?".into()
        }
    };
    format!(
        "id={} tile={} stages={} splitk={} red={} swz={} cluster={}",
        get(A::CUBLASLT_ALGO_CONFIG_ID),
        get(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
        get(A::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        get(A::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
        get(A::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
    )
}

/// The `lt` path's state on one GPU: handle, workspace, plans per exact
/// shape and tuned winners per bucket (in-process only).
pub struct Lt {
    handle: lt_sys::cublasLtHandle_t,
    ws: u64,
    /// A second workspace for GEMMs on a stream other than `main`, made at
    /// the first such GEMM (concurrent matmuls must not share one).
    ws_other: Cell<u64>,
    plans: RefCell<HashMap<Shape, Plan>>,
    winners: RefCell<HashMap<Shape, lt_sys::cublasLtMatmulAlgo_t>>,
    /// Buckets tuned so far (each a device sync and a few dozen GEMMs).
    pub tuned: Cell<usize>,
    log: RefCell<Vec<TuneLog>>,
}

impl Lt {
    pub(super) fn new() -> Result<Lt, GpuError> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: out-pointer.
        ok(
            unsafe { lt_sys::cublasLtCreate(&mut handle) },
            "cublasLtCreate",
        )?;
        // SAFETY: plain device allocation (freed in Drop).
        let ws = match unsafe { drv::malloc_sync(LT_WORKSPACE_BYTES) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: created above, destroyed once.
                unsafe { lt_sys::cublasLtDestroy(handle) };
                return Err(GpuError::Oom(format!("cuBLASLt workspace: {e:?}")));
            }
        };
        Ok(Lt {
            handle,
            ws,
            ws_other: Cell::new(0),
            plans: RefCell::new(HashMap::new()),
            winners: RefCell::new(HashMap::new()),
            tuned: Cell::new(0),
            log: RefCell::new(Vec::new()),
        })
    }

    /// # Safety
    /// `cm`'s pointers must hold the plan's matrices, on `stream`'s device.
    unsafe fn run(
        &self,
        p: &Plan,
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        cm: &ColMajor,
        beta: f32,
        stream: cudarc::driver::sys::CUstream,
        ws: u64,
    ) -> Result<(), GpuError> {
        let alpha = 1.0f32;
        ok(
            lt_sys::cublasLtMatmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                cm.a.ptr as *const c_void,
                p.la,
                cm.b.ptr as *const c_void,
                p.lb,
                &beta as *const f32 as *const c_void,
                cm.c as *const c_void,
                p.lc,
                cm.c as *mut c_void,
                p.lc,
                algo,
                ws as *mut c_void,
                LT_WORKSPACE_BYTES,
                stream as lt_sys::cudaStream_t,
            ),
            "cublasLtMatmul",
        )
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: the owner synchronised its streams; freed and destroyed
        // once, before the context (field order in Dev).
        unsafe {
            let _ = drv::free_sync(self.ws);
            if self.ws_other.get() != 0 {
                let _ = drv::free_sync(self.ws_other.get());
            }
            lt_sys::cublasLtDestroy(self.handle);
        }
    }
}

/// Largest power of two (at most 256) dividing every address.
fn alignment(ptrs: &[u64]) -> u32 {
    let or = ptrs.iter().fold(256u64, |acc, &p| acc | p);
    1u32 << or.trailing_zeros().min(8)
}

fn blas_err(what: &str) -> impl Fn(blas::CublasError) -> GpuError + '_ {
    move |e| GpuError::Cuda(format!("{what}: {e:?}"))
}

impl Dev {
    /// Use `which` for the bf16 GEMMs from now on (creating the cuBLASLt
    /// handle and its [`LT_WORKSPACE_BYTES`] workspace at the first `lt`).
    pub fn set_gemm(&mut self, which: GemmImpl) -> Result<(), GpuError> {
        if which.uses_lt() && self.lt.is_none() {
            self.lt = Some(Lt::new()?);
        }
        if which == GemmImpl::Fused && self.fused.is_none() {
            self.fused = Some(super::fused::Fused::load(self)?);
        }
        self.gemm_impl = which;
        Ok(())
    }

    /// [`Dev::set_gemm`], builder style.
    pub fn with_gemm(mut self, which: GemmImpl) -> Result<Dev, GpuError> {
        self.set_gemm(which)?;
        Ok(self)
    }

    pub fn gemm_impl(&self) -> GemmImpl {
        self.gemm_impl
    }

    /// Buckets the `lt` path has tuned on this GPU so far.
    pub fn gemm_tuned(&self) -> usize {
        self.lt.as_ref().map_or(0, |l| l.tuned.get())
    }

    /// Every tuning of the `lt` path on this GPU so far.
    pub fn gemm_tune_log(&self) -> Vec<TuneLog> {
        self.lt
            .as_ref()
            .map_or(Vec::new(), |l| l.log.borrow().clone())
    }

    /// Row-major bf16 GEMM C[m,n] = A[m,k] B[k,n] with fp32 accumulation.
    ///
    /// # Safety
    /// The pointers must hold the stated matrices.
    pub unsafe fn gemm_bf16(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<(), GpuError> {
        self.gemm(m, n, k, (a, k, false), (b, n, false), c, 0.0, Dt::Bf16)
    }

    /// [`Dev::gemm_bf16`] on another stream than `main`, through `lt` only
    /// (its own workspace; cuBLAS's handle is bound to `main`).
    ///
    /// # Safety
    /// As for [`Dev::gemm_bf16`]; `stream` must be one of this device's.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_bf16_on(
        &self,
        stream: cudarc::driver::sys::CUstream,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<(), GpuError> {
        let Some(lt) = self.lt.as_ref().filter(|_| self.gemm_impl.uses_lt()) else {
            return Err(GpuError::Input(
                "GEMMs on a second stream need the lt path".into(),
            ));
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        let call = Call::new(m, n, k, (a, k, false), (b, n, false), c, 0.0, Dt::Bf16);
        self.gemm_lt(lt, &call, stream)
    }

    /// Row-major GEMM with transposes, C[m,n] = beta C + op(A) op(B), fp32
    /// accumulation, every matrix of element type `dt`. Each operand is
    /// given as (pointer, columns as stored, transposed). bf16 GEMMs take
    /// the path [`Dev::set_gemm`] chose; fp32 ones always cuBLAS.
    ///
    /// # Safety
    /// The pointers must hold the stated matrices.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: (u64, usize, bool),
        b: (u64, usize, bool),
        c: u64,
        beta: f32,
        dt: Dt,
    ) -> Result<(), GpuError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let call = Call::new(m, n, k, a, b, c, beta, dt);
        match (&self.lt, self.gemm_impl, dt) {
            (Some(lt), GemmImpl::Lt | GemmImpl::Fused, Dt::Bf16) => {
                self.gemm_lt(lt, &call, self.main)
            }
            _ => self.gemm_cublas(&call),
        }
    }

    /// cublasGemmEx, default algorithm, on the call's column-major view.
    unsafe fn gemm_cublas(&self, call: &Call) -> Result<(), GpuError> {
        let alpha = 1.0f32;
        let cm = call.col_major();
        let ty = if cm.bf16 {
            blas_sys::cudaDataType_t::CUDA_R_16BF
        } else {
            blas_sys::cudaDataType_t::CUDA_R_32F
        };
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        blas::gemm_ex(
            self.blas,
            op(cm.a.t),
            op(cm.b.t),
            cm.m as i32,
            cm.n as i32,
            cm.k as i32,
            &alpha as *const f32 as *const c_void,
            cm.a.ptr as *const c_void,
            ty,
            cm.a.ld as i32,
            cm.b.ptr as *const c_void,
            ty,
            cm.b.ld as i32,
            &call.beta as *const f32 as *const c_void,
            cm.c as *mut c_void,
            ty,
            cm.ldc as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(blas_err("cublasGemmEx"))
    }

    /// The `lt` path: the shape's plan (made, and its bucket tuned, at its
    /// first call), then one cublasLtMatmul on `stream` (the main stream's
    /// workspace, or the other one for any other stream).
    unsafe fn gemm_lt(
        &self,
        lt: &Lt,
        call: &Call,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), GpuError> {
        let ws = if stream == self.main {
            lt.ws
        } else {
            if lt.ws_other.get() == 0 {
                let p = drv::malloc_sync(LT_WORKSPACE_BYTES)
                    .map_err(|e| GpuError::Oom(format!("cuBLASLt workspace: {e:?}")))?;
                lt.ws_other.set(p);
            }
            lt.ws_other.get()
        };
        let (s, beta) = (&call.s, call.beta);
        let cm = call.col_major();
        let ready = lt
            .plans
            .borrow()
            .get(s)
            .map(|p| (p.algo, p.tuned || beta != 0.0));
        if let Some((algo, true)) = ready {
            let plans = lt.plans.borrow();
            return lt.run(&plans[s], &algo, &cm, beta, stream, ws);
        }
        if ready.is_none() {
            let mut p = Plan::new(&cm)?;
            let won = lt.winners.borrow().get(&s.bucket()).copied();
            match won.filter(|w| p.check(lt, w)) {
                Some(w) => (p.algo, p.tuned) = (w, true),
                None => {
                    let first = p.candidates(lt, s.align)?.into_iter().next();
                    p.algo = first.ok_or_else(|| {
                        GpuError::Cuda(format!("cuBLASLt has no algorithm for {s:?}"))
                    })?;
                }
            }
            lt.plans.borrow_mut().insert(*s, p);
        }
        // bf16 extents: stored columns times leading dimension
        let span = |p: u64, elems: usize| (p, p + (elems * 2) as u64);
        let out = span(cm.c, cm.n * cm.ldc);
        let [(_, ac), (_, bc)] = cm.stored();
        let overlaps = [span(cm.a.ptr, ac * cm.a.ld), span(cm.b.ptr, bc * cm.b.ld)]
            .iter()
            .any(|&(lo, hi)| lo < out.1 && out.0 < hi);
        let tunable = beta == 0.0 && !overlaps && !lt.plans.borrow()[s].tuned;
        if tunable && self.capturing.get() {
            // tuning synchronises the device: the graph's capture is
            // abandoned and this GEMM runs (and tunes) eagerly instead
            return Err(GpuError::Cuda(format!(
                "{s:?} is not tuned yet: cannot capture it into a graph"
            )));
        }
        if tunable {
            let best = self.tune(lt, call)?;
            let mut plans = lt.plans.borrow_mut();
            let p = plans.get_mut(s).expect("inserted above");
            (p.algo, p.tuned) = (best, true);
            lt.winners.borrow_mut().insert(s.bucket(), best);
            lt.tuned.set(lt.tuned.get() + 1);
        }
        let plans = lt.plans.borrow();
        let p = &plans[s];
        lt.run(p, &p.algo, &cm, beta, stream, ws)
    }

    /// Time the heuristic's candidates for the call's shape on its own buffers
    /// (the output is overwritten, the inputs untouched) and return the
    /// fastest. Drains the device's streams first so that nothing else
    /// shares the GPU while it times: a warm-up's cost, never a timed
    /// run's (see the module comment).
    unsafe fn tune(&self, lt: &Lt, call: &Call) -> Result<lt_sys::cublasLtMatmulAlgo_t, GpuError> {
        let (s, cm) = (&call.s, &call.col_major());
        let plans = lt.plans.borrow();
        let p = &plans[s];
        let cands = p.candidates(lt, s.align)?;
        self.sync()?;
        let (e0, e1) = (Event::new()?, Event::new()?);
        let mut best: Option<(f64, lt_sys::cublasLtMatmulAlgo_t)> = None;
        let mut log = TuneLog {
            m: s.m,
            n: s.n,
            k: s.k,
            ta: s.ta,
            tb: s.tb,
            cands: Vec::new(),
            winner: None,
        };
        // a layer reads each expert's weights once, from memory: each timed
        // run follows a write over twice the L2 cache, so a candidate is
        // not judged on operands the previous run left in the cache
        let l2 = self
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_or(64 << 20, |v| v.max(1 << 20) as usize);
        let flush = (2 * l2, drv::malloc_sync(2 * l2).ok());
        for algo in cands {
            log.cands.push((describe(&algo), f64::NAN));
            // an algorithm the library rejects at launch is skipped
            if lt.run(p, &algo, cm, 0.0, self.main, lt.ws).is_err() {
                continue;
            }
            let mut all = true;
            let mut v = Vec::with_capacity(TUNE_REPS);
            for rep in 0..TUNE_REPS {
                if let (n, Some(f)) = flush {
                    drv::memset_d8_async(f, rep as u8, n, self.main)
                        .map_err(|e| GpuError::Cuda(format!("cuMemset (L2 flush): {e:?}")))?;
                }
                e0.record(self.main)?;
                all &= lt.run(p, &algo, cm, 0.0, self.main, lt.ws).is_ok();
                e1.record(self.main)?;
                e1.sync()?;
                v.push(e1.ms_since(&e0)?);
            }
            v.sort_by(f64::total_cmp);
            let ms = v[v.len() / 2];
            if all {
                log.cands.last_mut().expect("pushed above").1 = ms;
                if best.is_none_or(|(b, _)| ms < b) {
                    best = Some((ms, algo));
                    log.winner = Some(log.cands.len() - 1);
                }
            }
        }
        if let (_, Some(f)) = flush {
            self.sync()?;
            drv::free_sync(f).map_err(|e| GpuError::Cuda(format!("cuMemFree: {e:?}")))?;
        }
        lt.log.borrow_mut().push(log);
        Ok(best.map_or(p.algo, |(_, algo)| algo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_and_midpoints_at_least_the_size() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 6, 7, 9, 2880, 3072, 3073, 4096, 4097, 16384]
            .iter()
            .map(|&x| bucket(x))
            .collect();
        assert_eq!(
            got,
            [1, 2, 3, 4, 6, 6, 8, 12, 3072, 3072, 4096, 4096, 6144, 16384]
        );
        for x in 1..5000 {
            let b = bucket(x);
            assert!(b >= x && b < 2 * x.max(2), "{x} -> {b}");
        }
    }

    #[test]
    fn alignment_is_the_common_power_of_two_capped_at_256() {
        assert_eq!(alignment(&[0, 512, 1024]), 256);
        assert_eq!(alignment(&[4096, 4096 + 128]), 128);
        assert_eq!(alignment(&[4096 + 16, 8192]), 16);
        assert_eq!(alignment(&[2]), 2);
    }

    #[test]
    fn column_major_view_swaps_the_operands_and_keeps_dense_leading_dims() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (m, n, k) = (3, 5, 7);
            // dense row-major storage: A is m x k (k x m when ta), B k x n
            let lda = if ta { m } else { k };
            let ldb = if tb { k } else { n };
            let s = Shape {
                m,
                n,
                k,
                lda,
                ldb,
                ta,
                tb,
                bf16: true,
                align: 256,
            };
            let call = Call {
                s,
                a: 0x1000,
                b: 0x2000,
                c: 0x3000,
                beta: 0.0,
            };
            let cm = call.col_major();
            assert_eq!((cm.m, cm.n, cm.k, cm.ldc), (n, m, k, n));
            assert_eq!((cm.a.ptr, cm.a.ld, cm.a.t), (0x2000, ldb, tb));
            assert_eq!((cm.b.ptr, cm.b.ld, cm.b.t), (0x1000, lda, ta));
            // a dense operand's leading dimension is its stored row count,
            // and its extent that of the row-major matrix
            let [(ar, ac), (br, bc)] = cm.stored();
            assert_eq!((ar, br), (cm.a.ld, cm.b.ld), "ta={ta} tb={tb}");
            assert_eq!((ar * ac, br * bc), (k * n, m * k));
        }
    }

    #[test]
    fn paths_parse_by_name_and_default_to_lt() {
        assert_eq!("lt".parse::<GemmImpl>(), Ok(GemmImpl::Lt));
        assert_eq!("cublas".parse::<GemmImpl>(), Ok(GemmImpl::Cublas));
        assert_eq!("fused".parse::<GemmImpl>(), Ok(GemmImpl::Fused));
        assert!(GemmImpl::Fused.uses_lt() && GemmImpl::Lt.uses_lt());
        assert!(!GemmImpl::Cublas.uses_lt());
        assert!("cutlass"
            .parse::<GemmImpl>()
            .unwrap_err()
            .contains("lt, fused or cublas"));
        assert_eq!(GemmImpl::default(), GemmImpl::Lt);
        assert_eq!(LT_WORKSPACE_BYTES, 32 << 20);
    }
}
