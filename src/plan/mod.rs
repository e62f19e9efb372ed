//! Planning: which GPU computes which token-copies of which expert.
//!
//! One planner serves `plan`, `simulate`, `tune` and the GPU `replay`, so a
//! simulated plan and a replayed plan are the same plan. Policies:
//! - `ep`: standard expert parallelism, every copy on its native GPU;
//! - `llep`: the `reference` least-loaded planner (see [`reference`]),
//!   reproduced exactly (quirks included), gated by lambda;
//! - `llep-auto`: beyond the reference, a cost-aware gate: the `llep` plan
//!   is used only where the cost model predicts it beats plain EP by more
//!   than the model's own error ([`Arbiter`] makes that call, for the
//!   simulator and the replay alike);
//! - `llep-topo`: beyond the reference, `llep` with node-first helpers on a
//!   multi-node [`topo::Topology`] ([`topo::TopoPlanner`]);
//! - `ideal`: perfect balance with free transfers, the bound no policy beats;
//! - `eplb`, `eplb+llep`: DeepSeek's EPLB placement with replicas, alone or
//!   with LLEP over its physical experts (simulated by `sim::eplb`; the
//!   planner plans them as `ep` and `llep`).

mod dispatch;
pub mod eplb;
mod gate;
mod reference;
pub mod replica_split;
pub mod topo;

pub(crate) use dispatch::walk_slices;
pub use dispatch::{dispatch_matrix, DispatchMatrix};
pub use gate::{fmt_lambda, Gate, GateError, ReferenceReading};
pub use reference::{capacity, Planner};

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Planner inputs besides the counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanParams {
    /// EP ranks P; the number of experts must be a multiple of it.
    pub gpus: usize,
    /// Capacity factor (reference `max_tokens_factor`).
    pub alpha: f64,
    /// Minimum tokens per GEMM (reference `min_tokens_per_gemm`).
    pub min_gemm: u64,
    /// When the `llep` policy switches on (the lambda gate).
    pub gate: Gate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Ep,
    Llep,
    Ideal,
    LlepAuto,
    Eplb,
    #[serde(rename = "eplb+llep")]
    EplbLlep,
    #[serde(rename = "llep-topo")]
    LlepTopo,
}

impl Policy {
    /// The policies the planner itself plans (`llep-auto` is `llep`'s plan
    /// plus an [`Arbiter`]'s decision).
    pub const ALL: [Policy; 3] = [Policy::Ep, Policy::Llep, Policy::Ideal];
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Ep => "ep",
            Policy::Llep => "llep",
            Policy::Ideal => "ideal",
            Policy::LlepAuto => "llep-auto",
            Policy::Eplb => "eplb",
            Policy::EplbLlep => "eplb+llep",
            Policy::LlepTopo => "llep-topo",
        }
    }
}

/// The cost-aware gate's judge: given a layer's EP plan and its LLEP plan,
/// is LLEP worth it? Implemented by the cost model (`sim::CostArbiter`);
/// the replay takes one so that it decides exactly as `simulate` does.
pub trait Arbiter: Send + Sync + std::fmt::Debug {
    fn prefers_llep(&self, ep: &Plan, llep: &Plan, per_rank: &[u64], global: &[u64]) -> bool;
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{0}' (expected ep, llep, llep-auto, llep-topo, ideal, eplb or eplb+llep)")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ep" => Ok(Policy::Ep),
            "llep" | "reference" => Ok(Policy::Llep),
            "ideal" => Ok(Policy::Ideal),
            "llep-auto" | "auto" => Ok(Policy::LlepAuto),
            "eplb" => Ok(Policy::Eplb),
            "eplb+llep" => Ok(Policy::EplbLlep),
            "llep-topo" | "topo" => Ok(Policy::LlepTopo),
            other => Err(UnknownPolicy(other.into())),
        }
    }
}

/// One contiguous range `[start, end)` of an expert's global token order,
/// computed on `gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub gpu: u32,
    pub start: u64,
    pub end: u64,
}

/// One expert's weights sent from its native GPU to a helper, for the
/// token range it will compute there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transfer {
    pub expert: u32,
    pub src: u32,
    pub dst: u32,
    pub start: u64,
    pub end: u64,
}

/// A plan for one layer of one step.
///
/// Most experts stay whole on their native GPU, so to keep planning cheap a
/// plan writes entries only for the others, the experts that spill: entry
/// `i` is expert `spills[i].0` with ranges `spill_ranges[spills[i].1 ..
/// spills[i].2]`, listed by expert id. [`Plan::iter`] gives the whole plan
/// as the reference lists it (every expert with copies, the others as one
/// native range) and [`Plan::in_visit_order`] in the reference's own order.
/// Transfers are in the reference's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub gpus: usize,
    pub experts: usize,
    /// The global counts that were planned.
    pub counts: Vec<u64>,
    pub use_llep: bool,
    /// max/mean native GPU load, computed in float32 as the reference does.
    pub imbalance_ratio: f64,
    pub capacity: u64,
    pub native_loads: Vec<u64>,
    /// Final assigned token-copies per GPU (native loads for plain EP).
    pub gpu_loads: Vec<u64>,
    pub spills: Vec<(u32, u32, u32)>,
    pub spill_ranges: Vec<Range>,
    pub transfers: Vec<Transfer>,
    /// Transfers that repeat an (expert, destination) pair already sent.
    pub duplicate_transfers: u32,
    /// True for the `ideal` bound: its transfers are free.
    pub free_transfers: bool,
}

/// One expert's ranges in a plan: one whole native range, or the ranges
/// of an expert that spills. Derefs to a slice; iterates ranges by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertRanges<'a> {
    Whole(Range),
    Split(&'a [Range]),
}

impl std::ops::Deref for ExpertRanges<'_> {
    type Target = [Range];
    fn deref(&self) -> &[Range] {
        match self {
            ExpertRanges::Whole(r) => std::slice::from_ref(r),
            ExpertRanges::Split(s) => s,
        }
    }
}

impl<'a> IntoIterator for ExpertRanges<'a> {
    type Item = Range;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Range>,
        std::iter::Copied<std::slice::Iter<'a, Range>>,
    >;
    fn into_iter(self) -> Self::IntoIter {
        match self {
            ExpertRanges::Whole(r) => Some(r).into_iter().chain([].iter().copied()),
            ExpertRanges::Split(s) => None.into_iter().chain(s.iter().copied()),
        }
    }
}

impl<'b> IntoIterator for &'b ExpertRanges<'_> {
    type Item = &'b Range;
    type IntoIter = std::slice::Iter<'b, Range>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Plan {
    /// The whole plan by expert id, as (expert, ranges): when the planner
    /// ran, every expert with copies (those without a spill entry as one
    /// range on their native GPU); for plain EP nothing, as in the
    /// reference.
    pub fn iter(&self) -> impl Iterator<Item = (u32, ExpertRanges<'_>)> + '_ {
        let per = self.experts.checked_div(self.gpus).unwrap_or(1).max(1);
        let mut spills = self.spills.iter().peekable();
        let counts = if self.use_llep { &self.counts[..] } else { &[] };
        counts
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(move |(e, &c)| {
                let e = e as u32;
                match spills.next_if(|s| s.0 == e) {
                    Some(&(_, a, b)) => (
                        e,
                        ExpertRanges::Split(&self.spill_ranges[a as usize..b as usize]),
                    ),
                    None => (
                        e,
                        ExpertRanges::Whole(Range {
                            gpu: e / per as u32,
                            start: 0,
                            end: c,
                        }),
                    ),
                }
            })
    }

    /// Only the experts that spill, by id, as (expert, ranges).
    pub fn spilled(&self) -> impl Iterator<Item = (u32, &[Range])> + '_ {
        self.spills
            .iter()
            .map(|&(e, a, b)| (e, &self.spill_ranges[a as usize..b as usize]))
    }

    /// Entries in the reference's visiting order: token-copies descending,
    /// equal counts by ascending expert id.
    pub fn in_visit_order(&self) -> Vec<(u32, ExpertRanges<'_>)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_by_key(|&(e, _)| (std::cmp::Reverse(self.counts[e as usize]), e));
        v
    }

    pub fn max_load(&self) -> u64 {
        self.gpu_loads.iter().copied().max().unwrap_or(0)
    }

    pub fn native_max_load(&self) -> u64 {
        self.native_loads.iter().copied().max().unwrap_or(0)
    }
}

/// Errors in planner input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("{experts} experts cannot be split over {gpus} GPUs: the number of experts must be a multiple of the number of GPUs")]
    NotDivisible { experts: usize, gpus: usize },
    #[error("the number of GPUs must be at least 1")]
    NoGpus,
    #[error("no experts given")]
    NoExperts,
    #[error("alpha must be a finite number > 0 (got {0})")]
    BadAlpha(f64),
    #[error("at most 65536 experts are supported (got {0})")]
    TooManyExperts(usize),
    #[error("{0} token-copies in one layer: the planner takes fewer than 2^47")]
    TotalTooLarge(u64),
}

pub fn check_shape(experts: usize, params: &PlanParams) -> Result<(), PlanError> {
    if params.gpus == 0 {
        return Err(PlanError::NoGpus);
    }
    if experts == 0 {
        return Err(PlanError::NoExperts);
    }
    if experts > 1 << 16 {
        return Err(PlanError::TooManyExperts(experts));
    }
    if experts % params.gpus != 0 {
        return Err(PlanError::NotDivisible {
            experts,
            gpus: params.gpus,
        });
    }
    if !(params.alpha.is_finite() && params.alpha > 0.0) {
        return Err(PlanError::BadAlpha(params.alpha));
    }
    Ok(())
}
