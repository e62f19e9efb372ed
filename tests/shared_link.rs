//! The pseudo-node link (`inter_shared`: NCCL's sockets over one host, as
//! `calibrate --nodes` measures it) in the cost model: every pair of GPUs
//! crosses it, inside a pseudo-node too; one budget carries both
//! directions; one direction alone runs no faster than a one-way stream;
//! weight transfers share it with the token exchange. On one node the
//! flag changes nothing.

use llep_trace::plan::{dispatch_matrix, DispatchMatrix, Gate, PlanParams, Planner, Policy};
use llep_trace::sim::model::MsgModel;
use llep_trace::sim::{price, CostScratch, Profile, Shape};

const LAT_US: f64 = 50.0;
const SHARED_GBPS: f64 = 4.0;
const ONE_WAY_GBPS: f64 = 3.0;

fn shape() -> Shape {
    Shape::bf16(2880, 2880, 4)
}

/// A profile whose exchange and transfers are only the link: no message
/// model for tokens, no launches or copies, no layer fit.
fn profile(nodes: u32, shared: bool) -> Profile {
    let mut p = Profile::load("h200").unwrap();
    p.nodes = nodes;
    (p.msg_tokens, p.launches, p.copy_gbps, p.layer_fit) = (None, None, 0.0, None);
    // the one-way rate a shared link reads is the weight transfer's
    p.msg_weights = Some(MsgModel {
        latency_us: 0.0,
        per_msg_us: 0.0,
        gbps: ONE_WAY_GBPS,
    });
    (p.inter_gbps, p.inter_latency_us, p.inter_shared) = (SHARED_GBPS, LAT_US, shared);
    p
}

/// Per-rank counts on 4 GPUs, 16 experts: `hot` copies of expert 0 (GPU
/// 0's) on every rank, 40-odd of each other expert.
fn loads(hot: u64) -> (Vec<u64>, Vec<u64>) {
    let (p, n) = (4usize, 16usize);
    let per_rank: Vec<u64> = (0..p * n)
        .map(|i| {
            let (r, e) = (i / n, i % n);
            if e == 0 {
                hot
            } else {
                40 + ((r * 7 + e * 3) % 11) as u64
            }
        })
        .collect();
    let global = (0..n)
        .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
        .collect();
    (per_rank, global)
}

fn params() -> PlanParams {
    PlanParams {
        gpus: 4,
        alpha: 1.0,
        min_gemm: 0,
        gate: Gate::Always,
    }
}

/// The shared link's price of `out` and `inn` bytes, ms.
fn link_ms(out: u64, inn: u64) -> f64 {
    LAT_US * 1e-3
        + ((out + inn) as f64 / (SHARED_GBPS * 1e9)).max(out.max(inn) as f64 / (ONE_WAY_GBPS * 1e9))
            * 1e3
}

fn priced(policy: Policy, hot: u64, prof: &Profile) -> (llep_trace::sim::Cost, DispatchMatrix) {
    let (per_rank, global) = loads(hot);
    let plan = Planner::new().plan(&global, &params(), policy).unwrap();
    let mut dm = DispatchMatrix::default();
    dispatch_matrix(&plan, &per_rank, &mut dm);
    let cost = price(
        &plan,
        &dm,
        &global,
        &shape(),
        prof,
        &mut CostScratch::default(),
    );
    (cost, dm)
}

#[test]
fn every_pair_of_a_pseudo_node_crosses_the_one_link() {
    let tok = shape().hidden * shape().dtype_bytes;
    // balanced and lopsided (GPU 0 receives nearly everything)
    for hot in [45, 3000] {
        let prof = profile(2, true);
        let (c, dm) = priced(Policy::Ep, hot, &prof);
        let want = (0..4)
            .map(|g| link_ms(dm.sent_off(g) * tok, dm.received(g) * tok))
            .fold(0.0, f64::max);
        assert!(
            (c.dispatch_ms - want).abs() < 1e-9,
            "hot {hot}: {} vs {want}",
            c.dispatch_ms
        );
        // the pairs inside a pseudo-node add to the link's time: a NIC
        // beside a separate intra-node link prices the same layer lower
        let (full, _) = priced(Policy::Ep, hot, &profile(2, false));
        assert!(c.dispatch_ms > full.dispatch_ms, "hot {hot}");
    }
    // lopsided: GPU 0's larger side at the one-way rate binds
    let (c, dm) = priced(Policy::Ep, 3000, &profile(2, true));
    let (o, i) = (dm.sent_off(0) * tok, dm.received(0) * tok);
    assert!(i as f64 / ONE_WAY_GBPS > (o + i) as f64 / SHARED_GBPS);
    assert!((c.dispatch_ms - link_ms(o, i)).abs() < 1e-9);
}

#[test]
fn weights_share_the_link_with_the_exchange_half_each() {
    let tok = shape().hidden * shape().dtype_bytes;
    let eb = shape().expert_bytes;
    let prof = profile(2, true);
    let (per_rank, global) = loads(3000);
    let plan = Planner::new()
        .plan(&global, &params(), Policy::Llep)
        .unwrap();
    assert!(!plan.transfers.is_empty());
    let mut dm = DispatchMatrix::default();
    dispatch_matrix(&plan, &per_rank, &mut dm);
    let c = price(
        &plan,
        &dm,
        &global,
        &shape(),
        &prof,
        &mut CostScratch::default(),
    );
    let want = (0..4u32)
        .map(|g| {
            let sent = plan.transfers.iter().filter(|t| t.src == g).count() as u64 * eb;
            let recv = plan.transfers.iter().filter(|t| t.dst == g).count() as u64 * eb;
            if sent + recv == 0 {
                return 0.0;
            }
            let (o, i) = (dm.sent_off(g as usize) * tok, dm.received(g as usize) * tok);
            link_ms(sent + sent.min(o), recv + recv.min(i))
        })
        .fold(0.0, f64::max);
    assert!(
        (c.transfer_ms - want).abs() < 1e-9,
        "{} vs {want}",
        c.transfer_ms
    );
}

#[test]
fn on_one_node_the_shared_flag_changes_nothing() {
    for policy in [Policy::Ep, Policy::Llep] {
        for hot in [45, 3000] {
            let (a, _) = priced(policy, hot, &profile(1, false));
            let (b, _) = priced(policy, hot, &profile(1, true));
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{policy:?} hot {hot}");
        }
    }
}
