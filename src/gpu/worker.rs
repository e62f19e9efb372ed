//! One rank's worker: its GPU, its two communicators (tokens and weights),
//! the planner, the run's events, and the buffers it keeps in the arena.
//! Deterministic expert weights and inputs are generated on the device, so
//! every GPU holds the same bits for the same expert. The layer itself is
//! in `phases`, its measurement in `timing`, the dense check in `dense`.

use super::config::ReplayConfig;
use super::layout::Layout;
use super::runtime::{params, BufKind, Comm, Dev, Event, NcclId};
use super::GpuError;
use crate::plan::{Plan, Planner};
use cudarc::nccl::sys::ncclDataType_t;

/// Rows of elements in one padded expert blob.
const PAD: usize = 128;
fn pad(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// Offsets (bf16 elements) of the parts of one expert's weight blob:
/// gate_up `D x 2I`, its bias `2I`, down `I x D`, its bias `D`.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlobLayout {
    pub(super) wgu: usize,
    pub(super) bgu: usize,
    pub(super) wd: usize,
    pub(super) bd: usize,
    pub(super) len: usize,
}

impl BlobLayout {
    pub(super) fn new(d: usize, i: usize) -> Self {
        let wgu = 0;
        let bgu = pad(d * 2 * i);
        let wd = bgu + pad(2 * i);
        let bd = wd + pad(i * d);
        BlobLayout {
            wgu,
            bgu,
            wd,
            bd,
            len: bd + pad(d),
        }
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of one part (0..4) of expert `e`'s weights; rank inputs use part 9.
pub(super) fn part_seed(seed: u64, e: usize, part: u64) -> u64 {
    mix(mix(seed, e as u64 + 1), part + 1)
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct PackSeg {
    pub(super) lo: i64,
    pub(super) hi: i64,
    pub(super) dst: u64,
    pub(super) ret: u64,
    pub(super) bias: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct CopySeg {
    pub(super) vstart: i64,
    pub(super) len: i64,
    pub(super) src: u64,
    pub(super) dst: u64,
}

/// Events of one run (main stream unless noted).
pub(super) const E_START: usize = 0;
pub(super) const E_PLANNED: usize = 1;
pub(super) const E_PACKED: usize = 2;
/// On the net stream: remote copies received and placed.
pub(super) const E_DISPATCHED: usize = 3;
pub(super) const E_BS: usize = 4;
pub(super) const E_BE: usize = 5;
pub(super) const E_RET: usize = 6;
/// On the net stream: results back home.
pub(super) const E_RETURNED: usize = 7;
pub(super) const E_END: usize = 8;
pub(super) const N_EV: usize = 9;

/// Largest GEMM unit (rows): bounds the gate_up and activation buffers.
/// The cost model sizes that scratch by it (`Profile::act_chunk_tokens`).
pub const CHUNK: u64 = 16_384;

/// Per-run phase times, ms: overhead, dispatch, transfer, compute, combine,
/// total of the forward; then, in a training run, the backward's
/// (`backward::BwdTimes`), zeros otherwise.
/// Last, the combine's busy time of a pipelined run (NaN otherwise).
pub(super) const NT: usize = 14;
pub(super) type Times = [f64; NT];

pub(super) enum RunOut {
    Done(Times),
    Oom,
}

pub(super) struct Worker<'a> {
    pub(super) dev: Dev,
    pub(super) comm: Comm,
    pub(super) xcomm: Comm,
    pub(super) cfg: &'a ReplayConfig,
    pub(super) rank: usize,
    pub(super) world: usize,
    pub(super) blob: BlobLayout,
    pub(super) planner: Planner,
    pub(super) plan: Plan,
    pub(super) ev: Vec<Event>,
    pub(super) xev: Vec<Event>,
    /// Fork and join of the second compute stream (`--compute-streams 2`).
    pub(super) cev: [Event; 2],
    /// Largest buffer sizes seen so far in this case, per rank, so every
    /// rank agrees on when buffers grow (and an OOM check is needed).
    pub(super) seen: Vec<Vec<usize>>,
    pub(super) driver_peak: usize,
    /// Events of a training run's backward.
    pub(super) bwd: super::backward::BwdEvents,
    /// The expert whose weights each EP unit holds: identity for plain EP
    /// and LLEP, an EPLB placement's `phy2log` (see `replicas`).
    pub(super) slots: Vec<usize>,
    /// Pipeline events (`pipeline::PE` per chunk) and the chunks of the
    /// last run (1: the sequential schedule).
    pub(super) pev: Vec<Event>,
    pub(super) pipe_chunks: usize,
    /// Peers the weight communicator has received from / sent to in this
    /// process (NCCL connects a pair on first use and keeps its buffers).
    pub(super) wpeers_in: Vec<bool>,
    pub(super) wpeers_out: Vec<bool>,
    /// The case's expert-compute graphs (`--cuda-graphs on`).
    pub(super) graphs: std::cell::RefCell<super::graphs::Graphs>,
    /// The other ranks of this process, for `--exchange copy-engine`
    /// (`None`: NCCL moves tokens and weights).
    pub(super) link: Option<std::sync::Arc<super::copy_engine::PeerLink>>,
    /// The ranks' slots as of this run's meeting (copy-engine exchange).
    pub(super) peers: std::cell::RefCell<Vec<super::copy_engine::Slot>>,
    /// `LLEP_TRACE_HOST_TIMING` is set (read once: the overhead phase is
    /// on every run's critical path).
    pub(super) host_timing: bool,
    /// `LLEP_TRACE_CE_ROWS=staged`: the copy-engine forward pushes whole
    /// ranges through the receive buffer and places them by kernel.
    pub(super) ce_staged: bool,
    /// With it, each run's host checkpoints of the overhead phase (see
    /// `phases::HOST_MARKS`), and when the current run's started.
    pub(super) host_marks: Vec<(crate::plan::Policy, [f64; super::phases::HOST_MARKS])>,
    pub(super) host_clock: Option<std::time::Instant>,
    /// llep-auto's warm decision thread (`--decision-thread on`).
    pub(super) decider: Option<super::decider::Decider>,
}

/// Buffers kept from one case to the next (weights, inputs).
pub(super) const PERSISTENT: [BufKind; 3] = [BufKind::Native, BufKind::BiasTable, BufKind::X];

impl<'a> Worker<'a> {
    /// Open GPU `ordinal` as rank `rank` of `world`, on the communicators
    /// of `ids` (tokens, then weights); with `link`, also linked to the
    /// process's other GPUs for copy-engine exchange.
    pub(super) fn new(
        rank: usize,
        world: usize,
        ordinal: usize,
        ids: &[NcclId],
        ptx: &cudarc::nvrtc::Ptx,
        cfg: &'a ReplayConfig,
        link: Option<std::sync::Arc<super::copy_engine::PeerLink>>,
    ) -> Result<Self, GpuError> {
        let mut dev = Dev::new(ordinal, ptx)?.with_gemm(cfg.gemm)?;
        if cfg.overlap != super::pipeline::Overlap::Off && cfg.net_priority {
            super::pipeline::prioritise_net(&mut dev)?;
        }
        let comm = Comm::init(world, rank, &ids[0])?;
        let xcomm = Comm::init(world, rank, &ids[1])?;
        let mut w = Worker {
            dev,
            comm,
            xcomm,
            cfg,
            rank,
            world,
            blob: BlobLayout::new(cfg.hidden, cfg.inter),
            planner: Planner::new(),
            plan: Plan::default(),
            ev: (0..N_EV).map(|_| Event::new()).collect::<Result<_, _>>()?,
            // weight transfer, then (training) weight-gradient return
            xev: (0..4).map(|_| Event::new()).collect::<Result<_, _>>()?,
            cev: [Event::new()?, Event::new()?],
            seen: Vec::new(),
            driver_peak: 0,
            bwd: Default::default(),
            slots: (0..cfg.experts).collect(),
            pev: (0..super::pipeline::PE * super::pipeline::MAX_CHUNKS)
                .map(|_| Event::new())
                .collect::<Result<_, _>>()?,
            pipe_chunks: 1,
            wpeers_in: vec![false; world],
            wpeers_out: vec![false; world],
            graphs: Default::default(),
            link,
            peers: Default::default(),
            host_timing: crate::env::host_timing(),
            ce_staged: crate::env::ce_rows_staged(),
            host_marks: Vec::new(),
            host_clock: None,
            decider: None,
        };
        if w.link.is_some() {
            w.link_peers(ordinal)?;
        }
        let auto = cfg
            .settings
            .iter()
            .any(|s| s.0 == crate::plan::Policy::LlepAuto);
        if let (true, true, Some(arb)) = (auto, cfg.decision_thread, &cfg.arbiter) {
            let d = super::decider::Decider::start(arb.clone())
                .map_err(|e| GpuError::Input(format!("cannot start llep-auto's thread: {e}")))?;
            w.decider = Some(d);
        }
        Ok(w)
    }

    pub(super) fn rb(&self) -> u64 {
        (self.cfg.hidden * 2) as u64
    }

    pub(super) fn gen(&self, ptr: u64, n: usize, seed: u64, scale: f32) -> Result<(), GpuError> {
        let n64 = n as u64;
        let blocks = n.div_ceil(256).min(65_535) as u32;
        // SAFETY: ptr holds n bf16 values.
        unsafe {
            self.dev.launch(
                self.dev.k.gen_bf16,
                (blocks, 1, 1),
                256,
                0,
                self.dev.main,
                params!(ptr, n64, seed, scale),
            )
        }
    }

    /// Generate expert `e`'s blob at `ptr` (same bits on any GPU).
    pub(super) fn gen_blob(&self, ptr: u64, e: usize) -> Result<(), GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let b = self.blob;
        let s = self.cfg.seed;
        self.gen(
            ptr + 2 * b.wgu as u64,
            d * 2 * i,
            part_seed(s, e, 0),
            1.0 / (d as f32).sqrt(),
        )?;
        self.gen(ptr + 2 * b.bgu as u64, 2 * i, part_seed(s, e, 1), 0.1)?;
        self.gen(
            ptr + 2 * b.wd as u64,
            i * d,
            part_seed(s, e, 2),
            1.0 / (i as f32).sqrt(),
        )?;
        self.gen(ptr + 2 * b.bd as u64, d, part_seed(s, e, 3), 0.1)
    }

    pub(super) fn setup(&mut self, max_tokens: usize) -> Result<(), GpuError> {
        let per = self.cfg.experts / self.world;
        let bb = self.blob.len * 2;
        let native = self.dev.arena.get(BufKind::Native, per * bb)?;
        for j in 0..per {
            self.gen_blob(native + (j * bb) as u64, self.rank * per + j)?;
        }
        let d = self.cfg.hidden;
        let bt = self
            .dev
            .arena
            .get(BufKind::BiasTable, self.cfg.experts * d * 2)?;
        for e in 0..self.cfg.experts {
            self.gen(
                bt + (e * d * 2) as u64,
                d,
                part_seed(self.cfg.seed, e, 3),
                0.1,
            )?;
        }
        let x = self.dev.arena.get(BufKind::X, max_tokens.max(1) * d * 2)?;
        self.gen(
            x,
            max_tokens * d,
            part_seed(self.cfg.seed, 1_000_000 + self.rank, 9),
            1.0,
        )?;
        self.dev.sync()
    }

    /// All-gather a few f64 per rank.
    pub(super) fn gather_f64(&mut self, v: &[f64]) -> Result<Vec<f64>, GpuError> {
        let n = v.len();
        let s = self.dev.arena.get(BufKind::GatherSend, n * 8)?;
        let r = self
            .dev
            .arena
            .get(BufKind::GatherRecv, n * 8 * self.world)?;
        let mut out = vec![0f64; n * self.world];
        // SAFETY: buffers sized above; download synchronises.
        unsafe {
            self.dev.upload(s, v)?;
            self.comm
                .all_gather(s, r, n, ncclDataType_t::ncclFloat64, self.dev.main)?;
            self.dev.download(&mut out, r)?;
        }
        Ok(out)
    }

    /// Buffer sizes rank `q` needs for this layout, in a fixed order.
    fn needs(&self, lay: &Layout, q: usize) -> Vec<(BufKind, usize)> {
        let rl = &lay.ranks[q];
        let rb = self.rb() as usize;
        let i = self.cfg.inter;
        let npack = lay.pieces.iter().filter(|p| p.src as usize == q).count();
        let nin = lay.remote_in(q).count();
        // a second compute stream has a second scratch beside the first
        let held = self.act_rows_held(rl) * self.scratch_sets();
        let mut v = vec![
            (BufKind::Send, rl.send_total as usize * rb),
            (BufKind::Recv, rl.recv_total as usize * rb),
            (BufKind::Comp, rl.compute_rows as usize * rb),
            (BufKind::H, held * 2 * i * 2),
            (BufKind::Act, held * i * 2),
            (
                BufKind::Foreign,
                rl.recv_transfers.len() * self.blob.len * 2,
            ),
            (BufKind::PackSegs, npack * std::mem::size_of::<PackSeg>()),
            (BufKind::SegsIn, nin * std::mem::size_of::<CopySeg>()),
            (BufKind::SegsOut, nin * std::mem::size_of::<CopySeg>()),
            (BufKind::SegStart, (self.experts() + 1) * 4),
        ];
        v.extend(self.bwd_needs(lay, q));
        v
    }

    /// Grow buffers for `lay` on every rank in step; false if any rank ran
    /// out of memory (all ranks agree).
    pub(super) fn ensure(&mut self, lay: &Layout) -> Result<bool, GpuError> {
        let all: Vec<Vec<(BufKind, usize)>> = (0..self.world).map(|q| self.needs(lay, q)).collect();
        if self.seen.len() != self.world {
            self.seen = vec![vec![0; all[0].len()]; self.world];
        }
        let grow = all
            .iter()
            .enumerate()
            .any(|(q, v)| v.iter().zip(&self.seen[q]).any(|((_, b), s)| b > s));
        if !grow {
            return Ok(true);
        }
        let mut oom = 0.0;
        for &(kind, bytes) in &all[self.rank] {
            match self.dev.arena.get(kind, bytes) {
                Ok(_) => {}
                Err(GpuError::Oom(_)) => {
                    oom = 1.0;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        for (q, v) in all.iter().enumerate() {
            for (j, (_, b)) in v.iter().enumerate() {
                self.seen[q][j] = self.seen[q][j].max(*b);
            }
        }
        let flags = self.gather_f64(&[oom])?;
        Ok(flags.iter().all(|&f| f == 0.0))
    }

    pub(super) fn ptr(&mut self, kind: BufKind) -> Result<u64, GpuError> {
        // every buffer exists once `ensure` ran; a 0-byte request keeps it
        self.dev.arena.get(kind, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_parts_are_aligned_and_disjoint() {
        let b = BlobLayout::new(2880, 2880);
        assert_eq!(b.wgu, 0);
        assert!(b.bgu >= 2880 * 5760 && b.bgu % PAD == 0);
        assert!(b.wd >= b.bgu + 5760 && b.wd % PAD == 0);
        assert!(b.bd >= b.wd + 2880 * 2880 && b.bd % PAD == 0);
        assert!(b.len >= b.bd + 2880);
        // 256-byte alignment of every part (cuBLAS and 16-byte loads)
        for off in [b.bgu, b.wd, b.bd, b.len] {
            assert_eq!((off * 2) % 256, 0);
        }
    }

    #[test]
    fn part_seeds_differ() {
        let mut s = std::collections::HashSet::new();
        for e in 0..64 {
            for p in 0..4 {
                assert!(s.insert(part_seed(1, e, p)));
            }
        }
    }

    #[test]
    fn repr_c_tables_match_the_kernel_structs() {
        assert_eq!(std::mem::size_of::<PackSeg>(), 40);
        assert_eq!(std::mem::size_of::<CopySeg>(), 32);
    }
}
