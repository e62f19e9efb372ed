//! Capture throughput: synthetic f32 router logits (128 experts, top-4,
//! many `.safetensors` files, 8 layers each) -> token-level trace, through
//! the real `capture::logits::capture` path (read, route, Parquet write).
//!
//! `cargo bench --bench capture -- [FILES] [TOKENS_PER_LAYER] [RUNS]`
//! (defaults 16 files x 8 layers x 4096 tokens = 0.27 GB of logits, 5 runs).
//! Prints GB of logits per second for every run, their median and the
//! best, with the machine's load average before and after; files are
//! generated once under $TMPDIR/llep-capture-bench (kept between runs,
//! fixed seed).

use llep_trace::capture::{logits, CaptureOptions};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::RoutingFn;
use std::path::{Path, PathBuf};
use std::time::Instant;

const EXPERTS: usize = 128;
const LAYERS: usize = 8;

fn write_file(path: &Path, tokens: usize, rng: &mut SplitMix64) {
    // safetensors by hand: 8-byte header length, JSON header, raw data.
    let per = tokens * EXPERTS * 4;
    let mut header = String::from("{");
    for l in 0..LAYERS {
        if l > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"layer.{l}.logits\":{{\"dtype\":\"F32\",\"shape\":[{tokens},{EXPERTS}],\"data_offsets\":[{},{}]}}",
            l * per,
            (l + 1) * per
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut buf = Vec::with_capacity(8 + header.len() + LAYERS * per);
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(header.as_bytes());
    for _ in 0..LAYERS * tokens {
        // skewed logits: a per-row random bias on a few hot experts
        for e in 0..EXPERTS {
            let x = (rng.unit_f64() as f32) * 4.0 - 2.0 + if e % 17 == 0 { 1.0 } else { 0.0 };
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, buf).unwrap();
}

/// The 1-minute load average, to say how busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let files: usize = args.first().and_then(|x| x.parse().ok()).unwrap_or(16);
    let tokens: usize = args.get(1).and_then(|x| x.parse().ok()).unwrap_or(4096);
    let runs: usize = args.get(2).and_then(|x| x.parse().ok()).unwrap_or(5).max(1);
    let dir = std::env::temp_dir().join(format!("llep-capture-bench-{files}x{tokens}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = SplitMix64::new(1);
    let mut paths: Vec<PathBuf> = Vec::new();
    for i in 0..files {
        let p = dir.join(format!("step_{i:06}.safetensors"));
        if !p.exists() {
            write_file(&p, tokens, &mut rng);
        }
        paths.push(p);
    }
    // routing alone, one thread, rows already in memory
    {
        use llep_trace::capture::routing::Router;
        let mut r = SplitMix64::new(2);
        let rows: Vec<f32> = (0..65536 * EXPERTS).map(|_| r.unit_f64() as f32).collect();
        for (label, routing) in [
            ("renorm", RoutingFn::SoftmaxTopk { renormalize: true }),
            ("no-renorm", RoutingFn::SoftmaxTopk { renormalize: false }),
        ] {
            let mut router = Router::new(routing, 4);
            let (mut ids, mut w) = ([0u16; 4], [0f32; 4]);
            let t = Instant::now();
            let mut sink = 0u64;
            for row in rows.chunks_exact(EXPERTS) {
                router.route(row, &mut ids, &mut w);
                sink += ids[0] as u64;
            }
            let ns = t.elapsed().as_nanos() as f64 / 65536.0;
            println!(
                "route only ({label}): {ns:.0} ns/token = {:.2} GB/s per core (checksum {sink})",
                (EXPERTS * 4) as f64 / ns
            );
        }
    }
    let out = std::env::temp_dir().join("llep-capture-bench-out/trace.parquet");
    for (label, routing) in [
        (
            "softmax-topk-renorm",
            RoutingFn::SoftmaxTopk { renormalize: true },
        ),
        (
            "softmax-topk",
            RoutingFn::SoftmaxTopk { renormalize: false },
        ),
    ] {
        let mut opts = CaptureOptions {
            ..Default::default()
        };
        opts.model.top_k = Some(4);
        opts.model.routing = Some(routing);
        let mut secs = Vec::new();
        let mut bytes = 0;
        let load0 = loadavg();
        for _ in 0..runs {
            let t = Instant::now();
            let r = logits::capture(&paths, &out, &opts).unwrap();
            secs.push(t.elapsed().as_secs_f64());
            bytes = r.logit_bytes;
            assert_eq!(r.tokens as usize, files * LAYERS * tokens);
        }
        let gbs: Vec<String> = secs
            .iter()
            .map(|s| format!("{:.2}", bytes as f64 / 1e9 / s))
            .collect();
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        println!(
            "{label}: {files} files x {LAYERS} layers x {tokens} tokens x {EXPERTS} experts f32 = {:.2} GB; {runs} runs: {} GB/s; median {:.2} GB/s ({median:.3} s), best {:.2} GB/s; load average {load0} -> {}",
            bytes as f64 / 1e9,
            gbs.join(", "),
            bytes as f64 / 1e9 / median,
            bytes as f64 / 1e9 / secs[0],
            loadavg()
        );
    }
}
