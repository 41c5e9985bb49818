//! `SecAggServer::resume` from a saved state edited at random. A state taken at any phase
//! close — U1's adverts, U2, U3, the masked sum, the consistency signatures, the unmasking
//! responses — with one edit (a member dropped or added, a key swapped, a signature flipped,
//! the sum cut, the phase moved, a response altered) is refused with the error the edit
//! predicts, or resumes; a resumed round ends with the exact sum of its U3 or an abort, except
//! where the edit is to what resume takes on trust (see [`Verdict::Trusted`]).
//!
//! `FEDSEC_FUZZ_CASES` sets the cases (`cargo test` runs a smoke count).

mod common;

use fedsec_crypto::PROTOCOL_VERSION;
use std::collections::BTreeMap;

use common::fuzz::*;
use common::verifier;
use fedsec_crypto::RoundPlan;
use fedsec_crypto::error::{Error, Malformation};
use fedsec_crypto::ids::ClientId;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{AdvertiseKeys, KeysForward};
use fedsec_crypto::secagg::server::{ClosedState, SecAggServer, VerifiedAdvert};
use proptest::collection::vec;
use proptest::prelude::*;

/// What resuming an edited saved state must do.
#[derive(Debug)]
enum Verdict {
    /// Refuse it with this error.
    Refused(Error),
    /// Resume; the round then ends with the exact sum of its U3, or aborts.
    Resumes,
    /// Resume (or refuse): the edit is to what resume takes on trust — U2 and U3 before any
    /// signature binds them, the masked sum — which only the caller's sealing of the state
    /// protects. The round must not panic; its sum may be wrong: a word of the masked sum
    /// flipped or a member dropped from U3 when phase 2 closed give a wrong sum.
    Trusted,
}

/// An Ed25519 public key encoding that is not a point.
fn not_a_point() -> [u8; 32] {
    (0..=u8::MAX)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .expect("some encodings are not points")
}

/// Whether edit `kind` of [`edit`] applies to a state saved when phase `at` closed.
fn applies(kind: u32, at: usize) -> bool {
    match kind {
        13 | 14 | 22 | 30 | 31 => at >= 1,
        32..=34 => at >= 2,
        15 | 16 | 18 => at >= 3,
        19..=21 => at >= 4,
        23 => at <= 4,
        24..=28 => at == 5,
        _ => true,
    }
}

/// Edits `state` as `choice` says, among the edits that apply to its phase: what the edit
/// was, and what resuming it must do.
fn edit(state: &mut ClosedState, plan: &RoundPlan, choice: u32) -> (&'static str, Verdict) {
    use Verdict::*;
    let at = state.closed.index();
    let kinds: Vec<u32> = (0..35).filter(|&k| applies(k, at)).collect();
    let kind = kinds[choice as usize % kinds.len()];
    let inconsistent = |why| Refused(Error::SavedStateInconsistent(why));
    let fewer = inconsistent("a closed phase left fewer than q clients");
    let (q, n, x) = (plan.q(), plan.n(), (choice / 32) as usize);
    let e = x % state.adverts.len();
    let next = (e + 1) % state.adverts.len();
    let id = state.adverts[e].advert.client;
    let index = |id: &ClientId| plan.index_of(id).expect("a selected client") as u32;
    let client = |i: u32| plan.selected[i as usize];
    let (u1, u2, u3) = (
        state.adverts.iter().map(|a| index(&a.advert.client)).collect::<Vec<_>>(),
        state.u2.clone(),
        state.u3.clone(),
    );
    let first_signer = state.signatures.first().map(|s| s.client);
    // The senders of a complaints message: none is excluded in an honest round, so these
    // are the clients that may upload.
    let senders: Vec<u32> = state.complaints.iter().map(|m| index(&m.client)).collect();
    let not_uploaders = inconsistent("U3 is not within the senders of complaints outside E");
    let unclosed = inconsistent("phase 1½ does not close on the saved complaints");
    let complaints = state.complaints.len().max(1);
    let (sigs, responses) = (state.signatures.len().max(1), state.unmasking.len().max(1));
    let advert = &mut state.adverts[e];
    match kind {
        0 => ("nothing", Resumes),
        1 => {
            state.adverts.remove(e);
            let holds = state.dealings.iter().any(|d| d.entries.iter().any(|e| e.holder() == id));
            let verdict = if u2.contains(&index(&id)) {
                inconsistent("U2 is not within U1")
            } else if state.adverts.len() < q {
                fewer
            } else if holds {
                // A dealer of U2 dealt it a share, as one of H(u)∩U1.
                inconsistent("a dealing's entries are not its holders")
            } else {
                Resumes
            };
            ("an advert dropped", verdict)
        }
        2 => {
            state.adverts.push(state.adverts[e].clone());
            ("an advert twice", inconsistent("an advert appears twice"))
        }
        3 => {
            let (s, a) = (stranger(), &advert.advert);
            let advert = signed_advert(&s, a.ctx, [a.enc_pk, a.mask_pk, a.self_mask_commitment]);
            let identity_key = s.verifying_key().to_bytes();
            state.adverts.push(VerifiedAdvert { advert, identity_key });
            ("an advert of a stranger", Refused(Error::NotSelected(s.id())))
        }
        4 => {
            advert.advert.ctx = other_ctx(advert.advert.ctx);
            ("an advert of another round", Refused(Error::WrongContext))
        }
        5 => {
            advert.advert.version = PROTOCOL_VERSION + 1;
            (
                "an advert of another version",
                Refused(Error::UnsupportedVersion {
                    got: PROTOCOL_VERSION + 1,
                    supported: PROTOCOL_VERSION,
                }),
            )
        }
        6 => {
            advert.identity_key = not_a_point();
            ("an identity key not on the curve", Refused(Error::BadPublicKey(id)))
        }
        7 => {
            advert.advert.mask_pk = [0xff; 32];
            ("a mask key not a point", Refused(Error::BadPublicKey(id)))
        }
        8 => {
            advert.advert.signature = flip_sig(advert.advert.signature, x);
            ("an advert signature flipped", Refused(Error::BadSignature(id)))
        }
        9 => {
            state.adverts[e].advert.enc_pk = state.adverts[next].advert.enc_pk;
            ("an encryption key swapped", Refused(Error::BadSignature(id)))
        }
        10 => {
            let b = state.adverts[next].advert.self_mask_commitment;
            state.adverts[e].advert.self_mask_commitment = b;
            ("a self-mask commitment swapped", Refused(Error::BadSignature(id)))
        }
        11 => {
            state.adverts[e].advert.mask_pk = state.adverts[next].advert.mask_pk;
            ("a mask key swapped", Refused(Error::BadSignature(id)))
        }
        12 => {
            state.adverts[e].identity_key = state.adverts[next].identity_key;
            ("an identity key swapped", Refused(Error::BadPublicKey(id)))
        }
        13 => {
            let v = state.u2.remove(x % u2.len());
            state.dealings.remove(x % u2.len());
            let revealed = state
                .unmasking
                .iter()
                .any(|r| r.mask_key_shares.iter().any(|s| s.owner == client(v)));
            // Without v, some member of U2 may keep fewer than t holders.
            let graph = fedsec_crypto::graph::Graph::from_plan(plan).expect("a valid plan");
            let t = plan.threshold as usize;
            let short = state.u2.iter().any(|&u| {
                let holders = graph.holders(u as usize);
                holders.iter().filter(|&&h| state.u2.contains(&(h as u32))).count() < t
            });
            let verdict = if senders.contains(&v) {
                Refused(Error::NotEligible { client: client(v), phase: Phase::Complaints })
            } else if at >= 2 && short {
                unclosed
            } else if u3.contains(&v) {
                not_uploaders
            } else if revealed {
                Refused(Error::Malformed(Malformation::UnexpectedMaskKeyShare(client(v))))
            } else {
                Trusted
            };
            ("a member of U2 dropped", verdict)
        }
        14 => {
            // A client of U1 that sent no shares: nobody holds its shares, none is revealed.
            let absent: Vec<u32> = u1.iter().copied().filter(|v| !u2.contains(v)).collect();
            match absent.get(x / 2 % absent.len().max(1)).filter(|_| x % 2 == 0) {
                Some(&v) => {
                    // Its dealing would have to be forged: it signed none.
                    state.u2.push(v);
                    ("a member added to U2", inconsistent("not one dealing per member of U2"))
                }
                None => {
                    state.u2.push(n as u32);
                    ("a non-member added to U2", inconsistent("U2 is not within U1"))
                }
            }
        }
        15 => {
            let v = state.u3.remove(x % u3.len());
            let verdict = match first_signer {
                Some(s) if s == client(v) => {
                    inconsistent("a consistency signature from outside U3")
                }
                Some(s) => Refused(Error::BadSignature(s)),
                None if state.u3.len() < q => fewer,
                None => Trusted,
            };
            ("a member of U3 dropped", verdict)
        }
        16 => match u2.iter().copied().find(|v| !u3.contains(v)) {
            Some(v) => {
                state.u3.push(v);
                let verdict = if senders.contains(&v) {
                    first_signer.map_or(Trusted, |s| Refused(Error::BadSignature(s)))
                } else {
                    not_uploaders
                };
                ("a member of U2 added to U3", verdict)
            }
            None => {
                state.u3.push(n as u32);
                ("a non-member added to U3", not_uploaders)
            }
        },
        17 if at >= 3 => {
            state.sum.pop();
            ("the masked sum cut", inconsistent("the masked sum's length is not the plan's"))
        }
        17 => {
            state.sum.extend([0; 4]);
            ("a masked sum before its phase", inconsistent("U3 before phase 2 closed"))
        }
        18 => {
            let len = state.sum.len();
            state.sum[x % len] ^= 1;
            ("a bit of the masked sum flipped", Trusted)
        }
        19 => {
            let s = &mut state.signatures[x % sigs];
            s.signature = flip_sig(s.signature, x);
            ("a consistency signature flipped", Refused(Error::BadSignature(s.client)))
        }
        20 => {
            let s = state.signatures.remove(x % sigs).client;
            let verdict = if state.unmasking.iter().any(|r| r.client == s) {
                Refused(Error::NotEligible { client: s, phase: Phase::Unmasking })
            } else if state.signatures.len() < q {
                fewer
            } else {
                Resumes
            };
            ("a consistency signature dropped", verdict)
        }
        21 => {
            state.signatures.push(state.signatures[x % sigs].clone());
            ("a consistency signature twice", inconsistent("a consistency signature appears twice"))
        }
        22 => {
            state.closed = Phase::ALL[at - 1];
            let why = [
                "U2 before phase 1 closed",
                "complaints before phase 1½ closed",
                "U3 before phase 2 closed",
                "signatures before phase 3 closed",
                "unmasking responses before phase 4 closed",
            ][at - 1];
            ("the closed phase moved back", inconsistent(why))
        }
        23 => {
            state.closed = Phase::ALL[at + 1];
            let verdict = match at {
                1 => unclosed,
                2 => inconsistent("the masked sum's length is not the plan's"),
                _ => fewer,
            };
            ("the closed phase moved on", verdict)
        }
        24 => {
            state.unmasking.remove(x % responses);
            let verdict = if state.unmasking.len() < q { fewer } else { Resumes };
            ("an unmasking response dropped", verdict)
        }
        25 => {
            let share = &mut state.unmasking[x % responses].self_mask_shares[0];
            share.share = [0xff; 32];
            let flaw = Malformation::NonCanonicalShare(share.owner);
            ("an unmasking share not canonical", Refused(Error::Malformed(flaw)))
        }
        26 => {
            let r = &mut state.unmasking[x % responses];
            let verdict = match r.self_mask_shares.iter().find(|s| s.owner != r.client).cloned() {
                Some(v) => {
                    r.mask_key_shares.push(v.clone());
                    Error::Malformed(Malformation::UnexpectedMaskKeyShare(v.owner))
                }
                None => {
                    r.mask_key_shares.push(r.self_mask_shares[0].clone());
                    Error::NotNeighbour(r.client)
                }
            };
            ("an unmasking response revealing both shares", Refused(verdict))
        }
        27 => {
            state.unmasking[x % responses].self_mask_shares[0].share[0] ^= 1;
            ("an unmasking share altered", Resumes)
        }
        28 => {
            state.unmasking.push(state.unmasking[x % responses].clone());
            ("an unmasking response twice", inconsistent("an unmasking response appears twice"))
        }
        29 => {
            // Another key signs the advert with a mask key of its choosing, in this client's
            // name, and takes the place of its identity key.
            let (s, a) = (stranger(), &state.adverts[e].advert);
            let mut forged = signed_advert(&s, a.ctx, [a.enc_pk, [9; 32], a.self_mask_commitment]);
            forged.client = id;
            forged.mask_pk = state.adverts[next].advert.mask_pk;
            forged.signature = fedsec_crypto::secagg::messages::Sig(s.sign(
                fedsec_crypto::kdf::Label::Advertise,
                &a.ctx,
                &forged.signed_parts(),
            ));
            state.adverts[e] =
                VerifiedAdvert { advert: forged, identity_key: s.verifying_key().to_bytes() };
            (
                "an advert re-signed by another key in this client's name",
                Refused(Error::BadPublicKey(id)),
            )
        }
        30 => {
            let i = x % u2.len();
            state.dealings[i].signature.0[x % 64] ^= 1;
            ("a dealing's signature flipped", Refused(Error::BadSignature(client(u2[i]))))
        }
        31 => {
            let i = x % u2.len();
            // Still well formed: one entry's two commitments swapped.
            let entries = &mut state.dealings[i].entries;
            let j = x % entries.len();
            let (b, m) = (entries[j].self_mask_commitment(), entries[j].mask_key_commitment());
            entries[j].0[64..96].copy_from_slice(&m);
            entries[j].0[96..].copy_from_slice(&b);
            ("a dealing's entry changed", Refused(Error::BadSignature(client(u2[i]))))
        }
        32 => {
            state.complaints.push(state.complaints[x % complaints].clone());
            ("a complaints message twice", inconsistent("a complaints message appears twice"))
        }
        33 => {
            let m = &mut state.complaints[x % complaints];
            m.signature = flip_sig(m.signature, x);
            ("a complaints message's signature flipped", Refused(Error::BadSignature(m.client)))
        }
        34 => {
            let s = index(&state.complaints.remove(x % complaints).client);
            let verdict = if state.complaints.len() < q {
                unclosed
            } else if u3.contains(&s) {
                not_uploaders
            } else {
                Resumes
            };
            ("a complaints message dropped", verdict)
        }
        _ => unreachable!("edit {kind} does not apply at phase {at}"),
    }
}

/// Saves the server's state, edits it, and resumes it through its encoding, as a restarted
/// coordinator does; checks the verdict. Returns the resumed server and the replies of the
/// closed phase as the coordinator sends them after a restart — rebuilt from the saved state
/// (phase 1's forwards are saved as they were sent) — or `None` once refused.
fn reopen(
    round: &Round,
    state: Option<ClosedState>,
    sent: Sent,
    choice: u32,
    verdict: &mut Option<Verdict>,
) -> Option<(SecAggServer, Sent)> {
    let plan = &round.plan;
    let mut state = state.expect("a phase closed");
    let (what, expected) = edit(&mut state, plan, choice);
    let state = ClosedState::from_bytes(&state.to_bytes()).expect("an encoded state decodes");
    let adverts: BTreeMap<usize, AdvertiseKeys> = state
        .adverts
        .iter()
        .filter_map(|a| plan.index_of(&a.advert.client).map(|i| (i, a.advert.clone())))
        .collect();
    let resumed = SecAggServer::resume(plan.clone(), verifier(), state);
    let server = match (resumed, &expected) {
        (resumed, Verdict::Refused(e)) => {
            assert_eq!(resumed.err().as_ref(), Some(e), "{what}");
            return None;
        }
        // What resume takes on trust it may also check.
        (Err(_), Verdict::Trusted) => return None,
        (resumed, _) => resumed.unwrap_or_else(|e| panic!("{what}: refused with {e:?}")),
    };
    let sent = match sent {
        Sent::Keys(_) => Sent::Keys(
            server
                .u1()
                .into_iter()
                .map(|u| KeysForward {
                    version: plan.version,
                    ctx: plan.context(),
                    recipient: plan.selected[u],
                    adverts: round
                        .graph
                        .holders(u)
                        .iter()
                        .filter_map(|v| adverts.get(v).cloned())
                        .collect(),
                })
                .collect(),
        ),
        Sent::Exclusions(_) => Sent::Exclusions(server.exclusions().expect("phase 1½ closed")),
        Sent::Check(_) => Sent::Check(server.consistency_request().expect("phase 2 closed")),
        Sent::Unmask(_) => Sent::Unmask(server.unmasking_request().expect("phase 3 closed")),
        sent => sent,
    };
    *verdict = Some(expected);
    Some((server, sent))
}

/// An honest round (at most n − q dropouts) whose server is saved once `at` closes; the
/// state is edited and resumed, and the round goes on with the resumed server.
fn resumed_round(shape: &Shape, drops: &[u8], at: Phase, choice: u32) {
    let mut round = Round::new(shape, drops);
    round.cap_drops(round.plan.n() - round.plan.q());
    let mut server = SecAggServer::new(round.plan.clone(), verifier()).expect("a valid plan");
    let (mut sent, mut verdict) = (Sent::Nothing, None);
    let outcome = 'round: {
        for phase in Phase::ALL {
            for (_, msg) in round.respond(phase, &sent) {
                let answer = msg.deliver(&mut server, msg.client());
                assert!(verdict.is_some() || answer.is_ok(), "honest, refused: {answer:?}");
            }
            if phase == at && at == Phase::Unmasking {
                let state = server.unmasking_closed_state();
                let reopened = reopen(&round, state, Sent::Nothing, choice, &mut verdict);
                let Some((resumed, _)) = reopened else { return };
                server = resumed;
            }
            sent = match close(&mut server, phase) {
                Ok(sent) => sent,
                Err(e) => break 'round Err(e),
            };
            if phase == at && at != Phase::Unmasking {
                let state = server.closed_state();
                let Some(reopened) = reopen(&round, state, sent, choice, &mut verdict) else {
                    return;
                };
                (server, sent) = reopened;
            }
        }
        let Sent::Sum(sum) = sent else { unreachable!("the unmasking closes with the sum") };
        Ok(sum)
    };
    if matches!(verdict, Some(Verdict::Trusted)) {
        return;
    }
    match outcome {
        Ok(sum) => assert_eq!(sum, round.clear_sum(server.u3()), "{verdict:?}: a wrong sum"),
        Err(e) => assert!(
            matches!(
                e,
                Error::TooFewClients { .. }
                    | Error::ShareCountBelowThreshold { .. }
                    | Error::ReconstructionMismatch { .. }
            ),
            "{verdict:?}: aborted by {e:?}"
        ),
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A saved state taken at any phase close and edited once is refused with the error the
    /// edit predicts, or resumes and ends with the exact sum of U3 or an abort.
    #[test]
    fn an_edited_saved_state_is_refused_by_the_rule_it_breaks_or_resumes(
        shape in shape(),
        drops in vec(0u8..24, 12),
        at in 0usize..6,
        choice in any::<u32>(),
    ) {
        resumed_round(&shape, &drops, Phase::ALL[at], choice);
    }
}
