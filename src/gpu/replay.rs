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
use crate::sim::Gate;
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankRouting {
    pub ids: Vec<i32>,
    pub weights: Vec<f32>,
}

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
        self.gen(ptr + 2 * b.wgu as u64, d * 2 * i, part_seed(s, e, 0), 1.0 / (d as f32).sqrt())?;
        self.gen(ptr + 2 * b.bgu as u64, 2 * i, part_seed(s, e, 1), 0.1)?;
        self.gen(ptr + 2 * b.wd as u64, i * d, part_seed(s, e, 2), 1.0 / (i as f32).sqrt())?;
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
            self.gen(bt + (e * d * 2) as u64, d, part_seed(self.cfg.seed, e, 3), 0.1)?;
        }
        let x = self.dev.arena.get("x", max_tokens.max(1) * d * 2)?;
        self.gen(x, max_tokens * d, part_seed(self.cfg.seed, 1_000_000 + self.rank, 9), 1.0)?;
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
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let npack = lay.pieces.iter().filter(|p| p.src as usize == q).count();
        let nin = lay.remote_in(q).count();
        vec![
            ("send", rl.send_total as usize * rb),
            ("recv", rl.recv_total as usize * rb),
            ("comp", rl.compute_rows as usize * rb),
            ("h", rl.max_group_rows as usize * 2 * i * 2),
            ("act", rl.max_group_rows as usize * i * 2),
            ("foreign", rl.recv_transfers.len() * self.blob.len * 2),
            ("packsegs", npack * std::mem::size_of::<PackSeg>()),
            ("segs_in", nin * std::mem::size_of::<CopySeg>()),
            ("segs_out", nin * std::mem::size_of::<CopySeg>()),
            ("seg_start", (self.cfg.experts + 1) * 4),
        ]
        .into_iter()
        .map(|(n, b)| {
            let _ = d;
            (n, b)
        })
        .collect()
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
        let (d, inter) = (self.cfg.hidden, self.cfg.inter);
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
        self.ev[0].record(main)?;
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
            lambda: gate.lambda(),
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
            sin.push(CopySeg { vstart: v, len, src: a, dst: b });
            sout.push(CopySeg { vstart: v, len, src: b, dst: a });
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
        self.ev[1].record(main)?;

        // -- weight transfers on their own stream and communicator --
        let rl = &lay.ranks[r];
        let bb = self.blob.len * 2;
        let per = n / p;
        let has_x = !rl.send_transfers.is_empty() || !rl.recv_transfers.is_empty();
        if has_x {
            self.dev.wait(self.dev.xfer, &self.ev[1])?;
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
                    self.xcomm
                        .recv(foreign + (i * bb) as u64, bb, m.peer as usize, self.dev.xfer)?;
                }
            }
            Comm::group_end()?;
            self.xev[1].record(self.dev.xfer)?;
        }

        // -- dispatch --
        let (topk, rbi) = (k as i32, rb as i32);
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
        Comm::group_start()?;
        // SAFETY: offsets and sizes from the layout, mirrored on the peers.
        unsafe {
            for q in 0..p {
                if q == r {
                    continue;
                }
                if rl.send_rows[q] > 0 {
                    self.comm.send(
                        send + rl.send_off[q] * rb,
                        (rl.send_rows[q] * rb) as usize,
                        q,
                        main,
                    )?;
                }
                if rl.recv_rows[q] > 0 {
                    self.comm.recv(
                        recv + rl.recv_off[q] * rb,
                        (rl.recv_rows[q] * rb) as usize,
                        q,
                        main,
                    )?;
                }
            }
        }
        Comm::group_end()?;
        let nseg = sin.len() as i32;
        // SAFETY: segment tables list rows inside recv and comp.
        unsafe {
            self.dev.launch(
                self.dev.k.copy_rows,
                (((remote_rows as usize) * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                main,
                params!(segs_in, nseg, remote_rows, rbi),
            )?;
        }
        self.ev[2].record(main)?;

        // -- expert compute: gate_up GEMM, activation, down GEMM per group --
        let mut waited = false;
        let b = self.blob;
        let kind: i32 = match self.cfg.act {
            Act::GptOss => 0,
            Act::SwiGlu => 1,
        };
        let inter_i = inter as i32;
        for g in &rl.groups {
            let w = match g.weights {
                WeightSrc::Native(j) => native + (j as usize * bb) as u64,
                WeightSrc::Foreign(i) => {
                    if !waited {
                        self.dev.wait(main, &self.xev[1])?;
                        waited = true;
                    }
                    foreign + (i as usize * bb) as u64
                }
            };
            let xg = comp + g.row * rb;
            let rows = g.rows as usize;
            let rows_i = g.rows as i64;
            let bgu = w + 2 * b.bgu as u64;
            let pairs = rows * inter / 2;
            // SAFETY: xg holds rows x D, h rows x 2I, act rows x I (sized
            // by max_group_rows); w is a full blob.
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
        self.ev[3].record(main)?;

        // -- combine: results back to their ranks, weighted sum --
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
        Comm::group_start()?;
        // SAFETY: mirror of the dispatch exchange.
        unsafe {
            for q in 0..p {
                if q == r {
                    continue;
                }
                if rl.recv_rows[q] > 0 {
                    self.comm.send(
                        recv + rl.recv_off[q] * rb,
                        (rl.recv_rows[q] * rb) as usize,
                        q,
                        main,
                    )?;
                }
                if rl.send_rows[q] > 0 {
                    self.comm.recv(
                        send + rl.send_off[q] * rb,
                        (rl.send_rows[q] * rb) as usize,
                        q,
                        main,
                    )?;
                }
            }
        }
        Comm::group_end()?;
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
        self.ev[4].record(main)?;
        self.ev[4].sync()?;
        let mut xfer_ms = 0.0;
        if has_x {
            self.xev[1].sync()?;
            xfer_ms = self.xev[1].ms_since(&self.xev[0])?;
        }
        self.driver_peak = self.driver_peak.max(self.dev.driver_used());
        let e = &self.ev;
        Ok(RunOut::Done([
            e[1].ms_since(&e[0])?,
            e[2].ms_since(&e[1])?,
            xfer_ms,
            e[3].ms_since(&e[2])?,
            e[4].ms_since(&e[3])?,
            e[4].ms_since(&e[0])?,
        ]))
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
                by_e.entry(rt.ids[tk as usize * k + slot]).or_default().push(j);
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
    fn measure(&mut self, case: &Case, policy: Policy, gate: Gate) -> Result<Option<ResultRow>, GpuError> {
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

    fn row(&self, case: &Case, policy: Policy, gate: Gate, plan: &Plan, all: &[f64], runs: usize) -> ResultRow {
        let p = self.world;
        let stride = runs * 6 + 5;
        let per = |q: usize| &all[q * stride..(q + 1) * stride];
        let oom = (0..p).any(|q| per(q)[runs * 6 + 4] != 0.0);
        // per run, each phase's max over GPUs; then the median over runs
        let mut phase = vec![Vec::new(); 6];
        for i in 0..runs {
            for (j, ph) in phase.iter_mut().enumerate() {
                let m = (0..p)
                    .map(|q| per(q)[i * 6 + j])
                    .fold(f64::NEG_INFINITY, f64::max);
                ph.push(m);
            }
        }
        let med: Vec<f64> = phase.iter().map(|v| quantile(v, 0.5)).collect();
        let (num, den): (f64, f64) = (0..p)
            .map(|q| (per(q)[runs * 6 + 2], per(q)[runs * 6 + 3]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let mut r = case.base.clone();
        r.policy = policy.as_str().into();
        r.lambda = if policy == Policy::Llep { gate.lambda() } else { None };
        r.alpha = self.cfg.alpha;
        r.min_gemm = self.cfg.min_gemm;
        r.gpus = p as u32;
        r.source = SOURCE_MEASURED.into();
        r.device = self.dev.name.clone();
        r.profile = String::new();
        r.driver = driver_version();
        r.use_llep = plan.use_llep;
        r.imbalance_ratio = plan.imbalance_ratio;
        r.max_load_before = plan.native_max_load();
        r.mean_load = plan.native_loads.iter().sum::<u64>() as f64 / p as f64;
        r.max_load_after = plan.max_load();
        r.min_load_after = plan.gpu_loads.iter().copied().min().unwrap_or(0);
        r.loads_before = plan.native_loads.clone();
        r.loads_after = plan.gpu_loads.clone();
        r.transfers = plan.transfers.len() as u32;
        r.duplicate_transfers = plan.duplicate_transfers;
        let (d, i) = (self.cfg.hidden as u64, self.cfg.inter as u64);
        r.transfer_bytes = plan.transfers.len() as u64 * (d * 2 * i + 2 * i + i * d + d) * 2;
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
            r.rel_error = Some(if den > 0.0 { (num / den).sqrt() } else { 0.0 });
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

/// CUDA driver version as "major.minor".
pub fn driver_version() -> String {
    let mut v = 0i32;
    // SAFETY: writes one int.
    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if ok == cudarc::driver::sys::cudaError_enum::CUDA_SUCCESS {
        format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
    } else {
        String::new()
    }
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
                return Err(GpuError::Input("routing length is not tokens x top_k".into()));
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
        ev: (0..5).map(|_| Event::new()).collect::<Result<_, _>>()?,
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
        let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
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
                        s.spawn(move || worker_main(rank, cfg.gpus, o, ids, ptx, cfg, cases, progress))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(GpuError::Cuda("worker thread panicked".into()))))
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
            let rows = worker_main(pr.rank, pr.world, pr.local_rank, &ids, &ptx, cfg, cases, progress)?;
            Ok(if pr.rank == 0 { Some(rows) } else { None })
        }
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
