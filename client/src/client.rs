//! Taking part in rounds: check in, verify the checkpoint, train, run the five phases.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey};
use fedsec_crypto::{ClientId, TaskId};
use fedsec_proto::v1;
use fedsec_proto::v1::federation_client::FederationClient;
use fedsec_wire::model::Model;
use fedsec_wire::x509::{X509Credentials, client_id_of};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use fedsec_wire::{Reason, WireError};

use crate::backoff::{Backoff, retry_after, spread};
use crate::config::ClientConfig;
use crate::download::ModelDownload;
use crate::error::{ClientError, ConfigError, ConnectError, CredentialProblem, Result, describe};
use crate::hooks::TestHooks;
pub use crate::round::RoundReport;
use crate::round::{Membership, Request, Response, Round, Step};
use crate::state::{ClientState, StateFile};
use crate::trainer::Trainer;

/// How often `run` warns while the coordinator stays unreachable (it keeps trying).
const UNREACHABLE_WARNING: Duration = Duration::from_secs(30);

/// Check-in while the coordinator is away or busy: from 200 ms, doubling up to 5 s.
const CHECK_IN_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// After leaving an attempt: from 100 ms, doubling up to 30 s while check-ins keep offering
/// the attempt it left (which it does not join again: no second download of the model) or it
/// keeps leaving attempts, so a client that keeps failing does not hammer the coordinator, and
/// one that left an attempt is back as soon as the next round selects.
const AFTER_LEAVING_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(30));

/// Resending a phase's message after a transient failure: from 100 ms, doubling up to 2 s,
/// within the phase's deadline.
const CALL_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The metadata header naming the client when the coordinator runs `--insecure`.
const INSECURE_CLIENT_ID_HEADER: &str = "x-fedsec-client-id";

/// What [`Client::run`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Attempts this client took part in, in order.
    pub rounds: Vec<RoundReport>,
    /// Attempts it left (refused plan, aborted round, failed call), with the reason.
    pub abandoned: Vec<String>,
    /// The newest checkpoint version it verified.
    pub last_checkpoint_version: Option<u64>,
    /// The task's final global model, verified, when the task finished with a checkpoint
    /// newer than the last this client trained on.
    pub final_model: Option<Model>,
    /// Set when `run` stopped at a simulated dropout (the `drop_out` test hook, with the
    /// feature `test-hooks`): the round and the phase whose message was never sent. Drop the
    /// client (its connection closes, as a dead process's would) and connect again to come
    /// back.
    pub dropped_out: Option<(u64, Phase)>,
    /// The attempts this client's masked input was accepted in: (round, attempt nonce). The
    /// input is in the sum of such an attempt if it completed.
    pub uploaded: Vec<(u64, [u8; 16])>,
}

/// A connected client of one training task. See the [crate docs](crate).
pub struct Client {
    config: ClientConfig,
    fed: FederationClient<Channel>,
    member: Membership,
    ca_roots: Vec<Vec<u8>>,
    state_file: StateFile,
    state: ClientState,
    hooks: TestHooks,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.member.id())
            .field("coordinator", &self.config.coordinator)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ClientError::Io { path: path.into(), source })
}

fn credential(path: &Path, reason: CredentialProblem) -> ClientError {
    ClientError::Credential { path: path.into(), reason }
}

/// The file's text.
fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?).map_err(|_| credential(path, CredentialProblem::NotText))
}

fn pem_certs(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = read(path)?;
    let certs: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(&text)
        .map(|c: std::result::Result<rustls_pki_types::CertificateDer<'static>, _>| {
            c.map(|c| c.to_vec())
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| credential(path, CredentialProblem::Pem(e)))?;
    if certs.is_empty() {
        return Err(credential(path, CredentialProblem::NoCertificate));
    }
    Ok(certs)
}

/// Reads the coordinator's checkpoint-signing key: SPKI PEM or 64 hex digits.
pub fn load_coordinator_key(path: &Path) -> Result<VerifyingKey> {
    let text = read_text(path)?;
    if text.contains("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(&text)
            .map_err(|e| credential(path, CredentialProblem::PublicKey(e)));
    }
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| credential(path, CredentialProblem::NotAPublicKey))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| credential(path, CredentialProblem::InvalidKey(e)))
}

impl Client {
    /// Reads the site's credentials and connects to the coordinator (mutual TLS unless the
    /// configuration says `insecure`).
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.check()?;
        let policy = config.policy.to_policy()?;
        let task = TaskId::from_hex(&config.task_id)
            .ok_or_else(|| ConfigError::TaskId(config.task_id.clone()))?;
        let key_pem = read_text(&config.key)?;
        let signing = SigningKey::from_pkcs8_pem(&key_pem)
            .map_err(|e| credential(&config.key, CredentialProblem::PrivateKey(e)))?;
        let identity = Arc::new(IdentityKey::from_signing_key(signing));
        let chain = pem_certs(&config.cert)?;
        let cert_id = client_id_of(&chain[0])
            .map_err(|e| credential(&config.cert, CredentialProblem::Certificate(e)))?;
        if cert_id != identity.id() {
            let key = config.key.clone();
            return Err(credential(&config.cert, CredentialProblem::NotForKey { key }));
        }
        let ca_roots = pem_certs(&config.ca)?;
        let coordinator_key = load_coordinator_key(&config.coordinator_key)?;
        let state_file = StateFile::in_dir(&config.state_dir)?;
        let state_file = match &config.encryption {
            Some(e) => state_file.with_keys(Arc::new(e.key_ring()?), identity.id().to_hex()),
            None => state_file,
        };
        let state = state_file.load()?;
        let endpoint = Endpoint::from_shared(config.coordinator.clone())
            .map_err(|source| ConfigError::Coordinator { url: config.coordinator.clone(), source })?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            // Keeps the connection open through long local training: the coordinator takes a
            // selected client without a connection for a dropout.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let endpoint = if config.insecure {
            endpoint
        } else {
            crate::tls::install_crypto_provider();
            let tls = crate::tls::client_tls(
                &read_text(&config.ca)?,
                &read_text(&config.cert)?,
                &key_pem,
                &config.server_name,
            )
            .map_err(|e| credential(&config.cert, CredentialProblem::Tls(e)))?;
            endpoint.tls_config(tls).map_err(ConnectError::Tls)?
        };
        // Connects on first use, and reconnects after a dropped connection.
        let channel = endpoint.connect_lazy();
        let fed = FederationClient::new(channel)
            .max_decoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES);
        let member = Membership::new(identity, &chain, policy, coordinator_key, task);
        Ok(Client { config, fed, member, ca_roots, state_file, state, hooks: TestHooks::default() })
    }

    /// Turns on test hooks (only with the feature `test-hooks`: see [`crate::hooks`]).
    #[cfg(feature = "test-hooks")]
    pub fn with_test_hooks(mut self, hooks: TestHooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// This client's id: SHA-256 of its certificate's public key.
    pub fn id(&self) -> ClientId {
        self.member.id()
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if self.config.insecure
            && let Ok(v) = self.member.id().to_hex().parse()
        {
            req.metadata_mut().insert(INSECURE_CLIENT_ID_HEADER, v);
        }
        req
    }

    fn last_seen(&self) -> Option<u64> {
        self.state.last_seen_version.get(&self.member.state_key()).copied()
    }

    /// Takes part in rounds until the task finishes (or `max_rounds` completed).
    pub async fn run<T: Trainer + 'static>(&mut self, trainer: &mut T) -> Result<RunSummary> {
        let mut summary = RunSummary::default();
        let mut backoff = Backoff::new(CHECK_IN_BACKOFF.0, CHECK_IN_BACKOFF.1);
        let mut after_leaving = Backoff::new(AFTER_LEAVING_BACKOFF.0, AFTER_LEAVING_BACKOFF.1);
        // The round and attempt nonce of the attempt this client last left.
        let mut left: Option<(u64, Vec<u8>)> = None;
        let mut last_reason: Option<String> = None;
        let mut unreachable_since: Option<Instant> = None;
        loop {
            if let Some(max) = self.config.max_rounds
                && summary.rounds.iter().filter(|r| r.completed).count() as u64 >= max
            {
                break;
            }
            let req = self.request(v1::CheckInRequest {
                task_id: self.member.task().0.to_vec(),
                last_seen_checkpoint_version: self.last_seen().unwrap_or(0),
                contributed_on_checkpoint: self
                    .state
                    .ledger
                    .newest_checkpoint(&self.member.task())
                    .map(|c| c.0.to_vec())
                    .unwrap_or_default(),
            });
            let answer = match self.fed.check_in(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if refused_by_tls(&s) => {
                    // A certificate problem does not heal by retrying: say so and stop.
                    return Err(ConnectError::HandshakeRefused(Box::new(s)).into());
                }
                Err(s) if transient(&s) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNREACHABLE_WARNING {
                        tracing::warn!(status = %describe(&s), "the coordinator has been unreachable for {:?}; still trying", since.elapsed());
                        unreachable_since = Some(Instant::now());
                    } else {
                        tracing::debug!(status = %describe(&s), "check-in failed; retrying");
                    }
                    let wait = backoff.next_wait(&mut rand::rng(), retry_after(&s));
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(s) => return Err(ClientError::status("CheckIn", s)),
            };
            backoff.reset();
            unreachable_since = None;
            match answer.outcome {
                Some(v1::check_in_response::Outcome::Plan(p))
                    if left.as_ref().is_some_and(|l| *l == (p.round_id, p.attempt.clone())) =>
                {
                    // Still the attempt this client left: it cannot rejoin it (its messages
                    // for the phases it missed are gone). Wait for the next, downloading nothing.
                    let wait = after_leaving.next_wait(&mut rand::rng(), None);
                    tracing::debug!(
                        round = p.round_id,
                        ?wait,
                        "still the attempt this client left"
                    );
                    tokio::time::sleep(wait).await;
                }
                Some(v1::check_in_response::Outcome::Plan(p)) => {
                    let attempt = (p.round_id, p.attempt.clone());
                    match self.participate(&p, trainer, &mut summary.uploaded).await {
                        Ok(report) => {
                            tracing::info!(
                                round = report.round_id,
                                completed = report.completed,
                                "round finished"
                            );
                            summary.rounds.push(report);
                            after_leaving.reset();
                        }
                        Err(ClientError::DroppedOut { round, phase }) => {
                            tracing::info!(round, %phase, "dropping out (test hook)");
                            summary.dropped_out = Some((round, phase));
                            break;
                        }
                        // The data, the options or the model's shape: the same next time.
                        Err(ClientError::Training(t)) if t.is_permanent() => {
                            return Err(if t.is_model_mismatch() {
                                ClientError::ModelDoesNotFit(t)
                            } else {
                                ClientError::Training(t)
                            });
                        }
                        Err(e) => {
                            let asked = match &e {
                                ClientError::Status { status, .. } => retry_after(status),
                                _ => None,
                            };
                            left = Some(attempt);
                            let wait = after_leaving.next_wait(&mut rand::rng(), asked);
                            tracing::warn!(error = %e, ?wait, "left the attempt; checking in again after a pause");
                            summary.abandoned.push(e.to_string());
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Some(v1::check_in_response::Outcome::Retry(r)) => {
                    // Why it waits, said once each time the reason changes (the coordinator's
                    // words: for instance that no round can run on this checkpoint, and why).
                    if last_reason.as_deref() != Some(r.reason.as_str()) {
                        tracing::info!(reason = %r.reason, "not selected now; checking in again");
                        last_reason = Some(r.reason.clone());
                    }
                    let after =
                        Duration::from_millis(u64::from(r.after_ms)).max(Duration::from_millis(50));
                    let wait = spread(&mut rand::rng(), after);
                    tokio::time::sleep(wait).await;
                }
                Some(v1::check_in_response::Outcome::Finished(f)) => {
                    let version = f.final_checkpoint_version;
                    if version > self.last_seen().unwrap_or(0) {
                        match self.final_model(version).await {
                            Ok(model) => summary.final_model = Some(model),
                            Err(e) => {
                                tracing::warn!(error = %e, version, "the final checkpoint could not be fetched");
                            }
                        }
                    }
                    break;
                }
                None => {
                    return Err(
                        WireError { field: "check_in.outcome", reason: Reason::Missing }.into()
                    );
                }
            }
        }
        summary.last_checkpoint_version = self.last_seen();
        Ok(summary)
    }

    /// The verifier of peers' chains for a plan whose certificate instant is `cert_time`,
    /// once the plan's T is found within this site's allowed skew of its own clock.
    fn verifier(&self, cert_time: u64) -> Result<Arc<dyn CredentialVerifier>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let max_skew = self.config.policy.max_clock_skew_secs;
        // Every peer's chain is judged at T: a T this site's clock does not agree with is
        // refused before anything else of the plan is read.
        fedsec_crypto::context::check_cert_time(cert_time, now, max_skew)?;
        match X509Credentials::new(&self.ca_roots, cert_time) {
            Ok(v) => Ok(Arc::new(v)),
            Err(e) => unreachable!("the CA parsed when the client connected: {e}"),
        }
    }

    /// One attempt, from the plan to the round's result: the [`Round`] decides, this drives it
    /// over gRPC.
    async fn participate<T: Trainer + 'static>(
        &mut self,
        p: &v1::RoundPlan,
        trainer: &mut T,
        uploaded: &mut Vec<(u64, [u8; 16])>,
    ) -> Result<RoundReport> {
        let (mut round, mut step) =
            Round::new(&self.member, self.verifier(p.cert_time)?, p, &self.state, Instant::now())?;
        tracing::info!(
            round = round.plan().round_id.0,
            attempt = %hex::encode(round.plan().attempt.0),
            clients = round.plan().n(),
            "selected for a round"
        );
        self.hooks.observe(&mut round, self.member.id());
        let round_id = round.plan().round_id.0;
        loop {
            step = match step {
                Step::Send { request, deadline, persist } => {
                    let request = *request;
                    if persist {
                        self.state_file.save(&self.state)?;
                    }
                    self.hooks.before_send(round_id, &request).await?;
                    let is_upload = matches!(request, Request::UploadMaskedInput(_));
                    let response = self.send(request, deadline).await?;
                    let next =
                        round.handle(&response, &mut self.state, &mut rand::rng(), Instant::now());
                    // Taken by the coordinator, whatever the client thinks of U3 next.
                    if is_upload && round.uploaded() {
                        tracing::info!(round = round_id, "masked input uploaded");
                        uploaded.push((round_id, round.plan().attempt.0));
                    }
                    next?
                }
                Step::Train { model, persist, .. } => {
                    if persist {
                        self.state_file.save(&self.state)?;
                    }
                    let fit = trainer.fit(&model)?;
                    self.hooks.after_training().await;
                    round.trained(fit, Instant::now())?
                }
                Step::Done(report) => return Ok(report),
            };
        }
    }

    /// Sends one request until `deadline`, resending it identically after a dropped
    /// connection, and returns the coordinator's reply.
    async fn send(&self, request: Request, deadline: Instant) -> Result<Response> {
        Ok(match request {
            Request::DownloadModel(r) => self.download(r, deadline).await?,
            Request::AdvertiseKeys(r) => Response::AdvertiseKeys(
                self.call(deadline, "AdvertiseKeys", r, |mut c, r| async move {
                    c.advertise_keys(r).await
                })
                .await?,
            ),
            Request::ShareKeys(r) => Response::ShareKeys(
                self.call(
                    deadline,
                    "ShareKeys",
                    r,
                    |mut c, r| async move { c.share_keys(r).await },
                )
                .await?,
            ),
            Request::Complaints(r) => {
                Response::Complaints(
                    self.call(deadline, "Complaints", r, |mut c, r| async move {
                        c.complaints(r).await
                    })
                    .await?,
                )
            }
            Request::UploadMaskedInput(chunks) => Response::UploadMaskedInput(
                self.call(deadline, "UploadMaskedInput", chunks, |mut c, r| async move {
                    c.upload_masked_input(futures::stream::iter(r.into_inner())).await
                })
                .await?,
            ),
            Request::ConsistencyCheck(r) => Response::ConsistencyCheck(
                self.call(deadline, "ConsistencyCheck", r, |mut c, r| async move {
                    c.consistency_check(r).await
                })
                .await?,
            ),
            Request::Unmask(r) => Response::Unmask(
                self.call(deadline, "Unmask", r, |mut c, r| async move { c.unmask(r).await })
                    .await?,
            ),
        })
    }

    /// Downloads the checkpoint, trying again from the start after a transient failure (the
    /// connection, a rate limit on model bytes) with backoff, until `deadline`.
    async fn download(&self, r: v1::DownloadModelRequest, deadline: Instant) -> Result<Response> {
        let mut backoff = Backoff::new(CALL_BACKOFF.0, CALL_BACKOFF.1);
        loop {
            match self.download_once(r.clone()).await {
                Err(ClientError::Status { status, .. }) if transient(&status) => {
                    let wait = backoff.next_wait(&mut rand::rng(), retry_after(&status));
                    if Instant::now() + wait >= deadline {
                        return Err(ClientError::Status { call: "DownloadModel", status });
                    }
                    tracing::debug!(status = %status, ?wait, "downloading the checkpoint again");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Downloads the checkpoint once: the manifest first, then the bytes.
    async fn download_once(&self, r: v1::DownloadModelRequest) -> Result<Response> {
        let mut stream = self
            .fed
            .clone()
            .download_model(self.request(r))
            .await
            .map_err(|s| ClientError::status("DownloadModel", s))?
            .into_inner();
        let mut download = ModelDownload::new(self.config.max_model_bytes);
        while let Some(chunk) =
            stream.message().await.map_err(|s| ClientError::status("DownloadModel", s))?
        {
            download.push(chunk)?;
        }
        let (manifest, data) = download.finish()?;
        Ok(Response::Model { manifest, data })
    }

    /// Downloads and verifies the finished task's final checkpoint, and remembers its version.
    async fn final_model(&mut self, version: u64) -> Result<Model> {
        let request = v1::DownloadFinalModelRequest { task_id: self.member.task().0.to_vec() };
        let mut stream = self
            .fed
            .clone()
            .download_final_model(self.request(request))
            .await
            .map_err(|s| ClientError::status("DownloadFinalModel", s))?
            .into_inner();
        let mut download = ModelDownload::new(self.config.max_model_bytes);
        while let Some(chunk) =
            stream.message().await.map_err(|s| ClientError::status("DownloadFinalModel", s))?
        {
            download.push(chunk)?;
        }
        let (manifest, data) = download.finish()?;
        let model = self.member.final_checkpoint(&manifest, &data, version, &mut self.state)?;
        self.state_file.save(&self.state)?;
        tracing::info!(version, "final checkpoint received and verified");
        Ok(model)
    }

    /// Calls one phase, resending the identical message after a dropped connection until the
    /// phase's deadline.
    async fn call<M, R, F, Fut>(
        &self,
        until: Instant,
        name: &'static str,
        msg: M,
        f: F,
    ) -> Result<R>
    where
        M: Clone,
        F: Fn(FederationClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<R>, Status>>,
    {
        let mut backoff = Backoff::new(CALL_BACKOFF.0, CALL_BACKOFF.1);
        self.hooks.before_call().await;
        loop {
            match f(self.fed.clone(), self.request(msg.clone())).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(&s) => {
                    let wait = backoff.next_wait(&mut rand::rng(), retry_after(&s));
                    if Instant::now() + wait >= until {
                        return Err(ClientError::status(name, s));
                    }
                    tracing::debug!(call = name, status = %s, ?wait, "retrying with the identical message");
                    tokio::time::sleep(wait).await;
                }
                Err(s) if s.code() == Code::Aborted => {
                    return Err(ClientError::Aborted { reason: s.message().into() });
                }
                Err(s) => return Err(ClientError::status(name, s)),
            }
        }
    }
}

/// A status with the chain of errors under it (a TLS alert hides under "transport error").
/// The TLS handshake refused this client or the coordinator: a certificate that is not
/// trusted, missing, revoked or expired. Retrying cannot help.
fn refused_by_tls(s: &Status) -> bool {
    let text = describe(s);
    text.contains("received fatal alert") || text.contains("invalid peer certificate")
}

/// A failure worth retrying with the identical message: the connection, or a coordinator that
/// is busy (`RESOURCE_EXHAUSTED`: a rate limit, as many uploads as it receives at once) — not
/// the content. Retries back off with jitter and honour the coordinator's retry-after.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}
