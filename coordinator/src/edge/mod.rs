//! The coordinator's network edge: what a connection and a request must pass before any work
//! is done for them.
//!
//! The coordinator runs where anyone can open a socket, so every resource a stranger can make
//! it spend is bounded, and bounded per source, so that one source exhausts only its own share:
//!
//! 1. **Admission** ([`admission`]): TLS handshakes run under a timeout, at most
//!    [`EdgeConfig::max_handshakes_per_ip`] at once from one address (an IPv6 /64 counts as one
//!    address) and [`EdgeConfig::max_handshakes`] in all. A connection over either cap is closed
//!    at once, without a handshake; the accept loop never waits for a slot, so the kernel's
//!    backlog keeps draining and other addresses are still admitted.
//! 2. **Connections** ([`crate::connections`]): after the handshake, at most
//!    [`EdgeConfig::max_connections`] in all and [`EdgeConfig::max_connections_per_client`] per
//!    certificate. Each connection is served by [`serve`]: one with no call in flight for
//!    [`EdgeConfig::idle_timeout_ms`], or older than [`EdgeConfig::max_connection_age_ms`], is
//!    asked to go away (HTTP/2 GOAWAY; calls in flight may finish within
//!    [`EdgeConfig::max_connection_age_grace_ms`]). The server pings every connection
//!    ([`EdgeConfig::keepalive_interval_ms`], [`EdgeConfig::keepalive_timeout_ms`]) and the
//!    sockets have TCP keep-alive, so a half-open connection is closed within the interval plus
//!    the timeout, and its client is reported gone.
//! 3. **Requests** ([`gate`]): a tower layer in front of the services checks the caller's
//!    certificate identity and the deny-list from the request's headers — before any byte of the
//!    body is read — and bounds the size of each message by its method ([`limits`]), reading
//!    only the gRPC length prefix: a message over its method's limit is refused with
//!    `RESOURCE_EXHAUSTED` before it is buffered. Each connection serves at most
//!    [`EdgeConfig::max_concurrent_streams`] calls at once.
//!
//! 4. **Rates** ([`rate`]): each certified client has a token bucket per class of method —
//!    check-ins, protocol messages (upload chunks one by one), checkpoint bytes downloaded,
//!    Admin calls ([`RateLimitConfig`], `[edge.rate_limits]`). A call over its class's limit is
//!    refused with `RESOURCE_EXHAUSTED` and the wait in `retry-after-ms`, before its body is
//!    read.
//!
//! What it does not do: anything at the IP layer below TCP (a SYN flood is the operating
//! system's and the network's to absorb). Plain TCP (`--insecure`, loopback only) has no
//! handshake to limit, no tracker and no identity to key rate limits on: only the request
//! layer's size limits and the HTTP/2 settings apply there.

pub mod admission;
pub mod gate;
pub mod limits;
pub mod rate;
pub mod serve;

use std::time::Duration;

use serde::Deserialize;

pub use admission::{AdmissionRefused, HandshakeLimiter, HandshakePermit};
pub use gate::EdgeLayer;
pub use limits::{SharedLimits, SizeLimits};
pub use rate::{RateClass, RateLimitConfig, RateLimitConfigError, RateLimits, TaskOverRateLimit};
pub use serve::{ConnectionLimits, serve_incoming};

/// The `[edge]` section of the configuration. Every key has a default an honest federation
/// never reaches; `docs/operations.md` says why each default is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// How long a peer has to complete the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once from one source address (IPv6: one /64).
    pub max_handshakes_per_ip: usize,
    /// TLS handshakes in progress at once in all.
    pub max_handshakes: usize,
    /// Authenticated connections open at once in all.
    pub max_connections: usize,
    /// Authenticated connections open at once per client certificate.
    pub max_connections_per_client: usize,
    /// A connection with no call in flight for this long is sent GOAWAY (0: never).
    pub idle_timeout_ms: u64,
    /// A connection older than this (±10 %) is sent GOAWAY (0: never); calls in flight finish.
    pub max_connection_age_ms: u64,
    /// How long calls in flight may take to finish after GOAWAY before the connection is cut.
    pub max_connection_age_grace_ms: u64,
    /// The server pings each connection this often (HTTP/2 PING); also the TCP keep-alive idle
    /// time and probe interval.
    pub keepalive_interval_ms: u64,
    /// A connection whose ping is not answered within this is closed.
    pub keepalive_timeout_ms: u64,
    /// Calls served at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Per-client rate limits, `[edge.rate_limits]` ([`rate`]).
    pub rate_limits: RateLimitConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            handshake_timeout_ms: 5_000,
            max_handshakes_per_ip: 16,
            max_handshakes: 512,
            max_connections: 10_000,
            max_connections_per_client: 8,
            idle_timeout_ms: 3_600_000,
            max_connection_age_ms: 86_400_000,
            max_connection_age_grace_ms: 900_000,
            keepalive_interval_ms: 20_000,
            keepalive_timeout_ms: 10_000,
            max_concurrent_streams: 64,
            rate_limits: RateLimitConfig::default(),
        }
    }
}

/// A value of `[edge]` that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeConfigError {
    /// A limit or a timeout that must be positive is zero.
    #[error("edge.{key} must be greater than 0")]
    Zero { key: &'static str },
    /// The per-address handshake allowance exceeds the total, so one address could take all.
    #[error(
        "edge.max_handshakes_per_ip = {per_ip} exceeds edge.max_handshakes = {total}: one address could take every handshake slot"
    )]
    PerIpAboveTotal { per_ip: usize, total: usize },
    /// The per-client connection cap exceeds the total.
    #[error(
        "edge.max_connections_per_client = {per_client} exceeds edge.max_connections = {total}"
    )]
    PerClientAboveTotal { per_client: usize, total: usize },
    /// A value of `[edge.rate_limits]` cannot work.
    #[error(transparent)]
    RateLimits(#[from] RateLimitConfigError),
}

impl EdgeConfig {
    /// Checks the values (see [`EdgeConfigError`]).
    pub fn check(&self) -> Result<(), EdgeConfigError> {
        let positive: [(&'static str, u64); 8] = [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_handshakes_per_ip", self.max_handshakes_per_ip as u64),
            ("max_handshakes", self.max_handshakes as u64),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_client", self.max_connections_per_client as u64),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("max_concurrent_streams", u64::from(self.max_concurrent_streams)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(EdgeConfigError::Zero { key });
        }
        if self.max_handshakes_per_ip > self.max_handshakes {
            return Err(EdgeConfigError::PerIpAboveTotal {
                per_ip: self.max_handshakes_per_ip,
                total: self.max_handshakes,
            });
        }
        if self.max_connections_per_client > self.max_connections {
            return Err(EdgeConfigError::PerClientAboveTotal {
                per_client: self.max_connections_per_client,
                total: self.max_connections,
            });
        }
        self.rate_limits.check()?;
        Ok(())
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The idle timeout, `None` when off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }

    /// The keep-alive ping interval.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }

    /// The keep-alive ping timeout.
    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    /// The handshake limiter these values describe.
    pub fn handshake_limiter(&self) -> std::sync::Arc<HandshakeLimiter> {
        HandshakeLimiter::new(self.max_handshakes_per_ip, self.max_handshakes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_values_are_named() {
        EdgeConfig::default().check().unwrap();
        let c = EdgeConfig { max_concurrent_streams: 0, ..EdgeConfig::default() };
        assert_eq!(c.check(), Err(EdgeConfigError::Zero { key: "max_concurrent_streams" }));
        let c = EdgeConfig { max_handshakes_per_ip: 10, max_handshakes: 5, ..Default::default() };
        assert_eq!(c.check(), Err(EdgeConfigError::PerIpAboveTotal { per_ip: 10, total: 5 }));
        let c =
            EdgeConfig { max_connections_per_client: 10, max_connections: 5, ..Default::default() };
        assert_eq!(
            c.check(),
            Err(EdgeConfigError::PerClientAboveTotal { per_client: 10, total: 5 })
        );
    }

    #[test]
    fn rate_limits_are_a_subsection_whose_keys_default_one_by_one() {
        let c: EdgeConfig = toml::from_str("[rate_limits]\ncheck_in_burst = 5\n").unwrap();
        assert_eq!(c.rate_limits.check_in_burst, 5);
        assert_eq!(
            c.rate_limits.check_in_per_second,
            RateLimitConfig::default().check_in_per_second
        );
        assert_eq!(c.max_concurrent_streams, EdgeConfig::default().max_concurrent_streams);
        let c: EdgeConfig = toml::from_str("[rate_limits]\nprotocol_burst = 0\n").unwrap();
        let e = c.check().unwrap_err();
        assert_eq!(e.to_string(), "edge.rate_limits.protocol_burst must be greater than 0");
        assert!(toml::from_str::<EdgeConfig>("[rate_limits]\nbogus = 1\n").is_err());
    }
}
