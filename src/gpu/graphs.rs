//! `--cuda-graphs on`: a GPU's expert units of one compute phase (its
//! native units, then, once their weights are in, its foreign ones; per
//! chunk when pipelined) launched as one CUDA graph instead of one host
//! call per GEMM and activation.
//!
//! Why: issued one by one, each unit costs the host two cuBLASLt calls and
//! a launch, and with units of a few rows the GPU drains its queue faster
//! than the host fills it, so a decode-sized layer measures the host (and
//! varies with it from process to process). Serving engines launch their
//! expert compute as a few grouped kernels or a captured graph, so the
//! host's cost does not grow with the experts; a graph of the same kernels
//! stands for that here, with the GPU's own time per kernel unchanged.
//!
//! A graph is captured at the first compute phase whose units and
//! buffers it matches (captured, not run, then launched), and kept for the
//! case: the warm-ups run exactly the timed runs' units, so the timed runs
//! launch graphs only. A capture that would need a GEMM shape tuned
//! (tuning synchronises the device) is abandoned and that phase runs
//! eagerly, which tunes it; the next run captures. Each phase that did not
//! launch a kept graph counts as a miss, which `timing` reports for timed
//! runs.

use super::runtime::{drv_err, Dev};
use super::GpuError;
use cudarc::driver::sys as drv_sys;
use std::collections::HashMap;

/// One captured and instantiated graph.
struct Graph {
    graph: drv_sys::CUgraph,
    exec: drv_sys::CUgraphExec,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: made by capture and instantiate below, destroyed once;
        // the owner synchronised the stream the graph was launched on.
        unsafe {
            drv_sys::cuGraphExecDestroy(self.exec);
            drv_sys::cuGraphDestroy(self.graph);
        }
    }
}

/// The graphs of one case, keyed by everything a phase's launches read:
/// its units (weights, rows) and buffer addresses.
#[derive(Default)]
pub(super) struct Graphs {
    kept: HashMap<Vec<u64>, Graph>,
    /// Compute phases that launched no kept graph (captured one, or ran
    /// eagerly).
    pub(super) misses: usize,
}

/// Launch `g` on the main stream.
fn launch(dev: &Dev, g: &Graph) -> Result<(), GpuError> {
    // SAFETY: a live graph whose buffers the caller's key pins.
    unsafe { drv_sys::cuGraphLaunch(g.exec, dev.main) }
        .result()
        .map_err(drv_err("cuGraphLaunch"))
}

impl Graphs {
    /// Drop every graph (a new case: new routing, new buffers). The
    /// device must be idle.
    pub(super) fn clear(&mut self) {
        self.kept.clear();
    }

    /// Run a phase's launches (`issue`, queued on `dev.main`) as the graph
    /// kept for `key`: launch it if kept, else capture `issue` into a new
    /// one and launch that; where capturing fails (a GEMM shape still to
    /// tune), run `issue` eagerly.
    pub(super) fn run(
        &mut self,
        dev: &Dev,
        key: Vec<u64>,
        issue: impl Fn() -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        if let Some(g) = self.kept.get(&key) {
            return launch(dev, g);
        }
        self.misses += 1;
        match capture(dev, &issue) {
            Some(g) => {
                launch(dev, &g)?;
                self.kept.insert(key, g);
                Ok(())
            }
            None => issue(),
        }
    }
}

/// Capture `issue` on the main stream (thread-local mode: the other ranks'
/// threads keep issuing) and instantiate it; `None` where any step failed,
/// with the capture ended and nothing queued.
fn capture(dev: &Dev, issue: &impl Fn() -> Result<(), GpuError>) -> Option<Graph> {
    let s = dev.main;
    // SAFETY: the stream is live; capture queues nothing, and it is ended
    // on every path below.
    unsafe {
        let mode = drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        if drv_sys::cuStreamBeginCapture_v2(s, mode) != drv_sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        dev.capturing.set(true);
        let issued = issue();
        dev.capturing.set(false);
        let mut graph = std::ptr::null_mut();
        let ended = drv_sys::cuStreamEndCapture(s, &mut graph);
        if issued.is_err() || ended != drv_sys::CUresult::CUDA_SUCCESS || graph.is_null() {
            if !graph.is_null() {
                drv_sys::cuGraphDestroy(graph);
            }
            return None;
        }
        let mut exec = std::ptr::null_mut();
        if drv_sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
            != drv_sys::CUresult::CUDA_SUCCESS
        {
            drv_sys::cuGraphDestroy(graph);
            return None;
        }
        Some(Graph { graph, exec })
    }
}
