//! Options checked before and after a capture: a dtype the simulator can
//! price, and model options that must agree with what the data says
//! (`--top-k 3` on top-2 records is an error, not a silent top-2 trace).

use super::CaptureError;
use crate::trace::{Loads, TraceMeta};
use std::path::Path;

/// The dtypes `ModelMeta::dtype_bytes` prices: canonical name, the other
/// names accepted for it, bytes per element.
pub const DTYPES: [(&str, &[&str], u64); 4] = [
    ("bf16", &["bfloat16"], 2),
    ("fp16", &["f16", "float16", "half"], 2),
    ("f32", &["fp32", "float32"], 4),
    ("fp8", &["f8", "e4m3"], 1),
];

/// The canonical name of a dtype given on the command line; anything the
/// simulator would not price correctly is refused.
pub fn parse_dtype(s: &str) -> Result<&'static str, CaptureError> {
    let t = s.trim().to_ascii_lowercase();
    DTYPES
        .iter()
        .find(|(name, aliases, _)| *name == t || aliases.contains(&t.as_str()))
        .map(|(name, _, _)| *name)
        .ok_or_else(|| {
            let known: Vec<String> = DTYPES
                .iter()
                .map(|(n, a, _)| format!("{n} ({})", a.join(", ")))
                .collect();
            CaptureError::Usage(format!(
                "--dtype {s}: unknown dtype (known: {})",
                known.join(", ")
            ))
        })
}

/// Model options given on the command line, compared with the trace the
/// capture produced from `input`. Sources that take these values from the
/// options (load counts, logits) agree by construction; sources that record
/// them (per-token ids, layer ids) may not.
pub fn check_against_data(
    given: &super::ModelOverrides,
    meta: &TraceMeta,
    loads: &Loads,
    input: &Path,
) -> Result<(), CaptureError> {
    let what = input.display();
    if let Some(k) = given.top_k {
        if k != meta.model.top_k {
            return Err(CaptureError::Usage(format!(
                "--top-k {k} contradicts {what}: its records have {} expert{} per token",
                meta.model.top_k,
                if meta.model.top_k == 1 { "" } else { "s" }
            )));
        }
    }
    if let Some(e) = given.num_experts {
        if e != meta.model.num_experts {
            return Err(CaptureError::Usage(format!(
                "--num-experts {e} contradicts {what}: it has {} experts",
                meta.model.num_experts
            )));
        }
    }
    if let Some(n) = given.num_layers {
        let seen = loads.layers();
        if (n as usize) < seen {
            return Err(CaptureError::Usage(format!(
                "--num-layers {n} contradicts {what}: it records {seen} layers (ids {}..={})",
                loads.layer_ids.first().copied().unwrap_or(0),
                loads.layer_ids.last().copied().unwrap_or(0)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::meta::{CaptureMeta, ModelMeta, RoutingFn};

    fn model(dtype: &str) -> ModelMeta {
        ModelMeta {
            name: "m".into(),
            num_experts: 8,
            top_k: 2,
            hidden_size: 1,
            intermediate_size: 1,
            num_layers: 4,
            dtype: dtype.into(),
            routing: RoutingFn::Recorded,
        }
    }

    #[test]
    fn every_accepted_dtype_is_priced_at_its_size() {
        for (name, aliases, bytes) in DTYPES {
            for a in aliases.iter().chain([&name]) {
                assert_eq!(parse_dtype(a).unwrap(), name);
                assert_eq!(parse_dtype(&a.to_ascii_uppercase()).unwrap(), name);
                assert_eq!(model(a).dtype_bytes(), bytes, "{a}");
            }
        }
        let e = parse_dtype("fp4").unwrap_err().to_string();
        assert!(
            e.contains("--dtype fp4") && e.contains("bf16") && e.contains("fp8"),
            "{e}"
        );
    }

    #[test]
    fn options_that_contradict_the_data_are_named() {
        let meta = TraceMeta::new(model("bf16"), CaptureMeta::default());
        let loads = Loads::zeros(vec![0], (0..25).collect(), 1, 8);
        let given = |f: fn(&mut super::super::ModelOverrides)| {
            let mut g = super::super::ModelOverrides::default();
            f(&mut g);
            check_against_data(&g, &meta, &loads, Path::new("r.jsonl"))
        };
        given(|_| {}).unwrap();
        given(|g| g.top_k = Some(2)).unwrap();
        let e = given(|g| g.top_k = Some(3)).unwrap_err().to_string();
        assert_eq!(
            e,
            "--top-k 3 contradicts r.jsonl: its records have 2 experts per token"
        );
        let e = given(|g| g.num_layers = Some(3)).unwrap_err().to_string();
        assert!(
            e.starts_with("--num-layers 3 contradicts r.jsonl: it records 25 layers"),
            "{e}"
        );
        given(|g| g.num_layers = Some(32)).unwrap();
        let e = given(|g| g.num_experts = Some(16)).unwrap_err().to_string();
        assert!(e.contains("--num-experts 16 contradicts r.jsonl"), "{e}");
    }
}
