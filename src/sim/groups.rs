//! Expert groups' GEMM times: how a profile prices one group of a shape
//! ([`GroupPricer`]: a measured whole-group curve, the GEMM tables, or the
//! efficiency formula), and the times a layer-step's prices share
//! ([`GroupMemo`]).

use super::cost::Shape;
use super::model::{self, interp};
use super::profile::Profile;

impl Profile {
    /// Time of one expert group of `tokens` token-copies (gate_up + down
    /// GEMMs and the activation), milliseconds. A measured whole-group
    /// curve for the shape wins; then the per-projection GEMM tables
    /// (`sim::model`); otherwise an efficiency curve t / (t + half).
    pub fn gemm_ms(&self, tokens: u64, s: &Shape) -> f64 {
        self.group_pricer(s).ms(tokens)
    }

    /// Whether expert GEMMs are priced through `--gemm fused`'s tables:
    /// the run's setting, where the profile has them.
    pub fn prices_fused(&self) -> bool {
        self.gemm == crate::gpu::GemmImpl::Fused && !self.fused_gemm_tables.is_empty()
    }

    /// [`Profile::gemm_ms`] for one shape with its curve or tables chosen
    /// once: pricing a layer-step calls it for every expert group.
    pub fn group_pricer(&self, s: &Shape) -> GroupPricer<'_> {
        let how = if let Some(c) = self.gemm_curves.iter().find(|c| {
            c.hidden_size as u64 == s.hidden && c.intermediate_size as u64 == s.intermediate
        }) {
            Pricing::Curve(&c.points)
        } else {
            let chunk = self.act_chunk_tokens.max(1);
            // through the fused kernel, or launched as graphs, the tables
            // timed that way (where measured)
            let tables = if self.prices_fused() {
                &self.fused_gemm_tables
            } else if self.cuda_graphs && !self.graph_gemm_tables.is_empty() {
                &self.graph_gemm_tables
            } else {
                &self.gemm_tables
            };
            match model::GroupTables::new(tables, s.hidden, s.intermediate, chunk) {
                Some(t) => Pricing::Tables(t, chunk),
                None => Pricing::Flops,
            }
        };
        GroupPricer {
            prof: self,
            hidden: s.hidden,
            intermediate: s.intermediate,
            how,
        }
    }
}

/// Prices expert groups of one shape under one profile (from
/// [`Profile::group_pricer`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupPricer<'a> {
    prof: &'a Profile,
    hidden: u64,
    intermediate: u64,
    how: Pricing<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Pricing<'a> {
    Curve(&'a [(f64, f64)]),
    /// The GEMM tables, and the activation chunk they are cut by.
    Tables(model::GroupTables<'a>, u64),
    Flops,
}

impl GroupPricer<'_> {
    /// Time of one group of `tokens` token-copies, ms.
    pub fn ms(&self, tokens: u64) -> f64 {
        self.ms_units(tokens, None)
    }

    /// [`GroupPricer::ms`], with the GEMM units' times kept in `memo`
    /// (bound to this pricer's tables by [`GroupMemo::bind`]): the same
    /// time.
    pub fn ms_memo(&self, tokens: u64, memo: &mut GroupMemo) -> f64 {
        self.ms_units(tokens, Some(&mut memo.units))
    }

    /// The GEMM units replay issues for a group of `tokens` rows (one per
    /// activation chunk), which the host's floor is counted in; 1 where
    /// the group is priced whole.
    pub fn units(&self, tokens: u64) -> u64 {
        match &self.how {
            // most groups fit one unit: no division
            Pricing::Tables(_, chunk) if tokens <= *chunk => u64::from(tokens > 0),
            Pricing::Tables(_, chunk) => tokens.div_ceil(*chunk),
            _ => 1,
        }
    }

    /// The floor per unit, ms: a GPU's units take at least this many times
    /// their count. Issued one by one, the host's
    /// ([`model::LayerFit::unit_floor_us`]); launched as CUDA graphs, the
    /// GPU's own ([`model::LayerFit::graph_floor_us`]).
    pub fn floor_ms(&self) -> f64 {
        match (&self.how, &self.prof.layer_fit) {
            (Pricing::Tables(..), Some(f)) if self.prof.cuda_graphs => f.graph_floor_us * 1e-3,
            (Pricing::Tables(..), Some(f)) => f.unit_floor_us * 1e-3,
            _ => 0.0,
        }
    }

    fn ms_units(&self, tokens: u64, units: Option<&mut model::UnitTimes>) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let t = tokens as f64;
        let prof = self.prof;
        match &self.how {
            Pricing::Curve(points) => interp(points, t),
            Pricing::Tables(tables, _) => {
                let ms = match units {
                    Some(u) => tables.ms_cached(tokens, u),
                    None => tables.ms(tokens),
                };
                // inside a layer, each unit as fitted against the tables
                match &prof.layer_fit {
                    Some(f) => f.unit_scale * ms + f.unit_us * 1e-3 * self.units(tokens) as f64,
                    None => ms,
                }
            }
            Pricing::Flops => {
                let flops = 6.0 * t * self.hidden as f64 * self.intermediate as f64;
                let eff = t / (t + prof.gemm_half_tokens);
                flops / (prof.gemm_peak_tflops * 1e12 * eff) * 1e3 + prof.gemm_launch_us * 1e-3
            }
        }
    }
}

/// Expert groups' times kept between the prices of one layer-step, by
/// expert and token count: most experts stay whole at home under every
/// policy, so their groups are the same under each. Valid for one profile
/// and shape; whoever holds it clears it when either changes. It also
/// keeps GEMM unit times by row count ([`model::UnitTimes`]) across
/// clears: those check at each price that the tables are the same.
#[derive(Debug, Default, Clone)]
pub struct GroupMemo {
    /// `[e]`: the token count whose time `ms[e]` is (`u64::MAX`: none).
    tokens: Vec<u64>,
    ms: Vec<f64>,
    units: model::UnitTimes,
}

impl GroupMemo {
    /// Keep unit times for `pricer`'s GEMM tables (forgetting those of
    /// other tables); before [`GroupPricer::ms_memo`].
    pub fn bind(&mut self, pricer: &GroupPricer) {
        match &pricer.how {
            Pricing::Tables(t, _) => self.units.bind(t),
            _ => self.units.clear(),
        }
    }

    /// Expert `e`'s group time when it was priced at `tokens`.
    pub fn ms(&self, e: usize, tokens: u64) -> Option<f64> {
        (self.tokens.get(e) == Some(&tokens)).then(|| self.ms[e])
    }

    /// Expert `e`'s group of `tokens` under `pricer` (bound by
    /// [`GroupMemo::bind`]): the kept time when it was priced at `tokens`,
    /// else priced and kept.
    pub(super) fn group_ms(&mut self, pricer: &GroupPricer, e: usize, tokens: u64) -> f64 {
        if self.tokens[e] == tokens {
            return self.ms[e];
        }
        let ms = pricer.ms_memo(tokens, self);
        (self.tokens[e], self.ms[e]) = (tokens, ms);
        ms
    }

    /// Room for `experts` experts (forgetting every time if it had
    /// room for another number).
    pub(super) fn fit(&mut self, experts: usize) {
        if self.tokens.len() != experts {
            self.clear(experts);
        }
    }

    /// Forget every time; room for `experts` experts.
    pub fn clear(&mut self, experts: usize) {
        self.tokens.clear();
        self.tokens.resize(experts, u64::MAX);
        self.ms.clear();
        self.ms.resize(experts, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GemmImpl;

    /// `--gemm fused` is priced with the tables timed through the fused
    /// kernel where the profile has them, and with lt's otherwise.
    #[test]
    fn fused_runs_are_priced_with_the_fused_tables() {
        let mut prof = Profile::load("h200").unwrap();
        // the built-in profile's own fused tables (session 16) priced
        // below the lt ones for this shape at 2,048 rows (the activation
        // fused, the down GEMMs grouped)
        prof.gemm = GemmImpl::Fused;
        let s = Shape::bf16(2880, 2880, 4);
        let own = prof.gemm_ms(2048, &s);
        prof.gemm = GemmImpl::Lt;
        assert!(own < prof.gemm_ms(2048, &s));
        prof.fused_gemm_tables.clear();
        let lt = prof.gemm_ms(4096, &s);
        prof.gemm = GemmImpl::Fused;
        // no fused tables: lt's, and the profile says it does not price fused
        assert!(!prof.prices_fused());
        assert_eq!(prof.gemm_ms(4096, &s), lt);
        prof.fused_gemm_tables = prof.gemm_tables.clone();
        for t in &mut prof.fused_gemm_tables {
            for p in &mut t.points {
                p.1 *= 0.5;
            }
        }
        assert!(prof.prices_fused());
        let fused = prof.gemm_ms(4096, &s);
        assert!(fused < 0.75 * lt, "{fused} vs {lt}");
        // the run's setting picks the tables, not their presence
        prof.gemm = GemmImpl::Lt;
        assert_eq!(prof.gemm_ms(4096, &s), lt);
    }
}
