//! Serving admitted connections over HTTP/2, each under the edge's connection limits.
//!
//! Each connection is served on its own task, which ends it in one of four ways:
//!
//! - **Idle**: no call in flight for [`ConnectionLimits::idle_timeout`] (the calls are counted
//!   by the edge layer in the connection's [`ConnControl`]). The server sends GOAWAY
//!   (`NO_ERROR`) and the connection closes once that is acknowledged (or after the keep-alive
//!   timeout); a client that wants to call again opens a new connection, as gRPC clients do
//!   after GOAWAY.
//! - **Age**: the connection is older than [`ConnectionLimits::max_age`], spread by ±10 % so
//!   that connections opened together do not all come back at the same moment. GOAWAY; the
//!   calls in flight may finish within [`ConnectionLimits::grace`], then the connection is cut.
//! - **Denied**: its client was put on the deny-list ([`ConnControl::close`]). The connection
//!   is cut at once and its calls end.
//! - **Shutdown**: the server stops. Every connection is sent GOAWAY and cut after the grace
//!   period; [`serve_incoming`] returns once all have closed.
//!
//! tonic's own server loop cannot do this: it has no idle timeout, and when a grace period is
//! set it sends no GOAWAY at the connection's age but cuts the connection at age plus grace.
//! The HTTP/2 settings are the ones it would set: keep-alive pings with a timeout (a peer that
//! stops answering is closed), the cap on concurrent streams, HTTP/2 only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use super::EdgeConfig;
use crate::connections::ConnControl;
use crate::tls::PeerInfo;

/// How long and how connections are served: the `[edge]` values that apply after admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The server's HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Calls served at once on one connection.
    pub max_concurrent_streams: u32,
    /// GOAWAY after this long with no call in flight (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// GOAWAY at this age, ±10 % (`None`: never).
    pub max_age: Option<Duration>,
    /// How long the calls in flight may take after GOAWAY before the connection is cut.
    pub grace: Duration,
}

impl ConnectionLimits {
    /// The limits `edge` describes.
    pub fn new(edge: &EdgeConfig) -> Self {
        ConnectionLimits {
            keepalive_interval: edge.keepalive_interval(),
            keepalive_timeout: edge.keepalive_timeout(),
            max_concurrent_streams: edge.max_concurrent_streams,
            idle_timeout: edge.idle_timeout(),
            max_age: (edge.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(edge.max_connection_age_ms)),
            grace: Duration::from_millis(edge.max_connection_age_grace_ms),
        }
    }

    fn http2(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .max_concurrent_streams(self.max_concurrent_streams);
        builder
    }
}

/// Serves each connection of `incoming` with `service` under `limits` until `shutdown`
/// resolves, then sends every open connection GOAWAY and returns once all have closed (each
/// is cut after the grace period). Each request carries its connection's [`PeerInfo`].
///
/// Must run inside a Tokio runtime: each connection is served on a task of its own.
pub async fn serve_incoming<I, IO, E, S, B>(
    incoming: I,
    service: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, E>>,
    E: std::fmt::Display,
    IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = PeerInfo> + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http2 = limits.http2();
    let (stop, stopped) = watch::channel(false);
    {
        // Dropped when the loop ends: a listener stops accepting at once.
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let io = tokio::select! {
                () = &mut shutdown => break,
                io = incoming.next() => io,
            };
            let io = match io {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(reason = %e, "a connection failed before it was served");
                    continue;
                }
                None => break,
            };
            let task = serve_connection(io, service.clone(), &http2, &limits, stopped.clone());
            tokio::spawn(task);
        }
    }
    let _ = stop.send(true);
    drop(stopped);
    // Every connection task holds a receiver until it ends.
    stop.closed().await;
}

/// Why a connection is sent GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GoAway {
    Idle,
    Age,
    Shutdown,
}

/// Serves one connection until it closes; see the [module docs](self).
fn serve_connection<IO, S, B>(
    io: IO,
    service: S,
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    limits: &ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = PeerInfo> + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = io.connect_info();
    let control = peer.control.clone();
    let remote = peer.remote_addr;
    let handler = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let mut req = req.map(tonic::body::Body::new);
        req.extensions_mut().insert(peer.clone());
        service.clone().oneshot(req)
    });
    let http2 = http2.clone();
    let limits = limits.clone();
    let born = Instant::now();
    // Spread so that connections opened together are not all sent away together.
    let age_at = limits.max_age.map(|age| born + age.mul_f64(rand::random_range(0.9..=1.1)));
    async move {
        let mut conn = pin!(http2.serve_connection(TokioIo::new(io), handler));
        // Set once GOAWAY is sent: the connection is cut at this instant if still open.
        let mut cut_at: Option<Instant> = None;
        let mut timer = pin!(tokio::time::sleep_until(born));
        loop {
            timer.as_mut().reset(next_check(cut_at, age_at, control.as_deref(), &limits));
            let reason = tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %remote, reason = %e, "connection ended with an error");
                    }
                    return;
                }
                () = denied(control.as_deref()) => {
                    tracing::debug!(peer = %remote, "closing the connection of a denied client");
                    return;
                }
                changed = stopped.changed(), if cut_at.is_none() => {
                    // An error means the server is gone: stop as well.
                    let _ = changed;
                    GoAway::Shutdown
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    if cut_at.is_some_and(|at| at <= now) {
                        tracing::debug!(peer = %remote, "cutting a connection still open after its grace period");
                        return;
                    }
                    if cut_at.is_some() {
                        continue;
                    }
                    if age_at.is_some_and(|at| at <= now) {
                        GoAway::Age
                    } else if idle_since(control.as_deref(), &limits).is_some_and(|at| at <= now) {
                        GoAway::Idle
                    } else {
                        continue;
                    }
                }
            };
            tracing::debug!(peer = %remote, ?reason, "sending GOAWAY");
            conn.as_mut().graceful_shutdown();
            // An idle connection has no call to wait for: only GOAWAY's ping round trip.
            let wait = match reason {
                GoAway::Idle => limits.keepalive_timeout.min(limits.grace),
                GoAway::Age | GoAway::Shutdown => limits.grace,
            };
            cut_at = Some(Instant::now() + wait);
        }
    }
}

/// When the connection becomes idle for the timeout (`None`: a call is in flight, or there is
/// no timeout or no control).
fn idle_since(control: Option<&ConnControl>, limits: &ConnectionLimits) -> Option<Instant> {
    control.zip(limits.idle_timeout).and_then(|(c, timeout)| c.idle_deadline(timeout))
}

/// When to look at the connection next: its cut, else the earlier of its age and its idle
/// deadline (while a call is in flight, one idle timeout from now).
fn next_check(
    cut_at: Option<Instant>,
    age_at: Option<Instant>,
    control: Option<&ConnControl>,
    limits: &ConnectionLimits,
) -> Instant {
    if let Some(at) = cut_at {
        return at;
    }
    let idle = match (control, limits.idle_timeout) {
        (Some(_), Some(timeout)) => {
            Some(idle_since(control, limits).unwrap_or_else(|| Instant::now() + timeout))
        }
        _ => None,
    };
    // Nothing to wait for: look again in a day (the select's other branches end it sooner).
    let far = Instant::now() + Duration::from_secs(86_400);
    [age_at, idle].into_iter().flatten().min().unwrap_or(far)
}

/// Resolves once the connection's client is denied (never without a control).
async fn denied(control: Option<&ConnControl>) {
    let Some(control) = control else { return std::future::pending().await };
    std::future::poll_fn(|cx| {
        control.register(cx.waker());
        if control.is_closed() { Poll::Ready(()) } else { Poll::Pending }
    })
    .await
}
