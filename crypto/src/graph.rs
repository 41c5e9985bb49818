//! The neighbour graph: complete (SecAgg) or Harary H(k, n) over a seeded permutation (SecAgg+).
//!
//! Nodes are canonical indices `0..n` into the plan's sorted selected set U. N(i) are the
//! neighbours of i, i excluded; the share holders of i are H(i) = N(i) ∪ {i}: k + 1 holders,
//! i keeping one share of its own secrets (Bonawitz et al. 2017; the self-edge of FCP's
//! `SecretSharingHararyGraph`).
//!
//! # Complete graph (SecAgg)
//!
//! N(i) = U \ {i}, degree k = n − 1.
//!
//! # Harary graph (SecAgg+, Bell et al. CCS 2020)
//!
//! The n nodes are placed on a ring at the positions of a permutation π drawn from the graph
//! seed: `π[p]` is the node at ring position p. Each node is connected to the k/2 nearest
//! positions on each side (k even, 2 ≤ k ≤ n − 1), so i and j are neighbours exactly when the
//! ring distance between their positions is at most k/2. This is FCP's
//! `SecretSharingHararyGraph` (google-parfait/federated-compute) with FCP's "degree" being our
//! k + 1, because FCP counts the self-edge; for k = n − 1 (n odd) it is the complete graph.
//!
//! ## The permutation, bit-exactly
//!
//! Every party must compute the same π from the plan, so π is specified here, not left to a
//! library shuffle whose output may change between versions:
//!
//! 1. `key = HKDF-SHA256(salt = none, ikm = graph_seed, info = lp("fedsec/v1/graph") ‖ lp(ctx))`,
//!    32 bytes, where `lp(x)` is x prefixed by its length as a u64 big-endian and `ctx` is the
//!    round context ([`crate::kdf::derive`] with [`Label::Graph`] and no further parts).
//! 2. `key` keys the ChaCha20 keystream (20 rounds, RFC 8439 block function) with an all-zero
//!    nonce and the block counter starting at 0; the stream is read as consecutive
//!    little-endian `u32` words w₀, w₁, … This is `chacha20::ChaCha20Rng::from_seed(key)`
//!    and its `next_u32` (its 64-bit counter and 64-bit nonce match RFC 8439's 32-bit counter
//!    and 96-bit nonce for the first 2³² blocks, far more than a shuffle reads).
//! 3. Start from `a = [0, 1, …, n − 1]`. For `i` from `n − 1` down to `1`: let `r = i + 1` and
//!    `limit = 2³² − (2³² mod r)` (the largest multiple of r not above 2³²); take the next word
//!    `w`, and while `w ≥ limit` discard it and take the next one; then `j = w mod r` and swap
//!    `a[i]` and `a[j]`. (Fisher–Yates with rejection sampling: j is exactly uniform on 0..=i.)
//! 4. π = a.
//!
//! A known-answer test (`tests/vectors/graph_permutation.json`) pins the output.

use rand_core::{Rng, SeedableRng};

use crate::context::{GraphKind, RoundContext, RoundPlan};
use crate::error::{Error, PlanRule, Result};
use crate::kdf::{self, Label};

/// The neighbour graph of one round over canonical indices `0..n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    n: usize,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// Everyone is everyone else's neighbour.
    Complete,
    /// Harary graph H(k, n): `perm[p]` is the node at ring position p, `pos[i]` the position
    /// of node i (the inverse permutation).
    Harary { k: usize, perm: Vec<u32>, pos: Vec<u32> },
}

impl Graph {
    /// Builds the graph of a plan (`plan.graph`, `plan.degree`, `plan.graph_seed`, `plan.n()`),
    /// with `ctx = plan.context()`. The plan should have passed [`RoundPlan::validate`]; the
    /// degree is checked again here.
    pub fn from_plan(plan: &RoundPlan) -> Result<Graph> {
        let n = plan.n();
        let k = plan.degree as usize;
        match plan.graph {
            GraphKind::Complete => {
                if n < 2 || k != n - 1 {
                    return Err(Error::InvalidPlan(PlanRule::CompleteDegree { n, degree: k }));
                }
                Ok(Graph::complete(n))
            }
            GraphKind::Harary => Graph::harary(n, k, &plan.graph_seed, &plan.context()),
        }
    }

    /// The complete graph over `n` nodes: degree n − 1.
    pub fn complete(n: usize) -> Graph {
        Graph { n, shape: Shape::Complete }
    }

    /// The Harary graph H(k, n) over the permutation drawn from `seed` and `ctx` (see the
    /// module docs for the exact procedure).
    ///
    /// Errors with [`Error::InvalidPlan`] unless n ≥ 2 and k is even with 2 ≤ k ≤ n − 1.
    pub fn harary(n: usize, k: usize, seed: &[u8; 32], ctx: &RoundContext) -> Result<Graph> {
        if n < 2 {
            return Err(Error::InvalidPlan(PlanRule::TooFewNodes(n)));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::InvalidPlan(PlanRule::TooManyNodes(n)));
        }
        if !k.is_multiple_of(2) || k == 0 || k >= n {
            return Err(Error::InvalidPlan(PlanRule::HararyDegree { n, degree: k }));
        }
        let perm = permutation(n, seed, ctx);
        let mut pos = vec![0u32; n];
        for (p, &node) in perm.iter().enumerate() {
            pos[node as usize] = p as u32;
        }
        Ok(Graph { n, shape: Shape::Harary { k, perm, pos } })
    }

    /// Number of nodes n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Complete or Harary.
    pub fn kind(&self) -> GraphKind {
        match self.shape {
            Shape::Complete => GraphKind::Complete,
            Shape::Harary { .. } => GraphKind::Harary,
        }
    }

    /// k: the number of neighbours of each node, itself excluded (n − 1 for the complete graph).
    pub fn degree(&self) -> usize {
        match &self.shape {
            Shape::Complete => self.n.saturating_sub(1),
            Shape::Harary { k, .. } => *k,
        }
    }

    /// N(i): the neighbours of canonical index `i`, `i` excluded, sorted ascending. Empty when
    /// `i` is not a node. O(k log k) for the Harary graph.
    pub fn neighbours(&self, i: usize) -> Vec<usize> {
        if i >= self.n {
            return Vec::new();
        }
        match &self.shape {
            Shape::Complete => (0..self.n).filter(|&j| j != i).collect(),
            Shape::Harary { k, perm, pos } => {
                let n = self.n;
                let p = pos[i] as usize;
                let mut out = Vec::with_capacity(*k);
                for d in 1..=k / 2 {
                    out.push(perm[(p + d) % n] as usize);
                    out.push(perm[(p + n - d) % n] as usize);
                }
                out.sort_unstable();
                out
            }
        }
    }

    /// Whether `i` and `j` are neighbours; false for `i == j` and for indices that are not
    /// nodes. O(1).
    pub fn are_neighbours(&self, i: usize, j: usize) -> bool {
        if i == j || i >= self.n || j >= self.n {
            return false;
        }
        match &self.shape {
            Shape::Complete => true,
            Shape::Harary { k, pos, .. } => {
                let d = (pos[i] as usize).abs_diff(pos[j] as usize);
                d.min(self.n - d) <= k / 2
            }
        }
    }

    /// H(i) = N(i) ∪ {i}, sorted ascending: the share holders of `i` (k + 1 of them). Empty when
    /// `i` is not a node.
    pub fn holders(&self, i: usize) -> Vec<usize> {
        if i >= self.n {
            return Vec::new();
        }
        let mut out = self.neighbours(i);
        let at = out.partition_point(|&j| j < i);
        out.insert(at, i);
        out
    }
}

/// The ring permutation π of the module docs: `π[p]` is the node at ring position p.
fn permutation(n: usize, seed: &[u8; 32], ctx: &RoundContext) -> Vec<u32> {
    let key = kdf::derive::<32>(seed, Label::Graph, ctx, &[]);
    let mut rng = chacha20::ChaCha20Rng::from_seed(*key);
    let mut a: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = uniform_below(&mut rng, i as u32 + 1);
        a.swap(i, j as usize);
    }
    a
}

/// A uniform integer in `0..range` (range ≥ 1) from 32-bit words, by rejection: words at or
/// above the largest multiple of `range` that is ≤ 2³² are discarded.
fn uniform_below<R: Rng + ?Sized>(rng: &mut R, range: u32) -> u32 {
    let range64 = u64::from(range);
    let limit = (1u64 << 32) - (1u64 << 32) % range64;
    loop {
        let w = u64::from(rng.next_u32());
        if w < limit {
            return (w % range64) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: [u8; 32] = [1u8; 32];
    const CTX: RoundContext = RoundContext([2u8; 32]);

    fn perm_of(g: &Graph) -> Vec<u32> {
        match &g.shape {
            Shape::Harary { perm, .. } => perm.clone(),
            Shape::Complete => panic!("not a Harary graph"),
        }
    }

    /// Checks every structural property of a Harary graph against a brute-force adjacency.
    fn check_harary(n: usize, k: usize, seed: &[u8; 32], ctx: &RoundContext) {
        let g = Graph::harary(n, k, seed, ctx).expect("valid parameters");
        assert_eq!(g.n(), n);
        assert_eq!(g.degree(), k);
        assert_eq!(g.kind(), GraphKind::Harary);
        for i in 0..n {
            let nb = g.neighbours(i);
            assert_eq!(nb.len(), k, "node {i} of H({k}, {n}) is not k-regular");
            assert!(nb.windows(2).all(|w| w[0] < w[1]), "neighbours not sorted and unique");
            assert!(!nb.contains(&i), "node {i} is its own neighbour");
            for j in 0..n {
                let listed = nb.binary_search(&j).is_ok();
                assert_eq!(g.are_neighbours(i, j), listed, "are_neighbours({i}, {j}) disagrees");
                assert_eq!(g.are_neighbours(i, j), g.are_neighbours(j, i), "not symmetric");
            }
            let h = g.holders(i);
            assert_eq!(h.len(), k + 1);
            assert!(h.windows(2).all(|w| w[0] < w[1]));
            assert!(h.contains(&i));
        }
    }

    #[test]
    fn harary_is_regular_and_symmetric() {
        for (n, k) in [
            (3, 2),
            (4, 2),
            (5, 2),
            (5, 4),
            (10, 2),
            (10, 4),
            (10, 8),
            (11, 10),
            (17, 6),
            (64, 16),
            (101, 100),
            (257, 72),
        ] {
            check_harary(n, k, &SEED, &CTX);
        }
    }

    #[test]
    fn harary_of_degree_n_minus_one_is_complete() {
        for n in [3usize, 5, 9, 21] {
            let g = Graph::harary(n, n - 1, &SEED, &CTX).expect("valid");
            let c = Graph::complete(n);
            for i in 0..n {
                assert_eq!(g.neighbours(i), c.neighbours(i));
                assert_eq!(g.holders(i), (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn harary_neighbours_are_ring_neighbours() {
        // N(i) is exactly the nodes at ring distance 1..=k/2 from i's position.
        let (n, k) = (30, 6);
        let g = Graph::harary(n, k, &SEED, &CTX).expect("valid");
        let perm = perm_of(&g);
        for p in 0..n {
            let node = perm[p] as usize;
            let mut want: Vec<usize> = (1..=k / 2)
                .flat_map(|d| [perm[(p + d) % n] as usize, perm[(p + n - d) % n] as usize])
                .collect();
            want.sort_unstable();
            assert_eq!(g.neighbours(node), want);
        }
    }

    fn plan(graph: GraphKind, n: usize, degree: u32) -> RoundPlan {
        use crate::context::{AdversaryClass, PROTOCOL_VERSION};
        use crate::ids::{AttemptNonce, CheckpointHash, ClientId, RoundId, TaskId};
        RoundPlan {
            version: PROTOCOL_VERSION,
            task_id: TaskId([1; 16]),
            round_id: RoundId(7),
            attempt: AttemptNonce([2; 16]),
            selected: (0..n as u8).map(|i| ClientId([i; 32])).collect(),
            graph,
            degree,
            threshold: 2,
            dropout_ppm: 0,
            corrupt_ppm: 0,
            adversary: AdversaryClass::Curious,
            graph_seed: [9; 32],
            dim: 1,
            quant: crate::quant::QuantParams {
                clip: 1.0,
                value_scale: 1.0,
                weight_scale: 1.0,
                max_examples: 1,
            },
            checkpoint: CheckpointHash([3; 32]),
            cert_time: 0,
        }
    }

    #[test]
    fn from_plan_uses_the_plan_seed_and_context() {
        let p = plan(GraphKind::Harary, 12, 4);
        let g = Graph::from_plan(&p).expect("valid plan");
        assert_eq!(g, Graph::harary(12, 4, &[9; 32], &p.context()).expect("valid"));
        // Another attempt of the same round is another graph.
        let mut retry = p.clone();
        retry.attempt = crate::ids::AttemptNonce([5; 16]);
        assert_ne!(perm_of(&Graph::from_plan(&retry).expect("valid")), perm_of(&g));

        let c = Graph::from_plan(&plan(GraphKind::Complete, 12, 11)).expect("valid plan");
        assert_eq!(c, Graph::complete(12));
        for (kind, degree) in
            [(GraphKind::Complete, 10), (GraphKind::Harary, 5), (GraphKind::Harary, 12)]
        {
            assert!(matches!(
                Graph::from_plan(&plan(kind, 12, degree)),
                Err(Error::InvalidPlan(_))
            ));
        }
    }

    #[test]
    fn complete_graph_is_everyone_but_self() {
        let g = Graph::complete(7);
        assert_eq!(g.degree(), 6);
        assert_eq!(g.kind(), GraphKind::Complete);
        assert_eq!(g.neighbours(3), vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(g.holders(3), (0..7).collect::<Vec<_>>());
        assert!(g.are_neighbours(0, 6));
        assert!(!g.are_neighbours(2, 2));
    }

    #[test]
    fn out_of_range_indices_are_nobody() {
        let g = Graph::harary(10, 4, &SEED, &CTX).expect("valid");
        assert!(g.neighbours(10).is_empty());
        assert!(g.holders(10).is_empty());
        assert!(!g.are_neighbours(0, 10));
        assert!(!g.are_neighbours(10, 0));
        let c = Graph::complete(4);
        assert!(c.neighbours(4).is_empty());
        assert!(!c.are_neighbours(4, 0));
    }

    #[test]
    fn harary_rejects_bad_parameters() {
        for (n, k) in [(0, 2), (1, 2), (10, 3), (10, 0), (10, 10), (10, 12), (4, 4), (2, 2)] {
            assert!(
                matches!(Graph::harary(n, k, &SEED, &CTX), Err(Error::InvalidPlan(_))),
                "H({k}, {n}) was accepted"
            );
        }
    }

    #[test]
    fn seed_and_context_change_the_permutation() {
        let base = perm_of(&Graph::harary(50, 4, &SEED, &CTX).expect("valid"));
        let other_seed = perm_of(&Graph::harary(50, 4, &[3u8; 32], &CTX).expect("valid"));
        let other_ctx =
            perm_of(&Graph::harary(50, 4, &SEED, &RoundContext([4u8; 32])).expect("valid"));
        assert_ne!(base, other_seed);
        assert_ne!(base, other_ctx);
        assert_ne!(other_seed, other_ctx);
        // The same inputs give the same permutation, and k does not enter it.
        assert_eq!(base, perm_of(&Graph::harary(50, 4, &SEED, &CTX).expect("valid")));
        assert_eq!(base, perm_of(&Graph::harary(50, 48, &SEED, &CTX).expect("valid")));
    }

    #[test]
    fn rng_is_the_chacha20_keystream() {
        // The spec says "ChaCha20 keystream, zero nonce, counter from 0, little-endian u32
        // words"; check that ChaCha20Rng is exactly that, across a block boundary.
        use chacha20::cipher::{KeyIvInit, StreamCipher};
        let key = [9u8; 32];
        let mut ks = [0u8; 4 * 40];
        chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into()).apply_keystream(&mut ks);
        let mut rng = chacha20::ChaCha20Rng::from_seed(key);
        for chunk in ks.chunks_exact(4) {
            let want = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            assert_eq!(rng.next_u32(), want);
        }
    }

    /// Replays fixed words, for testing the sampler.
    struct Script(Vec<u32>);

    impl rand_core::TryRng for Script {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> core::result::Result<u32, Self::Error> {
            Ok(self.0.remove(0))
        }
        fn try_next_u64(&mut self) -> core::result::Result<u64, Self::Error> {
            unreachable!("the sampler reads u32 words only")
        }
        fn try_fill_bytes(&mut self, _: &mut [u8]) -> core::result::Result<(), Self::Error> {
            unreachable!("the sampler reads u32 words only")
        }
    }

    #[test]
    fn uniform_below_rejects_the_top_zone() {
        // Range 3: 2^32 mod 3 = 1, so only 0xffff_ffff is rejected; the next word is used.
        let mut s = Script(vec![0xffff_ffff, 5]);
        assert_eq!(uniform_below(&mut s, 3), 2);
        assert!(s.0.is_empty());
        // The last accepted word for range 3.
        assert_eq!(uniform_below(&mut Script(vec![0xffff_fffe]), 3), 0xffff_fffe % 3);
        // Range 10: 2^32 mod 10 = 6, so words 0xffff_fffa..=0xffff_ffff are rejected.
        let mut s = Script(vec![0xffff_fffa, 0xffff_ffff, 0xffff_fff9]);
        assert_eq!(uniform_below(&mut s, 10), 0xffff_fff9 % 10);
        assert!(s.0.is_empty());
        // Range 1 never rejects; a power of two never rejects.
        assert_eq!(uniform_below(&mut Script(vec![0xffff_ffff]), 1), 0);
        assert_eq!(uniform_below(&mut Script(vec![0xffff_ffff]), 8), 7);
    }

    #[derive(serde::Deserialize)]
    struct KatFile {
        cases: Vec<KatCase>,
    }

    #[derive(serde::Deserialize)]
    struct KatCase {
        n: usize,
        seed: String,
        ctx: String,
        key: String,
        permutation: Vec<u32>,
    }

    fn bytes32(s: &str) -> [u8; 32] {
        hex::decode(s).expect("hex").try_into().expect("32 bytes")
    }

    #[test]
    fn permutation_known_answers() {
        let kat: KatFile =
            serde_json::from_str(include_str!("../tests/vectors/graph_permutation.json"))
                .expect("well-formed vector file");
        assert!(kat.cases.len() >= 3);
        for case in &kat.cases {
            let seed = bytes32(&case.seed);
            let ctx = RoundContext(bytes32(&case.ctx));
            let key = kdf::derive::<32>(&seed, Label::Graph, &ctx, &[]);
            assert_eq!(hex::encode(*key), case.key, "graph key for n = {}", case.n);
            assert_eq!(permutation(case.n, &seed, &ctx), case.permutation, "n = {}", case.n);
        }
    }

    #[test]
    fn permutation_known_answer_n10_inline() {
        // The headline vector, also in the file: n = 10, seed = [1; 32], ctx = [2; 32].
        assert_eq!(permutation(10, &SEED, &CTX), vec![7, 2, 5, 1, 3, 4, 8, 0, 9, 6]);
        // Node 7 sits at position 0, so with k = 4 its neighbours sit at positions 1, 2, 9, 8.
        let g = Graph::harary(10, 4, &SEED, &CTX).expect("valid");
        assert_eq!(g.neighbours(7), vec![2, 5, 6, 9]);
        assert_eq!(g.holders(7), vec![2, 5, 6, 7, 9]);
    }

    #[test]
    fn shuffle_is_roughly_uniform() {
        // Position of node 0 after shuffling 4 elements, over many contexts: each of the 4
        // positions should appear about a quarter of the time. A sampler that is not uniform
        // (say, `w % r` without rejection and a tiny range, or an off-by-one in j) fails.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let mut counts = [0u32; 4];
        let trials = 4000;
        for _ in 0..trials {
            let mut ctx = [0u8; 32];
            rng.fill_bytes(&mut ctx);
            let p = permutation(4, &SEED, &RoundContext(ctx));
            let at = p.iter().position(|&x| x == 0).expect("0 is somewhere");
            counts[at] += 1;
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "position counts {counts:?}");
        }
    }

    proptest! {
        #[test]
        fn permutation_is_a_bijection(n in 1usize..400, seed in any::<[u8; 32]>(), ctx in any::<[u8; 32]>()) {
            let p = permutation(n, &seed, &RoundContext(ctx));
            prop_assert_eq!(p.len(), n);
            let mut seen = vec![false; n];
            for &x in &p {
                prop_assert!((x as usize) < n);
                prop_assert!(!seen[x as usize]);
                seen[x as usize] = true;
            }
        }

        #[test]
        fn harary_neighbourhoods_agree(n in 3usize..120, half in 1usize..60, seed in any::<[u8; 32]>()) {
            let k = 2 * half;
            prop_assume!(k < n);
            let g = Graph::harary(n, k, &seed, &CTX).expect("valid");
            for i in 0..n {
                let nb = g.neighbours(i);
                prop_assert_eq!(nb.len(), k);
                for &j in &nb {
                    prop_assert!(g.are_neighbours(i, j));
                    prop_assert!(g.are_neighbours(j, i));
                }
            }
        }
    }
}
