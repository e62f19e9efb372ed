//! `--gemm fused`: the gate_up GEMM of expert units with the activation in
//! its epilogue, and their down GEMMs grouped (`kernels/hopper_gate_up.cu`,
//! own sm_90a kernels); every other GEMM through cuBLASLt as under `lt`.
//!
//! Why: cuBLASLt has no clamped-SwiGLU epilogue, so under `lt` the
//! activation is a kernel between the two GEMMs, and its traffic and
//! kernel boundaries cost 1.1-1.9 ms of a 10-11 ms gpt-oss layer
//! (reports/replay-floor). Here the gate_up output stays in registers.
//!
//! One launch is a grouped GEMM over up to [`FUSED_UNITS`] units: each
//! unit's rows and weights get their own TMA descriptors, encoded on the
//! host per launch and passed by value, and the kernel's persistent CTAs
//! walk all the units' tiles, so a launch has one tail, not one per unit.
//! The down GEMMs of a launch's units follow as one launch of the same
//! schedule, except units of [`DOWN_GROUPED_ROWS`] rows or more: those go
//! through cuBLASLt, one GEMM each (`LLEP_TRACE_FUSED_DOWN` changes the
//! rule, for measuring it).
//!
//! Forward only: a training step keeps the gate_up output for its
//! backward, so its units run unfused.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{result as drv, sys as drv_sys, CudaModule};

use super::runtime::{params, Dev};

use super::GpuError;

/// The kernel's source, compiled for sm_90a (wgmma and TMA are
/// Hopper-only), after the activation it shares with `act_rows`.
pub const FUSED_SRC: &str = concat!(
    include_str!("../../kernels/bf16_act.cuh"),
    include_str!("../../kernels/hopper_gate_up.cu")
);

/// Units one launch serves (`FUSED_UNITS` in the kernel). Sixteen make the
/// parameter block 4.5 KB, over the 4 KB every driver takes: kernel
/// parameters up to 32,764 bytes need a CUDA 12.1 driver (R530) or later.
/// With the scratch of `units::FUSED_BATCH_BYTES` a pipelined chunk of
/// gpt-oss's balanced layer (about 11 units) is one launch: 0.1-0.4 ms
/// faster a layer than launches of at most eight (session 16, call 4).
pub const FUSED_UNITS: usize = 16;
/// Tile rows, activation columns per tile, K per stage, stages (the
/// kernel's FG_BM, FG_TN, FG_BK, FG_STAGES).
const BM: usize = 128;
const TN: usize = 128;
const BK: usize = 64;
const STAGES: usize = 3;
/// Dynamic shared memory: the stages, the staged tile (gate and up, bf16),
/// 1,024 bytes to align them for the 128-byte swizzle, the stages' two
/// mbarriers each and the staging buffer's two.
const SMEM_BYTES: usize =
    STAGES * (BM * BK * 2 + 4 * 64 * BK * 2) + 2 * BM * TN * 2 + 1024 + STAGES * 16 + 16;
/// The down kernel's output columns per tile and stages (FD_TN,
/// FD_STAGES), and its shared memory as above: a stage holds 128 rows and
/// three 64-column blocks of the weight, the staged tile 128 x 192.
const DOWN_TN: usize = 192;
const DOWN_STAGES: usize = 4;
const DOWN_SMEM_BYTES: usize =
    DOWN_STAGES * (BM * BK * 2 + 3 * 64 * BK * 2) + BM * DOWN_TN * 2 + 1024 + DOWN_STAGES * 16 + 16;
const THREADS: u32 = 384;
// one CTA fits an H100/H200 SM's 227 KiB of shared memory
const _: () = assert!(SMEM_BYTES <= 227 * 1024 && DOWN_SMEM_BYTES <= 227 * 1024);

/// A CUtensorMap, opaque to the host.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TmaMap([u64; 16]);

/// The kernel's parameter block (`FusedUnits` in the kernel), by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct FusedUnits {
    a: [TmaMap; FUSED_UNITS],
    b: [TmaMap; FUSED_UNITS],
    out: [u64; FUSED_UNITS],
    bias: [u64; FUSED_UNITS],
    rows: [i32; FUSED_UNITS],
    tile_end: [i32; FUSED_UNITS],
    n: i32,
    d: i32,
    inter: i32,
    kind: i32,
}

/// The loaded kernels of one GPU.
pub struct Fused {
    func: drv_sys::CUfunction,
    /// The grouped down GEMM.
    down: drv_sys::CUfunction,
    /// Which units' down GEMMs it runs.
    pub down_path: DownPath,
    /// CTAs of a launch at most: one per SM (the stages fill an SM's
    /// shared memory).
    ctas: u32,
    /// The variant's name, as `LLEP_TRACE_FUSED_KERNEL` spells it.
    pub variant: &'static str,
    _module: Arc<CudaModule>,
}

/// The kernel's variants: (name, entry point).
const VARIANTS: [(&str, &str); 2] = [
    ("staged", "gate_up_act_fused"),
    ("noepi", "gate_up_act_fused_noepi"),
];

impl std::fmt::Display for Fused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} CTAs at most), down GEMMs {}",
            self.variant,
            self.ctas,
            self.down_path.name()
        )
    }
}

/// The variant replay runs unless `LLEP_TRACE_FUSED_KERNEL` says.
pub const DEFAULT_VARIANT: &str = "staged";

/// One unit of a launch: `rows` rows at `x` (D values each) through the
/// gate_up weight `wgu` (D x 2I) and bias `bgu` (2I), activation to `act`
/// (I values a row).
#[derive(Debug, Clone, Copy)]
pub struct FusedUnit {
    pub rows: usize,
    pub x: u64,
    pub wgu: u64,
    pub bgu: u64,
    pub act: u64,
}

/// Units of this many rows or more run their down GEMM through cuBLASLt
/// under the default [`DownPath::Split`]. Timed per M on an H200 (session
/// 16, `reports/replay-floor/session16`), the own kernel levels off near
/// 770 TFLOP/s for gpt-oss's down GEMM from 1,536 rows on, where cuBLASLt's
/// (256-row tiles, clusters of two) goes on to 790-890 from 4,096 rows;
/// below that, the shared tail and single launch win (713 against 674
/// TFLOP/s at 1,024 rows, 782 against 754 at 3,072).
pub const DOWN_GROUPED_ROWS: usize = 4096;

/// Which units' down GEMMs the grouped kernel runs (`LLEP_TRACE_FUSED_DOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPath {
    /// Units under [`DOWN_GROUPED_ROWS`] rows; larger ones through cuBLASLt.
    Split,
    /// Every unit.
    Grouped,
    /// None: one cuBLASLt GEMM per unit.
    Lt,
}

impl DownPath {
    pub fn name(self) -> &'static str {
        match self {
            DownPath::Split => "split",
            DownPath::Grouped => "grouped",
            DownPath::Lt => "lt",
        }
    }

    fn parse(s: &str) -> Option<DownPath> {
        [DownPath::Split, DownPath::Grouped, DownPath::Lt]
            .into_iter()
            .find(|p| p.name() == s.trim())
    }

    /// Whether a unit of `rows` rows runs through the grouped kernel.
    pub fn groups(self, rows: usize) -> bool {
        match self {
            DownPath::Split => rows < DOWN_GROUPED_ROWS,
            DownPath::Grouped => true,
            DownPath::Lt => false,
        }
    }
}

/// One unit of a down launch: `rows` activation rows at `act` (I values
/// each) through the down weight `wd` (I x D) to `out` (D values a row).
#[derive(Debug, Clone, Copy)]
pub struct DownUnit {
    pub rows: usize,
    pub act: u64,
    pub wd: u64,
    pub out: u64,
}

/// The PTX, compiled once per process (every GPU is the same card).
fn ptx() -> Result<cudarc::nvrtc::Ptx, GpuError> {
    static PTX: OnceLock<Result<cudarc::nvrtc::Ptx, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some("sm_90a"),
            use_fast_math: Some(false),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(FUSED_SRC, opts).map_err(|e| format!("{e:?}"))
    })
    .clone()
    .map_err(|e| GpuError::Compile(format!("kernels/hopper_gate_up.cu: {e}")))
}

/// Why the fused kernel cannot serve this shape, if it cannot: TMA needs
/// 16-byte row strides (D a multiple of 8), the epilogue moves 8 columns
/// at a time (I a multiple of 8).
pub fn shape_refusal(hidden: usize, inter: usize) -> Option<String> {
    if hidden % 8 != 0 || inter % 8 != 0 || hidden == 0 || inter == 0 {
        return Some(format!(
            "the fused gate_up kernel needs D and I multiples of 8 (D = {hidden}, I = {inter})"
        ));
    }
    None
}

impl Fused {
    /// Compile (once) and load the kernel into `dev`'s context.
    pub(super) fn load(dev: &Dev) -> Result<Fused, GpuError> {
        let cc = dev
            .ctx
            .compute_capability()
            .map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
        if cc != (9, 0) {
            return Err(GpuError::Input(format!(
                "--gemm fused runs an sm_90a (Hopper) kernel; {} is sm_{}{}: use --gemm lt",
                dev.name, cc.0, cc.1
            )));
        }
        let name = crate::env::fused_kernel().unwrap_or_else(|| DEFAULT_VARIANT.into());
        let Some(&(variant, entry)) = VARIANTS.iter().find(|v| v.0 == name.trim()) else {
            return Err(GpuError::Input(format!(
                "{}={name}: not a variant of the fused kernel (staged, noepi)",
                crate::env::FUSED_KERNEL
            )));
        };
        let module = dev
            .ctx
            .load_module(ptx()?)
            .map_err(|e| GpuError::Cuda(format!("loading the fused gate_up kernel: {e:?}")))?;
        let load = |entry: &str, smem: usize| -> Result<drv_sys::CUfunction, GpuError> {
            let func = module
                .load_function(entry)
                .map_err(|e| GpuError::Cuda(format!("kernel {entry}: {e:?}")))?
                .cu_function();
            // SAFETY: a loaded kernel of this context.
            unsafe {
                drv::function::set_function_attribute(
                    func,
                    drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
            }
            .map_err(|e| GpuError::Cuda(format!("cuFuncSetAttribute ({entry} smem): {e:?}")))?;
            Ok(func)
        };
        let down_path = match crate::env::fused_down() {
            None => DownPath::Split,
            Some(v) => DownPath::parse(&v).ok_or_else(|| {
                GpuError::Input(format!(
                    "{}={v}: not a rule for the fused down GEMMs (split, grouped, lt)",
                    crate::env::FUSED_DOWN
                ))
            })?,
        };
        let func = load(entry, SMEM_BYTES)?;
        let down = load("down_grouped", DOWN_SMEM_BYTES)?;
        let sms = dev
            .ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1)
            .max(1) as u32;
        Ok(Fused {
            func,
            down,
            down_path,
            ctas: sms,
            variant,
            _module: module,
        })
    }
}

/// Tiles of a unit of `rows` rows: row tiles times activation-column tiles.
pub fn tiles(rows: usize, inter: usize) -> usize {
    rows.div_ceil(BM) * inter.div_ceil(TN)
}

/// Tiles of a down GEMM of `rows` rows: row tiles times output-column tiles.
pub fn down_tiles(rows: usize, hidden: usize) -> usize {
    rows.div_ceil(BM) * hidden.div_ceil(DOWN_TN)
}

fn encode(
    ptr: u64,
    inner: u64,
    outer: u64,
    box_inner: u32,
    box_outer: u32,
) -> Result<TmaMap, GpuError> {
    let mut map = std::mem::MaybeUninit::<drv_sys::CUtensorMap>::zeroed();
    let dims = [inner, outer];
    let strides = [inner * 2];
    let boxes = [box_inner, box_outer];
    let elem = [1u32, 1];
    // SAFETY: plain host call filling `map`; the arrays outlive it.
    unsafe {
        drv_sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            drv_sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            drv_sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            drv_sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            drv_sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            drv_sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| GpuError::Cuda(format!("cuTensorMapEncodeTiled: {e:?}")))?;
        // SAFETY: both are 128 opaque bytes, the driver filled them
        Ok(std::mem::transmute::<drv_sys::CUtensorMap, TmaMap>(
            map.assume_init(),
        ))
    }
}

/// One unit of a grouped launch as the kernel takes it: TMA maps of its
/// rows (A) and weight (B), where its output goes, its bias (0: none),
/// rows, tiles.
struct Grouped {
    a: TmaMap,
    b: TmaMap,
    out: u64,
    bias: u64,
    rows: usize,
    tiles: usize,
}

/// Launch `func` (`smem` bytes of shared memory) over `units` on `stream`.
///
/// # Safety
/// Each unit's maps and pointers must address buffers of its shape.
#[allow(clippy::too_many_arguments)]
unsafe fn launch_grouped(
    dev: &Dev,
    f: &Fused,
    func: drv_sys::CUfunction,
    smem: usize,
    units: &[Grouped],
    hidden: usize,
    inter: usize,
    kind: i32,
    stream: drv_sys::CUstream,
) -> Result<(), GpuError> {
    let empty = TmaMap([0; 16]);
    let mut p = FusedUnits {
        a: [empty; FUSED_UNITS],
        b: [empty; FUSED_UNITS],
        out: [0; FUSED_UNITS],
        bias: [0; FUSED_UNITS],
        rows: [0; FUSED_UNITS],
        tile_end: [0; FUSED_UNITS],
        n: units.len() as i32,
        d: hidden as i32,
        inter: inter as i32,
        kind,
    };
    let mut total = 0usize;
    for (k, u) in units.iter().enumerate() {
        p.a[k] = u.a;
        p.b[k] = u.b;
        p.out[k] = u.out;
        p.bias[k] = u.bias;
        p.rows[k] = u.rows as i32;
        total += u.tiles;
        p.tile_end[k] = total as i32;
    }
    let grid = (total as u32).min(f.ctas);
    dev.launch(func, (grid, 1, 1), THREADS, smem as u32, stream, params!(p))
}

/// Why a launch of `n` units of these shapes cannot run, if it cannot.
fn launch_refusal(n: usize, hidden: usize, inter: usize, ptrs: &[u64]) -> Option<String> {
    if n > FUSED_UNITS {
        return Some(format!(
            "a fused launch serves at most {FUSED_UNITS} units, not {n}"
        ));
    }
    if let Some(why) = shape_refusal(hidden, inter) {
        return Some(why);
    }
    if ptrs.iter().any(|p| p % 16 != 0) {
        return Some("the fused kernels need 16-byte aligned rows, weights and biases".into());
    }
    None
}

/// Launch the fused kernel over `units` (at most [`FUSED_UNITS`]) on
/// `stream`: D = `hidden`, I = `inter`, activation `kind` (0: gpt-oss's
/// clamped SwiGLU, 1: plain).
///
/// # Safety
/// Each unit's pointers must hold its rows, weight, bias and activation
/// rows, each 16-byte aligned.
pub(super) unsafe fn launch(
    dev: &Dev,
    f: &Fused,
    units: &[FusedUnit],
    hidden: usize,
    inter: usize,
    kind: i32,
    stream: drv_sys::CUstream,
) -> Result<(), GpuError> {
    let units: Vec<&FusedUnit> = units.iter().filter(|u| u.rows > 0).collect();
    if units.is_empty() {
        return Ok(());
    }
    let ptrs: Vec<u64> = units
        .iter()
        .flat_map(|u| [u.x, u.wgu, u.act, u.bgu])
        .collect();
    if let Some(why) = launch_refusal(units.len(), hidden, inter, &ptrs) {
        return Err(GpuError::Input(why));
    }
    let mut grouped = Vec::with_capacity(units.len());
    for u in units {
        grouped.push(Grouped {
            a: encode(u.x, hidden as u64, u.rows as u64, BK as u32, BM as u32)?,
            b: encode(u.wgu, 2 * inter as u64, hidden as u64, 64, BK as u32)?,
            out: u.act,
            bias: u.bgu,
            rows: u.rows,
            tiles: tiles(u.rows, inter),
        });
    }
    launch_grouped(
        dev, f, f.func, SMEM_BYTES, &grouped, hidden, inter, kind, stream,
    )
}

/// The down GEMMs of `units` (at most [`FUSED_UNITS`]) on `stream`: those
/// [`DownPath::groups`] picks through one launch of the grouped down
/// kernel, then the others through cuBLASLt, one GEMM each on the main
/// stream.
///
/// # Safety
/// Each unit's pointers must hold its activation rows, down weight and
/// output rows, each 16-byte aligned.
pub(super) unsafe fn launch_down(
    dev: &Dev,
    f: &Fused,
    units: &[DownUnit],
    hidden: usize,
    inter: usize,
    stream: drv_sys::CUstream,
) -> Result<(), GpuError> {
    let (grouped, alone): (Vec<&DownUnit>, Vec<&DownUnit>) = units
        .iter()
        .filter(|u| u.rows > 0)
        .partition(|u| f.down_path.groups(u.rows));
    if !grouped.is_empty() {
        let ptrs: Vec<u64> = grouped.iter().flat_map(|u| [u.act, u.wd, u.out]).collect();
        if let Some(why) = launch_refusal(grouped.len(), hidden, inter, &ptrs) {
            return Err(GpuError::Input(why));
        }
        let mut g = Vec::with_capacity(grouped.len());
        for u in grouped {
            g.push(Grouped {
                a: encode(u.act, inter as u64, u.rows as u64, BK as u32, BM as u32)?,
                b: encode(u.wd, hidden as u64, inter as u64, 64, BK as u32)?,
                out: u.out,
                bias: 0,
                rows: u.rows,
                tiles: down_tiles(u.rows, hidden),
            });
        }
        launch_grouped(
            dev,
            f,
            f.down,
            DOWN_SMEM_BYTES,
            &g,
            hidden,
            inter,
            0,
            stream,
        )?;
    }
    for u in alone {
        dev.gemm_bf16(u.rows, hidden, inter, u.act, u.wd, u.out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_block_is_the_kernels() {
        // kernels/hopper_gate_up.cu: TmaMap a[16], b[16] (128 bytes, 64-aligned);
        // u64 out[16], bias[16]; int rows[16], tile_end[16]; int n, d, inter, kind
        assert_eq!(std::mem::size_of::<TmaMap>(), 128);
        assert_eq!(std::mem::align_of::<FusedUnits>(), 64);
        let p = std::mem::MaybeUninit::<FusedUnits>::uninit();
        let base = p.as_ptr() as usize;
        // SAFETY: field addresses only, nothing read
        let off = |f: *const u8| f as usize - base;
        unsafe {
            let q = p.as_ptr();
            assert_eq!(off(std::ptr::addr_of!((*q).b) as _), 2048);
            assert_eq!(off(std::ptr::addr_of!((*q).out) as _), 4096);
            assert_eq!(off(std::ptr::addr_of!((*q).rows) as _), 4352);
            assert_eq!(off(std::ptr::addr_of!((*q).n) as _), 4480);
            assert_eq!(off(std::ptr::addr_of!((*q).kind) as _), 4492);
        }
        // under the 32,764-byte kernel parameter limit of CUDA 12.1 drivers
        assert!(std::mem::size_of::<FusedUnits>() <= 32_764);
    }

    #[test]
    fn the_kernel_source_agrees_on_its_constants() {
        for (name, v) in [
            ("FUSED_UNITS", FUSED_UNITS),
            ("FG_BM", BM),
            ("FG_BK", BK),
            ("FG_TN", TN),
            ("FG_STAGES", STAGES),
            ("FD_TN", DOWN_TN),
            ("FD_STAGES", DOWN_STAGES),
        ] {
            assert!(
                FUSED_SRC.contains(&format!("#define {name} {v}\n")),
                "{name} differs from the kernel's"
            );
        }
    }

    #[test]
    fn the_split_rule_sends_large_units_to_cublaslt() {
        assert!(DownPath::Split.groups(1));
        assert!(DownPath::Split.groups(DOWN_GROUPED_ROWS - 1));
        assert!(!DownPath::Split.groups(DOWN_GROUPED_ROWS));
        assert!(DownPath::Grouped.groups(16_384));
        assert!(!DownPath::Lt.groups(1));
        for p in [DownPath::Split, DownPath::Grouped, DownPath::Lt] {
            assert_eq!(DownPath::parse(p.name()), Some(p));
        }
        assert_eq!(DownPath::parse("fast"), None);
    }

    #[test]
    fn tiles_count_partial_tiles() {
        // gpt-oss: I = 2,880 is 22.5 tiles of 128 columns
        assert_eq!(tiles(4096, 2880), 32 * 23);
        assert_eq!(tiles(1, 2880), 23);
        assert_eq!(tiles(129, 256), 4);
        // the down GEMM: D = 2,880 is 15 tiles of 192 columns
        assert_eq!(down_tiles(4096, 2880), 32 * 15);
        assert_eq!(down_tiles(1, 2880), 15);
        assert_eq!(down_tiles(129, 200), 4);
        assert!(shape_refusal(2880, 2880).is_none());
        assert!(shape_refusal(2884, 2880).is_some());
        assert!(shape_refusal(2880, 2884).is_some());
    }
}
