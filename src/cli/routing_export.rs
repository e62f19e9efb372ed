//! `simulate --export-routing DIR` (hidden): write the per-rank token
//! routing a replay of the same inputs runs (expert ids and router weights
//! per token, from `Workload::rank_routing`), as NumPy `.npy` files and a
//! `routing.json` manifest, so an outside harness (the reference's training
//! step, `scripts/train_reference.py`) runs exactly our inputs without
//! re-implementing the generator. Simulates nothing.

use super::settings::default_trace;
use super::simulate::SimInputArgs;
use super::Printer;
use anyhow::{bail, Context};
use llep_trace::trace::meta::tool_version;
use llep_trace::workload::RankRouting;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;

/// A `.npy` file (format 1.0, little-endian, C order) of `rows x cols`
/// values of NumPy type `descr` (`<i4`, `<f4`) whose bytes are `data`.
pub fn npy(descr: &str, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + header length (2) + header, a multiple of 64
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// One rank's routing as two `.npy` files' bytes: ids (`<i4`) and weights
/// (`<f4`), each `tokens x top_k`.
pub fn rank_files(rr: &RankRouting, top_k: usize) -> (Vec<u8>, Vec<u8>) {
    let rows = rr.ids.len() / top_k.max(1);
    let ids: Vec<u8> = rr.ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    let w: Vec<u8> = rr.weights.iter().flat_map(|v| v.to_le_bytes()).collect();
    (npy("<i4", rows, top_k, &ids), npy("<f4", rows, top_k, &w))
}

/// Write every selected (workload, step, layer)'s per-rank routing under
/// `dir` (which must not exist; written beside it, then renamed).
pub fn run(a: &SimInputArgs, dir: &Path, p: &Printer) -> anyhow::Result<ExitCode> {
    if dir.exists() {
        bail!("--export-routing {}: already exists", dir.display());
    }
    let topo = a.topology()?;
    let spec = a.input.spec(topo.gpus(), Some(default_trace()), false)?;
    let workloads = spec.resolve_with(p)?;
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)
        .with_context(|| format!("--export-routing: cannot create {}", tmp.display()))?;
    let mut entries = Vec::new();
    for w in &workloads {
        let k = w.model.top_k as usize;
        let tag = match w.scenario {
            Some(s) => s.to_string().replace(':', "-"),
            None => "trace".into(),
        };
        for s in 0..w.loads.steps() {
            for l in 0..w.loads.layers() {
                let (step, layer) = (w.loads.step_ids[s], w.loads.layer_ids[l]);
                let mut ranks = Vec::new();
                for (r, rr) in w.rank_routing(s, l).iter().enumerate() {
                    let stem = format!("{tag}_s{step}_l{layer}_r{r}");
                    let (ids, wts) = rank_files(rr, k);
                    for (suffix, bytes) in [("ids", &ids), ("weights", &wts)] {
                        let f = tmp.join(format!("{stem}_{suffix}.npy"));
                        std::fs::write(&f, bytes)
                            .with_context(|| format!("--export-routing: {}", f.display()))?;
                    }
                    ranks.push(json!({
                        "tokens": rr.ids.len() / k.max(1),
                        "ids": format!("{stem}_ids.npy"),
                        "weights": format!("{stem}_weights.npy"),
                    }));
                }
                entries.push(json!({
                    "workload": w.label(), "scenario": w.scenario_label(),
                    "step": step, "layer": layer, "ranks": ranks,
                }));
            }
        }
    }
    let m = workloads.first().map(|w| &w.model);
    let manifest = json!({
        "tool": tool_version(),
        "gpus": topo.gpus(),
        "experts": m.map(|m| m.num_experts),
        "top_k": m.map(|m| m.top_k),
        "hidden_size": m.map(|m| m.hidden_size),
        "intermediate_size": m.map(|m| m.intermediate_size),
        "entries": entries,
    });
    std::fs::write(
        tmp.join("routing.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("--export-routing: cannot rename to {}", dir.display()))?;
    p.status(&format!(
        "wrote the routing of {} layer-steps to {}",
        entries.len(),
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_data() {
        let rr = RankRouting {
            ids: vec![1, 2, 3, 4, 5, 6],
            weights: vec![0.5; 6],
        };
        let (ids, w) = rank_files(&rr, 2);
        for f in [&ids, &w] {
            assert_eq!(&f[..8], b"\x93NUMPY\x01\x00");
            let hl = u16::from_le_bytes([f[8], f[9]]) as usize;
            assert_eq!((10 + hl) % 64, 0);
            let h = std::str::from_utf8(&f[10..10 + hl]).unwrap();
            assert!(h.contains("'shape': (3, 2)") && h.ends_with('\n'), "{h}");
            assert_eq!(f.len() - 10 - hl, 6 * 4);
        }
        let hl = u16::from_le_bytes([ids[8], ids[9]]) as usize;
        assert_eq!(&ids[10 + hl..10 + hl + 4], &1i32.to_le_bytes());
        assert_eq!(&w[10 + hl..10 + hl + 4], &0.5f32.to_le_bytes());
    }
}
