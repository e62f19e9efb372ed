//! `simulate --export-routing DIR`: the per-rank routing an outside harness
//! (scripts/train_reference.py) runs is exactly the synthetic generator's,
//! in .npy files a reader can parse from their headers; an existing folder
//! is refused in one line.

use llep_trace::trace::synthetic::Scenario;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// (shape, little-endian payload) of a 2-D .npy file of 4-byte values.
fn read_npy(p: &Path, descr: &str) -> ((usize, usize), Vec<[u8; 4]>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", p.display());
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(h.contains(&format!("'descr': '{descr}'")), "{h}");
    let shape = h
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let mut it = shape.split(',').map(|s| s.trim().parse::<usize>().unwrap());
    let (r, c) = (it.next().unwrap(), it.next().unwrap());
    let data: Vec<[u8; 4]> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| c.try_into().unwrap())
        .collect();
    assert_eq!(data.len(), r * c);
    ((r, c), data)
}

#[test]
fn exported_routing_is_the_generators_on_every_rank() {
    let dir = tmp("syn");
    let o = Command::new(BIN)
        .args([
            "-q",
            "simulate",
            "--synthetic",
            "balanced,95:4",
            "--gpus",
            "2",
        ])
        .args([
            "--experts",
            "16",
            "--top-k",
            "2",
            "--tokens-per-rank",
            "100",
        ])
        .arg("--export-routing")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "simulates nothing");
    let man: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("routing.json")).unwrap()).unwrap();
    assert_eq!(
        (man["gpus"].as_u64(), man["top_k"].as_u64()),
        (Some(2), Some(2))
    );
    let entries = man["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        let sc: Scenario = e["scenario"].as_str().unwrap().parse().unwrap();
        let ranks = e["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), 2);
        for r in ranks {
            let ((t, k), ids) = read_npy(&dir.join(r["ids"].as_str().unwrap()), "<i4");
            let (shape, w) = read_npy(&dir.join(r["weights"].as_str().unwrap()), "<f4");
            assert_eq!(((t, k), shape), ((100, 2), (100, 2)));
            for (j, (id, w)) in ids.iter().zip(&w).enumerate() {
                let (tok, slot) = ((j / k) as u64, (j % k) as u64);
                assert_eq!(
                    i32::from_le_bytes(*id) as u64,
                    sc.expert(tok, slot, 100, 16),
                    "{sc} token {tok} slot {slot}"
                );
                assert_eq!(f32::from_le_bytes(*w), 0.5);
            }
        }
    }
    // an existing folder is refused, nothing written into it
    let o = Command::new(BIN)
        .args(["-q", "simulate", "--synthetic", "balanced", "--gpus", "2"])
        .arg("--export-routing")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("already exists"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
