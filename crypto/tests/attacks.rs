//! A deviating server, and malformed or replayed messages. Each attack that a protocol rule
//! stops is shown beside the same attack succeeding just below that rule, so the test proves
//! the rule is what protects.

mod common;

use fedsec_crypto::PROTOCOL_VERSION;
use std::collections::BTreeMap;
use std::sync::Arc;

use common::Authed;
use common::*;
use fedsec_crypto::context::{AdversaryClass, GraphKind, RoundPlan};
use fedsec_crypto::error::{Error, Floor, ForwardFault, PlanRule, ViewContradiction};
use fedsec_crypto::graph::Graph;
use fedsec_crypto::kernel::{Kernel, Sign};
use fedsec_crypto::keys::{PublicKey, SecretScalar};
use fedsec_crypto::prg::MaskSeed;
use fedsec_crypto::secagg::client::{
    ClientPolicy, ContributionLedger, SecAggClient, TrainedOn, hazmat,
};
use fedsec_crypto::secagg::driver::{run_round, stand_in_trained_on};
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::secagg::server::{SecAggServer, UploadProgress};
use fedsec_crypto::shamir::{self, ShareValue};
use fedsec_crypto::sign::IdentityKey;
use fedsec_crypto::{ClientId, WeightsHash};

const DIM: u32 = 32;

/// A round run honestly up to the end of phase 2, for a server that deviates afterwards.
struct Staged {
    plan: RoundPlan,
    clients: Vec<SecAggClient>,
    server: SecAggServer,
    adverts: Vec<AdvertiseKeys>,
    masked: Vec<MaskedInput>,
    inputs: Vec<Vec<u32>>,
}

fn new_clients(
    plan: &RoundPlan,
    keys: &[Arc<IdentityKey>],
    policy: &ClientPolicy,
) -> Vec<SecAggClient> {
    new_clients_on(plan, keys, policy, &stand_in_trained_on(plan, 0))
}

/// Clients that train on `on` (its checkpoint must be the plan's).
fn new_clients_on(
    plan: &RoundPlan,
    keys: &[Arc<IdentityKey>],
    policy: &ClientPolicy,
    on: &TrainedOn,
) -> Vec<SecAggClient> {
    keys.iter()
        .map(|k| {
            SecAggClient::new(
                k.clone(),
                verifier(),
                policy,
                plan.clone(),
                on,
                &ContributionLedger::default(),
            )
            .expect("plan accepted")
        })
        .collect()
}

fn stage(
    plan: &RoundPlan,
    keys: &[Arc<IdentityKey>],
    ledgers: &mut [ContributionLedger],
    policy: &ClientPolicy,
) -> Staged {
    let n = plan.n();
    let mut clients = new_clients(plan, keys, policy);
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    let adverts: Vec<_> = clients.iter().map(|c| c.advertise().clone()).collect();
    for a in &adverts {
        server.adv(a.clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    let excluded = through_complaints(&mut server, clients.iter_mut().zip(&fwd));
    let inputs = inputs(n, plan.dim, 77);
    let mut masked = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let y = c.handle_exclusions(&excluded, &inputs[i], &mut ledgers[i]).unwrap();
        server.masked(&y).unwrap();
        masked.push(y);
    }
    Staged { plan: plan.clone(), clients, server, adverts, masked, inputs }
}

fn words(m: &MaskedInput) -> Vec<u32> {
    m.data.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Shows each client in `group` the view `view` of U3 and collects their unmasking responses;
/// clients refuse as the protocol says.
fn show_view(s: &mut Staged, group: &[usize], view: &[usize]) -> Vec<UnmaskingResponse> {
    let n = s.plan.n();
    let ctx = *s.clients[0].context();
    let survivors = Survivors::from_indices(n, view.iter().copied());
    let request = ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        excluded: nobody(n),
    };
    let mut sigs = Vec::new();
    for &i in group {
        if let Ok(sig) = s.clients[i].handle_consistency(&request) {
            sigs.push(SignedSurvivors {
                client: sig.client,
                credential: s.adverts[i].credential.clone(),
                signature: sig.signature,
            });
        }
    }
    let request = UnmaskingRequest { version: PROTOCOL_VERSION, ctx, survivors, signatures: sigs };
    group.iter().filter_map(|&i| s.clients[i].handle_unmasking(&request).ok()).collect()
}

/// With t shares of both b_w and s_w^SK, the server strips every mask off y_w.
fn recover(s: &Staged, w: usize, responses: &[UnmaskingResponse]) -> Option<Vec<u32>> {
    let t = s.plan.threshold as usize;
    let w_id = s.plan.selected[w];
    let x_of = |id| s.plan.index_of(id).unwrap() as u32 + 1;
    let mut b_shares = Vec::new();
    let mut s_shares = Vec::new();
    for r in responses {
        for sh in r.self_mask_shares.iter().filter(|sh| sh.owner == w_id) {
            b_shares.push((x_of(&r.client), ShareValue::from_bytes(&sh.share).unwrap()));
        }
        for sh in r.mask_key_shares.iter().filter(|sh| sh.owner == w_id) {
            s_shares.push((x_of(&r.client), ShareValue::from_bytes(&sh.share).unwrap()));
        }
    }
    if b_shares.len() < t || s_shares.len() < t {
        return None;
    }
    fn pick(v: &[(u32, ShareValue)], t: usize) -> Vec<(u32, &ShareValue)> {
        v[..t].iter().map(|(x, s)| (*x, s)).collect()
    }
    let b = shamir::reconstruct(&pick(&b_shares, t)).unwrap();
    let s_w = shamir::reconstruct(&pick(&s_shares, t)).unwrap();
    let ctx = *s.clients[0].context();
    let g = Graph::from_plan(&s.plan).unwrap();
    let mut seeds = vec![(MaskSeed::self_mask(&b, &ctx, &w_id), Sign::Sub)];
    for v in g.neighbours(w) {
        let v_id = s.plan.selected[v];
        let pk = PublicKey::from_bytes(&s.adverts[v].mask_pk).unwrap();
        seeds.push((
            MaskSeed::pairwise(&s_w, &pk, &ctx, &w_id, &v_id),
            Sign::pairwise(&w_id, &v_id).flip(),
        ));
    }
    let masks: Vec<_> = seeds.iter().map(|(m, g)| (m, *g)).collect();
    let mut x = words(&s.masked[w]);
    Kernel::single().apply(&mut x, 0, &masks);
    Some(x)
}

/// The complete-graph equivocation: clients in A are told w dropped (they reveal s_w^SK shares),
/// clients in B that w survived (they reveal b_w shares).
fn equivocate(plan: &RoundPlan, keys: &[Arc<IdentityKey>], a_size: usize) -> Option<Vec<u32>> {
    let a: Vec<usize> = (1..=a_size).collect();
    equivocate_groups(plan, keys, &a)
}

/// The same equivocation with explicit groups: w = 0 is in B; A is told w dropped.
fn equivocate_groups(plan: &RoundPlan, keys: &[Arc<IdentityKey>], a: &[usize]) -> Option<Vec<u32>> {
    let n = plan.n();
    let mut ledgers = vec![ContributionLedger::default(); n];
    let mut s = stage(plan, keys, &mut ledgers, &policy());
    let w = 0;
    assert!(!a.contains(&w));
    let b: Vec<usize> = (0..n).filter(|i| !a.contains(i)).collect();
    let all: Vec<usize> = (0..n).collect();
    let without_w: Vec<usize> = (1..n).collect();
    let mut responses = show_view(&mut s, a, &without_w);
    responses.extend(show_view(&mut s, &b, &all));
    recover(&s, w, &responses).inspect(|x| assert_eq!(x, &s.inputs[w]))
}

/// Splits the clients in two halves, each holding about half of w's share holders H(w).
fn split_holders(plan: &RoundPlan, a_size: usize) -> Vec<usize> {
    let g = Graph::from_plan(plan).unwrap();
    let w = 0;
    let holders: Vec<usize> = g.holders(w).into_iter().filter(|&v| v != w).collect();
    let others: Vec<usize> = (1..plan.n()).filter(|v| !holders.contains(v)).collect();
    let mut a: Vec<usize> = holders.iter().copied().step_by(2).collect();
    a.extend(others.iter().copied().take(a_size.saturating_sub(a.len())));
    a.truncate(a_size);
    a
}

/// The q-signature rule, on its own: SecAgg+ against a curious server (a client policy that
/// allows the class), n = 40, δ = 0.3, γ = 0.05, so k = 16, t = 3, q = 28. The server shows
/// U3_A = U (w ∈ U3_A) to 28 clients, w among them, and U3_B = U ∖ {w} to the other 12, and each
/// group holds at least t of w's shares: the Shamir threshold does not stop the split, and both
/// views have at least q members, so every client signs its view. Group A reveals shares of b_w
/// (w survived), group B would reveal shares of s_w^SK (w dropped) — with both, the server
/// strips every mask off y_w. Only B's check that q clients signed its view stops it: B has 12
/// signatures. With that one check removed, the server recovers x_w.
#[test]
fn two_views_of_u3_leak_nothing_only_because_of_the_q_signature_check() {
    let n = 40;
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.3, 0.05, AdversaryClass::Curious, DIM, 41);
    assert_eq!((plan.degree, plan.threshold, plan.q()), (16, 3, 28), "the issue's parameters");
    let g = Graph::from_plan(&plan).unwrap();
    let w = 0;
    let t = plan.threshold as usize;
    // B: 12 clients, t of them w's neighbours; A: the other 28, w included.
    let neighbours = g.neighbours(w);
    let mut b: Vec<usize> = neighbours.iter().copied().take(t).collect();
    b.extend((1..n).filter(|i| !neighbours.contains(i)).take(12 - t));
    assert_eq!(b.len(), 12);
    let a: Vec<usize> = (0..n).filter(|i| !b.contains(i)).collect();
    assert_eq!(a.len(), plan.q());
    assert!(a.contains(&w));
    assert!(a.iter().filter(|&&i| g.holders(w).contains(&i)).count() >= t);
    assert!(b.iter().filter(|&&i| g.holders(w).contains(&i)).count() >= t);
    let all: Vec<usize> = (0..n).collect();
    let without_w: Vec<usize> = (1..n).collect();
    assert!(without_w.len() >= plan.q());

    for removed in [false, true] {
        let ledgers = &mut vec![ContributionLedger::default(); n];
        let mut s = stage(&plan, &keys, ledgers, &policy());
        if removed {
            for c in &mut s.clients {
                hazmat::remove_consistency_quorum(c);
            }
        }
        let mut responses = show_view(&mut s, &a, &all);
        assert_eq!(responses.len(), a.len(), "A has q signatures on its view and reveals");
        let from_b = show_view(&mut s, &b, &without_w);
        if removed {
            assert_eq!(from_b.len(), b.len());
            responses.extend(from_b);
            let x = recover(&s, w, &responses).expect("without the check, x_w is recovered");
            assert_eq!(x, s.inputs[w]);
        } else {
            assert!(from_b.is_empty(), "B has 12 < q signatures: no client of B reveals");
            assert!(recover(&s, w, &responses).is_none(), "nothing of x_w is revealed");
        }
    }
}

/// The one-view rule, on its own: the same round as above, but the server has every client
/// sign both views — first U3_B = U ∖ {w}, then U3_A = U — so that each view gathers q
/// signatures; it asks A to unmask under U3_A, has B sign U3_B again and asks B to unmask
/// under it. A client signs one U3 per attempt: the second view gets no signature, A (which
/// signed U3_B) refuses to unmask under U3_A, and only shares of s_w^SK come out. With that one
/// rule removed (a client signs whatever view it is shown, until it unmasks), the server
/// recovers x_w.
#[test]
fn signing_two_views_leaks_nothing_only_because_a_client_signs_one_u3() {
    let n = 40;
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.3, 0.05, AdversaryClass::Curious, DIM, 41);
    let g = Graph::from_plan(&plan).unwrap();
    let (w, t) = (0, plan.threshold as usize);
    let neighbours = g.neighbours(w);
    let mut b: Vec<usize> = neighbours.iter().copied().take(t).collect();
    b.extend((1..n).filter(|i| !neighbours.contains(i)).take(12 - t));
    let a: Vec<usize> = (0..n).filter(|i| !b.contains(i)).collect();
    let (all, without_w): (Vec<usize>, Vec<usize>) = ((0..n).collect(), (1..n).collect());

    for removed in [false, true] {
        let ledgers = &mut vec![ContributionLedger::default(); n];
        let mut s = stage(&plan, &keys, ledgers, &policy());
        if removed {
            for c in &mut s.clients {
                hazmat::allow_signing_another_view(c);
            }
        }
        let ctx = *s.clients[0].context();
        let request = |view: &[usize]| ConsistencyRequest {
            version: PROTOCOL_VERSION,
            ctx,
            survivors: Survivors::from_indices(n, view.iter().copied()),
            excluded: nobody(n),
        };
        // `group` is asked to sign `view`; the signatures the server gets.
        let sign = |view: &[usize], group: &[usize], s: &mut Staged| -> UnmaskingRequest {
            let req = request(view);
            let signatures = group
                .iter()
                .filter_map(|&i| {
                    let sig = s.clients[i].handle_consistency(&req).ok()?;
                    Some(SignedSurvivors {
                        client: sig.client,
                        credential: s.adverts[i].credential.clone(),
                        signature: sig.signature,
                    })
                })
                .collect();
            UnmaskingRequest {
                version: PROTOCOL_VERSION,
                ctx,
                survivors: req.survivors,
                signatures,
            }
        };
        let on_b = sign(&without_w, &all, &mut s);
        let on_a = sign(&all, &all, &mut s);
        assert_eq!(on_b.signatures.len(), n - 1, "w refuses a view without itself");
        let from_a: Vec<UnmaskingResponse> =
            a.iter().filter_map(|&i| s.clients[i].handle_unmasking(&on_a).ok()).collect();
        sign(&without_w, &b, &mut s);
        let from_b: Vec<UnmaskingResponse> =
            b.iter().filter_map(|&i| s.clients[i].handle_unmasking(&on_b).ok()).collect();
        assert_eq!(from_b.len(), b.len(), "B signed U3_B and unmasks under it");
        let mut responses = from_a.clone();
        responses.extend(from_b);
        if removed {
            assert_eq!(on_a.signatures.len(), n - 1, "without the rule, the second view too");
            assert_eq!(from_a.len(), a.len() - 1, "A, but w (aborted), unmasks under U3_A");
            assert!(recover(&s, w, &responses).is_some_and(|x| x == s.inputs[w]));
        } else {
            assert!(on_a.signatures.is_empty(), "a client signs one U3 per attempt");
            assert!(from_a.is_empty(), "A signed U3_B and refuses to unmask under U3_A");
            assert!(recover(&s, w, &responses).is_none());
        }
    }
}

#[test]
fn harary_equivocation_succeeds_only_below_the_consistency_rule() {
    let n = 40;
    // Curious SecAgg+: q = ⌈(1−δ)n⌉ = 20 ≤ (n + n_C)/2 = 21 and 2t ≤ |H(w)|: the server splits
    // w's holders between a view where w survived and one where it dropped.
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.5, 0.05, AdversaryClass::Curious, DIM, 21);
    assert!(2 * plan.q() <= n + plan.assumed_corrupt());
    assert!(equivocate_groups(&plan, &keys, &split_holders(&plan, n / 2)).is_some());

    // Semi-malicious SecAgg+: q > (n + n_C)/2 and 2t > |H(w)|; no split leaks x_w.
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 21);
    assert!(2 * plan.q() > n + plan.assumed_corrupt());
    for a_size in [10, 15, 19, 20, 21, 25, 30] {
        let a = split_holders(&plan, a_size);
        assert!(equivocate_groups(&plan, &keys, &a).is_none(), "split {a_size}: x_w leaked");
    }
}

#[test]
fn equivocation_on_u3_succeeds_only_below_the_consistency_rule() {
    let n = 10;
    // Curious class: q = ⌈(1−δ)n⌉ = 5 ≤ (n + n_C)/2 = 5, the rule is not enforced.
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.5, 0.05, AdversaryClass::Curious, DIM, 1);
    assert_eq!(plan.q(), 5);
    assert!(plan.q() as f64 <= (n + plan.assumed_corrupt()) as f64 / 2.0);
    let recovered = equivocate(&plan, &keys, 5);
    assert!(recovered.is_some(), "below the rule the server recovers x_w");

    // Semi-malicious: q > (n + n_C)/2, so no two views of U3 can both gather q signatures.
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.4, 0.05, AdversaryClass::SemiMalicious, DIM, 1);
    assert!(2 * plan.q() > n + plan.assumed_corrupt());
    for a_size in 1..n - 1 {
        assert!(
            equivocate(&plan, &keys, a_size).is_none(),
            "split {a_size}/{}: x_w leaked",
            n - a_size
        );
    }
}

#[test]
fn a_plan_that_breaks_the_consistency_rule_is_refused() {
    let (mut plan, _) =
        federation(10, GraphKind::Complete, 0.5, 0.05, AdversaryClass::Curious, DIM, 2);
    plan.adversary = AdversaryClass::SemiMalicious;
    assert!(matches!(plan.validate(), Err(Error::ConsistencyRuleBroken { .. })));
}

/// What the retry of [`retry_without_w`] trains on.
#[derive(Clone, Copy)]
enum Retry {
    /// The same checkpoint: the server claims the attempt failed.
    SameCheckpoint,
    /// A checkpoint minted again under the same version with one bit flipped: another
    /// checkpoint hash, other weights.
    FlippedBitSameVersion,
    /// The same weights published again as the next version: another checkpoint hash.
    SameWeightsNextVersion,
}

/// The retry attack: finish a round, claim failure, retry without w on the same model (as
/// `retry` mints it), subtract the two sums.
fn retry_without_w(one_input_per_checkpoint: bool, retry_on: Retry) -> Result<Vec<u32>, Error> {
    let n = 9;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.25, 0.05, AdversaryClass::SemiMalicious, DIM, 3);
    let policy = ClientPolicy { one_input_per_checkpoint, ..policy() };
    let xs = inputs(n, DIM, 4);
    let mut ledgers = vec![ContributionLedger::default(); n];
    let weights = WeightsHash([0x5a; 32]);
    let first_on =
        TrainedOn { task: plan.task_id, version: 3, checkpoint: plan.checkpoint, weights };
    // Attempt 1 with everyone, ledgers kept.
    let first = {
        let mut clients = new_clients_on(&plan, &keys, &policy, &first_on);
        let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
        for c in &clients {
            server.adv(c.advertise().clone()).unwrap();
        }
        let f = server.close_advertise().unwrap();
        for (c, f) in clients.iter_mut().zip(&f) {
            server.shares(c.handle_keys(f).unwrap()).unwrap();
        }
        let f = server.close_share_keys().unwrap();
        let e = through_complaints(&mut server, clients.iter_mut().zip(&f));
        for (i, c) in clients.iter_mut().enumerate() {
            server.masked(&c.handle_exclusions(&e, &xs[i], &mut ledgers[i]).unwrap()).unwrap();
        }
        let r = server.close_masked_input().unwrap();
        for c in clients.iter_mut() {
            server.consistent(c.handle_consistency(&r).unwrap()).unwrap();
        }
        let r = server.close_consistency().unwrap();
        for c in clients.iter_mut() {
            server.unmask(c.handle_unmasking(&r).unwrap()).unwrap();
        }
        server.finish().unwrap()
    };
    // Attempt 2 without w = 0, on the model as minted: every client consults its ledger.
    let mut retry = next_attempt(&plan, 9);
    retry.selected.remove(0);
    let p = fedsec_crypto::params::for_plan(&retry).unwrap();
    (retry.degree, retry.threshold) = (p.degree, p.threshold);
    let mut other = plan.checkpoint;
    other.0[31] ^= 1;
    let on = match retry_on {
        Retry::SameCheckpoint => first_on,
        Retry::FlippedBitSameVersion => {
            TrainedOn { checkpoint: other, weights: WeightsHash([0x5b; 32]), ..first_on }
        }
        Retry::SameWeightsNextVersion => TrainedOn { checkpoint: other, version: 4, ..first_on },
    };
    retry.checkpoint = on.checkpoint;
    let retry_keys = &keys[1..];
    for (i, k) in retry_keys.iter().enumerate() {
        SecAggClient::new(k.clone(), verifier(), &policy, retry.clone(), &on, &ledgers[i + 1])?;
    }
    let out = run_round(&retry, retry_keys, &xs[1..], &BTreeMap::new(), &policy, verifier())?;
    let second = out.sum?;
    Ok(first.iter().zip(&second).map(|(a, b)| a.wrapping_sub(*b)).collect())
}

#[test]
fn retry_without_w_on_the_same_checkpoint_is_refused() {
    let xs = inputs(9, DIM, 4);
    // Below the rule (the switch relaxed): the difference of the two sums is x_w.
    for retry in
        [Retry::SameCheckpoint, Retry::FlippedBitSameVersion, Retry::SameWeightsNextVersion]
    {
        assert_eq!(retry_without_w(false, retry).expect("relaxed clients take part twice"), xs[0]);
    }
    // With the rule: clients refuse a second masked input on the same checkpoint.
    assert_eq!(
        retry_without_w(true, Retry::SameCheckpoint),
        Err(Error::AlreadyContributedOnCheckpoint)
    );
}

#[test]
fn a_checkpoint_minted_again_to_retry_without_w_is_refused() {
    // The same version signed again with one bit flipped: a new hash, the same version.
    assert_eq!(
        retry_without_w(true, Retry::FlippedBitSameVersion),
        Err(Error::AlreadyContributedOnVersion { version: 3, newest: 3 })
    );
    // The same weights published as the next version: a new hash and version, same weights.
    assert_eq!(
        retry_without_w(true, Retry::SameWeightsNextVersion),
        Err(Error::AlreadyContributedOnWeights)
    );
}

#[test]
fn asking_for_both_shares_of_one_peer_is_refused() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 5);
    let mut ledgers = vec![ContributionLedger::default(); n];
    let mut s = stage(&plan, &keys, &mut ledgers, &policy());
    let ctx = *s.clients[0].context();
    let all: Vec<usize> = (0..n).collect();
    let first = show_view(&mut s, &all, &all);
    assert_eq!(first.len(), n, "honest unmasking");
    // Now the server claims w = 3 dropped after all and asks again: refused, same U3 only.
    let without: Vec<usize> = all.iter().copied().filter(|&i| i != 3).collect();
    let survivors = Survivors::from_indices(n, without.iter().copied());
    let req = UnmaskingRequest { version: PROTOCOL_VERSION, ctx, survivors, signatures: vec![] };
    for c in s.clients.iter_mut() {
        assert!(matches!(c.handle_unmasking(&req), Err(Error::PhaseAlreadyAnswered(_))));
    }
    // A request naming another U3 than the one signed is refused and the client aborts.
    let mut ledgers = vec![ContributionLedger::default(); n];
    let mut s = stage(&plan, &keys, &mut ledgers, &policy());
    let survivors = Survivors::from_indices(n, all.iter().copied());
    let ctx1 = *s.clients[1].context();
    let signed = s.clients[1]
        .handle_consistency(&ConsistencyRequest {
            version: PROTOCOL_VERSION,
            ctx: ctx1,
            survivors,
            excluded: nobody(n),
        })
        .unwrap();
    let other = Survivors::from_indices(n, without.iter().copied());
    let req = UnmaskingRequest {
        version: PROTOCOL_VERSION,
        ctx: *s.clients[1].context(),
        survivors: other,
        signatures: vec![SignedSurvivors {
            client: signed.client,
            credential: s.adverts[1].credential.clone(),
            signature: signed.signature,
        }],
    };
    assert_eq!(
        s.clients[1].handle_unmasking(&req),
        Err(Error::ContradictsSignedView(ViewContradiction::OtherU3))
    );
    let survivors = Survivors::from_indices(n, all.iter().copied());
    let again = ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx: *s.clients[1].context(),
        survivors,
        excluded: nobody(n),
    };
    assert!(
        s.clients[1].handle_consistency(&again).is_ok(),
        "identical retry of an answered phase"
    );
}

#[test]
fn plans_below_the_floor_are_refused() {
    let n = 20;
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 6);
    let strict = ClientPolicy {
        min_adversary: AdversaryClass::SemiMalicious,
        min_corrupt_ppm: 50_000,
        max_dropout_ppm: 200_000,
        min_clients: 10,
        min_surviving: 10,
        one_input_per_checkpoint: true,
    };
    let try_plan = |p: &RoundPlan| {
        SecAggClient::new(
            keys[0].clone(),
            verifier(),
            &strict,
            p.clone(),
            &stand_in_trained_on(&plan, 0),
            &ContributionLedger::default(),
        )
        .map(|_| ())
    };
    assert_eq!(try_plan(&plan), Ok(()));
    let mut p = plan.clone();
    p.threshold -= 1;
    assert!(matches!(try_plan(&p), Err(Error::PlanBelowRequired { .. })), "lower t");
    let mut p = plan.clone();
    p.degree -= 2;
    assert!(
        matches!(try_plan(&p), Err(Error::PlanBelowRequired { .. } | Error::InvalidPlan(_))),
        "another k"
    );
    let mut p = plan.clone();
    p.adversary = AdversaryClass::Curious;
    assert!(
        matches!(try_plan(&p), Err(Error::PlanBelowFloor(Floor::Adversary { .. }))),
        "curious class"
    );
    let mut p = plan.clone();
    p.dropout_ppm = 300_000;
    assert!(
        matches!(
            try_plan(&p),
            Err(Error::PlanBelowFloor(Floor::Dropout { plan_ppm: 300_000, .. }))
        ),
        "larger δ"
    );
    let mut p = plan.clone();
    p.corrupt_ppm = 10_000;
    assert!(
        matches!(
            try_plan(&p),
            Err(Error::PlanBelowFloor(Floor::CorruptFraction { plan_ppm: 10_000, .. }))
        ),
        "smaller γ"
    );
    let mut p = plan.clone();
    p.checkpoint.0[0] ^= 1;
    assert_eq!(try_plan(&p), Err(Error::CheckpointMismatch), "another checkpoint");

    // The benchmarks' constructor takes the plan's (k, t) as given, and nothing else.
    let unchecked = |p: &RoundPlan| {
        hazmat::client_with_plan_parameters(
            keys[0].clone(),
            verifier(),
            &strict,
            p.clone(),
            &stand_in_trained_on(&plan, 0),
            &ContributionLedger::default(),
        )
        .map(|_| ())
    };
    let mut p = plan.clone();
    p.threshold -= 1;
    assert_eq!(unchecked(&p), Ok(()), "lower t, taken as given");
    p.degree -= 2;
    assert_eq!(unchecked(&p), Ok(()), "another k, taken as given");
    p.dropout_ppm = 300_000;
    assert!(
        matches!(unchecked(&p), Err(Error::PlanBelowFloor(Floor::Dropout { .. }))),
        "the floor still holds"
    );
    let mut p = plan.clone();
    p.degree += 1;
    assert!(
        matches!(unchecked(&p), Err(Error::InvalidPlan(PlanRule::HararyDegree { .. }))),
        "an odd Harary degree"
    );
    let mut p = plan.clone();
    p.checkpoint.0[0] ^= 1;
    assert_eq!(unchecked(&p), Err(Error::CheckpointMismatch), "the checkpoint still holds");
}

/// Runs phase 0 and returns clients, server and the honest forwards.
fn after_advertise(
    plan: &RoundPlan,
    keys: &[Arc<IdentityKey>],
) -> (Vec<SecAggClient>, SecAggServer, Vec<KeysForward>) {
    let clients = new_clients(plan, keys, &policy());
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    for c in &clients {
        server.adv(c.advertise().clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    (clients, server, fwd)
}

/// Re-signs a dealer's entries after a change, as a dishonest dealer would.
fn resign(key: &IdentityKey, m: &mut ShareKeys) {
    use fedsec_crypto::merkle::Tree;
    use fedsec_crypto::secagg::commitments::Entry;
    let tree = Tree::new(m.entries.iter().map(Entry::leaf).collect()).unwrap();
    let parts: [&[u8]; 3] = [&m.client.0, &tree.size().to_be_bytes(), &tree.root()];
    m.root_signature = Sig(key.sign(fedsec_crypto::kdf::Label::ShareKeys, &m.ctx, &parts));
}

/// Runs the rest of an attempt honestly once phase 1 is open: every client but `out` sends
/// its ShareKeys; returns the sum, which must be that of everyone but `out`.
fn finish_without(
    plan: &RoundPlan,
    clients: &mut [SecAggClient],
    server: &mut SecAggServer,
    fwd: &[KeysForward],
    out: usize,
) -> Vec<u32> {
    let n = plan.n();
    for (i, (c, f)) in clients.iter_mut().zip(fwd).enumerate() {
        if i != out {
            server.shares(c.handle_keys(f).unwrap()).unwrap();
        }
    }
    let forwards = server.close_share_keys().unwrap();
    let xs = inputs(n, DIM, 31);
    let mut ledgers = vec![ContributionLedger::default(); n];
    let others: Vec<usize> = (0..n).filter(|&i| i != out).collect();
    let answering: Vec<usize> =
        forwards.iter().map(|f| plan.index_of(&f.recipient).unwrap()).collect();
    for (f, &i) in forwards.iter().zip(&answering) {
        server.complain(clients[i].handle_shares(f).unwrap()).unwrap();
    }
    let e = server.close_complaints().unwrap();
    for &i in &answering {
        let y = clients[i].handle_exclusions(&e, &xs[i], &mut ledgers[i]).unwrap();
        server.masked(&y).unwrap();
    }
    let r = server.close_masked_input().unwrap();
    for &i in &others {
        server.consistent(clients[i].handle_consistency(&r).unwrap()).unwrap();
    }
    let r = server.close_consistency().unwrap();
    for &i in &others {
        server.unmask(clients[i].handle_unmasking(&r).unwrap()).unwrap();
    }
    let sum = server.finish().unwrap();
    assert_eq!(sum, clear_sum(&xs, &others), "the exact sum of the others");
    sum
}

/// The server's phase-1 checks of a dealer's commitments (protocol v2), each before anything
/// of the dealer is forwarded: a dealer whose commitments are off its polynomials, whose entries
/// skip a holder or name the wrong ciphertext, whose commitment is the identity, or whose entries
/// were changed after signing, is refused — excluded as if it had dropped before ShareKeys — and
/// the others finish the round with their exact sum.
#[test]
fn a_dealer_whose_commitments_do_not_hold_is_excluded_at_phase_1() {
    use fedsec_crypto::error::SharesProblem;
    use fedsec_crypto::secagg::commitments::Entry;
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 32);
    let other_point = SecretScalar::random(&mut rng(33)).public().to_bytes();
    type Change = Box<dyn Fn(&mut ShareKeys) -> (bool, Error)>;
    let dealer = keys[0].id();
    let problem = move |problem| Error::IncompleteShares { client: dealer, problem };
    let changes: Vec<(&str, Change)> = vec![
        (
            "a commitment off the polynomial",
            Box::new(move |m: &mut ShareKeys| {
                let e = m.entries[3];
                m.entries[3] = Entry::new(
                    &e.holder(),
                    &e.ciphertext_hash(),
                    &other_point,
                    &e.mask_key_commitment(),
                );
                (true, problem(SharesProblem::DegreeTest))
            }),
        ),
        (
            "an entry skipped",
            Box::new(move |m: &mut ShareKeys| {
                m.entries.remove(4);
                (true, problem(SharesProblem::EntryCount { got: n - 1, expected: n }))
            }),
        ),
        (
            "the wrong ciphertext named",
            Box::new(move |m: &mut ShareKeys| {
                let e = m.entries[2];
                m.entries[2] = Entry::new(
                    &e.holder(),
                    &[7; 32],
                    &e.self_mask_commitment(),
                    &e.mask_key_commitment(),
                );
                (true, problem(SharesProblem::CiphertextHash(e.holder())))
            }),
        ),
        (
            "the identity as a commitment",
            Box::new(move |m: &mut ShareKeys| {
                let e = m.entries[5];
                m.entries[5] = Entry::new(
                    &e.holder(),
                    &e.ciphertext_hash(),
                    &[0; 32],
                    &e.mask_key_commitment(),
                );
                (true, problem(SharesProblem::Commitment(e.holder())))
            }),
        ),
        (
            "an entry changed after signing",
            Box::new(move |m: &mut ShareKeys| {
                // Still well formed: its two commitments swapped.
                let e = m.entries[1];
                m.entries[1] = Entry::new(
                    &e.holder(),
                    &e.ciphertext_hash(),
                    &e.mask_key_commitment(),
                    &e.self_mask_commitment(),
                );
                (false, Error::BadSignature(dealer))
            }),
        ),
        (
            "two entries out of order",
            Box::new(move |m: &mut ShareKeys| {
                m.entries.swap(6, 7);
                let expected = m.entries[7].holder();
                (true, problem(SharesProblem::EntryHolder { position: 6, expected }))
            }),
        ),
        (
            "the dealer's own entry naming a ciphertext",
            Box::new(move |m: &mut ShareKeys| {
                let e = m.entries[0];
                m.entries[0] = Entry::new(
                    &e.holder(),
                    &[9; 32],
                    &e.self_mask_commitment(),
                    &e.mask_key_commitment(),
                );
                (true, problem(SharesProblem::CiphertextHash(dealer)))
            }),
        ),
    ];
    for (what, change) in &changes {
        let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
        let mut m = clients[0].handle_keys(&fwd[0]).unwrap();
        let (resigned, expected) = change(&mut m);
        if resigned {
            resign(&keys[0], &mut m);
        }
        assert_eq!(server.shares(m), Err(expected), "{what}");
        // Excluded: even its honest message is not taken now.
        let honest = clients[0].handle_keys(&fwd[0]).unwrap();
        assert_eq!(
            server.shares(honest),
            Err(Error::NotEligible {
                client: dealer,
                phase: fedsec_crypto::secagg::Phase::ShareKeys
            }),
            "{what}"
        );
        finish_without(&plan, &mut clients, &mut server, &fwd, 0);
        assert!(!server.u2().contains(&0), "{what}: the dealer is not in U2");
    }
}

/// The phase-1 checks made off the server's state — on other threads, as the messages arrive,
/// as the coordinator makes them — give the same verdicts as the server's own: a dealer whose
/// commitments fail is refused for the attempt whatever order the verdicts come back in; a
/// verdict on a dealer already in U2 changes nothing; a verdict from another attempt's checker
/// is refused; and the round finishes with the exact sum of the others.
#[test]
fn phase_one_checked_on_other_threads_gives_the_servers_verdicts() {
    use fedsec_crypto::error::SharesProblem;
    use fedsec_crypto::secagg::commitments::Entry;
    use fedsec_crypto::secagg::server::CheckedShareKeys;
    fn send_sync<T: Send + Sync>(_: &T) {}
    let n = 40;
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.3, 0.05, AdversaryClass::Curious, DIM, 34);
    let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
    let mut messages: Vec<ShareKeys> =
        clients.iter_mut().zip(&fwd).map(|(c, f)| c.handle_keys(f).unwrap()).collect();
    // Dealer 0's commitment to holder 1's share moved off its polynomial, and re-signed.
    let e = messages[0].entries[1];
    let other = SecretScalar::random(&mut rng(35)).public().to_bytes();
    messages[0].entries[1] =
        Entry::new(&e.holder(), &e.ciphertext_hash(), &other, &e.mask_key_commitment());
    resign(&keys[0], &mut messages[0]);
    let check = server.share_keys_check().unwrap();
    send_sync(&check);
    let mut checked: Vec<CheckedShareKeys> = std::thread::scope(|scope| {
        let workers: Vec<_> = messages
            .chunks(7)
            .map(|batch| {
                let check = check.clone();
                scope.spawn(move || {
                    let out: Vec<CheckedShareKeys> =
                        batch.iter().map(|m| check.check(m.client, m.clone()).unwrap()).collect();
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    // Another server of the same attempt (the same ctx) takes none of them either: a verdict
    // counts only with the checker that made it.
    let (_, mut twin, _) = after_advertise(&plan, &keys);
    twin.share_keys_check().unwrap();
    let other = check.check(messages[6].client, messages[6].clone()).unwrap();
    assert_eq!(
        twin.receive_checked_share_keys(messages[6].client, other),
        Err(Error::WrongContext)
    );
    // Another attempt's server takes none of these verdicts.
    let (_, mut other_attempt, _) = after_advertise(&next_attempt(&plan, 36), &keys);
    let foreign = check.check(messages[5].client, messages[5].clone()).unwrap();
    assert_eq!(
        other_attempt.receive_checked_share_keys(messages[5].client, foreign),
        Err(Error::WrongContext)
    );
    // The verdicts come back in the reverse order.
    let bad = checked.remove(0);
    for c in checked.into_iter().rev() {
        server.receive_checked_share_keys(c.message().client, c).unwrap();
    }
    let dealer = keys[0].id();
    assert_eq!(
        server.receive_checked_share_keys(dealer, bad),
        Err(Error::IncompleteShares { client: dealer, problem: SharesProblem::DegreeTest })
    );
    // Refused for the attempt: its honest message is not taken now, checked or not.
    let honest = clients[0].handle_keys(&fwd[0]).unwrap();
    let refused =
        Err(Error::NotEligible { client: dealer, phase: fedsec_crypto::secagg::Phase::ShareKeys });
    let honest = check.check(dealer, honest).unwrap();
    assert_eq!(server.receive_checked_share_keys(dealer, honest), refused);
    // A failing verdict on a dealer already in U2 refuses the message, not the dealer; and a
    // verdict is taken from its sender only.
    let (third, fifth) = (keys[3].id(), keys[5].id());
    let late = || {
        let mut late = messages[3].clone();
        late.entries.swap(1, 2);
        resign(&keys[3], &mut late);
        check.check(third, late).unwrap()
    };
    assert_eq!(
        server.receive_checked_share_keys(fifth, late()),
        Err(Error::SenderMismatch { claimed: third, authenticated: fifth })
    );
    assert_eq!(
        server.receive_checked_share_keys(third, late()),
        Err(Error::DuplicateClient(third))
    );
    assert!(server.u2().contains(&3));
    finish_without(&plan, &mut clients, &mut server, &fwd, 0);
    assert_eq!(server.u2().len(), n - 1);
    // Once phase 1 closed there is no checker.
    assert!(server.share_keys_check().is_err());
}

/// A share the server altered is not what its dealer signed: the recipient stops (a dropout)
/// with the dealer named and the check that failed; an honest forward of the same share opens.
#[test]
fn a_share_the_server_altered_makes_the_recipient_stop() {
    use fedsec_crypto::secagg::commitments::{Dealt, Malformed};
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 34);
    let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let forwards = server.close_share_keys().unwrap();
    // What a restarted coordinator rebuilds from the ciphertexts alone is what was sent; a
    // ciphertext said to come from the recipient itself, or from a stranger, rebuilds nothing.
    let inboxes = |f: &[SharesForward]| -> Vec<fedsec_crypto::secagg::server::SavedInbox> {
        f.iter()
            .map(|f| {
                let sent = f.shares.iter().map(|s| (s.from, s.dealt.ciphertext.clone()));
                (f.recipient, sent.collect())
            })
            .collect()
    };
    assert_eq!(server.rebuild_share_forwards(inboxes(&forwards)), Some(forwards.clone()));
    let mut own = inboxes(&forwards);
    own[0].1[0].0 = own[0].0;
    assert_eq!(server.rebuild_share_forwards(own), None);
    let mut stranger = inboxes(&forwards);
    stranger[0].1[0].0 = ClientId([0xee; 32]);
    assert_eq!(server.rebuild_share_forwards(stranger), None);
    let mut altered = forwards[1].clone();
    altered.shares[0].dealt.ciphertext[5] ^= 1;
    let dealer = altered.shares[0].from;
    assert_eq!(
        clients[1].handle_shares(&altered),
        Err(Error::TamperedShare { dealer, why: Malformed::CiphertextHash })
    );
    let mut resigned = forwards[2].clone();
    resigned.shares[0].dealt.index ^= 1;
    let dealer = resigned.shares[0].from;
    assert!(matches!(
        clients[2].handle_shares(&resigned),
        Err(Error::TamperedShare { dealer: d, why: Malformed::Signature | Malformed::Path }) if d == dealer
    ));
    // Another holder's entry and path, from the same dealer, with this holder's ciphertext.
    let mut other = forwards[4].clone();
    let theirs = forwards[5].shares.iter().find(|f| f.from == other.shares[0].from).unwrap();
    let ciphertext = other.shares[0].dealt.ciphertext.clone();
    other.shares[0].dealt = Dealt { ciphertext, ..theirs.dealt.clone() };
    let dealer = other.shares[0].from;
    assert_eq!(
        clients[4].handle_shares(&other),
        Err(Error::TamperedShare { dealer, why: Malformed::OtherHolder })
    );
    assert!(clients[3].handle_shares(&forwards[3]).is_ok());
}

#[test]
fn forwarded_keys_must_match_the_graph() {
    let (plan, keys) =
        federation(24, GraphKind::Harary, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 7);
    let (mut clients, server, fwd) = after_advertise(&plan, &keys);
    let g = server.graph().clone();
    let non_neighbour =
        (1..plan.n()).find(|&v| !g.are_neighbours(0, v)).expect("Harary graph is sparse");
    let all_adverts: Vec<AdvertiseKeys> = clients.iter().map(|c| c.advertise().clone()).collect();
    // Extra: a non-neighbour's keys.
    let mut extra = fwd[0].clone();
    extra.adverts.push(all_adverts[non_neighbour].clone());
    assert_eq!(
        clients[0].handle_keys(&extra),
        Err(Error::NotNeighbour(plan.selected[non_neighbour]))
    );
    // Missing: its own advertisement dropped.
    let (mut clients, _, fwd) = after_advertise(&plan, &keys);
    let mut missing = fwd[0].clone();
    missing.adverts.retain(|a| a.client != plan.selected[0]);
    assert_eq!(
        clients[0].handle_keys(&missing),
        Err(Error::InconsistentForward(ForwardFault::OwnAdvertMissing))
    );
    // Missing: so many neighbours that fewer than t holders remain.
    let (mut clients, _, fwd) = after_advertise(&plan, &keys);
    let mut few = fwd[0].clone();
    few.adverts.truncate(plan.threshold as usize - 1);
    if !few.adverts.iter().any(|a| a.client == plan.selected[0]) {
        few.adverts.push(all_adverts[0].clone());
        few.adverts.remove(0);
    }
    assert!(matches!(clients[0].handle_keys(&few), Err(Error::TooFewNeighbours { .. })));
    // Altered: a neighbour's mask key swapped (the signature no longer verifies).
    let (mut clients, _, fwd) = after_advertise(&plan, &keys);
    let mut altered = fwd[0].clone();
    let j = altered.adverts.iter().position(|a| a.client != plan.selected[0]).unwrap();
    altered.adverts[j].mask_pk = all_adverts[non_neighbour].mask_pk;
    assert_eq!(
        clients[0].handle_keys(&altered),
        Err(Error::BadSignature(altered.adverts[j].client))
    );
    // Duplicate.
    let (mut clients, _, fwd) = after_advertise(&plan, &keys);
    let mut dup = fwd[0].clone();
    let again = dup.adverts[j].clone();
    dup.adverts.push(again.clone());
    assert_eq!(clients[0].handle_keys(&dup), Err(Error::DuplicateClient(again.client)));
}

#[test]
fn replays_from_another_round_or_attempt_are_refused() {
    let (plan, keys) =
        federation(10, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 8);
    let old = new_clients(&plan, &keys, &policy());
    let retry = next_attempt(&plan, 99);
    let mut server = SecAggServer::new(retry.clone(), verifier()).unwrap();
    // The whole old message: wrong context.
    assert_eq!(server.adv(old[0].advertise().clone()), Err(Error::WrongContext));
    // The old signature under the new context: does not verify.
    let mut replay = old[0].advertise().clone();
    replay.ctx = retry.context();
    assert_eq!(server.adv(replay), Err(Error::BadSignature(plan.selected[0])));
    // And clients refuse old forwards the same way.
    let (mut clients, _, fwd) = after_advertise(&retry, &keys);
    let mut old_fwd = fwd[1].clone();
    old_fwd.ctx = plan.context();
    assert_eq!(clients[1].handle_keys(&old_fwd), Err(Error::WrongContext));
}

#[test]
fn a_retried_phase_returns_byte_identical_messages() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 9);
    let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
    let first = clients[2].handle_keys(&fwd[2]).unwrap();
    let again = clients[2].handle_keys(&fwd[2]).unwrap();
    assert_eq!(encode(&first), encode(&again), "ShareKeys resent byte-identical");
    let mut other = fwd[2].clone();
    other.adverts.pop();
    assert!(matches!(clients[2].handle_keys(&other), Err(Error::PhaseAlreadyAnswered(_))));
    for (i, c) in clients.iter_mut().enumerate() {
        if i != 2 {
            server.shares(c.handle_keys(&fwd[i]).unwrap()).unwrap();
        }
    }
    server.shares(first.clone()).unwrap();
    assert_eq!(server.shares(first), Ok(()), "an identical retry is accepted");
    let fwd = server.close_share_keys().unwrap();
    // The complaints message, proofs drawn fresh, is computed once and resent identically.
    let c1 = clients[2].handle_shares(&fwd[2]).unwrap();
    let c2 = clients[2].handle_shares(&fwd[2]).unwrap();
    assert_eq!(encode(&c1), encode(&c2), "complaints resent byte-identical");
    let mut fewer = fwd[2].clone();
    fewer.shares.pop();
    assert!(matches!(clients[2].handle_shares(&fewer), Err(Error::PhaseAlreadyAnswered(_))));
    for (i, c) in clients.iter_mut().enumerate() {
        if i != 2 {
            server.complain(c.handle_shares(&fwd[i]).unwrap()).unwrap();
        }
    }
    server.complain(c1.clone()).unwrap();
    assert_eq!(server.complain(c1), Ok(()), "an identical retry is accepted");
    let e = server.close_complaints().unwrap();
    let x = vec![5u32; DIM as usize];
    let mut ledger = ContributionLedger::default();
    let y1 = clients[2].handle_exclusions(&e, &x, &mut ledger).unwrap();
    let y2 = clients[2].handle_exclusions(&e, &x, &mut ledger).unwrap();
    assert_eq!(encode(&y1), encode(&y2), "masked input resent byte-identical");
    assert!(ledger.contributed(&CHECKPOINT));
}

#[test]
fn forged_and_malformed_messages_get_typed_errors() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 10);
    let clients = new_clients(&plan, &keys, &policy());
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    // Forged signature.
    let mut forged = clients[0].advertise().clone();
    forged.signature.0[10] ^= 1;
    assert_eq!(server.adv(forged), Err(Error::BadSignature(plan.selected[0])));
    // Certificate whose key hashes to another id.
    let mut wrong = clients[0].advertise().clone();
    wrong.credential = clients[1].advertise().credential.clone();
    assert!(matches!(server.adv(wrong), Err(Error::BadCredential { .. })));
    // Identity point as a key.
    let mut ident = clients[0].advertise().clone();
    ident.mask_pk = [0; 32];
    assert!(server.adv(ident).is_err());
    // A client outside U.
    let stranger = IdentityKey::generate(&mut rng(77));
    let mut outsider = clients[0].advertise().clone();
    outsider.client = stranger.id();
    assert_eq!(server.adv(outsider), Err(Error::NotSelected(stranger.id())));
    // Duplicate client id: the same client twice with different content.
    server.adv(clients[0].advertise().clone()).unwrap();
    let other = SecAggClient::new(
        keys[0].clone(),
        verifier(),
        &policy(),
        plan.clone(),
        &stand_in_trained_on(&plan, 0),
        &ContributionLedger::default(),
    )
    .unwrap();
    assert_eq!(
        server.adv(other.advertise().clone()),
        Err(Error::DuplicateClient(plan.selected[0]))
    );
    // A plan listing one id twice.
    let mut dup_plan = plan.clone();
    dup_plan.selected[1] = dup_plan.selected[0];
    assert_eq!(dup_plan.validate(), Err(Error::InvalidPlan(PlanRule::UnsortedSelection)));
    // Out of phase.
    let staged_err = server.close_masked_input();
    assert!(matches!(staged_err, Err(Error::OutOfPhase { .. })));
}

#[test]
fn wrong_vector_length_and_bad_chunks_are_refused() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 11);
    let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    let e = through_complaints(&mut server, clients.iter_mut().zip(&fwd));
    let mut server = server.with_upload_chunk_words(10);
    let mut ledger = ContributionLedger::default();
    assert_eq!(
        clients[0].handle_exclusions(&e, &[1, 2, 3], &mut ledger),
        Err(Error::WrongLength { got: 3, expected: DIM as usize })
    );
    let y = clients[0].handle_exclusions(&e, &vec![1; DIM as usize], &mut ledger).unwrap();
    // Too long, misaligned, past the end: refused, nothing changes.
    let mut long = y.clone();
    long.data.extend_from_slice(&[0; 4]);
    assert!(matches!(server.masked(&long), Err(Error::BadChunk { .. })));
    let mut odd = y.clone();
    odd.data.pop();
    assert!(matches!(server.masked(&odd), Err(Error::BadChunk { .. })));
    // Chunks: a conflicting overlap is refused, an identical retry is a duplicate.
    let parts = y.chunks(10);
    server.masked(&parts[0]).unwrap();
    assert_eq!(
        server.masked(&parts[0]),
        Ok(fedsec_crypto::secagg::server::UploadProgress::Duplicate)
    );
    let mut conflict = parts[0].clone();
    conflict.data[0] ^= 1;
    assert!(matches!(server.masked(&conflict), Err(Error::BadChunk { .. })));
    for p in &parts[1..] {
        server.masked(p).unwrap();
    }
    assert!(server.u3().contains(&0));
    assert_eq!(server.masked(&parts[1]), Err(Error::UploadComplete(plan.selected[0])));
}

#[test]
fn shares_from_a_non_neighbour_are_refused() {
    let (plan, keys) =
        federation(24, GraphKind::Harary, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 12);
    let (mut clients, mut server, fwd) = after_advertise(&plan, &keys);
    let g = server.graph().clone();
    let mut sent = Vec::new();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        let m = c.handle_keys(f).unwrap();
        sent.push(m.clone());
        server.shares(m).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    let stranger = (1..plan.n()).find(|&v| !g.are_neighbours(0, v)).unwrap();
    let mut bad = fwd[0].clone();
    bad.shares.push(ForwardedShares {
        from: plan.selected[stranger],
        dealt: fwd[stranger].shares[0].dealt.clone(),
    });
    assert_eq!(clients[0].handle_shares(&bad), Err(Error::NotNeighbour(plan.selected[stranger])));
    // On the server side: a ShareKeys ciphertext addressed to a non-neighbour.
    let (plan2, keys2) =
        federation(24, GraphKind::Harary, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 13);
    let (mut clients2, mut server2, fwd2) = after_advertise(&plan2, &keys2);
    let g2 = server2.graph().clone();
    let mut m = clients2[0].handle_keys(&fwd2[0]).unwrap();
    let s2 = (1..plan2.n()).find(|&v| !g2.are_neighbours(0, v)).unwrap();
    m.shares[0].to = plan2.selected[s2];
    assert_eq!(server2.shares(m), Err(Error::NotNeighbour(plan2.selected[s2])));
}

/// Verifiable shares (protocol v2): complete graph, n = 10, δ = 0.2, so t = q = 8, with holders
/// 0 and 1 (and then three holders) lying about their shares of client 0's seed. When the
/// first t shares do not give the secret behind B_0, each share is checked against the
/// commitment client 0 published for its holder, so the liars' shares are left out and their
/// holders named, and any t shares that match give the exact sum: lying holders cost nothing
/// while t honest shares arrive. In v1 the first t + 1 shares decided, and two liars aborted.
#[test]
fn lying_holders_cost_nothing_while_t_honest_shares_arrive() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 14);
    let t = plan.threshold as usize;
    assert_eq!((t, plan.q()), (8, 8));
    for liars in [vec![0usize], vec![0, 1], vec![0, 1, 2]] {
        let mut ledgers = vec![ContributionLedger::default(); n];
        let mut s = stage(&plan, &keys, &mut ledgers, &policy());
        let r = s.server.close_masked_input().unwrap();
        for c in s.clients.iter_mut() {
            s.server.consistent(c.handle_consistency(&r).unwrap()).unwrap();
        }
        let r = s.server.close_consistency().unwrap();
        for (i, c) in s.clients.iter_mut().enumerate() {
            let mut resp = c.handle_unmasking(&r).unwrap();
            if liars.contains(&i) {
                let lie = resp.self_mask_shares.iter_mut().find(|sh| sh.owner == plan.selected[0]);
                let lie = lie.expect("every holder has a share of client 0");
                lie.share = [i as u8 + 1; 32];
                lie.share[31] = 0;
            }
            s.server.unmask(resp).unwrap();
        }
        let all: Vec<usize> = (0..n).collect();
        if n - liars.len() >= t {
            assert_eq!(s.server.finish().unwrap(), clear_sum(&s.inputs, &all), "{liars:?}");
            let named: Vec<ClientId> = s.server.misbehaving_holders().iter().copied().collect();
            let mut expected: Vec<ClientId> = liars.iter().map(|&i| plan.selected[i]).collect();
            expected.sort();
            assert_eq!(named, expected, "the liars, and only they, are named");
        } else {
            // Fewer than t honest shares: no sum, never a wrong one — and the liars are named.
            let err = s.server.finish().unwrap_err();
            assert!(matches!(err, Error::ShareCountBelowThreshold { .. }), "{err:?}");
            let named: Vec<ClientId> = s.server.misbehaving_holders().iter().copied().collect();
            let mut expected: Vec<ClientId> = liars.iter().map(|&i| plan.selected[i]).collect();
            expected.sort();
            assert_eq!(named, expected, "named on the abort too");
            assert!(s.server.finish().is_err(), "an aborted round produces no sum");
        }
    }
}

#[test]
fn a_message_in_another_clients_name_is_refused() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 15);
    let clients = new_clients(&plan, &keys, &policy());
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    let victim = clients[0].advertise().clone();
    assert_eq!(
        server.receive_advertise(plan.selected[1], victim.clone()),
        Err(Error::SenderMismatch { claimed: plan.selected[0], authenticated: plan.selected[1] })
    );
    // Nothing changed: the victim's own message is still accepted.
    assert_eq!(server.receive_advertise(plan.selected[0], victim), Ok(()));
}

#[test]
fn partial_uploads_are_bounded_and_aligned() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 16);
    let mut clients = new_clients(&plan, &keys, &policy());
    let mut server = SecAggServer::new(plan.clone(), verifier())
        .unwrap()
        .with_upload_chunk_words(8)
        .with_max_uploads_in_flight(2);
    for c in &clients {
        server.adv(c.advertise().clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    let e = through_complaints(&mut server, clients.iter_mut().zip(&fwd));
    let ys: Vec<MaskedInput> = clients
        .iter_mut()
        .map(|c| {
            c.handle_exclusions(&e, &[3; DIM as usize], &mut ContributionLedger::default()).unwrap()
        })
        .collect();
    // Misaligned or wrongly sized chunks are refused.
    let mut misaligned = ys[0].chunks(8)[0].clone();
    misaligned.offset = 4;
    assert!(matches!(server.masked(&misaligned), Err(Error::BadChunk { .. })));
    assert!(matches!(server.masked(&ys[0].chunks(5)[0]), Err(Error::BadChunk { .. })));
    // Two partial uploads may be in flight, not a third; a whole vector needs no buffer.
    server.masked(&ys[0].chunks(8)[0]).unwrap();
    server.masked(&ys[1].chunks(8)[0]).unwrap();
    assert_eq!(server.masked(&ys[2].chunks(8)[0]), Err(Error::TooManyUploadsInFlight { limit: 2 }));
    assert_eq!(server.masked(&ys[3]), Ok(UploadProgress::Complete));
    for c in &ys[0].chunks(8)[1..] {
        server.masked(c).unwrap();
    }
    assert_eq!(server.uploads_in_flight(), 1);
    server.masked(&ys[2].chunks(8)[0]).unwrap();
    // An evicted partial upload (its lease ran out) frees its place; a complete one stays.
    assert!(server.evict_upload(&ys[1].client));
    assert!(!server.evict_upload(&ys[1].client), "nothing left to evict");
    assert!(!server.evict_upload(&ys[0].client), "a complete upload is in the sum");
    assert_eq!(server.uploads_in_flight(), 1);
    server.masked(&ys[4].chunks(8)[0]).unwrap();
    assert_eq!(server.u3_len(), 2);
}

#[test]
fn a_plan_whose_sum_could_wrap_is_refused() {
    let (mut plan, keys) =
        federation(10, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 17);
    plan.quant.value_scale *= 4.0;
    assert!(matches!(plan.validate(), Err(Error::BitBudget(_))));
    let on = stand_in_trained_on(&plan, 0);
    let refused = SecAggClient::new(
        keys[0].clone(),
        verifier(),
        &policy(),
        plan,
        &on,
        &ContributionLedger::default(),
    );
    assert!(matches!(refused, Err(Error::BitBudget(_))));
}

#[test]
fn unmasking_needs_q_valid_signatures_on_the_signed_view() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 18);
    let q = plan.q();
    let ledgers = &mut vec![ContributionLedger::default(); n];
    let mut s = stage(&plan, &keys, ledgers, &policy());
    let ctx = *s.clients[0].context();
    let survivors = Survivors::from_indices(n, 0..n);
    let check = ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        excluded: nobody(n),
    };
    let signed: Vec<SignedSurvivors> = (0..n)
        .map(|i| {
            let sig = s.clients[i].handle_consistency(&check).unwrap();
            SignedSurvivors {
                client: sig.client,
                credential: s.adverts[i].credential.clone(),
                signature: sig.signature,
            }
        })
        .collect();
    let request = |sigs: &[SignedSurvivors]| UnmaskingRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        signatures: sigs.to_vec(),
    };
    // q − 1 signatures: refused (and the client aborts, revealing nothing).
    assert_eq!(
        s.clients[0].handle_unmasking(&request(&signed[..q - 1])),
        Err(Error::TooFewConsistencySignatures { have: q - 1, need: q })
    );
    // A forged signature among q: refused.
    let mut forged = signed[..q].to_vec();
    forged[q - 1].signature.0[3] ^= 1;
    assert_eq!(
        s.clients[1].handle_unmasking(&request(&forged)),
        Err(Error::BadSignature(plan.selected[q - 1]))
    );
    // The same signer twice: refused.
    let mut twice = signed[..q - 1].to_vec();
    twice.push(signed[0].clone());
    assert_eq!(
        s.clients[2].handle_unmasking(&request(&twice)),
        Err(Error::DuplicateClient(plan.selected[0]))
    );
    // q valid signatures from distinct clients of U3: the client reveals its shares.
    let ok = s.clients[3].handle_unmasking(&request(&signed[..q])).unwrap();
    assert_eq!(ok.self_mask_shares.len(), n);
    assert!(ok.mask_key_shares.is_empty());
}

/// Proofs of knowledge of the advertised keys (protocol v2): a client that advertises another
/// client's key plus r·G — a key whose secret it does not know, related to the other's by an r
/// it does — is refused by the server when it advertises it, and by every neighbour a server
/// forwards it to. Its best tries are the victim's own proof and a proof made with r.
#[test]
fn an_advert_of_anothers_key_plus_r_g_is_refused() {
    use common::fuzz::signed_advert_with_proofs;
    use fedsec_crypto::proofs::{KeyProof, KeyRole};

    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 23);
    let (attacker, victim) = (1, 2);
    let r = SecretScalar::random(&mut rng(24));
    let plus_r = |key: &[u8; 32]| {
        let p = PublicKey::from_bytes(key).unwrap();
        (p.point() + r.public().point()).compress().to_bytes()
    };
    for role in [KeyRole::Encryption, KeyRole::Masking] {
        for victims_own_proof in [true, false] {
            let mut clients = new_clients(&plan, &keys, &policy());
            let adverts: Vec<AdvertiseKeys> =
                clients.iter().map(|c| c.advertise().clone()).collect();
            let ctx = adverts[0].ctx;
            let (own, v) = (&adverts[attacker], &adverts[victim]);
            let (victim_key, victim_proof) = match role {
                KeyRole::Encryption => (v.enc_pk, v.enc_pk_proof),
                KeyRole::Masking => (v.mask_pk, v.mask_pk_proof),
            };
            let related = plus_r(&victim_key);
            let proof = if victims_own_proof {
                victim_proof
            } else {
                KeyProof::prove(&r, &ctx, &keys[attacker].id(), role)
            };
            let (keys3, proofs) = match role {
                KeyRole::Encryption => {
                    ([related, own.mask_pk, own.self_mask_commitment], [proof, own.mask_pk_proof])
                }
                KeyRole::Masking => {
                    ([own.enc_pk, related, own.self_mask_commitment], [own.enc_pk_proof, proof])
                }
            };
            let forged = signed_advert_with_proofs(&keys[attacker], ctx, keys3, proofs);
            let refused = Err(Error::BadKeyProof { client: keys[attacker].id(), role });

            // The server refuses it.
            let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
            assert_eq!(server.adv(forged.clone()), refused, "server, {role}");

            // A server that admits it anyway and forwards it: every other client refuses it.
            let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
            for a in &adverts {
                server.adv(a.clone()).unwrap();
            }
            let forwards = server.close_advertise().unwrap();
            for (i, (c, f)) in clients.iter_mut().zip(&forwards).enumerate() {
                if i == attacker {
                    continue;
                }
                let mut f = f.clone();
                for a in f.adverts.iter_mut().filter(|a| a.client == keys[attacker].id()) {
                    *a = forged.clone();
                }
                assert_eq!(c.handle_keys(&f).map(|_| ()), refused, "client {i}, {role}");
            }
        }
    }
    let clients = new_clients(&plan, &keys, &policy());
    let own = clients[attacker].advertise().clone();
    // The attacker's honest advert passes: what is refused is the relation.
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    assert_eq!(server.adv(own), Ok(()));
}

/// An Ed25519 signature that only a lenient rule accepts: R is the identity point under a
/// non-canonical encoding (y = p + 1), s = H(R ‖ A ‖ M)·a. The cofactorless equation
/// s·B = R + H(R ‖ A ‖ M)·A holds once R is decoded leniently, as ed25519-dalek's batch
/// verification decodes it; `verify_strict` refuses it (non-canonical, small-order R).
fn lenient_only_signature(key: &ed25519_dalek::SigningKey, message: &[u8]) -> [u8; 64] {
    use sha2::{Digest, Sha512};
    let mut r = [0xffu8; 32];
    r[0] = 0xee;
    r[31] = 0x7f;
    let hram: [u8; 64] = Sha512::new()
        .chain_update(r)
        .chain_update(key.verifying_key().as_bytes())
        .chain_update(message)
        .finalize()
        .into();
    let s = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&hram) * key.to_scalar();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r);
    sig[32..].copy_from_slice(&s.to_bytes());
    sig
}

/// One signature rule for every party: a consistency signature that a lenient verifier would
/// count (ed25519-dalek's batch verification accepts it) is refused by the server when the
/// signer sends it and by every client when a server forwards it, so no party can count a
/// signature that another refuses.
#[test]
fn a_signature_only_a_lenient_rule_accepts_is_refused_by_client_and_server_alike() {
    let n = 10;
    let seed = 19;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, seed);
    // The identities again, as signing keys: `federation` draws them first from its seed.
    let mut r = rng(seed);
    let signing: Vec<ed25519_dalek::SigningKey> =
        (0..n).map(|_| ed25519_dalek::SigningKey::generate(&mut r)).collect();
    let q = plan.q();
    let w = q - 1;
    let w_key = signing
        .iter()
        .find(|k| IdentityKey::from_signing_key((*k).clone()).id() == keys[w].id())
        .expect("federation draws its identities first");

    let ledgers = &mut vec![ContributionLedger::default(); n];
    let mut s = stage(&plan, &keys, ledgers, &policy());
    let ctx = *s.clients[0].context();
    let survivors = Survivors::from_indices(n, 0..n);
    s.server.close_masked_input().unwrap();
    let message = fedsec_crypto::kdf::labelled(
        fedsec_crypto::kdf::Label::Consistency,
        &ctx,
        &[&survivors.digest(), &nobody(n).digest()],
    );
    // The same message, honestly signed, passes the one rule: only the crafted encoding fails.
    let honest = s.clients[w].handle_consistency(&ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        excluded: nobody(n),
    });
    let honest = honest.unwrap().signature;
    assert!(fedsec_crypto::sign::signature_holds(&keys[w].verifying_key(), &message, &honest.0));
    let crafted = Sig(lenient_only_signature(w_key, &message));
    assert!(
        ed25519_dalek::verify_batch(
            &[&message[..]],
            &[ed25519_dalek::Signature::from_bytes(&crafted.0)],
            &[keys[w].verifying_key()],
        )
        .is_ok(),
        "the crafted signature passes a lenient (batch) check"
    );

    // The server refuses it from its signer.
    assert_eq!(
        s.server.consistent(ConsistencySignature {
            version: PROTOCOL_VERSION,
            ctx,
            client: keys[w].id(),
            signature: crafted
        }),
        Err(Error::BadSignature(keys[w].id()))
    );

    // A server that forwards it among q signatures: every client refuses it alike.
    let check = ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        excluded: nobody(n),
    };
    let mut signed: Vec<SignedSurvivors> = (0..n)
        .map(|i| {
            let sig = s.clients[i].handle_consistency(&check).unwrap();
            SignedSurvivors {
                client: sig.client,
                credential: s.adverts[i].credential.clone(),
                signature: sig.signature,
            }
        })
        .collect();
    signed[w].signature = crafted;
    let request = UnmaskingRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors: survivors.clone(),
        signatures: signed[..q].to_vec(),
    };
    for (i, c) in s.clients.iter_mut().enumerate().filter(|(i, _)| *i != w) {
        assert_eq!(
            c.handle_unmasking(&request),
            Err(Error::BadSignature(keys[w].id())),
            "client {i}"
        );
    }
}

/// Flips one random byte of a message's encoding; `None` if the result does not decode.
fn mutate<T: serde::Serialize + serde::de::DeserializeOwned>(
    m: &T,
    r: &mut impl rand_core::Rng,
) -> Option<T> {
    let mut bytes = encode(m);
    let i = (r.next_u32() as usize) % bytes.len();
    bytes[i] ^= 1 << (r.next_u32() % 8);
    decode(&bytes).ok()
}

/// After each honest message, the same client's mutated copies and replays of other phases'
/// messages are refused with an error, and the round still ends with the exact sum.
#[test]
fn garbage_after_honest_messages_changes_nothing() {
    let n = 24;
    let (plan, keys) =
        federation(n, GraphKind::Harary, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 19);
    let mut r = rng(20);
    let mut clients = new_clients(&plan, &keys, &policy());
    let mut server =
        SecAggServer::new(plan.clone(), verifier()).unwrap().with_upload_chunk_words(8);
    let mut refused = 0;
    macro_rules! garbage {
        ($msg:expr, $recv:ident) => {
            for _ in 0..4 {
                if let Some(bad) = mutate(&$msg, &mut r) {
                    if bad != $msg {
                        assert!(server.$recv(bad).is_err(), "a mutated message was accepted");
                        refused += 1;
                    }
                }
            }
        };
    }
    let adverts: Vec<_> = clients.iter().map(|c| c.advertise().clone()).collect();
    for a in &adverts {
        server.adv(a.clone()).unwrap();
        garbage!(a.clone(), adv);
    }
    let fwd = server.close_advertise().unwrap();
    assert!(server.adv(adverts[0].clone()).is_err(), "phase 0 is closed");
    let mut sent = Vec::new();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        let m = c.handle_keys(f).unwrap();
        server.shares(m.clone()).unwrap();
        garbage!(m.clone(), shares);
        sent.push(m);
    }
    let fwd = server.close_share_keys().unwrap();
    assert!(server.shares(sent[0].clone()).is_err(), "phase 1 is closed");
    let mut complaints = Vec::new();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        let m = c.handle_shares(f).unwrap();
        server.complain(m.clone()).unwrap();
        garbage!(m.clone(), complain);
        complaints.push(m);
    }
    let e = server.close_complaints().unwrap();
    assert!(server.complain(complaints[0].clone()).is_err(), "phase 1½ is closed");
    let xs = inputs(n, DIM, 21);
    for (i, c) in clients.iter_mut().enumerate() {
        let y = c.handle_exclusions(&e, &xs[i], &mut ContributionLedger::default()).unwrap();
        for chunk in y.chunks(8) {
            server.masked(&chunk).unwrap();
        }
        // Once the upload is complete (a client's own later chunks are its own business).
        for chunk in y.chunks(8) {
            for _ in 0..4 {
                if let Some(bad) = mutate(&chunk, &mut r).filter(|b| *b != chunk) {
                    assert!(server.masked(&bad).is_err(), "a mutated chunk was accepted");
                    refused += 1;
                }
            }
        }
    }
    let check = server.close_masked_input().unwrap();
    for c in clients.iter_mut() {
        let m = c.handle_consistency(&check).unwrap();
        server.consistent(m.clone()).unwrap();
        garbage!(m.clone(), consistent);
    }
    let request = server.close_consistency().unwrap();
    for c in clients.iter_mut() {
        let m = c.handle_unmasking(&request).unwrap();
        server.unmask(m.clone()).unwrap();
        garbage!(m.clone(), unmask);
    }
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(server.finish().unwrap(), clear_sum(&xs, &all));
    assert!(refused > 200, "only {refused} mutations exercised");
}

/// Every attempt makes fresh keys from the OS RNG: nothing the caller passes in can make two
/// attempts share b_u or s_u^SK (one reconstructed in each would unmask y_u).
#[test]
fn every_attempt_makes_fresh_keys() {
    let (plan, keys) =
        federation(10, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 23);
    let make = |p: &RoundPlan| {
        SecAggClient::new(
            keys[0].clone(),
            verifier(),
            &policy(),
            p.clone(),
            &stand_in_trained_on(p, 0),
            &ContributionLedger::default(),
        )
        .unwrap()
        .advertise()
        .clone()
    };
    let (a, b) = (make(&plan), make(&plan));
    let c = make(&next_attempt(&plan, 1));
    for (x, y) in [(&a, &b), (&a, &c)] {
        assert_ne!(x.enc_pk, y.enc_pk);
        assert_ne!(x.mask_pk, y.mask_pk);
        assert_ne!(x.self_mask_commitment, y.self_mask_commitment);
    }
}

/// What a round run through the complaints phase with some faulty clients came to.
struct Judged {
    /// E.
    excluded: Vec<usize>,
    /// Each client's answer to E (its masked input, or why it stopped).
    answers: Vec<Option<Result<MaskedInput, Error>>>,
    /// The unmasking responses.
    revealed: Vec<UnmaskingResponse>,
    /// The sum, or why the round aborted.
    sum: Result<Vec<u32>, Error>,
    inputs: Vec<Vec<u32>>,
}

/// Runs a whole round over `clients` (faults set by the caller), every client answering every
/// phase it can.
fn run_judged(plan: &RoundPlan, clients: &mut [SecAggClient]) -> Judged {
    let n = plan.n();
    let inputs = inputs(n, plan.dim, 91);
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    for c in clients.iter() {
        server.adv(c.advertise().clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.complain(c.handle_shares(f).unwrap()).unwrap();
    }
    let e = server.close_complaints().unwrap();
    let excluded = e.excluded.indices(n).unwrap();
    let mut answers = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let y = c.handle_exclusions(&e, &inputs[i], &mut ContributionLedger::default());
        if let Ok(y) = &y {
            server.masked(y).unwrap();
        }
        answers.push(Some(y));
    }
    let request = server.close_masked_input().unwrap();
    let u3 = server.u3();
    for &i in &u3 {
        server.consistent(clients[i].handle_consistency(&request).unwrap()).unwrap();
    }
    let request = server.close_consistency().unwrap();
    let mut revealed = Vec::new();
    for &i in &u3 {
        let r = clients[i].handle_unmasking(&request).unwrap();
        server.unmask(r.clone()).unwrap();
        revealed.push(r);
    }
    let sum = server.finish();
    Judged { excluded, answers, revealed, sum, inputs }
}

/// A corrupt dealer deals one holder a share that does not decrypt, and another one a share
/// off its commitment, each under a correctly signed commitment (the server's phase-1 checks
/// pass). Each holder complains; each complaint is upheld; the dealer alone is excluded, its
/// neighbours finish the round with the exact sum of everyone else, and nobody reveals a
/// share of the excluded dealer. Without the complaints phase, a holder that could not open
/// its share stopped (v1: one corrupt client knocked out its neighbours).
#[test]
fn a_corrupt_dealer_is_excluded_by_its_holders_complaints_and_its_neighbours_finish() {
    use fedsec_crypto::secagg::client::hazmat::BadShare;
    for (graph, n, seed) in [(GraphKind::Complete, 10, 61), (GraphKind::Harary, 24, 62)] {
        let (plan, keys) =
            federation(n, graph, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, seed);
        let mut clients = new_clients(&plan, &keys, &policy());
        let g = Graph::from_plan(&plan).unwrap();
        let dealer = 3;
        let holders = g.neighbours(dealer);
        let (a, b) = (holders[0], holders[1]);
        hazmat::deal_bad_share(&mut clients[dealer], plan.selected[a], BadShare::Undecryptable);
        hazmat::deal_bad_share(&mut clients[dealer], plan.selected[b], BadShare::OffCommitment);
        let j = run_judged(&plan, &mut clients);
        assert_eq!(j.excluded, vec![dealer], "{graph:?}");
        assert_eq!(j.answers[dealer].as_ref().unwrap().as_ref().unwrap_err(), &Error::Excluded);
        let others: Vec<usize> = (0..n).filter(|&i| i != dealer).collect();
        assert!(others.iter().all(|&i| j.answers[i].as_ref().unwrap().is_ok()), "{graph:?}");
        assert_eq!(j.sum.unwrap(), clear_sum(&j.inputs, &others), "{graph:?}");
        let dealer_id = plan.selected[dealer];
        assert!(
            j.revealed.iter().all(|r| {
                r.self_mask_shares.iter().chain(&r.mask_key_shares).all(|s| s.owner != dealer_id)
            }),
            "a share of the excluded dealer was revealed"
        );
    }
}

/// A client that complains about a good share (its K and proof true) is excluded; the dealer
/// it accused finishes the round with the others.
#[test]
fn a_false_complaint_excludes_the_complainer() {
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 63);
    let mut clients = new_clients(&plan, &keys, &policy());
    let (liar, accused) = (5, 2);
    hazmat::complain_falsely(&mut clients[liar], plan.selected[accused]);
    let j = run_judged(&plan, &mut clients);
    assert_eq!(j.excluded, vec![liar]);
    let others: Vec<usize> = (0..n).filter(|&i| i != liar).collect();
    assert_eq!(j.sum.unwrap(), clear_sum(&j.inputs, &others));
}

/// A dealer that deals valid shares to t − 1 holders and bad ones to all the rest: every
/// holder of a bad share complains, the dealer is excluded, and the round finishes with every
/// honest client.
#[test]
fn a_dealer_valid_to_t_minus_1_holders_only_is_excluded_and_every_honest_client_finishes() {
    use fedsec_crypto::secagg::client::hazmat::BadShare;
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 64);
    let t = plan.threshold as usize;
    let mut clients = new_clients(&plan, &keys, &policy());
    let dealer = 0;
    // Its own share and t − 2 others valid: t − 1 holders; every other holder's bad.
    for (k, v) in (1..n).enumerate() {
        if k >= t.saturating_sub(2) {
            let how = if k % 2 == 0 { BadShare::Undecryptable } else { BadShare::OffCommitment };
            hazmat::deal_bad_share(&mut clients[dealer], plan.selected[v], how);
        }
    }
    let j = run_judged(&plan, &mut clients);
    assert_eq!(j.excluded, vec![dealer]);
    let honest: Vec<usize> = (1..n).collect();
    assert!(honest.iter().all(|&i| j.answers[i].as_ref().unwrap().is_ok()));
    assert_eq!(j.sum.unwrap(), clear_sum(&j.inputs, &honest));
}

/// What E a client refuses, and the U3 it refuses against it: in E itself; a dealer it
/// complained about left out of E; a consistency request naming another E, or a U3 holding a
/// member of E.
#[test]
fn a_client_refuses_an_e_that_excludes_it_or_ignores_its_complaint_and_a_u3_with_a_member_of_e() {
    use fedsec_crypto::error::ViewContradiction as V;
    use fedsec_crypto::secagg::client::hazmat::BadShare;
    let n = 10;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.2, 0.05, AdversaryClass::SemiMalicious, DIM, 65);
    let ctx = plan.context();
    let mut clients = new_clients(&plan, &keys, &policy());
    let (dealer, victim) = (4, 6);
    hazmat::deal_bad_share(&mut clients[dealer], plan.selected[victim], BadShare::Undecryptable);
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    for c in clients.iter() {
        server.adv(c.advertise().clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    let complaints: Vec<Complaints> =
        clients.iter_mut().zip(&fwd).map(|(c, f)| c.handle_shares(f).unwrap()).collect();
    assert_eq!(complaints[victim].complaints.len(), 1, "the victim complains about the dealer");
    assert!(complaints.iter().enumerate().all(|(i, m)| i == victim || m.complaints.is_empty()));
    let x = vec![0u32; DIM as usize];
    let exclusions = |members: &[usize]| Exclusions {
        version: PROTOCOL_VERSION,
        ctx,
        excluded: Survivors::from_indices(n, members.iter().copied()),
    };
    let mut ledger = ContributionLedger::default();
    // An E without the accused, the victim not in it either: its complaint was ignored.
    assert_eq!(
        clients[victim].handle_exclusions(&exclusions(&[]), &x, &mut ledger),
        Err(Error::ComplaintIgnored(plan.selected[dealer]))
    );
    assert!(!ledger.contributed(&plan.checkpoint), "nothing recorded: it never uploaded");
    // An E holding the client itself.
    assert_eq!(
        clients[1].handle_exclusions(&exclusions(&[1]), &x, &mut ledger),
        Err(Error::Excluded)
    );
    // The honest E: the dealer. A consistency request with another E, or a U3 holding it.
    let e = exclusions(&[dealer]);
    for i in [2, 3] {
        clients[i].handle_exclusions(&e, &x, &mut ContributionLedger::default()).unwrap();
    }
    let all_but = |out: &[usize]| Survivors::from_indices(n, (0..n).filter(|i| !out.contains(i)));
    let request = |survivors, excluded| ConsistencyRequest {
        version: PROTOCOL_VERSION,
        ctx,
        survivors,
        excluded,
    };
    assert_eq!(
        clients[2].handle_consistency(&request(all_but(&[dealer, 1, 6]), nobody(n))),
        Err(Error::ContradictsSignedView(V::OtherExcludedSet))
    );
    assert_eq!(
        clients[3].handle_consistency(&request(all_but(&[1, 6]), e.excluded.clone())),
        Err(Error::ContradictsSignedView(V::ContainsExcluded(plan.selected[dealer])))
    );
}

/// A server restarted after phase 1½ closed, with a dealer excluded and a false complainer:
/// it judges the saved complaints again and comes to the same E; the round goes on and its sum
/// is exact. A complaints message refused for its signature leaves its sender a dropout.
#[test]
fn a_server_resumed_after_the_complaints_comes_to_the_same_e_and_an_exact_sum() {
    use fedsec_crypto::secagg::client::hazmat::BadShare;
    use fedsec_crypto::secagg::server::ClosedState;
    let n = 12;
    let (plan, keys) =
        federation(n, GraphKind::Complete, 0.3, 0.05, AdversaryClass::SemiMalicious, DIM, 66);
    let mut clients = new_clients(&plan, &keys, &policy());
    let (dealer, liar, forger) = (1, 7, 9);
    hazmat::deal_bad_share(&mut clients[dealer], plan.selected[4], BadShare::OffCommitment);
    hazmat::complain_falsely(&mut clients[liar], plan.selected[2]);
    let mut server = SecAggServer::new(plan.clone(), verifier()).unwrap();
    for c in &clients {
        server.adv(c.advertise().clone()).unwrap();
    }
    let fwd = server.close_advertise().unwrap();
    for (c, f) in clients.iter_mut().zip(&fwd) {
        server.shares(c.handle_keys(f).unwrap()).unwrap();
    }
    let fwd = server.close_share_keys().unwrap();
    for (i, (c, f)) in clients.iter_mut().zip(&fwd).enumerate() {
        let mut m = c.handle_shares(f).unwrap();
        if i == forger {
            m.signature.0[0] ^= 1;
            assert_eq!(server.complain(m), Err(Error::BadSignature(plan.selected[forger])));
        } else {
            server.complain(m).unwrap();
        }
    }
    let e = server.close_complaints().unwrap();
    assert_eq!(e.excluded.indices(n).unwrap(), vec![dealer, liar]);
    let state = ClosedState::from_bytes(&server.closed_state().unwrap().to_bytes()).unwrap();
    let mut server = SecAggServer::resume(plan.clone(), verifier(), state).unwrap();
    assert_eq!(server.exclusions(), Some(e.clone()), "the same E after the restart");
    let xs = inputs(n, DIM, 67);
    let mut uploaded = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match c.handle_exclusions(&e, &xs[i], &mut ContributionLedger::default()) {
            Ok(y) if i == forger => assert_eq!(
                server.masked(&y),
                Err(Error::NotEligible {
                    client: plan.selected[forger],
                    phase: fedsec_crypto::secagg::Phase::MaskedInputCollection,
                })
            ),
            Ok(y) => {
                server.masked(&y).unwrap();
                uploaded.push(i);
            }
            Err(e) => assert!(i == dealer || i == liar, "{i}: {e}"),
        }
    }
    assert_eq!(
        uploaded,
        (0..n).filter(|i| ![dealer, liar, forger].contains(i)).collect::<Vec<_>>()
    );
    let r = server.close_masked_input().unwrap();
    for &i in &uploaded {
        server.consistent(clients[i].handle_consistency(&r).unwrap()).unwrap();
    }
    let r = server.close_consistency().unwrap();
    for &i in &uploaded {
        server.unmask(clients[i].handle_unmasking(&r).unwrap()).unwrap();
    }
    assert_eq!(server.finish().unwrap(), clear_sum(&xs, &uploaded));
}
