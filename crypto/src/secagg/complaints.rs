//! Protocol v2's complaints (phase 1½): how a holder accuses a dealer whose share is bad, and
//! how the server — and, from the audit log, an auditor — judges the accusation.
//!
//! A holder v complains about dealer u iff [`open`] finds u's share *bad*
//! ([`complain`]). The complaint shows the share exactly as the server forwarded it, the
//! key-agreement value K = KA(c_v^SK, c_u^PK) and a Chaum–Pedersen proof that K is the one v's
//! advertised key gives, so the judge can run `open` itself with v's K without learning c_v^SK.
//! [`judge`] is the one judging function: the server runs it on receipt and the audit
//! verifier runs it again on what the audit log holds.
//!
//! Each complaint excludes exactly one party ([`Judgement::excluded`]): the dealer when the
//! share is bad; otherwise the complainer — its complaint was void (no valid proof, an
//! invalid K, an accused that dealt it nothing, a share that is not the one accepted) or
//! false (the share opens, or it is not what the dealer signed).

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::{PROTOCOL_VERSION, RoundContext};
use crate::error::{Error, Malformation, Result};
use crate::ids::ClientId;
use crate::kdf::Label;
use crate::keys::{PublicKey, SecretScalar, SharedPoint};
use crate::merkle::{self, Hash, MAX_PATH};
use crate::proofs::{ComplaintProof, ComplaintStatement};
use crate::secagg::commitments::{
    Bad, CIPHERTEXT_LEN, Dealt, Entry, Malformed, Parties, Verdict, open,
};
use crate::secagg::messages::{Complaint, Complaints, Sig};
use crate::secagg::server::Dealing;
use crate::sign::IdentityKey;

/// Holder v's complaint about the share `dealt` that dealer u dealt it: K and the proof that
/// it is KA(c_v^SK, c_u^PK). `None` if `shared` is not that value for this secret (the proof
/// would be false, and a prover never makes one).
pub fn complain(
    ctx: &RoundContext,
    complainer: &ClientId,
    complainer_sk: &SecretScalar,
    accused: &ClientId,
    accused_enc_pk: &PublicKey,
    shared: &SharedPoint,
    dealt: Dealt,
) -> Option<Complaint> {
    let complainer_pk = complainer_sk.public();
    let statement = ComplaintStatement::new(
        accused,
        complainer,
        &dealt,
        accused_enc_pk,
        &complainer_pk,
        shared,
    );
    let proof = ComplaintProof::prove(complainer_sk, &statement, ctx)?;
    Some(Complaint { accused: *accused, dealt, shared: *shared.to_bytes(), proof })
}

/// What a complaints message's signature covers after `complaints` ‖ ctx: v and
/// [`digest`] of its complaints.
pub fn signed_parts(client: &ClientId, complaints: &[Complaint]) -> [Vec<u8>; 2] {
    [client.0.to_vec(), digest(complaints).to_vec()]
}

/// SHA-256 of the number of complaints (u32 big-endian), then for each, fixed-length: the
/// accused u ‖ the evidence digest ([`Dealt::evidence_digest`]) ‖ SHA-256(ct) ‖ K ‖ the proof
/// — every byte of every complaint, in an encoding an auditor in any language can rebuild.
pub fn digest(complaints: &[Complaint]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(u32::try_from(complaints.len()).unwrap_or(u32::MAX).to_be_bytes());
    for c in complaints {
        h.update(c.accused.0);
        h.update(c.dealt.evidence_digest());
        h.update(Sha256::digest(&c.dealt.ciphertext));
        h.update(c.shared);
        h.update(c.proof.0);
    }
    h.finalize().into()
}

/// v's complaints message: `complaints` (in canonical order of the accused) under v's
/// signature.
pub fn sign(identity: &IdentityKey, ctx: &RoundContext, complaints: Vec<Complaint>) -> Complaints {
    let client = identity.id();
    let parts = signed_parts(&client, &complaints);
    let signature = identity.sign(Label::Complaints, ctx, &[&parts[0], &parts[1]]);
    Complaints {
        version: PROTOCOL_VERSION,
        ctx: *ctx,
        client,
        complaints,
        signature: Sig(signature),
    }
}

/// Checks a complaints message's signature, under its sender's identity key, on the attempt
/// `ctx` (the judge's own, never the one the message names).
pub fn verify_signature(
    ctx: &RoundContext,
    msg: &Complaints,
    identity_key: &VerifyingKey,
) -> Result<()> {
    let parts = signed_parts(&msg.client, &msg.complaints);
    crate::sign::verify(
        identity_key,
        msg.client,
        Label::Complaints,
        ctx,
        &[&parts[0], &parts[1]],
        &msg.signature.0,
    )
}

/// The shape every complaints message must have before any complaint in it is judged (or
/// hashed): at most `max` complaints (v's neighbours in U2), each about a different dealer
/// other than v, in canonical order, each ciphertext [`CIPHERTEXT_LEN`] bytes and each path at
/// most [`MAX_PATH`] hashes.
pub fn check_shape(msg: &Complaints, max: usize) -> Result<()> {
    if msg.complaints.len() > max {
        return Err(Error::Malformed(Malformation::TooManyComplaints {
            got: msg.complaints.len(),
            max,
        }));
    }
    let mut seen = BTreeSet::new();
    let mut last: Option<&ClientId> = None;
    for c in &msg.complaints {
        if c.accused == msg.client {
            return Err(Error::Malformed(Malformation::ComplaintAboutSelf));
        }
        if !seen.insert(c.accused) || last.is_some_and(|l| *l > c.accused) {
            return Err(Error::Malformed(Malformation::ComplaintsOutOfOrder(c.accused)));
        }
        last = Some(&c.accused);
        if c.dealt.ciphertext.len() != CIPHERTEXT_LEN || c.dealt.path.len() > MAX_PATH {
            return Err(Error::Malformed(Malformation::ComplaintEvidenceSize(c.accused)));
        }
    }
    Ok(())
}

/// The accused dealer as the judge knows it: its id, the keys of its advert and the signed root
/// of the dealing the server accepted from it at phase 1 — all the audit log needs to hold.
#[derive(Debug, Clone, Copy)]
pub struct Accused<'a> {
    /// u.
    pub id: &'a ClientId,
    /// c_u^PK.
    pub enc_pk: &'a PublicKey,
    /// u's identity key (from its credential).
    pub identity_key: &'a VerifyingKey,
    /// The root, m and signature of u's dealing as accepted at phase 1.
    pub accepted: &'a AcceptedRoot,
}

/// A dealing's Merkle root, its size m and the dealer's signature on them, as the server
/// accepted them at phase 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedRoot {
    /// The RFC 6962 root of the dealer's entries.
    pub root: Hash,
    /// m, the number of entries.
    pub size: u32,
    /// Sign_id(`share-keys` ‖ ctx ‖ u ‖ m ‖ root).
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl AcceptedRoot {
    /// The signed root of an accepted dealing.
    pub fn of(dealing: &Dealing) -> Option<AcceptedRoot> {
        let tree = merkle::Tree::new(dealing.entries.iter().map(Entry::leaf).collect())?;
        Some(AcceptedRoot { root: tree.root(), size: tree.size(), signature: dealing.signature.0 })
    }
}

/// The complainer as the judge knows it.
#[derive(Debug, Clone, Copy)]
pub struct Complainer<'a> {
    /// v.
    pub id: &'a ClientId,
    /// c_v^PK.
    pub enc_pk: &'a PublicKey,
}

/// Why a complaint is void: it excludes the complainer without the share being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Void {
    /// The accused dealt the complainer nothing: not a neighbour, or not in U2.
    #[error("the accused dealt the complainer no share")]
    NotAccusable,
    /// K is not a canonical encoding of a point other than the identity.
    #[error("the revealed key-agreement value is not a canonical non-identity point")]
    SharedPoint,
    /// The Chaum–Pedersen proof does not hold.
    #[error("the proof that the revealed value is the agreed key does not hold")]
    Proof,
    /// The entry, its index, m or the signature are not those of the dealing accepted.
    #[error("the share shown is not the one the server accepted and forwarded")]
    NotAsForwarded,
}

/// Why a complaint with a valid proof is false: the share shown is not bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Unfounded {
    /// The share opens and matches its commitments.
    #[error("the share opens and matches its commitments")]
    ShareOk,
    /// The share is not what the dealer signed.
    #[error("the share is not what the dealer signed: {0}")]
    Malformed(Malformed),
}

/// One complaint as judged: who complained about whom, and the judgement. The server keeps
/// every one, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judged {
    /// The complainer v.
    pub complainer: ClientId,
    /// The accused dealer u.
    pub accused: ClientId,
    /// The judgement.
    pub judgement: Judgement,
}

impl Judged {
    /// The one party this complaint excludes.
    pub fn excluded(&self) -> ClientId {
        self.judgement.excluded(self.complainer, self.accused)
    }
}

/// A complaint's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Judgement {
    /// The share is bad: the dealer is excluded.
    Upheld(Bad),
    /// The complaint is void: the complainer is excluded.
    Void(Void),
    /// The complaint is false: the complainer is excluded.
    False(Unfounded),
}

impl Judgement {
    /// Whether the dealer is at fault.
    pub fn upheld(&self) -> bool {
        matches!(self, Judgement::Upheld(_))
    }

    /// The one party the complaint excludes.
    pub fn excluded(&self, complainer: ClientId, accused: ClientId) -> ClientId {
        if self.upheld() { accused } else { complainer }
    }
}

impl core::fmt::Display for Judgement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Judgement::Upheld(why) => write!(f, "upheld: {why}"),
            Judgement::Void(why) => write!(f, "void: {why}"),
            Judgement::False(why) => write!(f, "false: {why}"),
        }
    }
}

/// Judges one complaint of `complainer`, independently of any other. `accused` is `None` when
/// the accused dealt the complainer nothing (it is not in N(v) ∩ U2): the complaint is void.
/// Otherwise the complaint is void unless K decodes, the proof holds on the share shown, and
/// that share is one the server accepted from the dealer (its entry, index and path lead to the
/// accepted root, under the same m and signature); then [`open`] with the revealed K decides:
/// *bad* upholds it, *ok* or *malformed* makes it false.
pub fn judge(
    ctx: &RoundContext,
    complainer: Complainer<'_>,
    accused: Option<Accused<'_>>,
    complaint: &Complaint,
) -> Judgement {
    let Some(accused) = accused.filter(|a| *a.id == complaint.accused) else {
        return Judgement::Void(Void::NotAccusable);
    };
    let Some(shared) = SharedPoint::from_bytes(&complaint.shared) else {
        return Judgement::Void(Void::SharedPoint);
    };
    let dealt = &complaint.dealt;
    let statement = ComplaintStatement::new(
        accused.id,
        complainer.id,
        dealt,
        accused.enc_pk,
        complainer.enc_pk,
        &shared,
    );
    if !complaint.proof.verify(&statement, ctx) {
        return Judgement::Void(Void::Proof);
    }
    // The entry, its index and path lead to the root accepted, under the same m and signature
    // (whether the entry names v is `open`'s to decide: a share dealt to another is malformed).
    let accepted = accused.accepted;
    let as_accepted = dealt.size == accepted.size
        && dealt.signature == accepted.signature
        && merkle::root_from_path(&dealt.entry.leaf(), dealt.index, dealt.size, &dealt.path)
            == Some(accepted.root);
    if !as_accepted {
        return Judgement::Void(Void::NotAsForwarded);
    }
    let parties = Parties {
        ctx,
        dealer: accused.id,
        dealer_key: accused.identity_key,
        holder: complainer.id,
        shared: &shared,
    };
    match open(&parties, dealt) {
        Verdict::Bad(why) => Judgement::Upheld(why),
        Verdict::Ok(..) => Judgement::False(Unfounded::ShareOk),
        Verdict::Malformed(why) => Judgement::False(Unfounded::Malformed(why)),
    }
}

/// One complaints message as the audit log keeps it: the signed message and everything
/// [`judge`] took to judge each of its complaints — both parties' identity and encryption keys
/// (from their admitted adverts), each accused's accepted signed root — with the judgements
/// made. [`rejudge`] checks it again from these bytes alone.
///
/// It holds K and the disputed ciphertext: with a liar's complaint about an honest dealer,
/// a share of that dealer's secrets (which the liar's coalition holds already). The audit
/// log is access-restricted for this reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedComplaints {
    /// The attempt.
    pub ctx: RoundContext,
    /// The complainer's identity key (its id is the key's hash).
    #[serde(with = "serde_bytes")]
    pub complainer_identity_key: [u8; 32],
    /// c_v^PK.
    #[serde(with = "serde_bytes")]
    pub complainer_enc_pk: [u8; 32],
    /// The message, as signed.
    pub message: Complaints,
    /// For each complaint, in order: what was known of the accused, and the judgement.
    pub accused: Vec<AuditedAccused>,
}

/// The accused of one complaint as the judge knew it, and the judgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditedAccused {
    /// Its identity key and c_u^PK, and its accepted signed root — `None` when it dealt the
    /// complainer nothing (the complaint is void).
    pub keys: Option<([u8; 32], [u8; 32], AcceptedRoot)>,
    /// The judgement made.
    pub judgement: Judgement,
}

impl AuditedComplaints {
    /// The judged complaints of this message: (complainer, accused, judgement), in order.
    pub fn judged(&self) -> Vec<Judged> {
        (self.message.complaints.iter().zip(&self.accused))
            .map(|(c, a)| Judged {
                complainer: self.message.client,
                accused: c.accused,
                judgement: a.judgement,
            })
            .collect()
    }
}

/// Why an audited complaints message does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejudged {
    /// A key is not a valid encoding, or an identity key is not the client's.
    #[error("a key of {0} is not valid or not the client's")]
    Key(ClientId),
    /// The message's signature does not verify.
    #[error("the complaints message of {0} is not signed by it")]
    Signature(ClientId),
    /// Not one record per complaint.
    #[error("the record of {0}'s complaints does not list one accused per complaint")]
    Shape(ClientId),
    /// A judgement made is not the one the rules give.
    #[error(
        "the complaint of {complainer} about {accused} was judged {recorded}; the rules give {actual}"
    )]
    Judgement {
        /// The complainer.
        complainer: ClientId,
        /// The accused.
        accused: ClientId,
        /// As recorded.
        recorded: Judgement,
        /// As judged again.
        actual: Judgement,
    },
}

/// Checks an audited complaints message from its bytes alone, as `audit verify` does: each
/// identity key is its client's (the id is the hash of its key), the message is signed by the
/// complainer on the recorded attempt, and each complaint, judged again by [`judge`], gets the
/// judgement recorded.
pub fn rejudge(record: &AuditedComplaints) -> core::result::Result<(), Rejudged> {
    let msg = &record.message;
    let identity = |id: ClientId, bytes: &[u8; 32]| {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Rejudged::Key(id))?;
        if ClientId::from_spki_der(&crate::sign::ed25519_spki_der(&key)) != id {
            return Err(Rejudged::Key(id));
        }
        Ok(key)
    };
    let complainer_key = identity(msg.client, &record.complainer_identity_key)?;
    let complainer_enc =
        PublicKey::from_bytes(&record.complainer_enc_pk).ok_or(Rejudged::Key(msg.client))?;
    verify_signature(&record.ctx, msg, &complainer_key)
        .map_err(|_| Rejudged::Signature(msg.client))?;
    if msg.complaints.len() != record.accused.len() {
        return Err(Rejudged::Shape(msg.client));
    }
    for (c, a) in msg.complaints.iter().zip(&record.accused) {
        let keys = match &a.keys {
            None => None,
            Some((identity_key, enc_pk, root)) => {
                let key = identity(c.accused, identity_key)?;
                let enc = PublicKey::from_bytes(enc_pk).ok_or(Rejudged::Key(c.accused))?;
                Some((key, enc, root))
            }
        };
        let accused = keys.as_ref().map(|(key, enc, root)| Accused {
            id: &c.accused,
            enc_pk: enc,
            identity_key: key,
            accepted: root,
        });
        let complainer = Complainer { id: &msg.client, enc_pk: &complainer_enc };
        let actual = judge(&record.ctx, complainer, accused, c);
        if actual != a.judgement {
            return Err(Rejudged::Judgement {
                complainer: msg.client,
                accused: c.accused,
                recorded: a.judgement,
                actual,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::commitments::tests::{CTX, Dealing as Dealer, deal, honest};
    use rand::SeedableRng;

    /// Holder i's complaint about its share, with the K it computes itself.
    fn complaint_of(d: &Dealer, i: usize, dealt: Dealt) -> Complaint {
        let (holder, sk) = &d.holders[i];
        let k = sk.agree_point(&d.dealer_enc.public());
        complain(&CTX, holder, sk, &d.dealer.id(), &d.dealer_enc.public(), &k, dealt)
            .expect("the holder's own K")
    }

    /// The signed root of the dealing the server accepted from `d`.
    fn accepted(d: &Dealer) -> AcceptedRoot {
        AcceptedRoot::of(&Dealing { entries: d.entries.clone(), signature: Sig(d.signature) })
            .unwrap()
    }

    /// The server's judgement of holder i's complaint, the server having accepted `dealing`.
    fn judged(d: &Dealer, dealing: &AcceptedRoot, i: usize, complaint: &Complaint) -> Judgement {
        let (dealer, dealer_pk) = (d.dealer.id(), d.dealer_enc.public());
        let (holder, holder_pk) = (d.holders[i].0, d.holders[i].1.public());
        let key = d.dealer.verifying_key();
        let accused =
            Accused { id: &dealer, enc_pk: &dealer_pk, identity_key: &key, accepted: dealing };
        judge(&CTX, Complainer { id: &holder, enc_pk: &holder_pk }, Some(accused), complaint)
    }

    /// A share that does not decrypt, a non-canonical share (share + ℓ) and a share off its
    /// commitment: each complaint is upheld and excludes the dealer.
    #[test]
    fn a_complaint_about_a_bad_share_is_upheld_and_excludes_the_dealer() {
        let other =
            crate::keys::SecretScalar::random(&mut rand_chacha::ChaCha20Rng::from_seed([4; 32]));
        let other_bytes = *other.to_ikm();
        let mut d = deal(6, 3, 21, &|i, plain, _, _| match i {
            1 => {
                let share: [u8; 32] = plain[..32].try_into().unwrap();
                let plus_l = crate::proofs::tests::add_group_order(&share).expect("s + ℓ < 2^254");
                plain[..32].copy_from_slice(&plus_l);
            }
            2 => plain[32..].copy_from_slice(&other_bytes),
            _ => {}
        });
        d.send_instead(3, vec![7; crate::secagg::commitments::CIPHERTEXT_LEN]);
        let dealing = accepted(&d);
        for (i, why) in [(1, Bad::NonCanonical), (2, Bad::MaskKeyShare), (3, Bad::Undecryptable)] {
            let c = complaint_of(&d, i, d.dealt(i));
            let j = judged(&d, &dealing, i, &c);
            assert_eq!(j, Judgement::Upheld(why), "holder {i}");
            assert_eq!(j.excluded(d.holders[i].0, d.dealer.id()), d.dealer.id());
        }
        // The holders that got good shares have nothing to complain about: a complaint of
        // theirs is false.
        for i in [4, 5] {
            let c = complaint_of(&d, i, d.dealt(i));
            assert_eq!(judged(&d, &dealing, i, &c), Judgement::False(Unfounded::ShareOk));
        }
    }

    #[test]
    fn a_complaint_about_a_good_share_is_false_and_excludes_the_complainer() {
        let d = deal(5, 3, 22, &honest);
        let dealing = accepted(&d);
        let c = complaint_of(&d, 2, d.dealt(2));
        let j = judged(&d, &dealing, 2, &c);
        assert_eq!(j, Judgement::False(Unfounded::ShareOk));
        assert_eq!(j.excluded(d.holders[2].0, d.dealer.id()), d.holders[2].0);
        // Showing the dealer's entry with another ciphertext (it is not what the dealer
        // signed) is false too: the server forwarded the signed one.
        let mut dealt = d.dealt(2);
        dealt.ciphertext = vec![1; crate::secagg::commitments::CIPHERTEXT_LEN];
        let c = complaint_of(&d, 2, dealt);
        assert_eq!(
            judged(&d, &dealing, 2, &c),
            Judgement::False(Unfounded::Malformed(Malformed::CiphertextHash))
        );
        // So is another holder's share shown as one's own (it names holder 3).
        let c = complaint_of(&d, 2, d.dealt(3));
        assert_eq!(
            judged(&d, &dealing, 2, &c),
            Judgement::False(Unfounded::Malformed(Malformed::OtherHolder))
        );
        // A path that fits no tree does not lead to the accepted root: void.
        let mut dealt = d.dealt(2);
        dealt.path.pop();
        let c = complaint_of(&d, 2, dealt);
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::NotAsForwarded));
    }

    #[test]
    fn a_complaint_without_valid_evidence_is_void() {
        let mut d = deal(6, 3, 23, &honest);
        d.send_instead(2, vec![9; crate::secagg::commitments::CIPHERTEXT_LEN]);
        let dealing = accepted(&d);
        let good = complaint_of(&d, 2, d.dealt(2));
        assert!(judged(&d, &dealing, 2, &good).upheld());
        // K replaced: by another point (the proof fails), by the identity or a non-canonical
        // encoding (it does not decode).
        let mut c = good.clone();
        c.shared = *d.holders[3].1.agree_point(&d.dealer_enc.public()).to_bytes();
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::Proof));
        for bytes in [[0u8; 32], [0xff; 32]] {
            let mut c = good.clone();
            c.shared = bytes;
            assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::SharedPoint));
        }
        // Another complaint's proof, a changed proof, a share changed after proving.
        let mut c = good.clone();
        c.proof = complaint_of(&d, 3, d.dealt(3)).proof;
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::Proof));
        let mut c = good.clone();
        c.proof.0[70] ^= 1;
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::Proof));
        let mut c = good.clone();
        c.dealt.ciphertext[0] ^= 1;
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::Proof));
        // Holder 3's complaint presented as holder 2's: the proof is about holder 3.
        let c = complaint_of(&d, 3, d.dealt(3));
        assert_eq!(judged(&d, &dealing, 2, &c), Judgement::Void(Void::Proof));
        // An accused that dealt the complainer nothing, or another dealer than named.
        let (holder, holder_pk) = (d.holders[2].0, d.holders[2].1.public());
        let complainer = Complainer { id: &holder, enc_pk: &holder_pk };
        assert_eq!(judge(&CTX, complainer, None, &good), Judgement::Void(Void::NotAccusable));
        let (other, other_pk, key) =
            (d.holders[4].0, d.dealer_enc.public(), d.dealer.verifying_key());
        let wrong =
            Accused { id: &other, enc_pk: &other_pk, identity_key: &key, accepted: &dealing };
        assert_eq!(
            judge(&CTX, complainer, Some(wrong), &good),
            Judgement::Void(Void::NotAccusable)
        );
    }

    /// A dealer that colludes with a holder signs a second dealing with a bad share for it;
    /// the server accepted the first. The complaint shows the second: it is void, and the
    /// dealer is not excluded on evidence the server never forwarded.
    #[test]
    fn a_complaint_about_a_share_the_server_never_accepted_is_void() {
        let d = deal(5, 3, 24, &honest);
        let dealing = accepted(&d);
        let mut second = deal(5, 3, 24, &honest);
        second.send_instead(1, vec![3; crate::secagg::commitments::CIPHERTEXT_LEN]);
        assert_ne!(second.signature, d.signature);
        let c = complaint_of(&second, 1, second.dealt(1));
        assert_eq!(judged(&d, &dealing, 1, &c), Judgement::Void(Void::NotAsForwarded));
        // Against the dealing it accepted, the same complaint would be upheld.
        assert!(judged(&second, &accepted(&second), 1, &c).upheld());
        // Another index, another m, another signature than the accepted dealing's (each
        // proved anew, so only the tie to the accepted root can refuse it).
        let edits: [&dyn Fn(&mut Dealt); 4] = [
            &|dealt| dealt.index = 2,
            &|dealt| dealt.size = 6,
            &|dealt| dealt.signature[0] ^= 1,
            &|dealt| dealt.path[0][0] ^= 1,
        ];
        for edit in edits {
            let mut dealt = d.dealt(1);
            edit(&mut dealt);
            let c = complaint_of(&d, 1, dealt);
            assert_eq!(judged(&d, &dealing, 1, &c), Judgement::Void(Void::NotAsForwarded));
        }
    }

    #[test]
    fn a_complaints_message_is_signed_and_its_shape_checked() {
        let mut d = deal(6, 3, 25, &honest);
        d.send_instead(1, vec![5; crate::secagg::commitments::CIPHERTEXT_LEN]);
        let holder = IdentityKey::generate(&mut rand_chacha::ChaCha20Rng::from_seed([6; 32]));
        let c = complaint_of(&d, 1, d.dealt(1));
        let msg = sign(&holder, &CTX, vec![c.clone()]);
        verify_signature(&CTX, &msg, &holder.verifying_key()).unwrap();
        check_shape(&msg, 1).unwrap();
        // An empty message is signed too, and a changed list no longer verifies.
        let empty = sign(&holder, &CTX, Vec::new());
        verify_signature(&CTX, &empty, &holder.verifying_key()).unwrap();
        let forged = Complaints { complaints: vec![c.clone()], ..empty.clone() };
        assert!(matches!(
            verify_signature(&CTX, &forged, &holder.verifying_key()),
            Err(Error::BadSignature(_))
        ));
        // Too many, twice the same dealer, out of order, about itself.
        assert!(check_shape(&msg, 0).is_err());
        let twice = Complaints { complaints: vec![c.clone(), c.clone()], ..msg.clone() };
        assert!(matches!(
            check_shape(&twice, 5),
            Err(Error::Malformed(Malformation::ComplaintsOutOfOrder(_)))
        ));
        let (lo, hi) = {
            let mut a = c.clone();
            let mut b = c.clone();
            a.accused = ClientId([1; 32]);
            b.accused = ClientId([2; 32]);
            (a, b)
        };
        let unordered = Complaints { complaints: vec![hi, lo], ..msg.clone() };
        assert!(check_shape(&unordered, 5).is_err());
        let mut own = c;
        own.accused = holder.id();
        let about_self = Complaints { complaints: vec![own], ..msg.clone() };
        assert_eq!(
            check_shape(&about_self, 5),
            Err(Error::Malformed(Malformation::ComplaintAboutSelf))
        );
        // Evidence of the wrong size is refused before anything is hashed.
        let mut long = msg.clone();
        long.complaints[0].dealt.ciphertext.push(0);
        let mut deep = msg.clone();
        deep.complaints[0].dealt.path = vec![[0; 32]; MAX_PATH + 1];
        for bad in [long, deep] {
            assert!(matches!(
                check_shape(&bad, 5),
                Err(Error::Malformed(Malformation::ComplaintEvidenceSize(_)))
            ));
        }
        // Signed on another attempt: refused on this one.
        assert!(verify_signature(&RoundContext([9; 32]), &msg, &holder.verifying_key()).is_err());
    }
}
