//! Ratio tuning: sweep lambda (and alpha, m) and recommend a setting.
