//! Replay entry: validate the configuration against the cases, compile
//! the kernels, start one worker per rank (a thread per local GPU, or this
//! process as one rank of a launcher's world) and collect rank 0's rows.
//! Every rank runs the same loop: per case and setting, warm-ups then timed
//! runs of the layer (`phases`), then the dense check (`dense`); rank 0
//! gathers everyone's numbers over NCCL and builds the rows (`timing`).

pub use super::config::{Act, Case, EplbReplay, RankRouting, ReplayConfig};
use super::copy_engine::{Exchange, PeerLink};
use super::rendezvous::{self, ProcessRank};
use super::runtime::{self, NcclId};
use super::worker::Worker;
use super::GpuError;
use crate::plan::Policy;
use crate::progress::Progress;
use crate::results::ResultRow;
use std::sync::Arc;

/// How the ranks are started.
#[derive(Debug, Clone)]
pub enum Launch {
    /// This process drives these local GPU ordinals, a thread each.
    Threads(Vec<usize>),
    /// This process is one rank of a launcher's world.
    Process(ProcessRank),
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
    super::replicas::validate(cfg, cases)?;
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
    progress: &dyn Progress,
    link: Option<Arc<PeerLink>>,
) -> Result<Vec<ResultRow>, GpuError> {
    let mut w = Worker::new(rank, world, ordinal, ids, ptx, cfg, link)?;
    let max_t = cases
        .iter()
        .map(|c| c.routing[rank].ids.len() / cfg.top_k)
        .max()
        .unwrap_or(0);
    w.setup(max_t)?;
    let mut rows = Vec::new();
    // the plain policies (weights in their native place) of a case are
    // timed together, in turns; each EPLB setting places replicas first
    let (eplb, plain): (Vec<_>, Vec<_>) = cfg
        .settings
        .iter()
        .copied()
        .partition(|&(policy, _)| super::replicas::is_eplb(policy));
    for (ci, case) in cases.iter().enumerate() {
        let status = |what: String| {
            if rank == 0 {
                progress.status(&format!(
                    "case {}/{} ({}{} step {} layer {}), {what}",
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
                ));
            }
        };
        if !plain.is_empty() {
            let names: Vec<String> = plain.iter().map(|(p, _)| p.to_string()).collect();
            status(names.join(", "));
            rows.extend(w.measure_plain(case, &plain)?.into_iter().flatten());
        }
        for &(policy, gate) in &eplb {
            for (i, e) in cfg.eplb.iter().enumerate() {
                status(format!("{policy} R={}", e.redundant));
                if let Some(r) = w.measure_eplb(case, policy, gate, i)? {
                    rows.push(r);
                }
            }
        }
        if !w.bwd.note.is_empty() {
            status(w.bwd.note.clone());
        }
    }
    w.dev.sync()?;
    if crate::env::tune_log() {
        for t in w.dev.gemm_tune_log() {
            eprintln!("rank {rank}: {}", t.summary());
            if let Some(win) = t.winner {
                eprintln!("rank {rank}:     winner {}", t.cands[win].0);
            }
        }
    }
    Ok(rows)
}

/// Replay `cases` under `cfg`. Returns the rows on the reporting rank (the
/// single process, or rank 0 of a launcher's world) and `None` elsewhere.
pub fn replay(
    cfg: &ReplayConfig,
    cases: &[Case],
    launch: &Launch,
    progress: &dyn Progress,
) -> Result<Option<Vec<ResultRow>>, GpuError> {
    validate(cfg, cases)?;
    runtime::check_libraries()?;
    let count = runtime::device_count()?;
    if count == 0 {
        return Err(GpuError::NoDevice);
    }
    let ptx = runtime::compile_kernels_for_device0()?;
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
            let link = (cfg.exchange == Exchange::CopyEngine && cfg.gpus > 1)
                .then(|| Arc::new(PeerLink::new(cfg.gpus)));
            let results: Vec<Result<Vec<ResultRow>, GpuError>> = std::thread::scope(|s| {
                let hs: Vec<_> = ords
                    .iter()
                    .enumerate()
                    .map(|(rank, &o)| {
                        let (ids, ptx, link) = (&ids, &ptx, link.clone());
                        s.spawn(move || {
                            let r = worker_main(
                                rank,
                                cfg.gpus,
                                o,
                                ids,
                                ptx,
                                cfg,
                                cases,
                                progress,
                                link.clone(),
                            );
                            if let (Err(_), Some(l)) = (&r, &link) {
                                // the others would wait for it at a barrier
                                l.abort();
                            }
                            r
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
            if cfg.exchange == Exchange::CopyEngine {
                return Err(GpuError::Input(format!(
                    "--exchange copy-engine needs every GPU in one process (the default launch), not one process per GPU under {}; use --exchange nccl",
                    pr.launcher
                )));
            }
            if pr.world != cfg.gpus {
                return Err(GpuError::Input(format!(
                    "{} started {} processes but --gpus {}",
                    pr.launcher, pr.world, cfg.gpus
                )));
            }
            // a launcher that binds one GPU per task (srun --gpus-per-task,
            // CUDA_VISIBLE_DEVICES per rank) leaves each process one GPU
            let ordinal = if count == 1 { 0 } else { pr.local_rank };
            if ordinal >= count {
                return Err(GpuError::Input(format!(
                    "local rank {} but {count} GPUs visible (check CUDA_VISIBLE_DEVICES)",
                    pr.local_rank
                )));
            }
            let mine = if pr.rank == 0 {
                Some(vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?])
            } else {
                None
            };
            let ids = rendezvous::exchange(pr, mine, 2).map_err(GpuError::Launch)?;
            let rows = worker_main(
                pr.rank, pr.world, ordinal, &ids, &ptx, cfg, cases, progress, None,
            )?;
            Ok(if pr.rank == 0 { Some(rows) } else { None })
        }
    }
}
