//! Per-client rate limits with real processes over mutual TLS on loopback: a certified client
//! that calls CheckIn a thousand times a second, or a selected one that downloads the model
//! again and again, is refused with `RESOURCE_EXHAUSTED` and a `retry-after-ms` beyond its
//! bucket, while the honest round completes and no honest client is ever refused (the harness
//! checks that after every federation's clients exit).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Federation, Options, TASK_ID};
use fedsec_client::tls::client_tls;
use fedsec_proto::v1;
use fedsec_proto::v1::federation_client::FederationClient;
use fedsec_wire::Wire;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The longest any single wait of these tests may take on a loaded machine.
const LONG: Duration = Duration::from_secs(300);

/// The coordinator's check-in limit in this test: a token every 50 ms, bursts of 100.
const CHECK_IN_PER_SECOND: u64 = 20;
const CHECK_IN_BURST: u64 = 100;

fn runtime() -> tokio::runtime::Runtime {
    fedsec_client::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn text(path: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap()
}

/// A raw Federation client with certificate `i` of the federation's PKI.
fn federation(fed: &Federation, i: usize) -> FederationClient<Channel> {
    let (cert, key) = fed.cert(i);
    let tls =
        client_tls(&text(fed.pki().join("ca.pem")), &text(cert), &text(key), "localhost").unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", fed.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    FederationClient::new(channel)
}

/// What a flood of check-ins got back.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicUsize,
    answered: AtomicUsize,
    exhausted: AtomicUsize,
    other: AtomicUsize,
    /// One `RESOURCE_EXHAUSTED` status, to look at.
    sample: std::sync::Mutex<Option<Status>>,
}

/// Calls CheckIn once a millisecond (at most 64 calls in flight) for at least `min` and until
/// `stop`, at most `max_calls` times.
async fn flood_check_ins(
    client: FederationClient<Channel>,
    min: Duration,
    max_calls: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Duration {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut every = tokio::time::interval(Duration::from_millis(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    for _ in 0..max_calls {
        if started.elapsed() >= min && stop.load(Ordering::SeqCst) {
            break;
        }
        every.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else { continue };
        let (mut client, tally) = (client.clone(), tally.clone());
        tally.sent.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let request = v1::CheckInRequest {
                task_id: hex::decode(TASK_ID).unwrap(),
                last_seen_checkpoint_version: 0,
                ..Default::default()
            };
            match client.check_in(request).await {
                Ok(_) => tally.answered.fetch_add(1, Ordering::SeqCst),
                Err(s) if s.code() == Code::ResourceExhausted => {
                    tally.sample.lock().unwrap().get_or_insert(s);
                    tally.exhausted.fetch_add(1, Ordering::SeqCst)
                }
                Err(_) => tally.other.fetch_add(1, Ordering::SeqCst),
            };
            drop(permit);
        });
    }
    let elapsed = started.elapsed();
    // Every call has come back.
    let _all = in_flight.acquire_many(64).await.unwrap();
    elapsed
}

#[test]
fn a_client_calling_check_in_a_thousand_times_a_second_is_limited_and_the_round_completes() {
    let mut fed = Federation::start(Options {
        rounds: 1,
        // The defaults, written out: the test's bound on what passes depends on them.
        edge: vec![
            "[edge.rate_limits]".into(),
            format!("check_in_per_second = {CHECK_IN_PER_SECOND}"),
            format!("check_in_burst = {CHECK_IN_BURST}"),
        ],
        ..Options::default()
    });
    let rt = runtime();
    // Channels connect lazily, on the runtime's reactor.
    let _entered = rt.enter();
    for i in 1..=10 {
        fed.spawn_client(i, &[]);
    }
    // Certificate 11 floods once the round runs (before, it could be selected in it).
    let end = Instant::now() + LONG;
    while fed.audit_entries("round_started").is_empty() {
        assert!(Instant::now() < end, "the round never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let flood = rt.spawn(flood_check_ins(
        federation(&fed, 11),
        Duration::from_secs(3),
        // Bounded: a minute at a thousand a second.
        60_000,
        stop.clone(),
        tally.clone(),
    ));
    fed.wait_clients(LONG);
    stop.store(true, Ordering::SeqCst);
    let elapsed = rt.block_on(flood).unwrap();

    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 1, "the round completed");
    assert_eq!(completed[0]["detail"]["participants"], 10, "{completed:?}");

    let sent = tally.sent.load(Ordering::SeqCst);
    let answered = tally.answered.load(Ordering::SeqCst);
    let exhausted = tally.exhausted.load(Ordering::SeqCst);
    let other = tally.other.load(Ordering::SeqCst);
    let rate = sent as f64 / elapsed.as_secs_f64();
    println!(
        "flood: {sent} check-ins in {:.1} s ({rate:.0}/s): {answered} answered, {exhausted} \
         RESOURCE_EXHAUSTED, {other} other",
        elapsed.as_secs_f64()
    );
    assert_eq!(other, 0, "every call was answered or refused for its rate");
    // The bucket lets through a burst and then its rate, and no more.
    let allowed = CHECK_IN_BURST as f64 + CHECK_IN_PER_SECOND as f64 * elapsed.as_secs_f64();
    assert!(
        answered as f64 <= allowed + CHECK_IN_PER_SECOND as f64,
        "{answered} answered, {allowed:.0} allowed"
    );
    assert!(exhausted > sent / 2, "most calls were refused: {exhausted} of {sent}");
    let sample = tally.sample.lock().unwrap().clone().expect("a refusal");
    assert!(sample.message().contains("rate limit of check_in"), "{}", sample.message());
    assert!(sample.message().contains("20 calls per second with bursts of 100"), "{sample:?}");
    let retry_ms: u64 = sample
        .metadata()
        .get(fedsec_proto::RETRY_AFTER_MS_METADATA)
        .expect("a retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=50).contains(&retry_ms), "a token is free within 50 ms: {retry_ms}");

    // The operator is told, naming the client; no honest client is named (wait_clients).
    let line = fed.coordinator.wait_for("rate limit:", 1, LONG);
    assert!(line.contains(&fed.client_id(11)), "{line}");
    assert!(line.contains("check_in"), "{line}");
    let lines = fed.rate_limit_lines();
    assert!(lines.iter().all(|l| l.contains(&fed.client_id(11))), "{lines:#?}");
}

/// Checks in until selected; returns the plan.
async fn selected(mut fed: FederationClient<Channel>) -> Result<v1::RoundPlan, Status> {
    // Bounded: selection waits at most a minute, a retry comes at most every 50 ms.
    for _ in 0..10_000 {
        let request = v1::CheckInRequest {
            task_id: hex::decode(TASK_ID).unwrap(),
            last_seen_checkpoint_version: 0,
            ..Default::default()
        };
        match fed.check_in(request).await?.into_inner().outcome {
            Some(v1::check_in_response::Outcome::Plan(p)) => return Ok(p),
            Some(v1::check_in_response::Outcome::Retry(r)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(r.after_ms).max(50))).await;
            }
            other => panic!("the task ended before the test's client was selected: {other:?}"),
        }
    }
    panic!("the test's client was never selected");
}

/// Downloads the model of `round` once, to the end; its size in bytes.
async fn download(
    fed: &mut FederationClient<Channel>,
    round: &v1::RoundRef,
) -> Result<usize, Status> {
    let request = v1::DownloadModelRequest { round: Some(round.clone()) };
    let mut stream = fed.download_model(request).await?.into_inner();
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await? {
        if let Some(v1::model_chunk::Part::Data(d)) = chunk.part {
            bytes += d.len();
        }
    }
    Ok(bytes)
}

#[test]
fn a_selected_client_downloading_the_model_again_and_again_is_limited_by_its_bytes() {
    // Ten are selected: nine client processes and this test (certificate 10), which downloads
    // the model a hundred times and never advertises: the round goes on with the nine.
    // One KiB of model a second, eight at once; the harness's model is under one KiB.
    let mut fed = Federation::start(Options {
        clients: 10,
        rounds: 1,
        selection_ms: 60_000,
        phase_ms: Some(10_000),
        edge: vec![
            "[edge.rate_limits]".into(),
            "model_bytes_per_second = 1024".into(),
            "model_bytes_burst = 8192".into(),
        ],
        ..Options::default()
    });
    let rt = runtime();
    let _entered = rt.enter();
    let mut me = federation(&fed, 10);
    let plan = rt.spawn(selected(me.clone()));
    for i in 1..=9 {
        fed.spawn_client(i, &[]);
    }
    let (answered, refusals, elapsed) = rt.block_on(async {
        let plan = match tokio::time::timeout(LONG, plan).await {
            Ok(Ok(Ok(p))) => p,
            other => panic!("the test's client was not selected: {other:?}"),
        };
        let a = fedsec_wire::Assignment::from_wire(&plan).unwrap();
        let round = a.key().to_wire();
        let started = Instant::now();
        let (mut answered, mut refusals) = (0usize, Vec::new());
        for _ in 0..100 {
            match download(&mut me, &round).await {
                Ok(bytes) => {
                    assert!(bytes > 0 && bytes <= 1024, "the harness's model: {bytes} bytes");
                    answered += 1;
                }
                Err(s) => refusals.push(s),
            }
        }
        (answered, refusals, started.elapsed())
    });
    println!(
        "downloads: {answered} of 100 served, {} refused, in {:.2} s",
        refusals.len(),
        elapsed.as_secs_f64()
    );
    // Eight at once, then one a second.
    assert!(answered >= 8, "the burst is served: {answered}");
    assert!(answered as f64 <= 8.0 + elapsed.as_secs_f64() + 1.0, "{answered} served");
    for s in &refusals {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("rate limit of model_bytes"), "{}", s.message());
        let retry_ms: u64 = s
            .metadata()
            .get(fedsec_proto::RETRY_AFTER_MS_METADATA)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1000).contains(&retry_ms), "a KiB is free within a second: {retry_ms}");
    }
    fed.wait_clients(LONG);
    let completed = fed.audit_entries("round_completed");
    assert_eq!(completed.len(), 1, "the round completed");
    assert_eq!(completed[0]["detail"]["participants"], 9, "{completed:?}");
    let line = fed.coordinator.wait_for("rate limit:", 1, LONG);
    assert!(line.contains(&fed.client_id(10)) && line.contains("model_bytes"), "{line}");
}
