//! A round around one client under test, for `fuzz_client.rs`: the server and the other
//! clients are honest and move on each time the client under test answers; the server's
//! messages to a client as one type; and those messages corrupted in one field, each with the
//! refusal the corrupted field earns.

use fedsec_crypto::PROTOCOL_VERSION;
use std::collections::BTreeSet;

use fedsec_crypto::error::{Error, ForwardFault, ViewContradiction};
use fedsec_crypto::ids::RoundContext;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::client::{ContributionLedger, SecAggClient};
use fedsec_crypto::secagg::commitments::Malformed;
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::secagg::server::SecAggServer;
use fedsec_crypto::sign::{CredentialRefusal, IdentityKey};
use rand::RngExt;
use rand_chacha::ChaCha20Rng;

use super::fuzz::{
    Msg, Round, Sent, Shape, blank_dealt, close, flip, flip_sig, other_ctx, signed_advert,
};
use super::verifier;

/// A server message to the client, of kind 0 (keys), 1 (shares), 2 (E), 3 (U3) or 4
/// (unmasking): the index of the phase the client answers it in.
#[derive(Debug, Clone, PartialEq)]
pub enum ToClient {
    Keys(KeysForward),
    Shares(SharesForward),
    Excluded(Exclusions),
    Check(ConsistencyRequest),
    Unmask(UnmaskingRequest),
}

impl ToClient {
    /// Its protocol version and round context, to change.
    pub fn header_mut(&mut self) -> (&mut u32, &mut RoundContext) {
        match self {
            ToClient::Keys(m) => (&mut m.version, &mut m.ctx),
            ToClient::Shares(m) => (&mut m.version, &mut m.ctx),
            ToClient::Excluded(m) => (&mut m.version, &mut m.ctx),
            ToClient::Check(m) => (&mut m.version, &mut m.ctx),
            ToClient::Unmask(m) => (&mut m.version, &mut m.ctx),
        }
    }

    /// A message of `kind` right in version and context, empty otherwise.
    pub fn empty(kind: usize, ctx: RoundContext, own: &AdvertiseKeys, n: usize) -> ToClient {
        let (version, recipient) = (PROTOCOL_VERSION, own.client);
        let survivors = Survivors(vec![0; n.div_ceil(8)]);
        match kind {
            0 => {
                ToClient::Keys(KeysForward { version, ctx, recipient, adverts: vec![own.clone()] })
            }
            1 => ToClient::Shares(SharesForward { version, ctx, recipient, shares: Vec::new() }),
            2 => ToClient::Excluded(Exclusions { version, ctx, excluded: survivors }),
            3 => ToClient::Check(ConsistencyRequest {
                version,
                ctx,
                survivors: survivors.clone(),
                excluded: survivors,
            }),
            _ => ToClient::Unmask(UnmaskingRequest { version, ctx, survivors, signatures: vec![] }),
        }
    }
}

/// A round around the client under test: the server and the others move on at its answers.
pub struct World {
    pub round: Round,
    pub server: SecAggServer,
    pub me: usize,
    /// The phase the server collects; `None` once it finished or aborted.
    pub at: Option<Phase>,
    /// What the server sent the client, by kind, once it did.
    pub honest: [Option<ToClient>; 5],
    pub outcome: Option<Result<Vec<u32>, Error>>,
    /// Whether the server holds the client's masked input.
    pub uploaded: bool,
}

impl World {
    /// A round of `shape`, its client number `me` (drawn from `r`) under test and returned
    /// apart; the server has closed phase 0.
    pub fn new(shape: &Shape, drops: &[u8], r: &mut ChaCha20Rng) -> (World, SecAggClient) {
        let mut round = Round::new(shape, drops);
        let me = r.random_range(0..round.plan.n());
        round.drops[me] = None;
        round.cap_drops(round.plan.n() - round.plan.q());
        let client = round.clients[me].take().expect("every client starts");
        let mut server = SecAggServer::new(round.plan.clone(), verifier()).expect("a valid plan");
        let mut adverts: Vec<_> = round
            .respond(Phase::AdvertiseKeys, &Sent::Nothing)
            .into_iter()
            .map(|(_, m)| match m {
                Msg::Advert(a) => a,
                _ => unreachable!("phase 0 sends adverts"),
            })
            .collect();
        adverts.push(client.advertise().clone());
        for a in &adverts {
            server.receive_advertise(a.client, a.clone()).expect("honest adverts are accepted");
        }
        let mut world = World {
            round,
            server,
            me,
            at: Some(Phase::AdvertiseKeys),
            honest: Default::default(),
            outcome: None,
            uploaded: false,
        };
        world.step(None);
        (world, client)
    }

    /// Delivers the client's reply to the open phase (`honest`: to an honest request), closes
    /// the phase and lets the other clients answer the next.
    pub fn step(&mut self, reply: Option<(Msg, bool)>) {
        let Some(phase) = self.at else { return };
        let me = self.round.plan.selected[self.me];
        if let Some((msg, honest)) = reply {
            assert_eq!(msg.phase(), phase, "the client answers the phase the server collects");
            if honest {
                let got = msg.deliver(&mut self.server, me);
                assert!(got.is_ok(), "the server refused an honest reply: {got:?}");
                self.uploaded |= phase == Phase::MaskedInputCollection;
            } else if phase == Phase::MaskedInputCollection {
                // Masked under an E the server did not send (it lied to this client alone):
                // withheld, as from a dropout, so that the honest server's sum stays exact.
            } else {
                let got = msg.deliver(&mut self.server, me);
                match phase {
                    // Complaints about fewer shares than were forwarded: the server cannot
                    // tell.
                    Phase::Complaints => assert!(got.is_ok(), "{got:?}"),
                    // Only a signature on a U3 the server did not send can come of a bad
                    // request.
                    _ => assert_eq!(got, Err(Error::BadSignature(me)), "a reply to a bad request"),
                }
            }
        }
        let sent = match close(&mut self.server, phase) {
            Ok(Sent::Sum(sum)) => Ok(sum),
            Ok(sent) => {
                let next = phase.next().expect("a phase before the unmasking");
                self.honest[phase.index()] = match &sent {
                    Sent::Keys(f) => {
                        f.iter().find(|f| f.recipient == me).cloned().map(ToClient::Keys)
                    }
                    Sent::Shares(f) => {
                        f.iter().find(|f| f.recipient == me).cloned().map(ToClient::Shares)
                    }
                    Sent::Exclusions(e) => Some(ToClient::Excluded(e.clone())),
                    Sent::Check(r) => {
                        r.survivors.contains(self.me).then(|| ToClient::Check(r.clone()))
                    }
                    Sent::Unmask(r) => r
                        .signatures
                        .iter()
                        .any(|s| s.client == me)
                        .then(|| ToClient::Unmask(r.clone())),
                    _ => None,
                };
                for (_, m) in self.round.respond(next, &sent) {
                    m.deliver(&mut self.server, m.client()).expect("honest messages are accepted");
                }
                self.at = Some(next);
                return;
            }
            Err(e) => Err(e),
        };
        self.outcome = Some(sent);
        self.at = None;
    }
}

/// Feeds `msg` to the client.
pub fn feed(
    c: &mut SecAggClient,
    msg: &ToClient,
    input: &[u32],
    ledger: &mut ContributionLedger,
) -> Result<Msg, Error> {
    match msg {
        ToClient::Keys(m) => c.handle_keys(m).map(Msg::Shares),
        ToClient::Shares(m) => c.handle_shares(m).map(Msg::Complaints),
        ToClient::Excluded(m) => c.handle_exclusions(m, input, ledger).map(Msg::Masked),
        ToClient::Check(m) => c.handle_consistency(m).map(Msg::Signature),
        ToClient::Unmask(m) => c.handle_unmasking(m).map(Msg::Reveal),
    }
}

impl World {
    /// The honest message of `kind` if the server sent one, else an empty one.
    pub fn base(&self, kind: usize, own: &AdvertiseKeys) -> ToClient {
        let plan = &self.round.plan;
        let empty = || ToClient::empty(kind, plan.context(), own, plan.n());
        self.honest[kind].clone().unwrap_or_else(empty)
    }

    /// The message of `kind` with one field corrupted (chosen by `choice`), and the refusal
    /// the corrupted field earns (`None` where the model finds it: version, context,
    /// thresholds, U3 views).
    pub fn corrupt(
        &self,
        kind: usize,
        choice: u32,
        held: &BTreeSet<usize>,
        stranger_key: &IdentityKey,
        own: &AdvertiseKeys,
    ) -> (ToClient, Option<Error>) {
        let (plan, graph, me) = (&self.round.plan, &self.round.graph, self.me);
        let (n, t, q, ctx) = (plan.n(), plan.threshold as usize, plan.q(), plan.context());
        let (which, x) = (choice % 16, (choice / 16) as usize);
        let (me_id, stranger) = (plan.selected[me], stranger_key.id());
        let id = |i: usize| plan.selected[i];
        let other = id((me + 1 + x % (n - 1)) % n);
        // The neighbours whose keys the client accepted.
        let peers: BTreeSet<usize> = match &self.honest[0] {
            Some(ToClient::Keys(f)) => {
                f.adverts.iter().filter_map(|a| plan.index_of(&a.client)).collect()
            }
            _ => BTreeSet::new(),
        };
        let advert_of = |j: usize| self.round.clients[j].as_ref().map(|c| c.advertise().clone());
        let mut msg = self.base(kind, own);
        let flaw = match (which, &mut msg) {
            (0, _) => None,
            (1, m) => {
                *m.header_mut().1 = other_ctx(ctx);
                None
            }
            (w, ToClient::Keys(f)) => {
                let at: Vec<usize> =
                    (0..f.adverts.len()).filter(|&p| f.adverts[p].client != me_id).collect();
                let p = at.get(x % at.len().max(1)).copied();
                match (w % 11, p) {
                    (0, _) => {
                        f.recipient = other;
                        Some(Error::InconsistentForward(ForwardFault::KeysForAnother))
                    }
                    (1, Some(p)) => {
                        f.adverts[p].signature = flip_sig(f.adverts[p].signature, x);
                        Some(Error::BadSignature(f.adverts[p].client))
                    }
                    (2, Some(p)) => {
                        f.adverts[p].ctx = other_ctx(ctx);
                        Some(Error::WrongContext)
                    }
                    (3, Some(p)) => {
                        f.adverts[p].credential.pop();
                        let reason = CredentialRefusal::NotEd25519;
                        Some(Error::BadCredential { client: f.adverts[p].client, reason })
                    }
                    (4, _) | (5, _) => {
                        let own = f.adverts.iter().position(|a| a.client == me_id).expect("own");
                        if w % 11 == 4 {
                            f.adverts[own].signature = flip_sig(f.adverts[own].signature, x);
                            Some(Error::InconsistentForward(ForwardFault::OwnAdvertAltered))
                        } else {
                            f.adverts.remove(own);
                            Some(Error::InconsistentForward(ForwardFault::OwnAdvertMissing))
                        }
                    }
                    (6, _) if (0..n).any(|j| j != me && !graph.are_neighbours(me, j)) => {
                        let far = (0..n).find(|&j| j != me && !graph.are_neighbours(me, j));
                        let far = advert_of(far.expect("checked")).expect("another client");
                        f.adverts.push(far.clone());
                        Some(Error::NotNeighbour(far.client))
                    }
                    (6 | 7, _) => {
                        let keys = [[1; 32], [2; 32], [3; 32]];
                        f.adverts.push(signed_advert(stranger_key, ctx, keys));
                        Some(Error::NotSelected(stranger))
                    }
                    (8, Some(p)) => {
                        f.adverts.push(f.adverts[p].clone());
                        Some(Error::DuplicateClient(f.adverts[p].client))
                    }
                    (9, Some(p)) => {
                        let a = &mut f.adverts[p];
                        (a.enc_pk, a.mask_pk) = (a.mask_pk, a.enc_pk);
                        Some(Error::BadSignature(a.client))
                    }
                    _ => {
                        // Too few holders left: the threshold refuses it.
                        while f.adverts.len() >= t && f.adverts.iter().any(|a| a.client != me_id) {
                            let p = f.adverts.iter().rposition(|a| a.client != me_id);
                            f.adverts.remove(p.expect("a peer"));
                        }
                        None
                    }
                }
            }
            (w, ToClient::Shares(f)) => {
                let len = f.shares.len();
                let (e, e2) = (x % len.max(1), (x + 1) % len.max(1));
                let from = f.shares.get(e).map(|s| s.from);
                match (w % 8, from) {
                    (0, _) => {
                        f.recipient = other;
                        Some(Error::InconsistentForward(ForwardFault::SharesForAnother))
                    }
                    (1, Some(from)) => {
                        let ct = &mut f.shares[e].dealt.ciphertext;
                        *ct = flip(ct.clone(), x);
                        Some(Error::TamperedShare { dealer: from, why: Malformed::CiphertextHash })
                    }
                    (2, Some(from)) if x % 2 == 0 => {
                        f.shares[e].dealt.ciphertext.pop();
                        Some(Error::TamperedShare { dealer: from, why: Malformed::CiphertextHash })
                    }
                    (2, Some(from)) => {
                        // A changed path hash or commitment: another root, which the dealer
                        // did not sign.
                        match f.shares[e].dealt.path.first_mut() {
                            Some(h) if x % 4 == 1 => h[x % 32] ^= 1,
                            _ => f.shares[e].dealt.entry.0[64 + x % 64] ^= 1,
                        }
                        Some(Error::TamperedShare { dealer: from, why: Malformed::Signature })
                    }
                    (3, Some(_)) if len >= 2 => {
                        let ct = f.shares[e].dealt.ciphertext.clone();
                        f.shares[e].dealt.ciphertext =
                            std::mem::replace(&mut f.shares[e2].dealt.ciphertext, ct);
                        Some(Error::TamperedShare {
                            dealer: f.shares[e.min(e2)].from,
                            why: Malformed::CiphertextHash,
                        })
                    }
                    (4, _) => {
                        let j = (0..n).find(|j| !peers.contains(j) || *j == me).expect("itself");
                        f.shares.push(ForwardedShares { from: id(j), dealt: blank_dealt() });
                        Some(Error::NotNeighbour(id(j)))
                    }
                    (5, _) => {
                        f.shares.push(ForwardedShares { from: stranger, dealt: blank_dealt() });
                        Some(Error::NotSelected(stranger))
                    }
                    (6, Some(from)) => {
                        f.shares.push(f.shares[e].clone());
                        Some(Error::DuplicateClient(from))
                    }
                    _ => {
                        f.shares.truncate(t.saturating_sub(2));
                        None
                    }
                }
            }
            (w, ToClient::Excluded(e)) => {
                let bits = &mut e.excluded.0;
                let toggle = |bits: &mut Vec<u8>, i: usize| bits[i / 8] ^= 1 << (i % 8);
                let not_me = (me + 1 + x % (n - 1)) % n;
                match w % 5 {
                    0 => {
                        bits.push(0);
                        None
                    }
                    1 => {
                        toggle(bits, me);
                        Some(Error::Excluded)
                    }
                    // Another client excluded (to this client alone): it cannot tell.
                    2 => {
                        toggle(bits, not_me);
                        None
                    }
                    // Its holders excluded until fewer than t are left.
                    _ => {
                        let mut left = held.len();
                        for &h in held.iter().filter(|&&h| h != me) {
                            if left < t {
                                break;
                            }
                            toggle(bits, h);
                            left -= 1;
                        }
                        None
                    }
                }
            }
            (w, ToClient::Check(r)) => {
                let bits = &mut r.survivors.0;
                let toggle = |bits: &mut Vec<u8>, i: usize| bits[i / 8] ^= 1 << (i % 8);
                let not_me = (me + 1 + x % (n - 1)) % n;
                match w % 7 {
                    0 => bits.push(0),
                    1 if !n.is_multiple_of(8) => toggle(bits, n),
                    1 => {
                        bits.pop();
                    }
                    2 => toggle(bits, me),
                    3 => toggle(bits, not_me),
                    4 => {
                        (0..n).filter(|&i| i != me && x >> i & 1 == 1).for_each(|i| toggle(bits, i))
                    }
                    5 => {
                        let unshared = graph.neighbours(me).into_iter().find(|v| !held.contains(v));
                        toggle(bits, unshared.unwrap_or(not_me));
                    }
                    _ => {
                        let mut members = (0..n)
                            .filter(|&i| i != me && r.survivors.contains(i))
                            .collect::<Vec<_>>();
                        // Itself and q − 2 others: one short of q.
                        members.truncate(members.len().saturating_sub(q.saturating_sub(2)));
                        members.into_iter().for_each(|i| toggle(&mut r.survivors.0, i));
                    }
                }
                None
            }
            (w, ToClient::Unmask(r)) => {
                let len = r.signatures.len();
                let (e, e2) = (x % len.max(1), (x + 1) % len.max(1));
                let signer = r.signatures.get(e).map(|s| s.client);
                let outside = (0..n).find(|&j| !r.survivors.contains(j));
                let far_signer = r.signatures.iter().position(|s| {
                    plan.index_of(&s.client).is_some_and(|j| j != me && !peers.contains(&j))
                });
                match (w % 7, signer) {
                    (0, _) => {
                        let not_me = (me + 1 + x % (n - 1)) % n;
                        r.survivors.0[not_me / 8] ^= 1 << (not_me % 8);
                        None
                    }
                    (1, Some(s)) => {
                        r.signatures[e].signature = flip_sig(r.signatures[e].signature, x);
                        Some(Error::BadSignature(s))
                    }
                    (2, _) => {
                        r.signatures.truncate(q - 1);
                        None
                    }
                    (3, Some(s)) => {
                        r.signatures.push(r.signatures[e].clone());
                        Some(Error::DuplicateClient(s))
                    }
                    (4, _) => {
                        let (client, flaw) = match outside {
                            Some(j) => {
                                let id = id(j);
                                (
                                    id,
                                    Error::ContradictsSignedView(
                                        ViewContradiction::SignerOutsideU3(id),
                                    ),
                                )
                            }
                            None => (stranger, Error::NotSelected(stranger)),
                        };
                        let credential = stranger_key.raw_credential();
                        r.signatures.push(SignedSurvivors {
                            client,
                            credential,
                            signature: Sig([0; 64]),
                        });
                        Some(flaw)
                    }
                    (5, Some(_)) if len >= 2 => {
                        let sig = r.signatures[e].signature;
                        r.signatures[e].signature =
                            std::mem::replace(&mut r.signatures[e2].signature, sig);
                        Some(Error::BadSignature(r.signatures[e.min(e2)].client))
                    }
                    (_, Some(_)) if far_signer.is_some() => {
                        let s = &mut r.signatures[far_signer.expect("checked")];
                        s.credential.pop();
                        Some(Error::BadCredential {
                            client: s.client,
                            reason: CredentialRefusal::NotEd25519,
                        })
                    }
                    _ => None,
                }
            }
        };
        if msg == self.base(kind, own) {
            // Nothing above applied (or `which` chose it): another version.
            *msg.header_mut().0 = PROTOCOL_VERSION + 1;
        }
        (msg, flaw)
    }
}
