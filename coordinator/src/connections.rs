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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedsec_crypto::ClientId;
use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct Open {
    /// Connections open now.
    count: usize,
    /// Connections ever opened: tells a reconnection within the grace period.
    opened: u64,
}

/// What the tracker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The client has had no connection for the grace period.
    Gone(ClientId),
    /// A client reported gone opened a connection again.
    Back(ClientId),
}

#[derive(Debug, Default)]
struct State {
    open: BTreeMap<ClientId, Open>,
    /// Clients reported gone and not back since.
    gone: std::collections::BTreeSet<ClientId>,
}

/// The open connections of each client. See the [module docs](self).
#[derive(Debug)]
pub struct Connections {
    state: Mutex<State>,
    grace: Duration,
    events: mpsc::UnboundedSender<ConnectionEvent>,
}

/// Held by a connection while it is open; dropping it closes the connection's account.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    client: ClientId,
}

impl Connections {
    /// A tracker that reports, on the returned channel, each client that has been without a
    /// connection for `grace`, and each such client that connects again.
    pub fn new(grace: Duration) -> (Arc<Connections>, mpsc::UnboundedReceiver<ConnectionEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (Arc::new(Connections { state: Mutex::new(State::default()), grace, events }), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of `client` opened.
    pub fn opened(self: &Arc<Self>, client: ClientId) -> ConnectionGuard {
        let mut state = self.lock();
        let entry = state.open.entry(client).or_default();
        entry.count += 1;
        entry.opened += 1;
        if state.gone.remove(&client) {
            // Sent under the lock, so that the reports keep the order of the facts.
            let _ = self.events.send(ConnectionEvent::Back(client));
        }
        ConnectionGuard { connections: self.clone(), client }
    }

    /// The number of clients with an open connection now.
    pub fn clients_connected(&self) -> usize {
        self.lock().open.values().filter(|e| e.count > 0).count()
    }

    /// Reports `client` gone (the caller holds the lock and has checked it has no connection).
    fn report_gone(&self, state: &mut State, client: ClientId) {
        state.open.remove(&client);
        state.gone.insert(client);
        let _ = self.events.send(ConnectionEvent::Gone(client));
    }

    fn closed(self: &Arc<Self>, client: ClientId) {
        let opened = {
            let mut state = self.lock();
            let Some(entry) = state.open.get_mut(&client) else { return };
            entry.count = entry.count.saturating_sub(1);
            if entry.count > 0 {
                return;
            }
            let opened = entry.opened;
            if self.grace.is_zero() {
                self.report_gone(&mut state, client);
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
            let mut state = this.lock();
            // Gone only if no connection opened since this one closed.
            if state.open.get(&client).is_some_and(|e| e.count == 0 && e.opened == opened) {
                this.report_gone(&mut state, client);
            }
        });
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.closed(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_is_gone_once_its_last_connection_closed_for_the_grace_period() {
        let (c, mut gone) = Connections::new(Duration::from_secs(2));
        let (a, b) = (ClientId([1; 32]), ClientId([2; 32]));
        let a1 = c.opened(a);
        let a2 = c.opened(a);
        let b1 = c.opened(b);
        assert_eq!(c.clients_connected(), 2);
        drop(a1);
        drop(b1);
        assert_eq!(c.clients_connected(), 1, "b is in its grace period, not connected");
        tokio::time::sleep(Duration::from_secs(1)).await;
        // b reconnects within the grace period; a still holds a connection.
        let b2 = c.opened(b);
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
        let a3 = c.opened(a);
        let a4 = c.opened(a);
        assert_eq!(gone.try_recv().unwrap(), ConnectionEvent::Back(a));
        assert!(gone.try_recv().is_err());
        assert_eq!(c.clients_connected(), 1);
        drop((a3, a4));
    }

    #[tokio::test]
    async fn without_a_grace_period_the_news_is_immediate() {
        let (c, mut gone) = Connections::new(Duration::ZERO);
        let a = ClientId([1; 32]);
        drop(c.opened(a));
        assert_eq!(gone.try_recv().unwrap(), ConnectionEvent::Gone(a));
    }
}
