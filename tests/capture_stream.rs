//! Load-level CSV capture streamed a step at a time
//! (`capture::loads_stream`) writes the same trace file, byte for byte, as
//! the capture that holds the whole trace, fails the same way on bad
//! input, and finds the same constant routing; files whose steps are not
//! grouped in ascending order are read whole.

use llep_trace::capture::loads::ingest;
use llep_trace::capture::loads_stream::capture_to;
use llep_trace::capture::sanity::constant_routing;
use llep_trace::capture::CaptureOptions;
use llep_trace::trace::parquet_io::write_trace;
use llep_trace::trace::read_trace;
use llep_trace::trace::tokens::SplitMix64;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-capture-stream-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(top_k: u32, group_by: Option<&str>) -> CaptureOptions {
    let mut o = CaptureOptions::default();
    o.model.top_k = Some(top_k);
    o.group_by = group_by.map(str::to_string);
    o
}

/// Capture `body` both ways; returns whether the streamed path was taken.
fn both_ways(name: &str, body: &str, o: &CaptureOptions) -> bool {
    let d = dir();
    let csv = d.join(format!("{name}.csv"));
    std::fs::write(&csv, body).unwrap();
    let (a, b) = (
        d.join(format!("{name}-s.parquet")),
        d.join(format!("{name}-w.parquet")),
    );
    let w = capture_to(&csv, o, "load-csv", &a).unwrap();
    let t = ingest(&csv, o, "load-csv").unwrap();
    write_trace(&b, &t).unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "{name}: files differ"
    );
    let back = read_trace(&a, false).unwrap();
    assert_eq!(back.loads, t.loads, "{name}");
    assert_eq!(
        (&w.step_ids, &w.layer_ids, w.ranks, w.experts),
        (
            &t.loads.step_ids,
            &t.loads.layer_ids,
            t.loads.ranks,
            t.loads.experts
        ),
        "{name}"
    );
    assert_eq!(w.meta, t.meta, "{name}");
    assert_eq!(
        w.constant_routing,
        constant_routing(&t.loads, t.meta.model.top_k),
        "{name}"
    );
    w.streamed
}

/// A long-form CSV of `steps` x `layers` x `ranks` x `experts` rows (some
/// left out), steps in the order given.
fn body(rng: &mut SplitMix64, steps: &[u32], layers: u32, ranks: u32, experts: u32) -> String {
    let mut s = String::from("step,layer,rank,expert,count\n");
    for &st in steps {
        for l in 0..layers {
            for r in 0..ranks {
                for e in 0..experts {
                    if rng.below(10) == 0 {
                        continue;
                    }
                    s += &format!("{st},{},{r},{e},{}\n", l * 2, rng.below(500));
                }
            }
        }
    }
    s
}

#[test]
fn a_streamed_capture_writes_the_same_file() {
    let mut rng = SplitMix64::new(16);
    for (i, steps) in [vec![0u32, 1, 2, 3], vec![3, 7, 8, 20, 21], vec![5]]
        .into_iter()
        .enumerate()
    {
        let b = body(&mut rng, &steps, 3, 2, 6);
        assert!(both_ways(&format!("grouped{i}"), &b, &opts(2, None)));
    }
    // no step column: one step
    let b = "layer,expert,count\n0,0,5\n0,1,3\n1,1,9\n";
    assert!(both_ways("nostep", b, &opts(1, None)));
    // --group-by: steps by a column's values, in first-seen order
    let b = "batch,layer,expert,count\nb,0,0,4\nb,0,1,4\na,0,0,7\na,1,1,2\n";
    assert!(both_ways("groupby", b, &opts(1, Some("batch"))));
    // constant routing (every token on the same 2 experts) found the same
    let mut b = String::from("step,layer,expert,count\n");
    for s in 0..3 {
        for l in 0..2 {
            b += &format!("{s},{l},0,200\n{s},{l},3,200\n{s},{l},1,0\n");
        }
    }
    assert!(both_ways("constant", &b, &opts(2, None)));
}

#[test]
fn steps_out_of_order_or_interleaved_are_read_whole() {
    let mut rng = SplitMix64::new(17);
    let b = body(&mut rng, &[4, 2, 9], 2, 1, 4);
    assert!(!both_ways("descending", &b, &opts(1, None)));
    let b = "step,layer,expert,count\n1,0,0,3\n2,0,0,4\n1,1,0,5\n";
    assert!(!both_ways("interleaved", b, &opts(1, None)));
}

#[test]
fn bad_input_fails_as_the_whole_capture_does_and_writes_nothing() {
    let d = dir();
    let cases = [
        // a duplicate row inside a step
        (
            "dup",
            "step,layer,expert,count\n1,0,0,1\n1,0,1,1\n1,0,0,2\n2,0,1,3\n",
            opts(1, None),
        ),
        // an expert id out of range, reported before the duplicate
        (
            "range",
            "step,layer,expert,count\n1,0,0,1\n1,0,0,2\n1,0,9,1\n",
            {
                let mut o = opts(1, None);
                o.model.num_experts = Some(4);
                o
            },
        ),
        (
            "nok",
            "step,layer,expert,count\n1,0,0,1\n",
            CaptureOptions::default(),
        ),
        ("empty", "step,layer,expert,count\n", opts(1, None)),
        (
            "badcount",
            "step,layer,expert,count\n1,0,0,x\n",
            opts(1, None),
        ),
    ];
    for (name, body, o) in cases {
        let csv = d.join(format!("{name}.csv"));
        std::fs::write(&csv, body).unwrap();
        let out = d.join(format!("{name}.parquet"));
        let streamed = capture_to(&csv, &o, "load-csv", &out)
            .unwrap_err()
            .to_string();
        let whole = ingest(&csv, &o, "load-csv").unwrap_err().to_string();
        assert_eq!(streamed, whole, "{name}");
        assert!(!Path::new(&out).exists(), "{name}: output written");
        let tmp = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(Result::ok)
            .any(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".{name}.parquet"))
            });
        assert!(!tmp, "{name}: a temporary file was left");
    }
}

#[test]
fn padded_fields_and_filters_read_as_trimmed() {
    let d = dir();
    let plain = "step,layer,expert,count,kind\n1,0,0,5,a\n1,0,1,3,b\n2,1,1,9,a\n";
    let padded =
        " Step , layer,expert , count,kind\n 1, 0 ,0 , 5 , a\n1,0, 1,3 ,b \n 2 ,1,1, 9,a\n";
    let mut o = opts(1, None);
    o.filters = vec![("kind".into(), "a".into())];
    let mut got = Vec::new();
    for (name, body) in [("plain", plain), ("padded", padded)] {
        let csv = d.join(format!("{name}.csv"));
        std::fs::write(&csv, body).unwrap();
        let out = d.join(format!("{name}.parquet"));
        capture_to(&csv, &o, "load-csv", &out).unwrap();
        got.push(read_trace(&out, false).unwrap().loads);
    }
    assert_eq!(got[0], got[1]);
    assert_eq!((got[0].steps(), got[0].experts), (2, 2));
    assert_eq!(got[0].block(0, 0), &[5, 0]);
}
