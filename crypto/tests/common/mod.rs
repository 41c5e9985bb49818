//! Shared helpers of the integration tests: a federation of in-memory identities.
#![allow(dead_code)] // each test file uses its own subset

pub mod client_world;
pub mod fuzz;

use std::sync::Arc;

use fedsec_crypto::context::{AdversaryClass, GraphKind, PPM, RoundPlan};
use fedsec_crypto::ids::{AttemptNonce, CheckpointHash, ClientId};
use fedsec_crypto::secagg::client::{ClientPolicy, SecAggClient};
use fedsec_crypto::secagg::driver::make_plan;
use fedsec_crypto::secagg::messages::*;
use fedsec_crypto::secagg::server::{SecAggServer, UploadProgress};
use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;

pub const CHECKPOINT: CheckpointHash = CheckpointHash([0xc4; 32]);

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// n identities and a plan over them, identities returned in canonical order.
pub fn federation(
    n: usize,
    graph: GraphKind,
    dropout: f64,
    corrupt: f64,
    class: AdversaryClass,
    dim: u32,
    seed: u64,
) -> (RoundPlan, Vec<Arc<IdentityKey>>) {
    let mut r = rng(seed);
    let mut keys: Vec<Arc<IdentityKey>> =
        (0..n).map(|_| Arc::new(IdentityKey::generate(&mut r))).collect();
    keys.sort_by_key(|k| k.id());
    let mut ids: Vec<ClientId> = keys.iter().map(|k| k.id()).collect();
    let plan = make_plan(
        &mut ids,
        graph,
        (dropout * f64::from(PPM)) as u32,
        (corrupt * f64::from(PPM)) as u32,
        class,
        dim,
        CHECKPOINT,
        &mut r,
    )
    .expect("parameters exist");
    (plan, keys)
}

/// A new attempt of the same round: fresh nonce, same everything else.
pub fn next_attempt(plan: &RoundPlan, seed: u64) -> RoundPlan {
    let mut p = plan.clone();
    let mut nonce = [0u8; 16];
    rng(seed).fill_bytes(&mut nonce);
    p.attempt = AttemptNonce(nonce);
    p
}

/// Random inputs, one per client.
pub fn inputs(n: usize, dim: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut r = rng(seed);
    (0..n).map(|_| (0..dim).map(|_| r.next_u32()).collect()).collect()
}

/// The sum in the clear of the inputs of `members`.
pub fn clear_sum(inputs: &[Vec<u32>], members: &[usize]) -> Vec<u32> {
    let mut sum = vec![0u32; inputs[0].len()];
    for &i in members {
        for (s, x) in sum.iter_mut().zip(&inputs[i]) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}

/// A permissive policy for tests that exercise the curious class.
pub fn policy() -> ClientPolicy {
    ClientPolicy { min_adversary: AdversaryClass::Curious, ..ClientPolicy::default() }
}

pub fn verifier() -> Arc<RawKeyCredentials> {
    Arc::new(RawKeyCredentials)
}

/// The server's `receive_*` with the sender authenticated as the one the message names, as an
/// honest transport would: tests of other rules need not repeat it.
pub trait Authed {
    fn adv(&mut self, m: AdvertiseKeys) -> fedsec_crypto::Result<()>;
    fn shares(&mut self, m: ShareKeys) -> fedsec_crypto::Result<()>;
    fn complain(&mut self, m: Complaints) -> fedsec_crypto::Result<()>;
    fn masked(&mut self, m: &MaskedInput) -> fedsec_crypto::Result<UploadProgress>;
    fn consistent(&mut self, m: ConsistencySignature) -> fedsec_crypto::Result<()>;
    fn unmask(&mut self, m: UnmaskingResponse) -> fedsec_crypto::Result<()>;
}

impl Authed for SecAggServer {
    fn adv(&mut self, m: AdvertiseKeys) -> fedsec_crypto::Result<()> {
        self.receive_advertise(m.client, m)
    }
    fn shares(&mut self, m: ShareKeys) -> fedsec_crypto::Result<()> {
        self.receive_share_keys(m.client, m)
    }
    fn complain(&mut self, m: Complaints) -> fedsec_crypto::Result<()> {
        self.receive_complaints(m.client, m)
    }
    fn masked(&mut self, m: &MaskedInput) -> fedsec_crypto::Result<UploadProgress> {
        self.receive_masked_input(m.client, m)
    }
    fn consistent(&mut self, m: ConsistencySignature) -> fedsec_crypto::Result<()> {
        self.receive_consistency(m.client, m)
    }
    fn unmask(&mut self, m: UnmaskingResponse) -> fedsec_crypto::Result<()> {
        self.receive_unmasking(m.client, m)
    }
}

/// Phase 1½ where every client given answers: each client's complaints (from the shares
/// forwarded to it) go to the server, which closes the phase; E comes back.
pub fn through_complaints<'a>(
    server: &mut SecAggServer,
    answering: impl IntoIterator<Item = (&'a mut SecAggClient, &'a SharesForward)>,
) -> Exclusions {
    for (c, f) in answering {
        let complaints = c.handle_shares(f).expect("honest shares");
        server.complain(complaints).expect("honest complaints");
    }
    server.close_complaints().expect("phase 1½ closes")
}

/// No client excluded: E of a round without complaints, over n clients.
pub fn nobody(n: usize) -> Survivors {
    Survivors::from_indices(n, [])
}
