//! `llep-trace capture`: recorded routing -> trace.

use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::capture::{self, CaptureOptions, ModelOverrides};
use llep_trace::trace::{write_trace, RoutingFn};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Input file(s) or a capture directory.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output trace (Parquet). Token-level rows, when the source has them,
    /// go to <stem>.tokens.parquet beside it.
    #[arg(long, short)]
    out: PathBuf,
    /// Source format; 'auto' decides by extension and content.
    /// Load level: load-csv, load-json.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Model name recorded in the trace.
    #[arg(long)]
    model_name: Option<String>,
    /// Number of experts (default: largest expert id + 1).
    #[arg(long)]
    num_experts: Option<u32>,
    /// Experts per token (required when the source does not say).
    #[arg(long)]
    top_k: Option<u32>,
    /// Hidden size D of the model.
    #[arg(long)]
    hidden_size: Option<u32>,
    /// Expert intermediate size I of the model.
    #[arg(long)]
    intermediate_size: Option<u32>,
    /// Number of MoE layers of the model.
    #[arg(long)]
    num_layers: Option<u32>,
    /// Weight/activation dtype (bf16, f32, fp8).
    #[arg(long)]
    dtype: Option<String>,
    /// Routing function: softmax-topk, softmax-topk-renorm, topk-softmax, recorded.
    #[arg(long)]
    routing: Option<String>,
    /// Map the distinct values of this column to steps (e.g. --group-by domain).
    #[arg(long)]
    group_by: Option<String>,
    /// Keep only rows where COLUMN equals VALUE (repeatable).
    #[arg(long, value_name = "COLUMN=VALUE")]
    filter: Vec<String>,
    /// JSON key holding the counts matrix (default: counts).
    #[arg(long)]
    json_key: Option<String>,
    /// Provenance text recorded in the trace.
    #[arg(long)]
    provenance: Option<String>,
    /// Licence of the recorded data.
    #[arg(long)]
    licence: Option<String>,
}

fn parse_routing(s: &str) -> anyhow::Result<RoutingFn> {
    Ok(match s {
        "softmax-topk" => RoutingFn::SoftmaxTopk { renormalize: false },
        "softmax-topk-renorm" => RoutingFn::SoftmaxTopk { renormalize: true },
        "topk-softmax" => RoutingFn::TopkSoftmax,
        "recorded" => RoutingFn::Recorded,
        other => bail!("--routing: unknown routing function '{other}' (softmax-topk, softmax-topk-renorm, topk-softmax, recorded)"),
    })
}

/// Decide the source format from the extension.
fn detect(path: &Path) -> anyhow::Result<&'static str> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "csv" => "load-csv",
        "json" => "load-json",
        _ => bail!(
            "{}: cannot tell the format from the extension; pass --format",
            path.display()
        ),
    })
}

pub fn run(a: CaptureArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let filters = a
        .filter
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(c, v)| (c.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--filter '{f}': expected COLUMN=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = CaptureOptions {
        model: ModelOverrides {
            name: a.model_name.clone(),
            num_experts: a.num_experts,
            top_k: a.top_k,
            hidden_size: a.hidden_size,
            intermediate_size: a.intermediate_size,
            num_layers: a.num_layers,
            dtype: a.dtype.clone(),
            routing: a.routing.as_deref().map(parse_routing).transpose()?,
        },
        group_by: a.group_by.clone(),
        filters,
        provenance: a.provenance.clone(),
        licence: a.licence.clone(),
        json_key: a.json_key.clone(),
        quiet: p.quiet,
    };
    let first = &a.inputs[0];
    let format = if a.format == "auto" {
        detect(first)?
    } else {
        a.format.as_str()
    };
    let trace = match format {
        "load-csv" | "load-json" => {
            if a.inputs.len() != 1 {
                bail!("{format} takes one input file");
            }
            capture::loads::ingest(first, &opts, format)?
        }
        other => bail!("unknown --format '{other}'"),
    };
    write_trace(&a.out, &trace)?;
    let l = &trace.loads;
    p.status(&format!(
        "wrote {}: {} steps x {} layers x {} ranks x {} experts ({}), top-{}",
        a.out.display(),
        l.steps(),
        l.layers(),
        l.ranks,
        l.experts,
        trace.meta.capture.source_format,
        trace.meta.model.top_k
    ));
    Ok(ExitCode::SUCCESS)
}
