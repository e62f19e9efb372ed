//! The token exchange and weight transfers through the GPUs' copy engines
//! (`replay --exchange copy-engine`): peer-to-peer copies over NVLink that
//! take no SMs from the expert GEMMs, where NCCL's send/recv kernels do.
//! (The GEMMs beside them still lose time: at the power cap, NVLink and
//! the copy engines take power the SMs then lack; see
//! `reports/replay-floor/session8-ce/`.) One process holds every GPU (the
//! default launch), so each rank sees the others' buffers and events
//! directly.
//!
//! - Tokens are pushed, piece by piece, straight where they are used: a
//!   rank copies each piece of its send rows into the peer's compute rows
//!   (dispatch), and each piece of its results into the owner's send rows
//!   (combine), at the rows the shared layout names ([`Layout::pushes`]).
//!   A receiver waits on the sender's event, then computes. No kernel
//!   places or copies out the rows, so the exchange takes no SMs from the
//!   GEMMs and adds nothing to the main stream. (`LLEP_TRACE_CE_ROWS=staged`
//!   keeps the earlier path for comparison: one push per peer through the
//!   receive buffer, rows placed and copied out by a kernel. The training
//!   step's backward always takes that path.)
//! - Weights are pulled: a borrower copies the lender's native blob into its
//!   foreign slot, once the lender's first round of tokens is out. Native
//!   blobs are written only at set-up.
//! - A training step's backward mirrors the forward: its two exchanges are
//!   pushed the same way (`backward`), and each lender pulls its experts'
//!   gradient blobs from the borrowers once their weight gradients are
//!   done.
//! - `cuStreamWaitEvent` waits for the event's last record *issued so far*,
//!   so a rank may wait on a peer's event only once the peer has issued
//!   this run's record. The ranks meet at a host barrier ([`PeerLink::meet`])
//!   after issuing their pushes; it blocks host threads only, never the
//!   streams.

use super::layout::Layout;
use super::phases::{CaseBufs, LayoutBufs, Ranges, Remote};
use super::pipeline::{DE, PE};
use super::worker::{Worker, E_DISPATCHED, E_PACKED, E_RET, E_RETURNED};
use super::GpuError;
use cudarc::driver::sys as ds;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How tokens and weights move between GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exchange {
    /// NCCL grouped send/recv (kernels on the SMs); any launch.
    #[default]
    Nccl,
    /// Peer-to-peer copies on the copy engines; one process, one node.
    CopyEngine,
}

impl Exchange {
    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Nccl => "nccl",
            Exchange::CopyEngine => "copy-engine",
        }
    }

    /// A results row's `exchange` value back (older files hold none: NCCL).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "nccl" => Some(Exchange::Nccl),
            "copy-engine" => Some(Exchange::CopyEngine),
            _ => None,
        }
    }
}

/// What one rank shows the others: its context, this run's buffers, and
/// the events its pushes end at.
#[derive(Debug, Clone, Default)]
pub(super) struct Slot {
    pub(super) ordinal: usize,
    /// `CUcontext`, as an integer (raw pointers are not `Send`).
    pub(super) ctx: usize,
    pub(super) send: u64,
    pub(super) recv: u64,
    /// Compute rows (the forward's direct pushes land there).
    pub(super) comp: u64,
    pub(super) native: u64,
    /// Per pipeline chunk (chunk 0 for the sequential schedule): the
    /// rank's dispatch pushes of that chunk are done (`CUevent`s).
    pub(super) pushed: Vec<usize>,
    /// The rank's combine pushes are done (every chunk's).
    pub(super) returned: usize,
    /// Training step: the foreign experts' gradient blobs, and the
    /// backward's events (its two pushes done, weight gradients done).
    pub(super) fgrad: u64,
    pub(super) bwd: Vec<usize>,
}

struct State {
    slots: Vec<Slot>,
    arrived: usize,
    generation: u64,
    aborted: bool,
}

/// The ranks of one process, linked for copy-engine exchange.
pub struct PeerLink {
    world: usize,
    state: Mutex<State>,
    cv: Condvar,
}

/// A rank that waits this long at a barrier gives up (a peer is stuck).
const MEET_TIMEOUT: Duration = Duration::from_secs(600);

impl PeerLink {
    pub fn new(world: usize) -> Self {
        PeerLink {
            world,
            state: Mutex::new(State {
                slots: vec![Slot::default(); world],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A rank failed: the others leave their barriers with an error instead
    /// of waiting for it.
    pub fn abort(&self) {
        self.lock().aborted = true;
        self.cv.notify_all();
    }

    /// Change rank `r`'s slot.
    pub(super) fn publish(&self, r: usize, f: impl FnOnce(&mut Slot)) {
        f(&mut self.lock().slots[r]);
    }

    /// Rank `q`'s slot as last published.
    pub(super) fn slot(&self, q: usize) -> Slot {
        self.lock().slots[q].clone()
    }

    /// Host barrier of all ranks.
    pub(super) fn meet(&self) -> Result<(), GpuError> {
        let mut st = self.lock();
        if st.aborted {
            return Err(aborted());
        }
        let gen = st.generation;
        st.arrived += 1;
        if st.arrived == self.world {
            st.arrived = 0;
            st.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let deadline = Instant::now() + MEET_TIMEOUT;
        while st.generation == gen {
            if st.aborted {
                return Err(aborted());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.aborted = true;
                self.cv.notify_all();
                return Err(GpuError::Cuda(format!(
                    "copy-engine exchange: a GPU's thread did not reach the barrier within {} s",
                    MEET_TIMEOUT.as_secs()
                )));
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

fn aborted() -> GpuError {
    GpuError::Cuda(
        "copy-engine exchange: another GPU's worker failed (its error is reported)".into(),
    )
}

fn check(r: ds::CUresult, what: &str) -> Result<(), GpuError> {
    if r == ds::cudaError_enum::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Cuda(format!("{what}: {r:?}")))
    }
}

/// Let the calling thread's context (GPU `ordinal`) read and write the
/// memory of every peer in `peers` (`(ordinal, CUcontext)`); an error
/// names a pair with no peer path.
pub(super) fn enable_peers(ordinal: usize, peers: &[(usize, usize)]) -> Result<(), GpuError> {
    for &(po, pctx) in peers {
        let mut can = 0i32;
        // SAFETY: plain queries and a context of this process.
        unsafe {
            check(
                ds::cuDeviceCanAccessPeer(&mut can, ordinal as i32, po as i32),
                "cuDeviceCanAccessPeer",
            )?;
            if can == 0 {
                return Err(GpuError::Input(format!(
                    "--exchange copy-engine: GPU {ordinal} cannot access GPU {po}'s memory (no peer-to-peer path); use --exchange nccl"
                )));
            }
            let r = ds::cuCtxEnablePeerAccess(pctx as ds::CUcontext, 0);
            if r != ds::cudaError_enum::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
                check(r, "cuCtxEnablePeerAccess")?;
            }
        }
    }
    Ok(())
}

/// Copy `bytes` from `src` to `dst` (either on a peer GPU) on stream `s`.
///
/// # Safety
/// Both ranges must lie in live allocations, peer access enabled.
pub(super) unsafe fn copy(dst: u64, src: u64, bytes: u64, s: ds::CUstream) -> Result<(), GpuError> {
    if bytes == 0 {
        return Ok(());
    }
    check(
        ds::cuMemcpyAsync(dst, src, bytes as usize, s),
        "cuMemcpyAsync (peer)",
    )
}

/// Make stream `s` wait for a peer's event (a `CUevent` as an integer).
pub(super) fn wait_on(s: ds::CUstream, ev: usize) -> Result<(), GpuError> {
    // SAFETY: the peer's event lives as long as its worker, which outlives
    // this run; waiting on another device's event is allowed.
    unsafe {
        check(
            ds::cuStreamWaitEvent(s, ev as ds::CUevent, 0),
            "cuStreamWaitEvent (peer)",
        )
    }
}

/// A rank's per-peer exchange ranges: the whole layer's (`chunk` None) or
/// one pipeline chunk's.
fn ranges_of(lay: &Layout, q: usize, chunk: Option<usize>) -> Ranges<'_> {
    match chunk {
        None => Ranges::of_rank(&lay.ranks[q]),
        Some(c) => Ranges::of_chunk(&lay.chunks[q], c),
    }
}

impl Worker<'_> {
    /// Tokens and weights of this replay's layers move by copy engine
    /// (`calibrate` links its ranks to time the copies, yet runs its
    /// layers through NCCL).
    pub(super) fn ce(&self) -> bool {
        self.link.is_some() && self.cfg.exchange == Exchange::CopyEngine
    }

    pub(super) fn linked(&self) -> &PeerLink {
        self.link
            .as_deref()
            .expect("copy-engine exchange without a peer link")
    }

    /// Show the others this rank's context and events, then open peer
    /// access to theirs (once, when the worker starts).
    pub(super) fn link_peers(&self, ordinal: usize) -> Result<(), GpuError> {
        let link = self.linked();
        let pushed = (0..super::pipeline::MAX_CHUNKS)
            .map(|c| self.pev[c * PE + DE].0 as usize)
            .collect();
        link.publish(self.rank, |sl| {
            sl.ordinal = ordinal;
            sl.ctx = self.dev.ctx.cu_ctx() as usize;
            sl.pushed = pushed;
            sl.returned = self.ev[E_RETURNED].0 as usize;
        });
        link.meet()?;
        let peers: Vec<(usize, usize)> = (0..self.world)
            .filter(|&q| q != self.rank)
            .map(|q| {
                let sl = link.slot(q);
                (sl.ordinal, sl.ctx)
            })
            .collect();
        let r = enable_peers(ordinal, &peers);
        if r.is_err() {
            link.abort();
        }
        r
    }

    /// Change this rank's slot, meet, and keep every rank's slot as then
    /// shown (in `peers`).
    pub(super) fn ce_share(&self, f: impl FnOnce(&mut Slot)) -> Result<(), GpuError> {
        let link = self.linked();
        link.publish(self.rank, f);
        link.meet()?;
        *self.peers.borrow_mut() = (0..self.world).map(|q| link.slot(q)).collect();
        Ok(())
    }

    /// Show this run's buffers (they move when the arena grows) and read
    /// the others' once all have shown theirs.
    pub(super) fn ce_publish(&self, cb: &CaseBufs, lb: &LayoutBufs) -> Result<(), GpuError> {
        self.ce_share(|sl| {
            sl.send = lb.send;
            sl.recv = lb.recv;
            sl.comp = lb.comp;
            sl.native = cb.native;
        })
    }

    /// Pull this rank's borrowed expert weights from their owners' native
    /// blobs on the transfer stream (`phases::transfer_weights`' copy-
    /// engine form), between `xev[0]` and `xev[1]`. Issued after the
    /// meeting that follows the token pushes: the pulls wait for each
    /// lender's first round of pushes (the layer's, or chunk 0's), since a
    /// pull running beside them on the same link held the tokens back
    /// until the weights were in (2 x H200: an 8 MB dispatch took as long
    /// as the 352 MB of weights beside it), and the native compute with
    /// them.
    pub(super) fn ce_pull_weights(&self, lay: &Layout, foreign: u64) -> Result<(), GpuError> {
        let rl = &lay.ranks[self.rank];
        if rl.send_transfers.is_empty() && rl.recv_transfers.is_empty() {
            return Ok(());
        }
        let xfer = self.dev.xfer;
        let per = (self.experts() / self.world) as u64;
        let bb = (self.blob.len * 2) as u64;
        let peers = self.peers.borrow();
        self.dev.wait(xfer, &self.ev[super::worker::E_PLANNED])?;
        let mut lenders: Vec<usize> = rl.recv_transfers.iter().map(|m| m.peer as usize).collect();
        lenders.sort_unstable();
        lenders.dedup();
        for q in lenders {
            wait_on(xfer, peers[q].pushed[0])?;
        }
        self.xev[0].record(xfer)?;
        for (i, m) in rl.recv_transfers.iter().enumerate() {
            let src = peers[m.peer as usize].native + (m.expert as u64 % per) * bb;
            // SAFETY: the owner's native blob (written at set-up only) and
            // this rank's foreign slot i, both allocated for this layout.
            unsafe { copy(foreign + i as u64 * bb, src, bb, xfer)? };
        }
        self.xev[1].record(xfer)
    }

    /// Push this rank's rows of the layer (`chunk` None) or of one chunk to
    /// every peer on stream `s`: send ranges into the peers' receive
    /// buffers (dispatch), or results into their owners' send buffers
    /// (combine), at the offsets the peer's side of the layout names.
    pub(super) fn ce_push(
        &self,
        lay: &Layout,
        send: u64,
        recv: u64,
        chunk: Option<usize>,
        dispatch: bool,
        s: ds::CUstream,
    ) -> Result<(), GpuError> {
        let (me, rb) = (self.rank, self.rb());
        let mine = ranges_of(lay, me, chunk);
        let peers = self.peers.borrow();
        for q in (0..self.world).filter(|&q| q != me) {
            let theirs = ranges_of(lay, q, chunk);
            let (rows, src, dst) = if dispatch {
                debug_assert_eq!(mine.send_rows[q], theirs.recv_rows[me]);
                (
                    mine.send_rows[q],
                    send + mine.send_off[q] * rb,
                    peers[q].recv + theirs.recv_off[me] * rb,
                )
            } else {
                debug_assert_eq!(mine.recv_rows[q], theirs.send_rows[me]);
                (
                    mine.recv_rows[q],
                    recv + mine.recv_off[q] * rb,
                    peers[q].send + theirs.send_off[me] * rb,
                )
            };
            // SAFETY: ranges from the shared layout, inside buffers sized
            // by it on both ranks (published this run).
            unsafe { copy(dst, src, rows * rb, s)? };
        }
        Ok(())
    }

    /// Stream `s` waits for the event `ev` picks from the slot of every peer
    /// `q` with `rows[q] > 0` (the peers whose pushes this rank waits for).
    pub(super) fn ce_wait(
        &self,
        s: ds::CUstream,
        rows: &[u64],
        ev: impl Fn(&Slot) -> usize,
    ) -> Result<(), GpuError> {
        let peers = self.peers.borrow();
        for q in (0..self.world).filter(|&q| q != self.rank && rows[q] > 0) {
            wait_on(s, ev(&peers[q]))?;
        }
        Ok(())
    }

    /// Stream `s` waits for the dispatch pushes of `chunk` (0: the layer)
    /// from every peer that sends this rank rows in it.
    pub(super) fn ce_wait_pushed(
        &self,
        lay: &Layout,
        chunk: Option<usize>,
        s: ds::CUstream,
    ) -> Result<(), GpuError> {
        let c = chunk.unwrap_or(0);
        self.ce_wait(s, ranges_of(lay, self.rank, chunk).recv_rows, |sl| {
            sl.pushed[c]
        })
    }

    /// Stream `s` waits for every peer that returns this rank results.
    pub(super) fn ce_wait_returned(&self, lay: &Layout, s: ds::CUstream) -> Result<(), GpuError> {
        self.ce_wait(s, &lay.ranks[self.rank].send_rows, |sl| sl.returned)
    }

    /// The forward's token pushes take the direct path (the default; see
    /// the module's notes).
    pub(super) fn ce_direct(&self) -> bool {
        self.ce() && !self.ce_staged
    }

    /// The forward's token pushes of the layer (`chunk` None) or of one
    /// chunk on stream `s`, dispatch or combine: the direct pushes, or
    /// (staged) one push per peer through the receive buffer.
    pub(super) fn ce_push_rows(
        &self,
        lay: &Layout,
        lb: &LayoutBufs,
        chunk: Option<usize>,
        dispatch: bool,
        s: ds::CUstream,
    ) -> Result<(), GpuError> {
        if !self.ce_direct() {
            return self.ce_push(lay, lb.send, lb.recv, chunk, dispatch, s);
        }
        let rb = self.rb();
        let results = self.results(lb);
        let peers = self.peers.borrow();
        // straight where the rows are used: send rows into the peers'
        // compute rows (dispatch), result rows (numbered as compute rows)
        // into their owners' send rows (combine)
        for p in lay.pushes(self.rank, chunk, dispatch) {
            let q = &peers[p.peer as usize];
            let (src, dst) = if dispatch {
                (lb.send + p.from * rb, q.comp + p.to * rb)
            } else {
                (results + p.from * rb, q.send + p.to * rb)
            };
            // SAFETY: rows of pieces of the shared layout, inside buffers
            // sized by it on both ranks (published this run).
            unsafe { copy(dst, src, p.rows * rb, s)? };
        }
        Ok(())
    }

    /// Where this run's expert results are, numbered as compute rows (a
    /// training step keeps its inputs and writes results to Yout).
    pub(super) fn results(&self, lb: &LayoutBufs) -> u64 {
        if self.cfg.train {
            lb.yout
        } else {
            lb.comp
        }
    }

    /// The sequential dispatch through the copy engines: pack, push, meet,
    /// wait for the peers' pushes (staged: then place the received rows),
    /// on the main stream.
    pub(super) fn ce_dispatch(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        remote: &Remote,
        copies: usize,
    ) -> Result<(), GpuError> {
        let (main, net) = (self.dev.main, self.dev.net);
        self.pack(cb, lb, copies)?;
        self.dev.wait(net, &self.ev[E_PACKED])?;
        self.ce_push_rows(lay, lb, None, true, net)?;
        self.pev[DE].record(net)?;
        self.linked().meet()?;
        self.ce_pull_weights(lay, lb.foreign)?;
        self.ce_wait_pushed(lay, None, main)?;
        if !self.ce_direct() {
            // SAFETY: segment tables list rows inside recv and comp.
            unsafe { self.copy_rows(lb.segs_in, remote.nseg, remote.rows, main)? };
        }
        self.ev[E_DISPATCHED].record(main)
    }

    /// The sequential combine through the copy engines: results pushed
    /// home (staged: copied out first), meet, wait for the peers' results,
    /// weighted sum.
    pub(super) fn ce_combine(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        remote: &Remote,
        t: usize,
    ) -> Result<(), GpuError> {
        let (main, net) = (self.dev.main, self.dev.net);
        if !self.ce_direct() {
            // SAFETY: as for dispatch, with source and destination swapped.
            unsafe { self.copy_rows(lb.segs_out, remote.nseg, remote.rows, main)? };
        }
        self.ev[E_RET].record(main)?;
        self.dev.wait(net, &self.ev[E_RET])?;
        self.ce_push_rows(lay, lb, None, false, net)?;
        self.ev[E_RETURNED].record(net)?;
        self.linked().meet()?;
        self.dev.wait(main, &self.ev[E_RETURNED])?;
        self.ce_wait_returned(lay, main)?;
        self.combine_rows(cb, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn barrier_releases_all_ranks_every_round() {
        let link = Arc::new(PeerLink::new(3));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for r in 0..3 {
                let (link, hits) = (link.clone(), hits.clone());
                s.spawn(move || {
                    for round in 0..50 {
                        link.publish(r, |sl| sl.send = round);
                        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        link.meet().unwrap();
                        // every rank published this round before anyone passed
                        for q in 0..3 {
                            assert!(link.slot(q).send >= round);
                        }
                        link.meet().unwrap();
                    }
                });
            }
        });
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 150);
    }

    #[test]
    fn an_aborted_link_fails_waiting_ranks() {
        let link = Arc::new(PeerLink::new(2));
        let l2 = link.clone();
        let h = std::thread::spawn(move || l2.meet());
        std::thread::sleep(Duration::from_millis(50));
        link.abort();
        let err = h.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("another GPU's worker failed"), "{err}");
        assert!(link.meet().is_err());
    }

    #[test]
    fn exchange_names_round_trip() {
        for x in [Exchange::Nccl, Exchange::CopyEngine] {
            assert_eq!(Exchange::parse(x.as_str()), Some(x));
        }
        assert_eq!(Exchange::parse(""), Some(Exchange::Nccl));
        assert_eq!(Exchange::parse("nvshmem"), None);
    }
}
