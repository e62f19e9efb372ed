//! `llep-trace calibrate`: measure this machine's GPUs and write a hardware
//! profile for the cost model (status "measured", raw points kept); with
//! `--gemm-only`, only the single-GPU GEMM grid (and launches and memory
//! components) into a base profile; with `--merge`, merge a measured
//! profile's GEMM tables, message, launch and memory models into another
//! (no GPU needed).

use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::gpu::calibrate::{calibrate, CalibConfig, Calibration, GRID_ROWS};
use llep_trace::gpu::gemm::GemmImpl;
use llep_trace::sim::bwd::bwd_table_ms;
use llep_trace::sim::profile::{
    apply_measured, drop_covered_curves, finish_merge, fit_profile, merge_profiles,
};
use llep_trace::sim::Profile;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// GPUs to measure (the token exchange and weight transfers need 2+).
    #[arg(long, default_value = "2", value_parser = super::settings::positive_count, allow_hyphen_values = true)]
    pub gpus: usize,
    /// Write the profile here (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Nodes the measured GPUs stand for (split evenly): with N > 1 the
    /// measured token exchange is also stored as the inter-node link
    /// (inter_gbps, inter_latency_us) that `simulate --nodes` prices
    /// cross-node traffic with. Run it under NCCL_P2P_DISABLE=1
    /// NCCL_SHM_DISABLE=1 so the GPUs of this host meet over NCCL's network
    /// transport, as on separate nodes.
    #[arg(long, default_value = "1", value_parser = super::settings::positive_count, allow_hyphen_values = true)]
    pub nodes: usize,
    /// Expert shapes D:I for the GEMM curves (default: the gpt-oss-120b
    /// layer, OLMoE, Mixtral).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2880:2880,2048:1024,4096:14336"
    )]
    pub shapes: Vec<String>,
    /// Token counts of the GEMM curves.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,32,64,128,256,512,1024,2048,4096,8192,16384,32768,65536"
    )]
    pub tokens: Vec<u64>,
    /// Timed repetitions per point (medians).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Profile name (default: h100 / h200 from the card's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Expert shapes D:I of the per-projection GEMM grid (default: the
    /// gpt-oss-120b, Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3 and OLMoE
    /// experts); "" for no grid.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2880:2880,4096:14336,2048:768,7168:2048,2048:1024"
    )]
    pub grid_shapes: Vec<String>,
    /// Add an expert shape D,I to the GEMM grid (repeatable).
    #[arg(long = "shape", value_name = "D,I")]
    pub shape: Vec<String>,
    /// Rows M of the GEMM grid (one expert GEMM; at most 16384, the
    /// largest unit replay runs). Default: 1 to 16384, powers of two and
    /// the midpoints between them.
    #[arg(long, value_delimiter = ',')]
    pub grid_rows: Vec<u64>,
    /// Only the GEMM grid, kernel launches and memory components, on one
    /// GPU (a few minutes at most), written into --base.
    #[arg(long)]
    pub gemm_only: bool,
    /// Also time the backward GEMMs (dgrad dX = dH.W^T and wgrad
    /// dW = X^T.dH of gate_up and down) over the grid's shapes and rows,
    /// for `simulate --pass train`.
    #[arg(long)]
    pub bwd: bool,
    /// Only the backward GEMM grid, on one GPU, into --base (nothing else
    /// of the base changes); with --merge, take only the backward tables.
    #[arg(long)]
    pub bwd_only: bool,
    /// Profile the --gemm-only measurements go into (built-in name or
    /// JSON path; default: the built-in profile of this card).
    #[arg(long, value_name = "PROFILE")]
    pub base: Option<String>,
    /// Merge this measured profile's GEMM tables, message, launch and
    /// memory models into --into and write --out; measures nothing.
    #[arg(long, value_name = "PROFILE_JSON", requires = "into")]
    pub merge: Option<String>,
    /// The profile --merge merges into (built-in name or JSON path).
    #[arg(long, value_name = "PROFILE", requires = "merge")]
    pub into: Option<String>,
    /// With --merge: take only the GEMM tables (the stamped error stays
    /// valid unless curves are dropped).
    #[arg(long, requires = "merge")]
    pub tables_only: bool,
    /// With --merge (or --gemm-only): drop whole-group curves whose shape
    /// now has exact GEMM tables, so the tables price those shapes too.
    #[arg(long)]
    pub drop_curves: bool,
    /// Library of the bf16 GEMMs, as replay's --gemm (lt, fused or cublas):
    /// the GEMM tables time the path replay will run (with fused, the
    /// --gemm-only grid goes to the profile's fused_gemm_tables, which
    /// price --gemm fused).
    #[arg(long, default_value = "lt", value_parser = |s: &str| s.parse::<GemmImpl>())]
    pub gemm: GemmImpl,
    /// With --gemm-only: time each grid sample's units launched as one
    /// CUDA graph, as `replay --cuda-graphs on` launches them; the tables
    /// go to the profile's graph_gemm_tables, which price that mode.
    #[arg(long, value_enum, default_value = "off")]
    pub cuda_graphs: super::replay::OnOff,
}

/// "D:I" or "D,I" -> (D, I), checked as replay needs it.
fn parse_shape(flag: &str, s: &str) -> anyhow::Result<(usize, usize)> {
    let (d, i) = s
        .split_once([':', ','])
        .with_context(|| format!("{flag}: '{s}' is not D:I"))?;
    let d: usize = d
        .trim()
        .parse()
        .with_context(|| format!("{flag}: bad D in '{s}'"))?;
    let i: usize = i
        .trim()
        .parse()
        .with_context(|| format!("{flag}: bad I in '{s}'"))?;
    if d == 0 || i == 0 || d % 8 != 0 || i % 2 != 0 {
        bail!("{flag}: '{s}': D must be a positive multiple of 8 and I positive and even");
    }
    Ok((d, i))
}

fn write_profile(prof: &Profile, out: &std::path::Path, p: &Printer) -> anyhow::Result<()> {
    prof.validate()
        .map_err(|e| anyhow::anyhow!("profile to write is not valid: {e}"))?;
    let json = serde_json::to_string_pretty(prof)?;
    llep_trace::io::write_atomic(out, json.as_bytes())
        .with_context(|| format!("--out {}", out.display()))?;
    p.status(&format!("wrote {}", out.display()));
    Ok(())
}

/// `--merge NEW --into BASE`: no GPU.
fn merge_cmd(a: &CalibrateArgs, new: &str, p: &Printer) -> anyhow::Result<ExitCode> {
    let into = a
        .into
        .as_deref()
        .expect("clap requires --into with --merge");
    let base = Profile::load(into).with_context(|| format!("--into {into}"))?;
    let mut newp = Profile::load(new).with_context(|| format!("--merge {new}"))?;
    if a.bwd_only {
        newp.gemm_tables.clear();
    }
    if a.tables_only || a.bwd_only {
        newp.msg_tokens = None;
        newp.msg_weights = None;
        newp.ce_tokens = None;
        newp.ce_weights = None;
        newp.launches = None;
        newp.mem_model = None;
        newp.transfer_overlaps_native = false;
    }
    if newp.card != base.card {
        p.warn(&format!(
            "merging measurements of '{}' into a profile of '{}'",
            newp.card, base.card
        ));
    }
    let merged = merge_profiles(&base, &newp, a.drop_curves, &utc_date());
    write_profile(&merged, &a.out, p)?;
    p.out(&model_summary(&merged))?;
    Ok(ExitCode::SUCCESS)
}

/// The generalising parts of a profile, one line each.
fn model_summary(prof: &Profile) -> String {
    let mut s = String::new();
    let graphed = prof.graph_gemm_tables.iter().map(|t| (t, " (CUDA graphs)"));
    let fused = prof.fused_gemm_tables.iter().map(|t| (t, " (fused)"));
    for (t, how) in prof
        .gemm_tables
        .iter()
        .map(|t| (t, ""))
        .chain(graphed)
        .chain(fused)
    {
        let at = |m: f64| llep_trace::sim::model::interp(&t.points, m);
        s.push_str(&format!(
            "  GEMM table{how} {} N={} K={}: {} points, M=1 {:.1} us, M=512 {:.1} us, M=16384 {:.3} ms\n",
            t.proj.as_str(),
            t.n,
            t.k,
            t.points.len(),
            at(1.0) * 1e3,
            at(512.0) * 1e3,
            at(16384.0)
        ));
    }
    s.push_str(&bwd_summary(prof));
    for (name, m) in [
        ("token exchange", prof.msg_tokens),
        ("weight transfer", prof.msg_weights),
        ("token exchange by copy engine", prof.ce_tokens),
        ("weight transfer by copy engine", prof.ce_weights),
    ] {
        if let Some(m) = m {
            s.push_str(&format!(
                "  {name}: {:.1} us per grouped call + {:.2} us per message + bytes at {:.0} GB/s\n",
                m.latency_us, m.per_msg_us, m.gbps
            ));
        }
    }
    if let Some(f) = prof.power {
        s.push_str(&format!(
            "  power cap: a large GEMM {:.0} TFLOP/s in a burst, {:.3}x its burst time under sustained load; no slowdown up to a duty of {:.2}, all of it from {:.2}; the exchange weighs {:.2} in the duty\n",
            f.burst_tflops, f.sustained_over_burst, f.duty_onset, f.duty_full, f.comm_weight
        ));
    }
    if let Some(l) = prof.launches {
        s.push_str(&format!(
            "  kernel launch {:.2} us, host-waited download {:.1} us, table upload {:.1} us\n",
            l.launch_us, l.host_sync_us, l.upload_us
        ));
    }
    if let Some(m) = prof.mem_model {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        s.push_str(&format!(
            "  memory: context {:.3} GiB, cuBLAS workspace {:.3} GiB, token communicator {:.3} GiB per peer, weight communicator {:.3} GiB per peer, grain {} KiB\n",
            gib(m.context_bytes),
            gib(m.cublas_workspace_bytes),
            gib(m.nccl_per_peer_bytes),
            gib(m.nccl_xfer_per_peer_bytes),
            m.grain_bytes >> 10
        ));
    }
    s
}

/// The backward GEMM tables, one line each: time and throughput at a few
/// M, and the factors that price shapes without tables.
fn bwd_summary(prof: &Profile) -> String {
    let mut s = String::new();
    for t in &prof.bwd_tables {
        let (d, i) = (t.hidden_size as u64, t.intermediate_size as u64);
        let at = |m: f64| {
            let ms = bwd_table_ms(prof, t.gemm, m, d, i).unwrap_or(0.0);
            let tf = t.gemm.flops(m, d as f64, i as f64) / (ms.max(1e-9) * 1e-3) / 1e12;
            format!("M={m} {ms:.4} ms ({tf:.0} TFLOP/s)")
        };
        s.push_str(&format!(
            "  backward {} D={d} I={i}: {} points, {}, {}, {}\n",
            t.gemm.as_str(),
            t.points.len(),
            at(256.0),
            at(2048.0),
            at(16384.0)
        ));
    }
    if !prof.bwd_tables.is_empty() {
        s.push_str(&format!(
            "  backward over forward GEMM time (shapes without tables): dgrad {:.3}x, wgrad {:.3}x\n",
            prof.bwd_dgrad_factor, prof.bwd_wgrad_factor
        ));
    }
    s
}

/// Today's UTC date, YYYY-MM-DD.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // days to civil date (Howard Hinnant's algorithm)
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn run(a: CalibrateArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "--out {}: directory {} does not exist",
                a.out.display(),
                dir.display()
            );
        }
    }
    if a.nodes > 1 {
        if a.gemm_only || a.bwd_only || a.merge.is_some() {
            bail!("--nodes: only a calibration with communication (not --gemm-only, --bwd-only or --merge) measures a link");
        }
        llep_trace::plan::topo::Topology::new(a.gpus, a.nodes)?;
        if !llep_trace::env::nccl_network_forced() {
            p.warn(&format!(
                "--nodes {}: NCCL_P2P_DISABLE=1 and NCCL_SHM_DISABLE=1 are not both set, so these GPUs talk over NVLink/PCIe and the 'inter-node' link measured is the intra-node one",
                a.nodes
            ));
        }
    }
    if let Some(new) = a.merge.clone() {
        return merge_cmd(&a, &new, p);
    }
    let mut shapes = Vec::new();
    for s in &a.shapes {
        shapes.push(parse_shape("--shapes", s)?);
    }
    let mut grid_shapes = Vec::new();
    for s in a.grid_shapes.iter().filter(|s| !s.trim().is_empty()) {
        grid_shapes.push(parse_shape("--grid-shapes", s)?);
    }
    for s in &a.shape {
        let sh = parse_shape("--shape", s)?;
        if !grid_shapes.contains(&sh) {
            grid_shapes.push(sh);
        }
    }
    let mut grid_rows = if a.grid_rows.is_empty() {
        GRID_ROWS.to_vec()
    } else {
        a.grid_rows.clone()
    };
    grid_rows.sort_unstable();
    grid_rows.dedup();
    if grid_rows.first() == Some(&0) || grid_rows.last().is_some_and(|&m| m > 16_384) {
        bail!("--grid-rows: give rows from 1 to 16384");
    }
    if (a.bwd || a.bwd_only) && grid_shapes.is_empty() {
        bail!("--bwd, --bwd-only: the grid has no shapes (give --grid-shapes or --shape)");
    }
    let cuda_graphs = a.cuda_graphs == super::replay::OnOff::On;
    if cuda_graphs && !a.gemm_only {
        bail!("--cuda-graphs on times the GEMM grid only: give --gemm-only");
    }
    if a.gemm_only && grid_shapes.is_empty() {
        bail!("--gemm-only: the grid has no shapes (give --grid-shapes or --shape)");
    }
    if a.tokens.is_empty() || a.tokens.contains(&0) {
        bail!("--tokens: give positive token counts");
    }
    let mut tokens = a.tokens.clone();
    tokens.sort_unstable();
    tokens.dedup();
    let one_gpu = a.gemm_only || a.bwd_only;
    let gpus = if one_gpu { 1 } else { a.gpus };
    let cc = CalibConfig {
        gpus,
        shapes,
        tokens,
        reps: a.reps.max(1),
        seed: 0,
        grid_rows: if grid_shapes.is_empty() {
            Vec::new()
        } else {
            grid_rows
        },
        grid_shapes,
        gemm_only: a.gemm_only,
        bwd: a.bwd,
        bwd_only: a.bwd_only,
        gemm: a.gemm,
        cuda_graphs,
    };
    let c = calibrate(&cc, p)?;
    for s in &c.skipped {
        p.warn(&format!("not measured: {s}"));
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let card = c.card.to_ascii_lowercase();
        if card.contains("h200") {
            "h200".into()
        } else if card.contains("h100") {
            "h100".into()
        } else {
            "measured".into()
        }
    });
    let mut prof = if one_gpu {
        gemm_only_profile(&a, &c, &name)?
    } else {
        full_profile(&c, &name, p)?
    };
    if a.nodes > 1 {
        inter_node_from_measured(&mut prof, a.nodes)?;
    }
    write_profile(&prof, &a.out, p)?;
    let mut s = if one_gpu {
        format!(
            "{} ({}), {}: {} into '{}'\n",
            c.card,
            c.driver,
            prof.date,
            if a.bwd_only {
                "backward GEMM grid"
            } else {
                "GEMM grid, launches and memory components"
            },
            a.base.as_deref().unwrap_or(&name)
        )
    } else {
        full_summary(&prof, &c)
    };
    if a.nodes > 1 {
        s.push_str(&format!(
            "  inter-node link (--nodes {}): {:.2} GB/s {} + {:.1} us per exchange\n",
            a.nodes,
            prof.inter_gbps,
            if prof.inter_shared {
                "shared by both directions (out + in)"
            } else {
                "per direction"
            },
            prof.inter_latency_us
        ));
    }
    s.push_str(&model_summary(&prof));
    p.out(&s)?;
    Ok(ExitCode::SUCCESS)
}

/// The base profile with the single-GPU measurements in it.
fn gemm_only_profile(a: &CalibrateArgs, c: &Calibration, name: &str) -> anyhow::Result<Profile> {
    let spec = a.base.clone().unwrap_or_else(|| name.to_string());
    let base = Profile::load(&spec).with_context(|| format!("--base {spec}"))?;
    let mut prof = base.clone();
    let set = apply_measured(&mut prof, c, Some(&base));
    let dropped = if a.drop_curves {
        drop_covered_curves(&mut prof)
    } else {
        0
    };
    finish_merge(&mut prof, &set, dropped, &utc_date());
    prof.measured = set.iter().map(|s| s.to_string()).collect();
    prof.raw_merged.push(serde_json::to_value(c)?);
    Ok(prof)
}

/// A profile fitted to a full calibration; on one GPU the link figures and
/// communicator memory come from the built-in profile of the card.
fn full_profile(c: &Calibration, name: &str, p: &Printer) -> anyhow::Result<Profile> {
    if c.gemm.is_empty() {
        bail!("calibrate measured no whole-group GEMM curve (give --shapes)");
    }
    let mut prof = fit_profile(c, name, &utc_date());
    let mut fallback = None;
    if c.link.is_empty() {
        // one GPU: nothing to exchange; keep the built-in figures for links
        let base = Profile::load(name).map_err(|_| {
            anyhow::anyhow!("one GPU measures no links and there is no built-in '{name}' profile to take them from; use --gpus 2 or more")
        })?;
        p.warn(&format!(
            "one GPU: link and weight-transfer figures are not measured; kept from the built-in '{name}' profile ({})",
            base.status
        ));
        prof.link_gbps = base.link_gbps;
        prof.link_latency_us = base.link_latency_us;
        prof.p2p_gbps = base.p2p_gbps;
        prof.p2p_latency_us = base.p2p_latency_us;
        prof.mem_per_peer_bytes = base.mem_per_peer_bytes;
        fallback = Some(base);
    }
    apply_measured(&mut prof, c, fallback.as_ref());
    Ok(prof)
}

/// `--nodes N`: every pair measured here crossed the same transport, so
/// the token exchange's fit (its message model, else the plain link line)
/// is the inter-node link; the intra-node figures stay that link too (a
/// pseudo-node run forces one transport on all pairs). The per-message
/// cost the cost model adds on the NIC is the message model's own. When a
/// one-way weight transfer runs well above the exchange's per-direction
/// rate (NCCL's sockets over one host's loopback share one budget between
/// directions), the link is marked shared and priced at its total rate.
fn inter_node_from_measured(prof: &mut Profile, nodes: usize) -> anyhow::Result<()> {
    let (gbps, lat) = match &prof.msg_tokens {
        Some(m) => (m.gbps, m.latency_us),
        None => (prof.link_gbps, prof.link_latency_us),
    };
    if !(gbps.is_finite() && gbps > 0.0) {
        bail!(
            "--nodes {nodes}: the token exchange gave no bandwidth to store as the inter-node link"
        );
    }
    // the fit's rate is per peer (each GPU sent its bytes to each of its
    // gpus - 1 peers at once); one GPU's link carried all of them
    let gbps = gbps * (prof.gpus.max(2) - 1) as f64;
    let one_way = prof.msg_weights.map_or(prof.p2p_gbps, |m| m.gbps);
    prof.inter_shared = one_way > 1.5 * gbps;
    prof.inter_gbps = if prof.inter_shared { 2.0 * gbps } else { gbps };
    prof.inter_latency_us = lat;
    prof.note.push_str(&format!(
        "; --nodes {nodes}: the measured token exchange is the inter-node link (inter_gbps, inter_latency_us{}); the intra-node figures are the same link",
        if prof.inter_shared {
            format!(
                ", shared by both directions: {gbps:.2} GB/s each way per GPU in an exchange, {one_way:.2} GB/s one way"
            )
        } else {
            String::new()
        }
    ));
    Ok(())
}

fn full_summary(prof: &Profile, c: &Calibration) -> String {
    let mut s = format!(
        "{} x {} ({}), {}\n  GEMM peak {:.0} TFLOP/s (D={} I={}), half-efficiency at {:.0} tokens, 1-token group {:.1} us\n  token exchange {:.0} GB/s per direction + {:.1} us; weight transfer {:.0} GB/s + {:.1} us\n  count exchange + planning {:.0} us; memory baseline {:.2} GiB\n",
        prof.gpus,
        prof.card,
        prof.driver,
        prof.date,
        prof.gemm_peak_tflops,
        c.gemm[0].0,
        c.gemm[0].1,
        prof.gemm_half_tokens,
        prof.gemm_launch_us,
        prof.link_gbps,
        prof.link_latency_us,
        prof.p2p_gbps,
        prof.p2p_latency_us,
        prof.overhead_us,
        prof.mem_baseline_bytes as f64 / (1u64 << 30) as f64
    );
    for (d, i, pts) in &c.gemm {
        s.push_str(&format!("  GEMM D={d} I={i}: "));
        s.push_str(
            &pts.iter()
                .map(|(t, ms)| format!("{t}:{ms:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use llep_trace::sim::model::MsgModel;

    #[test]
    fn nodes_store_the_measured_exchange_as_the_inter_node_link() {
        let mut p = Profile::load("h200").unwrap();
        p.gpus = 2;
        let m = |gbps| MsgModel {
            latency_us: 40.0,
            per_msg_us: 3.0,
            gbps,
        };
        // a full-duplex link: one-way and each way of an exchange alike
        (p.msg_tokens, p.msg_weights) = (Some(m(2.0)), Some(m(2.2)));
        inter_node_from_measured(&mut p, 2).unwrap();
        assert_eq!(
            (p.inter_gbps, p.inter_latency_us, p.inter_shared),
            (2.0, 40.0, false)
        );
        // loopback sockets: one way runs at twice the rate of each way of an exchange
        (p.msg_tokens, p.msg_weights) = (Some(m(2.0)), Some(m(4.1)));
        inter_node_from_measured(&mut p, 2).unwrap();
        assert_eq!((p.inter_gbps, p.inter_shared), (4.0, true));
        assert!(p.note.contains("shared by both directions"), "{}", p.note);
        // 4 GPUs: the fit's rate is per peer, and each GPU had 3 at once
        p.gpus = 4;
        (p.msg_tokens, p.msg_weights) = (Some(m(0.7)), Some(m(4.0)));
        inter_node_from_measured(&mut p, 2).unwrap();
        assert!((p.inter_gbps - 4.2).abs() < 1e-9, "{}", p.inter_gbps);
        assert!(p.inter_shared);
    }
}
