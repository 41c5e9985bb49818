//! Mutual TLS end to end on 127.0.0.1: certificates from `pki::init`, the health service served
//! through `tls_incoming` behind an interceptor that calls `authenticate`, real tonic clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedsec_coordinator::auth::{authenticate, peer_info};
use fedsec_coordinator::pki::{self, PkiSummary};
use fedsec_coordinator::revocation::DenyList;
use fedsec_coordinator::tls::{self, install_crypto_provider, server_config};
use fedsec_crypto::ClientId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type Seen = Arc<Mutex<Vec<ClientId>>>;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn dev_pki(clients: usize) -> (tempfile::TempDir, PkiSummary) {
    let dir = tempfile::tempdir().unwrap();
    let summary = pki::init(dir.path(), clients, &[], false).unwrap();
    (dir, summary)
}

/// Serves the health service over mutual TLS; returns the address and the ids the
/// interceptor authenticated.
async fn serve_tls(pki: &PkiSummary, deny: DenyList) -> (SocketAddr, Seen) {
    install_crypto_provider();
    let config =
        server_config(&read(&pki.server_cert), &read(&pki.server_key), &read(&pki.ca_cert))
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let recorded = seen.clone();
    let interceptor = move |req: Request<()>| -> Result<Request<()>, Status> {
        let peer = authenticate(&req, &deny)?;
        recorded.lock().unwrap().push(peer.id);
        Ok(req)
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = InterceptedService::new(health, interceptor);
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(tls::tls_incoming(listener, config)),
    );
    (addr, seen)
}

/// How a health check went.
#[derive(Debug)]
enum Outcome {
    Serving,
    #[allow(dead_code)] // the reason is read through `Debug`, in assertion messages
    ConnectFailed(String),
    RpcFailed(Status),
}

async fn health_check(addr: SocketAddr, tls: ClientTlsConfig) -> Outcome {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3));
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return Outcome::ConnectFailed(format!("{e:?}")),
    };
    let request = HealthCheckRequest { service: String::new() };
    match HealthClient::new(channel).check(request).await {
        Ok(resp) if resp.get_ref().status == ServingStatus::Serving as i32 => Outcome::Serving,
        Ok(resp) => panic!("unexpected health status {:?}", resp.get_ref().status),
        Err(status) => Outcome::RpcFailed(status),
    }
}

/// The TLS configuration of `pki`'s client number `index` (0-based), trusting `pki`'s CA.
fn client_tls_of(pki: &PkiSummary, index: usize) -> ClientTlsConfig {
    let client = &pki.clients[index];
    fedsec_client::tls::client_tls(
        &read(&pki.ca_cert),
        &read(&client.cert),
        &read(&client.key),
        "localhost",
    )
    .unwrap()
}

/// SHA-256 of the SPKI of the certificate in `path`, computed from the certificate itself.
fn id_of_cert_file(path: &Path) -> ClientId {
    let der = CertificateDer::from_pem_file(path).unwrap();
    fedsec_crypto::x509::client_id_of(&der).unwrap()
}

#[tokio::test]
async fn good_certificate_is_served_and_identified_by_its_spki() {
    let (_dir, pki) = dev_pki(2);
    let (addr, seen) = serve_tls(&pki, DenyList::empty()).await;
    let outcome = health_check(addr, client_tls_of(&pki, 1)).await;
    assert!(matches!(outcome, Outcome::Serving), "{outcome:?}");
    let expected = id_of_cert_file(&pki.clients[1].cert);
    assert_eq!(*seen.lock().unwrap(), vec![expected]);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let (_dir, pki) = dev_pki(1);
    let (_other_dir, other) = dev_pki(1);
    let (addr, seen) = serve_tls(&pki, DenyList::empty()).await;
    // The client trusts the right server, but its own certificate is from another CA (whose
    // name is the same, so the server finds a bad signature rather than an unknown issuer).
    // As with any client-certificate refusal under TLS 1.3, the first call fails.
    let tls = fedsec_client::tls::client_tls(
        &read(&pki.ca_cert),
        &read(&other.clients[0].cert),
        &read(&other.clients[0].key),
        "localhost",
    )
    .unwrap();
    let outcome = health_check(addr, tls).await;
    assert!(matches!(outcome, Outcome::RpcFailed(_)), "{outcome:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_without_certificate_fails_on_its_first_call() {
    let (_dir, pki) = dev_pki(1);
    let (addr, seen) = serve_tls(&pki, DenyList::empty()).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca_cert)))
        .domain_name("localhost");
    // With TLS 1.3 the server's refusal arrives after the client finished its handshake, so
    // `connect` succeeds and the first call fails.
    match health_check(addr, tls).await {
        Outcome::RpcFailed(status) => {
            let detail = format!("{status:?}");
            assert!(detail.contains("CertificateRequired"), "{detail}");
        }
        other => panic!("the first call must fail for want of a certificate, got {other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn denied_client_is_refused_until_removed_and_reloaded() {
    let (dir, pki) = dev_pki(2);
    let denied = pki.clients[1].id;
    let deny_path = dir.path().join("deny.txt");
    std::fs::write(&deny_path, format!("# revoked\n{}\n", denied.to_hex())).unwrap();
    let deny = DenyList::load(&deny_path).unwrap();
    let (addr, seen) = serve_tls(&pki, deny.clone()).await;

    match health_check(addr, client_tls_of(&pki, 1)).await {
        Outcome::RpcFailed(status) => {
            assert_eq!(status.code(), Code::PermissionDenied);
            assert!(status.message().contains(&denied.to_hex()), "{}", status.message());
        }
        other => panic!("a denied client must get PERMISSION_DENIED, got {other:?}"),
    }
    // Others are unaffected.
    assert!(matches!(health_check(addr, client_tls_of(&pki, 0)).await, Outcome::Serving));

    std::fs::write(&deny_path, "# nobody\n").unwrap();
    assert_eq!(deny.reload().unwrap(), 0);
    let outcome = health_check(addr, client_tls_of(&pki, 1)).await;
    assert!(matches!(outcome, Outcome::Serving), "{outcome:?}");
    assert_eq!(*seen.lock().unwrap(), vec![pki.clients[0].id, denied]);
}

#[tokio::test]
async fn certificate_issued_from_a_site_csr_works() {
    let (dir, pki) = dev_pki(0);
    let site_dir = dir.path().join("site");
    let request = fedsec_client::pki::request(&site_dir, "site 7").unwrap();
    let ca_cert = read(&pki.ca_cert);
    let ca_key = read(&pki.dir.join("ca.key"));
    let cert = pki::sign_csr(&ca_cert, &ca_key, &read(&request.csr), 30).unwrap();
    let (addr, seen) = serve_tls(&pki, DenyList::empty()).await;
    let tls =
        fedsec_client::tls::client_tls(&ca_cert, &cert, &read(&request.key), "localhost").unwrap();
    let outcome = health_check(addr, tls).await;
    assert!(matches!(outcome, Outcome::Serving), "{outcome:?}");
    assert_eq!(*seen.lock().unwrap(), vec![request.id]);
    let identity = fedsec_client::pki::load_identity_key(&request.key).unwrap();
    assert_eq!(identity.id(), request.id);
}

#[tokio::test]
async fn a_silent_peer_does_not_hold_up_other_handshakes() {
    let (_dir, pki) = dev_pki(1);
    let (addr, _seen) = serve_tls(&pki, DenyList::empty()).await;
    // Connects and never says a word: its handshake waits for the 10 s timeout.
    let _silent = TcpStream::connect(addr).await.unwrap();
    // The good client must be served long before the silent peer's handshake times out.
    let outcome =
        tokio::time::timeout(Duration::from_secs(3), health_check(addr, client_tls_of(&pki, 0)))
            .await
            .expect("the good client was held up behind the silent peer");
    assert!(matches!(outcome, Outcome::Serving), "{outcome:?}");
}

#[tokio::test]
async fn plain_tcp_has_no_identity_and_authenticate_refuses_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tls::check_insecure_bind(addr).unwrap();
    let remote_seen: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let recorded = remote_seen.clone();
    let deny = DenyList::empty();
    let interceptor = move |req: Request<()>| -> Result<Request<()>, Status> {
        *recorded.lock().unwrap() = peer_info(&req).map(|p| p.remote_addr);
        authenticate(&req, &deny)?;
        Ok(req)
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(InterceptedService::new(health, interceptor))
            .serve_with_incoming(tls::tcp_incoming(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "a client certificate is required");
    let remote = remote_seen.lock().unwrap().expect("the interceptor saw the peer");
    assert!(remote.ip().is_loopback());
}

#[test]
fn insecure_bind_accepts_only_loopback() {
    for ok in ["127.0.0.1:7443", "[::1]:7443"] {
        assert!(tls::check_insecure_bind(ok.parse().unwrap()).is_ok(), "{ok}");
    }
    for bad in ["0.0.0.0:7443", "8.8.8.8:7443"] {
        assert!(tls::check_insecure_bind(bad.parse().unwrap()).is_err(), "{bad}");
    }
}
