//! Replay inputs: per-rank token routing for each (step, layer), from the
//! reference's synthetic scenarios or from a trace, keyed exactly as
//! `simulate` keys its rows (so measured and simulated rows join).
//!
//! Token-level traces replay their recorded tokens (re-chunked or
//! resampled as `sim::prepare_loads` does). Load-level traces only know how
//! many copies each rank sent to each expert; their tokens are synthesised
//! from those counts (sorted copies dealt round-robin over the rank's
//! tokens, so a token never repeats an expert unless an expert has more
//! copies than the rank has tokens), router weights 1/k.

use super::replay::{Case, RankRouting};
use crate::results::ResultRow;
use crate::sim::prepare_loads;
use crate::trace::synthetic::Scenario;
use crate::trace::{Loads, TokenTrace, Trace};

/// Row keys shared by every case of one input.
fn base(trace: &str, scenario: &str, note: &str, d: u32, i: u32, n: u32, k: u32) -> ResultRow {
    ResultRow {
        trace: trace.into(),
        scenario: scenario.into(),
        input_note: note.into(),
        hidden_size: d,
        intermediate_size: i,
        experts: n,
        top_k: k,
        ..Default::default()
    }
}

/// The trace `simulate` would see for a synthetic scenario (token level,
/// `gpus` ranks of `tokens` tokens, one step and layer).
pub fn synthetic_trace(
    sc: Scenario,
    gpus: u32,
    tokens: u32,
    experts: u32,
    top_k: u32,
    hidden: u32,
    inter: u32,
) -> Trace {
    use crate::trace::{CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
    let model = ModelMeta {
        name: format!("synthetic {sc}"),
        num_experts: experts,
        top_k,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: 1,
        dtype: "bf16".into(),
        routing: RoutingFn::default(),
    };
    let capture = CaptureMeta {
        source_format: "synthetic".into(),
        ranks: gpus,
        tokens_per_rank: Some(tokens as u64),
        token_level: true,
        ..Default::default()
    };
    Trace::from_tokens(
        TraceMeta::new(model, capture),
        sc.tokens(gpus, tokens, experts, top_k),
    )
}

/// One case of a synthetic scenario (identical routing on every rank).
pub fn synthetic_case(
    sc: Scenario,
    gpus: usize,
    tokens: u64,
    experts: u32,
    top_k: u32,
    hidden: u32,
    inter: u32,
) -> Result<Case, String> {
    sc.validate(experts, top_k)?;
    let k = top_k as u64;
    let mut ids = Vec::with_capacity((tokens * k) as usize);
    for t in 0..tokens {
        for j in 0..k {
            ids.push(sc.expert(t, j, tokens, experts as u64) as i32);
        }
    }
    let weights = vec![1.0 / top_k as f32; ids.len()];
    let rr = RankRouting { ids, weights };
    let mut b = base(
        "synthetic",
        &sc.to_string(),
        "synthetic",
        hidden,
        inter,
        experts,
        top_k,
    );
    b.tokens_per_rank = tokens;
    Ok(Case {
        base: b,
        routing: vec![rr; gpus],
    })
}

/// Tokens of one rank made from its per-expert counts.
pub fn expand_counts(counts: &[u64], top_k: usize) -> RankRouting {
    let copies: u64 = counts.iter().sum();
    let t = (copies as usize).div_ceil(top_k.max(1));
    let mut sorted = Vec::with_capacity(copies as usize);
    for (e, &c) in counts.iter().enumerate() {
        sorted.extend(std::iter::repeat_n(e as i32, c as usize));
    }
    // copy j goes to token j mod t, slot j div t
    let mut ids = vec![-1i32; t * top_k];
    for (j, &e) in sorted.iter().enumerate() {
        ids[(j % t) * top_k + j / t] = e;
    }
    // a ragged last slot (copies not a multiple of k) repeats the token's
    // first expert with weight 0, so counts stay exact
    let mut weights = vec![1.0 / top_k as f32; t * top_k];
    for tok in 0..t {
        for s in 0..top_k {
            if ids[tok * top_k + s] < 0 {
                ids[tok * top_k + s] = ids[tok * top_k];
                weights[tok * top_k + s] = 0.0;
            }
        }
    }
    RankRouting { ids, weights }
}

/// Per-rank token routing of one (step, layer) of a token-level trace at
/// `gpus` ranks (recorded ranks when they match, else contiguous chunks in
/// (rank, token) order, as `TokenTrace::loads_at`).
fn token_ranks(tok: &TokenTrace, step: u32, layer: u32, gpus: usize) -> Vec<RankRouting> {
    let k = tok.top_k;
    let mut rows: Vec<usize> = (0..tok.len())
        .filter(|&i| tok.step[i] == step && tok.layer[i] == layer)
        .collect();
    rows.sort_by_key(|&i| (tok.rank[i], tok.token[i]));
    let mut out = vec![RankRouting::default(); gpus];
    let push = |rr: &mut RankRouting, i: usize| {
        rr.ids
            .extend(tok.experts[i * k..(i + 1) * k].iter().map(|&e| e as i32));
        rr.weights
            .extend_from_slice(&tok.weights[i * k..(i + 1) * k]);
    };
    if tok.ranks() == gpus {
        for &i in &rows {
            push(&mut out[tok.rank[i] as usize], i);
        }
    } else {
        let t = rows.len();
        let (q, r) = (t / gpus, t % gpus);
        let mut pos = 0;
        for (g, rr) in out.iter_mut().enumerate() {
            let len = q + usize::from(g < r);
            for &i in &rows[pos..pos + len] {
                push(rr, i);
            }
            pos += len;
        }
    }
    out
}

/// Cases of a trace: the chosen steps and layers (ids; all when `None`).
#[allow(clippy::too_many_arguments)]
pub fn trace_cases(
    trace: &Trace,
    name: &str,
    gpus: usize,
    tokens_per_rank: Option<u64>,
    seed: u64,
    steps: Option<&[u32]>,
    layers: Option<&[u32]>,
) -> Result<Vec<Case>, String> {
    let m = &trace.meta.model;
    let k = m.top_k as usize;
    let (loads, note) = prepare_loads(trace, gpus, tokens_per_rank, seed);
    let resampled = match (&trace.tokens, tokens_per_rank) {
        (Some(tok), Some(tpr)) => Some(tok.resampled(tpr as usize * gpus, seed)),
        _ => None,
    };
    let tokens = resampled.as_ref().or(trace.tokens.as_ref());
    let note = match tokens {
        Some(_) => note,
        None => format!("{note}; tokens synthesised from counts"),
    };
    let pick = |ids: &[u32], want: Option<&[u32]>, what: &str| -> Result<Vec<usize>, String> {
        match want {
            None => Ok((0..ids.len()).collect()),
            Some(w) => w
                .iter()
                .map(|x| {
                    ids.iter().position(|y| y == x).ok_or_else(|| {
                        format!("{name}: {what} {x} is not in the trace (it has {ids:?})")
                    })
                })
                .collect(),
        }
    };
    let ss = pick(&loads.step_ids, steps, "step")?;
    let ls = pick(&loads.layer_ids, layers, "layer")?;
    let mut out = Vec::new();
    for &s in &ss {
        for &l in &ls {
            out.push(layer_case(
                trace, name, &loads, tokens, s, l, gpus, k, &note,
            ));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn layer_case(
    trace: &Trace,
    name: &str,
    loads: &Loads,
    tokens: Option<&TokenTrace>,
    s: usize,
    l: usize,
    gpus: usize,
    k: usize,
    note: &str,
) -> Case {
    let m = &trace.meta.model;
    let n = loads.experts;
    let routing = match tokens {
        Some(tok) => token_ranks(tok, loads.step_ids[s], loads.layer_ids[l], gpus),
        None => {
            let block = loads.block(s, l);
            (0..gpus)
                .map(|r| expand_counts(&block[r * n..(r + 1) * n], k))
                .collect()
        }
    };
    let mut b = base(
        name,
        "",
        note,
        m.hidden_size,
        m.intermediate_size,
        m.num_experts,
        m.top_k,
    );
    b.step = loads.step_ids[s];
    b.layer = loads.layer_ids[l];
    // as `simulate` computes it: global copies / (gpus * k)
    b.tokens_per_rank = loads.total(s, l) / (gpus as u64 * k.max(1) as u64);
    Case { base: b, routing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::read_trace;

    fn counts_of(rr: &RankRouting, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for (&e, &w) in rr.ids.iter().zip(&rr.weights) {
            if w > 0.0 {
                c[e as usize] += 1;
            }
        }
        c
    }

    #[test]
    fn expanded_counts_are_exact_and_tokens_distinct() {
        let counts = vec![5, 0, 3, 7, 1];
        let rr = expand_counts(&counts, 2);
        assert_eq!(counts_of(&rr, 5), counts);
        assert_eq!(rr.ids.len(), 16);
        for t in rr.ids.chunks(2) {
            assert_ne!(t[0], t[1]);
        }
        let rr = expand_counts(&[2, 2, 1], 2); // 5 copies: one ragged slot
        assert_eq!(counts_of(&rr, 3), vec![2, 2, 1]);
    }

    #[test]
    fn trace_cases_match_simulate_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/olmoe-1b-7b.parquet");
        let tr = read_trace(&path, true).unwrap();
        let n = tr.meta.model.num_experts as usize;
        for tpr in [None, Some(4096)] {
            let cases = trace_cases(&tr, "olmoe", 2, tpr, 0, None, None).unwrap();
            let (loads, _) = prepare_loads(&tr, 2, tpr, 0);
            assert_eq!(cases.len(), loads.layer_steps());
            for (i, c) in cases.iter().enumerate() {
                let (s, l) = (i / loads.layers(), i % loads.layers());
                let block = loads.block(s, l);
                for r in 0..2 {
                    assert_eq!(counts_of(&c.routing[r], n), &block[r * n..(r + 1) * n]);
                }
            }
        }
        assert!(trace_cases(&tr, "olmoe", 2, None, 0, Some(&[12345]), None).is_err());
    }

    #[test]
    fn synthetic_case_matches_the_scenario_counts() {
        let sc: Scenario = "95:1".parse().unwrap();
        let c = synthetic_case(sc, 2, 1000, 16, 4, 64, 64).unwrap();
        let want = sc.rank_counts(1000, 16, 4);
        for r in 0..2 {
            assert_eq!(counts_of(&c.routing[r], 16), want);
        }
        let tr = synthetic_trace(sc, 2, 1000, 16, 4, 64, 64);
        let (loads, _) = prepare_loads(&tr, 2, None, 0);
        assert_eq!(loads.block(0, 0)[..16], want[..]);
    }
}
