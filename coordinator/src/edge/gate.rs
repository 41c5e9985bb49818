//! The tower layer in front of the coordinator's services: identity first, then bounded bodies.
//!
//! For each request, from its headers alone:
//!
//! * a call of `fedsec.v1.Federation` or `fedsec.v1.Admin` needs a client certificate whose id
//!   is not on the deny-list ([`crate::auth::check_peer`]): otherwise it is answered
//!   `UNAUTHENTICATED` or `PERMISSION_DENIED` at once, and its body is never read (the stream is
//!   reset, so the peer stops sending). On a plain-TCP (`--insecure`) connection the id claimed
//!   in the `x-fedsec-client-id` header is checked against the deny-list the same way;
//! * health checking and reflection are open to every peer that completed the handshake — which
//!   with mutual TLS means every holder of a federation certificate, denied ones included — so
//!   that probes and tools work with any certificate of the federation and reveal nothing but
//!   the services' names and status;
//! * a call of an identified client takes a token of its method's class ([`RateLimits`]):
//!   over the rate it is answered `RESOURCE_EXHAUSTED` with `retry-after-ms`, its body unread;
//!   the further messages of a stream are charged as their length prefixes arrive;
//! * every body is wrapped in a [`LimitedBody`] with its method's limit ([`SizeLimits`]).
//!
//! The layer also counts the calls in flight on the connection ([`ConnControl`]), which is what
//! the idle timeout measures.
//!
//! [`ConnControl`]: crate::connections::ConnControl

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;

use fedsec_crypto::ClientId;

use super::limits::{LimitedBody, Meter, SharedLimits, SizeLimits};
use super::rate::{RateClass, RateLimits};
use crate::metrics::{EdgeMetrics, Refusal};
use crate::revocation::DenyList;
use crate::runtime::AuthMode;
use crate::service::INSECURE_CLIENT_ID_HEADER;
use crate::tls::PeerInfo;

/// Paths of the services that need an identity.
const GATED: [&str; 2] = ["/fedsec.v1.Federation/", "/fedsec.v1.Admin/"];

/// The layer; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    deny: DenyList,
    limits: SharedLimits,
    auth: AuthMode,
    rate: Option<Arc<RateLimits>>,
    metrics: Option<EdgeMetrics>,
}

impl EdgeLayer {
    /// A layer checking identities against `deny` (as `auth` says clients are identified) and
    /// message sizes against `limits`.
    pub fn new(deny: DenyList, limits: SharedLimits, auth: AuthMode) -> Self {
        EdgeLayer { deny, limits, auth, rate: None, metrics: None }
    }

    /// Also counts refusals and body bytes in `metrics`.
    pub fn with_metrics(mut self, metrics: EdgeMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also limits the rate of each identified client's calls (mutual TLS only: see
    /// [`crate::edge::rate`]).
    pub fn with_rate_limits(mut self, rate: Arc<RateLimits>) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Whether a request may reach its service: the status to answer instead if not, and the
    /// meter of its further messages if it is rate limited.
    fn admit(&self, req: &Request<Body>) -> Result<Option<Meter>, Status> {
        let path = req.uri().path();
        if !GATED.iter().any(|p| path.starts_with(p)) {
            return Ok(None);
        }
        match self.auth {
            AuthMode::MutualTls => {
                let peer = crate::auth::check_peer(req.extensions().get::<PeerInfo>(), &self.deny)?;
                if let (Some(rate), Some(class)) = (&self.rate, RateClass::of_path(path)) {
                    return self.charge(rate, peer.id, class).map(Some);
                }
            }
            AuthMode::InsecureLoopback => {
                // The handler refuses a missing or malformed id; a denied one stops here.
                let claimed = req
                    .headers()
                    .get(INSECURE_CLIENT_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| hex::decode(v).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                if let Some(id) = claimed {
                    crate::auth::denied(&ClientId(id), &self.deny)?;
                }
            }
        }
        Ok(None)
    }

    /// Takes a token of `class` for `client`: the meter of the call's further messages.
    fn charge(
        &self,
        rate: &Arc<RateLimits>,
        client: ClientId,
        class: RateClass,
    ) -> Result<Meter, Status> {
        rate.check(&client, class)?;
        Ok(Meter::new(rate.clone(), client, class))
    }

    /// The limits now (for tests and diagnostics).
    pub fn limits(&self) -> SizeLimits {
        self.limits.get()
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService { inner, edge: self.clone() }
    }
}

/// The service of [`EdgeLayer`].
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    edge: EdgeLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<Request<Body>> for EdgeService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let meter = match self.edge.admit(&req) {
            Ok(meter) => meter,
            Err(status) => {
                tracing::debug!(path = %req.uri().path(), code = ?status.code(), "refused at the edge");
                if let Some(m) = &self.edge.metrics {
                    m.refused(Refusal::of_edge_status(status.code()));
                }
                // The body is dropped unread: the stream is reset and the peer stops sending.
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let call = req.extensions().get::<PeerInfo>().and_then(|p| p.control.as_ref());
        let call = call.map(|c| c.call_started());
        let path = req.uri().path();
        let limit = self.edge.limits.get().of_path(path);
        let gated = GATED.iter().any(|p| path.starts_with(p));
        let method: Arc<str> = Arc::from(path);
        let metrics = self.edge.metrics.clone();
        let counted = metrics.clone();
        let req = req.map(|body| {
            Body::new(LimitedBody::new(body, method, limit).metered(meter).counted(counted))
        });
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(m) = &metrics
                && gated
                && let Some(why) = Status::from_header_map(response.headers())
                    .and_then(|s| Refusal::of_service_status(s.code()))
            {
                m.refused(why);
            }
            // A streamed response (the model download) is a call in flight until it ends.
            Ok(response.map(|body| {
                if call.is_none() && metrics.is_none() {
                    return body;
                }
                Body::new(InFlight { body, _call: call, metrics })
            }))
        })
    }
}

/// A response body that holds its call's guard until it is dropped, and counts its bytes.
struct InFlight {
    body: Body,
    _call: Option<crate::connections::CallGuard>,
    metrics: Option<EdgeMetrics>,
}

impl http_body::Body for InFlight {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let (Some(m), Poll::Ready(Some(Ok(frame)))) = (&self.metrics, &polled)
            && let Some(data) = frame.data_ref()
        {
            m.bytes_out(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::ConnControl;
    use crate::tls::PeerIdentity;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tonic::Code;
    use tower::{Layer, Service};

    /// A service that reads the whole body and counts the bytes it read.
    #[derive(Clone)]
    struct Reader(Arc<AtomicUsize>);

    impl Service<Request<Body>> for Reader {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Response<Body>, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let read = self.0.clone();
            Box::pin(async move {
                let mut body = req.into_body();
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => {
                            read.fetch_add(f.data_ref().map_or(0, |d| d.len()), Ordering::SeqCst);
                        }
                        Err(status) => return Ok(status.into_http()),
                    }
                }
                let answer = http_body_util::Full::new(bytes::Bytes::from_static(b"answer"));
                Ok(Response::new(Body::new(answer)))
            })
        }
    }

    fn grpc_message(len: usize) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.resize(5 + len, 1);
        v
    }

    fn request(path: &str, client: Option<ClientId>, body: Vec<u8>) -> Request<Body> {
        let mut req = Request::post(path)
            .body(Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
            .unwrap();
        let client = client.map(|id| PeerIdentity { id, chain: vec![vec![1]] });
        let peer = PeerInfo {
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            client,
            control: Some(ConnControl::new()),
        };
        req.extensions_mut().insert(peer);
        req
    }

    fn status_of(resp: &Response<Body>) -> Code {
        Status::from_header_map(resp.headers()).map_or(Code::Ok, |s| s.code())
    }

    #[tokio::test]
    async fn identity_is_checked_before_the_body_is_read_and_sizes_by_method() {
        let denied = ClientId([9; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, format!("{}\n", denied.to_hex())).unwrap();
        let deny = DenyList::load(&path).unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let mut svc = EdgeLayer::new(deny, SharedLimits::default(), AuthMode::MutualTls)
            .layer(Reader(read.clone()));
        let check_in = "/fedsec.v1.Federation/CheckIn";

        // No identity, a denied identity: refused, and not one byte read.
        let r = svc.call(request(check_in, None, grpc_message(1 << 20))).await.unwrap();
        assert_eq!(status_of(&r), Code::Unauthenticated);
        let r = svc.call(request(check_in, Some(denied), grpc_message(1 << 20))).await.unwrap();
        assert_eq!(status_of(&r), Code::PermissionDenied);
        let r = svc.call(request("/fedsec.v1.Admin/ReloadDenyList", Some(denied), vec![])).await;
        assert_eq!(status_of(&r.unwrap()), Code::PermissionDenied);
        assert_eq!(read.load(Ordering::SeqCst), 0, "no body was read");

        // Health is open to a denied peer; its messages are small ones.
        let health = "/grpc.health.v1.Health/Check";
        let r = svc.call(request(health, Some(denied), grpc_message(10))).await.unwrap();
        assert_eq!(status_of(&r), Code::Ok);

        // An accepted client: a small check-in passes, a 1 MiB one is refused at its prefix.
        let ok = Some(ClientId([1; 32]));
        let r = svc.call(request(check_in, ok, grpc_message(100))).await.unwrap();
        assert_eq!(status_of(&r), Code::Ok);
        let before = read.load(Ordering::SeqCst);
        let r = svc.call(request(check_in, ok, grpc_message(1 << 20))).await.unwrap();
        let s = Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains(check_in) && s.message().contains("65536"), "{}", s.message());
        assert_eq!(read.load(Ordering::SeqCst), before, "the refused message was not passed on");
        // The same size is within the limit of an upload chunk of 2^18 words.
        let mut limits = SizeLimits::for_tasks([]);
        limits.upload_chunk = (4 << 18) + 1024;
        let shared = SharedLimits::default();
        shared.set(limits);
        let mut svc = EdgeLayer::new(DenyList::empty(), shared, AuthMode::MutualTls)
            .layer(Reader(read.clone()));
        let upload = "/fedsec.v1.Federation/UploadMaskedInput";
        let r = svc.call(request(upload, ok, grpc_message(1 << 20))).await.unwrap();
        assert_eq!(status_of(&r), Code::Ok);
    }

    #[tokio::test]
    async fn rates_are_limited_per_client_and_class_before_the_body_is_read() {
        let config = crate::edge::RateLimitConfig {
            check_in_per_second: 10,
            check_in_burst: 3,
            protocol_per_second: 10,
            protocol_burst: 4,
            ..Default::default()
        };
        let rate = Arc::new(RateLimits::new(&config).unwrap());
        let read = Arc::new(AtomicUsize::new(0));
        let mut svc =
            EdgeLayer::new(DenyList::empty(), SharedLimits::default(), AuthMode::MutualTls)
                .with_rate_limits(rate.clone())
                .layer(Reader(read.clone()));
        let check_in = "/fedsec.v1.Federation/CheckIn";
        let (a, b) = (Some(ClientId([1; 32])), Some(ClientId([2; 32])));

        // A burst passes; the next call is refused, unread, with the wait in its metadata.
        for _ in 0..3 {
            let r = svc.call(request(check_in, a, grpc_message(10))).await.unwrap();
            assert_eq!(status_of(&r), Code::Ok);
        }
        let before = read.load(Ordering::SeqCst);
        let r = svc.call(request(check_in, a, grpc_message(10))).await.unwrap();
        let s = Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("rate limit of check_in"), "{}", s.message());
        assert!(s.message().contains("10 calls per second with bursts of 3"), "{}", s.message());
        let retry: u64 =
            r.headers()[fedsec_proto::RETRY_AFTER_MS_METADATA].to_str().unwrap().parse().unwrap();
        assert!((1..=100).contains(&retry), "a token every 100 ms: {retry}");
        assert_eq!(read.load(Ordering::SeqCst), before, "the refused call was not read");
        // Another client has its own bucket; health is not limited.
        let r = svc.call(request(check_in, b, grpc_message(10))).await.unwrap();
        assert_eq!(status_of(&r), Code::Ok);
        let health = "/grpc.health.v1.Health/Check";
        for _ in 0..10 {
            let r = svc.call(request(health, a, grpc_message(10))).await.unwrap();
            assert_eq!(status_of(&r), Code::Ok);
        }
        // Tokens refill.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = svc.call(request(check_in, a, grpc_message(10))).await.unwrap();
        assert_eq!(status_of(&r), Code::Ok);
        assert_eq!(rate.refused(RateClass::CheckIn), 1);

        // An upload pays per chunk: of six chunks in one call, the fifth is refused.
        let upload = "/fedsec.v1.Federation/UploadMaskedInput";
        let chunks: Vec<u8> = (0..6).flat_map(|_| grpc_message(10)).collect();
        let r = svc.call(request(upload, a, chunks)).await.unwrap();
        let s = Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("rate limit of protocol"), "{}", s.message());
        assert_eq!(rate.refused(RateClass::Protocol), 1);
    }

    #[tokio::test]
    async fn a_call_is_in_flight_until_its_response_body_is_dropped() {
        let mut svc =
            EdgeLayer::new(DenyList::empty(), SharedLimits::default(), AuthMode::MutualTls)
                .layer(Reader(Arc::new(AtomicUsize::new(0))));
        let req = request("/grpc.health.v1.Health/Check", None, vec![]);
        let control = req.extensions().get::<PeerInfo>().unwrap().control.clone().unwrap();
        let response = svc.call(req).await.unwrap();
        assert_eq!(control.idle_deadline(std::time::Duration::from_secs(1)), None);
        drop(response);
        assert!(control.idle_deadline(std::time::Duration::from_secs(1)).is_some());
    }
}
