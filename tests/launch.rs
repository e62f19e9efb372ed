//! Replay across processes without a GPU: the TCP rendezvous between ranks
//! (threads on localhost standing in for processes), its bounded waits when
//! a rank never arrives, and the launcher checks of the command line
//! (`--nodes` against srun / mpirun, world size against `--gpus`), which
//! fail before any GPU is touched.

use llep_trace::gpu::rendezvous::{exchange, meet, Launcher, ProcessRank};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rank(rank: usize, world: usize, port: u16, timeout_ms: u64) -> ProcessRank {
    ProcessRank {
        launcher: Launcher::Torchrun,
        rank,
        world,
        local_rank: rank,
        nodes: None,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn payload() -> Vec<u8> {
    (0..256u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn every_rank_gets_rank_0s_ids_even_when_rank_0_starts_last() {
    let port = free_port();
    let p = payload();
    let others: Vec<_> = (1..4)
        .map(|r| thread::spawn(move || meet(&rank(r, 4, port, 20_000), None, 256)))
        .collect();
    thread::sleep(Duration::from_millis(700));
    let p0 = p.clone();
    let zero = thread::spawn(move || meet(&rank(0, 4, port, 20_000), Some(&p0), 256));
    assert_eq!(zero.join().unwrap().unwrap(), p);
    for h in others {
        assert_eq!(h.join().unwrap().unwrap(), p);
    }
    // NCCL ids (signed chars) survive the trip byte for byte
    let port = free_port();
    let mut a = [0 as std::ffi::c_char; 128];
    for (i, c) in a.iter_mut().enumerate() {
        *c = (i as i32 - 64) as std::ffi::c_char;
    }
    let b = [5 as std::ffi::c_char; 128];
    let one = thread::spawn(move || exchange(&rank(1, 2, port, 20_000), None, 2).unwrap());
    let zero = exchange(&rank(0, 2, port, 20_000), Some(vec![a, b]), 2).unwrap();
    assert_eq!(zero, vec![a, b]);
    assert_eq!(one.join().unwrap(), vec![a, b]);
}

#[test]
fn rank_0_alone_gives_up_after_the_timeout_naming_the_missing_rank() {
    let port = free_port();
    let t = Instant::now();
    let e = meet(&rank(0, 2, port, 1_500), Some(&payload()), 256)
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1_400) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(
        e.starts_with(&format!("rendezvous on 127.0.0.1:{port}: rank(s) 1 of 2 did not check in within 2 s (--rendezvous-timeout; started by torchrun")),
        "{e}"
    );
}

#[test]
fn a_rank_without_rank_0_gives_up_after_the_timeout() {
    let port = free_port();
    let t = Instant::now();
    let e = meet(&rank(1, 2, port, 1_000), None, 256)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(
        e.contains("rank 1: rank 0 was not reachable within 1 s (--rendezvous-timeout"),
        "{e}"
    );
    assert!(e.contains("MASTER_ADDR/MASTER_PORT"), "{e}");
}

#[test]
fn when_one_rank_is_missing_the_ranks_that_came_hear_why_rank_0_gave_up() {
    let port = free_port();
    let one = thread::spawn(move || meet(&rank(1, 3, port, 30_000), None, 256));
    let t = Instant::now();
    let e0 = meet(&rank(0, 3, port, 1_500), Some(&payload()), 256)
        .unwrap_err()
        .to_string();
    assert!(e0.contains("rank(s) 2 of 3 did not check in"), "{e0}");
    // rank 1 waits 30 s on its own, but hears rank 0's verdict at once
    let e1 = one.join().unwrap().unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(
        e1.contains("rank 1: rank 0 gave up: rank(s) 2 of 3 did not check in"),
        "{e1}"
    );
}

/// A raw check-in as rank `r` of `w` ranks expecting `len` bytes.
fn hello(port: u16, r: u32, w: u32, len: u32) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("{e}"),
        }
    };
    let mut h = b"LLEP".to_vec();
    for v in [1u32, r, w, len] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&h).unwrap();
    s
}

#[test]
fn bad_check_ins_fail_the_rendezvous_with_the_reason() {
    // two processes claiming rank 1
    let port = free_port();
    let z = thread::spawn(move || meet(&rank(0, 3, port, 10_000), Some(&payload()), 256));
    let _a = hello(port, 1, 3, 256);
    thread::sleep(Duration::from_millis(200));
    let _b = hello(port, 1, 3, 256);
    let e = z.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("rank 1 checked in twice"), "{e}");
    // a rank from a launch of another size
    let port = free_port();
    let z = thread::spawn(move || meet(&rank(0, 2, port, 10_000), Some(&payload()), 256));
    let _c = hello(port, 1, 4, 256);
    let e = z.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("world of 4 ranks, rank 0 in one of 2"), "{e}");
    // a rank that checks in and then dies is noticed before the timeout
    let port = free_port();
    let t = Instant::now();
    let z = thread::spawn(move || meet(&rank(0, 3, port, 20_000), Some(&payload()), 256));
    drop(hello(port, 2, 3, 256));
    let e = z.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("rank 2 checked in, then went away"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

const LAUNCH_VARS: [&str; 20] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NNODES",
    "SLURM_STEP_NUM_NODES",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "NCCL_P2P_DISABLE",
    "NCCL_SHM_DISABLE",
    "MOE_ADAPTIVE_LPT_ROUTING_RATIO",
];

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(ROOT);
    for v in LAUNCH_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c.output().expect("binary runs")
}

/// Run, expect failure with exactly one error line; return it.
fn one_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = run(args, env);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!o.status.success(), "{args:?} {env:?} should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    lines[0].to_string()
}

const REPLAY: [&str; 6] = [
    "replay",
    "--synthetic",
    "balanced",
    "--tokens-per-rank",
    "64",
    "--gpus",
];

#[test]
fn replay_refuses_nodes_or_gpus_that_disagree_with_the_launcher() {
    let srun = [
        ("SLURM_PROCID", "1"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NNODES", "2"),
        ("SLURM_STEP_NODELIST", "gpu[01-02]"),
    ];
    let mut a = REPLAY.to_vec();
    a.extend(["4", "--nodes", "1"]);
    assert_eq!(
        one_error(&a, &srun),
        "error: --nodes 1 but srun says 2 node(s) (SLURM_NNODES=2)"
    );
    let mut a = REPLAY.to_vec();
    a.extend(["2", "--nodes", "2"]);
    let e = one_error(&a, &srun);
    assert!(
        e.starts_with("error: --gpus 2 but srun started 4 processes"),
        "{e}"
    );
    let mpi = [
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
    ];
    let mut a = REPLAY.to_vec();
    a.extend(["4", "--nodes", "2"]);
    assert_eq!(
        one_error(&a, &mpi),
        "error: --nodes 2 but mpirun says 4 node(s) (OMPI_COMM_WORLD_SIZE 4 / OMPI_COMM_WORLD_LOCAL_SIZE 1)"
    );
    // mpirun across nodes needs rank 0's address
    let e = one_error(&a, &mpi[..4]);
    assert!(
        e.contains("MASTER_ADDR is not set") && e.contains("mpirun -x MASTER_ADDR"),
        "{e}"
    );
    // srun's node list must parse
    let bad = [
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_NNODES", "2"),
        ("SLURM_JOB_NODELIST", "gpu[01-"),
    ];
    let mut a = REPLAY.to_vec();
    a.push("2");
    let e = one_error(&a, &bad);
    assert!(
        e.contains("SLURM_JOB_NODELIST") && e.contains("unclosed '['"),
        "{e}"
    );
    // threads: pseudo-nodes must split the GPUs
    let mut a = REPLAY.to_vec();
    a.extend(["2", "--nodes", "3"]);
    let e = one_error(&a, &[]);
    assert!(e.contains("--nodes 3 does not divide --gpus 2"), "{e}");
    let mut a = REPLAY.to_vec();
    a.extend(["2", "--rendezvous-timeout", "0"]);
    let e = one_error(&a, &[]);
    assert!(e.contains("--rendezvous-timeout"), "{e}");
}

#[test]
fn calibrate_nodes_must_split_the_gpus_and_measure_a_link() {
    let e = one_error(
        &[
            "calibrate",
            "--gpus",
            "2",
            "--nodes",
            "3",
            "--out",
            "/tmp/x.json",
        ],
        &[],
    );
    assert!(e.contains("--nodes 3 does not divide --gpus 2"), "{e}");
    let e = one_error(
        &[
            "calibrate",
            "--gemm-only",
            "--nodes",
            "2",
            "--out",
            "/tmp/x.json",
        ],
        &[],
    );
    assert!(
        e.contains("--nodes: only a calibration with communication"),
        "{e}"
    );
}

/// A pseudo-node link (NCCL's sockets over one host's loopback) shares one
/// budget between directions: an exchange costs its bytes out plus in, a
/// one-way weight transfer only its own; a NIC (the default) is full duplex.
#[test]
fn a_shared_inter_node_link_prices_both_directions_of_an_exchange() {
    use llep_trace::plan::{dispatch_matrix, DispatchMatrix, Gate, PlanParams, Planner, Policy};
    use llep_trace::sim::{price, CostScratch, Profile, Shape};
    let (p, n) = (2usize, 8usize);
    // both ranks route mostly to expert 0 (GPU 0): lopsided traffic
    let mut per_rank = vec![0u64; p * n];
    for r in 0..p {
        for e in 0..n {
            per_rank[r * n + e] = if e == 0 {
                3000
            } else {
                40 + (r * 3 + e) as u64
            };
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
    let shape = Shape::bf16(2880, 2880, 4);
    let tok = shape.hidden * shape.dtype_bytes;
    let mut full = Profile::load("h200").unwrap();
    full.nodes = 2;
    (
        full.msg_tokens,
        full.msg_weights,
        full.launches,
        full.copy_gbps,
    ) = (None, None, None, 0.0);
    // link sharing between exchange and transfers is another term: off here
    full.layer_fit = None;
    (full.inter_gbps, full.inter_latency_us) = (4.0, 50.0);
    let mut shared = full.clone();
    shared.inter_shared = true;
    let nic = |b: u64| 50.0 * 1e-3 + b as f64 / 4e9 * 1e3;
    let mut sc = CostScratch::default();
    let mut dm = DispatchMatrix::default();
    for policy in [Policy::Ep, Policy::Llep] {
        let plan = Planner::new().plan(&global, &params, policy).unwrap();
        dispatch_matrix(&plan, &per_rank, &mut dm);
        let cf = price(&plan, &dm, &global, &shape, &full, &mut sc);
        let cs = price(&plan, &dm, &global, &shape, &shared, &mut sc);
        let want = |sum: bool| {
            (0..p)
                .map(|g| {
                    let (o, i) = (dm.sent_off(g), dm.received(g));
                    nic(if sum { o + i } else { o.max(i) } * tok)
                })
                .fold(0.0, f64::max)
        };
        assert!((cf.dispatch_ms - want(false)).abs() < 1e-9, "{policy:?}");
        assert!((cs.dispatch_ms - want(true)).abs() < 1e-9, "{policy:?}");
        assert!(cs.dispatch_ms > cf.dispatch_ms * 1.02, "{policy:?}");
        // weights: each GPU's sent plus received on the shared link, and
        // the exchange's share of it while both run (half each)
        if policy == Policy::Llep {
            assert!(!plan.transfers.is_empty());
            let wt = |sum: bool| {
                (0..p as u32)
                    .map(|g| {
                        let s = plan.transfers.iter().filter(|t| t.src == g).count() as u64;
                        let r = plan.transfers.iter().filter(|t| t.dst == g).count() as u64;
                        let (s, r) = (s * shape.expert_bytes, r * shape.expert_bytes);
                        let (o, i) = (dm.sent_off(g as usize), dm.received(g as usize));
                        let (s2, r2) = (s + s.min(o * tok), r + r.min(i * tok));
                        nic(if sum { s2 + r2 } else { s.max(r) })
                    })
                    .fold(0.0, f64::max)
            };
            assert!((cf.transfer_ms - wt(false)).abs() < 1e-9);
            assert!((cs.transfer_ms - wt(true)).abs() < 1e-9);
        }
    }
    // the field is optional in a profile file and written only when set
    let json = serde_json::to_string(&full).unwrap();
    assert!(!json.contains("inter_shared"));
    let back: Profile = serde_json::from_str(&serde_json::to_string(&shared).unwrap()).unwrap();
    assert!(back.inter_shared);
}
