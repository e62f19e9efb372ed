//! Topology-aware simulation (issue 16): on one node the cost model prices
//! exactly as before (golden values from the model before topology existed),
//! traffic between nodes is counted and priced on the NIC, `llep-topo` is
//! never slower than `llep` and moves fewer bytes between nodes where the
//! skew allows, and bad topology flags fail with one clear line.

use llep_trace::plan::topo::Topology;
use llep_trace::plan::{dispatch_matrix, DispatchMatrix, Gate, PlanParams, Planner, Policy};
use llep_trace::results::read_results;
use llep_trace::sim::{price, CostScratch, Profile, Shape};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");

/// DeepSeek-V3's MoE layer, synthetic skew.
const DSV3: [&str; 8] = [
    "--experts",
    "256",
    "--top-k",
    "8",
    "--hidden-size",
    "7168",
    "--intermediate-size",
    "2048",
];

fn simulate(gpus: u32, profile: &str, extra: &[&str]) -> serde_json::Value {
    simulate_text(gpus, profile, extra).0
}

/// The summary, parsed and as printed.
fn simulate_text(gpus: u32, profile: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let g = gpus.to_string();
    let out = Command::new(BIN)
        .args(["simulate", "-q", "--json", "--threads", "1"])
        .args([
            "--synthetic",
            "50:4,95:1,balanced",
            "--tokens-per-rank",
            "4096",
        ])
        .args(DSV3)
        .args(["--gpus", &g, "--profile", profile])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    (serde_json::from_str(&text).unwrap(), text)
}

/// (profile, GPUs, scenario, policy, total ms, peak bytes), printed by
/// `simulate --json` of the build before topology (main at 5dca268).
const GOLDEN: [(&str, u32, &str, &str, f64, u64); 16] = [
    ("h200", 8, "50:4", "ep", 33.834926862600504, 11881287680),
    ("h200", 8, "50:4", "llep", 9.876444002335909, 9257938944),
    ("h200", 8, "95:1", "ep", 56.25723698899306, 14513583808),
    ("h200", 8, "95:1", "llep", 8.304150279657433, 8419252224),
    ("h200", 32, "50:4", "ep", 121.57395809296375, 30603247616),
    ("h200", 32, "50:4", "llep", 14.244256303053684, 16819034112),
    ("h200", 32, "95:1", "ep", 226.91202316380142, 43536935936),
    ("h200", 32, "95:1", "llep", 14.268401027233645, 16833714176),
    ("h100", 8, "50:4", "ep", 34.04040802461537, 7795183616),
    ("h100", 8, "50:4", "llep", 10.200391601099485, 5171834880),
    ("h100", 8, "95:1", "ep", 56.662254430785666, 10427479744),
    ("h100", 8, "95:1", "llep", 8.559742867298462, 4333148160),
    ("h100", 32, "50:4", "ep", 122.55986920054156, 16828301312),
    ("h100", 32, "50:4", "llep", 15.911095496073848, 3044087808),
    ("h100", 32, "95:1", "ep", 228.7170835708062, 29761989632),
    ("h100", 32, "95:1", "llep", 15.935562269407182, 3058767872),
];

fn find<'a>(d: &'a serde_json::Value, scenario: &str, policy: &str) -> &'a serde_json::Value {
    d["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == scenario && s["policy"] == policy)
        .unwrap_or_else(|| panic!("no {scenario} {policy} row"))
}

#[test]
fn one_node_prices_exactly_as_before_topology() {
    // the golden figures are the sequential schedule's (`--overlap off`)
    let seq = ["--overlap", "off"];
    for extra in [&seq[..], &["--nodes", "1", "--overlap", "off"][..]] {
        for (prof, gpus) in [("h200", 8), ("h200", 32), ("h100", 8), ("h100", 32)] {
            // the golden h200 figures were priced with the profile of
            // whole-group curves, before its GEMM tables
            let file = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/profiles/h200-curves-2026-11-28.json"
            );
            let (d, text) = simulate_text(gpus, if prof == "h200" { file } else { prof }, extra);
            assert!(d.get("nodes").is_none(), "one-node output gained a field");
            for &(_, _, sc, pol, total, peak) in
                GOLDEN.iter().filter(|g| g.0 == prof && g.1 == gpus)
            {
                let s = find(&d, sc, pol);
                // serde_json's parse may be an ulp off: the printed digits
                // (shortest round trip) are compared exactly
                let got = s["total_ms"].as_f64().unwrap();
                assert!((got - total).abs() <= 2.0 * f64::EPSILON * total);
                let want = format!("\"total_ms\": {total},");
                assert!(text.contains(&want), "{prof} {gpus} {sc} {pol}: {got}");
                assert_eq!(s["peak_mem_max_bytes"].as_u64().unwrap(), peak);
                assert!(s.get("inter_node_bytes").is_none());
            }
        }
    }
}

#[test]
fn topo_is_never_slower_than_llep_and_crosses_nodes_less_when_one_expert_is_hot() {
    for (gpus, topo) in [(32, "4x8"), (64, "8x8"), (128, "16x8")] {
        let d = simulate(
            gpus,
            "h200",
            &["--topology", topo, "--policy", "ep,llep,llep-topo"],
        );
        assert_eq!(d["nodes"].as_u64().unwrap() as u32, gpus / 8);
        for sc in ["50:4", "95:1", "balanced"] {
            let (l, t) = (find(&d, sc, "llep"), find(&d, sc, "llep-topo"));
            let ms = |s: &serde_json::Value| s["total_ms"].as_f64().unwrap();
            let bytes = |s: &serde_json::Value| s["inter_node_bytes"].as_u64().unwrap();
            assert!(ms(t) <= ms(l), "{gpus} {sc}: topo {} llep {}", ms(t), ms(l));
            assert!(bytes(t) <= bytes(l), "{gpus} {sc}");
            if sc == "95:1" {
                assert!(
                    (bytes(t) as f64) < 0.8 * bytes(l) as f64,
                    "{gpus}: topo {} llep {}",
                    bytes(t),
                    bytes(l)
                );
            }
        }
    }
}

/// Every GPU its own node: every byte that leaves a GPU crosses nodes, and
/// the exchange is priced on the NIC alone.
#[test]
fn every_gpu_its_own_node_sends_everything_over_the_nic() {
    let (p, n) = (8usize, 64usize);
    let mut per_rank = vec![0u64; p * n];
    for r in 0..p {
        for e in 0..n {
            per_rank[r * n + e] = ((r * 7 + e * 13) % 50) as u64 + if e == 3 { 4000 } else { 0 };
        }
    }
    let global: Vec<u64> = (0..n)
        .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
        .collect();
    let params = PlanParams {
        gpus: p,
        alpha: 1.0,
        min_gemm: 0,
        gate: Gate::Always,
    };
    let shape = Shape::bf16(7168, 2048, 8);
    let plan = Planner::new().plan(&global, &params, Policy::Llep).unwrap();
    assert!(!plan.transfers.is_empty());
    let mut dm = DispatchMatrix::default();
    dispatch_matrix(&plan, &per_rank, &mut dm);
    let mut one = Profile::load("h200").unwrap();
    let mut many = one.clone();
    many.nodes = p as u32;
    let mut sc = CostScratch::default();
    let c1 = price(&plan, &dm, &global, &shape, &one, &mut sc);
    let cp = price(&plan, &dm, &global, &shape, &many, &mut sc);
    let tok = shape.hidden * shape.dtype_bytes;
    let off: u64 = (0..p).map(|g| dm.sent_off(g)).sum();
    assert_eq!(c1.inter_node_bytes, 0);
    assert_eq!(
        cp.inter_node_bytes,
        2 * off * tok + plan.transfers.len() as u64 * shape.expert_bytes
    );
    // the NIC alone: latency plus the larger direction at inter_gbps
    // the NIC alone (latency plus the larger direction at inter_gbps) and
    // the on-device packing copy
    // plus the profile's two kernel launches, and its link sharing on a GPU
    // that moves weights while it exchanges tokens
    let launch = many.launches.map_or(0.0, |l| l.launch_us * 1e-3);
    let share = many.layer_fit.map_or(0.0, |f| f.contention);
    let moves = |g: usize| {
        plan.transfers
            .iter()
            .any(|t| t.src as usize == g || t.dst as usize == g)
    };
    let nic = (0..p)
        .map(|g| {
            let b = dm.sent_off(g).max(dm.received(g)) * tok;
            let copy = (2 * dm.row_sum(g) * tok) as f64 / (many.copy_gbps * 1e9) * 1e3;
            let link = many.inter_latency_us * 1e-3 + b as f64 / (many.inter_gbps * 1e9) * 1e3;
            let shared = if moves(g) { share * link } else { 0.0 };
            link + shared + copy + 2.0 * launch
        })
        .fold(0.0, f64::max);
    assert!(
        (cp.dispatch_ms - nic).abs() < 1e-9,
        "{} vs {nic}",
        cp.dispatch_ms
    );
    assert!(cp.dispatch_ms > c1.dispatch_ms);
    assert!(cp.transfer_ms > c1.transfer_ms);
    // memory is per GPU and does not depend on the topology
    assert_eq!(cp.peak_mem_per_gpu, c1.peak_mem_per_gpu);
    // and a slower NIC costs more
    one.inter_gbps = many.inter_gbps / 4.0;
    one.nodes = p as u32;
    let slow = price(&plan, &dm, &global, &shape, &one, &mut sc);
    assert!(slow.total_ms > cp.total_ms);
}

fn run_fail(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_topology_flags_fail_with_one_line() {
    let e = run_fail(&["simulate", "-q", "--gpus", "8", "--nodes", "3"]);
    assert!(e.contains("--nodes 3 does not divide --gpus 8"), "{e}");
    let e = run_fail(&["tune", "-q", "--gpus", "16", "--topology", "4x8"]);
    assert!(
        e.contains("--topology 4x8 is 32 GPUs but --gpus is 16"),
        "{e}"
    );
    let e = run_fail(&["simulate", "-q", "--topology", "4by8"]);
    assert!(e.contains("is not NxG"), "{e}");
    let e = run_fail(&["simulate", "-q", "--topology", "2x4", "--nodes", "2"]);
    assert!(e.contains("not both"), "{e}");
    let e = run_fail(&["plan", "--counts", "1,2,3,4", "--gpus", "4", "--nodes", "3"]);
    assert!(e.contains("--nodes 3 does not divide --gpus 4"), "{e}");
}

#[test]
fn topology_sets_the_gpus_and_plan_marks_cross_node_transfers() {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "-q",
            "--topology",
            "2x4",
            "--steps",
            "0",
            "--layers",
            "0",
        ])
        .args(["--policy", "ep,llep-topo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("on 8 GPUs"), "{s}");
    assert!(
        s.contains("inter-node GB") && s.contains("2 nodes of 4 GPUs"),
        "{s}"
    );
    // GPU 4 (node 1) is hot; node 0 is the least loaded
    let counts = "20,20,20,20,300,60,60,60";
    let plan = |policy: &str| {
        let out = Command::new(BIN)
            .args(["plan", "--counts", counts, "--gpus", "8", "--nodes", "2"])
            .args([
                "--alpha",
                "1.5",
                "--min-gemm",
                "0",
                "--ratio",
                "always",
                "--policy",
                policy,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (topo, llep) = (plan("llep-topo"), plan("llep"));
    assert!(
        topo.contains("4 weight transfers (0 duplicate, 1 across nodes)"),
        "{topo}"
    );
    assert_eq!(topo.matches("CROSS").count(), 1, "{topo}");
    assert!(
        llep.contains("3 weight transfers (0 duplicate, 3 across nodes)"),
        "{llep}"
    );
    assert!(llep.contains("1 -> 0 CROSS"), "{llep}");
    assert_eq!(
        Topology::new(8, 2).unwrap(),
        "2x4".parse::<Topology>().unwrap()
    );
}

#[test]
fn results_written_before_the_inter_node_column_still_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/olmoe-lambda/results.parquet");
    let (_, rows) = read_results(&path).unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.inter_node_bytes == 0));
}

#[test]
fn report_shows_inter_node_bytes_of_multi_node_results() {
    let dir = std::env::temp_dir().join(format!("llep-topology-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, nodes) in [("one", "1"), ("four", "4")] {
        let res = dir.join(format!("{name}.parquet"));
        let rep = dir.join(name);
        let (res, rep) = (res.to_str().unwrap(), rep.to_str().unwrap());
        run(&[
            "simulate",
            "-q",
            "--synthetic",
            "95:1",
            "--tokens-per-rank",
            "512",
        ]);
        let mut a = vec![
            "simulate",
            "-q",
            "--synthetic",
            "95:1",
            "--tokens-per-rank",
            "512",
        ];
        a.extend([
            "--gpus",
            "8",
            "--nodes",
            nodes,
            "--policy",
            "ep,llep,llep-topo",
        ]);
        a.extend(["--out", res]);
        run(&a);
        run(&["report", "-q", res, "--out", rep]);
        let html = std::fs::read_to_string(Path::new(rep).join("index.html")).unwrap();
        assert_eq!(
            html.contains("Bytes crossing nodes per layer-step"),
            nodes != "1",
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
