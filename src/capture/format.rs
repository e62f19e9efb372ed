//! Source formats of `capture`: their names (the `--format` values), which
//! options each one reads, and detection of the format from a path.
//!
//! The command line lists [`Format::ALL`] as the possible values of
//! `--format` (plus `auto`, which calls [`Format::detect`]); the library
//! itself knows nothing of clap.

use super::{CaptureError, CaptureOptions};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One source format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Router logits: `.npy`, `.npz`, `.safetensors`, or a hook directory.
    Logits,
    /// `torch.save` dicts of per-token ids and scores (FLAME-MoE layout).
    PtRouting,
    /// One JSON record per token, fields mapped with `--field`.
    Jsonl,
    /// One CSV row per token, columns mapped with `--field`.
    Csv,
    /// Megatron-LM router trace lines.
    MegatronJsonl,
    /// vLLM routed-experts arrays (`.npy`, `[tokens, layers, k]`).
    VllmRouted,
    /// Per-expert counts, long-form CSV.
    LoadCsv,
    /// Per-expert counts, JSON rows or a `[layers][experts]` matrix.
    LoadJson,
    /// SGLang expert-distribution dumps.
    Sglang,
    /// TensorRT-LLM expert-load statistics.
    Trtllm,
    /// SGLang `per_token` dumps read as tokens (`topk_ids_of_layer`).
    SglangPerToken,
    /// A `[layers, logical_experts]` load matrix (DeepSeek EPLB input,
    /// SGLang `--init-expert-location`): `.pt`, `.json` or `.npy`.
    EplbMatrix,
}

/// What a format yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Router logits, routed by a routing function into token rows.
    Logits,
    /// Recorded per-token expert ids.
    Tokens,
    /// Per-expert counts only.
    Loads,
}

/// The value of `--format` that asks for detection.
pub const AUTO: &str = "auto";

impl Format {
    pub const ALL: [Format; 12] = [
        Format::Logits,
        Format::PtRouting,
        Format::Jsonl,
        Format::Csv,
        Format::MegatronJsonl,
        Format::VllmRouted,
        Format::LoadCsv,
        Format::LoadJson,
        Format::Sglang,
        Format::Trtllm,
        Format::SglangPerToken,
        Format::EplbMatrix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Logits => "logits",
            Format::PtRouting => "pt-routing",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::MegatronJsonl => "megatron-jsonl",
            Format::VllmRouted => "vllm-routed",
            Format::LoadCsv => "load-csv",
            Format::LoadJson => "load-json",
            Format::Sglang => "sglang",
            Format::Trtllm => "trtllm",
            Format::SglangPerToken => "sglang-per-token",
            Format::EplbMatrix => "eplb-matrix",
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Format::Logits => "router logits: .npy/.npz/.safetensors files or a capture directory",
            Format::PtRouting => "PyTorch .pt dicts of per-token ids (FLAME-MoE layout)",
            Format::Jsonl => "one JSON record per token (--field maps the names)",
            Format::Csv => "one CSV row per token (--field maps the columns)",
            Format::MegatronJsonl => "Megatron-LM router trace lines",
            Format::VllmRouted => "vLLM routed-experts arrays, .npy [tokens, layers, k]",
            Format::LoadCsv => "per-expert counts: CSV layer, expert, count (+ step, rank)",
            Format::LoadJson => "per-expert counts: JSON rows or a [layers][experts] matrix",
            Format::Sglang => "SGLang expert-distribution dumps",
            Format::Trtllm => "TensorRT-LLM expert-load statistics",
            Format::SglangPerToken => "SGLang per_token dumps, read as per-token ids",
            Format::EplbMatrix => "a [layers, experts] load matrix (EPLB input; .pt, .json, .npy)",
        }
    }

    pub fn level(self) -> Level {
        match self {
            Format::Logits => Level::Logits,
            Format::PtRouting
            | Format::Jsonl
            | Format::Csv
            | Format::MegatronJsonl
            | Format::VllmRouted
            | Format::SglangPerToken => Level::Tokens,
            Format::LoadCsv
            | Format::LoadJson
            | Format::Sglang
            | Format::Trtllm
            | Format::EplbMatrix => Level::Loads,
        }
    }

    /// Whether the source is made of records with named fields, the ones
    /// `--group-by` and `--filter` select on.
    pub fn has_fields(self) -> bool {
        matches!(
            self,
            Format::Jsonl
                | Format::Csv
                | Format::MegatronJsonl
                | Format::LoadCsv
                | Format::LoadJson
        )
    }

    /// Decide the format of `path` from its extension and, where the
    /// extension is shared, a look at the content (a CSV header, the first
    /// JSONL line, a `.npy` header, the keys of a `.pt` dict). A directory is
    /// a hook capture (`capture.json`), a TensorRT-LLM dump
    /// (`meta_info.json`), or judged by the files in it.
    pub fn detect(path: &Path) -> Result<Format, DetectError> {
        let meta = std::fs::metadata(path).map_err(|e| DetectError::unreadable(path, e))?;
        if meta.is_dir() {
            return detect_dir(path);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "csv" => {
                let (_, headers) = super::open_csv(path).map_err(DetectError::from)?;
                let has = |n: &str| headers.iter().any(|h| h == n);
                if has("layer_id") && has("expert_id") && has("count") {
                    // SGLang <= 0.4.5's per-rank dump_record CSVs
                    Format::Sglang
                } else if has("count") {
                    Format::LoadCsv
                } else {
                    Format::Csv
                }
            }
            "json" => Format::LoadJson,
            "jsonl" => {
                if first_jsonl_record(path)?.contains("\"top_indices\"") {
                    Format::MegatronJsonl
                } else {
                    Format::Jsonl
                }
            }
            "npz" | "safetensors" => Format::Logits,
            "npy" => {
                if super::tensor::read_npy_dtype(path)?.is_float() {
                    Format::Logits
                } else {
                    Format::VllmRouted
                }
            }
            "pt" => {
                let v = super::pt::read_pt(path)?;
                if v.get("logical_count").is_some() || v.get("records").is_some() {
                    Format::Sglang
                } else {
                    Format::PtRouting
                }
            }
            _ => {
                return Err(DetectError::UnknownExtension {
                    path: path.to_path_buf(),
                })
            }
        })
    }

    /// Refuse options this format does not read: an option that would be
    /// silently ignored is an error naming the option and the input.
    pub fn check_options(self, opts: &CaptureOptions, input: &Path) -> Result<(), CaptureError> {
        let lv = self.level();
        let routed_or_logits = lv != Level::Loads;
        let tests: [(bool, bool, String); 12] = [
            (
                opts.eplb_passes.is_some(),
                self == Format::EplbMatrix,
                "--eplb-passes".into(),
            ),
            (
                !opts.moe_layers.is_empty() || opts.first_dense_layers.is_some(),
                self == Format::VllmRouted,
                "--moe-layers/--first-dense-layers".into(),
            ),
            (
                opts.group_by.is_some(),
                self.has_fields(),
                format!("--group-by {}", opts.group_by.as_deref().unwrap_or("")),
            ),
            (
                !opts.filters.is_empty(),
                self.has_fields(),
                "--filter".into(),
            ),
            (
                opts.json_key.is_some(),
                self == Format::LoadJson,
                "--json-key".into(),
            ),
            (
                !opts.fields.is_empty(),
                lv == Level::Tokens && self != Format::VllmRouted,
                "--field".into(),
            ),
            (opts.rank.is_some(), routed_or_logits, "--rank".into()),
            (
                opts.sequence_length.is_some(),
                routed_or_logits,
                "--sequence-length".into(),
            ),
            (
                opts.keep_logits,
                lv == Level::Logits,
                "--keep-logits".into(),
            ),
            (opts.nan_skip, lv == Level::Logits, "--nan skip".into()),
            (
                opts.tensor_pattern.is_some() || opts.ids_pattern.is_some(),
                lv == Level::Logits,
                "--tensor-pattern/--ids-pattern".into(),
            ),
            (
                opts.bias_pattern.is_some(),
                lv == Level::Logits,
                "--bias-pattern".into(),
            ),
        ];
        for (given, applies, opt) in tests {
            if given && !applies {
                return Err(CaptureError::Usage(format!(
                    "{opt} does not apply to {}: the {} format {}",
                    input.display(),
                    self.name(),
                    self.lacks()
                )));
            }
        }
        for (field, _) in &opts.fields {
            if !FIELDS.contains(&field.as_str()) {
                return Err(CaptureError::Usage(format!(
                    "--field {field}=...: unknown trace field '{field}' (known: {})",
                    FIELDS.join(", ")
                )));
            }
            let read = self.fields_read();
            if !read.contains(&field.as_str()) {
                return Err(CaptureError::Usage(format!(
                    "--field {field}=... does not apply to {}: the {} format maps only {}",
                    input.display(),
                    self.name(),
                    read.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The trace fields `--field` can rename in this format.
    fn fields_read(self) -> &'static [&'static str] {
        match self {
            // one dict per (step, layer): scalars, not per-token fields
            Format::PtRouting => &["expert", "weight", "layer", "step", "sequence_length"],
            Format::Jsonl | Format::Csv | Format::MegatronJsonl => &FIELDS[..7],
            _ => &[],
        }
    }

    /// What the format does not have, for the error above.
    fn lacks(self) -> &'static str {
        match self.level() {
            Level::Logits => "is routed from logits and has no named record fields",
            Level::Tokens if self.has_fields() => "reads per-token records",
            Level::Tokens => "holds tensors, not records with named fields or logits",
            Level::Loads if self.has_fields() => "holds per-expert counts, not tokens or logits",
            Level::Loads => "holds per-expert counts of an engine dump",
        }
    }
}

/// Trace fields `--field FIELD=SOURCE` can map.
pub const FIELDS: [&str; 8] = [
    "expert",
    "weight",
    "layer",
    "step",
    "rank",
    "token",
    "sequence",
    "sequence_length",
];

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format '{0}' (known: auto, {names})", names = names_list())]
pub struct UnknownFormat(pub String);

fn names_list() -> String {
    Format::ALL.map(Format::name).join(", ")
}

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// Why the format of an input could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("{path}: {msg}")]
    Unreadable { path: PathBuf, msg: String },
    #[error("{path}: the directory has no files capture can read (.safetensors, .npz, .npy, .pt, .jsonl, .csv, or a capture.json or meta_info.json)")]
    NoReadableFiles { path: PathBuf },
    #[error("{path}: cannot tell the format from the extension; pass --format (one of {names})", names = names_list())]
    UnknownExtension { path: PathBuf },
    /// The file looked at is not valid in the format its extension names.
    #[error(transparent)]
    Content(Box<CaptureError>),
}

impl DetectError {
    fn unreadable(path: &Path, e: std::io::Error) -> Self {
        let msg = if e.kind() == std::io::ErrorKind::NotFound {
            "no such file or directory".to_string()
        } else {
            format!("cannot read: {e}")
        };
        DetectError::Unreadable {
            path: path.to_path_buf(),
            msg,
        }
    }
}

impl From<CaptureError> for DetectError {
    fn from(e: CaptureError) -> Self {
        DetectError::Content(Box::new(e))
    }
}

/// The extensions a directory is judged by, in order of precedence, and
/// whether one file of that kind must be looked into.
const DIR_EXTS: [(&str, bool); 6] = [
    ("safetensors", false),
    ("npz", false),
    ("pt", true),
    ("npy", true),
    ("jsonl", true),
    ("csv", true),
];

fn detect_dir(path: &Path) -> Result<Format, DetectError> {
    if path.join("capture.json").exists() {
        return Ok(Format::Logits);
    }
    if path.join("meta_info.json").exists() {
        return Ok(Format::Trtllm);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DetectError::unreadable(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for (ext, look_inside) in DIR_EXTS {
        let first = files.iter().find(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case(ext))
        });
        if let Some(first) = first {
            return if look_inside {
                Format::detect(first)
            } else {
                Ok(Format::Logits)
            };
        }
    }
    Err(DetectError::NoReadableFiles {
        path: path.to_path_buf(),
    })
}

/// The first non-blank line of a JSONL file.
fn first_jsonl_record(path: &Path) -> Result<String, DetectError> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|e| DetectError::unreadable(path, e))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| DetectError::unreadable(path, e))?;
        if !line.trim().is_empty() {
            return Ok(line);
        }
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llep-fmt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        let e = "parquet".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("'parquet'") && e.contains("load-csv"), "{e}");
    }

    #[test]
    fn detection_reads_extension_and_content() {
        let d = tmp("detect");
        let cases = [
            ("a.csv", "layer,expert,count\n0,1,2\n", Format::LoadCsv),
            ("b.csv", "layer,expert\n0,1\n", Format::Csv),
            ("c.jsonl", "\n{\"expert\": [1, 2]}\n", Format::Jsonl),
            (
                "d.jsonl",
                "{\"step\":0,\"layer\":0,\"rank\":0,\"num_tokens\":1,\"topk\":1,\"top_indices\":[[1]]}\n",
                Format::MegatronJsonl,
            ),
            ("e.json", "[[1, 2]]", Format::LoadJson),
        ];
        for (name, body, want) in cases {
            let p = d.join(name);
            std::fs::write(&p, body).unwrap();
            assert_eq!(Format::detect(&p).unwrap(), want, "{name}");
        }
        let p = d.join("x.parquet");
        std::fs::write(&p, "x").unwrap();
        let e = Format::detect(&p).unwrap_err().to_string();
        assert!(
            e.contains("x.parquet") && e.contains("pass --format"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_without_readable_files_says_so() {
        let d = tmp("emptydir");
        std::fs::write(d.join("notes.txt"), "hello").unwrap();
        let e = Format::detect(&d).unwrap_err();
        assert!(matches!(e, DetectError::NoReadableFiles { .. }), "{e}");
        assert!(!e.to_string().contains("--format"), "{e}");
        std::fs::write(d.join("r.csv"), "layer,expert\n0,1\n").unwrap();
        assert_eq!(Format::detect(&d).unwrap(), Format::Csv);
        let e = Format::detect(&d.join("nope.csv")).unwrap_err().to_string();
        assert!(e.ends_with("nope.csv: no such file or directory"), "{e}");
    }

    #[test]
    fn options_a_format_does_not_read_are_refused() {
        let opts = CaptureOptions {
            group_by: Some("domain".into()),
            ..Default::default()
        };
        let e = Format::Logits
            .check_options(&opts, Path::new("cap"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--group-by domain") && e.contains("cap") && e.contains("logits"),
            "{e}"
        );
        for f in [
            Format::Jsonl,
            Format::Csv,
            Format::LoadCsv,
            Format::LoadJson,
        ] {
            f.check_options(&opts, Path::new("x")).unwrap();
        }
        let opts = CaptureOptions {
            fields: vec![("experts".into(), "ids".into())],
            ..Default::default()
        };
        let e = Format::Jsonl
            .check_options(&opts, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'experts'") && e.contains("expert, weight"),
            "{e}"
        );
        let opts = CaptureOptions {
            fields: vec![("token".into(), "tok".into())],
            ..Default::default()
        };
        Format::Csv.check_options(&opts, Path::new("x")).unwrap();
        let e = Format::PtRouting
            .check_options(&opts, Path::new("d.pt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--field token=... does not apply to d.pt"),
            "{e}"
        );
        let opts = CaptureOptions {
            json_key: Some("k".into()),
            ..Default::default()
        };
        assert!(Format::LoadCsv
            .check_options(&opts, Path::new("x"))
            .is_err());
        Format::LoadJson
            .check_options(&opts, Path::new("x"))
            .unwrap();
    }
}
