//! Which authenticated clients hold an open connection, and who just lost their last one.
//!
//! A client whose process dies, or whose network goes away, closes its TCP connection (the
//! operating system does it for a dead process). The coordinator treats a client that has no
//! open connection left, and opens none within the grace period, as gone: the running round
//! stops waiting for it ([`crate::engine::Engine::client_gone`]), so a phase whose other
//! clients have all answered closes at once instead of at its deadline. The grace period lets
//! a client whose connection was merely cut reconnect and resend first; a client that comes
//! back later is still heard while its phase is open.
//!
//! A client reported gone that connects again is reported back, and the round takes it again
//! (its messages are heard while its phase is open). The reports go out in the order they
//! happen, on one channel.
//!
//! Only mutual-TLS connections name a client; plain-TCP (`--insecure`) ones are not tracked,
//! and their dropouts are noticed at the phase deadline.
//!
//! The tracker also bounds connections: at most `max_total` open at once, at most
//! `max_per_client` per client ([`ConnectionRefused`]), and it can close every connection of
//! a client ([`Connections::close_client`]: a client put on the deny-list), through the
//! [`ConnControl`] each connection carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Duration;

use dashmap::DashMap;
use fedsec_crypto::ClientId;
use futures::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Open {
    /// Connections open now.
    count: usize,
    /// Connections ever opened: tells a reconnection within the grace period.
    opened: u64,
    /// The controls of the connections open now.
    controls: Vec<Arc<ConnControl>>,
    /// Reported gone, and not back since.
    gone: bool,
}

/// Why a connection was not admitted after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionRefused {
    /// The coordinator has its maximum of connections open.
    #[error("{limit} connections are open, the most the coordinator keeps")]
    Total { limit: usize },
    /// The client has its maximum of connections open.
    #[error("the client has {limit} connections open, the most one client may keep")]
    PerClient { limit: usize },
}

/// One connection's switch and activity: the edge layer counts its calls in flight, the
/// connection's IO closes it when switched off or idle.
#[derive(Debug)]
pub struct ConnControl {
    closed: AtomicBool,
    waker: AtomicWaker,
    in_flight: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born` of the last call's start or end.
    last_activity_ms: AtomicU64,
}

impl Default for ConnControl {
    fn default() -> Self {
        ConnControl {
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            in_flight: AtomicUsize::new(0),
            born: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }
    }
}

/// A call in flight on a connection; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnControl>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnControl {
    /// A fresh control (open, idle since now).
    pub fn new() -> Arc<Self> {
        Arc::new(ConnControl::default())
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_activity_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// A call starts on the connection.
    pub fn call_started(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        CallGuard(self.clone())
    }

    /// Closes the connection: its IO reads end of stream from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Registers the task to wake on [`close`](Self::close).
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// When the connection becomes idle for `timeout`: `None` while a call is in flight.
    pub fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::SeqCst));
        Some(self.born + last + timeout)
    }
}

/// What the tracker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The client has had no connection for the grace period.
    Gone(ClientId),
    /// A client reported gone opened a connection again.
    Back(ClientId),
}

/// The open connections of each client. See the [module docs](self).
#[derive(Debug)]
pub struct Connections {
    /// Each client's connections (a sharded map: an update takes one client's entry; the
    /// reports about a client are sent while its entry is held, so they keep its order).
    clients: DashMap<ClientId, Open>,
    /// Connections open now, of all clients.
    total: AtomicUsize,
    grace: Duration,
    max_total: usize,
    max_per_client: usize,
    events: mpsc::UnboundedSender<ConnectionEvent>,
}

/// Held by a connection while it is open; dropping it closes the connection's account.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    client: ClientId,
    control: Arc<ConnControl>,
}

impl ConnectionGuard {
    /// The connection's control.
    pub fn control(&self) -> &Arc<ConnControl> {
        &self.control
    }
}

impl Connections {
    /// A tracker that reports, on the returned channel, each client that has been without a
    /// connection for `grace`, and each such client that connects again.
    pub fn new(grace: Duration) -> (Arc<Connections>, mpsc::UnboundedReceiver<ConnectionEvent>) {
        Self::limited(grace, usize::MAX, usize::MAX)
    }

    /// [`new`](Self::new), keeping at most `max_total` connections open and `max_per_client`
    /// per client.
    pub fn limited(
        grace: Duration,
        max_total: usize,
        max_per_client: usize,
    ) -> (Arc<Connections>, mpsc::UnboundedReceiver<ConnectionEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let connections = Connections {
            clients: DashMap::new(),
            total: AtomicUsize::new(0),
            grace,
            max_total,
            max_per_client,
            events,
        };
        (Arc::new(connections), rx)
    }

    /// A connection of `client` opened, unless the client or the coordinator has its maximum
    /// of connections open.
    pub fn opened(
        self: &Arc<Self>,
        client: ClientId,
    ) -> Result<ConnectionGuard, ConnectionRefused> {
        let refused = {
            let mut entry = self.clients.entry(client).or_default();
            // The client's own allowance first: a slot of the total is taken only for a
            // connection that is admitted.
            if entry.count >= self.max_per_client {
                ConnectionRefused::PerClient { limit: self.max_per_client }
            } else if self
                .total
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_total).then_some(n + 1)
                })
                .is_err()
            {
                ConnectionRefused::Total { limit: self.max_total }
            } else {
                let control = ConnControl::new();
                entry.count += 1;
                entry.opened += 1;
                entry.controls.push(control.clone());
                if std::mem::take(&mut entry.gone) {
                    // Sent while the entry is held, so that the reports keep the order of the
                    // facts.
                    let _ = self.events.send(ConnectionEvent::Back(client));
                }
                return Ok(ConnectionGuard { connections: self.clone(), client, control });
            }
        };
        // Keep no entry for a client refused before it ever held a connection.
        self.clients.remove_if(&client, |_, e| e.opened == 0);
        Err(refused)
    }

    /// Closes every open connection of `client` (it was denied); returns how many.
    pub fn close_client(&self, client: &ClientId) -> usize {
        let Some(entry) = self.clients.get(client) else { return 0 };
        for c in &entry.controls {
            c.close();
        }
        entry.controls.len()
    }

    /// The number of connections open now.
    pub fn connections_open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// The number of clients with an open connection now.
    pub fn clients_connected(&self) -> usize {
        self.clients.iter().filter(|e| e.count > 0).count()
    }

    /// Reports `client` gone (the caller holds its entry and has checked it has no
    /// connection).
    fn report_gone(&self, entry: &mut Open, client: ClientId) {
        entry.gone = true;
        entry.controls = Vec::new();
        let _ = self.events.send(ConnectionEvent::Gone(client));
    }

    fn closed(self: &Arc<Self>, client: ClientId, control: &Arc<ConnControl>) {
        let release = || {
            let _ =
                self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        };
        let opened = {
            let Some(mut entry) = self.clients.get_mut(&client) else {
                release();
                return;
            };
            entry.controls.retain(|c| !Arc::ptr_eq(c, control));
            entry.count = entry.count.saturating_sub(1);
            // The total goes down with the client's count, while its entry is held: a
            // reconnection never sees one without the other.
            release();
            if entry.count > 0 {
                return;
            }
            let opened = entry.opened;
            if self.grace.is_zero() {
                self.report_gone(&mut entry, client);
                return;
            }
            opened
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: the server is shutting down; nobody is waiting for the news.
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(this.grace).await;
            let Some(mut entry) = this.clients.get_mut(&client) else { return };
            // Gone only if no connection opened since this one closed.
            if entry.count == 0 && entry.opened == opened && !entry.gone {
                this.report_gone(&mut entry, client);
            }
        });
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.closed(self.client, &self.control);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_opens_and_closes_keep_the_caps_and_the_counts() {
        let (c, _events) = Connections::limited(Duration::ZERO, 6, 2);
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let c = c.clone();
                scope.spawn(move || {
                    let client = ClientId([t % 4; 32]);
                    for _ in 0..2_000 {
                        if let Ok(guard) = c.opened(client) {
                            assert!(c.connections_open() <= 6);
                            drop(guard);
                        }
                    }
                });
            }
        });
        assert_eq!(c.connections_open(), 0);
        assert_eq!(c.clients_connected(), 0);
        // Every client can open its two again.
        let held: Vec<_> = (0..3u8)
            .flat_map(|i| [c.opened(ClientId([i; 32])), c.opened(ClientId([i; 32]))])
            .collect();
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(c.opened(ClientId([3; 32])).unwrap_err(), ConnectionRefused::Total { limit: 6 });
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_is_gone_once_its_last_connection_closed_for_the_grace_period() {
        let (c, mut gone) = Connections::new(Duration::from_secs(2));
        let (a, b) = (ClientId([1; 32]), ClientId([2; 32]));
        let a1 = c.opened(a).unwrap();
        let a2 = c.opened(a).unwrap();
        let b1 = c.opened(b).unwrap();
        assert_eq!(c.clients_connected(), 2);
        drop(a1);
        drop(b1);
        assert_eq!(c.clients_connected(), 1, "b is in its grace period, not connected");
        tokio::time::sleep(Duration::from_secs(1)).await;
        // b reconnects within the grace period; a still holds a connection.
        let b2 = c.opened(b).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(gone.try_recv().is_err(), "nobody is gone");
        drop(a2);
        drop(b2);
        tokio::time::sleep(Duration::from_millis(1999)).await;
        assert!(gone.try_recv().is_err(), "the grace period has not passed");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut both = vec![gone.recv().await.unwrap(), gone.recv().await.unwrap()];
        both.sort_by_key(|e| match e {
            ConnectionEvent::Gone(id) | ConnectionEvent::Back(id) => *id,
        });
        assert_eq!(both, vec![ConnectionEvent::Gone(a), ConnectionEvent::Gone(b)]);
        assert_eq!(c.clients_connected(), 0);
        // a comes back: reported once; a later connection of a is no news.
        let a3 = c.opened(a).unwrap();
        let a4 = c.opened(a).unwrap();
        assert_eq!(gone.try_recv().unwrap(), ConnectionEvent::Back(a));
        assert!(gone.try_recv().is_err());
        assert_eq!(c.clients_connected(), 1);
        drop((a3, a4));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_are_capped_in_all_and_per_client_and_a_client_can_be_closed() {
        let (c, _events) = Connections::limited(Duration::from_secs(2), 3, 2);
        let (a, b, d) = (ClientId([1; 32]), ClientId([2; 32]), ClientId([3; 32]));
        let a1 = c.opened(a).unwrap();
        let a2 = c.opened(a).unwrap();
        assert_eq!(c.opened(a).unwrap_err(), ConnectionRefused::PerClient { limit: 2 });
        let b1 = c.opened(b).unwrap();
        assert_eq!(c.opened(d).unwrap_err(), ConnectionRefused::Total { limit: 3 });
        assert_eq!(c.connections_open(), 3);
        // Closing a client switches off exactly its connections.
        assert_eq!(c.close_client(&a), 2);
        assert!(a1.control().is_closed() && a2.control().is_closed());
        assert!(!b1.control().is_closed());
        assert_eq!(c.close_client(&d), 0);
        drop((a1, a2));
        assert_eq!(c.connections_open(), 1);
        let d1 = c.opened(d).unwrap();
        drop((b1, d1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_a_call_in_flight() {
        let control = ConnControl::new();
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        assert_eq!(control.idle_deadline(timeout), Some(start + timeout));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let call = control.call_started();
        assert_eq!(control.idle_deadline(timeout), None, "a call is in flight");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(call);
        let deadline = control.idle_deadline(timeout).unwrap();
        assert_eq!(deadline, start + Duration::from_secs(35) + timeout, "idle from the call's end");
    }

    #[tokio::test]
    async fn without_a_grace_period_the_news_is_immediate() {
        let (c, mut gone) = Connections::new(Duration::ZERO);
        let a = ClientId([1; 32]);
        drop(c.opened(a).unwrap());
        assert_eq!(gone.try_recv().unwrap(), ConnectionEvent::Gone(a));
    }
}
