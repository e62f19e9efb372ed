//! The parts of a hardware profile that let the cost model generalise past
//! the shapes and sizes it was calibrated on (issue 12): per-projection
//! GEMM tables over (M rows, N, K), per-message prices of grouped NCCL
//! send/recv, kernel launches and host syncs per phase, and the memory
//! baseline split into what is really allocated. Every part is optional in
//! a profile; without it the cost model keeps its older formula.
//!
//! GEMM tables, and why they are interpolated the way they are:
//! - along M (rows of one expert GEMM) the grid is log-spaced and the
//!   lookup is piecewise linear *in M*: a GEMM's time is flat while it is
//!   latency or weight-read bound and affine in M once it is compute bound;
//!   linear interpolation in M is exact on both, where interpolation in
//!   log M would over-price an affine stretch (up to ~6% at mid-octave);
//! - across shapes, a missing (N, K) is priced from the tables of the same
//!   projection by scaling time with N*K (both the weight bytes read at
//!   small M and the FLOPs at large M are proportional to N*K), the
//!   time per N*K being interpolated linearly in log(N*K) between the two
//!   nearest tables that bracket the shape, so the efficiency change with
//!   size between them is kept (the "efficiency factor"); beyond the
//!   measured range the nearest table's time per N*K is used, never below
//!   the fastest GEMM the card was measured to do (the launch floor).

use serde::{Deserialize, Serialize};

/// Which projection of an expert a table times. Replay's order per GEMM
/// unit is gate_up (with its activation kernel) then down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    /// `[M, D] x [D, 2I]` (N = 2I, K = D) followed by the activation kernel
    /// on its output, as replay runs them.
    GateUp,
    /// `[M, I] x [I, D]` (N = D, K = I).
    Down,
    /// Backward data gradient (not calibrated yet; accepted in profiles).
    Dgrad,
    /// Backward weight gradient (not calibrated yet; accepted in profiles).
    Wgrad,
}

impl Proj {
    pub fn as_str(self) -> &'static str {
        match self {
            Proj::GateUp => "gate_up",
            Proj::Down => "down",
            Proj::Dgrad => "dgrad",
            Proj::Wgrad => "wgrad",
        }
    }
}

/// Time of one GEMM of one projection against its rows M, for one (N, K),
/// measured with many different experts' GEMMs back to back (distinct
/// weights, as a layer runs them), milliseconds per GEMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmTable {
    pub proj: Proj,
    pub n: u32,
    pub k: u32,
    /// (rows M, ms) sorted by M.
    pub points: Vec<(f64, f64)>,
}

/// Grouped NCCL send/recv priced per message: one grouped call costs
/// `latency_us`, each send or receive in it `per_msg_us`, and the larger
/// of bytes out and bytes in moves at `gbps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MsgModel {
    pub latency_us: f64,
    pub per_msg_us: f64,
    pub gbps: f64,
}

impl MsgModel {
    /// One grouped exchange with `msgs` sends and receives moving `bytes`
    /// (the larger direction), ms; nothing to move costs nothing.
    pub fn ms(&self, msgs: u64, bytes: u64) -> f64 {
        if msgs == 0 {
            return 0.0;
        }
        (self.latency_us + self.per_msg_us * msgs as f64) * 1e-3
            + bytes as f64 / (self.gbps * 1e9) * 1e3
    }
}

/// Fixed costs of issuing work, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Launches {
    /// One small kernel queued behind another on the same stream (the gap
    /// it adds on the GPU).
    pub launch_us: f64,
    /// A device-to-host copy the host waits for (launch, copy, wake-up).
    pub host_sync_us: f64,
    /// One small host-to-device table upload on the stream.
    pub upload_us: f64,
}

/// What a replayed layer pays beyond the sum of its calibrated parts, at
/// the sizes where those parts are small: fitted to replayed layers of the
/// calibration shapes only (`scripts/accuracy/fit_layer.py`), never to the
/// held-out shapes the fit is scored on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerFit {
    /// Overhead phase (count all-gather, the host sync on it, planning,
    /// laying out and uploading the tables): a fixed part, microseconds...
    pub overhead_us: f64,
    /// ... plus this per expert group planned (summed over GPUs: the
    /// layout and pack tables grow with it) ...
    pub overhead_per_group_us: f64,
    /// ... plus this per 1,000 token-copies of the busiest GPU (routing
    /// kernel, pack table).
    pub overhead_per_kcopy_us: f64,
    /// GEMM units inside a layer against the GEMM tables (measured with
    /// units back to back but nothing else queued): unit time =
    /// `unit_scale` x table time + `unit_us`.
    pub unit_scale: f64,
    pub unit_us: f64,
    /// The host's floor per unit, microseconds: replay issues each unit as
    /// two cuBLASLt calls and an activation launch, and with units of a few
    /// rows the GPU drains its queue faster than the host fills it. So a
    /// GPU's native units take at least their count times this, and its
    /// foreign units (issued once their weights are in) the same; the GPU's
    /// own time of large units hides the host's time of small ones (0:
    /// none).
    #[serde(default)]
    pub unit_floor_us: f64,
    /// The same floor with each compute phase's units launched as one CUDA
    /// graph (`--cuda-graphs on`): no host call per unit, only the GPU's
    /// own gap between kernels (0: none).
    #[serde(default)]
    pub graph_floor_us: f64,
    /// Token exchange and weight transfers share the link: on a GPU that
    /// moves weights, the exchange's link time grows by this fraction, and
    /// its transfer by this fraction of the exchange's link time.
    pub contention: f64,
    /// ... plus this much per token peer beyond the first (a GPU of P on
    /// one node exchanges tokens with P - 1 peers, every one of them a flow
    /// on the same port as its weights): the link-sharing fraction is
    /// `contention + contention_per_peer x (P - 2)`, at most 1 (the two
    /// flows taking turns). Fitted on 2 and 4 GPUs; beyond that it is an
    /// extrapolation, which the cap bounds.
    #[serde(default)]
    pub contention_per_peer: f64,
    /// The token exchange is one grouped call that every GPU finishes only
    /// when its slowest peer does, so a weight transfer anywhere slows
    /// every GPU's dispatch: by this fraction of the longest transfer. On
    /// one node only (it was fitted there); across nodes the NIC's own
    /// prices apply.
    #[serde(default)]
    pub dispatch_wait: f64,
    /// Replay's `llep-auto` decision (a second plan, a clone of its
    /// arbiter, both prices) per layer, microseconds: charged to the twins
    /// of replayed `llep-auto` rows only (see `cost::charge_auto`).
    #[serde(default)]
    pub auto_us: f64,
}

impl LayerFit {
    /// Overhead phase, ms, of a layer with `groups` expert groups over all
    /// GPUs and `copies` token-copies on the busiest GPU.
    pub fn overhead_ms(&self, groups: u64, copies: u64) -> f64 {
        (self.overhead_us
            + self.overhead_per_group_us * groups as f64
            + self.overhead_per_kcopy_us * copies as f64 * 1e-3)
            * 1e-3
    }

    /// The link-sharing fraction with `gpus` GPUs on the node, at most 1.
    pub fn contention_on(&self, gpus: usize) -> f64 {
        let f = self.contention + self.contention_per_peer * gpus.saturating_sub(2) as f64;
        f.min(1.0)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let all = [
            self.overhead_us,
            self.overhead_per_group_us,
            self.overhead_per_kcopy_us,
            self.unit_scale,
            self.unit_us,
            self.unit_floor_us,
            self.graph_floor_us,
            self.contention,
            self.contention_per_peer,
            self.dispatch_wait,
            self.auto_us,
        ];
        // costs and link-sharing fractions: never negative
        let nonneg = [
            self.unit_floor_us,
            self.graph_floor_us,
            self.contention,
            self.contention_per_peer,
            self.dispatch_wait,
        ];
        if all.iter().all(|v| v.is_finite())
            && self.unit_scale > 0.0
            && nonneg.iter().all(|&v| v >= 0.0)
        {
            Ok(())
        } else {
            Err("layer_fit: terms must be finite, unit_scale > 0, the floors, contention, contention_per_peer and dispatch_wait >= 0".into())
        }
    }
}

/// Kernels of replay's dispatch (pack, place) and of its combine (return,
/// weighted sum) besides the exchange itself.
pub const DISPATCH_LAUNCHES: u64 = 2;
pub const COMBINE_LAUNCHES: u64 = 2;

/// Memory a GPU holds beyond the layer's own buffers, split by what
/// allocates it, bytes; and the allocation grain of the layer's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct MemModel {
    /// CUDA context, loaded kernels, streams, events, cuBLAS handle, both
    /// NCCL communicators before they connect.
    pub context_bytes: u64,
    /// cuBLAS workspace, allocated at the first GEMM.
    pub cublas_workspace_bytes: u64,
    /// Token communicator buffers per peer GPU (all peers connect: every
    /// layer exchanges counts and tokens with all of them).
    pub nccl_per_peer_bytes: u64,
    /// Weight communicator buffers per peer the GPU moves weights with
    /// (NCCL connects point-to-point peers on first use), in a profile that
    /// has no split by direction (below): charged once per peer.
    #[serde(default)]
    pub nccl_xfer_per_peer_bytes: u64,
    /// Weight communicator buffers a GPU allocates per peer it has received
    /// from, and per peer it has sent to (`calibrate` measures both around
    /// a first one-way transfer). Both 0 in older profiles.
    #[serde(default)]
    pub nccl_xfer_recv_per_peer_bytes: u64,
    #[serde(default)]
    pub nccl_xfer_send_per_peer_bytes: u64,
    /// Charge the weight communicator's buffers for every peer, whether or
    /// not this layer moves weights with it: NCCL keeps a peer connected
    /// once any layer did, so a process that ever ran LLEP holds them all
    /// (the safe side when the question is whether a layer fits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub xfer_all_peers: bool,
    /// Every buffer of the layer is rounded up to this many bytes (the
    /// replay's arena grain, 2 MiB); 0 means no rounding.
    #[serde(default)]
    pub grain_bytes: u64,
}

impl MemModel {
    pub fn round(&self, bytes: u64) -> u64 {
        let g = self.grain_bytes;
        if g == 0 {
            bytes
        } else if g.is_power_of_two() {
            // a mask, not a division: this runs for every buffer of every GPU
            (bytes.max(256) + g - 1) & !(g - 1)
        } else {
            bytes.max(256).div_ceil(g) * g
        }
    }

    /// Weight communicator bytes of a GPU connected to `recv` peers it has
    /// received from and `send` peers it has sent to. A profile without
    /// the split charges its one per-peer figure once per peer (the larger
    /// count: a pair connected both ways is one peer there).
    pub fn weight_links_bytes(&self, recv: u64, send: u64) -> u64 {
        let (r, s) = (
            self.nccl_xfer_recv_per_peer_bytes,
            self.nccl_xfer_send_per_peer_bytes,
        );
        if r == 0 && s == 0 {
            recv.max(send) * self.nccl_xfer_per_peer_bytes
        } else {
            recv * r + send * s
        }
    }
}

/// Piecewise-linear interpolation in the first coordinate; beyond the ends,
/// extend with the slope of the outermost segment (time is ~linear there),
/// never below 0.
pub fn interp(points: &[(f64, f64)], x: f64) -> f64 {
    interp_at(points, x, points.iter().position(|p| p.0 >= x))
}

/// [`interp`] with `at`, the first point at or past `x` (`None`: none is).
fn interp_at(points: &[(f64, f64)], x: f64, at: Option<usize>) -> f64 {
    if points.len() == 1 {
        return points[0].1 * x / points[0].0;
    }
    let i = match at {
        Some(0) => 1,
        Some(i) => i,
        None => points.len() - 1,
    };
    let (a, b) = (points[i - 1], points[i]);
    let v = a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0);
    v.max(0.0)
}

/// Like [`interp`], but below the first point the time is held at the
/// first point's (a GEMM of fewer rows is not faster than the smallest
/// measured one: it is latency bound there).
fn interp_rows(points: &[(f64, f64)], m: f64) -> f64 {
    match points.first() {
        Some(&(m0, t0)) if m <= m0 => t0,
        _ => interp(points, m),
    }
}

/// [`interp_rows`] on points strictly increasing in M (what
/// [`check_tables`] asks of a profile), found by bisection: the same point
/// as the linear scan, in fewer steps on a 27-point grid.
fn interp_rows_sorted(points: &[(f64, f64)], m: f64) -> f64 {
    match points.first() {
        Some(&(m0, t0)) if m <= m0 => t0,
        _ => {
            let i = points.partition_point(|p| p.0 < m);
            interp_at(points, m, (i < points.len()).then_some(i))
        }
    }
}

/// Rows time of table `t`, by bisection when `sorted` (checked once by
/// [`TablePick::new`]).
fn rows_ms(t: &GemmTable, m: f64, sorted: bool) -> f64 {
    if sorted {
        interp_rows_sorted(&t.points, m)
    } else {
        interp_rows(&t.points, m)
    }
}

fn strictly_increasing(t: &GemmTable) -> bool {
    t.points.windows(2).all(|w| w[0].0 < w[1].0)
}

/// Make every table non-decreasing in M: each point's time becomes the
/// least time measured at that M or more rows. Timing noise is one-sided
/// (interference only adds time), and a GEMM of fewer rows does no more
/// work, so where the grid's small-M points scatter (they are launch and
/// latency bound, 10-20 us) the minimum over larger M is the better
/// estimate; compute-bound stretches, increasing already, are unchanged.
pub fn monotone_tables(tables: &mut [GemmTable]) {
    for t in tables {
        let mut least = f64::INFINITY;
        for p in t.points.iter_mut().rev() {
            least = least.min(p.1);
            p.1 = least;
        }
    }
}

/// Time of one GEMM of `proj` with `m` rows and shape (N, K) from `tables`,
/// ms; `None` when no table of that projection exists.
pub fn table_ms(tables: &[GemmTable], proj: Proj, m: f64, n: u64, k: u64) -> Option<f64> {
    if m <= 0.0 {
        return Some(0.0);
    }
    Some(TablePick::new(tables, proj, n, k)?.ms(m))
}

/// The tables [`table_ms`] reads for one (projection, N, K): the choice
/// depends on the shape only, not on the rows M, so the cost model makes
/// it once per shape and keeps only the interpolation per expert group.
#[derive(Debug, Clone, Copy)]
pub enum TablePick<'a> {
    /// A table of exactly this shape (and whether its rows are strictly
    /// increasing, so that bisection finds the same point).
    Exact(&'a GemmTable, bool),
    /// The nearest table in size N*K (`lo`; below the shape when one is),
    /// the nearest above with the shape's place between them in log N*K
    /// when the two differ in size, and the fastest first point of the
    /// projection's tables.
    Scaled {
        lo: &'a GemmTable,
        hi: Option<(&'a GemmTable, f64)>,
        floor: f64,
        n: f64,
        k: f64,
        sorted: bool,
    },
}

fn size(t: &GemmTable) -> f64 {
    (t.n as f64 * t.k as f64).ln()
}

impl<'a> TablePick<'a> {
    /// Pick the tables for `proj` at (N, K); `None` when no table of that
    /// projection exists.
    pub fn new(tables: &'a [GemmTable], proj: Proj, n: u64, k: u64) -> Option<TablePick<'a>> {
        let same = || {
            tables
                .iter()
                .filter(move |t| t.proj == proj && !t.points.is_empty())
        };
        if let Some(t) = same().find(|t| t.n as u64 == n && t.k as u64 == k) {
            return Some(TablePick::Exact(t, strictly_increasing(t)));
        }
        let aspect = |t: &GemmTable| (t.n as f64 / t.k as f64).ln();
        let (x, want_aspect) = ((n as f64 * k as f64).ln(), (n as f64 / k as f64).ln());
        // the nearest table in size on each side; among tables of one size,
        // the aspect ratio nearest the target
        let off = |t: &GemmTable| (aspect(t) - want_aspect).abs();
        let closer = |a: &GemmTable, b: &GemmTable, below: bool| {
            let (sa, sb) = (size(a), size(b));
            if sa != sb {
                (sa > sb) == below
            } else {
                off(a) < off(b)
            }
        };
        let mut below: Option<&GemmTable> = None;
        let mut above: Option<&GemmTable> = None;
        let mut floor = f64::INFINITY;
        for t in same() {
            floor = floor.min(t.points[0].1);
            if size(t) <= x && below.is_none_or(|b| closer(t, b, true)) {
                below = Some(t);
            }
            if size(t) >= x && above.is_none_or(|b| closer(t, b, false)) {
                above = Some(t);
            }
        }
        let (lo, hi) = match (below, above) {
            (Some(a), Some(b)) if size(b) > size(a) => {
                (a, Some((b, (x - size(a)) / (size(b) - size(a)))))
            }
            (Some(a), _) => (a, None),
            (None, Some(b)) => (b, None),
            (None, None) => return None,
        };
        Some(TablePick::Scaled {
            lo,
            hi,
            floor,
            n: n as f64,
            k: k as f64,
            sorted: strictly_increasing(lo) && hi.is_none_or(|(b, _)| strictly_increasing(b)),
        })
    }

    /// Time of one GEMM of `m` rows (`m` > 0), ms.
    pub fn ms(&self, m: f64) -> f64 {
        match *self {
            TablePick::Exact(t, sorted) => rows_ms(t, m, sorted),
            TablePick::Scaled {
                lo,
                hi,
                floor,
                n,
                k,
                sorted,
            } => {
                let per_nk = |t: &GemmTable| rows_ms(t, m, sorted) / (t.n as f64 * t.k as f64);
                let u = match hi {
                    Some((b, f)) => per_nk(lo) + (per_nk(b) - per_nk(lo)) * f,
                    None => per_nk(lo),
                };
                (u * n * k).max(floor)
            }
        }
    }
}

/// One expert group of `tokens` rows of shape (D, I) as replay computes it:
/// cut into units of at most `chunk` rows, each a gate_up GEMM with its
/// activation and a down GEMM, back to back. `None` unless both projections
/// have tables.
pub fn group_ms(tables: &[GemmTable], tokens: u64, d: u64, i: u64, chunk: u64) -> Option<f64> {
    if tokens == 0 {
        return Some(0.0);
    }
    Some(GroupTables::new(tables, d, i, chunk)?.ms(tokens))
}

/// [`group_ms`] with its tables picked once for the shape (D, I), and the
/// time of a full chunk computed once: what the cost model prices every
/// expert group with.
#[derive(Debug, Clone, Copy)]
pub struct GroupTables<'a> {
    gate_up: TablePick<'a>,
    down: TablePick<'a>,
    chunk: u64,
    full_unit: f64,
}

impl<'a> GroupTables<'a> {
    /// `None` unless both projections have tables.
    pub fn new(tables: &'a [GemmTable], d: u64, i: u64, chunk: u64) -> Option<GroupTables<'a>> {
        let gate_up = TablePick::new(tables, Proj::GateUp, 2 * i, d)?;
        let down = TablePick::new(tables, Proj::Down, d, i)?;
        let chunk = chunk.max(1);
        let mut g = GroupTables {
            gate_up,
            down,
            chunk,
            full_unit: 0.0,
        };
        g.full_unit = g.unit(chunk);
        Some(g)
    }

    fn unit(&self, m: u64) -> f64 {
        self.gate_up.ms(m as f64) + self.down.ms(m as f64)
    }

    /// Time of one group of `tokens` rows, ms.
    pub fn ms(&self, tokens: u64) -> f64 {
        self.ms_with(tokens, |m| self.unit(m))
    }

    /// [`GroupTables::ms`], a part unit's time read from `units` (bound
    /// to these tables by [`UnitTimes::bind`]) where it was computed
    /// before: the same value, the interpolations done once per row count.
    pub fn ms_cached(&self, tokens: u64, units: &mut UnitTimes) -> f64 {
        self.ms_with(tokens, |m| match units.ms.get_mut(m as usize) {
            Some(x) if x.to_bits() != UNIT_UNKNOWN => *x,
            Some(x) => {
                *x = self.unit(m);
                *x
            }
            None => self.unit(m),
        })
    }

    fn ms_with(&self, tokens: u64, unit: impl FnOnce(u64) -> f64) -> f64 {
        if tokens < self.chunk {
            // one part unit (most groups): no division; `0.0 +` as below
            return if tokens > 0 { 0.0 + unit(tokens) } else { 0.0 };
        }
        let (full, rest) = (tokens / self.chunk, tokens % self.chunk);
        let mut t = 0.0;
        if full > 0 {
            t += full as f64 * self.full_unit;
        }
        if rest > 0 {
            t += unit(rest);
        }
        t
    }

    /// Everything a unit's time depends on, as bits: the picked tables'
    /// shapes and points, and how they are combined.
    fn key_into(&self, out: &mut Vec<u64>) {
        out.clear();
        out.push(self.chunk);
        for pick in [&self.gate_up, &self.down] {
            pick.key_into(out);
        }
    }
}

/// A NaN no unit time is: the mark of a row count not priced yet.
const UNIT_UNKNOWN: u64 = u64::MAX;

/// Unit times kept at most for row counts below this (a chunk is 16,384
/// rows in the built-in profiles): 512 KiB.
const UNIT_CACHE_ROWS: u64 = 1 << 16;

/// The time of one GEMM unit (gate_up and down) per row count below the
/// activation chunk, for one [`GroupTables`], filled as asked: a layer's
/// groups take a few thousand row counts, so over a trace most unit times
/// are read, not interpolated again. Whoever keeps it (`sim::cost::
/// GroupMemo`) binds it to the tables of each price; it forgets its times
/// when the tables differ in any point from those it holds times of.
#[derive(Debug, Default, Clone)]
pub struct UnitTimes {
    key: Vec<u64>,
    scratch: Vec<u64>,
    /// `[m]`: the unit time of `m` rows (`UNIT_UNKNOWN`: not priced yet).
    ms: Vec<f64>,
}

impl UnitTimes {
    /// Hold the unit times of `tables`: keep those held if they are of the
    /// same tables (compared by value, not by address), else forget them.
    pub fn bind(&mut self, tables: &GroupTables) {
        tables.key_into(&mut self.scratch);
        if self.scratch != self.key {
            std::mem::swap(&mut self.scratch, &mut self.key);
            self.ms.clear();
            let rows = tables.chunk.min(UNIT_CACHE_ROWS) as usize;
            self.ms.resize(rows, f64::from_bits(UNIT_UNKNOWN));
        }
    }

    /// Forget every time.
    pub fn clear(&mut self) {
        self.key.clear();
        self.ms.clear();
    }
}

impl TablePick<'_> {
    fn key_into(&self, out: &mut Vec<u64>) {
        let table = |t: &GemmTable, out: &mut Vec<u64>| {
            out.extend([t.proj as u64, u64::from(t.n), u64::from(t.k)]);
            out.push(t.points.len() as u64);
            for &(m, ms) in &t.points {
                out.extend([m.to_bits(), ms.to_bits()]);
            }
        };
        match *self {
            TablePick::Exact(t, sorted) => {
                out.extend([0, u64::from(sorted)]);
                table(t, out);
            }
            TablePick::Scaled {
                lo,
                hi,
                floor,
                n,
                k,
                sorted,
            } => {
                out.extend([
                    1,
                    u64::from(sorted),
                    floor.to_bits(),
                    n.to_bits(),
                    k.to_bits(),
                ]);
                table(lo, out);
                match hi {
                    Some((t, f)) => {
                        out.extend([1, f.to_bits()]);
                        table(t, out);
                    }
                    None => out.push(0),
                }
            }
        }
    }
}

/// Check tables: points non-empty, rows strictly increasing, times finite
/// and non-negative, shapes non-zero.
pub(crate) fn check_tables(tables: &[GemmTable]) -> Result<(), String> {
    for t in tables {
        let name = format!("gemm_tables {} N={} K={}", t.proj.as_str(), t.n, t.k);
        if t.n == 0 || t.k == 0 {
            return Err(format!("{name}: N and K must be > 0"));
        }
        if t.points.is_empty()
            || t.points.windows(2).any(|w| w[1].0 <= w[0].0)
            || t.points
                .iter()
                .any(|p| !(p.0 > 0.0 && p.1.is_finite() && p.1 >= 0.0))
        {
            return Err(format!(
                "{name}: points must be non-empty, rows > 0 strictly increasing, times >= 0"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(proj: Proj, n: u32, k: u32, f: impl Fn(f64) -> f64) -> GemmTable {
        let ms = [1.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];
        GemmTable {
            proj,
            n,
            k,
            points: ms.iter().map(|&m| (m, f(m))).collect(),
        }
    }

    #[test]
    fn interpolation_extends_linearly() {
        let pts = [(1.0, 1.0), (3.0, 2.0)];
        assert_eq!(interp(&pts, 2.0), 1.5);
        assert_eq!(interp(&pts, 5.0), 3.0);
        assert_eq!(interp(&pts, 0.0), 0.5);
    }

    #[test]
    fn exact_table_is_linear_in_rows_and_flat_below_the_grid() {
        let t = vec![table(Proj::GateUp, 5760, 2880, |m| 0.01 + m * 1e-4)];
        let v = table_ms(&t, Proj::GateUp, 640.0, 5760, 2880).unwrap();
        assert!((v - (0.01 + 640.0 * 1e-4)).abs() < 1e-12, "{v}");
        let tiny = table_ms(&t, Proj::GateUp, 0.5, 5760, 2880).unwrap();
        assert_eq!(tiny, t[0].points[0].1);
        assert_eq!(table_ms(&t, Proj::Down, 8.0, 2880, 2880), None);
    }

    #[test]
    fn missing_shape_scales_by_size_between_bracketing_tables() {
        // time per N*K: 2e-9 ms at the small table, 1e-9 at the big one
        let a = table(Proj::Down, 1000, 1000, |m| m * 2e-9 * 1e6);
        let b = table(Proj::Down, 4000, 4000, |m| m * 1e-9 * 16e6);
        let t = vec![a, b];
        // geometric middle in N*K: 2000 x 2000, half way in log size
        let v = table_ms(&t, Proj::Down, 1024.0, 2000, 2000).unwrap();
        let want = 1024.0 * 1.5e-9 * 4e6;
        assert!((v - want).abs() < 1e-9 * want, "{v} vs {want}");
        // beyond the largest: the largest's time per N*K
        let v = table_ms(&t, Proj::Down, 1024.0, 8000, 8000).unwrap();
        assert!((v - 1024.0 * 1e-9 * 64e6).abs() < 1e-9);
        // far below the smallest: the launch floor, not a vanishing time
        let v = table_ms(&t, Proj::Down, 1.0, 10, 10).unwrap();
        assert_eq!(v, 2e-9 * 1e6);
    }

    #[test]
    fn bisection_finds_the_linear_scans_point() {
        let t = table(Proj::Down, 7168, 2048, |m| {
            0.01 + m * 1e-5 + (m / 700.0).sin().abs()
        });
        assert!(strictly_increasing(&t));
        let grid = t.points.iter().map(|p| p.0);
        for m in (0..70_000).step_by(7).map(|m| m as f64 * 0.5).chain(grid) {
            assert_eq!(rows_ms(&t, m, true), rows_ms(&t, m, false), "m={m}");
        }
        let mut bad = t.clone();
        bad.points.swap(3, 4);
        assert!(!strictly_increasing(&bad));
    }

    #[test]
    fn group_is_chunked_like_replay() {
        let t = vec![
            table(Proj::GateUp, 200, 100, |m| 1.0 + m),
            table(Proj::Down, 100, 100, |m| 2.0 + m),
        ];
        // D = 100, I = 100: chunk 4096 -> 4096 + 4096 + 1808 rows
        let g = group_ms(&t, 10_000, 100, 100, 4096).unwrap();
        let unit = |m: f64| (1.0 + m) + (2.0 + m);
        assert!(
            (g - (2.0 * unit(4096.0) + unit(1808.0))).abs() < 1e-9,
            "{g}"
        );
        assert_eq!(group_ms(&t[..1], 10, 100, 100, 4096), None);
        assert_eq!(group_ms(&t, 0, 100, 100, 4096), Some(0.0));
    }

    #[test]
    fn kept_unit_times_are_the_computed_ones_and_forgotten_for_other_tables() {
        let exact = vec![
            table(Proj::GateUp, 200, 100, |m| {
                0.01 + m * 1e-4 + (m / 90.0).sin().abs()
            }),
            table(Proj::Down, 100, 100, |m| 0.02 + m * 3e-5),
        ];
        // no table of (200, 150) or (100, 150): both picks are scaled
        let mut scaled = exact.clone();
        scaled.push(table(Proj::GateUp, 400, 400, |m| 0.05 + m * 2e-4));
        scaled.push(table(Proj::Down, 400, 400, |m| 0.04 + m * 1e-4));
        let mut units = UnitTimes::default();
        let mut rng = crate::trace::tokens::SplitMix64::new(3);
        for (tables, i) in [(&exact, 100), (&scaled, 150), (&exact, 100)] {
            for chunk in [64, 4096, 1 << 17] {
                let g = GroupTables::new(tables, 100, i, chunk).unwrap();
                units.bind(&g);
                // twice over the same counts: computed, then read back
                let counts: Vec<u64> = (0..400).map(|_| rng.below(3 * chunk)).collect();
                for &c in counts.iter().chain(&counts) {
                    let (want, got) = (g.ms(c), g.ms_cached(c, &mut units));
                    assert_eq!(want.to_bits(), got.to_bits(), "{c} rows, chunk {chunk}");
                }
            }
        }
        // the same tables again under another profile's copy: times kept
        let g = GroupTables::new(&exact, 100, 100, 64).unwrap();
        units.bind(&g);
        g.ms_cached(10, &mut units);
        let copy = exact.clone();
        units.bind(&GroupTables::new(&copy, 100, 100, 64).unwrap());
        assert!(units.ms.iter().any(|x| x.to_bits() != UNIT_UNKNOWN));
        // one point changed: every time forgotten
        let mut moved = exact.clone();
        moved[1].points[2].1 += 1e-9;
        let g = GroupTables::new(&moved, 100, 100, 64).unwrap();
        units.bind(&g);
        assert!(units.ms.iter().all(|x| x.to_bits() == UNIT_UNKNOWN));
        assert_eq!(g.ms_cached(10, &mut units).to_bits(), g.ms(10).to_bits());
    }

    #[test]
    fn message_model_prices_latency_messages_and_bytes() {
        let m = MsgModel {
            latency_us: 10.0,
            per_msg_us: 2.0,
            gbps: 100.0,
        };
        assert_eq!(m.ms(0, 1 << 20), 0.0);
        let v = m.ms(3, 1_000_000);
        assert!((v - (0.016 + 0.01)).abs() < 1e-12, "{v}");
    }

    #[test]
    fn tables_read_as_non_decreasing_in_rows() {
        let mut t = vec![GemmTable {
            proj: Proj::GateUp,
            n: 10,
            k: 10,
            points: vec![
                (1.0, 0.020),
                (16.0, 0.015),
                (64.0, 0.018),
                (256.0, 0.016),
                (1024.0, 0.05),
            ],
        }];
        monotone_tables(&mut t);
        let v: Vec<f64> = t[0].points.iter().map(|p| p.1).collect();
        // a noisy small-M point takes the least time measured at more rows;
        // the increasing (compute-bound) end is left alone
        assert_eq!(v, [0.015, 0.015, 0.016, 0.016, 0.05]);
    }

    #[test]
    fn layer_fit_overhead_adds_its_terms_and_bad_fits_are_refused() {
        let f = LayerFit {
            overhead_us: 50.0,
            overhead_per_group_us: 0.5,
            overhead_per_kcopy_us: 2.0,
            unit_scale: 1.0,
            unit_us: -1.0,
            unit_floor_us: 20.0,
            graph_floor_us: 5.0,
            contention: 0.2,
            contention_per_peer: 0.1,
            dispatch_wait: 0.1,
            auto_us: 40.0,
        };
        assert!((f.contention_on(2) - 0.2).abs() < 1e-12);
        assert!((f.contention_on(4) - 0.4).abs() < 1e-12);
        // the two flows at most take turns, however many peers
        assert_eq!(f.contention_on(64), 1.0);
        assert!((f.overhead_ms(100, 4000) - (50.0 + 50.0 + 8.0) * 1e-3).abs() < 1e-12);
        assert!(f.check().is_ok());
        assert!(LayerFit {
            unit_scale: 0.0,
            ..f
        }
        .check()
        .is_err());
        assert!(LayerFit {
            contention: -0.1,
            ..f
        }
        .check()
        .is_err());
        assert!(LayerFit {
            dispatch_wait: -0.1,
            ..f
        }
        .check()
        .is_err());
        assert!(LayerFit {
            unit_floor_us: -1.0,
            ..f
        }
        .check()
        .is_err());
        assert!(LayerFit {
            graph_floor_us: -1.0,
            ..f
        }
        .check()
        .is_err());
        assert!(LayerFit {
            overhead_us: f64::NAN,
            ..f
        }
        .check()
        .is_err());
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut t = table(Proj::GateUp, 10, 10, |m| m);
        assert!(check_tables(std::slice::from_ref(&t)).is_ok());
        t.points.swap(0, 1);
        assert!(check_tables(&[t]).is_err());
    }
}
