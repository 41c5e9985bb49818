//! The coordinator's network edge under abuse, with real processes over mutual TLS on loopback:
//! a flood of idle TCP connections from one address, oversized and denied messages, a thousand
//! streams on one connection, and a client denied while it waits for selection. In each case
//! the honest round completes. And how connections end: GOAWAY when idle or old, calls in
//! flight finishing within the grace period.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Federation, Options, TASK_ID};
use fedsec_client::tls::client_tls;
use fedsec_proto::v1;
use fedsec_proto::v1::admin_client::AdminClient;
use fedsec_proto::v1::federation_client::FederationClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The longest any single wait of these tests may take on a loaded machine.
const LONG: Duration = Duration::from_secs(300);

fn runtime() -> tokio::runtime::Runtime {
    fedsec_client::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn text(path: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap()
}

fn site_tls(fed: &Federation, i: usize) -> ClientTlsConfig {
    let (cert, key) = fed.cert(i);
    client_tls(&text(fed.pki().join("ca.pem")), &text(cert), &text(key), "localhost").unwrap()
}

fn channel(fed: &Federation, i: usize) -> Channel {
    Endpoint::from_shared(format!("https://{}", fed.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .tls_config(site_tls(fed, i))
        .unwrap()
        .connect_lazy()
}

fn federation(ch: &Channel) -> FederationClient<Channel> {
    FederationClient::new(ch.clone())
        .max_decoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(fedsec_proto::MAX_MESSAGE_BYTES)
}

async fn health(ch: &Channel) -> Result<ServingStatus, Status> {
    let r = HealthClient::new(ch.clone())
        .check(HealthCheckRequest { service: "fedsec.v1.Federation".into() })
        .await?;
    Ok(r.into_inner().status())
}

fn check_in_request(task_id_bytes: usize) -> v1::CheckInRequest {
    let mut task_id = hex::decode(TASK_ID).unwrap();
    task_id.resize(task_id_bytes.max(16), 0);
    v1::CheckInRequest { task_id, last_seen_checkpoint_version: 0, ..Default::default() }
}

/// Runs the clients `1..=n` through the federation's rounds and checks every round completed
/// with all of them.
fn run_honest_round(fed: &mut Federation, n: usize) {
    for i in 1..=n {
        fed.spawn_client(i, &[]);
    }
    fed.wait_clients(LONG);
    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len() as u64, fed.opts.rounds, "every round completed");
    for c in &completed {
        assert_eq!(c["detail"]["participants"], n, "all honest clients took part: {c}");
    }
}

/// Idle TCP connections from `127.0.0.2`, re-opened as the coordinator closes them, until
/// `stop`; counts the connections the coordinator closed.
async fn flood(
    target: std::net::SocketAddr,
    count: usize,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) {
    let open = || async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
        socket.connect(target).await.ok()
    };
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(open().await);
    }
    println!("flood: {} of {count} connections open", conns.iter().flatten().count());
    // Bounded: at most an hour of one-second rounds.
    for _ in 0..3600 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for c in conns.iter_mut() {
            let gone = match c {
                None => true,
                Some(s) => {
                    let mut buf = [0u8; 64];
                    // Closed by the peer: end of stream or an error; open: would block.
                    !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
            };
            if gone {
                closed.fetch_add(1, Ordering::SeqCst);
                *c = open().await;
            }
        }
    }
}

#[test]
fn a_flood_of_idle_connections_from_one_address_does_not_stop_the_round() {
    let mut fed = Federation::start(Options { rounds: 1, ..Options::default() });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    let target: std::net::SocketAddr = fed.addr.parse().unwrap();
    let (stop, closed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let attacker = rt.spawn(flood(target, 600, stop.clone(), closed.clone()));
    // Let the flood take hold: every connection opened once.
    let end = Instant::now() + LONG;
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < end, "the coordinator never closed a flood connection");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ch = channel(&fed, 11);
    let status = rt.block_on(health(&ch)).expect("a health check from 127.0.0.1 answers");
    assert_eq!(status, ServingStatus::Serving);
    run_honest_round(&mut fed, 10);
    let status = rt.block_on(health(&ch)).expect("a health check answers after the round");
    assert_eq!(status, ServingStatus::Serving);
    stop.store(true, Ordering::SeqCst);
    rt.block_on(attacker).unwrap();
    // The operator sees the flood, in a line per period rather than per connection.
    let line = fed.coordinator.wait_for("connections closed before their handshake", 1, LONG);
    assert!(line.contains("127.0.0.2"), "{line}");
    println!("flood: the coordinator closed {} connections", closed.load(Ordering::SeqCst));
}

#[test]
fn an_oversized_check_in_is_refused_before_it_is_buffered_and_a_denied_one_before_it_is_read() {
    // Certificate 11 is denied.
    let fed = Federation::start(Options { rounds: 1, deny: vec![11], ..Options::default() });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    rt.block_on(async {
        // Warm up: one connection and one small call, then measure the peak from here.
        let ok = federation(&channel(&fed, 1));
        ok.clone().check_in(check_in_request(16)).await.expect("a small check-in is served");
        let before = fed.coordinator_peak_rss();
        let sixty_mib = 60 << 20;
        let s = ok
            .clone()
            .check_in(check_in_request(sixty_mib))
            .await
            .expect_err("a 60 MiB check-in is refused");
        println!("oversized: {:?} {}", s.code(), s.message());
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("/fedsec.v1.Federation/CheckIn"), "{}", s.message());
        assert!(s.message().contains("limit of 65536 bytes"), "{}", s.message());
        // Four at once, from four connections.
        let calls: Vec<_> = (2..=5)
            .map(|i| {
                let mut c = federation(&channel(&fed, i));
                tokio::spawn(async move { c.check_in(check_in_request(sixty_mib)).await })
            })
            .collect();
        for call in calls {
            let s = call.await.unwrap().expect_err("refused");
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        }
        let denied = federation(&channel(&fed, 11));
        let s = denied
            .clone()
            .check_in(check_in_request(sixty_mib))
            .await
            .expect_err("a denied client's 60 MiB check-in is refused");
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains(&fed.client_id(11)), "{}", s.message());
        let after = fed.coordinator_peak_rss();
        let growth = after.saturating_sub(before);
        println!("coordinator peak RSS: {before} → {after} bytes (+{growth})");
        assert!(growth < 8 << 20, "the peak grew by {growth} bytes");
        // The connection of the refused call still serves.
        ok.clone().check_in(check_in_request(16)).await.expect("a small check-in is served");
    });
}

#[test]
fn a_thousand_streams_on_one_connection_are_served_at_most_max_concurrent_streams_at_once() {
    const MAX_STREAMS: usize = 32;
    let mut fed = Federation::start(Options {
        rounds: 1,
        edge: vec![format!("max_concurrent_streams = {MAX_STREAMS}")],
        ..Options::default()
    });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    let ch = channel(&fed, 11);
    let started = Arc::new(AtomicUsize::new(0));
    // A thousand health watches on one channel: a watch answers at once and stays open.
    let watches: Vec<_> = (0..1000)
        .map(|_| {
            let (ch, started) = (ch.clone(), started.clone());
            rt.spawn(async move {
                let mut health = HealthClient::new(ch);
                let request = HealthCheckRequest { service: String::new() };
                if let Ok(r) = health.watch(request).await {
                    let mut stream = r.into_inner();
                    if let Ok(Some(_)) = stream.message().await {
                        started.fetch_add(1, Ordering::SeqCst);
                        // Hold the stream open until the test ends.
                        while let Ok(Some(_)) = stream.message().await {}
                    }
                }
            })
        })
        .collect();
    let end = Instant::now() + LONG;
    while started.load(Ordering::SeqCst) < MAX_STREAMS {
        assert!(Instant::now() < end, "only {} watches started", started.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(100));
    }
    run_honest_round(&mut fed, 10);
    let served = started.load(Ordering::SeqCst);
    println!("streams served at once on one connection: {served} of 1000");
    assert_eq!(served, MAX_STREAMS, "no more than max_concurrent_streams were served");
    for w in watches {
        w.abort();
    }
}

#[test]
fn a_client_denied_while_it_waits_for_selection_is_disconnected_and_never_selected() {
    // Certificate 11 is the client to deny, 12 the operator's.
    let mut fed = Federation::start(Options {
        rounds: 1,
        admins: vec![12],
        // Selection waits for the ten honest clients (the denied one alone is too few).
        min_clients: 10,
        ..Options::default()
    });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    let admin = AdminClient::new(channel(&fed, 12));
    let checked_in = |mut admin: AdminClient<Channel>| async move {
        let status = admin
            .get_task_status(v1::TaskStatusRequest { task_id: hex::decode(TASK_ID).unwrap() })
            .await
            .unwrap()
            .into_inner();
        status.checked_in
    };
    let waiting = federation(&channel(&fed, 11));
    let call = {
        let mut c = waiting.clone();
        rt.spawn(async move { c.check_in(check_in_request(16)).await })
    };
    let end = Instant::now() + LONG;
    while rt.block_on(checked_in(admin.clone())) != 1 {
        assert!(Instant::now() < end, "client 11 never waited for selection");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deny = fed.path("deny.txt");
    std::fs::write(&deny, fed.client_id(11) + "\n").unwrap();
    let reloaded = rt
        .block_on(admin.clone().reload_deny_list(v1::ReloadDenyListRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.denied, 1);
    // The long-poll ends with the connection, not with an answer.
    let outcome = rt.block_on(call).unwrap();
    let s = outcome.expect_err("the waiting check-in is cut off");
    println!("the denied client's check-in: {:?} {}", s.code(), s.message());
    assert_ne!(s.code(), Code::Ok);
    assert_eq!(rt.block_on(checked_in(admin.clone())), 0, "its check-in was withdrawn");
    let entries = fed.audit_entries("deny_list_reloaded");
    assert!(entries[0]["detail"]["connections_closed"].as_u64() >= Some(1), "{entries:?}");
    // It is refused from now on, and the round runs with the ten others.
    let again = rt.block_on(waiting.clone().check_in(check_in_request(16)));
    let again = match again {
        Err(s) if s.code() != Code::PermissionDenied => {
            rt.block_on(waiting.clone().check_in(check_in_request(16)))
        }
        other => other,
    };
    assert_eq!(again.expect_err("denied").code(), Code::PermissionDenied);
    run_honest_round(&mut fed, 10);
    let started = fed.audit_entries("round_started");
    assert!(started.iter().all(|e| e["detail"]["selected"] == 10), "{started:?}");
}

#[test]
fn a_black_holed_client_is_gone_within_the_keep_alive_bound_and_the_round_goes_on() {
    // Pings every second, answered within a second; a phase deadline of ten minutes that the
    // test never waits for.
    let mut fed = Federation::start(Options {
        rounds: 1,
        min_clients: 10,
        phase_ms: Some(600_000),
        masked_input_ms: 600_000,
        selection_ms: 600_000,
        edge: vec!["keepalive_interval_ms = 1000".into(), "keepalive_timeout_ms = 1000".into()],
        ..Options::default()
    });
    for i in 1..=9 {
        fed.spawn_client(i, &[]);
    }
    let proxy = common::BlackHoleProxy::start(&fed.addr);
    fed.client_addr = proxy.addr.clone();
    fed.spawn_client(10, &[]);
    // Once the round has started (all ten checked in and were selected), client 10's network
    // goes silent without closing anything.
    let end = Instant::now() + LONG;
    while fed.audit_entries("round_started").is_empty() {
        assert!(Instant::now() < end, "the round never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.freeze();
    for i in 1..=9 {
        let p = fed.client(i);
        assert!(p.wait_exit(LONG), "{} failed:\n{}", p.name, p.output());
    }
    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 1, "the round completed without client 10");
    assert_eq!(completed[0]["detail"]["participants"], 9, "{completed:?}");
    fed.client(10).kill();
}

/// A raw HTTP/2 connection over mutual TLS with certificate `i`, to see what the server sends:
/// the handle to start calls and the connection's task.
async fn raw_h2(
    fed: &Federation,
    i: usize,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fed.pki().join("ca.pem")).unwrap()).unwrap();
    let (cert, key) = fed.cert(i);
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&fed.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

/// Starts a call of the health service's `method` with an empty request; its response body.
async fn start_health(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
) -> Result<h2::RecvStream, h2::Error> {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost/grpc.health.v1.Health/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await?;
    let (response, mut body) = ready.send_request(request, false)?;
    // One gRPC message: uncompressed, zero bytes long (an empty HealthCheckRequest).
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    let response = response.await?;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The first answer: a health check's only message, a watch's first.
    let first = body.data().await.expect("an answer")?;
    let _ = body.flow_control().release_capacity(first.len());
    Ok(body)
}

/// One health check on the connection, read to its end.
async fn check_health(send: &h2::client::SendRequest<Bytes>) -> Result<(), h2::Error> {
    let mut body = start_health(send, "Check").await?;
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk?.len());
    }
    let trailers = body.trailers().await?.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    Ok(())
}

/// The error a new call on the connection gets, if the server has sent it away.
async fn sent_away(send: &mut h2::client::SendRequest<Bytes>) -> Option<h2::Error> {
    futures::future::poll_fn(|cx| send.poll_ready(cx)).await.err()
}

/// Whether `e` is the server's GOAWAY with `NO_ERROR` (a graceful close, not a cut).
fn is_graceful_goaway(e: &h2::Error) -> bool {
    e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
}

#[test]
fn an_idle_connection_is_sent_goaway_and_one_with_a_call_in_flight_is_kept() {
    const IDLE: Duration = Duration::from_secs(1);
    let fed = Federation::start(Options {
        rounds: 1,
        edge: vec![format!("idle_timeout_ms = {}", IDLE.as_millis())],
        ..Options::default()
    });
    let rt = runtime();
    rt.block_on(async {
        // One call, then nothing: the server sends the connection away after the timeout.
        let (mut send, conn) = raw_h2(&fed, 11).await;
        check_health(&send).await.unwrap();
        let idle_from = Instant::now();
        let ended = tokio::time::timeout(LONG, conn).await.expect("the idle connection closed");
        let after = idle_from.elapsed();
        println!("idle connection closed after {after:?} ({ended:?})");
        let e = sent_away(&mut send).await.expect("a new call is refused");
        assert!(is_graceful_goaway(&e), "closed by GOAWAY(NO_ERROR), not cut: {e:?}");
        // Timed from the client's side, which sees the call end a moment after the server does.
        let slack = Duration::from_millis(50);
        assert!(after + slack >= IDLE, "not before the idle timeout: {after:?}");
        assert!(after < IDLE + Duration::from_secs(10), "soon after the idle timeout: {after:?}");

        // A call in flight (a health watch stays open) keeps the connection however long.
        let (mut send, conn) = raw_h2(&fed, 11).await;
        let watch = start_health(&send, "Watch").await.unwrap();
        tokio::time::sleep(IDLE * 4).await;
        assert!(!conn.is_finished(), "a connection with a call in flight is not idle");
        assert!(sent_away(&mut send).await.is_none(), "and not sent away");
        check_health(&send).await.expect("it still serves new calls");
        // Once its last call ends, it is idle again and sent away.
        drop(watch);
        let ended_from = Instant::now();
        tokio::time::timeout(LONG, conn).await.expect("closed once idle").unwrap().ok();
        let after = ended_from.elapsed();
        println!("connection closed {after:?} after its last call ended");
        assert!(after + slack >= IDLE && after < IDLE + Duration::from_secs(10), "{after:?}");
        let e = sent_away(&mut send).await.expect("a new call is refused");
        assert!(is_graceful_goaway(&e), "{e:?}");
    });
}

#[test]
fn an_old_connection_is_sent_goaway_its_calls_finish_within_the_grace_and_rounds_go_on() {
    const AGE: Duration = Duration::from_secs(3);
    const GRACE: Duration = Duration::from_secs(4);
    let mut fed = Federation::start(Options {
        rounds: 1,
        edge: vec![
            format!("max_connection_age_ms = {}", AGE.as_millis()),
            format!("max_connection_age_grace_ms = {}", GRACE.as_millis()),
        ],
        ..Options::default()
    });
    let rt = runtime();
    rt.block_on(async {
        // Two connections with a call in flight on each.
        let (mut kept, kept_conn) = raw_h2(&fed, 11).await;
        let kept_watch = start_health(&kept, "Watch").await.unwrap();
        let (mut ended, ended_conn) = raw_h2(&fed, 12).await;
        let ended_watch = start_health(&ended, "Watch").await.unwrap();
        let opened = Instant::now();
        // GOAWAY comes at the age, ±10 %: polled every 20 ms, for at most two ages.
        let mut away = None;
        while away.is_none() && opened.elapsed() < AGE * 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            away = sent_away(&mut ended).await;
        }
        let at = opened.elapsed();
        println!("GOAWAY after {at:?}");
        let e = away.expect("the old connection is sent away");
        assert!(is_graceful_goaway(&e), "{e:?}");
        assert!(at >= AGE.mul_f64(0.9) - Duration::from_millis(200), "not before its age: {at:?}");
        assert!(at <= AGE.mul_f64(1.1) + Duration::from_secs(1), "at its age: {at:?}");
        // Its call in flight goes on; once it ends, the connection closes at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!ended_conn.is_finished(), "a call in flight goes on after GOAWAY");
        drop(ended_watch);
        let closing = Instant::now();
        tokio::time::timeout(LONG, ended_conn).await.expect("closed").unwrap().ok();
        println!("closed {:?} after its last call ended", closing.elapsed());
        assert!(closing.elapsed() < Duration::from_secs(2), "{:?}", closing.elapsed());
        // A call held beyond the grace period is cut with its connection.
        while sent_away(&mut kept).await.is_none() {
            assert!(opened.elapsed() < AGE * 2, "the other connection is sent away too");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut kept_watch = kept_watch;
        let cut = tokio::time::timeout(LONG, async {
            while let Some(Ok(_)) = kept_watch.data().await {}
            opened.elapsed()
        })
        .await
        .expect("the held call ends");
        println!("the held call was cut after {cut:?}");
        assert!(cut >= AGE.mul_f64(0.9) + GRACE - Duration::from_millis(200), "{cut:?}");
        assert!(cut <= AGE.mul_f64(1.1) + GRACE + Duration::from_secs(2), "{cut:?}");
        let _ = tokio::time::timeout(LONG, kept_conn).await.expect("and its connection closed");
    });
    // Clients whose connections are sent away every few seconds still complete the round.
    run_honest_round(&mut fed, 10);
}
