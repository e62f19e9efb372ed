//! `llep-trace capture`: recorded routing -> trace. Arguments, the options
//! each format reads, the output staged and committed as a pair, and the
//! summary and warnings on stderr.

use super::Printer;
use anyhow::{bail, Context};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use llep_trace::capture::format::{Level, AUTO};
use llep_trace::capture::staging::Staged;
use llep_trace::capture::{self, checks, sanity, CaptureOptions, Format, ModelOverrides};
use llep_trace::trace::parquet_io::read_meta;
use llep_trace::trace::{write_trace, Loads, RoutingFn, TraceMeta};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--format`: a format, or `auto` (None).
#[derive(Debug, Clone, Copy)]
pub struct FormatChoice(Option<Format>);

fn format_parser() -> impl TypedValueParser<Value = FormatChoice> {
    let values = std::iter::once(PossibleValue::new(AUTO).help("decide by extension and content"))
        .chain(
            Format::ALL
                .into_iter()
                .map(|f| PossibleValue::new(f.name()).help(f.help())),
        );
    PossibleValuesParser::new(values).map(|s: String| FormatChoice(s.parse().ok()))
}

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
    #[arg(long, default_value = AUTO, value_parser = format_parser())]
    format: FormatChoice,
    /// Model name recorded in the trace.
    #[arg(long)]
    model_name: Option<String>,
    /// Number of experts (default: largest expert id + 1).
    #[arg(long)]
    num_experts: Option<u32>,
    /// Experts per token (required when the source does not say; must
    /// agree with the source when it does).
    #[arg(long)]
    top_k: Option<u32>,
    /// Hidden size D of the model.
    #[arg(long)]
    hidden_size: Option<u32>,
    /// Expert intermediate size I of the model.
    #[arg(long)]
    intermediate_size: Option<u32>,
    /// Number of MoE layers of the model (at least the layers recorded).
    #[arg(long)]
    num_layers: Option<u32>,
    /// Weight/activation dtype: bf16, fp16, f32 or fp8 (what the simulator prices).
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
    /// eplb-matrix: forward passes the matrix sums (its window), when known.
    #[arg(long)]
    eplb_passes: Option<u64>,
    /// vllm-routed: the hidden layers that are MoE layers (default: detected
    /// as the layers with any routing).
    #[arg(long, value_delimiter = ',')]
    moe_layers: Vec<u32>,
    /// vllm-routed: layers 0..N are dense (DeepSeek's first_k_dense_replace).
    #[arg(long)]
    first_dense_layers: Option<u32>,
    /// Map the distinct values of this column to steps, in first-seen order
    /// (e.g. --group-by domain); the values become the trace's step labels.
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
    /// sigmoid-group-topk: number of expert groups (n_group; default 1).
    #[arg(long)]
    n_group: Option<u32>,
    /// sigmoid-group-topk: groups kept per token (topk_group; default 1).
    #[arg(long)]
    topk_group: Option<u32>,
    /// sigmoid-group-topk: routed_scaling_factor applied to the weights (default 1).
    #[arg(long)]
    routed_scaling_factor: Option<f32>,
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

fn parse_routing(s: Option<&str>, a: &LogitsArgs) -> anyhow::Result<Option<RoutingFn>> {
    let group_opts = [
        ("--n-group", a.n_group.is_some()),
        ("--topk-group", a.topk_group.is_some()),
        ("--routed-scaling-factor", a.routed_scaling_factor.is_some()),
        ("--no-renormalize", a.no_renormalize),
    ];
    if s != Some("sigmoid-group-topk") {
        if let Some((opt, _)) = group_opts.iter().find(|(_, given)| *given) {
            bail!(
                "{opt} applies only with --routing sigmoid-group-topk (given: {})",
                s.map_or("no --routing".to_string(), |r| format!("--routing {r}"))
            );
        }
    }
    let Some(s) = s else { return Ok(None) };
    Ok(Some(match s {
        "softmax-topk" => RoutingFn::SoftmaxTopk { renormalize: false },
        "softmax-topk-renorm" => RoutingFn::SoftmaxTopk { renormalize: true },
        "topk-softmax" => RoutingFn::TopkSoftmax,
        "sigmoid-group-topk" => RoutingFn::SigmoidGroupTopk {
            n_group: a.n_group.unwrap_or(1),
            topk_group: a.topk_group.unwrap_or(1),
            routed_scaling_factor: a.routed_scaling_factor.unwrap_or(1.0),
            renormalize: !a.no_renormalize,
        },
        "recorded" => RoutingFn::Recorded,
        other => bail!("--routing: unknown routing function '{other}' (softmax-topk, softmax-topk-renorm, topk-softmax, sigmoid-group-topk, recorded)"),
    }))
}

fn pairs(raw: &[String], opt: &str, form: &str) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|f| {
            f.split_once('=')
                .map(|(c, v)| (c.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{opt} '{f}': expected {form}"))
        })
        .collect()
}

fn options(a: &CaptureArgs, p: &Printer) -> anyhow::Result<CaptureOptions> {
    Ok(CaptureOptions {
        model: ModelOverrides {
            name: a.model_name.clone(),
            num_experts: a.num_experts,
            top_k: a.top_k,
            hidden_size: a.hidden_size,
            intermediate_size: a.intermediate_size,
            num_layers: a.num_layers,
            dtype: a
                .dtype
                .as_deref()
                .map(checks::parse_dtype)
                .transpose()?
                .map(String::from),
            routing: parse_routing(a.lg.routing.as_deref(), &a.lg)?,
        },
        group_by: a.group_by.clone(),
        filters: pairs(&a.filter, "--filter", "COLUMN=VALUE")?,
        provenance: a.provenance.clone(),
        licence: a.licence.clone(),
        json_key: a.json_key.clone(),
        progress: llep_trace::progress::Reporter::stderr(p.quiet),
        keep_logits: a.lg.keep_logits,
        nan_skip: a.lg.nan == "skip",
        tensor_pattern: a.lg.tensor_pattern.clone(),
        ids_pattern: a.lg.ids_pattern.clone(),
        bias_pattern: a.lg.bias_pattern.clone(),
        sequence_length: a.lg.sequence_length,
        fields: pairs(&a.field, "--field", "FIELD=SOURCE")?,
        rank: a.rank,
        eplb_passes: a.eplb_passes,
        moe_layers: a.moe_layers.clone(),
        first_dense_layers: a.first_dense_layers,
    })
}

/// What a capture produced, before it is committed.
struct Captured {
    meta: TraceMeta,
    loads: Loads,
    /// Extra summary text (logits throughput, skipped tokens).
    note: String,
    /// The token rows carry weights the source recorded (not 1/k filled in,
    /// not computed from logits): worth checking for uniform weights.
    recorded_weights: bool,
    /// A load-level capture written a step at a time: `loads` holds its ids
    /// and sizes only (no counts), and this its constant-routing finding.
    streamed: Option<Option<capture::sanity::Finding>>,
}

/// Read `inputs` as `format` and write the trace at `out` (a staged path).
fn capture_into(
    format: Format,
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
    p: &Printer,
) -> anyhow::Result<Captured> {
    let first = &inputs[0];
    let started = std::time::Instant::now();
    let loads_only = |trace: llep_trace::trace::Trace| -> anyhow::Result<Captured> {
        write_trace(out, &trace)?;
        Ok(Captured {
            meta: trace.meta,
            loads: trace.loads,
            note: String::new(),
            recorded_weights: false,
            streamed: None,
        })
    };
    let routed = |r: capture::routed::RoutedReport| Captured {
        note: if r.had_weights {
            String::new()
        } else {
            ", no weights in the source (1/k each)".into()
        },
        meta: r.meta,
        loads: r.loads,
        recorded_weights: r.had_weights,
        streamed: None,
    };
    Ok(match format {
        Format::Sglang => loads_only(capture::engines::capture_sglang(inputs, opts)?)?,
        Format::Trtllm => loads_only(capture::engines::capture_trtllm(inputs, opts)?)?,
        Format::LoadCsv | Format::LoadJson => {
            if inputs.len() != 1 {
                bail!("{format} takes one input file ({} given)", inputs.len());
            }
            let w = capture::loads_stream::capture_to(first, opts, format.name(), out)?;
            let mut loads = Loads::zeros(Vec::new(), w.layer_ids, w.ranks, w.experts);
            loads.step_ids = w.step_ids;
            Captured {
                meta: w.meta,
                loads,
                note: String::new(),
                recorded_weights: false,
                streamed: Some(w.constant_routing),
            }
        }
        Format::PtRouting => routed(capture::routed::capture_pt(inputs, out, opts)?),
        Format::Jsonl => routed(capture::routed::capture_jsonl(inputs, out, opts, false)?),
        Format::MegatronJsonl => routed(capture::routed::capture_jsonl(inputs, out, opts, true)?),
        Format::Csv => routed(capture::routed::capture_csv(inputs, out, opts)?),
        Format::VllmRouted => routed(capture::routed::capture_vllm_with(
            inputs,
            out,
            opts,
            &capture::routed::VllmOptions {
                moe_layers: (!opts.moe_layers.is_empty()).then(|| opts.moe_layers.clone()),
                first_dense: opts.first_dense_layers,
            },
        )?),
        Format::SglangPerToken => {
            routed(capture::routed::capture_sglang_tokens(inputs, out, opts)?)
        }
        Format::EplbMatrix => loads_only(capture::engines::capture_eplb_matrix(
            inputs,
            opts,
            &capture::engines::EplbOptions {
                passes: opts.eplb_passes,
            },
        )?)?,
        Format::Logits => {
            let r = capture::logits::capture(inputs, out, opts)?;
            let secs = started.elapsed().as_secs_f64();
            let gb = r.logit_bytes as f64 / 1e9;
            let mut note = format!(
                ", {gb:.2} GB of logits in {secs:.2} s ({:.2} GB/s)",
                gb / secs.max(1e-9)
            );
            if r.skipped > 0 {
                note += &format!(
                    ", {} with NaN/Inf logits skipped",
                    plural(r.skipped, "token")
                );
            }
            if r.ids_checked > 0 {
                note += &format!(
                    ", recorded ids checked on {}: {} differ",
                    plural(r.ids_checked, "token"),
                    r.ids_mismatched
                );
                if r.ids_mismatched > 0 {
                    p.warn(&format!(
                        "{} of {} tokens: the routing function's top-k differs from the ids the model recorded (wrong --routing or bias?)",
                        r.ids_mismatched, r.ids_checked
                    ));
                }
            }
            Captured {
                meta: r.meta,
                loads: r.loads,
                note,
                recorded_weights: false,
                streamed: None,
            }
        }
    })
}

/// "1 step", "8 layers".
fn plural(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn run(a: CaptureArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let opts = options(&a, p)?;
    // every reader would fail on a missing input, some only after asking
    // for options the file would have answered
    if let Some(m) = a.inputs.iter().find(|i| !i.exists()) {
        bail!("{}: no such file or directory", m.display());
    }
    let first = &a.inputs[0];
    let format = match a.format.0 {
        Some(f) => f,
        None => Format::detect(first)?,
    };
    format.check_options(&opts, first)?;
    let staged = Staged::new(&a.out, format.level() != Level::Loads)?;
    let mut c = capture_into(format, &a.inputs, staged.path(), &opts, p)?;
    // judge and report what was written, not a reader's copy of it
    c.meta = read_meta(staged.path())?;
    checks::check_against_data(&opts.model, &c.meta, &c.loads, first)?;
    let k = c.meta.model.top_k;
    let constant = match c.streamed.take() {
        Some(judged) => judged,
        None => sanity::constant_routing(&c.loads, k),
    };
    if let Some(f) = constant {
        p.warn(&f.to_string());
    }
    if c.recorded_weights {
        if let Some(f) = sanity::uniform_weights(&staged.tokens_path())? {
            p.warn(&f.to_string());
        }
    }
    staged.commit()?;
    let tokens = if format.level() == Level::Loads {
        String::new()
    } else {
        let (tokens, rows) = sanity::token_counts(&c.loads, k);
        format!(
            ", {}, {}",
            plural(tokens, "token"),
            plural(rows, "token-layer row")
        )
    };
    let l = &c.loads;
    p.status(&format!(
        "wrote {}: {} x {} x {} x {} ({}), top-{k}{tokens}{}",
        a.out.display(),
        plural(l.steps() as u64, "step"),
        plural(l.layers() as u64, "layer"),
        plural(l.ranks as u64, "rank"),
        plural(l.experts as u64, "expert"),
        c.meta.capture.source_format,
        c.note
    ));
    if let (Some(col), false) = (&opts.group_by, c.meta.step_labels.is_empty()) {
        let steps: Vec<String> = (l.step_ids.iter().zip(&c.meta.step_labels))
            .map(|(s, label)| format!("{s} = {label}"))
            .collect();
        p.status(&format!("steps by {col}: {}", steps.join(", ")));
    }
    Ok(ExitCode::SUCCESS)
}
