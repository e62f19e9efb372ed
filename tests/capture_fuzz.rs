//! Structured fuzzing of the binary readers (`.npy`, `.safetensors`, `.pt`
//! zip container and the restricted unpickler): valid files are mutated
//! (truncation, bit flips, overwritten runs, inserted bytes, random bytes)
//! with a fixed seed and a bounded count, and every reader must return
//! (Ok or a clean error), never panic, hang or allocate without bound.
//! Set LLEP_FUZZ_CASES to run more cases per target (default 2000).

use llep_trace::capture::pt::parse_pt;
use llep_trace::capture::tensor::{parse_npy, parse_safetensors};
use llep_trace::trace::tokens::SplitMix64;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn cases() -> usize {
    std::env::var("LLEP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn mutate(seed: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut v = seed.to_vec();
    let n = v.len().max(1) as u64;
    match rng.below(6) {
        0 => v.truncate(rng.below(n) as usize),
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(n) as usize;
                if i < v.len() {
                    v[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let i = rng.below(n) as usize;
            let len = 1 + rng.below(16) as usize;
            for j in i..(i + len).min(v.len()) {
                v[j] = rng.below(256) as u8;
            }
        }
        3 => {
            let i = rng.below(n) as usize;
            let extra: Vec<u8> = (0..1 + rng.below(32))
                .map(|_| rng.below(256) as u8)
                .collect();
            v.splice(i.min(v.len())..i.min(v.len()), extra);
        }
        4 => {
            // interesting integers at a random place (lengths, sizes)
            let i = rng.below(n) as usize;
            let vals: [u32; 5] = [0, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000];
            let b = vals[rng.below(5) as usize].to_le_bytes();
            for (j, x) in b.iter().enumerate() {
                if i + j < v.len() {
                    v[i + j] = *x;
                }
            }
        }
        _ => {
            v = (0..rng.below(256)).map(|_| rng.below(256) as u8).collect();
        }
    }
    v
}

fn npy_seed() -> Vec<u8> {
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
    let mut h = h.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend((0..12).flat_map(|i| (i as f32).to_le_bytes()));
    v
}

fn safetensors_seed() -> Vec<u8> {
    let header = r#"{"layer.0.logits":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"layer.0.ids":{"dtype":"I64","shape":[2,1],"data_offsets":[32,48]}}"#;
    let mut h = header.to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    v.extend(vec![0u8; 48]);
    v
}

fn small_pt() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/routing_small.pt"))
        .unwrap()
}

/// Rebuild a zip with `pkl` as data.pkl and the other entries unchanged
/// (so the mutation reaches the unpickler past the zip CRC checks).
fn with_pickle(pt: &[u8], pkl: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(pt)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.start_file(&name, opts).unwrap();
        if name.ends_with("data.pkl") {
            out.write_all(pkl).unwrap();
        } else {
            out.write_all(&b).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

fn pickle_of(pt: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(pt)).unwrap();
    let name = z
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .unwrap();
    let mut b = Vec::new();
    z.by_name(&name).unwrap().read_to_end(&mut b).unwrap();
    b
}

fn run(target: &str, seed: &[u8], f: impl Fn(&[u8]) -> bool) {
    let mut rng = SplitMix64::new(0x5eed ^ target.len() as u64);
    let t = Instant::now();
    let n = cases();
    let mut ok = 0;
    assert!(f(seed), "{target}: the unmutated seed must parse");
    for _ in 0..n {
        let m = mutate(seed, &mut rng);
        ok += usize::from(f(&m));
    }
    eprintln!(
        "fuzz {target}: {n} mutated inputs in {:.2} s, {ok} still parsed, the rest refused with errors, no panic",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn fuzz_npy() {
    let p = Path::new("fuzz.npy");
    run("npy", &npy_seed(), |b| {
        parse_npy(Arc::new(b.to_vec()), p)
            .map(|t| t.to_f32())
            .is_ok()
    });
}

#[test]
fn fuzz_safetensors() {
    let p = Path::new("fuzz.safetensors");
    run("safetensors", &safetensors_seed(), |b| {
        parse_safetensors(Arc::new(b.to_vec()), p)
            .map(|ts| ts.iter().map(|(_, t)| t.to_f32().len()).sum::<usize>())
            .is_ok()
    });
}

#[test]
fn fuzz_pt_container() {
    let p = Path::new("fuzz.pt");
    run("pt-zip", &small_pt(), |b| parse_pt(b, p).is_ok());
}

#[test]
fn fuzz_unpickler() {
    let pt = small_pt();
    let pkl = pickle_of(&pt);
    let p = Path::new("fuzz.pt");
    run("pickle", &pkl, |b| {
        parse_pt(&with_pickle(&pt, b), p).is_ok()
    });
}
