//! The streaming driver: a simulation fed chunk after chunk (a whole
//! workload in memory is one chunk), each chunk's layer-steps priced over
//! the threads, rows handed on in order while the next chunk is read, and
//! EPLB's placements carried across chunks from a short history.

use super::eplb::{self, EplbSim, EplbSimError, ReplicaSplit};
use super::{is_eplb, simulate_range, train, wants_eplb, Shape, SimConfig, SimError};
use crate::plan::eplb::EplbPlacement;
use crate::plan::topo::Topology;
use crate::plan::{Gate, PlanParams};
use crate::progress::Progress;
use crate::results::ResultRow;
use crate::workload::{Chunk, Streamed, Workload};

/// Where result rows go: a chunk's rows at a time, in row order.
pub type RowSink<'a> = dyn FnMut(Vec<ResultRow>) -> Result<(), SimError> + 'a;

/// Result rows a chunk of a streamed simulation aims at: bounds the rows
/// held (two chunks' worth: one being written while the next is priced).
pub const CHUNK_ROWS: usize = 1 << 15;

/// Per-rank counts a chunk holds at most (bytes), whatever its rows.
pub const CHUNK_INPUT_BYTES: usize = 32 << 20;

/// [`simulate_with`] over a streamed input: the same rows, in the same
/// order, handed to `sink` a chunk at a time, so that memory is bounded by
/// the chunk ([`CHUNK_ROWS`], [`CHUNK_INPUT_BYTES`]), not by the input.
pub fn simulate_stream(
    input: &Streamed,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    progress: &dyn Progress,
    sink: &mut RowSink,
) -> Result<(), SimError> {
    let n = chunk_layer_steps(cfg, eplb, input.gpus, input.model.num_experts as usize);
    simulate_chunked(input, n, cfg, eplb, progress, sink)
}

/// [`simulate_stream`] with chunks of at most `chunk` layer-steps (at
/// least one step): the rows do not depend on it.
pub fn simulate_chunked(
    input: &Streamed,
    chunk: usize,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    progress: &dyn Progress,
    sink: &mut RowSink,
) -> Result<(), SimError> {
    check(&input.model, input.gpus, &input.name, cfg, eplb)?;
    let chunks = input.chunks(chunk).map(|c| c.map_err(SimError::from));
    drive(chunks, cfg, eplb, progress, sink)
}

/// Layer-steps a chunk holds: about [`CHUNK_ROWS`] rows, within
/// [`CHUNK_INPUT_BYTES`] of per-rank counts.
pub fn chunk_layer_steps(
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    gpus: usize,
    experts: usize,
) -> usize {
    let per_setting = cfg.policies.len() + 2 * cfg.gates.len() + usize::from(eplb.is_some());
    let rows = per_setting * cfg.alphas.len().max(1) * cfg.min_gemms.len().max(1);
    let by_rows = CHUNK_ROWS / rows.max(1);
    let by_bytes = CHUNK_INPUT_BYTES / (gpus * experts * 8).max(1);
    by_rows.min(by_bytes).max(1)
}

/// Everything that can be wrong with a simulation's settings, checked
/// before any work.
pub(super) fn check(
    model: &crate::trace::ModelMeta,
    gpus: usize,
    name: &str,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
) -> Result<(), SimError> {
    if !model.has_dims() {
        return Err(SimError::NoDims(name.to_string()));
    }
    let eplb = eplb.filter(|_| wants_eplb(&cfg.policies));
    if let Some(&p) = cfg.policies.iter().find(|p| is_eplb(**p)) {
        let e = eplb.ok_or(EplbSimError::Unset(p))?;
        e.check(model.num_experts as usize, gpus)?;
        if cfg.pass == train::Pass::Train {
            return Err(EplbSimError::Train.into());
        }
    }
    for &a in &cfg.alphas {
        crate::plan::check_shape(
            model.num_experts as usize,
            &PlanParams {
                gpus,
                alpha: a,
                min_gemm: 0,
                gate: Gate::Always,
            },
        )?;
    }
    Topology::new(gpus, cfg.profile.nodes as usize)?;
    Ok(())
}

/// The EPLB placement and moves of every layer-step of a chunk, worked out
/// in step order (the placement rules look back over earlier steps).
pub(super) struct ChunkEplb {
    pub(super) label: String,
    pub(super) split: ReplicaSplit,
    pub(super) placements: Vec<EplbPlacement>,
    /// Per layer-step of the chunk: its placement's index, and the weight
    /// moves charged there.
    pub(super) at: Vec<(usize, Vec<crate::plan::Transfer>)>,
}

/// EPLB's state carried from chunk to chunk.
struct EplbState<'a> {
    sim: &'a EplbSim,
    cache: eplb::PlacementCache,
    history: Option<eplb::History>,
}

impl EplbState<'_> {
    fn chunk(&mut self, w: &Workload) -> ChunkEplb {
        let loads = &w.loads;
        let e = self.sim;
        let layers = loads.layers();
        let h = self
            .history
            .get_or_insert_with(|| eplb::History::new(e.window + 1, layers, loads.experts));
        let mut out = ChunkEplb {
            label: e.label(),
            split: e.split,
            placements: Vec::new(),
            at: Vec::with_capacity(loads.layer_steps()),
        };
        let mut last: Vec<Option<(usize, usize)>> = vec![None; layers];
        for sl in 0..loads.steps() {
            let s = w.first_step + sl;
            h.push(s, loads, sl);
            for (l, last) in last.iter_mut().enumerate() {
                let key = if e.oracle { s } else { e.rebalance_step(s) };
                let (pl, moves) = self.cache.step(e, &*h, s, l, w.gpus);
                let idx = match *last {
                    Some((k, i)) if k == key => i,
                    _ => {
                        out.placements.push(pl.clone());
                        *last = Some((key, out.placements.len() - 1));
                        out.placements.len() - 1
                    }
                };
                out.at.push((idx, moves));
            }
        }
        out
    }
}

/// Simulate chunk after chunk: each chunk's layer-steps split over the
/// threads in contiguous ranges (rows stay in order), the previous chunk's
/// rows handed to `sink` and the next chunk read while they run.
pub(super) fn drive<'a>(
    mut chunks: impl Iterator<Item = Result<Chunk<'a>, SimError>>,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    progress: &dyn Progress,
    sink: &mut RowSink,
) -> Result<(), SimError> {
    let eplb = eplb.filter(|_| wants_eplb(&cfg.policies));
    let mut state = eplb.map(|sim| EplbState {
        sim,
        cache: eplb::PlacementCache::default(),
        history: None,
    });
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.threads
    };
    // each thread's rows of the previous chunk, in order
    let mut pending: Vec<Vec<ResultRow>> = Vec::new();
    let mut cur = chunks.next().transpose()?;
    while let Some(w) = cur {
        let shape = Shape::from_model(&w.model);
        let steps = state.as_mut().map(|st| st.chunk(&w));
        let n_ls = w.loads.layer_steps();
        let t = threads.clamp(1, n_ls.max(1));
        let per = n_ls.div_ceil(t);
        let (parts, next, sunk) = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..t)
                .map(|i| {
                    let (w, shape, steps) = (&*w, &shape, steps.as_ref());
                    sc.spawn(move || {
                        let range = (i * per).min(n_ls)..((i + 1) * per).min(n_ls);
                        simulate_range(w, range, shape, cfg, steps, progress)
                    })
                })
                .collect();
            let sunk = pending.drain(..).try_for_each(&mut *sink);
            let next = chunks.next().transpose();
            let parts: Vec<Vec<ResultRow>> = handles
                .into_iter()
                .map(|h| h.join().expect("simulation thread"))
                .collect();
            (parts, next, sunk)
        });
        sunk?;
        pending = parts;
        cur = next?;
    }
    pending.into_iter().try_for_each(sink)
}
