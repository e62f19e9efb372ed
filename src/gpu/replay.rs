//! The replayed MoE layer and its measurement. Every rank (a thread per
//! local GPU, or a process per GPU under a launcher) runs the same loop:
//! per case and setting, warm-ups then timed runs of
//! count exchange + planning -> dispatch (+ weight transfers on their own
//! stream and communicator) -> expert GEMMs -> combine,
//! then a dense fp32 check of sampled tokens; rank 0 gathers everyone's
//! numbers over NCCL and builds the result rows.

use super::layout::{self, Layout, WeightSrc};
use super::rendezvous::{self, ProcessRank};
use super::runtime::{self, Comm, Dev, Event, NcclId};
use super::GpuError;
use crate::plan::{Plan, PlanParams, Planner, Policy};
use crate::results::{ResultRow, SOURCE_MEASURED};
use crate::plan::Gate;
use cudarc::nccl::sys::ncclDataType_t;
use std::ffi::c_void;

/// Activation of the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// gpt-oss: clamped SwiGLU (alpha 1.702, limit 7, up + 1).
    GptOss,
    /// silu(gate) * up.
    SwiGlu,
}

/// One rank's routing for one layer: `ids[t * k + j]`, router weights alike.
pub use crate::workload::RankRouting;

/// One layer input to replay: result-row keys plus every rank's routing.
#[derive(Debug, Clone)]
pub struct Case {
    /// Row keys: trace, scenario, step, layer, tokens_per_rank, input_note,
    /// model dimensions.
    pub base: ResultRow,
    pub routing: Vec<RankRouting>,
}

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub gpus: usize,
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub top_k: usize,
    pub act: Act,
    pub alpha: f64,
    pub min_gemm: u64,
    /// (policy, gate) pairs; the gate matters for llep only.
    pub settings: Vec<(Policy, Gate)>,
    pub warmup: usize,
    pub runs: usize,
    pub seed: u64,
    /// Tokens per rank checked against the dense reference.
    pub samples: usize,
}

/// How the ranks are started.
#[derive(Debug, Clone)]
pub enum Launch {
    /// This process drives these local GPU ordinals, a thread each.
    Threads(Vec<usize>),
    /// This process is one rank of a launcher's world.
    Process(ProcessRank),
}

/// Rows of elements in one padded expert blob.
const PAD: usize = 128;
fn pad(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// Offsets (bf16 elements) of the parts of one expert's weight blob:
/// gate_up `D x 2I`, its bias `2I`, down `I x D`, its bias `D`.
#[derive(Debug, Clone, Copy)]
struct BlobLayout {
    wgu: usize,
    bgu: usize,
    wd: usize,
    bd: usize,
    len: usize,
}

impl BlobLayout {
    fn new(d: usize, i: usize) -> Self {
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
fn part_seed(seed: u64, e: usize, part: u64) -> u64 {
    mix(mix(seed, e as u64 + 1), part + 1)
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PackSeg {
    lo: i64,
    hi: i64,
    dst: u64,
    ret: u64,
    bias: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CopySeg {
    vstart: i64,
    len: i64,
    src: u64,
    dst: u64,
}

/// Events of one run (main stream unless noted).
const E_START: usize = 0;
const E_PLANNED: usize = 1;
const E_PACKED: usize = 2;
/// On the net stream: remote copies received and placed.
const E_DISPATCHED: usize = 3;
const E_BS: usize = 4;
const E_BE: usize = 5;
const E_RET: usize = 6;
/// On the net stream: results back home.
const E_RETURNED: usize = 7;
const E_END: usize = 8;
const N_EV: usize = 9;

/// Largest GEMM unit (rows): bounds the gate_up and activation buffers.
/// The cost model sizes that scratch by it (`Profile::act_chunk_tokens`).
pub const CHUNK: u64 = 16_384;

/// A run of rows of one group computed by one GEMM pair.
#[derive(Debug, Clone, Copy)]
struct Unit {
    group: u32,
    row: u64,
    rows: u64,
    foreign: bool,
}

/// Per-run phase times, ms: overhead, dispatch, transfer, compute, combine, total.
type Times = [f64; 6];

enum RunOut {
    Done(Times),
    Oom,
}

macro_rules! params {
    ($($x:expr),* $(,)?) => {
        &mut [$(&$x as *const _ as *mut c_void),*]
    };
}

struct Worker<'a> {
    dev: Dev,
    comm: Comm,
    xcomm: Comm,
    cfg: &'a ReplayConfig,
    rank: usize,
    world: usize,
    blob: BlobLayout,
    planner: Planner,
    plan: Plan,
    ev: Vec<Event>,
    xev: Vec<Event>,
    /// Largest buffer sizes seen so far in this case, per rank, so every
    /// rank agrees on when buffers grow (and an OOM check is needed).
    seen: Vec<Vec<usize>>,
    driver_peak: usize,
}

const PERSISTENT: [&str; 3] = ["native", "bias_table", "x"];

impl<'a> Worker<'a> {
    fn rb(&self) -> u64 {
        (self.cfg.hidden * 2) as u64
    }

    fn gen(&self, ptr: u64, n: usize, seed: u64, scale: f32) -> Result<(), GpuError> {
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
    fn gen_blob(&self, ptr: u64, e: usize) -> Result<(), GpuError> {
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

    fn setup(&mut self, max_tokens: usize) -> Result<(), GpuError> {
        let per = self.cfg.experts / self.world;
        let bb = self.blob.len * 2;
        let native = self.dev.arena.get("native", per * bb)?;
        for j in 0..per {
            self.gen_blob(native + (j * bb) as u64, self.rank * per + j)?;
        }
        let d = self.cfg.hidden;
        let bt = self.dev.arena.get("bias_table", self.cfg.experts * d * 2)?;
        for e in 0..self.cfg.experts {
            self.gen(
                bt + (e * d * 2) as u64,
                d,
                part_seed(self.cfg.seed, e, 3),
                0.1,
            )?;
        }
        let x = self.dev.arena.get("x", max_tokens.max(1) * d * 2)?;
        self.gen(
            x,
            max_tokens * d,
            part_seed(self.cfg.seed, 1_000_000 + self.rank, 9),
            1.0,
        )?;
        self.dev.sync()
    }

    /// All-gather a few f64 per rank.
    fn gather_f64(&mut self, v: &[f64]) -> Result<Vec<f64>, GpuError> {
        let n = v.len();
        let s = self.dev.arena.get("gather_s", n * 8)?;
        let r = self.dev.arena.get("gather_r", n * 8 * self.world)?;
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

    /// Buffer sizes rank `q` needs for this layout, in a fixed name order.
    fn needs(&self, lay: &Layout, q: usize) -> Vec<(&'static str, usize)> {
        let rl = &lay.ranks[q];
        let rb = self.rb() as usize;
        let i = self.cfg.inter;
        let npack = lay.pieces.iter().filter(|p| p.src as usize == q).count();
        let nin = lay.remote_in(q).count();
        vec![
            ("send", rl.send_total as usize * rb),
            ("recv", rl.recv_total as usize * rb),
            ("comp", rl.compute_rows as usize * rb),
            ("h", rl.max_group_rows.min(CHUNK) as usize * 2 * i * 2),
            ("act", rl.max_group_rows.min(CHUNK) as usize * i * 2),
            ("foreign", rl.recv_transfers.len() * self.blob.len * 2),
            ("packsegs", npack * std::mem::size_of::<PackSeg>()),
            ("segs_in", nin * std::mem::size_of::<CopySeg>()),
            ("segs_out", nin * std::mem::size_of::<CopySeg>()),
            ("seg_start", (self.cfg.experts + 1) * 4),
        ]
    }

    /// Grow buffers for `lay` on every rank in step; false if any rank ran
    /// out of memory (all ranks agree).
    fn ensure(&mut self, lay: &Layout) -> Result<bool, GpuError> {
        let all: Vec<Vec<(&'static str, usize)>> =
            (0..self.world).map(|q| self.needs(lay, q)).collect();
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
        for &(name, bytes) in &all[self.rank] {
            match self.dev.arena.get(name, bytes) {
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

    fn ptr(&mut self, name: &'static str) -> Result<u64, GpuError> {
        // every buffer exists once `ensure` ran; a 0-byte request keeps it
        self.dev.arena.get(name, 0)
    }

    fn run_once(&mut self, case: &Case, policy: Policy, gate: Gate) -> Result<RunOut, GpuError> {
        let (p, n, k) = (self.world, self.cfg.experts, self.cfg.top_k);
        let r = self.rank;
        let rt = &case.routing[r];
        let copies = rt.ids.len();
        let t = copies / k;
        let rb = self.rb();
        let d = self.cfg.hidden;
        let main = self.dev.main;

        let ids = self.ptr("ids")?;
        let wts = self.ptr("w")?;
        let slot = self.ptr("slot")?;
        let counts = self.ptr("counts")?;
        let counts_all = self.ptr("counts_all")?;
        let ret_ptr = self.ptr("ret_ptr")?;
        let bias_ptr = self.ptr("bias_ptr")?;
        let out = self.ptr("out")?;
        let x = self.ptr("x")?;
        let native = self.ptr("native")?;
        let bias_table = self.ptr("bias_table")?;

        // -- count exchange and planning --
        self.ev[E_START].record(main)?;
        self.dev.memset0(counts, n * 4)?;
        let (nc, ni) = (copies as i32, n as i32);
        // SAFETY: ids/slot hold `copies` ints, counts n ints; shared memory
        // is 2n ints as the kernel expects.
        unsafe {
            self.dev.launch(
                self.dev.k.route_slots,
                (copies.div_ceil(256) as u32, 1, 1),
                256,
                (2 * n * 4) as u32,
                main,
                params!(ids, nc, ni, counts, slot),
            )?;
            self.comm
                .all_gather(counts, counts_all, n, ncclDataType_t::ncclInt32, main)?;
        }
        let mut host_counts = vec![0i32; p * n];
        // SAFETY: counts_all holds p*n ints; this is the one host sync.
        unsafe { self.dev.download(&mut host_counts, counts_all)? };
        let per_rank: Vec<u64> = host_counts.iter().map(|&c| c as u64).collect();
        let global: Vec<u64> = (0..n)
            .map(|e| (0..p).map(|q| per_rank[q * n + e]).sum())
            .collect();
        let params = PlanParams {
            gpus: p,
            alpha: self.cfg.alpha,
            min_gemm: self.cfg.min_gemm,
            gate,
        };
        let mut plan = std::mem::take(&mut self.plan);
        self.planner
            .plan_into(&global, &params, policy, &mut plan)
            .map_err(|e| GpuError::Input(e.to_string()))?;
        let lay = layout::build(&plan, &per_rank).map_err(|e| GpuError::Input(e.to_string()))?;
        self.plan = plan;
        if !self.ensure(&lay)? {
            return Ok(RunOut::Oom);
        }
        let send = self.ptr("send")?;
        let recv = self.ptr("recv")?;
        let comp = self.ptr("comp")?;
        let h = self.ptr("h")?;
        let act = self.ptr("act")?;
        let foreign = self.ptr("foreign")?;
        let packsegs = self.ptr("packsegs")?;
        let segs_in = self.ptr("segs_in")?;
        let segs_out = self.ptr("segs_out")?;
        let seg_start = self.ptr("seg_start")?;

        let pieces = lay.pack_pieces(r);
        let mut starts = vec![0i32; n + 1];
        let mut segs = Vec::with_capacity(pieces.len());
        for pc in &pieces {
            starts[pc.expert as usize + 1] += 1;
            let at = if pc.dst as usize == r {
                comp + pc.comp_row * rb
            } else {
                send + pc.send_row * rb
            };
            segs.push(PackSeg {
                lo: pc.lo as i64,
                hi: pc.hi as i64,
                dst: at,
                ret: at,
                bias: bias_table + (pc.expert as u64) * rb,
            });
        }
        for e in 0..n {
            starts[e + 1] += starts[e];
        }
        let mut sin = Vec::new();
        let mut sout = Vec::new();
        let mut v = 0i64;
        for pc in lay.remote_in(r) {
            let (a, b) = (recv + pc.recv_row * rb, comp + pc.comp_row * rb);
            let len = pc.rows() as i64;
            sin.push(CopySeg {
                vstart: v,
                len,
                src: a,
                dst: b,
            });
            sout.push(CopySeg {
                vstart: v,
                len,
                src: b,
                dst: a,
            });
            v += len;
        }
        let remote_rows = v;
        // SAFETY: table buffers sized by `ensure` for these lengths.
        unsafe {
            self.dev.upload(packsegs, &segs)?;
            self.dev.upload(seg_start, &starts)?;
            self.dev.upload(segs_in, &sin)?;
            self.dev.upload(segs_out, &sout)?;
        }
        self.ev[E_PLANNED].record(main)?;

        // -- weight transfers on their own stream and communicator --
        let rl = &lay.ranks[r];
        let bb = self.blob.len * 2;
        let per = n / p;
        let has_x = !rl.send_transfers.is_empty() || !rl.recv_transfers.is_empty();
        if has_x {
            self.dev.wait(self.dev.xfer, &self.ev[E_PLANNED])?;
            self.xev[0].record(self.dev.xfer)?;
            Comm::group_start()?;
            // SAFETY: native blobs and foreign slots are allocated; peers
            // issue the matching calls in the same (plan) order.
            unsafe {
                for m in &rl.send_transfers {
                    let src = native + ((m.expert as usize % per) * bb) as u64;
                    self.xcomm.send(src, bb, m.peer as usize, self.dev.xfer)?;
                }
                for (i, m) in rl.recv_transfers.iter().enumerate() {
                    self.xcomm.recv(
                        foreign + (i * bb) as u64,
                        bb,
                        m.peer as usize,
                        self.dev.xfer,
                    )?;
                }
            }
            Comm::group_end()?;
            self.xev[1].record(self.dev.xfer)?;
        }

        // -- dispatch: pack (local copies straight into the compute buffer),
        // then the token exchange on its own stream --
        let (topk, rbi) = (k as i32, rb as i32);
        let net = self.dev.net;
        // SAFETY: tables uploaded above; every row pointer they hold lies in
        // send or comp, sized by the layout.
        unsafe {
            self.dev.launch(
                self.dev.k.pack_rows,
                ((copies * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                main,
                params!(x, ids, slot, nc, topk, seg_start, packsegs, rbi, ret_ptr, bias_ptr),
            )?;
        }
        self.ev[E_PACKED].record(main)?;
        self.dev.wait(net, &self.ev[E_PACKED])?;
        self.exchange(rl, send, recv, rb, net, true)?;
        let nseg = sin.len() as i32;
        // SAFETY: segment tables list rows inside recv and comp.
        unsafe {
            self.dev.launch(
                self.dev.k.copy_rows,
                (((remote_rows as usize) * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                net,
                params!(segs_in, nseg, remote_rows, rbi),
            )?;
        }
        self.ev[E_DISPATCHED].record(net)?;

        // -- expert compute, in GEMM units, once the remote copies are in
        // place (overlapping the exchange with local compute was measured
        // slower on 2 x H200: NCCL's kernels and the split GEMMs cost more
        // than the overlap saved) --
        let units = self.units(&lay, r);
        let mut waited = false;
        self.dev.wait(main, &self.ev[E_DISPATCHED])?;
        self.ev[E_BS].record(main)?;
        self.compute(&units, rl, comp, h, act, native, foreign, &mut waited)?;
        self.ev[E_BE].record(main)?;

        // -- combine: remote results back to their ranks, weighted sum --
        // SAFETY: as for dispatch, with source and destination swapped.
        unsafe {
            self.dev.launch(
                self.dev.k.copy_rows,
                (((remote_rows as usize) * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                main,
                params!(segs_out, nseg, remote_rows, rbi),
            )?;
        }
        self.ev[E_RET].record(main)?;
        self.dev.wait(net, &self.ev[E_RET])?;
        self.exchange(rl, send, recv, rb, net, false)?;
        self.ev[E_RETURNED].record(net)?;
        self.dev.wait(main, &self.ev[E_RETURNED])?;
        let di = d as i32;
        // SAFETY: ret_ptr/bias_ptr were filled by pack_rows for every copy
        // and point at result rows written above; out holds t x D.
        unsafe {
            self.dev.launch(
                self.dev.k.combine_rows,
                (t as u32, 1, 1),
                (d / 2).min(256) as u32,
                0,
                main,
                params!(ret_ptr, bias_ptr, wts, topk, di, out),
            )?;
        }
        self.ev[E_END].record(main)?;
        self.ev[E_END].sync()?;
        let mut xfer_ms = 0.0;
        if has_x {
            self.xev[1].sync()?;
            xfer_ms = self.xev[1].ms_since(&self.xev[0])?;
        }
        self.driver_peak = self.driver_peak.max(self.dev.driver_used());
        let e = &self.ev;
        let compute = e[E_BE].ms_since(&e[E_BS])?;
        Ok(RunOut::Done([
            e[E_PLANNED].ms_since(&e[E_START])?,
            e[E_DISPATCHED].ms_since(&e[E_PLANNED])?,
            xfer_ms,
            compute,
            e[E_END].ms_since(&e[E_BE])?,
            e[E_END].ms_since(&e[E_START])?,
        ]))
    }

    /// Token exchange of one layer on stream `s`: dispatch (send buffer out,
    /// receive buffer in) or its mirror for the combine.
    fn exchange(
        &self,
        rl: &layout::RankLayout,
        send: u64,
        recv: u64,
        rb: u64,
        s: cudarc::driver::sys::CUstream,
        dispatch: bool,
    ) -> Result<(), GpuError> {
        let (out_buf, in_buf, out_rows, out_off, in_rows, in_off) = if dispatch {
            (
                send,
                recv,
                &rl.send_rows,
                &rl.send_off,
                &rl.recv_rows,
                &rl.recv_off,
            )
        } else {
            (
                recv,
                send,
                &rl.recv_rows,
                &rl.recv_off,
                &rl.send_rows,
                &rl.send_off,
            )
        };
        Comm::group_start()?;
        // SAFETY: offsets and sizes from the layout, mirrored on the peers;
        // both buffers hold them.
        let res = (|| unsafe {
            for q in 0..self.world {
                if q == self.rank {
                    continue;
                }
                if out_rows[q] > 0 {
                    self.comm
                        .send(out_buf + out_off[q] * rb, (out_rows[q] * rb) as usize, q, s)?;
                }
                if in_rows[q] > 0 {
                    self.comm
                        .recv(in_buf + in_off[q] * rb, (in_rows[q] * rb) as usize, q, s)?;
                }
            }
            Ok(())
        })();
        Comm::group_end()?;
        res
    }

    /// GEMM units of GPU `r`: each group's rows cut to at most `CHUNK` rows
    /// (bounding the activation buffers whatever the skew); native weights
    /// before foreign ones, so compute starts before the transfers finish.
    fn units(&self, lay: &Layout, r: usize) -> Vec<Unit> {
        let rl = &lay.ranks[r];
        let mut ps: Vec<&layout::Piece> = lay
            .pieces
            .iter()
            .filter(|pc| pc.dst as usize == r)
            .collect();
        ps.sort_by_key(|pc| pc.comp_row);
        let mut runs: Vec<Unit> = Vec::new();
        for pc in ps {
            let g = &rl.groups[pc.group as usize];
            let foreign = matches!(g.weights, WeightSrc::Foreign(_));
            match runs.last_mut() {
                Some(u) if u.group == pc.group && u.row + u.rows == pc.comp_row => {
                    u.rows += pc.rows();
                }
                _ => runs.push(Unit {
                    group: pc.group,
                    row: pc.comp_row,
                    rows: pc.rows(),
                    foreign,
                }),
            }
        }
        let mut out = Vec::new();
        for u in runs {
            let mut at = 0;
            while at < u.rows {
                let n = (u.rows - at).min(CHUNK);
                out.push(Unit {
                    row: u.row + at,
                    rows: n,
                    ..u
                });
                at += n;
            }
        }
        out.sort_by_key(|u| u.foreign);
        out
    }

    /// Run GEMM units on the main stream: gate_up GEMM, activation, down
    /// GEMM (written in place over the unit's input rows).
    #[allow(clippy::too_many_arguments)]
    fn compute(
        &self,
        units: &[Unit],
        rl: &layout::RankLayout,
        comp: u64,
        h: u64,
        act: u64,
        native: u64,
        foreign: u64,
        waited: &mut bool,
    ) -> Result<(), GpuError> {
        let main = self.dev.main;
        let rb = self.rb();
        let (d, inter) = (self.cfg.hidden, self.cfg.inter);
        let bb = self.blob.len * 2;
        let b = self.blob;
        let kind: i32 = match self.cfg.act {
            Act::GptOss => 0,
            Act::SwiGlu => 1,
        };
        let inter_i = inter as i32;
        for u in units {
            let g = &rl.groups[u.group as usize];
            let w = match g.weights {
                WeightSrc::Native(j) => native + (j as usize * bb) as u64,
                WeightSrc::Foreign(i) => {
                    if !*waited {
                        self.dev.wait(main, &self.xev[1])?;
                        *waited = true;
                    }
                    foreign + (i as usize * bb) as u64
                }
            };
            let xg = comp + u.row * rb;
            let rows = u.rows as usize;
            let rows_i = u.rows as i64;
            let bgu = w + 2 * b.bgu as u64;
            let pairs = rows * inter / 2;
            // SAFETY: xg holds rows x D inside comp; h holds CHUNK x 2I and
            // act CHUNK x I (rows <= CHUNK); w is a full blob.
            unsafe {
                self.dev
                    .gemm_bf16(rows, 2 * inter, d, xg, w + 2 * b.wgu as u64, h)?;
                self.dev.launch(
                    self.dev.k.act_rows,
                    (pairs.div_ceil(256).min(1 << 20) as u32, 1, 1),
                    256,
                    0,
                    main,
                    params!(h, bgu, act, rows_i, inter_i, kind),
                )?;
                self.dev
                    .gemm_bf16(rows, d, inter, act, w + 2 * b.wd as u64, xg)?;
            }
        }
        Ok(())
    }

    /// Dense fp32 reference of sampled tokens of this rank against the last
    /// run's output: (sum of squared errors, sum of squared reference).
    fn check(&mut self, case: &Case) -> Result<(f64, f64), GpuError> {
        let (d, inter, k) = (self.cfg.hidden, self.cfg.inter, self.cfg.top_k);
        let rt = &case.routing[self.rank];
        let t = rt.ids.len() / k;
        let s = self.cfg.samples.min(t);
        if s == 0 {
            return Ok((0.0, 0.0));
        }
        let toks: Vec<i32> = (0..s).map(|j| (j * t / s) as i32).collect();
        let blob = self.dev.arena.get("ref_blob", self.blob.len * 2)?;
        let hbuf = self.dev.arena.get("ref_h", s * 2 * inter * 4)?;
        let abuf = self.dev.arena.get("ref_a", s * inter * 4)?;
        let refo = self.dev.arena.get("ref_out", s * d * 4)?;
        let got = self.dev.arena.get("ref_got", s * d * 4)?;
        let tokb = self.dev.arena.get("ref_tok", s * 4)?;
        let rowb = self.dev.arena.get("ref_row", s * 4)?;
        let wb = self.dev.arena.get("ref_w", s * 4)?;
        let x = self.ptr("x")?;
        let out = self.ptr("out")?;
        self.dev.memset0(refo, s * d * 4)?;
        let kind: i32 = match self.cfg.act {
            Act::GptOss => 0,
            Act::SwiGlu => 1,
        };
        let b = self.blob;
        let (di, ii) = (d as i32, inter as i32);
        for slot in 0..k {
            let mut by_e: std::collections::BTreeMap<i32, Vec<usize>> = Default::default();
            for (j, &tk) in toks.iter().enumerate() {
                by_e.entry(rt.ids[tk as usize * k + slot])
                    .or_default()
                    .push(j);
            }
            for (e, js) in by_e {
                self.gen_blob(blob, e as usize)?;
                let tl: Vec<i32> = js.iter().map(|&j| toks[j]).collect();
                let rl: Vec<i32> = js.iter().map(|&j| j as i32).collect();
                let wl: Vec<f32> = js
                    .iter()
                    .map(|&j| rt.weights[toks[j] as usize * k + slot])
                    .collect();
                let ns = js.len() as i32;
                let (wgu, bgu, wd, bd) = (
                    blob + 2 * b.wgu as u64,
                    blob + 2 * b.bgu as u64,
                    blob + 2 * b.wd as u64,
                    blob + 2 * b.bd as u64,
                );
                // SAFETY: sample tables hold ns entries; buffers sized for s
                // samples; the blob is complete.
                unsafe {
                    self.dev.upload(tokb, &tl)?;
                    self.dev.upload(rowb, &rl)?;
                    self.dev.upload(wb, &wl)?;
                    self.dev.launch(
                        self.dev.k.ref_gate_up,
                        ((2 * inter).div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(x, tokb, ns, wgu, bgu, di, ii, hbuf),
                    )?;
                    self.dev.launch(
                        self.dev.k.ref_act,
                        (inter.div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(hbuf, ns, ii, kind, abuf),
                    )?;
                    self.dev.launch(
                        self.dev.k.ref_down,
                        (d.div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(abuf, ns, wd, bd, di, ii, rowb, wb, refo),
                    )?;
                }
            }
        }
        let si = s as i32;
        let mut rv = vec![0f32; s * d];
        let mut gv = vec![0f32; s * d];
        // SAFETY: sizes as allocated above.
        unsafe {
            self.dev.upload(tokb, &toks)?;
            self.dev.launch(
                self.dev.k.gather_out,
                (d.div_ceil(256) as u32, si as u32, 1),
                256,
                0,
                self.dev.main,
                params!(out, tokb, si, di, got),
            )?;
            self.dev.download(&mut rv, refo)?;
            self.dev.download(&mut gv, got)?;
        }
        let mut num = 0f64;
        let mut den = 0f64;
        for (a, b) in gv.iter().zip(&rv) {
            if !a.is_finite() {
                num = f64::INFINITY;
            }
            num += (*a as f64 - *b as f64).powi(2);
            den += (*b as f64).powi(2);
        }
        Ok((num, den))
    }

    /// Run one case under one setting; rank 0 gets the row.
    fn measure(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
    ) -> Result<Option<ResultRow>, GpuError> {
        let k = self.cfg.top_k;
        let rt = &case.routing[self.rank];
        let copies = rt.ids.len();
        let t = copies / k;
        self.dev.arena.reset_peak();
        self.driver_peak = self.dev.driver_used();
        self.seen.clear();
        let n = self.cfg.experts;
        for (name, bytes) in [
            ("ids", copies * 4),
            ("w", copies * 4),
            ("slot", copies * 4),
            ("counts", n * 4),
            ("counts_all", n * 4 * self.world),
            ("ret_ptr", copies * 8),
            ("bias_ptr", copies * 8),
            ("out", t * self.cfg.hidden * 2),
        ] {
            self.dev.arena.get(name, bytes)?;
        }
        let (ids, w) = (self.ptr("ids")?, self.ptr("w")?);
        // SAFETY: sized above.
        unsafe {
            self.dev.upload(ids, &rt.ids)?;
            self.dev.upload(w, &rt.weights)?;
        }
        self.dev.sync()?;
        let mut times: Vec<Times> = Vec::new();
        let mut oom = false;
        for i in 0..self.cfg.warmup + self.cfg.runs {
            match self.run_once(case, policy, gate)? {
                RunOut::Oom => {
                    oom = true;
                    break;
                }
                RunOut::Done(tm) => {
                    if i >= self.cfg.warmup {
                        times.push(tm);
                    }
                }
            }
        }
        let (num, den) = if oom { (0.0, 0.0) } else { self.check(case)? };
        self.dev.sync()?;
        let runs = self.cfg.runs;
        let mut mine: Vec<f64> = Vec::with_capacity(runs * 6 + 5);
        for i in 0..runs {
            mine.extend_from_slice(times.get(i).unwrap_or(&[f64::NAN; 6]));
        }
        mine.extend([
            self.dev.arena.peak as f64,
            self.driver_peak as f64,
            num,
            den,
            if oom { 1.0 } else { 0.0 },
        ]);
        let all = self.gather_f64(&mine)?;
        let plan = self.plan.clone();
        self.dev.arena.release_except(&PERSISTENT)?;
        if self.rank != 0 {
            return Ok(None);
        }
        Ok(Some(self.row(case, policy, gate, &plan, &all, runs)))
    }

    fn row(
        &self,
        case: &Case,
        policy: Policy,
        gate: Gate,
        plan: &Plan,
        all: &[f64],
        runs: usize,
    ) -> ResultRow {
        let p = self.world;
        let stride = runs * 6 + 5;
        let per = |q: usize| &all[q * stride..(q + 1) * stride];
        let oom = (0..p).any(|q| per(q)[runs * 6 + 4] != 0.0);
        // per run, the phases of the GPU that finished last (they lie on
        // the layer's critical path; the weight transfer, overlapped, is the
        // max over GPUs); then the median over runs
        let mut phase = vec![Vec::new(); 6];
        for i in 0..runs {
            // the GPU whose compute ends last (all GPUs end the layer
            // together, waiting on each other in the combine)
            let busy = |q: usize| per(q)[i * 6] + per(q)[i * 6 + 1] + per(q)[i * 6 + 3];
            let crit = (0..p)
                .max_by(|&a, &b| busy(a).total_cmp(&busy(b)))
                .unwrap_or(0);
            for (j, ph) in phase.iter_mut().enumerate() {
                ph.push(match j {
                    2 => (0..p).map(|q| per(q)[i * 6 + 2]).fold(0.0, f64::max),
                    // the layer ends when the last GPU ends
                    5 => (0..p).map(|q| per(q)[i * 6 + 5]).fold(0.0, f64::max),
                    // what remains after its compute, waiting included
                    4 => (0..p).map(|q| per(q)[i * 6 + 5]).fold(0.0, f64::max) - busy(crit),
                    _ => per(crit)[i * 6 + j],
                });
            }
        }
        let med: Vec<f64> = phase.iter().map(|v| quantile(v, 0.5)).collect();
        let (num, den): (f64, f64) = (0..p)
            .map(|q| (per(q)[runs * 6 + 2], per(q)[runs * 6 + 3]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let mut r = case.base.clone();
        r.policy = policy.as_str().into();
        r.lambda = if policy == Policy::Llep {
            gate.lambda()
        } else {
            None
        };
        r.alpha = self.cfg.alpha;
        r.min_gemm = self.cfg.min_gemm;
        r.gpus = p as u32;
        r.source = SOURCE_MEASURED.into();
        r.device = self.dev.name.clone();
        r.profile = String::new();
        r.driver = driver_version();
        r.fill_plan_stats(plan);
        let (d, i) = (self.cfg.hidden as u64, self.cfg.inter as u64);
        // bf16 weights
        r.transfer_bytes = plan.transfers.len() as u64 * crate::trace::meta::expert_bytes(d, i, 2);
        r.runs = runs as u32;
        r.oom = oom;
        r.peak_mem_per_gpu = (0..p).map(|q| per(q)[runs * 6] as u64).collect();
        r.driver_mem_per_gpu = (0..p).map(|q| per(q)[runs * 6 + 1] as u64).collect();
        r.peak_mem_max_bytes = r.peak_mem_per_gpu.iter().copied().max().unwrap_or(0);
        if oom {
            let nan = f64::NAN;
            (r.t_overhead_ms, r.t_dispatch_ms, r.t_transfer_ms) = (nan, nan, nan);
            (r.t_compute_ms, r.t_combine_ms, r.t_total_ms) = (nan, nan, nan);
            r.rel_error = None;
        } else {
            r.t_overhead_ms = med[0];
            r.t_dispatch_ms = med[1];
            r.t_transfer_ms = med[2];
            r.t_compute_ms = med[3];
            r.t_combine_ms = med[4];
            r.t_total_ms = med[5];
            r.t_total_p10_ms = Some(quantile(&phase[5], 0.1));
            r.t_total_p90_ms = Some(quantile(&phase[5], 0.9));
            r.rel_error = (den > 0.0).then(|| (num / den).sqrt());
        }
        r
    }
}

/// Linear-interpolated quantile (NaN-free input expected).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// NVIDIA driver version (from /proc/driver/nvidia/version, when readable)
/// and the CUDA version the driver supports, e.g. "580.159.04 (CUDA 13.0)".
pub fn driver_version() -> String {
    let mut v = 0i32;
    // SAFETY: writes one int.
    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    let cuda = if ok == cudarc::driver::sys::cudaError_enum::CUDA_SUCCESS {
        format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
    } else {
        String::new()
    };
    let kmod = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| kernel_module_version(&t));
    match kmod {
        Some(k) if !cuda.is_empty() => format!("{k} ({cuda})"),
        Some(k) => k,
        None => cuda,
    }
}

/// The version in "NVRM version: NVIDIA UNIX ... Kernel Module  580.159.04  ...".
fn kernel_module_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("Kernel Module"))?;
    let rest = line.split("Kernel Module").nth(1)?;
    rest.split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

/// Validate the configuration against the cases before touching a GPU.
pub fn validate(cfg: &ReplayConfig, cases: &[Case]) -> Result<(), GpuError> {
    if cfg.gpus == 0 || cfg.experts % cfg.gpus != 0 {
        return Err(GpuError::Input(format!(
            "{} experts cannot be split over {} GPUs",
            cfg.experts, cfg.gpus
        )));
    }
    if cfg.hidden % 8 != 0 || cfg.inter % 2 != 0 {
        return Err(GpuError::Input(format!(
            "hidden size {} must be a multiple of 8 and intermediate size {} even",
            cfg.hidden, cfg.inter
        )));
    }
    if cfg.runs == 0 {
        return Err(GpuError::Input("--runs must be at least 1".into()));
    }
    if cfg.settings.iter().any(|(p, _)| *p == Policy::Ideal) {
        return Err(GpuError::Input(
            "the ideal policy has free weight transfers and cannot be replayed; use ep and llep"
                .into(),
        ));
    }
    for c in cases {
        if c.routing.len() != cfg.gpus {
            return Err(GpuError::Input(format!(
                "case has routing for {} ranks, expected {}",
                c.routing.len(),
                cfg.gpus
            )));
        }
        for rt in &c.routing {
            if rt.ids.len() % cfg.top_k != 0 || rt.ids.len() != rt.weights.len() {
                return Err(GpuError::Input(
                    "routing length is not tokens x top_k".into(),
                ));
            }
            if let Some(&bad) = rt.ids.iter().find(|&&e| e < 0 || e as usize >= cfg.experts) {
                return Err(GpuError::Input(format!(
                    "expert id {bad} out of range 0..{}",
                    cfg.experts
                )));
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn worker_main(
    rank: usize,
    world: usize,
    ordinal: usize,
    ids: &[NcclId],
    ptx: &cudarc::nvrtc::Ptx,
    cfg: &ReplayConfig,
    cases: &[Case],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<ResultRow>, GpuError> {
    let dev = Dev::new(ordinal, ptx)?;
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
        xev: (0..2).map(|_| Event::new()).collect::<Result<_, _>>()?,
        seen: Vec::new(),
        driver_peak: 0,
    };
    let max_t = cases
        .iter()
        .map(|c| c.routing[rank].ids.len() / cfg.top_k)
        .max()
        .unwrap_or(0);
    w.setup(max_t)?;
    let mut rows = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        for &(policy, gate) in &cfg.settings {
            if rank == 0 {
                progress(&format!(
                    "case {}/{} ({}{} step {} layer {}), {}",
                    ci + 1,
                    cases.len(),
                    case.base.trace,
                    if case.base.scenario.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", case.base.scenario)
                    },
                    case.base.step,
                    case.base.layer,
                    policy
                ));
            }
            if let Some(r) = w.measure(case, policy, gate)? {
                rows.push(r);
            }
        }
    }
    w.dev.sync()?;
    Ok(rows)
}

/// Replay `cases` under `cfg`. Returns the rows on the reporting rank (the
/// single process, or rank 0 of a launcher's world) and `None` elsewhere.
pub fn replay(
    cfg: &ReplayConfig,
    cases: &[Case],
    launch: &Launch,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Option<Vec<ResultRow>>, GpuError> {
    validate(cfg, cases)?;
    runtime::check_libraries()?;
    let count = runtime::device_count()?;
    if count == 0 {
        return Err(GpuError::NoDevice);
    }
    let cc = {
        let ctx =
            cudarc::driver::CudaContext::new(0).map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
        ctx.compute_capability()
            .map_err(|e| GpuError::Cuda(format!("{e:?}")))?
    };
    let ptx = runtime::compile_kernels(cc)?;
    match launch {
        Launch::Threads(ords) => {
            if ords.len() != cfg.gpus {
                return Err(GpuError::Input(format!(
                    "{} GPU ordinals for {} GPUs",
                    ords.len(),
                    cfg.gpus
                )));
            }
            if let Some(&bad) = ords.iter().find(|&&o| o >= count) {
                return Err(GpuError::Input(format!(
                    "GPU {bad} requested but {count} visible (check CUDA_VISIBLE_DEVICES)"
                )));
            }
            let ids = vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?];
            let results: Vec<Result<Vec<ResultRow>, GpuError>> = std::thread::scope(|s| {
                let hs: Vec<_> = ords
                    .iter()
                    .enumerate()
                    .map(|(rank, &o)| {
                        let (ids, ptx) = (&ids, &ptx);
                        s.spawn(move || {
                            worker_main(rank, cfg.gpus, o, ids, ptx, cfg, cases, progress)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(GpuError::Cuda("worker thread panicked".into()))
                        })
                    })
                    .collect()
            });
            let mut first = None;
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(rows) if i == 0 => first = Some(rows),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(first)
        }
        Launch::Process(pr) => {
            if pr.world != cfg.gpus {
                return Err(GpuError::Input(format!(
                    "WORLD_SIZE {} but --gpus {}",
                    pr.world, cfg.gpus
                )));
            }
            if pr.local_rank >= count {
                return Err(GpuError::Input(format!(
                    "LOCAL_RANK {} but {count} GPUs visible (check CUDA_VISIBLE_DEVICES)",
                    pr.local_rank
                )));
            }
            let mine = if pr.rank == 0 {
                Some(vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?])
            } else {
                None
            };
            let ids = rendezvous::exchange(pr, mine, 2)?;
            let rows = worker_main(
                pr.rank,
                pr.world,
                pr.local_rank,
                &ids,
                &ptx,
                cfg,
                cases,
                progress,
            )?;
            Ok(if pr.rank == 0 { Some(rows) } else { None })
        }
    }
}

/// What `calibrate` measures.
#[derive(Debug, Clone)]
pub struct CalibConfig {
    pub gpus: usize,
    /// (hidden, intermediate) shapes for the GEMM curves; the first also
    /// sizes the planning-overhead and weight-transfer measurements.
    pub shapes: Vec<(usize, usize)>,
    pub tokens: Vec<u64>,
    pub reps: usize,
    pub seed: u64,
}

/// (hidden, intermediate, [(tokens, ms)]) of one expert shape.
pub type ShapeCurve = (usize, usize, Vec<(f64, f64)>);

/// Raw calibration measurements (rank 0's view; link figures are the max
/// over GPUs of each exchange).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Calibration {
    pub card: String,
    pub driver: String,
    pub gpus: usize,
    pub total_mem: u64,
    /// Per shape: (hidden, intermediate, [(tokens, ms)]).
    pub gemm: Vec<ShapeCurve>,
    /// Token exchange: (bytes each GPU sends to each peer, ms).
    pub link: Vec<(f64, f64)>,
    /// Weight transfer, one direction: (bytes, ms).
    pub p2p: Vec<(f64, f64)>,
    /// Count exchange + planning per layer, ms (median), on balanced
    /// routing of the first shape with 128 experts, top-4, 32768 tokens.
    pub overhead_ms: f64,
    /// Memory in use on a GPU beyond this tool's buffers (context, NCCL,
    /// cuBLAS), bytes.
    pub mem_baseline: u64,
}

impl Worker<'_> {
    /// Time one expert group (gate_up, activation, down) of `tokens` rows
    /// of shape (d, i), as the replay computes it.
    fn time_group(
        &mut self,
        d: usize,
        i: usize,
        tokens: u64,
        reps: usize,
    ) -> Result<f64, GpuError> {
        let bl = BlobLayout::new(d, i);
        let t = tokens as usize;
        let x = self.dev.arena.get("cal_x", t * d * 2)?;
        let w = self.dev.arena.get("cal_w", bl.len * 2)?;
        let rows = (t as u64).min(CHUNK) as usize;
        let h = self.dev.arena.get("cal_h", rows * 2 * i * 2)?;
        let a = self.dev.arena.get("cal_a", rows * i * 2)?;
        self.gen(x, t * d, 77, 1.0)?;
        self.gen(w, bl.len, 78, 1.0 / (d as f32).sqrt())?;
        let main = self.dev.main;
        let mut v = Vec::new();
        // A layer runs its groups back to back, launches queued ahead of the
        // GPU; timing one group alone would add the idle gaps of its
        // launches. So each timed sample is BACK_TO_BACK groups in a row.
        const BACK_TO_BACK: usize = 8;
        for rep in 0..reps + 2 {
            self.ev[E_START].record(main)?;
            for _ in 0..BACK_TO_BACK {
                let mut at = 0;
                while at < t {
                    let n = (t - at).min(CHUNK as usize);
                    let xg = x + (at * d * 2) as u64;
                    let (rows_i, inter_i, kind) = (n as i64, i as i32, 0i32);
                    let bgu = w + 2 * bl.bgu as u64;
                    // SAFETY: buffers sized above for n <= CHUNK rows.
                    unsafe {
                        self.dev.gemm_bf16(n, 2 * i, d, xg, w, h)?;
                        self.dev.launch(
                            self.dev.k.act_rows,
                            ((n * i / 2).div_ceil(256).min(1 << 20) as u32, 1, 1),
                            256,
                            0,
                            main,
                            params!(h, bgu, a, rows_i, inter_i, kind),
                        )?;
                        self.dev.gemm_bf16(n, d, i, a, w + 2 * bl.wd as u64, xg)?;
                    }
                    at += n;
                }
            }
            self.ev[E_END].record(main)?;
            self.ev[E_END].sync()?;
            if rep >= 2 {
                v.push(self.ev[E_END].ms_since(&self.ev[E_START])? / BACK_TO_BACK as f64);
            }
        }
        Ok(quantile(&v, 0.5))
    }

    /// Every rank sends `bytes` to every peer and receives as much (the
    /// token exchange), or, with `one_way`, rank 0 sends to rank 1 on the
    /// weight communicator. Median ms over `reps`, max over ranks.
    fn time_exchange(&mut self, bytes: usize, one_way: bool, reps: usize) -> Result<f64, GpuError> {
        let p = self.world;
        let sb = self.dev.arena.get("cal_s", bytes * p.max(1))?;
        let rbuf = self.dev.arena.get("cal_r", bytes * p.max(1))?;
        let s = if one_way { self.dev.xfer } else { self.dev.net };
        let mut v = Vec::new();
        for rep in 0..reps + 2 {
            self.dev.sync()?;
            let _ = self.gather_f64(&[0.0])?; // line the ranks up
            self.ev[E_START].record(s)?;
            Comm::group_start()?;
            // SAFETY: both buffers hold bytes * p.
            let res = (|| unsafe {
                if one_way {
                    if self.rank == 0 && p > 1 {
                        self.xcomm.send(sb, bytes, 1, s)?;
                    } else if self.rank == 1 {
                        self.xcomm.recv(rbuf, bytes, 0, s)?;
                    }
                } else {
                    for q in 0..p {
                        if q != self.rank {
                            self.comm.send(sb + (q * bytes) as u64, bytes, q, s)?;
                            self.comm.recv(rbuf + (q * bytes) as u64, bytes, q, s)?;
                        }
                    }
                }
                Ok(())
            })();
            Comm::group_end()?;
            res?;
            self.ev[E_END].record(s)?;
            self.ev[E_END].sync()?;
            if rep >= 2 {
                v.push(self.ev[E_END].ms_since(&self.ev[E_START])?);
            }
        }
        let mine = quantile(&v, 0.5);
        let all = self.gather_f64(&[mine])?;
        Ok(all.into_iter().fold(0.0, f64::max))
    }
}

fn calib_main(
    rank: usize,
    world: usize,
    ordinal: usize,
    ids: &[NcclId],
    ptx: &cudarc::nvrtc::Ptx,
    cc: &CalibConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Calibration, GpuError> {
    let (d0, i0) = cc.shapes[0];
    let (n, k, t) = (128usize, 4usize, 32_768u64);
    let n = n.max(world).div_ceil(world) * world;
    let cfg = ReplayConfig {
        gpus: world,
        hidden: d0,
        inter: i0,
        experts: n,
        top_k: k,
        act: Act::GptOss,
        alpha: 1.0,
        min_gemm: 1024,
        settings: vec![(Policy::Ep, Gate::Always)],
        warmup: 3,
        runs: cc.reps,
        seed: cc.seed,
        samples: 0,
    };
    let case = super::inputs::synthetic_case(
        crate::trace::synthetic::Scenario::Balanced,
        world,
        t,
        n as u32,
        k as u32,
        d0 as u32,
        i0 as u32,
    )
    .map_err(GpuError::Input)?;
    let dev = Dev::new(ordinal, ptx)?;
    let comm = Comm::init(world, rank, &ids[0])?;
    let xcomm = Comm::init(world, rank, &ids[1])?;
    let mut w = Worker {
        dev,
        comm,
        xcomm,
        cfg: &cfg,
        rank,
        world,
        blob: BlobLayout::new(d0, i0),
        planner: Planner::new(),
        plan: Plan::default(),
        ev: (0..N_EV).map(|_| Event::new()).collect::<Result<_, _>>()?,
        xev: (0..2).map(|_| Event::new()).collect::<Result<_, _>>()?,
        seen: Vec::new(),
        driver_peak: 0,
    };
    w.setup(t as usize)?;
    let mut out = Calibration {
        card: w.dev.name.clone(),
        driver: driver_version(),
        gpus: world,
        total_mem: w.dev.total_mem as u64,
        ..Default::default()
    };
    if rank == 0 {
        progress("planning overhead (balanced gpt-oss layer)");
    }
    let row = w.measure(&case, Policy::Ep, Gate::Always)?;
    out.overhead_ms = row.as_ref().map_or(0.0, |r| r.t_overhead_ms);
    // after a full layer ran: NCCL's buffers and cuBLAS's workspace exist
    w.dev.sync()?;
    out.mem_baseline = w.dev.driver_used().saturating_sub(w.dev.arena.held) as u64;
    if world > 1 {
        if rank == 0 {
            progress("token exchange and weight transfer bandwidth");
        }
        for mb in [1usize, 4, 16, 64, 256] {
            let b = mb << 20;
            out.link
                .push((b as f64, w.time_exchange(b, false, cc.reps)?));
        }
        let bb = w.blob.len * 2;
        for nb in [1usize, 2, 4, 8] {
            out.p2p
                .push(((nb * bb) as f64, w.time_exchange(nb * bb, true, cc.reps)?));
        }
    }
    if rank == 0 {
        for &(d, i) in &cc.shapes {
            progress(&format!("expert GEMM curve D={d} I={i}"));
            let mut pts = Vec::new();
            for &tk in &cc.tokens {
                pts.push((tk as f64, w.time_group(d, i, tk, cc.reps)?));
            }
            out.gemm.push((d, i, pts));
            w.dev.arena.release_except(&PERSISTENT)?;
        }
    }
    let _ = w.gather_f64(&[0.0])?; // keep the other ranks until rank 0 is done
    w.dev.sync()?;
    Ok(out)
}

/// Measure the hardware for the cost model on `cc.gpus` local GPUs (a
/// thread each). Returns rank 0's calibration.
pub fn calibrate(
    cc: &CalibConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Calibration, GpuError> {
    if cc.shapes.is_empty() || cc.tokens.is_empty() || cc.reps == 0 || cc.gpus == 0 {
        return Err(GpuError::Input(
            "calibrate needs shapes, token counts, reps and GPUs".into(),
        ));
    }
    runtime::check_libraries()?;
    let count = runtime::device_count()?;
    if count < cc.gpus {
        return Err(GpuError::Input(format!(
            "{} GPUs requested but {count} visible (check CUDA_VISIBLE_DEVICES)",
            cc.gpus
        )));
    }
    let ccap = {
        let ctx =
            cudarc::driver::CudaContext::new(0).map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
        ctx.compute_capability()
            .map_err(|e| GpuError::Cuda(format!("{e:?}")))?
    };
    let ptx = runtime::compile_kernels(ccap)?;
    let ids = vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?];
    let results: Vec<Result<Calibration, GpuError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cc.gpus)
            .map(|rank| {
                let (ids, ptx) = (&ids, &ptx);
                s.spawn(move || calib_main(rank, cc.gpus, rank, ids, ptx, cc, progress))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(GpuError::Cuda("worker thread panicked".into())))
            })
            .collect()
    });
    let mut first = None;
    for (i, r) in results.into_iter().enumerate() {
        let c = r?;
        if i == 0 {
            first = Some(c);
        }
    }
    Ok(first.expect("at least one GPU"))
}

/// Least-squares line y = a + b x; returns (a, b).
pub fn fit_line(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return (0.0, pts.first().map_or(0.0, |p| p.1 / p.0.max(1e-12)));
    }
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for p in pts {
        sxy += (p.0 - mx) * (p.1 - my);
        sxx += (p.0 - mx) * (p.0 - mx);
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
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
    fn line_fit_recovers_latency_and_bandwidth() {
        let pts: Vec<(f64, f64)> = (1..6)
            .map(|i| (i as f64 * 1e6, 0.02 + i as f64 * 1e6 / 3e8))
            .collect();
        let (a, b) = fit_line(&pts);
        assert!((a - 0.02).abs() < 1e-9 && (1.0 / b - 3e8).abs() < 1.0);
    }

    #[test]
    fn driver_version_is_read_from_the_kernel_module_line() {
        let t = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)\nGCC version:  gcc 12\n";
        assert_eq!(kernel_module_version(t).as_deref(), Some("580.159.04"));
        let t = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Sun Jan  1\n";
        assert_eq!(kernel_module_version(t).as_deref(), Some("580.159.04"));
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
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
