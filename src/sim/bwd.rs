//! Backward GEMM tables of a hardware profile: what `calibrate --bwd`
//! measured (dgrad and wgrad of gate_up and down per M, per expert shape),
//! how they go into a profile (with the dgrad and wgrad factors fitted from
//! them for shapes without tables) and how `simulate --pass train` reads
//! them (`sim::train`).

use super::model;
use super::profile::Profile;
use crate::gpu::calibrate::BwdGridShape;
use serde::{Deserialize, Serialize};

/// One of the four backward GEMMs of an expert (row-major; X the expert's
/// input rows, H the gate_up output, A the activation, Y the down output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BwdGemm {
    /// dX = dH . Wgu^T
    GateUpDgrad,
    /// dWgu = X^T . dH, a reduction over the tokens
    GateUpWgrad,
    /// dA = dY . Wd^T
    DownDgrad,
    /// dWd = A^T . dY, a reduction over the tokens
    DownWgrad,
}

impl BwdGemm {
    pub const ALL: [BwdGemm; 4] = [
        BwdGemm::GateUpDgrad,
        BwdGemm::GateUpWgrad,
        BwdGemm::DownDgrad,
        BwdGemm::DownWgrad,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BwdGemm::GateUpDgrad => "gate_up dgrad",
            BwdGemm::GateUpWgrad => "gate_up wgrad",
            BwdGemm::DownDgrad => "down dgrad",
            BwdGemm::DownWgrad => "down wgrad",
        }
    }

    pub fn is_wgrad(self) -> bool {
        matches!(self, BwdGemm::GateUpWgrad | BwdGemm::DownWgrad)
    }

    /// FLOPs of one such GEMM of `m` rows for expert shape (D, I).
    pub fn flops(self, m: f64, d: f64, i: f64) -> f64 {
        match self {
            BwdGemm::GateUpDgrad | BwdGemm::GateUpWgrad => 2.0 * m * d * 2.0 * i,
            BwdGemm::DownDgrad | BwdGemm::DownWgrad => 2.0 * m * i * d,
        }
    }
}

/// Measured time of one backward GEMM against its rows M, for one expert
/// shape: (M, ms) sorted by M.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BwdTable {
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub gemm: BwdGemm,
    pub points: Vec<(f64, f64)>,
}

/// The backward tables of a calibration's backward grid.
pub fn tables(grid: &[BwdGridShape]) -> Vec<BwdTable> {
    let mut out = Vec::new();
    for g in grid {
        for (gemm, pts) in BwdGemm::ALL.into_iter().zip([
            &g.gate_up_dgrad,
            &g.gate_up_wgrad,
            &g.down_dgrad,
            &g.down_wgrad,
        ]) {
            out.push(BwdTable {
                hidden_size: g.hidden as u32,
                intermediate_size: g.inter as u32,
                gemm,
                points: pts.clone(),
            });
        }
    }
    out
}

/// Put `new` backward tables into `p` (replacing those of the same shape
/// and GEMM), and refit the dgrad and wgrad factors that price shapes
/// without tables.
pub fn set(p: &mut Profile, new: &[BwdTable]) {
    for t in new {
        let same = |x: &&mut BwdTable| {
            x.gemm == t.gemm
                && x.hidden_size == t.hidden_size
                && x.intermediate_size == t.intermediate_size
        };
        match p.bwd_tables.iter_mut().find(same) {
            Some(x) => *x = t.clone(),
            None => p.bwd_tables.push(t.clone()),
        }
    }
    if let Some((dg, wg)) = factors(p) {
        p.bwd_dgrad_factor = dg;
        p.bwd_wgrad_factor = wg;
    }
}

/// How a profile prices the backward GEMMs, for the `--pass train` note.
pub fn describe(p: &Profile) -> String {
    let mut shapes: Vec<String> = p
        .bwd_tables
        .iter()
        .map(|t| format!("{}:{}", t.hidden_size, t.intermediate_size))
        .collect();
    shapes.dedup();
    let factors = format!(
        "{:.2}x (dgrad) and {:.2}x (wgrad) the forward's",
        p.bwd_dgrad_factor, p.bwd_wgrad_factor
    );
    if !shapes.is_empty() {
        format!(
            "backward GEMMs from measured tables for D:I {} (dgrad and wgrad apart), other shapes at {factors}",
            shapes.join(", ")
        )
    } else if p.bwd_dgrad_factor == 1.0 && p.bwd_wgrad_factor == 1.0 {
        format!("backward GEMMs at {factors}, not calibrated yet")
    } else {
        format!("backward GEMMs at {factors}, as calibrated")
    }
}

/// Time of one backward GEMM of `m` rows for expert shape (d, i), ms, from
/// the tables (held at the first point below it: latency bound there);
/// `None` without a table of that shape and GEMM.
pub fn bwd_table_ms(p: &Profile, gemm: BwdGemm, m: f64, d: u64, i: u64) -> Option<f64> {
    let t = p
        .bwd_tables
        .iter()
        .find(|t| t.gemm == gemm && t.hidden_size as u64 == d && t.intermediate_size as u64 == i)?;
    if m <= 0.0 {
        return Some(0.0);
    }
    Some(match t.points.first() {
        Some(&(m0, t0)) if m <= m0 => t0,
        _ => model::interp(&t.points, m),
    })
}

/// Backward over forward GEMM time, (dgrad, wgrad), the median over the
/// measured rows M >= 256 of the shapes with forward and backward tables.
fn factors(p: &Profile) -> Option<(f64, f64)> {
    let (mut dg, mut wg) = (Vec::new(), Vec::new());
    for t in p
        .bwd_tables
        .iter()
        .filter(|t| t.gemm == BwdGemm::GateUpDgrad)
    {
        let (d, i) = (t.hidden_size as u64, t.intermediate_size as u64);
        for &(m, _) in t.points.iter().filter(|pt| pt.0 >= 256.0) {
            let fwd = model::table_ms(&p.gemm_tables, model::Proj::GateUp, m, 2 * i, d)
                .zip(model::table_ms(&p.gemm_tables, model::Proj::Down, m, d, i))
                .map(|(a, b)| a + b)
                .filter(|&f| f > 0.0);
            let at = |g| bwd_table_ms(p, g, m, d, i);
            let (Some(fwd), Some(gd), Some(gw), Some(dd), Some(dw)) = (
                fwd,
                at(BwdGemm::GateUpDgrad),
                at(BwdGemm::GateUpWgrad),
                at(BwdGemm::DownDgrad),
                at(BwdGemm::DownWgrad),
            ) else {
                continue;
            };
            dg.push((gd + dd) / fwd);
            wg.push((gw + dw) / fwd);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (!dg.is_empty()).then(|| (med(dg), med(wg)))
}

/// Backward tables: every GEMM's points non-empty, M strictly increasing,
/// times finite and non-negative; factors positive.
pub(crate) fn check(p: &Profile) -> Result<(), String> {
    for (v, n) in [
        (p.bwd_dgrad_factor, "bwd_dgrad_factor"),
        (p.bwd_wgrad_factor, "bwd_wgrad_factor"),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{n} must be > 0 (got {v})"));
        }
    }
    for t in &p.bwd_tables {
        let ok = !t.points.is_empty()
            && t.points.windows(2).all(|w| w[1].0 > w[0].0)
            && t.points
                .iter()
                .all(|q| q.0 > 0.0 && q.1.is_finite() && q.1 >= 0.0);
        if !ok {
            return Err(format!(
                "bwd_tables {} D={} I={}: points must be non-empty, M > 0 strictly increasing, times >= 0",
                t.gemm.as_str(),
                t.hidden_size,
                t.intermediate_size
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::calibrate::{Calibration, MemRaw};
    use crate::sim::profile;

    fn calibration_with_model() -> Calibration {
        Calibration {
            card: "NVIDIA H200".into(),
            gpus: 1,
            launch_us: 2.0,
            mem: MemRaw {
                context: 600 << 20,
                cublas_workspace: 32 << 20,
                grain: 2 << 20,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn backward_grid_becomes_tables_and_factors_and_merges_without_staling_the_error() {
        let base = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/profiles/h200-curves-2026-11-28.json"
        ))
        .unwrap();
        // forward: gate_up 2 ms and down 1 ms per 1000 rows; backward:
        // dgrad 0.9x, wgrad 1.2x the forward of the same projection
        let line = |c: f64| vec![(1.0, c * 1e-3), (256.0, c * 0.256), (4096.0, c * 4.096)];
        let mut c = calibration_with_model();
        c.grid = vec![(2880, 2880, line(2.0), line(1.0))];
        c.bwd_grid = vec![BwdGridShape {
            hidden: 2880,
            inter: 2880,
            gate_up_dgrad: line(1.8),
            gate_up_wgrad: line(2.4),
            down_dgrad: line(0.9),
            down_wgrad: line(1.2),
        }];
        let mut p = base.clone();
        let set = profile::apply_measured(&mut p, &c, Some(&base));
        assert!(set.contains(&"bwd_tables"), "{set:?}");
        assert_eq!(p.bwd_tables.len(), 4);
        assert!(
            (p.bwd_dgrad_factor - 0.9).abs() < 1e-9,
            "{}",
            p.bwd_dgrad_factor
        );
        assert!(
            (p.bwd_wgrad_factor - 1.2).abs() < 1e-9,
            "{}",
            p.bwd_wgrad_factor
        );
        let at = |g, m| bwd_table_ms(&p, g, m, 2880, 2880).unwrap();
        assert!((at(BwdGemm::DownWgrad, 2048.0) - 2.4576).abs() < 1e-9);
        // below the first point: held there (latency bound)
        assert!((at(BwdGemm::GateUpDgrad, 0.5) - 1.8e-3).abs() < 1e-15);
        assert!(bwd_table_ms(&p, BwdGemm::GateUpDgrad, 8.0, 4096, 14336).is_none());
        p.validate().unwrap();
        // a merge of backward tables alone keeps the stamped (forward) error
        let mut new = base.clone();
        new.gemm_tables.clear();
        new.bwd_tables = p.bwd_tables.clone();
        let m = profile::merge_profiles(&base, &new, false, "2026-11-29");
        assert_eq!(m.measured_error, base.measured_error);
        // the base's raw records, carried by `new`, are not added twice
        assert_eq!(m.raw_merged, base.raw_merged);
        assert_eq!(m.bwd_tables, p.bwd_tables);
        assert!(
            m.note.ends_with("Merged on 2026-11-29: bwd_tables."),
            "{}",
            m.note
        );
        // bad tables are refused
        let mut bad = m.clone();
        bad.bwd_tables[0].points = vec![(4.0, 1.0), (2.0, 2.0)];
        assert!(bad.validate().is_err());
    }
}
