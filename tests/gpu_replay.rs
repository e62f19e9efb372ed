//! `replay` and `calibrate` end to end: on a machine without a GPU (CI) they
//! must fail with one clear line and a non-zero exit, leaving no output
//! file; where a GPU and its libraries are present, a tiny replay must run
//! and pass its dense check.

use llep_trace::plan::Policy;
use llep_trace::results::ResultRow;
use std::path::PathBuf;
use std::process::Command;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llep-trace"))
}

/// Simulated rows relabelled as a replay would have written them (time 1 ms),
/// for `compare` to re-price; their weight connections recorded as
/// `simulate` prices them (none without transfers, else every peer both
/// ways).
fn as_measured(sim: &[ResultRow]) -> Vec<ResultRow> {
    sim.iter()
        .map(|r| {
            let mut m = r.clone();
            m.source = llep_trace::results::Source::Measured;
            m.t_total_ms = 1.0;
            let g = r.gpus as usize;
            let peers = if r.transfers > 0 { g as u64 - 1 } else { 0 };
            m.weight_peers_in_per_gpu = vec![peers; g];
            m.weight_peers_out_per_gpu = vec![peers; g];
            m
        })
        .collect()
}

fn gpu_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    let lib = unsafe { cudarc::driver::sys::is_culib_present() };
    lib && std::env::var("LLEP_TRACE_SKIP_GPU_TESTS").is_err()
}

/// `replay` of the tiny layer (8 experts, top-2, D 64, I 32, 1 warm-up)
/// on `gpus` GPUs at `tokens` per GPU.
fn tiny_layer<'a>(gpus: &'a str, tokens: &'a str) -> [&'a str; 15] {
    [
        "replay",
        "--gpus",
        gpus,
        "--tokens-per-rank",
        tokens,
        "--experts",
        "8",
        "--top-k",
        "2",
        "--hidden-size",
        "64",
        "--intermediate-size",
        "32",
        "--warmup",
        "1",
    ]
}

/// Replay a tiny layer (1 GPU, 8 experts, top-2, D 64, I 32, 256 tokens,
/// 1 warm-up + 2 runs) with `extra` flags into `dir/name`. Without a GPU it
/// must fail with one `no GPU` error line and write nothing: then `None`.
fn tiny_replay(dir: &std::path::Path, name: &str, extra: &[&str]) -> Option<Vec<ResultRow>> {
    let out = dir.join(name);
    let o = Command::new(bin())
        .args(tiny_layer("1", "256"))
        .args(["--runs", "2"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !gpu_present() {
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errs.len(), 1, "{stderr}");
        assert!(errs[0].contains("no GPU"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists());
        return None;
    }
    assert!(o.status.success(), "{stderr}");
    Some(llep_trace::results::read_results(&out).unwrap().1)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("llep-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn replay_small_layer_or_fail_cleanly_without_gpu() {
    let dir = temp_dir("gpu-test");
    let extra = ["--synthetic", "balanced,95:1", "--ratio", "1.3"];
    let Some(rows) = tiny_replay(&dir, "r.parquet", &extra) else {
        return;
    };
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.source, llep_trace::results::Source::Measured);
        let e = r.rel_error.expect("checked against the dense reference");
        assert!(e < 1e-2, "relative error {e}");
        assert!(r.t_total_ms > 0.0);
    }
}

/// The training step on a tiny layer: without a GPU one clear error line
/// and no output; with one, every row is a train row whose forward and
/// backward (dX, router-weight and weight gradients, spilled experts
/// included) pass the dense fp32 check, with backward phases timed.
#[test]
fn replay_train_step_or_fail_cleanly_without_gpu() {
    let dir = temp_dir("gpu-train");
    for (act, recompute) in [("gpt-oss", false), ("swiglu", true)] {
        let mut extra = vec![
            "--pass",
            "train",
            "--act",
            act,
            "--synthetic",
            "balanced,95:1",
            "--ratio",
            "1.3,always",
            "--min-gemm",
            "16",
        ];
        if recompute {
            extra.push("--recompute");
        }
        let Some(rows) = tiny_replay(&dir, &format!("t-{act}.parquet"), &extra) else {
            continue;
        };
        assert_eq!(rows.len(), 6, "2 scenarios x (ep, llep 1.3, llep always)");
        for r in &rows {
            assert_eq!(r.pass, llep_trace::results::Pass::Train);
            assert_eq!(r.recompute, recompute);
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "relative error {e}");
            assert!(r.t_bwd_dgrad_ms > 0.0 && r.t_bwd_wgrad_ms > 0.0);
            assert!(r.t_total_ms > r.t_compute_ms + r.t_bwd_dgrad_ms);
            assert!(r.saved_act_bytes > 0);
        }
    }
}

#[test]
fn replay_recompute_needs_the_train_pass() {
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "balanced", "--recompute"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--recompute"), "{stderr}");
}

#[test]
fn calibrate_fails_cleanly_without_gpu() {
    if gpu_present() {
        return; // measured on the GPU machine instead (reports/calibrate)
    }
    let dir = std::env::temp_dir().join(format!("llep-cal-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("p.json");
    let o = Command::new(bin())
        .args(["calibrate", "--gpus", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no GPU"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn replay_rejects_bad_input_before_any_gpu_work() {
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "95:200", "--experts", "128"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("95:200"), "{stderr}");
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "balanced", "--policy", "ideal"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ideal"));
}

/// `--cuda-graphs on` refuses what it cannot graph honestly, in one line
/// and before any GPU work: a training step, and fewer than two warm-ups
/// (the first tunes the GEMMs, the next captures the graphs).
#[test]
fn replay_cuda_graphs_refuses_train_and_one_warmup() {
    let e = one_error(&[
        "replay",
        "--synthetic",
        "balanced",
        "--pass",
        "train",
        "--cuda-graphs",
        "on",
    ]);
    assert!(
        e.contains("--cuda-graphs on") && e.contains("forward"),
        "{e}"
    );
    let e = one_error(&[
        "replay",
        "--synthetic",
        "balanced",
        "--cuda-graphs",
        "on",
        "--warmup",
        "1",
    ]);
    assert!(e.contains("--warmup 2"), "{e}");
}

/// Expert units launched as CUDA graphs compute what the eager issue
/// computes: on 2 GPUs, pipelined in 3 chunks and sequential, EP and LLEP
/// (foreign units, graphed after their weights' wait), timed in turns,
/// every row passes the dense fp32 check with the same plan as eagerly,
/// and says `cuda_graphs` (no timed run fell back). Skipped with fewer
/// than 2 GPUs.
#[test]
fn replay_cuda_graphs_match_the_dense_check_and_say_so() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-graphs");
    for flags in [
        &["--overlap", "on", "--overlap-chunks", "3"][..],
        &["--overlap", "off"][..],
    ] {
        let mut rows = Vec::new();
        for graphs in ["off", "on"] {
            let out = dir.join(format!("{graphs}-{}.parquet", flags.len()));
            // the tiny layer's one warm-up becomes two (tune, then capture)
            let mut args = tiny_layer("2", "2048").to_vec();
            args[14] = "2";
            let o = Command::new(bin())
                .args(args)
                .args(["--synthetic", "balanced,95:1", "--min-gemm", "16"])
                .args(["--runs", "2", "--ratio", "1.3", "--cuda-graphs", graphs])
                .args(flags)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            rows.push(llep_trace::results::read_results(&out).unwrap().1);
        }
        let (eager, graphed) = (&rows[0], &rows[1]);
        assert_eq!(eager.len(), 4);
        assert_eq!(graphed.len(), 4);
        for (e, g) in eager.iter().zip(graphed) {
            assert!(!e.cuda_graphs && g.cuda_graphs, "{flags:?}");
            assert_eq!((e.policy, &e.loads_after), (g.policy, &g.loads_after));
            let err = g.rel_error.expect("checked against the dense reference");
            assert!(err < 1e-2, "{flags:?}: relative error {err}");
        }
        // LLEP at 95:1 spills: its foreign units ran through a graph too
        assert!(graphed.iter().any(|r| r.transfer_bytes > 0), "{flags:?}");
    }
}

#[test]
fn replay_two_compute_streams_refuse_graphs_and_cublas() {
    let e = one_error(&[
        "replay",
        "--synthetic",
        "balanced",
        "--compute-streams",
        "2",
        "--cuda-graphs",
        "on",
    ]);
    assert!(
        e.contains("--compute-streams 2") && e.contains("--cuda-graphs off"),
        "{e}"
    );
    let e = one_error(&[
        "replay",
        "--synthetic",
        "balanced",
        "--compute-streams",
        "2",
        "--gemm",
        "cublas",
    ]);
    assert!(
        e.contains("--compute-streams 2") && e.contains("--gemm lt"),
        "{e}"
    );
    let e = one_error(&[
        "replay",
        "--synthetic",
        "balanced",
        "--compute-streams",
        "3",
    ]);
    assert!(e.contains("compute-streams"), "{e}");
}

/// Large units alternating between two compute streams compute what one
/// stream computes, bit for bit: on 2 GPUs, sequential and pipelined, EP
/// and LLEP with weights moved (foreign units on both streams), the same
/// dense-check error as one stream, and the rows say which ran. Units of
/// 16,384 rows of I = 512 (32 MiB of gate_up output each; 16 MiB per
/// chunk when pipelined in 2) alternate.
/// Skipped with fewer than 2 GPUs.
#[test]
fn replay_two_compute_streams_match_one_bit_for_bit() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-streams");
    for flags in [
        &["--overlap", "off"][..],
        &["--overlap", "on", "--overlap-chunks", "2"][..],
    ] {
        let mut rows = Vec::new();
        for streams in ["1", "2"] {
            let out = dir.join(format!("s{streams}-{}.parquet", flags[1]));
            let o = Command::new(bin())
                .args(["replay", "--gpus", "2", "--tokens-per-rank", "32768"])
                .args(["--experts", "8", "--top-k", "2", "--hidden-size", "256"])
                .args(["--intermediate-size", "512", "--warmup", "1", "--runs", "2"])
                .args(["--synthetic", "balanced,95:1", "--ratio", "1.3"])
                .args(["--compute-streams", streams])
                .args(flags)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(
                stdout.contains("large expert units on two compute streams"),
                streams == "2",
                "{stdout}"
            );
            rows.push(llep_trace::results::read_results(&out).unwrap().1);
        }
        let (one, two) = (&rows[0], &rows[1]);
        assert_eq!(one.len(), 4);
        assert_eq!(two.len(), 4);
        for (a, b) in one.iter().zip(two) {
            assert_eq!((a.compute_streams, b.compute_streams), (1, 2));
            assert_eq!((a.policy, &a.loads_after), (b.policy, &b.loads_after));
            let (ea, eb) = (a.rel_error.unwrap(), b.rel_error.unwrap());
            assert!(ea < 1e-2, "{flags:?}: relative error {ea}");
            assert_eq!(ea, eb, "{flags:?}: {:?}", a.policy);
            // the second stream's scratch was there (the arena's peak)
            assert!(
                b.peak_mem_max_bytes > a.peak_mem_max_bytes,
                "{flags:?}: {} vs {}",
                b.peak_mem_max_bytes,
                a.peak_mem_max_bytes
            );
        }
        assert!(two.iter().any(|r| r.transfer_bytes > 0), "{flags:?}");
    }
}

// ---- EPLB in the replay (issue 14 part 4) ----

/// Run the binary, expect failure, return its one error line.
fn one_error(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    // 1 for a refused setting, 2 for a value clap itself refuses
    assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errs.len(), 1, "{args:?}: {stderr}");
    errs[0].to_string()
}

#[test]
fn replay_eplb_rejects_bad_flags_in_one_line_before_any_gpu_work() {
    let base = [
        "replay",
        "--synthetic",
        "95:1",
        "--gpus",
        "2",
        "--tokens-per-rank",
        "256",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = with(extra);
        one_error(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // 128 experts + 3 cannot be split over 2 GPUs
    let e = run(&["--policy", "ep,eplb", "--redundant", "3"]);
    assert!(
        e.contains("--redundant 3") && e.contains("131 physical"),
        "{e}"
    );
    // one bad R in a list is enough
    let e = run(&["--policy", "eplb+llep", "--redundant", "16,5"]);
    assert!(e.contains("--redundant 5"), "{e}");
    let e = run(&["--policy", "eplb"]);
    assert!(e.contains("needs --redundant"), "{e}");
    let e = run(&["--policy", "ep,llep", "--redundant", "16"]);
    assert!(e.contains("apply to --policy eplb"), "{e}");
    let e = run(&["--policy", "eplb", "--redundant", "16", "--pass", "train"]);
    assert!(e.contains("--pass train") && e.contains("forward"), "{e}");
    let e = run(&[
        "--policy",
        "eplb",
        "--redundant",
        "16",
        "--eplb-groups",
        "3",
    ]);
    assert!(e.contains("--eplb-groups 3"), "{e}");
    let e = run(&["--policy", "eplb", "--redundant", "16", "--eplb-nodes", "3"]);
    assert!(e.contains("--eplb-nodes 3"), "{e}");
    let e = run(&[
        "--policy",
        "eplb",
        "--redundant",
        "16",
        "--eplb-window",
        "0",
    ]);
    assert!(e.contains("--eplb-window"), "{e}");
    let e = run(&[
        "--policy",
        "eplb",
        "--redundant",
        "16",
        "--replica-split",
        "round",
    ]);
    assert!(e.contains("unknown replica split 'round'"), "{e}");
}

#[test]
fn per_copy_replica_choice_aggregates_to_split_counts() {
    use llep_trace::gpu::replicas::physical_case;
    use llep_trace::gpu::{Case, RankRouting};
    use llep_trace::plan::eplb::{rebalance, EplbParams};
    use llep_trace::plan::replica_split::{logical_counts, split_counts, ReplicaSplit};
    use llep_trace::trace::tokens::SplitMix64;
    let mut rng = SplitMix64::new(14);
    for case in 0..40 {
        let gpus = [2usize, 4, 8][case % 3];
        let experts = gpus * [2usize, 4, 8][(case / 3) % 3];
        let k = 1 + case % 4;
        let redundant = gpus * (1 + case % 2);
        let hot = rng.below(experts as u64) as i32;
        let routing: Vec<RankRouting> = (0..gpus)
            .map(|_| {
                let t = rng.below(300) as usize;
                let ids: Vec<i32> = (0..t * k)
                    .map(|_| {
                        if rng.below(2) == 0 {
                            hot
                        } else {
                            rng.below(experts as u64) as i32
                        }
                    })
                    .collect();
                RankRouting {
                    weights: vec![1.0; ids.len()],
                    ids,
                }
            })
            .collect();
        let per_rank = logical_counts(routing.iter().map(|r| r.ids.as_slice()), experts);
        let global: Vec<f64> = (0..experts)
            .map(|e| (0..gpus).map(|r| per_rank[r * experts + e] as f64).sum())
            .collect();
        let pl = rebalance(&global, &EplbParams::new(gpus, redundant)).unwrap();
        let c = Case {
            base: Default::default(),
            routing,
            placements: Vec::new(),
        };
        let np = pl.phy2log.len();
        for split in [ReplicaSplit::Even, ReplicaSplit::Sglang, ReplicaSplit::Vllm] {
            let phys = physical_case(&c, &pl, split);
            let got = logical_counts(phys.routing.iter().map(|r| r.ids.as_slice()), np);
            let mut want = Vec::new();
            split_counts(&per_rank, gpus, &pl, split, &mut want);
            assert_eq!(got, want, "case {case}, split {split}");
            // every copy stays with a replica of its own expert
            for (p, l) in phys.routing.iter().zip(&c.routing) {
                assert!(p
                    .ids
                    .iter()
                    .zip(&l.ids)
                    .all(|(&x, &y)| pl.phy2log[x as usize] == y as usize));
            }
        }
    }
}

#[test]
fn the_twin_of_a_replayed_eplb_row_is_simulates_row() {
    use llep_trace::plan::Policy;
    use llep_trace::results::{read_results, Source};
    use llep_trace::sim::{accuracy::compare, Profile};
    let dir = std::env::temp_dir().join(format!("llep-eplb-twin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("s.parquet");
    for split in ["sglang", "even", "vllm"] {
        let o = Command::new(bin())
            .args([
                "simulate",
                "--synthetic",
                "95:1,30:4",
                "--gpus",
                "2",
                "--tokens-per-rank",
                "4096",
                "--policy",
                "eplb,eplb+llep",
                "--ratio",
                "1.3,always",
                "--redundant",
                "16",
                "--eplb-oracle",
                "--replica-split",
                split,
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let sim = read_results(&out).unwrap().1;
        assert_eq!(sim.len(), 6);
        // the same rows, as a replay would have written them
        let measured = as_measured(&sim);
        let acc = compare(&measured, &Profile::load("h200").unwrap(), &[]).unwrap();
        for (p, s) in acc.pairs.iter().zip(&sim) {
            assert!(matches!(
                p.simulated.policy,
                Policy::Eplb | Policy::EplbLlep
            ));
            assert_eq!(p.simulated.policy, s.policy);
            assert_eq!(p.simulated.gate, s.gate);
            assert_eq!(
                p.simulated.t_total_ms, s.t_total_ms,
                "{split} {}",
                s.scenario
            );
            assert_eq!(p.simulated.peak_mem_max_bytes, s.peak_mem_max_bytes);
            assert_eq!(p.simulated.loads_after, s.loads_after);
            assert_eq!(p.simulated.input_note, s.input_note);
        }
    }
    // placed from the previous step: compare rebuilds the earlier steps of
    // the trace; the plan (loads after) is simulate's, and the time too
    // except on rebalance steps, where simulate charges weight moves that
    // a replay does not make
    let o = Command::new(bin())
        .args([
            "simulate",
            "--trace",
            "traces/olmoe-1b-7b.parquet",
            "--gpus",
            "2",
            "--policy",
            "eplb,eplb+llep",
            "--ratio",
            "always",
            "--redundant",
            "8",
            "--eplb-window",
            "1",
            "--eplb-period",
            "2",
            "--out",
        ])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sim = read_results(&out).unwrap().1;
    assert_eq!(sim.len(), 36);
    let measured = as_measured(&sim);
    let dirs = llep_trace::sim::accuracy::default_trace_dirs(&[]);
    let acc = compare(&measured, &Profile::load("h200").unwrap(), &dirs).unwrap();
    let mut moved = 0;
    for (p, s) in acc.pairs.iter().zip(&sim) {
        assert_eq!(
            p.simulated.loads_after, s.loads_after,
            "step {} layer {}",
            s.step, s.layer
        );
        if s.step % 2 == 0 && s.step > 0 {
            moved += 1;
            assert!(p.simulated.t_total_ms <= s.t_total_ms);
        } else {
            assert_eq!(p.simulated.t_total_ms, s.t_total_ms, "step {}", s.step);
        }
    }
    assert_eq!(moved, 12, "steps 2 and 4 rebalance");
    // a measured eplb row whose note lost its setting cannot be twinned
    let mut bad = read_results(&out).unwrap().1.remove(0);
    bad.source = Source::Measured;
    bad.input_note = "synthetic".into();
    let e = compare(&[bad], &Profile::load("h200").unwrap(), &dirs).unwrap_err();
    assert!(e.to_string().contains("no EPLB setting"), "{e}");
}

#[test]
fn replay_eplb_small_layer_or_fail_cleanly_without_gpu() {
    let dir = temp_dir("eplb-gpu");
    let extra = [
        "--synthetic",
        "95:1",
        "--policy",
        "eplb,eplb+llep",
        "--ratio",
        "always",
        "--redundant",
        "2,4",
        "--eplb-oracle",
        "--replica-split",
        "even",
    ];
    let Some(rows) = tiny_replay(&dir, "r.parquet", &extra) else {
        return;
    };
    assert_eq!(rows.len(), 4, "eplb and eplb+llep at R = 2 and 4");
    for r in &rows {
        let e = r.rel_error.expect("checked against the dense reference");
        assert!(e < 1e-2, "relative error {e}");
        assert!(r.input_note.contains("eplb R="), "{}", r.input_note);
    }
}

/// GPUs the driver reports (0 without a driver).
fn gpu_count() -> usize {
    if !gpu_present() {
        return 0;
    }
    let o = Command::new("nvidia-smi").arg("-L").output();
    o.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("GPU "))
            .count()
    })
    .unwrap_or(0)
}

/// A tiny layer replayed on 2 GPUs (balanced and 95:1, 2,048 tokens per
/// GPU, 1 warm-up), with `setting` and `flags` added, into `out`.
fn tiny_replay_2gpu(
    setting: &[&str],
    flags: &[&str],
    out: &std::path::Path,
) -> std::process::Output {
    tiny_replay_2gpu_env(setting, flags, out, &[])
}

/// [`tiny_replay_2gpu`] with environment variables set.
fn tiny_replay_2gpu_env(
    setting: &[&str],
    flags: &[&str],
    out: &std::path::Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    Command::new(bin())
        .envs(env.iter().copied())
        .args(tiny_layer("2", "2048"))
        .args(["--synthetic", "balanced,95:1", "--min-gemm", "16"])
        .args(setting)
        .args(flags)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The pipelined schedule (`--overlap on`, 3 chunks, cuts inside groups
/// included) on 2 GPUs passes the dense fp32 check under EP and LLEP, its
/// rows say so, and its exposed communication is no more than the total;
/// `--overlap off` rows keep the sequential meaning (exposed = dispatch +
/// combine). Skipped with fewer than 2 GPUs.
#[test]
fn replay_overlap_matches_the_dense_check() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-overlap");
    for (tag, flags) in [
        ("on", &["--overlap", "on", "--overlap-chunks", "3"][..]),
        ("off", &["--overlap", "off"][..]),
    ] {
        let out = dir.join(format!("{tag}.parquet"));
        let o = tiny_replay_2gpu(&["--runs", "2", "--ratio", "1.3"], flags, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 4);
        for r in &rows {
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "overlap {tag}: relative error {e}");
            let x = r.t_exposed_comm_ms.expect("exposed communication timed");
            assert!(x >= 0.0 && x <= r.t_total_ms, "{x} vs {}", r.t_total_ms);
            if tag == "on" {
                assert!(r.overlap && r.overlap_chunks == 3);
            } else {
                assert!(!r.overlap && r.overlap_chunks == 0);
                let seq = r.t_dispatch_ms + r.t_combine_ms;
                assert!((x - seq).abs() < 1e-6 + 1e-3 * seq, "{x} vs {seq}");
            }
        }
    }
}

/// Tokens and weights moved by the copy engines (`--exchange
/// copy-engine`) give the same layer as NCCL's exchange: on 2 GPUs,
/// pipelined in 3 chunks and sequential, EP and LLEP at 95:1 (weights
/// pulled from the lender), EPLB's replicas with and without LLEP, and a
/// training step (LLEP's weight gradients returned), the same plans and bit
/// for bit the same output (the training step's check to 1e-6: its fp32
/// reference sums with atomics)
/// (the same dense-check error, GEMMs through cuBLAS's fixed choice), and
/// rows that say which exchange ran; both the direct pushes (the default)
/// and the staged path (`LLEP_TRACE_CE_ROWS=staged`). Skipped with fewer
/// than 2 GPUs.
#[test]
fn replay_copy_engine_exchange_matches_nccl_bit_for_bit() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-copy-engine");
    let plain = &["--runs", "2", "--ratio", "1.3", "--gemm", "cublas"][..];
    // EPLB's replicas (weights placed per slot), with LLEP on top
    let eplb = &[
        "--runs",
        "2",
        "--ratio",
        "always",
        "--gemm",
        "cublas",
        "--policy",
        "eplb,eplb+llep",
        "--redundant",
        "2",
        "--eplb-oracle",
        "--replica-split",
        "even",
    ][..];
    // a training step: the backward's exchanges and the weight gradients'
    // return through the copy engines too (its check covers the gradients)
    let train = &[
        "--runs", "2", "--ratio", "1.3", "--gemm", "cublas", "--pass", "train",
    ][..];
    for (tag, flags, setting) in [
        (
            "on",
            &["--overlap", "on", "--overlap-chunks", "3"][..],
            plain,
        ),
        ("off", &["--overlap", "off"][..], plain),
        (
            "eplb",
            &["--overlap", "on", "--overlap-chunks", "3"][..],
            eplb,
        ),
        ("train", &[][..], train),
    ] {
        let mut rows = Vec::new();
        // the copy engines' direct pushes (the default), then the staged
        // path through the receive buffer (LLEP_TRACE_CE_ROWS=staged)
        for (x, rows_env) in [
            ("nccl", "direct"),
            ("copy-engine", "direct"),
            ("copy-engine", "staged"),
        ] {
            let out = dir.join(format!("{tag}-{x}-{rows_env}.parquet"));
            let o = tiny_replay_2gpu_env(
                setting,
                &[flags, &["--exchange", x]].concat(),
                &out,
                &[("LLEP_TRACE_CE_ROWS", rows_env)],
            );
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            rows.push(llep_trace::results::read_results(&out).unwrap().1);
        }
        assert!(rows.iter().all(|r| r.len() == 4));
        let (nccl, staged) = (&rows[0], &rows[2]);
        for (n, c) in nccl.iter().zip(staged).chain(nccl.iter().zip(&rows[1])) {
            assert_eq!(
                (n.exchange.as_str(), c.exchange.as_str()),
                ("nccl", "copy-engine")
            );
            assert_eq!((n.policy, &n.loads_after), (c.policy, &c.loads_after));
            let (en, ec) = (n.rel_error.unwrap(), c.rel_error.unwrap());
            assert!(ec < 1e-2, "overlap {tag}: relative error {ec}");
            if tag == "train" {
                // the backward's fp32 reference sums with atomics; our
                // step numbers copies in copy order (route_slots), so the
                // check repeats to 9 digits across processes (2 x H200,
                // 2026-11-30, call 13)
                assert!(
                    (en - ec).abs() <= 1e-6 * en,
                    "train {}: the gradients differ ({en} vs {ec})",
                    c.policy
                );
            } else {
                assert_eq!(en, ec, "overlap {tag} {}: the outputs differ", c.policy);
            }
            assert_eq!(c.overlap, tag == "on" || tag == "eplb");
        }
        for ce in &rows[1..] {
            if tag != "eplb" {
                assert!(
                    ce.iter().any(|r| r.transfer_bytes > 0),
                    "LLEP moved weights"
                );
            }
            if tag == "train" {
                // LLEP's weight gradients went home through the copy engines
                assert!(ce.iter().any(|r| r.t_grad_return_ms > 0.0));
            }
        }
    }
}

/// Timing a case's plain settings in turns (`--interleave on`, the
/// default) changes only when runs are timed: each setting's plan, memory
/// peak and dense check are those of back-to-back timing (`off`). Each row
/// records the weight communicator's peers as the process had them: none
/// before any weights moved, and a lender and a borrower once they did.
/// Skipped with fewer than 2 GPUs.
#[test]
fn replay_in_turns_keeps_plans_memory_and_checks_and_records_weight_peers() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-turns");
    let mut by_mode = Vec::new();
    for mode in ["on", "off"] {
        let out = dir.join(format!("{mode}.parquet"));
        let o = tiny_replay_2gpu(
            &["--runs", "3", "--policy", "ep,llep", "--ratio", "1.3,auto"],
            &["--interleave", mode],
            &out,
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(stdout.contains("in turns"), mode == "on", "{stdout}");
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 6);
        for r in &rows {
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "interleave {mode}: relative error {e}");
            assert!(r.t_total_ms > 0.0 && r.runs == 3);
            assert_eq!(r.weight_peers_in_per_gpu.len(), 2);
            assert_eq!(r.weight_peers_out_per_gpu.len(), 2);
        }
        // the balanced case's EP row ran first: no weights had moved
        let first = rows
            .iter()
            .find(|r| r.scenario == "balanced" && r.policy == Policy::Ep)
            .unwrap();
        assert_eq!(first.weight_peers_in_per_gpu, [0, 0]);
        assert_eq!(first.weight_peers_out_per_gpu, [0, 0]);
        // LLEP at 95:1: the hot GPU lends experts to the other
        let moved = rows
            .iter()
            .find(|r| r.scenario == "95:1" && r.policy == Policy::Llep && r.transfers > 0)
            .expect("llep moves weights at 95:1");
        let (inn, out) = (
            &moved.weight_peers_in_per_gpu,
            &moved.weight_peers_out_per_gpu,
        );
        assert_eq!(inn.iter().sum::<u64>(), 1, "{inn:?}");
        assert_eq!(out.iter().sum::<u64>(), 1, "{out:?}");
        assert_ne!(inn, out);
        by_mode.push(rows);
    }
    let key = |r: &ResultRow| (r.scenario.clone(), r.policy, r.gate.to_string());
    for a in &by_mode[0] {
        let b = by_mode[1].iter().find(|b| key(b) == key(a)).unwrap();
        assert_eq!(a.loads_after, b.loads_after, "{:?}", key(a));
        assert_eq!(a.transfers, b.transfers, "{:?}", key(a));
        assert_eq!(a.peak_mem_per_gpu, b.peak_mem_per_gpu, "{:?}", key(a));
    }
}

/// llep-auto decides the same on its warm helper thread (`--decision-thread
/// on`, the default) as inline on the worker (`off`): every llep-auto row
/// of both runs chose the same plan, passes the dense check, and its plan
/// is the one the decision's side (EP or LLEP) ran. Skipped with fewer
/// than 2 GPUs.
#[test]
fn llep_auto_decides_the_same_on_its_warm_thread() {
    if gpu_count() < 2 {
        return;
    }
    let dir = temp_dir("gpu-decider");
    let mut chose = Vec::new();
    for mode in ["on", "off"] {
        let out = dir.join(format!("{mode}.parquet"));
        let o = tiny_replay_2gpu(
            &["--runs", "2", "--policy", "ep,llep", "--ratio", "1.3,auto"],
            &["--decision-thread", mode],
            &out,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        let auto: Vec<_> = rows
            .iter()
            .filter(|r| r.policy == Policy::LlepAuto)
            .collect();
        assert_eq!(auto.len(), 2, "{mode}");
        for r in &auto {
            assert!(r.rel_error.expect("checked") < 1e-2);
            // the row's loads after are those of the plan it chose
            let same = rows
                .iter()
                .find(|x| {
                    x.scenario == r.scenario
                        && x.policy == if r.use_llep { Policy::Llep } else { Policy::Ep }
                })
                .unwrap();
            assert_eq!(r.loads_after, same.loads_after, "{mode} {}", r.scenario);
        }
        chose.push(
            auto.iter()
                .map(|r| (r.scenario.clone(), r.use_llep))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(chose[0], chose[1]);
}
