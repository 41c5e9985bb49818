//! An honest in-memory driver: one [`SecAggServer`] and N [`SecAggClient`]s exchanging the
//! protocol's messages without sockets, with dropouts injected per phase.
//!
//! Tests use it to compare the unmasked sum with the sum of the inputs computed in the clear,
//! and to log every share released; simulations use it for thousands of clients.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_core::CryptoRng;

use crate::context::RoundPlan;
use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::secagg::Phase;
use crate::secagg::client::{ClientPolicy, ContributionLedger, SecAggClient, TrainedOn};
use crate::secagg::server::{ClosedState, SecAggServer};
use crate::sign::{CredentialVerifier, IdentityKey};

/// Which share a holder released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShareKind {
    /// A share of the self-mask seed b.
    SelfMask,
    /// A share of the mask key s^SK.
    MaskKey,
}

/// One share a client released to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Released {
    /// The holder that revealed it.
    pub holder: ClientId,
    /// Whose secret it is a share of.
    pub owner: ClientId,
    /// Which secret.
    pub kind: ShareKind,
}

/// The outcome of a round run by the driver.
#[derive(Debug)]
pub struct Outcome {
    /// The unmasked sum, or why the round aborted.
    pub sum: Result<Vec<u32>>,
    /// Every share released by any client.
    pub released: Vec<Released>,
    /// Sizes of U1..U5 reached (fewer entries if the round aborted early).
    pub set_sizes: Vec<usize>,
    /// Canonical indices whose input is in the sum (U3), if phase 2 closed.
    pub survivors: Option<Vec<usize>>,
}

/// Runs one honest round in memory.
///
/// `identities` and `inputs` are indexed by canonical index in `plan.selected`; a client in
/// `drops` sends nothing from the given phase on.
pub fn run_round(
    plan: &RoundPlan,
    identities: &[Arc<IdentityKey>],
    inputs: &[Vec<u32>],
    drops: &BTreeMap<usize, Phase>,
    policy: &ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
) -> Result<Outcome> {
    run_round_on(None, plan, identities, inputs, drops, policy, verifier)
}

/// [`run_round`] with the server's kernel on a thread pool.
pub fn run_round_on(
    pool: Option<Arc<rayon::ThreadPool>>,
    plan: &RoundPlan,
    identities: &[Arc<IdentityKey>],
    inputs: &[Vec<u32>],
    drops: &BTreeMap<usize, Phase>,
    policy: &ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
) -> Result<Outcome> {
    run(pool, plan, identities, inputs, drops, policy, verifier, None)
}

/// [`run_round`] with the server restarted once `restart_after` closes: its
/// [`ClosedState`](super::server::ClosedState) goes through its encoding
/// ([`ClosedState::to_bytes`](super::server::ClosedState::to_bytes)) into a new server
/// ([`SecAggServer::resume`]), which runs the rest of the attempt, as a coordinator restarted
/// on its persisted attempt does. The clients see no difference.
pub fn run_round_restarted(
    plan: &RoundPlan,
    identities: &[Arc<IdentityKey>],
    inputs: &[Vec<u32>],
    drops: &BTreeMap<usize, Phase>,
    policy: &ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
    restart_after: Phase,
) -> Result<Outcome> {
    run(None, plan, identities, inputs, drops, policy, verifier, Some(restart_after))
}

#[allow(clippy::too_many_arguments)] // the arguments of the two entry points above
fn run(
    pool: Option<Arc<rayon::ThreadPool>>,
    plan: &RoundPlan,
    identities: &[Arc<IdentityKey>],
    inputs: &[Vec<u32>],
    drops: &BTreeMap<usize, Phase>,
    policy: &ClientPolicy,
    verifier: Arc<dyn CredentialVerifier>,
    restart_after: Option<Phase>,
) -> Result<Outcome> {
    let n = plan.n();
    if identities.len() != n || inputs.len() != n {
        return Err(Error::WrongLength { got: identities.len().min(inputs.len()), expected: n });
    }
    let active = |i: usize, p: Phase| drops.get(&i).is_none_or(|&d| d > p);
    let mut server = SecAggServer::new(plan.clone(), verifier.clone())?;
    if let Some(pool) = pool {
        server = server.with_thread_pool(pool);
    }
    let mut outcome = Outcome {
        sum: Err(Error::Unfinished),
        released: Vec::new(),
        set_sizes: Vec::new(),
        survivors: None,
    };
    let mut clients = Vec::with_capacity(n);
    for id in identities {
        let c = SecAggClient::new(
            id.clone(),
            verifier.clone(),
            policy,
            plan.clone(),
            &stand_in_trained_on(plan, 0),
            &ContributionLedger::default(),
        )?;
        clients.push(c);
    }
    let mut ledgers = vec![ContributionLedger::default(); n];

    macro_rules! close {
        ($phase:expr, $e:expr) => {
            match $e {
                Ok(v) => {
                    if restart_after == Some($phase) {
                        let state = server.closed_state().expect("a phase just closed");
                        let state = ClosedState::from_bytes(&state.to_bytes())?;
                        server = SecAggServer::resume(plan.clone(), verifier.clone(), state)?;
                    }
                    v
                }
                Err(e) => {
                    outcome.sum = Err(e);
                    return Ok(outcome);
                }
            }
        };
    }

    // Phase 0.
    for (i, c) in clients.iter().enumerate() {
        if active(i, Phase::AdvertiseKeys) {
            server.receive_advertise(c.advertise().client, c.advertise().clone())?;
        }
    }
    let forwards = close!(Phase::AdvertiseKeys, server.close_advertise());
    outcome.set_sizes.push(server.u1().len());

    // Phase 1.
    for f in &forwards {
        let i = plan.index_of(&f.recipient).expect("server forwards only to U");
        if active(i, Phase::ShareKeys) {
            // A client that refuses (thresholds, a bad peer) sends nothing: like a dropout.
            if let Ok(msg) = clients[i].handle_keys(f) {
                server.receive_share_keys(f.recipient, msg)?;
            }
        }
    }
    let forwards = close!(Phase::ShareKeys, server.close_share_keys());
    outcome.set_sizes.push(server.u2().len());

    // Phase 1½: complaints (protocol v2).
    let mut complained = Vec::new();
    for f in &forwards {
        let i = plan.index_of(&f.recipient).expect("server forwards only to U");
        // A message the server refuses is as if never sent: the client is a dropout.
        if active(i, Phase::Complaints)
            && let Ok(msg) = clients[i].handle_shares(f)
            && server.receive_complaints(f.recipient, msg).is_ok()
        {
            complained.push(i);
        }
    }
    let exclusions = close!(Phase::Complaints, server.close_complaints());

    // Phase 2.
    for i in complained {
        if active(i, Phase::MaskedInputCollection)
            && let Ok(msg) = clients[i].handle_exclusions(&exclusions, &inputs[i], &mut ledgers[i])
        {
            server.receive_masked_input(plan.selected[i], &msg)?;
        }
    }
    let request = close!(Phase::MaskedInputCollection, server.close_masked_input());
    outcome.set_sizes.push(server.u3().len());
    outcome.survivors = Some(server.u3().into_iter().collect());

    // Phase 3.
    let u3 = server.u3();
    for &i in &u3 {
        if active(i, Phase::ConsistencyCheck)
            && let Ok(msg) = clients[i].handle_consistency(&request)
        {
            server.receive_consistency(msg.client, msg)?;
        }
    }
    let request = close!(Phase::ConsistencyCheck, server.close_consistency());
    outcome.set_sizes.push(request.signatures.len());

    // Phase 4.
    let mut responded = 0;
    for s in &request.signatures {
        let i = plan.index_of(&s.client).expect("signers are in U");
        if active(i, Phase::Unmasking) {
            let Ok(msg) = clients[i].handle_unmasking(&request) else { continue };
            for r in &msg.self_mask_shares {
                outcome.released.push(Released {
                    holder: msg.client,
                    owner: r.owner,
                    kind: ShareKind::SelfMask,
                });
            }
            for r in &msg.mask_key_shares {
                outcome.released.push(Released {
                    holder: msg.client,
                    owner: r.owner,
                    kind: ShareKind::MaskKey,
                });
            }
            server.receive_unmasking(msg.client, msg)?;
            responded += 1;
        }
    }
    outcome.set_sizes.push(responded);
    if restart_after == Some(Phase::Unmasking)
        && let Some(state) = server.unmasking_closed_state()
    {
        let state = ClosedState::from_bytes(&state.to_bytes())?;
        server = SecAggServer::resume(plan.clone(), verifier.clone(), state)?;
    }
    outcome.sum = server.finish();
    Ok(outcome)
}

/// A plan over `ids` with (k, t) chosen by [`crate::params::choose`] and a random attempt nonce
/// and graph seed: what tests, benchmarks and simulations start from.
#[allow(clippy::too_many_arguments)] // every argument is a plan field
pub fn make_plan<R: CryptoRng + ?Sized>(
    ids: &mut [ClientId],
    graph: crate::context::GraphKind,
    dropout_ppm: u32,
    corrupt_ppm: u32,
    adversary: crate::context::AdversaryClass,
    dim: u32,
    checkpoint: crate::ids::CheckpointHash,
    rng: &mut R,
) -> Result<RoundPlan> {
    use crate::context::PROTOCOL_VERSION;
    ids.sort_unstable();
    let params = crate::params::choose(graph, ids.len(), dropout_ppm, corrupt_ppm, adversary)?;
    let mut attempt = [0u8; 16];
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut attempt);
    rng.fill_bytes(&mut seed);
    Ok(RoundPlan {
        version: PROTOCOL_VERSION,
        task_id: crate::ids::TaskId([0; 16]),
        round_id: crate::ids::RoundId(1),
        attempt: crate::ids::AttemptNonce(attempt),
        selected: ids.to_vec(),
        graph,
        degree: params.degree,
        threshold: params.threshold,
        dropout_ppm,
        corrupt_ppm,
        adversary,
        graph_seed: seed,
        dim,
        quant: crate::quant::QuantParams::for_clients(ids.len(), 1.0, 1)?,
        checkpoint,
        // Raw-key credentials read no time; a caller with certificates sets its instant.
        cert_time: 0,
    })
}

/// What a client of this driver trains on: the plan's task and checkpoint at `version`, with
/// the checkpoint's hash standing in for the weights' hash — the driver holds no model. Never
/// for a deployment: with the stand-in, the ledger's once-per-weights rule is only the
/// once-per-checkpoint rule again. (The client library hashes the weights it decodes:
/// `fedsec_wire::model::Model::weights_hash`.)
pub fn stand_in_trained_on(plan: &RoundPlan, version: u64) -> TrainedOn {
    TrainedOn {
        task: plan.task_id,
        version,
        checkpoint: plan.checkpoint,
        weights: crate::ids::WeightsHash(plan.checkpoint.0),
    }
}
