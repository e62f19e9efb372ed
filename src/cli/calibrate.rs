//! `llep-trace calibrate`: measure this machine's GPUs and write a hardware
//! profile for the cost model (status "measured", raw points kept).

use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::gpu::calibrate::{calibrate, CalibConfig};
use llep_trace::sim::profile::fit_profile;
use llep_trace::sim::Profile;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// GPUs to measure (the token exchange and weight transfers need 2+).
    #[arg(long, default_value_t = 2)]
    pub gpus: usize,
    /// Write the profile here (JSON).
    #[arg(long)]
    pub out: PathBuf,
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
    let mut shapes = Vec::new();
    for s in &a.shapes {
        let (d, i) = s
            .split_once(':')
            .with_context(|| format!("--shapes: '{s}' is not D:I"))?;
        let d: usize = d
            .trim()
            .parse()
            .with_context(|| format!("--shapes: bad D in '{s}'"))?;
        let i: usize = i
            .trim()
            .parse()
            .with_context(|| format!("--shapes: bad I in '{s}'"))?;
        if d == 0 || i == 0 || d % 8 != 0 || i % 2 != 0 {
            bail!("--shapes: '{s}': D must be a positive multiple of 8 and I positive and even");
        }
        shapes.push((d, i));
    }
    if a.tokens.is_empty() || a.tokens.contains(&0) {
        bail!("--tokens: give positive token counts");
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "--out {}: directory {} does not exist",
                a.out.display(),
                dir.display()
            );
        }
    }
    let mut tokens = a.tokens.clone();
    tokens.sort_unstable();
    tokens.dedup();
    let cc = CalibConfig {
        gpus: a.gpus,
        shapes,
        tokens,
        reps: a.reps.max(1),
        seed: 0,
    };
    let c = calibrate(&cc, p)?;
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
    let mut prof = fit_profile(&c, &name, &utc_date());
    if c.link.is_empty() {
        // one GPU: nothing to exchange; keep the built-in figures for links
        let base = Profile::load(&name).map_err(|_| {
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
    }
    prof.validate()
        .map_err(|e| anyhow::anyhow!("fitted profile is not valid: {e}"))?;
    let json = serde_json::to_string_pretty(&prof)?;
    llep_trace::io::write_atomic(&a.out, json.as_bytes())?;
    p.status(&format!("wrote {}", a.out.display()));
    let mut s = format!(
        "{} x {} ({}), {}\n  GEMM peak {:.0} TFLOP/s (D={} I={}), half-efficiency at {:.0} tokens, 1-token group {:.1} us\n  token exchange {:.0} GB/s per direction + {:.1} us; weight transfer {:.0} GB/s + {:.1} us\n  count exchange + planning {:.0} us; memory baseline {:.2} GiB\n",
        prof.gpus,
        prof.card,
        prof.driver,
        prof.date,
        prof.gemm_peak_tflops,
        cc.shapes[0].0,
        cc.shapes[0].1,
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
    p.out(&s)?;
    Ok(ExitCode::SUCCESS)
}
