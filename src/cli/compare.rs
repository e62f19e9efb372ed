//! `llep-trace compare`: how far simulation is from measurement.

use super::simulate::results_meta;
use super::table::{gib, Table};
use super::Printer;
use anyhow::bail;
use clap::Args;
use llep_trace::gpu::Exchange;
use llep_trace::io::write_atomic;
use llep_trace::results::{read_results, write_results};
use llep_trace::sim::accuracy::{
    compare, decisions, default_trace_dirs, gate_margin_of, ErrorStats, Pair, GATE_LOSS_PCT,
};
use llep_trace::sim::profile::{MeasuredError, SplitError};
use llep_trace::sim::{auto_margin_at, Profile};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Results files with measured rows (from `llep-trace replay`).
    #[arg(required = true)]
    measured: Vec<PathBuf>,
    /// Profile to simulate with: h100, h200 or a JSON file. Use the profile
    /// of the card the rows were measured on.
    #[arg(long, default_value = "h200")]
    profile: String,
    /// Nodes the measured GPUs were split over (replay --nodes): the
    /// twins are priced with that topology.
    #[arg(long, default_value = "1", value_parser = super::settings::positive_count)]
    nodes: usize,
    /// Directory holding the traces named in the measured rows (default: traces/).
    #[arg(long)]
    traces: Vec<PathBuf>,
    /// Write measured rows and their simulated twins here (Parquet), for `report`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the profile with its measured error filled in here (JSON).
    #[arg(long)]
    stamp_profile: Option<PathBuf>,
    /// Expert shapes held out of the profile's fit, as HIDDEN,INTERMEDIATE
    /// (repeat the flag): their rows' error is printed and stamped apart
    /// from the calibration shapes'.
    #[arg(long = "held-out", value_parser = parse_shape)]
    held_out: Vec<(u32, u32)>,
    /// Name of the report the stamped error points to.
    #[arg(long, default_value = "reports/accuracy/README.md")]
    report_path: String,
}

pub fn run(a: CompareArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let mut profile = Profile::load(&a.profile)?;
    profile.nodes = a.nodes as u32;
    let mut rows = Vec::new();
    for f in &a.measured {
        rows.extend(read_results(f)?.1);
    }
    for r in &rows {
        llep_trace::plan::topo::Topology::new(r.gpus as usize, a.nodes)?;
    }
    let acc = compare(&rows, &profile, &default_trace_dirs(&a.traces))?;
    let cards: Vec<&str> = {
        let mut v: Vec<&str> = acc
            .pairs
            .iter()
            .map(|x| x.measured.device.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut t = Table::new(&[
        "input",
        "GPUs",
        "tokens/rank",
        "shape E/k/DxI",
        "policy",
        "measured ms",
        "simulated ms",
        "error",
        "measured GiB (driver)",
        "simulated GiB",
        "mem error",
    ])
    .left(0)
    .left(3)
    .left(4);
    for x in &acc.pairs {
        let m = &x.measured;
        let input = if m.scenario.is_empty() {
            format!("{} s{} l{}", m.trace, m.step, m.layer)
        } else {
            m.scenario.clone()
        };
        t.row(vec![
            input,
            m.gpus.to_string(),
            m.tokens_per_rank.to_string(),
            format!(
                "{}/{}/{}x{}",
                m.experts, m.top_k, m.hidden_size, m.intermediate_size
            ),
            m.setting_label(),
            format!("{:.3}", m.t_total_ms),
            format!("{:.3}", x.simulated.t_total_ms),
            format!("{:+.1}%", x.time_err * 100.0),
            gib(x.measured_peak),
            gib(x.simulated.peak_mem_max_bytes),
            format!("{:+.1}%", x.mem_err * 100.0),
        ]);
    }
    let mut s = format!(
        "{} measured rows on {} vs profile {}\n\n{}",
        acc.pairs.len(),
        cards.join(", "),
        profile.label(),
        t.render()
    );
    s.push_str(&format!(
        "\nlayer time: median |error| {:.1}%, worst {:.1}%   peak memory: median |error| {:.1}%, worst {:.1}%\n",
        acc.median_abs_time_pct, acc.worst_abs_time_pct, acc.median_abs_mem_pct, acc.worst_abs_mem_pct
    ));
    // rows replayed with CUDA graphs are priced without the host's floor:
    // their error apart, when the files hold both kinds
    let graphed = acc.pairs.iter().filter(|x| x.measured.cuda_graphs).count();
    if graphed > 0 && graphed < acc.pairs.len() {
        for (name, graphs) in [("issued one by one", false), ("CUDA graphs", true)] {
            let x = ErrorStats::of(
                acc.pairs
                    .iter()
                    .filter(|x| x.measured.cuda_graphs == graphs),
            );
            s.push_str(&format!(
                "expert units {name}: {} rows, layer time median |error| {:.1}%, worst {:.1}%\n",
                x.rows, x.median_abs_time_pct, x.worst_abs_time_pct
            ));
        }
    }
    // and the exchange: NCCL's, or the copy engines' (`--exchange`)
    let by_ce = |x: &&Pair| Exchange::parse(&x.measured.exchange) == Some(Exchange::CopyEngine);
    let ce = acc.pairs.iter().filter(by_ce).count();
    if ce > 0 && ce < acc.pairs.len() {
        for (name, want) in [("NCCL", false), ("copy engines", true)] {
            let x = ErrorStats::of(acc.pairs.iter().filter(|x| by_ce(x) == want));
            s.push_str(&format!(
                "exchange by {name}: {} rows, layer time median |error| {:.1}%, worst {:.1}%; peak memory median |error| {:.1}%, worst {:.1}%\n",
                x.rows, x.median_abs_time_pct, x.worst_abs_time_pct, x.median_abs_mem_pct, x.worst_abs_mem_pct
            ));
        }
    }
    // the model prices one compute stream (`replay --compute-streams 2`)
    let two = ErrorStats::of(acc.pairs.iter().filter(|x| x.measured.compute_streams == 2));
    if two.rows > 0 {
        s.push_str(&format!(
            "two compute streams: {} rows, priced as one stream (memory without the second stream's scratch and workspace), layer time median |error| {:.1}%, worst {:.1}%\n",
            two.rows, two.median_abs_time_pct, two.worst_abs_time_pct
        ));
    }
    // the signed error where the schedule or the imbalance differ between
    // rows: a bias of the model shows there, not in |error|
    let bias = acc.bias();
    if bias.len() > 1 {
        s.push_str("layer time, median signed error (+: priced slow) by schedule and imbalance:\n");
        for b in &bias {
            s.push_str(&format!(
                "  {}, {}: {} rows, {:+.1}% ({:+.1}% to {:+.1}%)\n",
                b.schedule, b.imbalance, b.rows, b.median_pct, b.min_pct, b.max_pct
            ));
        }
    }
    let split = (!a.held_out.is_empty()).then(|| acc.split(&a.held_out));
    if let Some((cal, held)) = &split {
        let shapes: Vec<String> = a.held_out.iter().map(|(d, i)| format!("{d}x{i}")).collect();
        for (name, x) in [
            ("calibration shapes".to_string(), cal),
            (format!("held-out shapes ({})", shapes.join(", ")), held),
        ] {
            if x.rows == 0 {
                s.push_str(&format!("{name}: no rows\n"));
                continue;
            }
            s.push_str(&format!(
                "{name}: {} rows, layer time median |error| {:.1}%, worst {:.1}%; peak memory median |error| {:.1}%, worst {:.1}%, {} rows more than 3% below measured (lowest {:+.1}%)\n",
                x.rows,
                x.median_abs_time_pct,
                x.worst_abs_time_pct,
                x.median_abs_mem_pct,
                x.worst_abs_mem_pct,
                x.mem_below_3pct,
                x.mem_lowest_pct
            ));
        }
    }
    // llep-auto's gate on the inputs both plans ran: at the profile's
    // margin, and at the margin these rows support (what a stamp records)
    for (name, graphs) in [("issued one by one", false), ("as CUDA graphs", true)] {
        let d = decisions(&acc.pairs, graphs);
        if d.is_empty() {
            continue;
        }
        let mut mode = profile.clone();
        mode.cuda_graphs = graphs;
        let now = d
            .iter()
            .filter(|x| x.lost(auto_margin_at(&mode, x.tokens_per_gpu) * 100.0))
            .count();
        s.push_str(&format!(
            "llep-auto's gate, {name}: {} inputs with both plans measured; at the profile's margin {now} take a plan more than {GATE_LOSS_PCT}% slower than the other",
            d.len()
        ));
        match gate_margin_of(&d) {
            Some(g) => s.push_str(&format!(
                ", at the margin these rows support ({:.1}%) {}\n",
                g.margin_pct, g.losses
            )),
            None => s.push('\n'),
        }
    }
    if cards.iter().any(|c| {
        !c.contains(
            profile
                .card
                .trim_start_matches("NVIDIA ")
                .split_whitespace()
                .next()
                .unwrap_or(""),
        )
    }) {
        p.warn(&format!(
            "rows were measured on {} but the profile is for {}",
            cards.join(", "),
            profile.card
        ));
    }
    p.out(&s)?;
    if let Some(out) = &a.out {
        let mut both = Vec::with_capacity(acc.pairs.len() * 2);
        for x in &acc.pairs {
            both.push(x.measured.clone());
            both.push(x.simulated.clone());
        }
        write_results(out, &both, &results_meta(&profile))?;
        p.status(&format!("wrote {} rows to {}", both.len(), out.display()));
    }
    if let Some(path) = &a.stamp_profile {
        if profile.status != "measured" {
            bail!(
                "--stamp-profile: profile {} is an estimate; stamp only a measured profile",
                profile.name
            );
        }
        let mut stamped = profile.clone();
        stamped.measured_error = Some(MeasuredError {
            median_abs_pct: acc.median_abs_time_pct,
            worst_abs_pct: acc.worst_abs_time_pct,
            mem_worst_abs_pct: acc.worst_abs_mem_pct,
            rows: acc.pairs.len() as u32,
            report: a.report_path.clone(),
            by_tokens: acc.by_tokens(false),
            graph_by_tokens: acc.by_tokens(true),
            gate_margin: acc.gate_margin(false),
            graph_gate_margin: acc.gate_margin(true),
            split: split.map(|(cal, held)| {
                let all = ErrorStats::of(acc.pairs.iter());
                SplitError {
                    held_out_shapes: a.held_out.clone(),
                    in_sample_rows: cal.rows as u32,
                    in_sample_median_abs_pct: cal.median_abs_time_pct,
                    in_sample_worst_abs_pct: cal.worst_abs_time_pct,
                    held_out_rows: held.rows as u32,
                    held_out_median_abs_pct: held.median_abs_time_pct,
                    held_out_worst_abs_pct: held.worst_abs_time_pct,
                    mem_median_abs_pct: all.median_abs_mem_pct,
                    mem_below_3pct_rows: all.mem_below_3pct as u32,
                }
            }),
        });
        write_atomic(path, serde_json::to_string_pretty(&stamped)?.as_bytes())?;
        p.status(&format!("wrote {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// "HIDDEN,INTERMEDIATE" (or HIDDENxINTERMEDIATE), both positive.
fn parse_shape(v: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{v}': expected HIDDEN,INTERMEDIATE, e.g. 7168,2048");
    let (d, i) = v.split_once([',', 'x']).ok_or_else(bad)?;
    match (d.trim().parse::<u32>(), i.trim().parse::<u32>()) {
        (Ok(d), Ok(i)) if d > 0 && i > 0 => Ok((d, i)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn held_out_shapes_parse_or_say_what_is_expected() {
        assert_eq!(parse_shape("7168,2048"), Ok((7168, 2048)));
        assert_eq!(parse_shape("2048x768"), Ok((2048, 768)));
        for bad in ["7168", "0,2048", "a,b", "7168,"] {
            let e = parse_shape(bad).unwrap_err();
            assert!(e.contains("HIDDEN,INTERMEDIATE"), "{e}");
        }
    }
}
