//! `--group-by` and `--filter` for sources made of records with named
//! fields (per-token JSONL and CSV, Megatron-LM lines, load-level JSON): the
//! readers hand each record's values here, so every such source groups and
//! filters the same way and names an unknown column the same way.

use super::{CaptureError, CaptureOptions};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// `--group-by COLUMN`: each distinct value of the column becomes a step,
/// numbered in first-seen order; the values become the trace's step labels.
#[derive(Debug, Clone)]
pub struct StepGroups {
    column: String,
    index: HashMap<String, u32>,
    labels: Vec<String>,
}

impl StepGroups {
    pub fn new(opts: &CaptureOptions) -> Option<Self> {
        opts.group_by.as_ref().map(|c| Self {
            column: c.clone(),
            index: HashMap::new(),
            labels: Vec::new(),
        })
    }

    pub fn column(&self) -> &str {
        &self.column
    }

    /// The step of a record whose group column holds `value`.
    pub fn step(&mut self, value: &str) -> u32 {
        if let Some(&s) = self.index.get(value) {
            return s;
        }
        let s = self.labels.len() as u32;
        self.index.insert(value.to_string(), s);
        self.labels.push(value.to_string());
        s
    }

    /// The step of a JSON record; `step_field` is the name the step would
    /// otherwise come from (a record with both is refused: the group would
    /// silently replace the recorded step).
    pub fn json_step(
        &mut self,
        rec: &serde_json::Value,
        step_field: &str,
        file: &Path,
        line: usize,
    ) -> Result<u32, CaptureError> {
        if rec.get(step_field).is_some() {
            return Err(self.step_conflict(file, step_field));
        }
        match rec.get(&self.column) {
            Some(v) => Ok(self.step(&json_scalar(v))),
            None => Err(CaptureError::input(
                file,
                format!(
                    "line {line}: no field '{}' for --group-by (fields: {})",
                    self.column,
                    keys(rec)
                ),
            )),
        }
    }

    /// The column index of the group in a CSV header (lower-cased names).
    pub fn csv_column(
        &self,
        headers: &[String],
        step_column: &str,
        file: &Path,
    ) -> Result<usize, CaptureError> {
        if headers.iter().any(|h| h == step_column) {
            return Err(self.step_conflict(file, step_column));
        }
        let want = self.column.to_ascii_lowercase();
        headers.iter().position(|h| *h == want).ok_or_else(|| {
            CaptureError::input(
                file,
                format!(
                    "--group-by: no column '{}' (have: {})",
                    self.column,
                    headers.join(", ")
                ),
            )
        })
    }

    fn step_conflict(&self, file: &Path, step: &str) -> CaptureError {
        CaptureError::input(
            file,
            format!(
                "the records have a '{step}' field; --group-by {} would replace it: use one or the other",
                self.column
            ),
        )
    }

    /// Step labels, in step order.
    pub fn into_labels(self) -> Vec<String> {
        self.labels
    }
}

/// `--filter COLUMN=VALUE` over JSON records. A column that no record of a
/// file has is an error naming it, not an empty result.
#[derive(Debug, Clone)]
pub struct JsonFilter<'a> {
    filters: &'a [(String, String)],
    seen: Vec<bool>,
    records: u64,
    fields: BTreeSet<String>,
}

impl<'a> JsonFilter<'a> {
    pub fn new(opts: &'a CaptureOptions) -> Self {
        Self {
            filters: &opts.filters,
            seen: vec![false; opts.filters.len()],
            records: 0,
            fields: BTreeSet::new(),
        }
    }

    /// Whether the record passes every filter.
    pub fn keep(&mut self, rec: &serde_json::Value) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        self.records += 1;
        if let Some(o) = rec.as_object() {
            // a handful of names, kept for the error message
            if self.fields.len() < 64 {
                self.fields.extend(o.keys().cloned());
            }
        }
        let mut keep = true;
        for (i, (col, want)) in self.filters.iter().enumerate() {
            match rec.get(col) {
                Some(v) => {
                    self.seen[i] = true;
                    keep &= json_scalar(v) == *want;
                }
                None => keep = false,
            }
        }
        keep
    }

    /// After the last record of `file`: refuse a filter column no record
    /// had, then start over for the next file.
    pub fn check(&mut self, file: &Path) -> Result<(), CaptureError> {
        if self.records > 0 {
            if let Some(i) = self.seen.iter().position(|s| !s) {
                let (col, want) = &self.filters[i];
                return Err(CaptureError::input(
                    file,
                    format!(
                        "--filter {col}={want}: no record has a field '{col}' (fields: {})",
                        self.fields.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        self.seen.iter_mut().for_each(|s| *s = false);
        self.records = 0;
        self.fields.clear();
        Ok(())
    }
}

/// A JSON value as text, strings without their quotes.
pub fn json_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn keys(rec: &serde_json::Value) -> String {
    rec.as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "none: not an object".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_number_values_in_first_seen_order() {
        let opts = CaptureOptions {
            group_by: Some("domain".into()),
            ..Default::default()
        };
        let mut g = StepGroups::new(&opts).unwrap();
        let f = Path::new("r.jsonl");
        let steps: Vec<u32> = ["web", "code", "web", "math", "code"]
            .iter()
            .map(|d| g.json_step(&json!({"domain": d}), "step", f, 1).unwrap())
            .collect();
        assert_eq!(steps, [0, 1, 0, 2, 1]);
        let e = g
            .json_step(&json!({"topic": "x", "expert": [1]}), "step", f, 7)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "r.jsonl: line 7: no field 'domain' for --group-by (fields: topic, expert)"
        );
        let e = g
            .json_step(&json!({"domain": "x", "step": 3}), "step", f, 8)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'step' field") && e.contains("--group-by domain"),
            "{e}"
        );
        assert_eq!(g.into_labels(), ["web", "code", "math"]);
    }

    #[test]
    fn csv_group_column_is_found_or_named() {
        let opts = CaptureOptions {
            group_by: Some("Domain".into()),
            ..Default::default()
        };
        let g = StepGroups::new(&opts).unwrap();
        let h: Vec<String> = ["layer", "expert", "domain"].map(String::from).to_vec();
        assert_eq!(g.csv_column(&h, "step", Path::new("a.csv")).unwrap(), 2);
        let h: Vec<String> = ["layer", "expert"].map(String::from).to_vec();
        let e = g
            .csv_column(&h, "step", Path::new("a.csv"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "a.csv: --group-by: no column 'Domain' (have: layer, expert)"
        );
    }

    #[test]
    fn a_filter_column_no_record_has_is_named() {
        let opts = CaptureOptions {
            filters: vec![("model".into(), "a".into())],
            ..Default::default()
        };
        let mut f = JsonFilter::new(&opts);
        assert!(f.keep(&json!({"model": "a"})));
        assert!(!f.keep(&json!({"model": "b"})));
        assert!(!f.keep(&json!({"other": 1})));
        f.check(Path::new("x.jsonl")).unwrap();
        assert!(!f.keep(&json!({"other": 1})));
        let e = f.check(Path::new("y.jsonl")).unwrap_err().to_string();
        assert_eq!(
            e,
            "y.jsonl: --filter model=a: no record has a field 'model' (fields: other)"
        );
    }
}
