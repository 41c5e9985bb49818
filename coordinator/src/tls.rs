//! The coordinator's transport: TLS 1.3 with mutual authentication, and plain TCP for
//! loopback demos only.
//!
//! [`tls_incoming`] turns a `TcpListener` into a stream of authenticated connections for
//! `tonic::transport::Server::serve_with_incoming`. Handshakes run concurrently, each in its own
//! task under a timeout, so a slow or silent peer never holds up the others; a failed handshake
//! is logged (peer address and reason) and skipped. The accept loop never waits: a connection
//! over its source's or the total allowance of handshakes ([`HandshakeLimiter`]) is closed at
//! once, and one over the connection caps of the tracker ([`Connections`]) after its
//! handshake. Each connection carries a [`PeerInfo`], which tonic puts into every request's
//! extensions; [`crate::auth::authenticate`] and the edge layer read it.
//!
//! ```no_run
//! # async fn serve(config: std::sync::Arc<rustls::ServerConfig>) -> Result<(), Box<dyn std::error::Error>> {
//! use fedsec_coordinator::tls;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7443").await?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .add_service(health)
//!     .serve_with_incoming(tls::tls_incoming(listener, config))
//!     .await?;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fedsec_crypto::ClientId;
use futures::Stream;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::connections::{ConnControl, ConnectionGuard, Connections};
use crate::edge::{EdgeConfig, HandshakeLimiter};

/// How long a peer has to complete the TLS handshake, by default (`edge.handshake_timeout_ms`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often refusals of the handshake limiter are reported in the log, at most.
const REFUSAL_REPORT: Duration = Duration::from_secs(10);

/// TCP keep-alive probes before the kernel gives a silent peer up.
const TCP_KEEPALIVE_PROBES: u32 = 3;

/// Completed connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Everything that can go wrong setting up the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM input holds no certificate.
    #[error("the {what} holds no PEM certificate")]
    NoCertificate { what: &'static str },
    /// A PEM input does not parse.
    #[error("the {what} is not valid PEM: {reason}")]
    BadPem { what: &'static str, reason: String },
    /// The key PEM holds no private key.
    #[error("the server key holds no PEM private key")]
    NoPrivateKey,
    /// A CA certificate cannot be a trust anchor.
    #[error("the client CA certificate cannot be a trust anchor: {0}")]
    BadClientCa(rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("cannot verify client certificates: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("invalid TLS configuration: {0}")]
    Config(rustls::Error),
    /// Plain TCP is for loopback demos only: anything else would expose unauthenticated,
    /// unencrypted traffic.
    #[error(
        "refusing to serve without TLS on {addr}: --insecure only binds loopback addresses (127.0.0.1, ::1)"
    )]
    InsecureBindNotLoopback { addr: SocketAddr },
}

/// Result alias.
pub type Result<T, E = TlsError> = core::result::Result<T, E>;

/// Installs the ring crypto provider as rustls' process default (once; later calls do
/// nothing). Call it at start-up, before any TLS configuration is built.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS server configuration: TLS 1.3 only, a client certificate **required** and verified
/// against `client_ca_pem`, ALPN `h2`.
///
/// `cert_chain_pem` is the server's certificate chain (leaf first), `key_pem` its PKCS#8 key.
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(cert_chain_pem, "server certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
        other => TlsError::BadPem { what: "server key", reason: other.to_string() },
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(client_ca_pem, "client CA")? {
        roots.add(ca).map_err(TlsError::BadClientCa)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// Refuses to serve plain TCP on anything but a loopback address.
pub fn check_insecure_bind(addr: SocketAddr) -> Result<()> {
    if addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(TlsError::InsecureBindNotLoopback { addr })
    }
}

/// Who is at the other end of a connection; tonic puts it into every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The authenticated client, or `None` on a plain-TCP (`--insecure`) connection.
    pub client: Option<PeerIdentity>,
    /// The connection's switch and call count (`None` on plain TCP).
    pub control: Option<Arc<ConnControl>>,
}

/// How [`tls_incoming_admitted`] admits connections: the `[edge]` values it uses, the
/// handshake limiter, and the tracker of authenticated connections.
#[derive(Debug, Clone)]
pub struct Admission {
    /// How long a peer has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress per source and in all.
    pub limiter: Arc<HandshakeLimiter>,
    /// Accounts (and caps) authenticated connections, if set.
    pub tracker: Option<Arc<Connections>>,
    /// TCP keep-alive idle time and probe interval (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// Counts the connections refused (handshake limits, failed handshakes), if set.
    pub metrics: Option<crate::metrics::EdgeMetrics>,
}

impl Admission {
    /// The admission `edge` describes, accounting connections in `tracker`.
    pub fn new(edge: &EdgeConfig, tracker: Option<Arc<Connections>>) -> Self {
        Admission {
            handshake_timeout: edge.handshake_timeout(),
            limiter: edge.handshake_limiter(),
            tracker,
            tcp_keepalive: Some(edge.keepalive_interval()),
            metrics: None,
        }
    }

    /// Also counts the connections refused in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::EdgeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// A client authenticated by its TLS certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the leaf certificate's `SubjectPublicKeyInfo`.
    pub id: ClientId,
    /// The certificate chain the client presented, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
}

impl core::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

/// An accepted TLS connection whose handshake (client certificate included) succeeded.
///
/// It reads end of stream once its [`ConnControl`] is switched off (the client was denied), and
/// the server then closes it; [`crate::edge::serve`] also cuts it then, and sends it away when
/// idle or old.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    /// Keeps the client's account in the connection tracker open while the connection is.
    _tracked: Option<ConnectionGuard>,
    control: Arc<ConnControl>,
}

impl TlsConn {
    /// The connection, unless the tracker refuses it (too many connections).
    fn new(
        stream: TlsStream<TcpStream>,
        remote_addr: SocketAddr,
        tracker: Option<&Arc<Connections>>,
    ) -> Option<Self> {
        let (_, session) = stream.get_ref();
        let chain: Vec<Vec<u8>> = session
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        let client = chain.first().and_then(|leaf| match fedsec_wire::x509::client_id_of(leaf) {
            Ok(id) => Some(PeerIdentity { id, chain: chain.clone() }),
            Err(e) => {
                // rustls verified this certificate, so this does not happen; be safe anyway.
                tracing::warn!(peer = %remote_addr, reason = %e, "client certificate unreadable");
                None
            }
        });
        let tracked = match tracker.zip(client.as_ref()) {
            Some((t, c)) => match t.opened(c.id) {
                Ok(guard) => Some(guard),
                Err(refused) => {
                    tracing::warn!(peer = %remote_addr, client = %c.id.to_hex(), reason = %refused, "connection refused");
                    return None;
                }
            },
            None => None,
        };
        let control = tracked.as_ref().map_or_else(ConnControl::new, |g| g.control().clone());
        let info = PeerInfo { remote_addr, client, control: Some(control.clone()) };
        Some(TlsConn { stream, info, _tracked: tracked, control })
    }

    /// Whether the connection is to end (switched off); registers `cx` to be woken for it.
    fn ending(&self, cx: &mut Context<'_>) -> bool {
        self.control.register(cx.waker());
        self.control.is_closed()
    }

    /// Who is at the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// An accepted plain-TCP connection (`--insecure`, loopback only): no identity.
#[derive(Debug)]
pub struct PlainConn {
    stream: TcpStream,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for PlainConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PlainConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ending(cx) {
            // End of stream: the server closes the connection and ends its calls.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

/// Delegates `AsyncWrite` to the wrapped stream.
macro_rules! delegate_write {
    ($conn:ty) => {
        impl AsyncWrite for $conn {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.stream).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.stream).poll_shutdown(cx)
            }
        }
    };
}

delegate_write!(TlsConn);
delegate_write!(PlainConn);

/// The connections of [`tls_incoming`]: only those whose handshake succeeded.
///
/// Dropping it (the server stopped) stops accepting and closes the listener.
#[derive(Debug)]
pub struct TlsIncoming {
    ready: ReceiverStream<io::Result<TlsConn>>,
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.ready).poll_next(cx)
    }
}

/// Accepts TLS connections on `listener` with the default `[edge]` values; see the module docs.
///
/// Must be called inside a Tokio runtime: the accept loop and the handshakes are spawned.
pub fn tls_incoming(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
    tls_incoming_admitted(listener, config, Admission::new(&EdgeConfig::default(), None))
}

/// [`tls_incoming`] with another handshake timeout.
pub fn tls_incoming_with_timeout(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> TlsIncoming {
    let admission = Admission { handshake_timeout, ..Admission::new(&EdgeConfig::default(), None) };
    tls_incoming_admitted(listener, config, admission)
}

/// [`tls_incoming`] under `admission`: its handshake limits and timeout, and its tracker, which
/// accounts each authenticated connection from the handshake until the connection closes.
pub fn tls_incoming_admitted(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    admission: Admission,
) -> TlsIncoming {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), admission, tx));
    TlsIncoming { ready: ReceiverStream::new(rx) }
}

/// Sets TCP keep-alive on an accepted socket: probes after `every` of silence, every `every`.
fn set_tcp_keepalive(tcp: &TcpStream, every: Duration) -> io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every)
        .with_retries(TCP_KEEPALIVE_PROBES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admission: Admission,
    ready: mpsc::Sender<io::Result<TlsConn>>,
) {
    // Refusals are counted and reported at most once per `REFUSAL_REPORT` (a flood would
    // otherwise write a line per connection).
    let mut refused_since_report = 0u64;
    let mut last_report: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(reason = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Never wait for a slot: a refused connection is closed now, so the backlog drains.
        let permit = match admission.limiter.try_admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                drop(tcp);
                if let Some(m) = &admission.metrics {
                    m.refused(crate::metrics::Refusal::Connections);
                }
                refused_since_report += 1;
                if last_report.is_none_or(|t| t.elapsed() >= REFUSAL_REPORT) {
                    tracing::warn!(
                        last_peer = %peer,
                        reason = %refused,
                        refused = refused_since_report,
                        "connections closed before their handshake"
                    );
                    refused_since_report = 0;
                    last_report = Some(Instant::now());
                }
                continue;
            }
        };
        // Small gRPC messages should not wait for Nagle's algorithm; failure is harmless.
        let _ = tcp.set_nodelay(true);
        if let Some(every) = admission.tcp_keepalive
            && let Err(e) = set_tcp_keepalive(&tcp, every)
        {
            tracing::debug!(%peer, reason = %e, "cannot set TCP keep-alive");
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let tracker = admission.tracker.clone();
        let handshake_timeout = admission.handshake_timeout;
        let metrics = admission.metrics.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            // The slot is free once the handshake is over, whatever its outcome.
            drop(permit);
            match accepted {
                Ok(Ok(stream)) => {
                    let Some(conn) = TlsConn::new(stream, peer, tracker.as_ref()) else {
                        return;
                    };
                    // The server stopped if this fails; the connection is simply dropped.
                    let _ = ready.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, reason = %e, "TLS handshake failed");
                    if let Some(m) = &metrics {
                        m.refused(crate::metrics::Refusal::Tls);
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        reason = "timed out",
                        timeout_s = handshake_timeout.as_secs_f64(),
                        "TLS handshake failed"
                    );
                    if let Some(m) = &metrics {
                        m.refused(crate::metrics::Refusal::Tls);
                    }
                }
            }
        });
    }
}

/// Accepts plain-TCP connections (`--insecure`): no encryption, no client identity. Check the
/// address with [`check_insecure_bind`] before binding.
pub fn tcp_incoming(listener: TcpListener) -> impl Stream<Item = io::Result<PlainConn>> + Send {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, remote_addr)) => {
                    let _ = stream.set_nodelay(true);
                    let info = PeerInfo { remote_addr, client: None, control: None };
                    let conn = PlainConn { stream, info };
                    return Some((Ok(conn), listener));
                }
                Err(e) => {
                    tracing::warn!(reason = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_bind_only_on_loopback() {
        for ok in ["127.0.0.1:7443", "[::1]:7443", "127.0.0.2:1", "[::ffff:127.0.0.1]:1"] {
            assert!(check_insecure_bind(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:7443", "[::]:7443", "203.0.113.7:7443", "192.168.1.2:1"] {
            assert!(
                matches!(
                    check_insecure_bind(bad.parse().unwrap()),
                    Err(TlsError::InsecureBindNotLoopback { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn server_config_refuses_missing_pieces() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init(dir.path(), 0, &[], false).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        let (cert, key, ca) = (read("server.pem"), read("server.key"), read("ca.pem"));
        let config = server_config(&cert, &key, &ca).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(matches!(
            server_config("", &key, &ca),
            Err(TlsError::NoCertificate { what: "server certificate chain" })
        ));
        assert!(matches!(server_config(&cert, &ca, &ca), Err(TlsError::NoPrivateKey)));
        assert!(matches!(
            server_config(&cert, &key, ""),
            Err(TlsError::NoCertificate { what: "client CA" })
        ));
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().serialize_pem();
        assert!(matches!(server_config(&cert, &other, &ca), Err(TlsError::Config(_))));
    }
}
