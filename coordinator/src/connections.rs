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

/// The open connections of each client. See the [module docs](self).
#[derive(Debug)]
pub struct Connections {
    open: Mutex<BTreeMap<ClientId, Open>>,
    grace: Duration,
    gone: mpsc::UnboundedSender<ClientId>,
}

/// Held by a connection while it is open; dropping it closes the connection's account.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    client: ClientId,
}

impl Connections {
    /// A tracker that reports, on the returned channel, each client that has been without a
    /// connection for `grace`.
    pub fn new(grace: Duration) -> (Arc<Connections>, mpsc::UnboundedReceiver<ClientId>) {
        let (gone, rx) = mpsc::unbounded_channel();
        (Arc::new(Connections { open: Mutex::new(BTreeMap::new()), grace, gone }), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClientId, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of `client` opened.
    pub fn opened(self: &Arc<Self>, client: ClientId) -> ConnectionGuard {
        let mut open = self.lock();
        let entry = open.entry(client).or_default();
        entry.count += 1;
        entry.opened += 1;
        ConnectionGuard { connections: self.clone(), client }
    }

    /// The number of clients with an open connection.
    pub fn clients_connected(&self) -> usize {
        self.lock().len()
    }

    fn closed(self: &Arc<Self>, client: ClientId) {
        let opened = {
            let mut open = self.lock();
            let Some(entry) = open.get_mut(&client) else { return };
            entry.count = entry.count.saturating_sub(1);
            if entry.count > 0 {
                return;
            }
            let opened = entry.opened;
            if self.grace.is_zero() {
                open.remove(&client);
                drop(open);
                let _ = self.gone.send(client);
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
            let mut open = this.lock();
            // Gone only if no connection opened since this one closed.
            if open.get(&client).is_some_and(|e| e.count == 0 && e.opened == opened) {
                open.remove(&client);
                drop(open);
                let _ = this.gone.send(client);
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
        both.sort();
        assert_eq!(both, vec![a, b]);
        assert_eq!(c.clients_connected(), 0);
    }

    #[tokio::test]
    async fn without_a_grace_period_the_news_is_immediate() {
        let (c, mut gone) = Connections::new(Duration::ZERO);
        let a = ClientId([1; 32]);
        drop(c.opened(a));
        assert_eq!(gone.try_recv().unwrap(), a);
    }
}
