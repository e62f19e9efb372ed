//! The generalising cost model (issue 12) against the one it extends: the
//! committed `h200` profile prices layers exactly as before (golden values
//! taken from the model before the GEMM tables, message, launch and memory
//! models existed), and a profile with those parts uses them; the layer
//! fit (overhead by groups and copies, GEMM units inside a layer, link
//! sharing, llep-auto's decision) prices what it says; the committed h200
//! profile carries its fit and its error on held-out shapes.

use llep_trace::plan::{Gate, PlanParams, Policy};
use llep_trace::results::ResultRow;
use llep_trace::sim::cost::charge_auto;
use llep_trace::sim::model::{GemmTable, Launches, LayerFit, MemModel, MsgModel, Proj};
use llep_trace::sim::{Cost, Evaluator, Profile, Shape};

/// A layer: shape, GPUs, experts, per-rank counts `[P][N]`.
struct Layer {
    name: &'static str,
    shape: Shape,
    gpus: usize,
    counts: Vec<u64>,
}

/// Per-rank counts with `hot` of the copies on expert 0 and the rest
/// spread by a fixed pseudo-random pattern.
fn counts(gpus: usize, n: usize, copies_per_rank: u64, hot_pct: u64) -> Vec<u64> {
    let mut out = vec![0u64; gpus * n];
    for r in 0..gpus {
        let hot = copies_per_rank * hot_pct / 100;
        out[r * n] += hot;
        let rest = copies_per_rank - hot;
        let mut left = rest;
        for e in 0..n {
            let w = ((e * 2654435761 + r * 97) % 7 + 1) as u64;
            let c = (rest * w / (4 * n as u64)).min(left);
            out[r * n + e] += c;
            left -= c;
        }
        out[r * n + n - 1] += left;
    }
    out
}

fn layers() -> Vec<Layer> {
    vec![
        Layer {
            name: "gpt-oss 2 GPUs decode 30% hot",
            shape: Shape::bf16(2880, 2880, 4),
            gpus: 2,
            counts: counts(2, 128, 512 * 4, 30),
        },
        Layer {
            name: "gpt-oss 2 GPUs prefill 80% hot",
            shape: Shape::bf16(2880, 2880, 4),
            gpus: 2,
            counts: counts(2, 128, 32768 * 4, 80),
        },
        Layer {
            name: "mixtral 4 GPUs balanced-ish",
            shape: Shape::bf16(4096, 14336, 2),
            gpus: 4,
            counts: counts(4, 8, 16384 * 2, 0),
        },
        Layer {
            name: "deepseek-v3 8 GPUs 50% hot (no curve)",
            shape: Shape::bf16(7168, 2048, 8),
            gpus: 8,
            counts: counts(8, 256, 2048 * 8, 50),
        },
    ]
}

fn price(l: &Layer, prof: &Profile, policy: Policy) -> Cost {
    let n = l.counts.len() / l.gpus;
    let global: Vec<u64> = (0..n)
        .map(|e| (0..l.gpus).map(|r| l.counts[r * n + e]).sum())
        .collect();
    let params = PlanParams {
        gpus: l.gpus,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Always,
    };
    let mut ev = Evaluator::default();
    let (_, cost) = ev.eval(&l.counts, &global, &params, policy, &l.shape, prof);
    cost
}

/// (layer, policy, total ms, compute ms, dispatch ms, transfer ms, max
/// peak bytes) with the built-in h200 profile, printed by the model as it
/// was before issue 12 (commit c71f805, this same test code). The decode
/// layer's two peaks grew when replay began batching units under one
/// activation launch (its gate_up scratch holds a batch, not one unit):
/// 5,441,330,594 and 5,472,697,600 bytes before.
const GOLDEN: [(&str, Policy, f64, f64, f64, f64, u64); 8] = [
    (
        "gpt-oss 2 GPUs decode 30% hot",
        Policy::Ep,
        2.2873002016181463,
        1.993445849247759,
        0.06099917567545466,
        0.0,
        5457487394,
    ),
    (
        "gpt-oss 2 GPUs decode 30% hot",
        Policy::Llep,
        2.3635894107787596,
        1.9700223881825096,
        0.05055922666523289,
        0.17115179491153903,
        5498565760,
    ),
    (
        "gpt-oss 2 GPUs prefill 80% hot",
        Policy::Ep,
        26.007896830020734,
        20.597160760313272,
        2.6194400343439925,
        0.0,
        8168077758,
    ),
    (
        "gpt-oss 2 GPUs prefill 80% hot",
        Policy::Llep,
        13.05936577800399,
        11.620319783840387,
        0.6335949965720623,
        0.17115179491153903,
        7008994432,
    ),
    (
        "mixtral 4 GPUs balanced-ish",
        Policy::Ep,
        22.374359765112523,
        20.235699325799942,
        0.9834022191465523,
        0.0,
        6163404800,
    ),
    (
        "mixtral 4 GPUs balanced-ish",
        Policy::Llep,
        20.504747704202728,
        17.456367552280426,
        0.928214278163782,
        1.948309872739041,
        6834552832,
    ),
    (
        "deepseek-v3 8 GPUs 50% hot (no curve)",
        Policy::Ep,
        18.0233083013739,
        11.487029023310281,
        3.182211638522069,
        0.0,
        9788145328,
    ),
    (
        "deepseek-v3 8 GPUs 50% hot (no curve)",
        Policy::Llep,
        6.54478167986931,
        3.7988329911181418,
        0.8646953785610304,
        1.709397309170659,
        8365922304,
    ),
];

fn summary(c: &Cost) -> (f64, f64, f64, f64, u64) {
    (
        c.total_ms,
        c.compute_ms,
        c.dispatch_ms,
        c.transfer_ms,
        *c.peak_mem_per_gpu.iter().max().unwrap(),
    )
}

#[test]
fn committed_h200_profile_prices_exactly_as_before() {
    let prof = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    assert!(prof.gemm_tables.is_empty() && prof.msg_tokens.is_none() && prof.mem_model.is_none());
    let ls = layers();
    for (name, policy, total, compute, dispatch, transfer, peak) in GOLDEN {
        let l = ls.iter().find(|l| l.name == name).unwrap();
        let got = summary(&price(l, &prof, policy));
        // bit for bit: the new parts are absent, so the old formulas run
        assert_eq!(
            got,
            (total, compute, dispatch, transfer, peak),
            "{name} {policy:?}"
        );
    }
}

#[test]
fn committed_h200_profile_round_trips_without_new_keys() {
    let prof = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    let json = serde_json::to_string(&prof).unwrap();
    for key in [
        "gemm_tables",
        "msg_tokens",
        "msg_weights",
        "launches",
        "mem_model",
        "layer_fit",
        "raw_merged",
    ] {
        assert!(
            !json.contains(key),
            "{key} written for a profile without it"
        );
    }
    let back: Profile = serde_json::from_str(&json).unwrap();
    assert_eq!(back, prof);
}

/// Tables where a GEMM of M rows and shape (N, K) takes 5 us plus
/// 2 M N K FLOP at 500 TFLOP/s, for the given expert shapes.
fn tables(shapes: &[(u32, u32)]) -> Vec<GemmTable> {
    let ms = |m: f64, n: u32, k: u32| 0.005 + 2.0 * m * n as f64 * k as f64 / 500e12 * 1e3;
    let rows = [1.0, 8.0, 64.0, 512.0, 4096.0, 16384.0];
    let mut out = Vec::new();
    for &(d, i) in shapes {
        for (proj, n, k) in [(Proj::GateUp, 2 * i, d), (Proj::Down, d, i)] {
            out.push(GemmTable {
                proj,
                n,
                k,
                points: rows.iter().map(|&m| (m, ms(m, n, k))).collect(),
            });
        }
    }
    out
}

#[test]
fn tables_price_shapes_without_a_curve_and_curves_still_win() {
    let mut prof = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    let ds = Shape::bf16(7168, 2048, 8);
    let formula = prof.gemm_ms(512, &ds);
    prof.gemm_tables = tables(&[(7168, 2048)]);
    let unit = |m: f64| {
        (0.005 + 2.0 * m * 4096.0 * 7168.0 / 500e12 * 1e3)
            + (0.005 + 2.0 * m * 7168.0 * 2048.0 / 500e12 * 1e3)
    };
    let got = prof.gemm_ms(512, &ds);
    assert!(
        (got - unit(512.0)).abs() < 1e-12,
        "{got} vs {}",
        unit(512.0)
    );
    assert_ne!(got, formula);
    // chunked as replay runs it: 40000 rows = 2 x 16384 + 7232
    let big = prof.gemm_ms(40_000, &ds);
    let want = 2.0 * unit(16384.0) + unit(7232.0);
    assert!((big - want).abs() < 1e-9 * want, "{big} vs {want}");
    // gpt-oss has a whole-group curve: unchanged by the tables
    let before = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    let go = Shape::bf16(2880, 2880, 4);
    prof.gemm_tables = tables(&[(2880, 2880), (7168, 2048)]);
    assert_eq!(prof.gemm_ms(777, &go), before.gemm_ms(777, &go));
}

#[test]
fn message_launch_and_memory_models_change_what_they_price() {
    let base = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    let mut prof = base.clone();
    let l = &layers()[0];
    let old = price(l, &base, Policy::Llep);
    prof.msg_tokens = Some(MsgModel {
        latency_us: 10.0,
        per_msg_us: 3.0,
        gbps: 300.0,
    });
    prof.msg_weights = Some(MsgModel {
        latency_us: 12.0,
        per_msg_us: 4.0,
        gbps: 350.0,
    });
    prof.launches = Some(Launches {
        launch_us: 2.5,
        host_sync_us: 20.0,
        upload_us: 8.0,
    });
    let new = price(l, &prof, Policy::Llep);
    assert_eq!(new.compute_ms, old.compute_ms);
    // 2 GPUs, both directions busy: 2 messages per GPU per exchange
    let link_b = old.dispatch_bytes_max;
    let copy = old.dispatch_ms
        - base.link_latency_us * 1e-3
        - link_b as f64 / (base.link_gbps * 1e9) * 1e3;
    let want = (10.0 + 3.0 * 2.0) * 1e-3 + link_b as f64 / 300e9 * 1e3 + copy + 2.0 * 2.5e-3;
    assert!(
        (new.dispatch_ms - want).abs() < 1e-9,
        "{} vs {want}",
        new.dispatch_ms
    );
    assert!(new.transfer_ms > 0.0 && new.transfer_ms != old.transfer_ms);
    // memory by component: never below context + workspace + peers + weights
    prof.mem_model = Some(MemModel {
        context_bytes: 1 << 30,
        cublas_workspace_bytes: 32 << 20,
        nccl_per_peer_bytes: 400 << 20,
        nccl_xfer_per_peer_bytes: 100 << 20,
        nccl_xfer_recv_per_peer_bytes: 0,
        nccl_xfer_send_per_peer_bytes: 0,
        xfer_all_peers: false,
        grain_bytes: 2 << 20,
    });
    let m = price(l, &prof, Policy::Llep);
    let floor = (1u64 << 30) + (32 << 20) + (400 << 20) + 64 * l.shape.expert_bytes;
    for &peak in &m.peak_mem_per_gpu {
        assert!(peak > floor && peak % (2 << 20) == 0, "{peak}");
    }
    // a GPU receiving weights pays the weight communicator for its peer
    assert!(new.transfer_ms > 0.0);
    let recv = m.peak_mem_per_gpu.iter().max().unwrap() - floor;
    assert!(recv >= 100 << 20, "{recv}");
}

#[test]
fn replay_schedule_overlaps_transfers_with_native_compute() {
    let base = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    assert!(!base.transfer_overlaps_native);
    let mut prof = base.clone();
    prof.transfer_overlaps_native = true;
    for l in layers() {
        for policy in [Policy::Ep, Policy::Llep] {
            let (old, new) = (price(&l, &base, policy), price(&l, &prof, policy));
            // phases are priced alike; only how they add up changes
            assert_eq!(
                (old.dispatch_ms, old.transfer_ms, old.compute_ms),
                (new.dispatch_ms, new.transfer_ms, new.compute_ms)
            );
            assert!(new.total_ms <= old.total_ms + 1e-12, "{}", l.name);
            let floor = new.overhead_ms + new.compute_ms + new.combine_ms;
            assert!(new.total_ms >= floor - 1e-12, "{}", l.name);
            // a transfer longer than dispatch was on the old critical path
            if policy == Policy::Llep && new.transfer_ms > new.dispatch_ms {
                assert!(new.total_ms < old.total_ms, "{}", l.name);
            }
        }
    }
}

fn fit(overhead_us: f64, per_group_us: f64, per_kcopy_us: f64) -> LayerFit {
    LayerFit {
        overhead_us,
        overhead_per_group_us: per_group_us,
        overhead_per_kcopy_us: per_kcopy_us,
        unit_scale: 1.0,
        unit_us: 0.0,
        unit_floor_us: 0.0,
        graph_floor_us: 0.0,
        contention: 0.0,
        contention_per_peer: 0.0,
        dispatch_wait: 0.0,
        auto_us: 0.0,
    }
}

/// The old-profile copy with GEMM tables of the DeepSeek-V3 expert (it has
/// no whole-group curve, so the tables price it).
fn tabled() -> (Profile, Layer) {
    let mut prof = Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/profiles/h200-curves-2026-11-28.json"
    ))
    .unwrap();
    prof.gemm_tables = tables(&[(7168, 2048)]);
    let l = layers().pop().unwrap();
    assert_eq!(l.shape.hidden, 7168);
    (prof, l)
}

#[test]
fn layer_fit_prices_overhead_by_groups_and_copies() {
    let (base, l) = tabled();
    let mut prof = base.clone();
    let n = l.counts.len() / l.gpus;
    let active = (0..n)
        .filter(|&e| (0..l.gpus).any(|r| l.counts[r * n + e] > 0))
        .count() as f64;
    let busiest = l
        .counts
        .chunks_exact(n)
        .map(|r| r.iter().sum::<u64>())
        .max()
        .unwrap() as f64;
    let before = price(&l, &base, Policy::Ep);
    assert_eq!(before.overhead_ms, base.overhead_us * 1e-3);
    prof.layer_fit = Some(fit(50.0, 0.0, 0.0));
    let fixed = price(&l, &prof, Policy::Ep);
    assert!((fixed.overhead_ms - 0.05).abs() < 1e-12);
    assert!((fixed.total_ms - (before.total_ms - before.overhead_ms + 0.05)).abs() < 1e-9);
    // EP plans one group per expert with copies; its busiest GPU's copies
    // are what it sends and keeps (the dispatch matrix's row)
    prof.layer_fit = Some(fit(0.0, 1.0, 0.0));
    let per_group = price(&l, &prof, Policy::Ep).overhead_ms;
    assert!(
        (per_group - active * 1e-3).abs() < 1e-12,
        "{per_group} vs {active}"
    );
    prof.layer_fit = Some(fit(0.0, 0.0, 1.0));
    let per_copy = price(&l, &prof, Policy::Ep).overhead_ms;
    assert!(
        (per_copy - busiest * 1e-6).abs() < 1e-12,
        "{per_copy} vs {busiest}"
    );
    // LLEP splits experts: more groups, more planning
    prof.layer_fit = Some(fit(0.0, 1.0, 0.0));
    assert!(price(&l, &prof, Policy::Llep).overhead_ms > per_group);
}

#[test]
fn layer_fit_prices_units_inside_a_layer_and_link_sharing() {
    let (base, l) = tabled();
    let ds = l.shape;
    let mut prof = base.clone();
    prof.layer_fit = Some(LayerFit {
        unit_scale: 0.5,
        unit_us: 10.0,
        unit_floor_us: 0.0,
        graph_floor_us: 0.0,
        ..fit(0.0, 0.0, 0.0)
    });
    // 40000 rows: 3 units of at most 16384 rows
    let want = 0.5 * base.gemm_ms(40_000, &ds) + 3.0 * 0.010;
    let got = prof.gemm_ms(40_000, &ds);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // link sharing: only layers that move weights pay it
    prof.layer_fit = Some(LayerFit {
        contention: 0.5,
        ..fit(0.0, 0.0, 0.0)
    });
    let unfit = {
        let mut p = base.clone();
        p.layer_fit = Some(fit(0.0, 0.0, 0.0));
        p
    };
    let (ep0, ep1) = (price(&l, &unfit, Policy::Ep), price(&l, &prof, Policy::Ep));
    assert_eq!(ep0.dispatch_ms, ep1.dispatch_ms);
    let (ll0, ll1) = (
        price(&l, &unfit, Policy::Llep),
        price(&l, &prof, Policy::Llep),
    );
    assert!(ll0.transfer_bytes > 0);
    assert!(ll1.dispatch_ms > ll0.dispatch_ms && ll1.transfer_ms > ll0.transfer_ms);
    assert_eq!(ll1.combine_ms, ll0.combine_ms);
    assert_eq!(ll1.compute_ms, ll0.compute_ms);
    // more GPUs, more token peers on the port the weights use (the layer
    // has 8 GPUs: 0.5 + 0.25 x 6, capped at 1, of the exchange's link time)
    prof.layer_fit = Some(LayerFit {
        contention: 0.5,
        contention_per_peer: 0.25,
        ..fit(0.0, 0.0, 0.0)
    });
    let ll2 = price(&l, &prof, Policy::Llep);
    assert_eq!(l.gpus, 8);
    assert!(ll2.transfer_ms > ll1.transfer_ms && ll2.dispatch_ms > ll1.dispatch_ms);
    // every GPU's dispatch waits for a fraction of the longest transfer
    prof.layer_fit = Some(LayerFit {
        dispatch_wait: 0.25,
        ..fit(0.0, 0.0, 0.0)
    });
    let ll3 = price(&l, &prof, Policy::Llep);
    let want = ll0.dispatch_ms + 0.25 * ll0.transfer_ms;
    assert!(
        (ll3.dispatch_ms - want).abs() < 1e-9,
        "{} vs {want}",
        ll3.dispatch_ms
    );
    assert_eq!(ll3.transfer_ms, ll0.transfer_ms);
    assert_eq!(price(&l, &prof, Policy::Ep).dispatch_ms, ep0.dispatch_ms);
}

#[test]
fn llep_auto_rows_pay_for_their_decision() {
    let (mut prof, _) = tabled();
    let mut r = ResultRow {
        t_overhead_ms: 0.1,
        t_total_ms: 1.0,
        ..Default::default()
    };
    charge_auto(&mut r, &prof);
    assert_eq!((r.t_overhead_ms, r.t_total_ms), (0.1, 1.0));
    prof.layer_fit = Some(LayerFit {
        auto_us: 40.0,
        ..fit(0.0, 0.0, 0.0)
    });
    charge_auto(&mut r, &prof);
    assert!((r.t_overhead_ms - 0.14).abs() < 1e-12 && (r.t_total_ms - 1.04).abs() < 1e-12);
}

#[test]
fn weight_connections_follow_the_plan_the_rule_and_a_replays_record() {
    let (mut prof, l) = tabled();
    let (r, s) = (320u64 << 20, 64u64 << 20);
    let mm = MemModel {
        context_bytes: 1 << 30,
        cublas_workspace_bytes: 0,
        nccl_per_peer_bytes: 400 << 20,
        nccl_xfer_per_peer_bytes: r,
        nccl_xfer_recv_per_peer_bytes: r,
        nccl_xfer_send_per_peer_bytes: s,
        xfer_all_peers: false,
        grain_bytes: 2 << 20,
    };
    let steady = MemModel {
        xfer_all_peers: true,
        ..mm
    };
    let mem = |m: MemModel, prof: &mut Profile, policy| {
        prof.mem_model = Some(m);
        price(&l, prof, policy).peak_mem_per_gpu
    };
    // EP moves no weights: no weight connection under either rule
    assert_eq!(
        mem(mm, &mut prof, Policy::Ep),
        mem(steady, &mut prof, Policy::Ep)
    );
    let no_links = MemModel {
        nccl_xfer_recv_per_peer_bytes: 0,
        nccl_xfer_send_per_peer_bytes: 0,
        nccl_xfer_per_peer_bytes: 0,
        ..mm
    };
    let bare = mem(no_links, &mut prof, Policy::Llep);
    let own = mem(mm, &mut prof, Policy::Llep);
    let all = mem(steady, &mut prof, Policy::Llep);
    // LLEP, steady state: every GPU connected to its 7 peers both ways
    for (a, b) in bare.iter().zip(&all) {
        assert_eq!(b - a, 7 * (r + s));
    }
    // this layer's own peers: a receiver pays r per lender, a lender s per
    // borrower (each pair once however many experts it moves)
    let params = PlanParams {
        gpus: l.gpus,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Always,
    };
    let n = l.counts.len() / l.gpus;
    let global: Vec<u64> = (0..n)
        .map(|e| (0..l.gpus).map(|q| l.counts[q * n + e]).sum())
        .collect();
    let mut ev = Evaluator::default();
    let (plan, _) = ev.eval(&l.counts, &global, &params, Policy::Llep, &l.shape, &prof);
    let pairs: std::collections::BTreeSet<(u32, u32)> =
        plan.transfers.iter().map(|t| (t.src, t.dst)).collect();
    assert!(!pairs.is_empty(), "this layer's LLEP plan moves weights");
    for g in 0..l.gpus as u32 {
        let lenders = pairs.iter().filter(|p| p.1 == g).count() as u64;
        let borrowers = pairs.iter().filter(|p| p.0 == g).count() as u64;
        let extra = own[g as usize] - bare[g as usize];
        assert_eq!(extra, lenders * r + borrowers * s, "GPU {g}");
    }
    // a replay's record overrides the rule (here: EP after LLEP in one
    // process: GPU 0 received from 2 peers and sent to 1)
    prof.mem_model = Some(steady);
    let mut inn = vec![0u64; l.gpus];
    let mut out = vec![0u64; l.gpus];
    (inn[0], out[0]) = (2, 1);
    ev.set_recorded_links(Some((inn, out)));
    let (_, c) = ev.eval(&l.counts, &global, &params, Policy::Ep, &l.shape, &prof);
    ev.set_recorded_links(None);
    let ep = mem(steady, &mut prof, Policy::Ep);
    assert_eq!(c.peak_mem_per_gpu[0] - ep[0], 2 * r + s);
    assert_eq!(c.peak_mem_per_gpu[1..], ep[1..]);
    // an older profile without the split: one charge per connected peer
    let old = MemModel {
        nccl_xfer_recv_per_peer_bytes: 0,
        nccl_xfer_send_per_peer_bytes: 0,
        ..mm
    };
    assert_eq!(old.weight_links_bytes(3, 2), 3 * r);
    assert_eq!(mm.weight_links_bytes(3, 2), 3 * r + 2 * s);
}

#[test]
fn committed_h200_profile_carries_its_fit_and_error_on_held_out_shapes() {
    let prof = Profile::load("h200").unwrap();
    let f = prof.layer_fit.expect("layer fit");
    assert!(f.overhead_us > 0.0 && f.unit_scale > 0.0);
    assert!(prof.transfer_overlaps_native);
    assert!(prof.mem_model.unwrap().xfer_all_peers);
    let e = prof.measured_error.as_ref().expect("stamped");
    let s = e
        .split
        .as_ref()
        .expect("split into calibration and held-out shapes");
    assert_eq!(s.held_out_shapes, [(7168, 2048), (2048, 768)]);
    assert!(s.held_out_rows > 0 && s.in_sample_rows > 0);
    assert_eq!(s.held_out_rows + s.in_sample_rows, e.rows);
    // the cost-aware gate's margin is the stamped median error
    assert_eq!(
        llep_trace::sim::auto_margin(&prof),
        e.median_abs_pct / 100.0
    );
    assert!(prof.label().contains("held out"), "{}", prof.label());
    // the gate's margin per launch mode, chosen on measured pairs: a
    // constant there, whatever the batch size
    let (eager, graphs) = (e.gate_margin.unwrap(), e.graph_gate_margin.unwrap());
    assert!(eager.inputs > 0 && graphs.inputs > 0);
    let mut g = prof.clone();
    g.cuda_graphs = true;
    for t in [100, 30_000] {
        assert_eq!(
            llep_trace::sim::auto_margin_at(&prof, t),
            eager.margin_pct / 100.0
        );
        assert_eq!(
            llep_trace::sim::auto_margin_at(&g, t),
            graphs.margin_pct / 100.0
        );
    }
    // without them (profiles stamped before), the stamped error of the
    // nearest measured batch size
    let mut old = prof.clone();
    old.measured_error.as_mut().unwrap().gate_margin = None;
    assert!(e.by_tokens.len() >= 3, "{:?}", e.by_tokens);
    let decode = llep_trace::sim::auto_margin_at(&old, 100);
    let prefill = llep_trace::sim::auto_margin_at(&old, 30_000);
    assert_eq!(decode, e.by_tokens[0].1 / 100.0);
    assert_eq!(prefill, e.by_tokens.last().unwrap().1 / 100.0);
    assert_ne!(decode, prefill);
    // the GPU-count terms: weights priced per message, link sharing per peer
    assert!(prof.msg_weights.is_some());
    assert!(f.contention_on(4) > f.contention_on(2) && f.dispatch_wait > 0.0);
}

#[test]
fn host_floor_raises_a_gpu_of_small_units_and_large_units_hide_it() {
    let (base, l) = tabled();
    let ds = l.shape;
    let unfit = {
        let mut p = base.clone();
        p.layer_fit = Some(fit(0.0, 0.0, 0.0));
        p
    };
    let mut prof = base.clone();
    prof.layer_fit = Some(LayerFit {
        unit_floor_us: 50.0,
        ..fit(0.0, 0.0, 0.0)
    });
    // a group's own price is untouched: the floor is a GPU's, not a unit's
    assert_eq!(prof.gemm_ms(8, &ds), unfit.gemm_ms(8, &ds));
    let small = unfit.gemm_ms(8, &ds);
    assert!(small < 0.05, "{small}");
    // two GPUs, 16 experts each with 8 rows: every unit is below the floor,
    // so each GPU's compute is its 16 units at 50 us
    let (gpus, n) = (2usize, 32usize);
    let few = Layer {
        name: "16 small units per GPU",
        shape: ds,
        gpus,
        counts: vec![4; gpus * n],
    };
    let c0 = price(&few, &unfit, Policy::Ep);
    let c1 = price(&few, &prof, Policy::Ep);
    assert!(
        (c0.compute_ms - 16.0 * small).abs() < 1e-12,
        "{}",
        c0.compute_ms
    );
    assert!(
        (c1.compute_ms - 16.0 * 0.050).abs() < 1e-12,
        "{}",
        c1.compute_ms
    );
    assert!((c1.total_ms - c0.total_ms - (c1.compute_ms - c0.compute_ms)).abs() < 1e-12);
    // launched as CUDA graphs, the host's floor gives way to the GPU's
    // (here 40 us a unit), and the rows say how they were priced
    let graphed = |floor: f64| {
        let mut p = prof.clone();
        p.cuda_graphs = true;
        p.layer_fit.as_mut().unwrap().graph_floor_us = floor;
        price(&few, &p, Policy::Ep)
    };
    let g = graphed(40.0);
    assert!(
        (g.compute_ms - 16.0 * 0.040).abs() < 1e-12,
        "{}",
        g.compute_ms
    );
    assert!(g.cuda_graphs && !c1.cuda_graphs);
    assert_eq!(graphed(0.0).compute_ms, c0.compute_ms);
    // tables timed as graphs price graphed layers, and only those
    let mut halved = unfit.clone();
    halved.graph_gemm_tables = unfit.gemm_tables.clone();
    for t in &mut halved.graph_gemm_tables {
        t.points.iter_mut().for_each(|p| p.1 *= 0.5);
    }
    assert_eq!(price(&few, &halved, Policy::Ep).compute_ms, c0.compute_ms);
    halved.cuda_graphs = true;
    let h = price(&few, &halved, Policy::Ep).compute_ms;
    assert!(
        (h - 0.5 * c0.compute_ms).abs() < 1e-9,
        "{h} vs {}",
        c0.compute_ms
    );
    // one large unit beside them: the GPU's own time of the large one hides
    // the host's time of the small ones (its sum is above 16 x 50 us)
    let mut hot = few.counts.clone();
    hot[0] += 2 * 16_000;
    let big = Layer {
        name: "one large unit beside 15 small",
        counts: hot,
        ..few
    };
    let b0 = price(&big, &unfit, Policy::Ep);
    let b1 = price(&big, &prof, Policy::Ep);
    assert!(b0.compute_ms > 16.0 * 0.050, "{}", b0.compute_ms);
    assert_eq!(b1.compute_ms, b0.compute_ms);
}
