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
    /// Router logits: logits (.npy/.npz/.safetensors files or a capture
    /// directory). Per token: pt-routing, jsonl, csv, megatron-jsonl,
    /// vllm-routed. Load level: load-csv, load-json, sglang, trtllm.
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
    /// Routing-function and logits options (boxed: keeps the command enum small).
    #[command(flatten)]
    lg: Box<LogitsArgs>,
    /// Map a trace field to the source's name: expert, weight, layer, step,
    /// rank, token, sequence, sequence_length (repeatable).
    #[arg(long, value_name = "FIELD=SOURCE")]
    field: Vec<String>,
    /// Rank of every token when the source does not record it.
    #[arg(long)]
    rank: Option<u32>,
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

#[derive(Args, Debug)]
struct LogitsArgs {
    /// Routing function: softmax-topk, softmax-topk-renorm (Mixtral,
    /// Qwen-MoE with norm_topk_prob), topk-softmax (gpt-oss),
    /// sigmoid-group-topk (DeepSeek-V3; see --n-group), recorded.
    /// Ties go to the lower expert id.
    #[arg(long)]
    routing: Option<String>,
    /// sigmoid-group-topk: number of expert groups (n_group).
    #[arg(long, default_value_t = 1)]
    n_group: u32,
    /// sigmoid-group-topk: groups kept per token (topk_group).
    #[arg(long, default_value_t = 1)]
    topk_group: u32,
    /// sigmoid-group-topk: routed_scaling_factor applied to the weights.
    #[arg(long, default_value_t = 1.0)]
    routed_scaling_factor: f32,
    /// sigmoid-group-topk: do not renormalise the chosen weights (norm_topk_prob false).
    #[arg(long)]
    no_renormalize: bool,
    /// Keep the raw router logits in the tokens file.
    #[arg(long)]
    keep_logits: bool,
    /// NaN or Inf logits: 'error' (default) fails naming the file, 'skip'
    /// drops those tokens and counts them in the trace metadata.
    #[arg(long, default_value = "error", value_parser = ["error", "skip"])]
    nan: String,
    /// Logits tensor names, {layer} standing for the layer id
    /// (default layer.{layer}.logits).
    #[arg(long)]
    tensor_pattern: Option<String>,
    /// Recorded-ids tensor names (default layer.{layer}.ids).
    #[arg(long)]
    ids_pattern: Option<String>,
    /// Correction-bias tensor names (default layer.{layer}.bias).
    #[arg(long)]
    bias_pattern: Option<String>,
    /// Tokens per sequence (fills the sequence column: token / N).
    #[arg(long)]
    sequence_length: Option<u32>,
}

fn parse_routing(s: &str, a: &LogitsArgs) -> anyhow::Result<RoutingFn> {
    Ok(match s {
        "softmax-topk" => RoutingFn::SoftmaxTopk { renormalize: false },
        "softmax-topk-renorm" => RoutingFn::SoftmaxTopk { renormalize: true },
        "topk-softmax" => RoutingFn::TopkSoftmax,
        "sigmoid-group-topk" => RoutingFn::SigmoidGroupTopk {
            n_group: a.n_group,
            topk_group: a.topk_group,
            routed_scaling_factor: a.routed_scaling_factor,
            renormalize: !a.no_renormalize,
        },
        "recorded" => RoutingFn::Recorded,
        other => bail!("--routing: unknown routing function '{other}' (softmax-topk, softmax-topk-renorm, topk-softmax, sigmoid-group-topk, recorded)"),
    })
}

/// Decide the source format from the extension and, where needed, a look
/// at the content.
fn detect(path: &Path) -> anyhow::Result<&'static str> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if path.is_dir() {
        if path.join("capture.json").exists() {
            return Ok("logits");
        }
        if path.join("meta_info.json").exists() {
            return Ok("trtllm");
        }
        let mut exts: Vec<String> = std::fs::read_dir(path)
            .with_context(|| format!("{}: cannot list", path.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.path()
                    .extension()
                    .map(|x| x.to_string_lossy().to_ascii_lowercase())
            })
            .collect();
        exts.sort();
        exts.dedup();
        for (ext, first) in [
            ("safetensors", None),
            ("npz", None),
            ("pt", Some("pt")),
            ("npy", Some("npy")),
            ("jsonl", Some("jsonl")),
        ] {
            if exts.iter().any(|e| e == ext) {
                return match first {
                    None => Ok("logits"),
                    Some(_) => {
                        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == ext))
                            .collect();
                        files.sort();
                        detect(&files[0])
                    }
                };
            }
        }
        bail!(
            "{}: no recognisable dump files in the directory; pass --format",
            path.display()
        );
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "csv" => {
            let mut r = csv::Reader::from_path(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let has_count = r
                .headers()
                .map(|h| h.iter().any(|x| x.trim().eq_ignore_ascii_case("count")))
                .unwrap_or(true);
            if has_count {
                "load-csv"
            } else {
                "csv"
            }
        }
        "json" => "load-json",
        "jsonl" => {
            use std::io::BufRead;
            let f = std::fs::File::open(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let mut line = String::new();
            std::io::BufReader::new(f).read_line(&mut line)?;
            if line.contains("\"top_indices\"") {
                "megatron-jsonl"
            } else {
                "jsonl"
            }
        }
        "npz" | "safetensors" => "logits",
        "npy" => {
            let t = capture::tensor::read_npy(path)?;
            if t.dtype.is_float() {
                "logits"
            } else {
                "vllm-routed"
            }
        }
        "pt" => {
            let v = capture::pt::read_pt(path)?;
            if v.get("logical_count").is_some() || v.get("records").is_some() {
                "sglang"
            } else {
                "pt-routing"
            }
        }
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
    let fields = a
        .field
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(c, v)| (c.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--field '{f}': expected FIELD=SOURCE"))
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
            routing: a
                .lg
                .routing
                .as_deref()
                .map(|r| parse_routing(r, &a.lg))
                .transpose()?,
        },
        group_by: a.group_by.clone(),
        filters,
        provenance: a.provenance.clone(),
        licence: a.licence.clone(),
        json_key: a.json_key.clone(),
        quiet: p.quiet,
        keep_logits: a.lg.keep_logits,
        nan_skip: a.lg.nan == "skip",
        tensor_pattern: a.lg.tensor_pattern.clone(),
        ids_pattern: a.lg.ids_pattern.clone(),
        bias_pattern: a.lg.bias_pattern.clone(),
        sequence_length: a.lg.sequence_length,
        fields,
        rank: a.rank,
    };
    let first = &a.inputs[0];
    let format = if a.format == "auto" {
        detect(first)?
    } else {
        a.format.as_str()
    };
    let started = std::time::Instant::now();
    let (meta, loads, note) = match format {
        "load-csv" | "load-json" | "sglang" | "trtllm" => {
            let trace = match format {
                "sglang" => capture::engines::capture_sglang(&a.inputs, &opts)?,
                "trtllm" => capture::engines::capture_trtllm(&a.inputs, &opts)?,
                _ => {
                    if a.inputs.len() != 1 {
                        bail!("{format} takes one input file");
                    }
                    capture::loads::ingest(first, &opts, format)?
                }
            };
            write_trace(&a.out, &trace)?;
            (trace.meta, trace.loads, String::new())
        }
        "logits" => {
            let r = capture::logits::capture(&a.inputs, &a.out, &opts)?;
            let secs = started.elapsed().as_secs_f64();
            let mut note = format!(
                ", {} tokens, {:.2} GB of logits in {secs:.2} s ({:.2} GB/s)",
                r.tokens,
                r.logit_bytes as f64 / 1e9,
                r.logit_bytes as f64 / 1e9 / secs.max(1e-9)
            );
            if r.skipped > 0 {
                note += &format!(", {} tokens with NaN/Inf logits skipped", r.skipped);
            }
            if r.ids_checked > 0 {
                note += &format!(
                    ", recorded ids checked on {} tokens: {} differ",
                    r.ids_checked, r.ids_mismatched
                );
                if r.ids_mismatched > 0 {
                    p.warn(&format!(
                        "{} of {} tokens: the routing function's top-k differs from the ids the model recorded (wrong --routing or bias?)",
                        r.ids_mismatched, r.ids_checked
                    ));
                }
            }
            (r.meta, r.loads, note)
        }
        "pt-routing" | "jsonl" | "megatron-jsonl" | "csv" | "vllm-routed" => {
            let r = match format {
                "pt-routing" => capture::routed::capture_pt(&a.inputs, &a.out, &opts)?,
                "jsonl" => capture::routed::capture_jsonl(&a.inputs, &a.out, &opts, false)?,
                "megatron-jsonl" => capture::routed::capture_jsonl(&a.inputs, &a.out, &opts, true)?,
                "csv" => capture::routed::capture_csv(&a.inputs, &a.out, &opts)?,
                _ => capture::routed::capture_vllm(&a.inputs, &a.out, &opts)?,
            };
            let mut note = format!(", {} tokens", r.tokens);
            if !r.had_weights {
                note += ", no weights in the source (1/k each)";
            }
            (r.meta, r.loads, note)
        }
        other => bail!("unknown --format '{other}'"),
    };
    p.status(&format!(
        "wrote {}: {} steps x {} layers x {} ranks x {} experts ({}), top-{}{note}",
        a.out.display(),
        loads.steps(),
        loads.layers(),
        loads.ranks,
        loads.experts,
        meta.capture.source_format,
        meta.model.top_k
    ));
    Ok(ExitCode::SUCCESS)
}
