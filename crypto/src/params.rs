//! SecAgg and SecAgg+ parameter choice: degree k and threshold t from (n, δ, γ, adversary class).
//!
//! Every party computes (k, t) from the plan's n = |U|, δ (`dropout_ppm`), γ (`corrupt_ppm`)
//! and adversary class, and a client refuses a plan below what it computes, so the choice is
//! deterministic: the same inputs give the same output on every machine (exact integer
//! arithmetic for the counts, and only IEEE-754 `+ − × ÷` on `f64` — no `ln`, `exp` or `lgamma`,
//! whose last bits differ between math libraries — for the probabilities).
//!
//! # Conventions
//!
//! k is the number of **neighbours** of a client, the client itself excluded; its share holders
//! are those k neighbours plus itself, so t ≤ k + 1. Google's finder
//! (`fcp/secagg/server/graph_parameter_finder.cc` in google-parfait/federated-compute) returns
//! the same number — it searches the "number of neighbours" 2, 4, … — and FCP's server then
//! builds its `SecretSharingHararyGraph` with degree k + 1 to add the self-edge. So our k is
//! FCP's finder output and FCP's graph degree minus one: k is even (what
//! [`RoundPlan::validate`] requires for the Harary graph) and the k + 1 holders of FCP and of
//! this crate are the same. This is also the `{"degree": k, "threshold": t}` that
//! `secagg-bench --params-only` (a binary of `fedsec-integration-tests`) prints.
//!
//! The counts are exact integers: n_C = ⌊γn⌋ corrupt clients, n_D = ⌊δn⌋ dropouts, and
//! s = n − n_D = ⌈(1−δ)n⌉ survivors ([`RoundPlan::assumed_corrupt`] and
//! [`RoundPlan::min_surviving`] compute the same).
//!
//! # SecAgg+ (Harary graph): the failure events
//!
//! The method is that of Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
//! Overhead" (CCS 2020), in the form of FCP's finder. With the graph drawn from a uniformly
//! random permutation (the corrupt clients being chosen independently of the graph seed):
//!
//! **Privacy** fails with probability below 2⁻⁴⁰, split as 2⁻⁴¹ per event:
//!
//! 1. *The graph of honest survivors disconnects* (the sum would split into partial sums). A
//!    Harary ring is cut only by two runs of k/2 consecutive bad (corrupt or dropped) clients;
//!    there are n(n−k−1)/2 places for the two runs, and each has all its k clients bad with
//!    probability Π_{i<k} (B−i)/(n−i), B = n_C + n_D. The union bound
//!    n(n−k−1)/2 · Π_{i<k} (B−i)/(n−i) must be below 2⁻⁴¹.
//! 2. *Some honest client has t or more corrupt share holders.* The corrupt neighbours of a client are
//!    hypergeometric, A ~ HG(population, n_C, k); with a the least integer such that
//!    P(A ≥ a) < 2⁻⁴¹/n, a union bound over the n clients gives probability below 2⁻⁴¹ that any
//!    client has a or more. An honest-but-curious server therefore needs t ≥ a.
//!    A semi-malicious server may ask some honest holders of an honest, alive u for their share
//!    of b_u and others for their share of s_u. With A < a corrupt neighbours and the k + 1 − A
//!    honest holders split between the two secrets (u itself reveals its own share of b_u but
//!    never of s_u), it gets both secrets only if 2t ≤ k + 1 + A; so we take the least t with
//!    2t > k + a, i.e. t = ⌊(k + a)/2⌋ + 1.
//!
//! **Correctness** fails with probability below 2⁻²⁰: a client's secret must stay
//! reconstructable when at most n_D clients drop, i.e. it needs t surviving holders. Its
//! surviving neighbours are at least S ~ HG(n, s, k) (in the stochastic order; its own share
//! only adds to that), and P(S < t) < 2⁻²⁰/n with a union bound over the n clients.
//!
//! **Search.** For k = 2, 4, … below n − 1, take the least t that privacy allows (never below 2,
//! as in FCP) and return the first k whose t also meets correctness and is feasible. As FCP
//! does, inputs with γ + δ > 0.9 (curious) or γ + 2δ > 0.9 (semi-malicious) are refused up
//! front; the second implies q > (n + n_C)/2, the consistency rule of `DESIGN.md`, which is
//! checked exactly anyway. When no k < n − 1 works (small n): if n − 1 is even, the Harary
//! graph H(n − 1, n) is the complete graph, and the complete-graph rule below gives t with
//! k = n − 1; if n − 1 is odd, there is no Harary graph and [`Error::NoParameters`] says to use
//! the complete graph.
//!
//! **Where we differ from FCP**, each time in the safe direction (more neighbours or a larger
//! threshold, never less), all invisible at the values FCP's test pins for
//! n = 1000, γ = 0.05, δ = 0.33 (curious k = 72, t = 24; semi-malicious k = 398, t = 223):
//!
//! - FCP draws the k neighbours of a client from all n clients, HG(n, n_C, k). An honest
//!   client's neighbours are a uniform k-subset of the n − 1 *others*, among which all n_C
//!   corrupt clients lie, so the privacy event uses HG(n − 1, n_C, k), which is exact (FCP's
//!   model slightly underestimates the corrupt neighbours).
//! - FCP's semi-malicious threshold is the least t with 2t ≥ k + a, from Bell et al.'s bound
//!   2t − k > A for k holders; with the self-share the holders are k + 1, which needs 2t > k + a
//!   (above). Note that in this protocol the consistency check with q > (n + n_C)/2 already
//!   stops a server from showing two views of U3; the threshold rule is a second line.
//! - FCP applies its floor t ≥ 2 after the correctness check; we check correctness for the t we
//!   return. This only matters for tiny n.
//!
//! **Numerics.** Hypergeometric weights are computed by their exact term ratio
//! w(x+1)/w(x) = (K−x)(k−x) / ((x+1)(N−K−k+x+1)), whose integer factors are exact in `f64`
//! because n ≤ [`MAX_CLIENTS`], and kept as an `f64` mantissa with a separate integer binary
//! exponent, so nothing underflows. Weights are walked outward from the mode and dropped once
//! below 2⁻¹²⁸ of it (a bounded, negligible loss, see `Hypergeometric::weights`); tails are sums
//! of positive terms compared with a fraction of the total, with relative error about k·2⁻⁵²,
//! far below anything that matters for a 2⁻⁴¹ bound. A candidate k costs O(√k) terms, so
//! typical inputs take milliseconds and FCP's hardest table entry (n = 10⁵, γ = δ = 0.3,
//! semi-malicious, k ≈ 9400) a fraction of a second.
//!
//! # SecAgg (complete graph)
//!
//! k = n − 1 and, as in FCP's full-graph variant and Bonawitz et al. (CCS 2017), t = ⌈(1−δ)n⌉
//! (at least 2): the round aborts below q = max(t, ⌈(1−δ)n⌉) survivors anyway, so a smaller t
//! would buy no robustness and would only make collusion easier. Then:
//!
//! - curious: the server and the n_C corrupt clients hold n_C shares, so t > n_C is required;
//! - semi-malicious and malicious: the consistency check needs q > (n + n_C)/2 (Bonawitz et al.
//!   §6; `DESIGN.md`, Thresholds), i.e. γ + 2δ < 1 up to rounding.
//!
//! Otherwise [`Error::NoParameters`] says which bound failed.

use serde::{Deserialize, Serialize};

use crate::context::{AdversaryClass, GraphKind, PPM, RoundPlan};
use crate::error::{Error, PlanRule, Result};

/// Privacy: the probability that the server learns more than the sum is below 2^-PRIVACY_BITS.
pub const PRIVACY_BITS: u32 = 40;

/// Correctness: the probability that a round within the dropout bound fails is below
/// 2^-CORRECTNESS_BITS.
pub const CORRECTNESS_BITS: u32 = 20;

/// The largest n the Harary search accepts (as FCP's finder; it also keeps every integer the
/// search multiplies below 2⁵³, so exact in `f64`).
pub const MAX_CLIENTS: usize = 1_000_000;

/// FCP's feasibility limit: γ + δ (curious) or γ + 2δ (semi-malicious) at most 0.9.
const FEASIBLE_PPM: u64 = 900_000;

/// Degree k (neighbours, self excluded) and Shamir threshold t (1 ≤ t ≤ k + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphParams {
    /// Number of neighbours k of each client, itself excluded (n − 1 for the complete graph).
    pub degree: u32,
    /// Shamir threshold t among the k + 1 share holders.
    pub threshold: u32,
}

/// (k, t) for SecAgg+ (Harary graph); see the module docs for the method.
///
/// Errors: [`Error::InvalidPlan`] for fractions of one million or more;
/// [`Error::NoParameters`] for a malicious class (complete graph only), n < 2, n above
/// [`MAX_CLIENTS`], inputs beyond FCP's feasibility limits, or when no Harary graph meets the
/// targets (small n with n − 1 odd: use the complete graph).
pub fn harary_params(
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
) -> Result<GraphParams> {
    harary_search(n, dropout_ppm, corrupt_ppm, class, Model::FEDSEC)
}

/// (k, t) for SecAgg (complete graph): k = n − 1, t = max(⌈(1−δ)n⌉, 2); see the module docs.
///
/// Errors: [`Error::InvalidPlan`] for fractions of one million or more;
/// [`Error::NoParameters`] for n < 2, for a curious class with t ≤ n_C, and for the other
/// classes when q ≤ (n + n_C)/2.
pub fn complete_params(
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
) -> Result<GraphParams> {
    let c = Counts::new(n, dropout_ppm, corrupt_ppm)?;
    let degree = u32::try_from(n - 1)
        .map_err(|_| Error::NoParameters(format!("{n} clients do not fit a u32 degree")))?;
    let t = c.survivors.max(2);
    match class {
        AdversaryClass::Curious => {
            if t <= c.corrupt {
                return Err(Error::NoParameters(format!(
                    "complete graph over {n} clients: threshold {t} = ⌈(1−δ)n⌉ does not exceed \
                     the {} assumed corrupt clients",
                    c.corrupt
                )));
            }
        }
        AdversaryClass::SemiMalicious | AdversaryClass::Malicious => c.check_consistency_rule(t)?,
    }
    Ok(GraphParams { degree, threshold: t as u32 })
}

/// (k, t) for the given graph kind: [`harary_params`] or [`complete_params`].
///
/// A pure function of its arguments that every party recomputes for every plan (a client
/// twice: before it downloads the checkpoint and when its protocol core starts), and whose
/// search grows with n: the answers for the last few distinct arguments are remembered for the
/// whole process, so a simulation of many clients in one process searches once per plan shape.
pub fn choose(
    kind: GraphKind,
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
) -> Result<GraphParams> {
    type Chosen = ((GraphKind, usize, u32, u32, AdversaryClass), Result<GraphParams>);
    static CHOSEN: std::sync::Mutex<Vec<Chosen>> = std::sync::Mutex::new(Vec::new());
    const REMEMBERED: usize = 16;
    let key = (kind, n, dropout_ppm, corrupt_ppm, class);
    let chosen = || CHOSEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, answer)) = chosen().iter().find(|(k, _)| *k == key) {
        return answer.clone();
    }
    let answer = match kind {
        GraphKind::Complete => complete_params(n, dropout_ppm, corrupt_ppm, class),
        GraphKind::Harary => harary_params(n, dropout_ppm, corrupt_ppm, class),
    };
    let mut remembered = chosen();
    if remembered.len() == REMEMBERED {
        let _ = remembered.remove(0);
    }
    remembered.push((key, answer.clone()));
    answer
}

/// The (k, t) a plan's own (graph, n, δ, γ, class) require: what a client recomputes.
pub fn for_plan(plan: &RoundPlan) -> Result<GraphParams> {
    choose(plan.graph, plan.n(), plan.dropout_ppm, plan.corrupt_ppm, plan.adversary)
}

/// The least threshold at which `degree` meets the targets the finder searches for (privacy,
/// correctness and, for a non-curious class, the consistency rule), for a degree other than
/// the finder's: comparisons with other systems at their parameters.
///
/// For the complete graph the degree must be n − 1 and this is [`complete_params`]'s t. For
/// the Harary graph, `degree` must be even and in 2..=n − 1; every degree the finder skipped
/// has no such threshold ([`Error::NoParameters`] says which target fails), and the finder's own
/// degree gives its threshold.
pub fn least_threshold(
    kind: GraphKind,
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
    degree: u32,
) -> Result<u32> {
    let k = u64::from(degree);
    match kind {
        GraphKind::Complete => {
            let p = complete_params(n, dropout_ppm, corrupt_ppm, class)?;
            if degree != p.degree {
                let degree = degree as usize;
                return Err(Error::InvalidPlan(PlanRule::CompleteDegree { n, degree }));
            }
            Ok(p.threshold)
        }
        GraphKind::Harary => {
            let targets = HararyTargets::new(n, dropout_ppm, corrupt_ppm, class, Model::FEDSEC)?;
            if degree == 0 || !degree.is_multiple_of(2) || degree as usize > n - 1 {
                let degree = degree as usize;
                return Err(Error::InvalidPlan(PlanRule::HararyDegree { n, degree }));
            }
            if degree as usize == n - 1 {
                // H(n − 1, n) is the complete graph.
                return Ok(complete_params(n, dropout_ppm, corrupt_ppm, class)?.threshold);
            }
            match targets.least_threshold_at(k, targets.all_bad(k))? {
                Some(t) => Ok(t as u32),
                None => Err(Error::NoParameters(format!(
                    "at degree {degree} over {n} clients (δ = {dropout_ppm} ppm, γ = \
                     {corrupt_ppm} ppm) either the honest survivors disconnect with probability \
                     2⁻⁴¹ or more, or the least threshold privacy allows misses correctness"
                ))),
            }
        }
    }
}

/// Whether `p` meets the targets the finder searches for: t is at least [`least_threshold`] at
/// p's degree, still meets correctness (a larger t needs more surviving holders) and, for a
/// non-curious class, the consistency rule. The finder's choice always passes; a degree it
/// skipped fails at every threshold. [`Error::ParametersMissTargets`] says which target is
/// missed; [`Error::InvalidPlan`] is for a pair no plan can have (a complete graph of another
/// degree, an odd Harary degree, t outside 1..=k + 1).
pub fn check(
    kind: GraphKind,
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
    p: GraphParams,
) -> Result<()> {
    let miss = |reason: String| Error::ParametersMissTargets {
        degree: p.degree,
        threshold: p.threshold,
        reason,
    };
    let least = least_threshold(kind, n, dropout_ppm, corrupt_ppm, class, p.degree).map_err(
        |e| match e {
            Error::NoParameters(why) => miss(why),
            other => other,
        },
    )?;
    if p.threshold < least {
        return Err(miss(format!(
            "the least threshold the privacy targets allow at degree {} is {least}",
            p.degree
        )));
    }
    if p.threshold > p.degree + 1 {
        return Err(Error::InvalidPlan(PlanRule::Threshold {
            threshold: p.threshold as usize,
            holders: p.degree as usize + 1,
        }));
    }
    let c = Counts::new(n, dropout_ppm, corrupt_ppm)?;
    if class != AdversaryClass::Curious {
        c.check_consistency_rule(p.threshold as usize).map_err(|e| miss(e.to_string()))?;
    }
    let complete = p.degree as usize == n - 1;
    if complete {
        // Every survivor holds a share of every secret: the round needs t ≤ ⌈(1−δ)n⌉ survivors.
        if p.threshold > least && p.threshold as usize > c.survivors {
            return Err(miss(format!(
                "with {} dropouts only {} holders survive",
                c.dropouts, c.survivors
            )));
        }
    } else {
        let targets = HararyTargets::new(n, dropout_ppm, corrupt_ppm, class, Model::FEDSEC)?;
        if !targets.correct(u64::from(p.degree), u64::from(p.threshold)) {
            return Err(miss(format!(
                "with {} dropouts a client keeps {} surviving holders with probability below \
                 1 − 2^-{CORRECTNESS_BITS}/n, so the round may abort",
                c.dropouts, p.threshold
            )));
        }
    }
    Ok(())
}

/// The integer counts every party derives alike from n and the fractions in parts per million.
#[derive(Debug, Clone, Copy)]
struct Counts {
    n: usize,
    /// n_C = ⌊γn⌋.
    corrupt: usize,
    /// n_D = ⌊δn⌋.
    dropouts: usize,
    /// s = n − n_D = ⌈(1−δ)n⌉.
    survivors: usize,
}

impl Counts {
    fn new(n: usize, dropout_ppm: u32, corrupt_ppm: u32) -> Result<Counts> {
        if dropout_ppm >= PPM || corrupt_ppm >= PPM {
            return Err(Error::InvalidPlan(PlanRule::Fractions { dropout_ppm, corrupt_ppm }));
        }
        if n < 2 {
            return Err(Error::NoParameters(format!("{n} clients: secure aggregation needs 2")));
        }
        let frac = |ppm: u32| (n as u128 * u128::from(ppm) / u128::from(PPM)) as usize;
        let dropouts = frac(dropout_ppm);
        Ok(Counts { n, corrupt: frac(corrupt_ppm), dropouts, survivors: n - dropouts })
    }

    /// q = max(t, s) > (n + n_C)/2, in integers.
    fn check_consistency_rule(&self, t: usize) -> Result<()> {
        let q = t.max(self.survivors);
        if 2 * q <= self.n + self.corrupt {
            return Err(Error::NoParameters(format!(
                "q = max(t, ⌈(1−δ)n⌉) = {q} does not exceed (n + n_C)/2 = ({} + {})/2, so the \
                 consistency check cannot stop a deviating server (needs γ + 2δ < 1)",
                self.n, self.corrupt
            )));
        }
        Ok(())
    }
}

/// The modelling choices that differ between this crate and FCP's finder (module docs, "Where
/// we differ from FCP"). Tests run the FCP model against FCP's own table.
#[derive(Debug, Clone, Copy)]
struct Model {
    /// Draw an honest client's neighbours from the n − 1 others (exact), not from all n.
    neighbours_exclude_self: bool,
    /// Semi-malicious threshold counts the self-share: 2t > k + a rather than 2t ≥ k + a.
    self_share_in_semi_malicious_rule: bool,
}

impl Model {
    const FEDSEC: Model =
        Model { neighbours_exclude_self: true, self_share_in_semi_malicious_rule: true };
    #[cfg(test)]
    const FCP: Model =
        Model { neighbours_exclude_self: false, self_share_in_semi_malicious_rule: false };
}

fn harary_search(
    n: usize,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    class: AdversaryClass,
    model: Model,
) -> Result<GraphParams> {
    let targets = HararyTargets::new(n, dropout_ppm, corrupt_ppm, class, model)?;
    let n64 = n as u64;
    // Π_{i<k} (B−i)/(n−i), extended one factor at a time, left to right.
    let mut all_bad = Ext::ONE;
    let mut factors = 0u64;
    for k in (2..n64.saturating_sub(1)).step_by(2) {
        while factors < k {
            all_bad = targets.extend_all_bad(all_bad, factors);
            factors += 1;
        }
        if let Some(t) = targets.least_threshold_at(k, all_bad)? {
            return Ok(GraphParams { degree: k as u32, threshold: t as u32 });
        }
    }

    if (n - 1).is_multiple_of(2) {
        // H(n − 1, n) is the complete graph.
        return complete_params(n, dropout_ppm, corrupt_ppm, class);
    }
    Err(Error::NoParameters(format!(
        "no even degree below {} meets the targets for {n} clients (δ = {dropout_ppm} ppm, \
         γ = {corrupt_ppm} ppm); use the complete graph",
        n - 1
    )))
}

/// The targets of the Harary search for one (n, δ, γ, class): what the finder evaluates at each
/// candidate degree, and what [`check`] evaluates at a given one.
#[derive(Debug, Clone, Copy)]
struct HararyTargets {
    c: Counts,
    class: AdversaryClass,
    model: Model,
    /// 2⁻⁴¹, the bound of each privacy event.
    per_event: Ext,
    privacy_per_client: Ext,
    correctness_per_client: Ext,
}

impl HararyTargets {
    /// Refuses what the search refuses up front: bad fractions, n out of range, a malicious
    /// class, and inputs beyond FCP's feasibility limits.
    fn new(
        n: usize,
        dropout_ppm: u32,
        corrupt_ppm: u32,
        class: AdversaryClass,
        model: Model,
    ) -> Result<HararyTargets> {
        let c = Counts::new(n, dropout_ppm, corrupt_ppm)?;
        if n > MAX_CLIENTS {
            return Err(Error::NoParameters(format!(
                "{n} clients: the Harary parameter search supports at most {MAX_CLIENTS}"
            )));
        }
        let (d, g) = (u64::from(dropout_ppm), u64::from(corrupt_ppm));
        match class {
            AdversaryClass::Malicious => {
                return Err(Error::NoParameters(
                    "a fully malicious server requires the complete graph".into(),
                ));
            }
            AdversaryClass::Curious if g + d > FEASIBLE_PPM => {
                return Err(Error::NoParameters(format!(
                    "γ + δ = {} ppm exceeds the feasible {FEASIBLE_PPM} ppm for a curious server",
                    g + d
                )));
            }
            AdversaryClass::SemiMalicious if g + 2 * d > FEASIBLE_PPM => {
                return Err(Error::NoParameters(format!(
                    "γ + 2δ = {} ppm exceeds the feasible {FEASIBLE_PPM} ppm for a \
                     semi-malicious server",
                    g + 2 * d
                )));
            }
            _ => {}
        }
        let per_event = Ext::pow2(-i64::from(PRIVACY_BITS + 1));
        Ok(HararyTargets {
            c,
            class,
            model,
            per_event,
            privacy_per_client: per_event.mul_ratio(1, n as u64),
            correctness_per_client: Ext::pow2(-i64::from(CORRECTNESS_BITS)).mul_ratio(1, n as u64),
        })
    }

    /// Π_{i<f+1} (B−i)/(n−i) from Π_{i<f}, B = n_C + n_D bad clients.
    fn extend_all_bad(&self, all_bad: Ext, f: u64) -> Ext {
        let bad = (self.c.corrupt + self.c.dropouts) as u64;
        all_bad.mul_ratio(bad.saturating_sub(f), self.c.n as u64 - f)
    }

    /// Π_{i<k} (B−i)/(n−i), the probability that k given clients are all bad.
    fn all_bad(&self, k: u64) -> Ext {
        (0..k).fold(Ext::ONE, |p, f| self.extend_all_bad(p, f))
    }

    /// The least threshold at degree k (k < n − 1, `all_bad` = [`Self::all_bad`] of k), or
    /// `None` when no threshold works there: privacy event 1 (the ring of honest survivors
    /// disconnects) is too likely, or correctness already fails at the least threshold privacy
    /// allows (a larger one only needs more surviving holders). An error when that threshold
    /// breaks the consistency rule.
    fn least_threshold_at(&self, k: u64, all_bad: Ext) -> Result<Option<u64>> {
        let n64 = self.c.n as u64;
        let disconnect = all_bad.mul_ratio(n64 * (n64 - k - 1), 2);
        if !disconnect.lt(self.per_event) {
            return Ok(None);
        }
        let t = self.privacy_threshold(k);
        if !self.correct(k, t) {
            return Ok(None);
        }
        if self.class != AdversaryClass::Curious {
            self.c.check_consistency_rule(t as usize)?;
        }
        Ok(Some(t))
    }

    /// The least threshold privacy event 2 allows at degree k (never below 2, as in FCP).
    fn privacy_threshold(&self, k: u64) -> u64 {
        let n64 = self.c.n as u64;
        let neighbour_pool = if self.model.neighbours_exclude_self { n64 - 1 } else { n64 };
        let corrupt_neighbours =
            Hypergeometric { pop: neighbour_pool, marked: self.c.corrupt as u64, draws: k };
        let a = corrupt_neighbours.least_rare_count(self.privacy_per_client);
        match self.class {
            AdversaryClass::SemiMalicious if self.model.self_share_in_semi_malicious_rule => {
                (k + a) / 2 + 1
            }
            AdversaryClass::SemiMalicious => (k + a - 1) / 2 + 1,
            _ => a,
        }
        .max(2)
    }

    /// Correctness at (k, t): a client keeps t surviving holders but with probability below
    /// 2⁻²⁰/n.
    fn correct(&self, k: u64, t: u64) -> bool {
        let surviving_neighbours =
            Hypergeometric { pop: self.c.n as u64, marked: self.c.survivors as u64, draws: k };
        surviving_neighbours.lower_tail_below(t, self.correctness_per_client)
    }
}

/// The number of marked items among `draws` drawn without replacement from `pop` items, of
/// which `marked` are marked.
#[derive(Debug, Clone, Copy)]
struct Hypergeometric {
    pop: u64,
    marked: u64,
    draws: u64,
}

impl Hypergeometric {
    /// The least and greatest possible values.
    fn support(&self) -> (u64, u64) {
        (self.draws.saturating_sub(self.pop - self.marked), self.draws.min(self.marked))
    }

    /// The ratio P(X = x+1) / P(X = x) as (numerator, denominator), for lo ≤ x < hi.
    fn ratio(&self, x: u64) -> (u64, u64) {
        let num = (self.marked - x) * (self.draws - x);
        let den = (x + 1) * (self.pop - self.marked + x + 1 - self.draws);
        (num, den)
    }

    /// Weights proportional to P(X = x) for x = first, first + 1, …: the mode has weight 1,
    /// and the walk away from it on either side stops below [`NEGLIGIBLE`]. The weights are
    /// log-concave, so the dropped rest of a side is at most the last weight over 1 − its ratio:
    /// below 2⁻¹¹⁰ of the total for any support of at most [`MAX_CLIENTS`] values, far below the
    /// 2⁻⁶¹ (2⁻⁴¹/n) tails we compare.
    fn weights(&self) -> (u64, Vec<Ext>) {
        let (lo, hi) = self.support();
        let mode = ((self.draws + 1) * (self.marked + 1) / (self.pop + 2)).clamp(lo, hi);
        let mut below = Vec::new();
        let mut cur = Ext::ONE;
        let mut x = mode;
        while x > lo {
            let (num, den) = self.ratio(x - 1);
            cur = cur.mul_ratio(den, num);
            if cur.lt(NEGLIGIBLE) {
                break;
            }
            below.push(cur);
            x -= 1;
        }
        let first = mode - below.len() as u64;
        below.reverse();
        let mut w = below;
        w.push(Ext::ONE);
        let mut cur = Ext::ONE;
        for x in mode..hi {
            let (num, den) = self.ratio(x);
            cur = cur.mul_ratio(num, den);
            if cur.lt(NEGLIGIBLE) {
                break;
            }
            w.push(cur);
        }
        (first, w)
    }

    /// The least a with P(X ≥ a) < eps, for eps ≥ 2⁻⁹⁰.
    fn least_rare_count(&self, eps: Ext) -> u64 {
        let (first, w) = self.weights();
        // tails[i] = Σ_{j ≥ i} w[j], summed from the top.
        let mut tails = vec![Ext::ZERO; w.len() + 1];
        for i in (0..w.len()).rev() {
            tails[i] = tails[i + 1].add(w[i]);
        }
        let bound = tails[0].mul(eps);
        let mut i = w.len();
        while i > 0 && tails[i - 1].lt(bound) {
            i -= 1;
        }
        first + i as u64
    }

    /// Whether P(X < t) < eps, for eps ≥ 2⁻⁹⁰.
    fn lower_tail_below(&self, t: u64, eps: Ext) -> bool {
        let (first, w) = self.weights();
        let below = t.saturating_sub(first).min(w.len() as u64) as usize;
        let mut total = Ext::ZERO;
        let mut tail = Ext::ZERO;
        for (i, &x) in w.iter().enumerate() {
            if i == below {
                tail = total;
            }
            total = total.add(x);
        }
        if below == w.len() {
            tail = total;
        }
        tail.lt(total.mul(eps))
    }
}

/// Weights below this fraction of the mode's are dropped (see [`Hypergeometric::weights`]).
const NEGLIGIBLE: Ext = Ext { m: 1.0, e: -128 };

/// A non-negative number m · 2^e with m in [1, 2) (or m = 0): an `f64` whose exponent cannot
/// overflow or underflow. Only exactly rounded IEEE-754 operations and exact power-of-two
/// scalings are used, so every machine computes the same bits.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ext {
    m: f64,
    e: i64,
}

impl Ext {
    const ZERO: Ext = Ext { m: 0.0, e: 0 };
    const ONE: Ext = Ext { m: 1.0, e: 0 };

    /// 2^e.
    fn pow2(e: i64) -> Ext {
        Ext { m: 1.0, e }
    }

    /// Splits a finite, non-negative, normal (or zero) `f64` into mantissa and exponent.
    fn normalise(m: f64, e: i64) -> Ext {
        if m == 0.0 {
            return Ext::ZERO;
        }
        debug_assert!(m.is_normal() && m > 0.0, "Ext only holds normal positive values");
        let bits = m.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
        Ext { m: mantissa, e: e + exp }
    }

    /// An integer below 2⁵³ (exact).
    fn from_int(x: u64) -> Ext {
        debug_assert!(x < 1 << 53, "integer {x} is not exact in f64");
        Ext::normalise(x as f64, 0)
    }

    fn mul(self, o: Ext) -> Ext {
        Ext::normalise(self.m * o.m, self.e + o.e)
    }

    /// self · num / den, den > 0.
    fn mul_ratio(self, num: u64, den: u64) -> Ext {
        let d = Ext::from_int(den);
        let p = self.mul(Ext::from_int(num));
        if p.m == 0.0 {
            return Ext::ZERO;
        }
        Ext::normalise(p.m / d.m, p.e - d.e)
    }

    fn add(self, o: Ext) -> Ext {
        if self.m == 0.0 {
            return o;
        }
        if o.m == 0.0 {
            return self;
        }
        let (big, small) = if (self.e, self.m) >= (o.e, o.m) { (self, o) } else { (o, self) };
        let shift = big.e - small.e;
        if shift > 60 {
            // Below half an ulp of big: IEEE addition would return big as well.
            return big;
        }
        let scale = f64::from_bits(((1023 - shift) as u64) << 52);
        Ext::normalise(big.m + small.m * scale, big.e)
    }

    /// self < o.
    fn lt(self, o: Ext) -> bool {
        match (self.m == 0.0, o.m == 0.0) {
            (_, true) => false,
            (true, false) => true,
            (false, false) => (self.e, self.m) < (o.e, o.m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PROTOCOL_VERSION;
    use crate::ids::{AttemptNonce, CheckpointHash, ClientId, RoundId, TaskId};
    use crate::quant::QuantParams;

    const C: AdversaryClass = AdversaryClass::Curious;
    const S: AdversaryClass = AdversaryClass::SemiMalicious;
    const M: AdversaryClass = AdversaryClass::Malicious;

    fn ppm(x: f64) -> u32 {
        (x * f64::from(PPM)).round() as u32
    }

    fn plan(
        kind: GraphKind,
        n: usize,
        d: u32,
        g: u32,
        class: AdversaryClass,
        p: GraphParams,
    ) -> RoundPlan {
        RoundPlan {
            version: PROTOCOL_VERSION,
            task_id: TaskId([1; 16]),
            round_id: RoundId(1),
            attempt: AttemptNonce([2; 16]),
            selected: (0..n as u32)
                .map(|i| {
                    let mut id = [0u8; 32];
                    id[..4].copy_from_slice(&i.to_be_bytes());
                    ClientId(id)
                })
                .collect(),
            graph: kind,
            degree: p.degree,
            threshold: p.threshold,
            dropout_ppm: d,
            corrupt_ppm: g,
            adversary: class,
            graph_seed: [3; 32],
            dim: 1,
            quant: QuantParams { clip: 1.0, value_scale: 1.0, weight_scale: 1.0, max_examples: 1 },
            checkpoint: CheckpointHash([4; 32]),
            cert_time: 0,
        }
    }

    #[test]
    fn known_values_n1000() {
        // FCP's graph_parameter_finder_test: n = 1000, γ = 0.05, δ = 0.33.
        let (d, g) = (ppm(0.33), ppm(0.05));
        assert_eq!(harary_params(1000, d, g, C), Ok(GraphParams { degree: 72, threshold: 24 }));
        assert_eq!(harary_params(1000, d, g, S), Ok(GraphParams { degree: 398, threshold: 223 }));
    }

    /// FCP's table (graph_parameter_finder_test.cc): (n, γ, δ, semi-malicious, k, t).
    const FCP_TABLE: &[(usize, f64, f64, bool, u32, u32)] = &[
        (100, 0.45, 0.45, false, 92, 46),
        (1000, 0.45, 0.45, false, 822, 417),
        (10000, 0.45, 0.45, false, 3494, 1771),
        (100000, 0.45, 0.45, false, 5508, 2788),
        (1000000, 0.45, 0.45, false, 6240, 3156),
        (10, 0.33, 0.33, false, 8, 4),
        (100, 0.33, 0.33, false, 68, 34),
        (1000, 0.33, 0.33, false, 286, 150),
        (10000, 0.33, 0.33, false, 422, 221),
        (100000, 0.33, 0.33, false, 480, 251),
        (1000000, 0.33, 0.33, false, 518, 270),
        (100, 0.3, 0.3, true, 92, 62),
        (1000, 0.3, 0.3, true, 872, 584),
        (10000, 0.3, 0.3, true, 4822, 3230),
        (100000, 0.3, 0.3, true, 9388, 6286),
        (1000000, 0.3, 0.3, true, 11136, 7454),
        (10, 0.05, 0.33, false, 4, 2),
        (100, 0.05, 0.33, false, 28, 6),
        (1000, 0.05, 0.33, false, 72, 24),
        (10000, 0.05, 0.33, false, 86, 29),
        (100000, 0.05, 0.33, false, 96, 32),
        (1000000, 0.05, 0.33, false, 102, 34),
        (10, 0.05, 0.33, true, 8, 5),
        (100, 0.05, 0.33, true, 72, 39),
        (1000, 0.05, 0.33, true, 398, 223),
        (10000, 0.05, 0.33, true, 746, 420),
        (100000, 0.05, 0.33, true, 882, 496),
        (1000000, 0.05, 0.33, true, 970, 545),
        (10, 0.33, 0.05, false, 4, 4),
        (100, 0.33, 0.05, false, 34, 29),
        (1000, 0.33, 0.05, false, 78, 60),
        (10000, 0.33, 0.05, false, 92, 70),
        (100000, 0.33, 0.05, false, 102, 77),
        (1000000, 0.33, 0.05, false, 110, 83),
        (10, 0.33, 0.05, true, 4, 4),
        (100, 0.33, 0.05, true, 42, 37),
        (1000, 0.33, 0.05, true, 132, 109),
        (10000, 0.33, 0.05, true, 178, 146),
        (100000, 0.33, 0.05, true, 196, 160),
        (1000000, 0.33, 0.05, true, 212, 173),
        (10, 0.05, 0.05, false, 2, 2),
        (100, 0.05, 0.05, false, 12, 6),
        (1000, 0.05, 0.05, false, 30, 17),
        (10000, 0.05, 0.05, false, 34, 20),
        (100000, 0.05, 0.05, false, 36, 21),
        (1000000, 0.05, 0.05, false, 38, 22),
        (10, 0.05, 0.05, true, 2, 2),
        (100, 0.05, 0.05, true, 16, 11),
        (1000, 0.05, 0.05, true, 52, 37),
        (10000, 0.05, 0.05, true, 62, 44),
        (100000, 0.05, 0.05, true, 68, 48),
        (1000000, 0.05, 0.05, true, 74, 52),
        (10, 0.33, 0.0, false, 4, 4),
        (100, 0.33, 0.0, false, 26, 25),
        (1000, 0.33, 0.0, false, 38, 36),
        (10000, 0.33, 0.0, false, 42, 40),
        (100000, 0.33, 0.0, false, 46, 44),
        (1000000, 0.33, 0.0, false, 50, 47),
        (10, 0.33, 0.0, true, 4, 4),
        (100, 0.33, 0.0, true, 26, 26),
        (1000, 0.33, 0.0, true, 38, 37),
        (10000, 0.33, 0.0, true, 42, 41),
        (100000, 0.33, 0.0, true, 46, 45),
        (1000000, 0.33, 0.0, true, 50, 49),
        (10, 0.0, 0.33, false, 4, 2),
        (100, 0.0, 0.33, false, 26, 2),
        (1000, 0.0, 0.33, false, 38, 2),
        (10000, 0.0, 0.33, false, 42, 2),
        (100000, 0.0, 0.33, false, 46, 2),
        (1000000, 0.0, 0.33, false, 50, 2),
        (10, 0.0, 0.33, true, 8, 5),
        (100, 0.0, 0.33, true, 68, 35),
        (1000, 0.0, 0.33, true, 228, 115),
        (10000, 0.0, 0.33, true, 326, 164),
        (100000, 0.0, 0.33, true, 372, 187),
        (1000000, 0.0, 0.33, true, 410, 206),
        (10, 0.0, 0.0, false, 2, 2),
        (100, 0.0, 0.0, false, 2, 2),
        (1000, 0.0, 0.0, false, 2, 2),
        (10000, 0.0, 0.0, false, 2, 2),
        (100000, 0.0, 0.0, false, 2, 2),
        (1000000, 0.0, 0.0, false, 2, 2),
        (10, 0.0, 0.0, true, 2, 2),
        (100, 0.0, 0.0, true, 2, 2),
        (1000, 0.0, 0.0, true, 2, 2),
        (10000, 0.0, 0.0, true, 2, 2),
        (100000, 0.0, 0.0, true, 2, 2),
        (1000000, 0.0, 0.0, true, 2, 2),
    ];

    #[test]
    fn fcp_model_reproduces_fcp_table() {
        // Our probability code under FCP's modelling choices gives FCP's numbers, except where
        // FCP applies t ≥ 2 after its correctness check (n = 10, t = 2: with k = 4, P[fewer than
        // 2 of 4 neighbours survive] = 1/30, so k = 4 fails the 2⁻²⁰ target at t = 2).
        for &(n, g, d, semi, k, t) in FCP_TABLE {
            let class = if semi { S } else { C };
            let got = harary_search(n, ppm(d), ppm(g), class, Model::FCP).expect("feasible");
            let want = if n == 10 && !semi && d == 0.33 && g <= 0.05 {
                GraphParams { degree: 6, threshold: 2 }
            } else {
                GraphParams { degree: k, threshold: t }
            };
            assert_eq!(got, want, "n = {n}, γ = {g}, δ = {d}, semi-malicious = {semi}");
        }
    }

    #[test]
    fn fedsec_model_is_never_weaker_than_fcp() {
        for &(n, g, d, semi, k, t) in FCP_TABLE {
            let class = if semi { S } else { C };
            let got = harary_params(n, ppm(d), ppm(g), class).expect("feasible");
            assert!(got.degree >= k, "n = {n}, γ = {g}, δ = {d}: k {} < FCP {k}", got.degree);
            if got.degree == k {
                assert!(got.threshold >= t, "n = {n}, γ = {g}, δ = {d}: t below FCP's");
            }
        }
    }

    #[test]
    fn fedsec_model_matches_exact_rational_reference() {
        // Computed independently with exact rational arithmetic (Python `fractions`, exact
        // binomials) from the rules in the module docs.
        for (n, g, d, class, k, t) in [
            (1000, 0.45, 0.45, C, 824, 418),
            (1000, 0.3, 0.3, S, 876, 587),
            (1000, 0.05, 0.33, C, 72, 24),
            (1000, 0.05, 0.33, S, 398, 223),
            (1000, 0.33, 0.05, C, 78, 60),
            (1000, 0.33, 0.05, S, 138, 114),
            (100, 0.05, 0.33, S, 74, 41),
            (100, 0.33, 0.05, S, 44, 39),
        ] {
            assert_eq!(
                harary_params(n, ppm(d), ppm(g), class),
                Ok(GraphParams { degree: k, threshold: t }),
                "n = {n}, γ = {g}, δ = {d}, {class:?}"
            );
        }
    }

    #[test]
    fn more_dropout_or_corruption_never_lowers_the_degree() {
        for n in [50usize, 200, 1000, 5000] {
            for class in [C, S] {
                for g in [0, 20_000, 50_000, 100_000, 200_000] {
                    let mut last = 0;
                    for d in (0..=450_000).step_by(25_000) {
                        if let Ok(p) = harary_params(n, d, g, class) {
                            assert!(p.degree >= last, "n = {n}, γ = {g}, δ = {d}, {class:?}");
                            last = p.degree;
                        }
                    }
                }
                for d in [0, 50_000, 100_000, 330_000] {
                    let mut last = 0;
                    for g in (0..=500_000).step_by(25_000) {
                        if let Ok(p) = harary_params(n, d, g, class) {
                            assert!(p.degree >= last, "n = {n}, γ = {g}, δ = {d}, {class:?}");
                            last = p.degree;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn complete_graph_rules() {
        let (d, g) = (ppm(0.33), ppm(0.05));
        // t = ⌈(1−δ)n⌉ = 670, degree n − 1; 2·670 > 1000 + 50.
        for class in [C, S, M] {
            assert_eq!(
                complete_params(1000, d, g, class),
                Ok(GraphParams { degree: 999, threshold: 670 })
            );
        }
        // ⌈(1−δ)n⌉ is computed exactly: δ = 1/3 of 1000 leaves 667 (not 666).
        assert_eq!(complete_params(1000, 333_333, 0, S).map(|p| p.threshold), Ok(667));
        // q > (n + n_C)/2 at the boundary: n = 1000, δ = 0.4 gives q = 600; n_C = 200 makes
        // (n + n_C)/2 = 600, refused; n_C = 199 is accepted.
        for class in [S, M] {
            assert!(matches!(
                complete_params(1000, ppm(0.4), ppm(0.2), class),
                Err(Error::NoParameters(_))
            ));
            assert_eq!(
                complete_params(1000, ppm(0.4), ppm(0.199), class),
                Ok(GraphParams { degree: 999, threshold: 600 })
            );
        }
        // Curious only needs t > n_C: fine where the consistency rule fails...
        assert_eq!(
            complete_params(1000, ppm(0.4), ppm(0.2), C),
            Ok(GraphParams { degree: 999, threshold: 600 })
        );
        // ...but not when the corrupt clients alone could reach t.
        assert!(matches!(
            complete_params(1000, ppm(0.5), ppm(0.5), C),
            Err(Error::NoParameters(_))
        ));
        // t is at least 2.
        assert_eq!(complete_params(2, ppm(0.5), 0, C), Ok(GraphParams { degree: 1, threshold: 2 }));
        // choose dispatches, and a remembered answer (the second call) is the same one.
        for _ in 0..2 {
            assert_eq!(choose(GraphKind::Complete, 1000, d, g, S), complete_params(1000, d, g, S));
            assert_eq!(choose(GraphKind::Harary, 1000, d, g, S), harary_params(1000, d, g, S));
            assert_eq!(choose(GraphKind::Harary, 999, d, g, S), harary_params(999, d, g, S));
            let refused = choose(GraphKind::Complete, 1000, ppm(0.5), ppm(0.5), C);
            assert_eq!(refused, complete_params(1000, ppm(0.5), ppm(0.5), C));
            assert!(refused.is_err());
        }
    }

    #[test]
    fn impossible_inputs_are_refused() {
        let no_params = |r: Result<GraphParams>| matches!(r, Err(Error::NoParameters(_)));
        // A fully malicious server needs the complete graph.
        assert!(no_params(harary_params(1000, ppm(0.1), ppm(0.1), M)));
        // Too few clients.
        for n in [0, 1] {
            assert!(no_params(harary_params(n, 0, 0, C)));
            assert!(no_params(complete_params(n, 0, 0, C)));
        }
        // Beyond FCP's feasibility limits (its own test cases).
        assert!(no_params(harary_params(1000, ppm(0.5), ppm(0.5), C)));
        assert!(no_params(harary_params(1000, ppm(0.5), ppm(0.5), S)));
        assert!(no_params(harary_params(1000, ppm(0.33), ppm(0.33), S)));
        assert!(no_params(harary_params(1000, ppm(0.46), ppm(0.0), S)));
        // Exactly at the limit is fine; one ppm above is not.
        assert!(harary_params(1000, 450_000, 450_000, C).is_ok());
        assert!(no_params(harary_params(1000, 450_001, 450_000, C)));
        assert!(harary_params(1000, 300_000, 300_000, S).is_ok());
        assert!(no_params(harary_params(1000, 300_000, 300_001, S)));
        // Fractions of one or more are malformed.
        for (d, g) in [(PPM, 0), (0, PPM), (u32::MAX, 0)] {
            assert!(matches!(harary_params(1000, d, g, C), Err(Error::InvalidPlan(_))));
            assert!(matches!(complete_params(1000, d, g, C), Err(Error::InvalidPlan(_))));
        }
        // Too many clients for the search.
        assert!(no_params(harary_params(MAX_CLIENTS + 1, 0, 0, C)));
    }

    #[test]
    fn small_n_falls_back_to_the_complete_graph_or_refuses() {
        for n in 2..60 {
            for (d, g) in
                [(0, 0), (ppm(0.05), ppm(0.05)), (ppm(0.33), ppm(0.05)), (ppm(0.2), ppm(0.3))]
            {
                for class in [C, S] {
                    match harary_params(n, d, g, class) {
                        Ok(p) if p.degree as usize == n - 1 => {
                            assert_eq!(n % 2, 1, "k = n − 1 must be even");
                            assert_eq!(complete_params(n, d, g, class), Ok(p));
                        }
                        Ok(p) => assert!((p.degree as usize) < n - 1),
                        Err(Error::NoParameters(why)) => {
                            // Either the inputs are infeasible or n − 1 is odd.
                            assert!(
                                n % 2 == 0 || why.contains("feasible") || why.contains("q ="),
                                "n = {n}: {why}"
                            );
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            }
        }
        assert_eq!(harary_params(3, 0, 0, C), Ok(GraphParams { degree: 2, threshold: 3 }));
        assert!(matches!(harary_params(2, 0, 0, C), Err(Error::NoParameters(_))));
    }

    #[test]
    fn chosen_parameters_pass_plan_validation() {
        for n in [2usize, 3, 5, 10, 11, 31, 100, 257, 1000] {
            for (d, g) in [
                (0, 0),
                (ppm(0.05), ppm(0.05)),
                (ppm(0.33), ppm(0.05)),
                (ppm(0.05), ppm(0.33)),
                (ppm(0.3), ppm(0.3)),
                (ppm(0.45), ppm(0.45)),
            ] {
                for class in [C, S, M] {
                    for kind in [GraphKind::Complete, GraphKind::Harary] {
                        let Ok(p) = choose(kind, n, d, g, class) else { continue };
                        assert!(p.threshold >= 1 && p.threshold <= p.degree + 1);
                        if kind == GraphKind::Harary {
                            assert_eq!(p.degree % 2, 0);
                            assert!((p.degree as usize) < n);
                        } else {
                            assert_eq!(p.degree as usize, n - 1);
                        }
                        let plan = plan(kind, n, d, g, class, p);
                        assert_eq!(
                            plan.validate(),
                            Ok(()),
                            "n = {n}, δ = {d}, γ = {g}, {class:?}, {kind:?}"
                        );
                        if class != C {
                            assert!(2 * plan.q() > n + plan.assumed_corrupt());
                        }
                        assert_eq!(for_plan(&plan), Ok(p));
                        let graph =
                            crate::graph::Graph::from_plan(&plan).expect("graph of a valid plan");
                        assert_eq!(graph.degree(), p.degree as usize);
                    }
                }
            }
        }
    }

    /// C(n, k) exactly (n ≤ 64).
    fn binomial(n: u64, k: u64) -> u128 {
        if k > n {
            return 0;
        }
        (0..k).fold(1u128, |acc, i| acc * u128::from(n - i) / u128::from(i + 1))
    }

    #[test]
    fn hypergeometric_tails_match_exact_integers() {
        let mut cases = 0;
        for pop in [2u64, 5, 13, 40, 64] {
            for marked in [0, 1, pop / 3, pop / 2, pop - 1, pop] {
                for draws in [1, 2, pop / 4, pop / 2, pop - 1, pop] {
                    if draws == 0 || draws > pop {
                        continue;
                    }
                    let h = Hypergeometric { pop, marked, draws };
                    let count = |x: u64| binomial(marked, x) * binomial(pop - marked, draws - x);
                    let total = binomial(pop, draws);
                    for e in [1i64, 3, 7, 12, 20] {
                        let eps = Ext::pow2(-e);
                        // P[X ≥ a] < 2^-e  ⟺  Σ_{x ≥ a} count(x) · 2^e < total.
                        let upper = |a: u64| (a..=draws).map(count).sum::<u128>() << e;
                        // A tail exactly equal to eps is decided by rounding; skip those.
                        if !(0..=draws + 1).any(|a| upper(a) == total) {
                            let want =
                                (0..=draws + 1).find(|&a| upper(a) < total).expect("a = k + 1");
                            assert_eq!(h.least_rare_count(eps), want, "{h:?}, eps = 2^-{e}");
                        }
                        for t in 0..=draws + 1 {
                            let lower = (0..t).map(count).sum::<u128>() << e;
                            if lower != total {
                                assert_eq!(
                                    h.lower_tail_below(t, eps),
                                    lower < total,
                                    "{h:?} t = {t}"
                                );
                            }
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100);
    }

    #[test]
    fn extended_floats_are_exact_where_f64_is() {
        let x = Ext::from_int(6).mul_ratio(7, 3);
        assert_eq!((x.m, x.e), (1.75, 3)); // 14 = 1.75 · 2^3
        assert_eq!(Ext::from_int(3).add(Ext::from_int(5)), Ext::from_int(8));
        assert_eq!(Ext::ZERO.add(Ext::ONE), Ext::ONE);
        assert_eq!(Ext::ONE.mul_ratio(0, 5), Ext::ZERO);
        // No underflow: 2^-2000 · 2^2000 = 1, and 2^-2000 is still above zero.
        let tiny = (0..200).fold(Ext::ONE, |acc, _| acc.mul_ratio(1, 1024));
        assert!(Ext::ZERO.lt(tiny));
        assert!(tiny.lt(Ext::pow2(-1999)));
        assert_eq!((0..200).fold(tiny, |acc, _| acc.mul_ratio(1024, 1)), Ext::ONE);
        // Adding something far below half an ulp changes nothing, as in IEEE arithmetic.
        assert_eq!(Ext::ONE.add(Ext::pow2(-61)), Ext::ONE);
        assert_eq!(Ext::ONE.add(Ext::pow2(-52)).m, 1.0 + f64::EPSILON);
        assert!(Ext::pow2(-5).lt(Ext::pow2(-4)));
        assert!(!Ext::ONE.lt(Ext::ONE));
        assert!(!Ext::ONE.lt(Ext::ZERO));
    }

    #[test]
    fn graph_params_serialise_as_degree_and_threshold() {
        let p = GraphParams { degree: 72, threshold: 24 };
        let json = serde_json::to_string(&p).expect("serialises");
        assert_eq!(json, r#"{"degree":72,"threshold":24}"#);
        assert_eq!(serde_json::from_str::<GraphParams>(&json).expect("parses"), p);
    }

    /// The finder's choice passes [`check`]; one less in t fails; every even degree below the
    /// finder's has no threshold at all; a larger degree with its least threshold passes, and
    /// with one less fails.
    #[test]
    fn check_agrees_with_the_finder() {
        for (n, d, g, class) in [
            (100, 0.1, 0.05, S),
            (300, 0.3, 0.05, C),
            (1000, 0.1, 0.05, S),
            (1000, 0.33, 0.05, C),
            (40, 0.1, 0.0, S),
            (25, 0.2, 0.1, C),
        ] {
            let (d, g) = (ppm(d), ppm(g));
            let at = |p: GraphParams| check(GraphKind::Harary, n, d, g, class, p);
            let p = harary_params(n, d, g, class).expect("feasible");
            assert_eq!(at(p), Ok(()), "n = {n}: the finder's {p:?}");
            let lower = GraphParams { threshold: p.threshold - 1, ..p };
            assert!(matches!(at(lower), Err(Error::ParametersMissTargets { .. })), "n = {n}");
            assert_eq!(
                least_threshold(GraphKind::Harary, n, d, g, class, p.degree),
                Ok(p.threshold)
            );
            for k in (2..p.degree).step_by(2) {
                assert!(
                    least_threshold(GraphKind::Harary, n, d, g, class, k).is_err(),
                    "n = {n}: degree {k} below the finder's {}",
                    p.degree
                );
                let t = (k + 1).min(p.threshold);
                assert!(at(GraphParams { degree: k, threshold: t }).is_err(), "n = {n}, k = {k}");
            }
            let k = (p.degree + 10).min(n as u32 - 1) & !1;
            if k > p.degree
                && let Ok(t) = least_threshold(GraphKind::Harary, n, d, g, class, k)
            {
                assert!(t >= 2);
                assert_eq!(at(GraphParams { degree: k, threshold: t }), Ok(()), "n = {n}, k = {k}");
                let lower = GraphParams { degree: k, threshold: t - 1 };
                assert!(at(lower).is_err(), "n = {n}, k = {k}");
            }
        }
    }

    /// Semi-malicious privacy grows with the degree: the finder's threshold is too small for a
    /// degree well above the finder's, which a check of "k and t at least the finder's" misses.
    #[test]
    fn a_larger_degree_needs_a_larger_threshold() {
        let (n, d, g) = (1000, ppm(0.1), ppm(0.05));
        let p = harary_params(n, d, g, S).expect("feasible");
        let k = 2 * p.degree;
        let t = least_threshold(GraphKind::Harary, n, d, g, S, k).expect("a larger degree works");
        assert!(t > p.threshold);
        let finder_t = GraphParams { degree: k, threshold: p.threshold };
        assert!(matches!(
            check(GraphKind::Harary, n, d, g, S, finder_t),
            Err(Error::ParametersMissTargets { .. })
        ));
    }

    #[test]
    fn check_of_the_complete_graph() {
        let (n, d, g) = (500, ppm(0.3), ppm(0.05));
        let at = |degree, threshold| {
            check(GraphKind::Complete, n, d, g, S, GraphParams { degree, threshold })
        };
        assert_eq!(at(499, 350), Ok(()));
        // A threshold above ⌈(1−δ)n⌉ cannot be reached once δn clients drop.
        assert!(matches!(at(499, 351), Err(Error::ParametersMissTargets { .. })));
        assert!(matches!(at(499, 349), Err(Error::ParametersMissTargets { .. })));
        // No plan can have these.
        assert!(matches!(at(498, 350), Err(Error::InvalidPlan(_))));
        assert!(least_threshold(GraphKind::Complete, n, d, g, S, 498).is_err());
        assert!(matches!(
            check(GraphKind::Complete, 3, 0, 0, C, GraphParams { degree: 2, threshold: 4 }),
            Err(Error::InvalidPlan(_))
        ));
        let odd = GraphParams { degree: 7, threshold: 3 };
        assert!(matches!(check(GraphKind::Harary, 40, d, g, S, odd), Err(Error::InvalidPlan(_))));
    }
}
