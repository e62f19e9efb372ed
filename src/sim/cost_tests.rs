//! Tests of the cost model's private parts (`sim::cost`).

use super::*;
use crate::plan::topo::{TopoPlanner, Topology};
use crate::plan::{dispatch_matrix, Gate, PlanParams, Planner, Policy};
use crate::trace::tokens::SplitMix64;

/// Ranges no planner writes: reversed, with a gap, past the copies.
fn scramble(plan: &mut Plan, rng: &mut SplitMix64) {
    let (a, b) = match plan.spills.first() {
        Some(&(_, a, b)) => (a as usize, b as usize),
        None => return,
    };
    let rs = &mut plan.spill_ranges[a..b];
    match rng.below(3) {
        0 => rs.reverse(),
        1 => rs[0].end = rs[0].start + (rs[0].end - rs[0].start) / 2,
        _ => rs[rs.len() - 1].end += 1 + rng.below(100),
    }
}

#[test]
fn sums_of_moved_copies_are_those_of_the_built_matrix() {
    let mut rng = SplitMix64::new(23);
    let (mut planner, mut topo) = (Planner::new(), TopoPlanner::new());
    let (mut plan, mut ep) = (Plan::default(), Plan::default());
    let (mut dm, mut native) = (DispatchMatrix::default(), DispatchMatrix::default());
    let (mut want, mut base, mut got) = (Sums::default(), Sums::default(), Sums::default());
    let mut moved = 0;
    for case in 0..400 {
        let gpus = [2, 4, 8, 16][rng.below(4) as usize];
        let n = gpus * (1 + rng.below(8) as usize);
        let hot = rng.below(n as u64) as usize;
        // some ranks hold none of an expert
        let per_rank: Vec<u64> = (0..gpus * n)
            .map(|i| match rng.below(5) {
                0 => 0,
                _ => rng.below(60) + if i % n == hot { 600 } else { 0 },
            })
            .collect();
        let mut global = vec![0u64; n];
        for (i, c) in per_rank.iter().enumerate() {
            global[i % n] += c;
        }
        let params = PlanParams {
            gpus,
            alpha: 1.0,
            min_gemm: rng.below(64),
            gate: Gate::Always,
        };
        let policy = [Policy::Ep, Policy::Llep, Policy::Ideal, Policy::LlepTopo][case % 4];
        if policy == Policy::LlepTopo {
            let t = Topology::new(gpus, 2).unwrap();
            topo.plan_into(&global, &params, t, &mut plan).unwrap();
        } else {
            planner
                .plan_into(&global, &params, policy, &mut plan)
                .unwrap();
        }
        if case % 8 >= 5 {
            scramble(&mut plan, &mut rng);
        }
        moved += usize::from(!plan.spills.is_empty());
        dispatch_matrix(&plan, &per_rank, &mut dm);
        want.fill(&dm, false);
        planner
            .plan_into(&global, &params, Policy::Ep, &mut ep)
            .unwrap();
        dispatch_matrix(&ep, &per_rank, &mut native);
        base.fill(&native, false);
        got.moved(&base, &plan, &per_rank);
        assert_eq!(
            (&got.rows, &got.cols, &got.diag),
            (&want.rows, &want.cols, &want.diag),
            "case {case}: {gpus} GPUs, {n} experts"
        );
    }
    assert!(moved > 150, "{moved} plans moved copies");
}

#[test]
fn host_floor_raises_native_and_foreign_units_apart() {
    // GPU 0: 4 native units of 10 us and 2 foreign of 60 us; GPU 1: one
    // native unit of 500 us
    let mut s = CostScratch {
        compute: vec![0.040 + 0.120, 0.500],
        foreign: vec![0.120, 0.0],
        units: vec![6, 1],
        foreign_units: vec![2, 0],
        ..Default::default()
    };
    host_floor(&mut s, 0.050);
    // native: 4 x 50 us over 40 us of GPU time; foreign: its 120 us of GPU
    // time hide 2 x 50 us of issuing; GPU 1's large unit hides its floor
    assert!(
        (s.compute[0] - (0.200 + 0.120)).abs() < 1e-12,
        "{}",
        s.compute[0]
    );
    assert!((s.foreign[0] - 0.120).abs() < 1e-12);
    assert_eq!(s.compute[1], 0.500);
    // no floor: nothing changes
    let before = s.compute.clone();
    host_floor(&mut s, 0.0);
    assert_eq!(s.compute, before);
}

/// The copy engines' exchange (`--exchange copy-engine`) is priced with the
/// profile's copy-engine links: faster than NCCL's on H200, the same plan
/// and compute, none of NCCL's point-to-point or weight-communicator
/// buffers, and a borrower's weights in only after its first round of
/// tokens.
/// `plan` priced under two profiles, each with the overlap setting given.
fn price_pair(
    plan: &Plan,
    dm: &DispatchMatrix,
    counts: &[u64],
    shape: &Shape,
    profs: (&Profile, &Profile),
    overlap: crate::gpu::Overlap,
    scratch: &mut CostScratch,
) -> (Cost, Cost) {
    let mut with = |prof: &Profile| {
        let prof = Profile {
            overlap,
            ..prof.clone()
        };
        price(plan, dm, counts, shape, &prof, scratch)
    };
    (with(profs.0), with(profs.1))
}

#[test]
fn copy_engine_exchange_prices_its_own_links_and_buffers() {
    use crate::gpu::{Exchange, Overlap};
    let shape = Shape::bf16(2880, 2880, 4);
    let (p, n) = (2usize, 128usize);
    // 95:1-like: rank 0's experts hot, so LLEP lends weights
    let per_rank: Vec<u64> = (0..p * n)
        .map(|i| if i % n < n / p { 7_600 } else { 600 })
        .collect();
    let mut counts = vec![0u64; n];
    for (i, c) in per_rank.iter().enumerate() {
        counts[i % n] += c;
    }
    let params = PlanParams {
        gpus: p,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Always,
    };
    let nccl = Profile::load("h200").unwrap();
    assert!(nccl.ce_tokens.is_some() && nccl.ce_weights.is_some());
    let ce = Profile {
        exchange: Exchange::CopyEngine,
        ..nccl.clone()
    };
    let mut dm = DispatchMatrix::default();
    let mut scratch = CostScratch::default();
    for policy in [Policy::Ep, Policy::Llep] {
        let plan = Planner::new().plan(&counts, &params, policy).unwrap();
        dispatch_matrix(&plan, &per_rank, &mut dm);
        for overlap in [Overlap::Off, Overlap::On(0)] {
            let (a, b) = price_pair(
                &plan,
                &dm,
                &counts,
                &shape,
                (&nccl, &ce),
                overlap,
                &mut scratch,
            );
            assert_eq!(
                (a.exchange, b.exchange),
                (Exchange::Nccl, Exchange::CopyEngine)
            );
            assert!(b.dispatch_ms < a.dispatch_ms, "{policy:?} {overlap:?}");
            assert!(b.total_ms < a.total_ms, "{policy:?} {overlap:?}");
            assert_eq!(a.compute_ms, b.compute_ms);
            let mm = nccl.mem_model.unwrap();
            for (x, y) in a.peak_mem_per_gpu.iter().zip(&b.peak_mem_per_gpu) {
                // the token communicator's pairs, and (LLEP) the weight
                // communicator's, which a copy engine never connects
                assert!(x - y >= mm.nccl_per_peer_bytes, "{x} vs {y}");
            }
            if policy == Policy::Llep {
                assert!(!plan.transfers.is_empty());
            }
        }
    }
}

/// The power cap: a GPU whose GEMMs fill the layer pays the measured
/// slowdown on its compute, one that rests most of the layer pays nothing,
/// and without a power fit the tables price the layer as before.
#[test]
fn power_cap_slows_busy_gpus_by_duty_only() {
    use crate::gpu::Overlap;
    let shape = Shape::bf16(4096, 14336, 2);
    let (p, n) = (2usize, 8usize);
    let params = PlanParams {
        gpus: p,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Always,
    };
    let with = Profile::load("h200").unwrap();
    let pw = with
        .power
        .expect("the built-in profile carries a power fit");
    let without = Profile {
        power: None,
        ..with.clone()
    };
    let mut dm = DispatchMatrix::default();
    let mut scratch = CostScratch::default();
    // large balanced layer (busy GEMMs) and a decode-sized one (the
    // exchange and launches fill most of it)
    for (rows, busy) in [(16_384u64, true), (16u64, false)] {
        let per_rank = vec![rows; p * n];
        let counts: Vec<u64> = (0..n).map(|_| rows * p as u64).collect();
        let plan = Planner::new().plan(&counts, &params, Policy::Ep).unwrap();
        dispatch_matrix(&plan, &per_rank, &mut dm);
        for overlap in [Overlap::Off, Overlap::On(0)] {
            let (a, b) = price_pair(
                &plan,
                &dm,
                &counts,
                &shape,
                (&without, &with),
                overlap,
                &mut scratch,
            );
            if busy {
                // most of the compute at the sustained speed
                let r = b.compute_ms / a.compute_ms;
                assert!(
                    r > 1.0 + 0.5 * (pw.sustained_over_burst - 1.0)
                        && r <= pw.sustained_over_burst + 1e-9,
                    "{overlap:?}: {r}"
                );
                assert!(b.total_ms > a.total_ms);
            } else {
                assert_eq!(a.total_ms, b.total_ms, "{overlap:?}");
            }
            assert_eq!(a.dispatch_ms, b.dispatch_ms);
        }
    }
}
