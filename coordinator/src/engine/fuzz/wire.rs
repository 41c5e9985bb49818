//! The messages the fuzzed clients send: each phase's own, crafted ones, and ones with a field
//! corrupted — each corruption with what the open phase must answer to it.

use fedsec_crypto::error::{Malformation, SharesProblem};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::secagg::messages::{
    AdvertiseKeys, Complaints, ConsistencySignature, MaskedInput, ShareKeys, Sig,
    UnmaskingResponse, message_digest,
};
use fedsec_crypto::{ClientId, PROTOCOL_VERSION, RoundContext};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// One message of a client to the engine.
#[derive(Debug, Clone)]
// Test messages, built and dropped one at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Wire {
    Advert(AdvertiseKeys),
    Shares(ShareKeys),
    Complaints(Complaints),
    Chunk(MaskedInput),
    Sig(ConsistencySignature),
    Unmask(UnmaskingResponse),
}

/// What the open phase does with a message that gets past the checks of its attempt, its
/// sender and the phase (the sender has not answered the phase, the phase is open).
#[derive(Debug, Clone)]
pub(super) enum Core {
    /// Taken.
    Taken,
    /// Refused by the engine's check of a chunk's shape, which comes before the phase's own.
    Shape(Error),
    /// Refused by the protocol core.
    Refused(Error),
}

impl Wire {
    pub(super) fn phase(&self) -> Phase {
        match self {
            Wire::Advert(_) => Phase::AdvertiseKeys,
            Wire::Shares(_) => Phase::ShareKeys,
            Wire::Complaints(_) => Phase::Complaints,
            Wire::Chunk(_) => Phase::MaskedInputCollection,
            Wire::Sig(_) => Phase::ConsistencyCheck,
            Wire::Unmask(_) => Phase::Unmasking,
        }
    }

    pub(super) fn ctx(&self) -> RoundContext {
        match self {
            Wire::Advert(m) => m.ctx,
            Wire::Shares(m) => m.ctx,
            Wire::Complaints(m) => m.ctx,
            Wire::Chunk(m) => m.ctx,
            Wire::Sig(m) => m.ctx,
            Wire::Unmask(m) => m.ctx,
        }
    }

    pub(super) fn set_ctx(&mut self, ctx: RoundContext) {
        match self {
            Wire::Advert(m) => m.ctx = ctx,
            Wire::Shares(m) => m.ctx = ctx,
            Wire::Complaints(m) => m.ctx = ctx,
            Wire::Chunk(m) => m.ctx = ctx,
            Wire::Sig(m) => m.ctx = ctx,
            Wire::Unmask(m) => m.ctx = ctx,
        }
    }

    /// What the engine recognises a resend by: the message's digest, a chunk's bytes' digest.
    pub(super) fn digest(&self) -> [u8; 32] {
        match self {
            Wire::Advert(m) => message_digest(m),
            Wire::Shares(m) => message_digest(m),
            Wire::Complaints(m) => message_digest(m),
            Wire::Chunk(m) => Sha256::digest(&m.data).into(),
            Wire::Sig(m) => message_digest(m),
            Wire::Unmask(m) => message_digest(m),
        }
    }

    fn version(&mut self) -> &mut u32 {
        match self {
            Wire::Advert(m) => &mut m.version,
            Wire::Shares(m) => &mut m.version,
            Wire::Complaints(m) => &mut m.version,
            Wire::Chunk(m) => &mut m.version,
            Wire::Sig(m) => &mut m.version,
            Wire::Unmask(m) => &mut m.version,
        }
    }

    fn sender(&self) -> ClientId {
        match self {
            Wire::Advert(m) => m.client,
            Wire::Shares(m) => m.client,
            Wire::Complaints(m) => m.client,
            Wire::Chunk(m) => m.client,
            Wire::Sig(m) => m.client,
            Wire::Unmask(m) => m.client,
        }
    }

    fn client(&mut self) -> &mut ClientId {
        match self {
            Wire::Advert(m) => &mut m.client,
            Wire::Shares(m) => &mut m.client,
            Wire::Complaints(m) => &mut m.client,
            Wire::Chunk(m) => &mut m.client,
            Wire::Sig(m) => &mut m.client,
            Wire::Unmask(m) => &mut m.client,
        }
    }

    /// A well-shaped message for `phase` that no client made (empty keys, no shares, a
    /// chunk of zeros of the right length at offset 0, a zero signature).
    pub(super) fn crafted(phase: Phase, ctx: RoundContext, client: ClientId, words: usize) -> Wire {
        let version = PROTOCOL_VERSION;
        match phase {
            Phase::AdvertiseKeys => Wire::Advert(AdvertiseKeys {
                version,
                ctx,
                client,
                credential: Vec::new(),
                enc_pk: [0; 32],
                mask_pk: [0; 32],
                self_mask_commitment: [0; 32],
                enc_pk_proof: fedsec_crypto::proofs::KeyProof([0; 64]),
                mask_pk_proof: fedsec_crypto::proofs::KeyProof([0; 64]),
                signature: Sig([0; 64]),
            }),
            Phase::ShareKeys => Wire::Shares(ShareKeys {
                version,
                ctx,
                client,
                shares: vec![],
                entries: vec![],
                root_signature: Sig([0; 64]),
            }),
            Phase::Complaints => Wire::Complaints(Complaints {
                version,
                ctx,
                client,
                complaints: vec![],
                signature: Sig([0; 64]),
            }),
            Phase::MaskedInputCollection => Wire::Chunk(MaskedInput {
                version,
                ctx,
                client,
                offset: 0,
                data: vec![0; 4 * words],
            }),
            Phase::ConsistencyCheck => {
                Wire::Sig(ConsistencySignature { version, ctx, client, signature: Sig([0; 64]) })
            }
            Phase::Unmasking => Wire::Unmask(UnmaskingResponse {
                version,
                ctx,
                client,
                self_mask_shares: vec![],
                mask_key_shares: vec![],
            }),
        }
    }

    /// Another message for the same phase from the same client (a second, different answer).
    pub(super) fn altered(&self, byte: u8) -> Wire {
        let mut m = self.clone();
        let bit = 1 << (byte % 8);
        match &mut m {
            Wire::Advert(a) => a.signature.0[byte as usize % 64] ^= bit,
            Wire::Shares(s) => match s.shares.first_mut() {
                Some(first) if !first.ciphertext.is_empty() => first.ciphertext[0] ^= bit,
                _ => s.version += 1,
            },
            Wire::Complaints(c) => c.signature.0[byte as usize % 64] ^= bit,
            Wire::Chunk(c) => {
                let len = c.data.len();
                c.data[byte as usize % len] ^= bit;
            }
            Wire::Sig(s) => s.signature.0[byte as usize % 64] ^= bit,
            Wire::Unmask(u) => u.version += 1,
        }
        m
    }
}

/// `msg` with one field corrupted (`field` and `byte` choose which and how), and what its open
/// phase must answer. `other` is another client of the attempt (a claimed sender), `stranger`
/// an id outside it, `dim` the vector's length. Some corruptions cannot be seen by the engine
/// (a flipped ciphertext, a flipped masked word, a wrong share that is a scalar): those are
/// taken, and the sender is a corrupt client from then on.
pub(super) fn corrupt(
    msg: &Wire,
    field: u8,
    byte: u8,
    other: ClientId,
    stranger: ClientId,
    dim: u32,
) -> (Wire, Core) {
    let mut m = msg.clone();
    let protocol = |e: fedsec_crypto::Error| Core::Refused(Error::Protocol(e));
    let sender = m.sender();
    let claimed = |m: &mut Wire| {
        *m.client() = other;
        protocol(fedsec_crypto::Error::SenderMismatch { claimed: other, authenticated: sender })
    };
    let bit = 1u8 << (byte % 8);
    let at = byte as usize;
    let core = match (&mut m, field % 6) {
        (Wire::Advert(a), 1) => {
            a.signature.0[at % 64] ^= bit;
            protocol(fedsec_crypto::Error::BadSignature(sender))
        }
        (Wire::Advert(a), 2) => {
            a.enc_pk[at % 32] ^= bit;
            protocol(fedsec_crypto::Error::BadSignature(sender))
        }
        (Wire::Advert(a), 3) if !a.credential.is_empty() => {
            let len = a.credential.len();
            a.credential[at % len] ^= bit;
            // Whichever byte: the id no longer is the key's hash, or the key is no key.
            protocol(fedsec_crypto::Error::BadCredential {
                client: sender,
                reason: fedsec_crypto::sign::CredentialRefusal::IdMismatch,
            })
        }
        (Wire::Advert(_), 4) => claimed(&mut m),
        (Wire::Shares(s), 1) if !s.shares.is_empty() => {
            let expected = s.shares.len();
            s.shares.pop();
            protocol(fedsec_crypto::Error::IncompleteShares {
                client: sender,
                problem: SharesProblem::Count { got: expected - 1, expected },
            })
        }
        (Wire::Shares(s), 2) if !s.shares.is_empty() => {
            let first = s.shares[0].clone();
            s.shares.push(first.clone());
            protocol(fedsec_crypto::Error::IncompleteShares {
                client: sender,
                problem: SharesProblem::Duplicate(first.to),
            })
        }
        (Wire::Shares(s), 3) if !s.shares.is_empty() => {
            let first = &mut s.shares[0];
            let expected = first.ciphertext.len();
            first.ciphertext.pop();
            protocol(fedsec_crypto::Error::IncompleteShares {
                client: sender,
                problem: SharesProblem::CiphertextLength {
                    to: first.to,
                    got: expected - 1,
                    expected,
                },
            })
        }
        (Wire::Shares(s), 4) if !s.shares.is_empty() => {
            s.shares[0].to = sender;
            protocol(fedsec_crypto::Error::NotNeighbour(sender))
        }
        (Wire::Shares(s), 5) if !s.shares.is_empty() && !s.shares[0].ciphertext.is_empty() => {
            // The dealer's entry names the ciphertext's hash (protocol v2): the server sees it.
            let c = &mut s.shares[0].ciphertext;
            let len = c.len();
            c[at % len] ^= bit;
            protocol(fedsec_crypto::Error::IncompleteShares {
                client: sender,
                problem: SharesProblem::CiphertextHash(s.shares[0].to),
            })
        }
        (Wire::Complaints(c), 1 | 2) => {
            c.signature.0[at % 64] ^= bit;
            protocol(fedsec_crypto::Error::BadSignature(sender))
        }
        (Wire::Complaints(_), 3) => claimed(&mut m),
        (Wire::Chunk(c), 1..=3) => {
            match (field % 6, byte % 2) {
                // Past the vector, or (a chunk of two words or more: chunks are that long)
                // between two chunks.
                (1, 0) => c.offset = dim,
                (1, _) if c.data.len() >= 8 => c.offset += 1,
                (1, _) => c.offset = dim + u32::from(byte),
                // Not whole words; a word too many or too few.
                (2, _) => c.data.push(byte),
                (3, 0) => c.data.truncate(c.data.len() - 4),
                _ => c.data.extend_from_slice(&[byte; 4]),
            }
            Core::Shape(Error::BadUpload { offset: u64::from(c.offset), reason: String::new() })
        }
        (Wire::Chunk(c), 4) => {
            let len = c.data.len();
            c.data[at % len] ^= bit;
            Core::Taken
        }
        (Wire::Chunk(_), 5) | (Wire::Sig(_), 2 | 5) | (Wire::Unmask(_), 5) => claimed(&mut m),
        (Wire::Sig(s), 1 | 4) => {
            s.signature.0[at % 64] ^= bit;
            protocol(fedsec_crypto::Error::BadSignature(sender))
        }
        (Wire::Unmask(u), 1) if !u.self_mask_shares.is_empty() => {
            u.self_mask_shares[0].share = [0xff; 32];
            let owner = u.self_mask_shares[0].owner;
            protocol(fedsec_crypto::Error::Malformed(Malformation::NonCanonicalShare(owner)))
        }
        (Wire::Unmask(u), 2) if !u.self_mask_shares.is_empty() => {
            u.self_mask_shares[0].owner = stranger;
            protocol(fedsec_crypto::Error::NotSelected(stranger))
        }
        (Wire::Unmask(u), 3) if !u.self_mask_shares.is_empty() => {
            let first = u.self_mask_shares[0].clone();
            u.self_mask_shares.push(first.clone());
            protocol(fedsec_crypto::Error::Malformed(Malformation::UnexpectedSelfMaskShare(
                first.owner,
            )))
        }
        (Wire::Unmask(u), 4) if !u.self_mask_shares.is_empty() => {
            // A canonical scalar (below 2^252), just not the share.
            let mut share = [0; 32];
            share[0] = byte.max(1);
            share[1] = 0x5a;
            u.self_mask_shares[0].share = share;
            Core::Taken
        }
        _ => {
            let got = PROTOCOL_VERSION + 1 + u32::from(byte);
            *m.version() = got;
            protocol(fedsec_crypto::Error::UnsupportedVersion { got, supported: PROTOCOL_VERSION })
        }
    };
    (m, core)
}

/// Whether `actual` is the refusal `expected` names: the same variant and fields, but for the
/// free-text reason of a chunk's shape and the reason a credential is refused.
pub(super) fn same_rule(actual: &Error, expected: &Error) -> bool {
    use fedsec_crypto::Error as Core;
    match (actual, expected) {
        (Error::BadUpload { offset: a, .. }, Error::BadUpload { offset: b, .. }) => a == b,
        (
            Error::Protocol(Core::BadCredential { client: a, .. }),
            Error::Protocol(Core::BadCredential { client: b, .. }),
        ) => a == b,
        _ => actual == expected,
    }
}
