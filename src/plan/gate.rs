//! The lambda gate: when LLEP switches on for a layer.
//!
//! One type for every command. The reference planner runs iff the layer's
//! imbalance `max/mean >= lambda` (`planner.md`, step 1); `Always` is the
//! reference's reading of an unset, unparsable or non-positive lambda, and
//! `Never` is plain EP (the baseline `tune` compares against). Parsing of
//! the environment variable lives here so that `plan`, `simulate`, `tune`
//! and `replay` read it exactly as the reference does.

use std::fmt;

/// A lambda setting.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Gate {
    /// Plain EP: LLEP never switches on.
    #[default]
    Never,
    /// LLEP switches on iff the imbalance ratio is at least this value.
    Ratio(f64),
    /// LLEP plans every layer (the reference's unset / <= 0 lambda).
    Always,
    /// Beyond the reference: LLEP where the cost model predicts a gain
    /// (the `llep-auto` policy; the planner plans, an Arbiter decides).
    Auto,
}

/// Why a `--ratio` or environment value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("'{0}' is not a finite number")]
    NotFinite(String),
    #[error("range '{0}': step must be > 0")]
    BadStep(String),
    #[error("range '{0}': need 0 < start <= end")]
    BadRange(String),
    #[error("range '{0}' has too many values")]
    TooMany(String),
    #[error("'{0}' is neither a number nor a range start:end:step")]
    Malformed(String),
    #[error("no ratio given")]
    Empty,
}

/// The gate a reference deployment would use for a raw environment value,
/// plus a warning when the reference's reading is a quirk worth flagging.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceReading {
    pub gate: Gate,
    /// Set when the value was present but unparsable: the reference then
    /// plans every layer, which is rarely what the user meant.
    pub quirk: Option<String>,
}

impl Gate {
    /// The gate's rule, shared by the planner and the simulator.
    #[inline]
    pub fn admits(self, imbalance_ratio: f64) -> bool {
        match self {
            Gate::Never => false,
            Gate::Ratio(l) => imbalance_ratio >= l,
            Gate::Always | Gate::Auto => true,
        }
    }

    /// The numeric lambda, when there is one.
    pub fn lambda(self) -> Option<f64> {
        match self {
            Gate::Ratio(l) => Some(l),
            _ => None,
        }
    }

    /// What to put in `MOE_ADAPTIVE_LPT_ROUTING_RATIO` for this gate. The
    /// reference has no "never": a lambda above any possible imbalance
    /// (the number of GPUs bounds max/mean) does the same.
    pub fn env_value(self) -> String {
        match self {
            Gate::Ratio(l) => fmt_lambda(l),
            Gate::Always => "0".into(),
            Gate::Never => "1000000".into(),
            // no reference setting reproduces it; the closest is always
            Gate::Auto => "0".into(),
        }
    }

    /// The reference's reading of `MOE_ADAPTIVE_LPT_ROUTING_RATIO`: unset,
    /// unparsable or <= 0 means always plan.
    pub fn from_reference(raw: Option<&str>) -> ReferenceReading {
        let Some(raw) = raw else {
            return ReferenceReading {
                gate: Gate::Always,
                quirk: None,
            };
        };
        match raw.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => ReferenceReading {
                gate: Gate::Ratio(v),
                quirk: None,
            },
            Ok(_) => ReferenceReading {
                gate: Gate::Always,
                quirk: None,
            },
            Err(_) => ReferenceReading {
                gate: Gate::Always,
                quirk: Some(format!(
                    "'{raw}' is not a number; the reference reads that as 'plan every layer' (lambda always)"
                )),
            },
        }
    }

    /// Parse one value, a comma list or ranges `start:end:step` (inclusive of
    /// `end` within rounding). `always` or a value <= 0 means always plan (as
    /// in the reference); `never` means plain EP; `auto` the cost-aware gate.
    pub fn parse_list(spec: &str) -> Result<Vec<Gate>, GateError> {
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if part.eq_ignore_ascii_case("always") {
                out.push(Gate::Always);
                continue;
            }
            if part.eq_ignore_ascii_case("never") {
                out.push(Gate::Never);
                continue;
            }
            if part.eq_ignore_ascii_case("auto") {
                out.push(Gate::Auto);
                continue;
            }
            let nums: Vec<&str> = part.split(':').collect();
            match nums.len() {
                1 => {
                    let v = number(nums[0])?;
                    out.push(if v <= 0.0 {
                        Gate::Always
                    } else {
                        Gate::Ratio(v)
                    });
                }
                3 => out.extend(range(part, &nums)?),
                _ => return Err(GateError::Malformed(part.into())),
            }
        }
        if out.is_empty() {
            return Err(GateError::Empty);
        }
        Ok(out)
    }
}

fn number(s: &str) -> Result<f64, GateError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| GateError::NotANumber(s.into()))?;
    if !v.is_finite() {
        return Err(GateError::NotFinite(s.into()));
    }
    Ok(v)
}

fn range(part: &str, nums: &[&str]) -> Result<Vec<Gate>, GateError> {
    let (a, b, st) = (number(nums[0])?, number(nums[1])?, number(nums[2])?);
    if st <= 0.0 {
        return Err(GateError::BadStep(part.into()));
    }
    if a <= 0.0 || b < a {
        return Err(GateError::BadRange(part.into()));
    }
    let n = ((b - a) / st + 1e-9).floor() as usize;
    if n > 100_000 {
        return Err(GateError::TooMany(part.into()));
    }
    // round to 1e-9 so 1.0:3.0:0.1 gives 1.3, not 1.3000000000000003
    Ok((0..=n)
        .map(|i| Gate::Ratio(((a + st * i as f64) * 1e9).round() / 1e9))
        .collect())
}

/// A threshold with at least one decimal ("1.0", "1.05", "1.125"): the one
/// way a lambda is written, in tables and in the exported variable.
pub fn fmt_lambda(l: f64) -> String {
    let s = format!("{l}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

impl fmt::Display for Gate {
    /// "1.3", "always" or "never": the one label of a gate in every table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Ratio(l) => f.write_str(&fmt_lambda(*l)),
            Gate::Always => f.write_str("always"),
            Gate::Never => f.write_str("never"),
            Gate::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_specs() {
        assert_eq!(Gate::parse_list("1.3").unwrap(), vec![Gate::Ratio(1.3)]);
        assert_eq!(
            Gate::parse_list("1.1,always,0,never").unwrap(),
            vec![Gate::Ratio(1.1), Gate::Always, Gate::Always, Gate::Never]
        );
        let r = Gate::parse_list("1.0:3.0:0.1").unwrap();
        assert_eq!(r.len(), 21);
        assert_eq!(r[3], Gate::Ratio(1.3));
        assert_eq!(r[20], Gate::Ratio(3.0));
        assert!(Gate::parse_list("nan").is_err());
        assert!(Gate::parse_list("1:2:0").is_err());
        assert!(Gate::parse_list("2:1:0.1").is_err());
        assert!(Gate::parse_list("").is_err());
    }

    #[test]
    fn the_environment_is_read_as_the_reference_reads_it() {
        let g = |s: Option<&str>| Gate::from_reference(s);
        assert_eq!(g(None).gate, Gate::Always);
        assert_eq!(g(Some("0")).gate, Gate::Always);
        assert_eq!(g(Some("-1.5")).gate, Gate::Always);
        assert_eq!(g(Some(" 1.3 ")).gate, Gate::Ratio(1.3));
        assert!(g(Some("1.3")).quirk.is_none());
        let odd = g(Some("abc"));
        assert_eq!(odd.gate, Gate::Always);
        assert!(odd.quirk.unwrap().contains("'abc' is not a number"));
    }

    #[test]
    fn the_rule_and_the_labels() {
        assert!(Gate::Ratio(1.3).admits(1.3));
        assert!(!Gate::Ratio(1.3).admits(1.2999));
        assert!(Gate::Always.admits(1.0));
        assert!(!Gate::Never.admits(100.0));
        assert_eq!(Gate::Ratio(1.05).to_string(), "1.05");
        assert_eq!(Gate::Always.to_string(), "always");
        assert_eq!(Gate::Never.to_string(), "never");
        assert_eq!(Gate::Never.env_value(), "1000000");
    }
}
