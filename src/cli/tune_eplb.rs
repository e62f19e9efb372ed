//! `tune`'s EPLB section: EP, LLEP at its best lambda, `llep-auto`, EPLB at
//! a few redundancies R and EPLB+LLEP, simulated on the same input at the
//! recommended alpha and m, and a plain-words recommendation of which to
//! run and why.

use super::simulate::{EplbArgs, Simulated};
use super::table::{gib, Table};
use super::Printer;
use anyhow::Context;
use llep_trace::plan::{Gate, Policy};
use llep_trace::progress::Progress;
use llep_trace::results::ResultRow;
use llep_trace::sim::{self, EplbSim, SimConfig};
use serde_json::json;

/// One compared policy: its totals over the input.
#[derive(Debug, Clone)]
pub struct Entry {
    pub label: String,
    pub policy: Policy,
    pub redundant: Option<usize>,
    pub total_ms: f64,
    pub peak_mem_max_bytes: u64,
    /// Weight transfers: LLEP's per layer, plus EPLB's rebalance moves.
    pub transfers: u64,
    pub feasible: bool,
}

/// The comparison and its recommendation.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub entries: Vec<Entry>,
    /// The recommended entry: the simplest within the model's error of the
    /// fastest (see [`recommend`]).
    pub best: usize,
    /// The fastest entry that fits.
    pub fastest: usize,
    pub ep: usize,
    pub setting: EplbSim,
    /// The cost model's error margin (fraction) the recommendation allows.
    pub margin: f64,
    pub gpus: usize,
    pub expert_bytes: u64,
    /// MoE layers of the whole model (0 when unknown).
    pub layers: u64,
}

/// How much machinery a policy needs: plain EP, then LLEP with a fixed
/// lambda, the cost-aware gate, EPLB's replicas, both.
fn simplicity(p: Policy) -> u8 {
    match p {
        Policy::Ep => 0,
        Policy::Llep => 1,
        Policy::LlepAuto => 2,
        Policy::Eplb => 3,
        _ => 4,
    }
}

/// The fastest entry that fits, and the recommendation: the simplest entry
/// that fits within `margin` of it (a gain below the model's error is not
/// worth more machinery), the fastest of that kind.
pub fn recommend(entries: &[Entry], margin: f64) -> (usize, usize) {
    let fits: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].feasible)
        .collect();
    let pool = if fits.is_empty() {
        (0..entries.len()).collect()
    } else {
        fits
    };
    let by_time = |i: &usize, j: &usize| entries[*i].total_ms.total_cmp(&entries[*j].total_ms);
    let fastest = *pool.iter().min_by(|i, j| by_time(i, j)).expect("entries");
    let limit = entries[fastest].total_ms * (1.0 + margin);
    let best = *pool
        .iter()
        .filter(|&&i| entries[i].total_ms <= limit)
        .min_by(|i, j| {
            simplicity(entries[**i].policy)
                .cmp(&simplicity(entries[**j].policy))
                .then(by_time(i, j))
        })
        .expect("the fastest qualifies");
    (best, fastest)
}

/// The default redundancies: E/8 and E/4, each rounded up to the next value
/// that makes experts + R a multiple of the GPUs (at least one replica).
pub fn default_redundant(experts: usize, gpus: usize) -> Vec<usize> {
    let allowed = |r: usize| (experts + r.max(1)).div_ceil(gpus) * gpus - experts;
    let mut v = vec![allowed(experts / 8), allowed(experts / 4)];
    v.dedup();
    v
}

/// Totals of one (policy, gate): total ms, peak bytes, weight transfers.
type Total = (Policy, Gate, f64, u64, u64);

/// Per (alpha, m, policy, gate), the totals of the rows so far, in
/// first-seen order: what the comparison needs of a sweep, kept as running
/// sums (rows are never held).
#[derive(Debug, Default)]
pub struct PolicyTotals {
    keys: Vec<(u64, u64)>,
    vals: Vec<Total>,
    last: usize,
}

impl PolicyTotals {
    pub fn add(&mut self, r: &ResultRow) {
        let k = (r.alpha.to_bits(), r.min_gemm);
        let hit =
            |i: usize| self.keys[i] == k && self.vals[i].0 == r.policy && self.vals[i].1 == r.gate;
        let n = self.vals.len();
        let guess = if n == 0 { 0 } else { (self.last + 1) % n };
        let i = if n > 0 && hit(guess) {
            guess
        } else {
            match (0..n).find(|&i| hit(i)) {
                Some(i) => i,
                None => {
                    self.keys.push(k);
                    self.vals.push((r.policy, r.gate, 0.0, 0, 0));
                    n
                }
            }
        };
        self.last = i;
        let e = &mut self.vals[i];
        e.2 += r.t_total_ms;
        e.3 = e.3.max(r.peak_mem_max_bytes);
        e.4 += r.transfers as u64;
    }

    /// The totals at `alpha`, `m`, in first-seen order.
    pub fn at(&self, alpha: f64, m: u64) -> Vec<Total> {
        let k = (alpha.to_bits(), m);
        (0..self.vals.len())
            .filter(|&i| self.keys[i] == k)
            .map(|i| self.vals[i])
            .collect()
    }
}

/// Of the totals of `policy`, the fastest gate that fits (the first on ties).
fn best_of(
    t: &[(Policy, Gate, f64, u64, u64)],
    policy: Policy,
    cap: Option<u64>,
) -> Option<(Gate, f64, u64, u64)> {
    t.iter()
        .filter(|x| x.0 == policy && cap.is_none_or(|c| x.3 <= c))
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .or_else(|| t.iter().find(|x| x.0 == policy))
        .map(|x| (x.1, x.2, x.3, x.4))
}

/// Simulate the EPLB policies at each R (and `llep-auto`) at `alpha`, `m`,
/// and compare them with the sweep's EP and best LLEP.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    a: &EplbArgs,
    sim: &Simulated,
    base: &[Total],
    gates: &[Gate],
    alpha: f64,
    m: u64,
    mem_cap: Option<u64>,
    threads: usize,
    chosen: Option<Gate>,
    p: &Printer,
) -> anyhow::Result<Comparison> {
    let w0 = sim.inputs.first().context("no workload simulated")?;
    let (experts, gpus) = (w0.model.num_experts as usize, w0.gpus);
    let rs = if a.redundant.is_empty() {
        default_redundant(experts, gpus)
    } else {
        a.redundant.clone()
    };
    for &r in &rs {
        a.at(r).check(experts, gpus)?;
    }
    super::simulate::warn_short_input(&a.at(rs[0]), w0.steps(), p);
    let fits = |peak: u64| mem_cap.is_none_or(|c| peak <= c);
    let mut entries = Vec::new();
    let mut push = |label: String, policy, redundant, x: (Gate, f64, u64, u64)| {
        entries.push(Entry {
            label,
            policy,
            redundant,
            total_ms: x.1,
            peak_mem_max_bytes: x.2,
            transfers: x.3,
            feasible: fits(x.2),
        })
    };
    let ep = best_of(base, Policy::Ep, None).context("tune simulated no EP rows")?;
    push("ep".into(), Policy::Ep, None, ep);
    // LLEP at the lambda tune recommends (one recommendation rule for
    // every table), else at its fastest
    let chosen = chosen.and_then(|g| {
        base.iter()
            .find(|x| x.0 == Policy::Llep && x.1 == g)
            .map(|x| (x.1, x.2, x.3, x.4))
    });
    if let Some(x) = chosen.or_else(|| best_of(base, Policy::Llep, mem_cap)) {
        push(format!("llep λ={} (tuned)", x.0), Policy::Llep, None, x);
    }
    let total_steps: usize = sim.inputs.iter().map(|w| w.layer_steps()).sum();
    p.start("tune eplb", (total_steps * rs.len()) as u64);
    for (i, &r) in rs.iter().enumerate() {
        let mut policies = vec![Policy::Eplb, Policy::EplbLlep];
        if i == 0 {
            policies.push(Policy::LlepAuto);
        }
        let cfg = SimConfig {
            policies,
            gates: gates.to_vec(),
            alphas: vec![alpha],
            min_gemms: vec![m],
            profile: sim.profile.clone(),
            threads,
            pass: llep_trace::results::Pass::Forward,
            recompute: false,
        };
        let e = a.at(r);
        let mut totals = PolicyTotals::default();
        for w in &sim.inputs {
            sim::simulate_stream(w, &cfg, Some(&e), p, &mut |rows| {
                rows.iter().for_each(|r| totals.add(r));
                Ok(())
            })
            .with_context(|| w.label())?;
        }
        let t = totals.at(alpha, m);
        if let Some(x) = best_of(&t, Policy::LlepAuto, None) {
            push("llep-auto".into(), Policy::LlepAuto, None, x);
        }
        if let Some(x) = best_of(&t, Policy::Eplb, None) {
            push(format!("eplb R={r}"), Policy::Eplb, Some(r), x);
        }
        if let Some(x) = best_of(&t, Policy::EplbLlep, mem_cap) {
            push(
                format!("eplb+llep R={r} λ={}", x.0),
                Policy::EplbLlep,
                Some(r),
                x,
            );
        }
    }
    p.finish();
    let margin = sim::auto_margin(&sim.profile);
    let (best, fastest) = recommend(&entries, margin);
    Ok(Comparison {
        entries,
        best,
        fastest,
        ep: 0,
        setting: a.at(rs[0]),
        margin,
        gpus,
        expert_bytes: w0.model.expert_bytes(),
        layers: w0.model.num_layers as u64,
    })
}

/// The fastest entry of `policy`, if any.
fn fastest(c: &Comparison, policy: Policy) -> Option<&Entry> {
    c.entries
        .iter()
        .filter(|e| e.policy == policy)
        .min_by(|a, b| a.total_ms.total_cmp(&b.total_ms))
}

/// The table and the recommendation in words.
pub fn render(c: &Comparison, alpha: f64, m: u64) -> String {
    let ep = &c.entries[c.ep];
    let e = &c.setting;
    let place = if e.oracle {
        "oracle placement (same-step loads: an upper bound)".to_string()
    } else {
        format!("EPLB window {}, period {}", e.window, e.period)
    };
    let mut s = format!(
        "\nEP, LLEP and EPLB compared (alpha {alpha}, m {m}; {place}; replica split {})\n",
        e.split
    );
    let mut t = Table::new(&[
        "policy",
        "total ms",
        "vs EP",
        "peak GiB",
        "weight moves",
        "fits",
    ])
    .left(0);
    for (i, e) in c.entries.iter().enumerate() {
        let mark = if i == c.best { " <- run this" } else { "" };
        t.row(vec![
            format!("{}{mark}", e.label),
            format!("{:.2}", e.total_ms),
            format!("{:.3}x", ep.total_ms / e.total_ms),
            gib(e.peak_mem_max_bytes),
            e.transfers.to_string(),
            if e.feasible { "yes" } else { "no" }.into(),
        ]);
    }
    s.push_str(&t.render());
    s.push_str("weight moves: LLEP's per-layer weight transfers plus EPLB's rebalance moves, summed over all layer-steps; peak GiB: one layer's peak per GPU, EPLB's replica weights included\n");
    s.push_str(&why(c));
    s
}

/// Why the recommended entry: its gain, what the alternatives give, and
/// what EPLB's replicas cost.
fn why(c: &Comparison) -> String {
    let b = &c.entries[c.best];
    let ep = &c.entries[c.ep];
    let x = |e: &Entry| ep.total_ms / e.total_ms;
    let mut parts = Vec::new();
    for (pol, name) in [
        (Policy::Ep, "plain EP"),
        (Policy::Llep, "LLEP alone at its best lambda"),
        (Policy::LlepAuto, "llep-auto"),
        (Policy::Eplb, "EPLB alone"),
        (Policy::EplbLlep, "EPLB+LLEP"),
    ] {
        if pol == b.policy {
            continue;
        }
        if let Some(e) = fastest(c, pol) {
            parts.push(format!("{name} {:.3}x ({})", x(e), e.label));
        }
    }
    let mut s = format!(
        "Recommendation: run {}, {:.3}x plain EP's speed on this input; the others: {}.\n",
        b.label,
        x(b),
        parts.join(", ")
    );
    if c.fastest != c.best {
        let f = &c.entries[c.fastest];
        s.push_str(&format!(
            "Why: {} is only {:.1}% faster, within the cost model's {:.1}% error, so the setting that needs less machinery is recommended.\n",
            f.label,
            (b.total_ms / f.total_ms - 1.0) * 100.0,
            c.margin * 100.0
        ));
    } else if b.policy != Policy::Ep {
        s.push_str(&format!(
            "Why: it is the fastest, and every simpler setting is more than the cost model's {:.1}% error slower.\n",
            c.margin * 100.0
        ));
    }
    if let Some(r) = b.redundant {
        let per_gpu = r as u64 / c.gpus.max(1) as u64;
        let bytes = per_gpu * c.expert_bytes;
        let whole = if c.layers > 0 {
            format!(
                ", {} GiB over {} MoE layers",
                gib(bytes * c.layers),
                c.layers
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            "EPLB's replicas: {r} per layer, {} per GPU: +{} GiB of weights per GPU per layer{whole}; {} weight moves over the input.\n",
            super::table::count(per_gpu, "more expert"),
            gib(bytes),
            b.transfers
        ));
    }
    if c.setting.oracle {
        s.push_str("Caution: with --eplb-oracle the EPLB rows place from the same step's loads, an upper bound no engine reaches; rerun without it before deciding.\n");
    }
    if !b.feasible {
        s.push_str("Nothing fits the memory cap; shown is the fastest.\n");
    }
    s
}

/// The comparison as JSON.
pub fn to_json(c: &Comparison) -> serde_json::Value {
    let ep = c.entries[c.ep].total_ms;
    json!({
        "setting": c.setting.label(),
        "recommended": c.entries[c.best].label,
        "fastest": c.entries[c.fastest].label,
        "margin": c.margin,
        "entries": c.entries.iter().map(|e| json!({
            "label": e.label, "policy": e.policy, "redundant": e.redundant, "total_ms": e.total_ms,
            "speedup_vs_ep": ep / e.total_ms, "peak_mem_max_bytes": e.peak_mem_max_bytes,
            "transfers": e.transfers, "feasible": e.feasible,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(policy: Policy, total_ms: f64, feasible: bool) -> Entry {
        Entry {
            label: policy.to_string(),
            policy,
            redundant: None,
            total_ms,
            peak_mem_max_bytes: 0,
            transfers: 0,
            feasible,
        }
    }

    #[test]
    fn recommendation_prefers_the_simpler_setting_within_the_margin() {
        let e = [
            entry(Policy::Ep, 100.0, true),
            entry(Policy::Llep, 80.0, true),
            entry(Policy::Eplb, 90.0, true),
            entry(Policy::EplbLlep, 79.0, true),
        ];
        // 79 vs 80: 1.3% apart, within 5%: LLEP alone
        assert_eq!(recommend(&e, 0.05), (1, 3));
        // no margin: the fastest
        assert_eq!(recommend(&e, 0.0), (3, 3));
        // the fastest does not fit the cap: the next
        let mut e2 = e.clone();
        e2[3].feasible = false;
        assert_eq!(recommend(&e2, 0.0), (1, 1));
    }

    #[test]
    fn default_redundancy_is_allowed_by_the_gpus() {
        assert_eq!(default_redundant(64, 8), vec![8, 16]);
        assert_eq!(default_redundant(8, 8), vec![8]);
        for (e, g) in [(64, 8), (8, 8), (60, 8), (128, 16), (8, 2)] {
            for r in default_redundant(e, g) {
                assert_eq!((e + r) % g, 0, "{e} experts, {g} gpus, R={r}");
                assert!(r >= 1);
            }
        }
    }
}
