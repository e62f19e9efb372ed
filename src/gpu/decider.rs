//! `llep-auto`'s decision on a helper thread kept warm (`--decision-thread
//! on`).
//!
//! The decision (plan LLEP and EP, price both) runs on the layer's critical
//! path, between the count download and the tables' upload. On the worker
//! thread it runs cold: the worker spent the layer waiting on the GPU and
//! queueing kernels, so the profile's tables, the pricer's code and its
//! scratch come from memory. On the lent hosts that made it 5-10 times
//! slower than the same code run warm (session 10: 4-15 us against 0.9 us
//! for Mixtral at 128 tokens per GPU), and it was most of llep-auto's
//! losses against the better of EP and LLEP.
//!
//! Here one thread per GPU owns its own planner and the arbiter's
//! thread-local scratch. While no layer waits for it, it rehearses every
//! [`REHEARSE_EVERY`]: it decides the last layer it saw again with the
//! experts rotated, which keeps its code, the profile's tables and its
//! scratch in its caches (and its core's clock up), and otherwise spins.
//! Rotated, because replay runs each input again and again: rehearsing the
//! very counts that come next would also warm what depends on the input
//! (which experts, which branches), which a model's next layer would not.
//!
//! The worker posts the counts as soon as they are on the host, plans the
//! LLEP plan it runs itself in the meantime (as the `llep` setting does),
//! then spins for the answer. The answer is the arbiter's, on the same
//! counts: the same decision as deciding inline, only sooner. The cost is
//! one busy CPU core per GPU while a replay with llep-auto runs.

use crate::plan::{Arbiter, Plan, PlanParams, Planner, Policy};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often an idle helper rehearses (decides its last layer again,
/// experts rotated).
const REHEARSE_EVERY: Duration = Duration::from_micros(50);

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const EP: u8 = 2;
const LLEP: u8 = 3;
const FAILED: u8 = 4;
const QUIT: u8 = 5;

/// A layer's inputs to the decision, owned (as posted, and the helper's
/// copy of the last one).
#[derive(Default)]
struct Posted {
    per_rank: Vec<u64>,
    global: Vec<u64>,
    params: Option<PlanParams>,
}

impl Posted {
    fn layer(&self) -> Option<Layer<'_>> {
        Some(Layer {
            per_rank: &self.per_rank,
            global: &self.global,
            params: self.params?,
        })
    }
}

/// A layer's inputs to the decision: the counts per rank (`[P][N]`) and
/// per expert, and the planner's parameters.
pub struct Layer<'a> {
    pub per_rank: &'a [u64],
    pub global: &'a [u64],
    pub params: PlanParams,
}

struct Shared {
    state: AtomicU8,
    posted: Mutex<Posted>,
}

/// One worker's warm decision thread.
pub struct Decider {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Decider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decider")
    }
}

/// The decision on a layer's LLEP plan `llep`: `Some(true)` when it
/// switched on and the arbiter prefers it to the EP plan (planned into
/// `ep`), `Some(false)` for EP, `None` if planning EP failed. What the
/// worker decides inline (`--decision-thread off`) and the helper after
/// planning LLEP itself ([`decide`]).
pub fn judge(
    arbiter: &dyn Arbiter,
    planner: &mut Planner,
    c: &Layer<'_>,
    llep: &Plan,
    ep: &mut Plan,
) -> Option<bool> {
    if !llep.use_llep {
        return Some(false);
    }
    planner
        .plan_into(c.global, &c.params, Policy::Ep, ep)
        .ok()?;
    Some(arbiter.prefers_llep(ep, llep, c.per_rank, c.global))
}

/// The whole decision from the counts: plan LLEP, then [`judge`]; `None`
/// if planning failed (the worker then plans inline and reports the
/// error).
pub fn decide(
    arbiter: &dyn Arbiter,
    planner: &mut Planner,
    c: &Layer<'_>,
    llep: &mut Plan,
    ep: &mut Plan,
) -> Option<bool> {
    planner
        .plan_into(c.global, &c.params, Policy::LlepAuto, llep)
        .ok()?;
    judge(arbiter, planner, c, llep, ep)
}

impl Decider {
    pub fn start(arbiter: Arc<dyn Arbiter>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            posted: Mutex::new(Posted::default()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llep-auto-decider".into())
            .spawn(move || helper(&s, &*arbiter))?;
        Ok(Decider {
            shared,
            thread: Some(thread),
        })
    }

    /// Hand a layer's counts to the helper; [`Decider::answer`] collects
    /// the decision.
    pub fn post(&self, per_rank: &[u64], global: &[u64], params: PlanParams) {
        // an earlier layer's answer nobody collected (its run failed before
        // it): wait it out, so it is not taken for this layer's
        let _ = self.answer();
        let mut c = self.shared.posted.lock().unwrap_or_else(|e| e.into_inner());
        c.per_rank.clear();
        c.per_rank.extend_from_slice(per_rank);
        c.global.clear();
        c.global.extend_from_slice(global);
        c.params = Some(params);
        drop(c);
        self.shared.state.store(POSTED, Ordering::Release);
    }

    /// The posted layer's decision (spinning until it is made): see
    /// [`decide`]; `None` also when nothing was posted.
    pub fn answer(&self) -> Option<bool> {
        // only this worker moves the state off IDLE, by posting
        if self.shared.state.load(Ordering::Acquire) == IDLE {
            return None;
        }
        loop {
            match self.shared.state.load(Ordering::Acquire) {
                EP | LLEP | FAILED => break,
                _ => std::hint::spin_loop(),
            }
        }
        let s = self.shared.state.swap(IDLE, Ordering::AcqRel);
        match s {
            LLEP => Some(true),
            EP => Some(false),
            _ => None,
        }
    }
}

impl Drop for Decider {
    fn drop(&mut self) {
        self.shared.state.store(QUIT, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn helper(s: &Shared, arbiter: &dyn Arbiter) {
    let mut planner = Planner::new();
    let (mut llep, mut ep) = (Plan::default(), Plan::default());
    let mut last = Posted::default();
    let mut rehearsal = Posted::default();
    let mut rehearsed = Instant::now();
    loop {
        match s.state.load(Ordering::Acquire) {
            QUIT => return,
            POSTED => {
                {
                    let c = s.posted.lock().unwrap_or_else(|e| e.into_inner());
                    last.per_rank.clone_from(&c.per_rank);
                    last.global.clone_from(&c.global);
                    last.params = c.params;
                }
                let d = last
                    .layer()
                    .and_then(|c| decide(arbiter, &mut planner, &c, &mut llep, &mut ep));
                let to = match d {
                    Some(true) => LLEP,
                    Some(false) => EP,
                    None => FAILED,
                };
                // the worker may have quit meanwhile: keep its QUIT
                let _ = s
                    .state
                    .compare_exchange(POSTED, to, Ordering::AcqRel, Ordering::Acquire);
                rotate(&last, &mut rehearsal);
                rehearsed = Instant::now();
            }
            _ => {
                if rehearsed.elapsed() < REHEARSE_EVERY {
                    std::hint::spin_loop();
                    continue;
                }
                if let Some(c) = rehearsal.layer() {
                    std::hint::black_box(decide(arbiter, &mut planner, &c, &mut llep, &mut ep));
                }
                rehearsed = Instant::now();
            }
        }
    }
}

/// `from`'s layer with expert `e`'s counts moved to expert `e + N/2 + 1`
/// (mod N) on every rank: another layer of the same size and skew.
fn rotate(from: &Posted, to: &mut Posted) {
    let n = from.global.len();
    to.params = from.params;
    to.global.clone_from(&from.global);
    to.per_rank.clone_from(&from.per_rank);
    if n < 2 {
        return;
    }
    let k = n - (n / 2 + 1) % n;
    to.global.rotate_left(k % n);
    for block in to.per_rank.chunks_exact_mut(n) {
        block.rotate_left(k % n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Gate;
    use std::sync::atomic::AtomicUsize;

    /// Prefers LLEP when expert 0 has more than `hot` copies; counts calls.
    #[derive(Debug)]
    struct Hot {
        hot: u64,
        calls: AtomicUsize,
    }
    impl Arbiter for Hot {
        fn prefers_llep(&self, _: &Plan, _: &Plan, _: &[u64], global: &[u64]) -> bool {
            self.calls.fetch_add(1, Ordering::Relaxed);
            global[0] > self.hot
        }
    }

    #[test]
    fn the_helper_answers_as_deciding_inline_does() {
        let arb = Arc::new(Hot {
            hot: 5000,
            calls: AtomicUsize::new(0),
        });
        let d = Decider::start(arb.clone()).unwrap();
        let params = PlanParams {
            gpus: 2,
            alpha: 1.0,
            min_gemm: 16,
            gate: Gate::Auto,
        };
        let mut planner = Planner::new();
        let (mut llep, mut ep) = (Plan::default(), Plan::default());
        for hot in [100u64, 4000, 6000, 9000, 300] {
            // 4 experts on 2 GPUs, expert 0 hot on GPU 0's side
            let per_rank = vec![hot / 2, 10, 10, 10, hot / 2, 10, 10, 10];
            let global: Vec<u64> = (0..4).map(|e| per_rank[e] + per_rank[4 + e]).collect();
            d.post(&per_rank, &global, params);
            // rehearsals in between must not change answers
            std::thread::sleep(Duration::from_micros(200));
            let warm = d.answer();
            let c = Layer {
                per_rank: &per_rank,
                global: &global,
                params,
            };
            let inline = decide(&*arb, &mut planner, &c, &mut llep, &mut ep);
            assert_eq!(warm, inline, "hot expert with {hot} copies");
        }
        // one hot layer is judged, and the idle helper rehearsed it again
        let calls = arb.calls.load(Ordering::Relaxed);
        assert!(calls >= 3, "the arbiter judged {calls} times");
        drop(d);
    }

    #[test]
    fn an_uncollected_answer_is_never_taken_for_the_next_layers() {
        let arb = Arc::new(Hot {
            hot: 5000,
            calls: AtomicUsize::new(0),
        });
        let d = Decider::start(arb).unwrap();
        assert_eq!(d.answer(), None, "nothing posted");
        let params = PlanParams {
            gpus: 2,
            alpha: 1.0,
            min_gemm: 16,
            gate: Gate::Auto,
        };
        let layer = |hot: u64| {
            let per_rank = vec![hot / 2, 10, 10, 10, hot / 2, 10, 10, 10];
            let global: Vec<u64> = (0..4).map(|e| per_rank[e] + per_rank[4 + e]).collect();
            (per_rank, global)
        };
        for (first, second) in [(9000, 100), (100, 9000)] {
            let (p1, g1) = layer(first);
            d.post(&p1, &g1, params);
            // that run failed before collecting its answer
            let (p2, g2) = layer(second);
            d.post(&p2, &g2, params);
            assert_eq!(d.answer(), Some(second > 5000));
        }
    }

    #[test]
    fn a_rehearsal_is_another_layer_of_the_same_counts() {
        let from = Posted {
            per_rank: vec![1, 2, 3, 4, 10, 20, 30, 40],
            global: vec![11, 22, 33, 44],
            params: None,
        };
        let mut to = Posted::default();
        rotate(&from, &mut to);
        // expert e's counts go to expert e + 3 (mod 4)
        assert_eq!(to.global, [22, 33, 44, 11]);
        assert_eq!(to.per_rank, [2, 3, 4, 1, 20, 30, 40, 10]);
    }

    #[test]
    fn a_failed_plan_is_reported_not_guessed() {
        let arb = Arc::new(Hot {
            hot: 0,
            calls: AtomicUsize::new(0),
        });
        let d = Decider::start(arb).unwrap();
        // 3 experts cannot be spread over 2 GPUs
        let params = PlanParams {
            gpus: 2,
            alpha: 1.0,
            min_gemm: 16,
            gate: Gate::Auto,
        };
        d.post(&[1, 2, 3, 4, 5, 6], &[5, 7, 9], params);
        assert_eq!(d.answer(), None);
    }
}
