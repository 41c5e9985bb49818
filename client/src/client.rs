//! Taking part in rounds: check in, verify the checkpoint, train, run the five phases.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::sign::{CredentialVerifier, IdentityKey};
use fedsec_crypto::x509::{X509Credentials, client_id_of};
use fedsec_crypto::{ClientId, TaskId};
use fedsec_proto::v1;
use fedsec_proto::v1::federation_client::FederationClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use fedsec_wire::{Reason, WireError};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
pub use crate::round::RoundReport;
use crate::round::{Membership, Request, Response, Round, Step};
use crate::state::{ClientState, StateFile};
use crate::trainer::Trainer;

/// How often `run` warns while the coordinator stays unreachable (it keeps trying).
const UNREACHABLE_WARNING: Duration = Duration::from_secs(30);

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
    /// Set when `run` stopped at a simulated dropout ([`TestHooks::drop_out`]): the round and
    /// the phase whose message was never sent. Drop the client (its connection closes, as a
    /// dead process's would) and connect again to come back.
    pub dropped_out: Option<(u64, Phase)>,
    /// The attempts this client's masked input was accepted in: (round, attempt nonce). The
    /// input is in the sum of such an attempt if it completed.
    pub uploaded: Vec<(u64, [u8; 16])>,
}

/// Hooks for tests of the whole system; off in normal use.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Write each quantized input (little-endian u32 words) to
    /// `DIR/round-{round}-{attempt}-{client id}.bin` before masking it, so a test can compare the
    /// coordinator's sum with the clear sum. This leaks the input: tests only.
    pub dump_quantized: Option<PathBuf>,
    /// Stop (sleep forever) right before uploading the masked input of this round.
    pub stall_before_upload: Option<u64>,
    /// Simulated dropouts: round id → the phase before whose message the client stops, as if
    /// it died. [`Client::run`] returns at once with [`RunSummary::dropped_out`] set; each
    /// entry fires once.
    pub drop_out: std::collections::BTreeMap<u64, Phase>,
    /// Added network latency: a pause before every call.
    pub latency: Duration,
    /// A slow site: a pause after local training, before the first phase's message.
    pub slow_training: Duration,
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

fn pem_certs(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = read(path)?;
    let certs: Vec<Vec<u8>> = rustls_pki_types::pem::PemObject::pem_slice_iter(&text)
        .map(|c: std::result::Result<rustls_pki_types::CertificateDer<'static>, _>| {
            c.map(|c| c.to_vec())
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ClientError::Credential { path: path.into(), reason: format!("{e:?}") })?;
    if certs.is_empty() {
        return Err(ClientError::Credential { path: path.into(), reason: "no certificate".into() });
    }
    Ok(certs)
}

/// Reads the coordinator's checkpoint-signing key: SPKI PEM or 64 hex digits.
pub fn load_coordinator_key(path: &Path) -> Result<VerifyingKey> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| ClientError::Credential { path: path.into(), reason: "not text".into() })?;
    let bad = |reason: String| ClientError::Credential { path: path.into(), reason };
    if text.contains("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(&text).map_err(|e| bad(e.to_string()));
    }
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("expected a PEM public key or 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
}

impl Client {
    /// Reads the site's credentials and connects to the coordinator (mutual TLS unless the
    /// configuration says `insecure`).
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let policy = config.policy.to_policy()?;
        let task = TaskId::from_hex(&config.task_id)
            .ok_or_else(|| ClientError::Config("task_id must be 32 hex digits".into()))?;
        let key_pem = String::from_utf8(read(&config.key)?).map_err(|_| {
            ClientError::Credential { path: config.key.clone(), reason: "not PEM".into() }
        })?;
        let signing =
            SigningKey::from_pkcs8_pem(&key_pem).map_err(|e| ClientError::Credential {
                path: config.key.clone(),
                reason: format!("not an Ed25519 PKCS#8 key: {e}"),
            })?;
        let identity = Arc::new(IdentityKey::from_signing_key(signing));
        let chain = pem_certs(&config.cert)?;
        let cert_id = client_id_of(&chain[0]).map_err(|e| ClientError::Credential {
            path: config.cert.clone(),
            reason: e.to_string(),
        })?;
        if cert_id != identity.id() {
            return Err(ClientError::Credential {
                path: config.cert.clone(),
                reason: format!("the certificate is not for the key in {}", config.key.display()),
            });
        }
        let ca_roots = pem_certs(&config.ca)?;
        let coordinator_key = load_coordinator_key(&config.coordinator_key)?;
        let state_file = StateFile::in_dir(&config.state_dir)?;
        let state = state_file.load()?;
        let endpoint = Endpoint::from_shared(config.coordinator.clone())
            .map_err(|e| {
                ClientError::Config(format!("coordinator = {:?}: {e}", config.coordinator))
            })?
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
            let text = |p: &Path| {
                String::from_utf8(read(p)?).map_err(|_| ClientError::Credential {
                    path: p.into(),
                    reason: "not PEM text".into(),
                })
            };
            let tls = crate::tls::client_tls(
                &text(&config.ca)?,
                &text(&config.cert)?,
                &key_pem,
                &config.server_name,
            )
            .map_err(|e| ClientError::Credential {
                path: config.cert.clone(),
                reason: e.to_string(),
            })?;
            endpoint.tls_config(tls).map_err(|e| ClientError::Connect(e.to_string()))?
        };
        // Connects on first use, and reconnects after a dropped connection.
        let channel = endpoint.connect_lazy();
        let fed = FederationClient::new(channel)
            .max_decoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES);
        let member = Membership::new(identity, &chain, policy, coordinator_key, task);
        Ok(Client { config, fed, member, ca_roots, state_file, state, hooks: TestHooks::default() })
    }

    /// Turns on test hooks.
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
        let mut backoff = Duration::from_millis(200);
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
            });
            let answer = match self.fed.check_in(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if refused_by_tls(&s) => {
                    // A certificate problem does not heal by retrying: say so and stop.
                    return Err(ClientError::Connect(describe(&s)));
                }
                Err(s) if transient(&s) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNREACHABLE_WARNING {
                        tracing::warn!(status = %describe(&s), "the coordinator has been unreachable for {:?}; still trying", since.elapsed());
                        unreachable_since = Some(Instant::now());
                    } else {
                        tracing::debug!(status = %describe(&s), "check-in failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(s) => return Err(ClientError::status("CheckIn", s)),
            };
            backoff = Duration::from_millis(200);
            unreachable_since = None;
            match answer.outcome {
                Some(v1::check_in_response::Outcome::Plan(p)) => {
                    match self.participate(&p, trainer, &mut summary.uploaded).await {
                        Ok(report) => {
                            tracing::info!(
                                round = report.round_id,
                                completed = report.completed,
                                "round finished"
                            );
                            summary.rounds.push(report);
                        }
                        Err(ClientError::DroppedOut { round, phase }) => {
                            tracing::info!(round, %phase, "dropping out (test hook)");
                            summary.dropped_out = Some((round, phase));
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "left the attempt");
                            summary.abandoned.push(e.to_string());
                        }
                    }
                }
                Some(v1::check_in_response::Outcome::Retry(r)) => {
                    tokio::time::sleep(
                        Duration::from_millis(u64::from(r.after_ms)).max(Duration::from_millis(50)),
                    )
                    .await;
                }
                Some(v1::check_in_response::Outcome::Finished(_)) => break,
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

    fn verifier(&self) -> Arc<dyn CredentialVerifier> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match X509Credentials::new(&self.ca_roots, now) {
            Ok(v) => Arc::new(v),
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
            Round::new(&self.member, self.verifier(), p, &self.state, Instant::now())?;
        if let Some(dir) = self.hooks.dump_quantized.clone() {
            let me = self.member.id();
            round.observe_quantized(Box::new(move |plan, x| {
                let bytes: Vec<u8> = x.iter().flat_map(|w| w.to_le_bytes()).collect();
                let name = format!(
                    "round-{}-{}-{}.bin",
                    plan.round_id.0,
                    hex::encode(plan.attempt.0),
                    me.to_hex()
                );
                if let Err(e) = std::fs::write(dir.join(&name), bytes) {
                    tracing::error!(file = name, error = %e, "cannot dump the quantized input");
                }
            }));
        }
        let round_id = round.plan().round_id.0;
        loop {
            step = match step {
                Step::Send { request, deadline, persist } => {
                    if persist {
                        self.state_file.save(&self.state)?;
                    }
                    if let Some(phase) = request.phase() {
                        self.drop_out_at(round_id, phase)?;
                    }
                    if matches!(request, Request::UploadMaskedInput(_))
                        && self.hooks.stall_before_upload == Some(round_id)
                    {
                        tracing::info!("stalling before the upload (test hook)");
                        std::future::pending::<()>().await;
                    }
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
                    if !self.hooks.slow_training.is_zero() {
                        tokio::time::sleep(self.hooks.slow_training).await;
                    }
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
            Request::DownloadModel(r) => self.download(r).await?,
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

    /// Downloads the checkpoint: the manifest first, then the bytes.
    async fn download(&self, r: v1::DownloadModelRequest) -> Result<Response> {
        let mut stream = self
            .fed
            .clone()
            .download_model(self.request(r))
            .await
            .map_err(|s| ClientError::status("DownloadModel", s))?
            .into_inner();
        let mut manifest: Option<v1::CheckpointManifest> = None;
        let mut data = Vec::new();
        while let Some(chunk) =
            stream.message().await.map_err(|s| ClientError::status("DownloadModel", s))?
        {
            match chunk.part {
                Some(v1::model_chunk::Part::Manifest(m)) if manifest.is_none() => {
                    // The size is unverified until the whole checkpoint is: reserve little.
                    data.reserve(m.size_bytes.min(1 << 26) as usize);
                    manifest = Some(m);
                }
                Some(v1::model_chunk::Part::Data(d)) if manifest.is_some() => {
                    let size = manifest.as_ref().map_or(0, |m| m.size_bytes);
                    if (data.len() + d.len()) as u64 > size {
                        let reason = Reason::TooLong(size);
                        return Err(WireError { field: "model_chunk.data", reason }.into());
                    }
                    data.extend_from_slice(&d);
                }
                _ => {
                    let reason = Reason::Order("the manifest first, then the data");
                    return Err(WireError { field: "model_chunk.part", reason }.into());
                }
            }
        }
        let manifest =
            manifest.ok_or(WireError { field: "model_chunk.manifest", reason: Reason::Missing })?;
        Ok(Response::Model { manifest, data })
    }

    /// The simulated dropout hook: stops before `phase` of round `round` if asked to.
    fn drop_out_at(&mut self, round: u64, phase: Phase) -> Result<()> {
        if self.hooks.drop_out.get(&round) == Some(&phase) {
            self.hooks.drop_out.remove(&round);
            return Err(ClientError::DroppedOut { round, phase });
        }
        Ok(())
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
        let mut backoff = Duration::from_millis(100);
        if !self.hooks.latency.is_zero() {
            tokio::time::sleep(self.hooks.latency).await;
        }
        loop {
            match f(self.fed.clone(), self.request(msg.clone())).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(&s) && Instant::now() + backoff < until => {
                    tracing::debug!(call = name, status = %s, "retrying with the identical message");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(s) if s.code() == Code::Aborted => {
                    return Err(ClientError::Aborted(s.message().into()));
                }
                Err(s) => return Err(ClientError::status(name, s)),
            }
        }
    }
}

/// A status with the chain of errors under it (a TLS alert hides under "transport error").
fn describe(s: &Status) -> String {
    let mut text = format!("{}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// The TLS handshake refused this client or the coordinator: a certificate that is not
/// trusted, missing, revoked or expired. Retrying cannot help.
fn refused_by_tls(s: &Status) -> bool {
    let text = describe(s);
    text.contains("received fatal alert") || text.contains("invalid peer certificate")
}

/// A failure worth retrying with the identical message: the connection, or a coordinator
/// that is receiving as many uploads as it allows at once — not the content.
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
