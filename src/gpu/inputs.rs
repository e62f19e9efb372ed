//! Replay inputs: one [`Case`] per layer-step of a [`Workload`], keyed
//! exactly as `simulate` keys its rows (so measured and simulated rows
//! join). The routing itself comes from the workload: recorded tokens
//! (re-chunked or resampled there), the synthetic generator, or tokens
//! synthesised from counts.

use super::Case;
use crate::trace::synthetic::Scenario;
use crate::workload::{DimOverrides, InputSource, InputSpec, StepPick, Workload, WorkloadError};

/// Every layer-step of `w` as a replay case.
pub fn cases(w: &Workload) -> Vec<Case> {
    let layers = w.loads.layers();
    (0..w.loads.layer_steps())
        .map(|ls| {
            let (s, l) = (ls / layers, ls % layers);
            Case {
                base: w.row_base(s, l),
                routing: w.rank_routing(s, l),
                placements: Vec::new(),
            }
        })
        .collect()
}

/// One case of a synthetic scenario (calibration's balanced layer).
pub fn synthetic_case(
    sc: Scenario,
    gpus: usize,
    tokens: u64,
    experts: u32,
    top_k: u32,
    hidden: u32,
    inter: u32,
) -> Result<Case, WorkloadError> {
    let spec = InputSpec {
        source: InputSource::Synthetic(vec![sc]),
        dims: DimOverrides {
            experts: Some(experts),
            top_k: Some(top_k),
            hidden_size: Some(hidden),
            intermediate_size: Some(inter),
            num_layers: None,
        },
        gpus,
        tokens_per_rank: Some(tokens),
        seed: 0,
        steps: StepPick::All,
        layers: Vec::new(),
    };
    let w = spec.resolve()?.remove(0);
    Ok(cases(&w).remove(0))
}
