//! Admission of new connections: how many TLS handshakes may be in progress at once, per source
//! address and in all.
//!
//! A handshake costs the server a task, buffers and (once the peer speaks) a signature, and it
//! lasts until the peer finishes or the handshake timeout fires. A host that opens TCP
//! connections and says nothing holds each slot for the whole timeout, so a single global pool
//! of slots, taken before `accept`, lets one host starve every other. Here slots are counted per
//! source (an IPv4 address, or an IPv6 /64, which one host usually holds whole) and in all, a
//! connection over either allowance is refused at once (closed, without a handshake), and the
//! accept loop never waits for a slot: a flood from one source costs the others nothing but the
//! total allowance, which is set well above any one source's.
//!
//! ```
//! use fedsec_coordinator::edge::HandshakeLimiter;
//! let limiter = HandshakeLimiter::new(2, 3);
//! let a = "192.0.2.1".parse().unwrap();
//! let (p1, p2) = (limiter.try_admit(a).unwrap(), limiter.try_admit(a).unwrap());
//! assert!(limiter.try_admit(a).is_err(), "a's allowance is spent");
//! assert!(limiter.try_admit("192.0.2.2".parse().unwrap()).is_ok(), "others are admitted");
//! drop((p1, p2));
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// The source a handshake is counted against: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses included).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Source::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

/// Why a connection was not admitted to a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionRefused {
    /// The source already has its allowance of handshakes in progress.
    #[error("{limit} handshakes already in progress from this source address")]
    PerSource { limit: usize },
    /// The total allowance of handshakes in progress is taken.
    #[error("{limit} handshakes already in progress in all")]
    Total { limit: usize },
}

/// Counts handshakes in progress per source and in all. See the [module docs](self).
#[derive(Debug)]
pub struct HandshakeLimiter {
    per_source: usize,
    total: usize,
    /// Handshakes in progress per source (only sources with one; a sharded map, each update
    /// one entry's).
    sources: DashMap<Source, usize>,
    /// Handshakes in progress in all.
    in_progress: AtomicUsize,
}

/// One handshake's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakePermit {
    limiter: Arc<HandshakeLimiter>,
    source: Source,
}

impl HandshakeLimiter {
    /// A limiter allowing `per_source` handshakes at once from one source and `total` in all.
    pub fn new(per_source: usize, total: usize) -> Arc<Self> {
        Arc::new(HandshakeLimiter {
            per_source,
            total,
            sources: DashMap::new(),
            in_progress: AtomicUsize::new(0),
        })
    }

    /// Takes a slot for a handshake from `ip`, or says which allowance is spent.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakePermit, AdmissionRefused> {
        let source = Source::of(ip);
        let refused = {
            // The source's entry is held while both allowances are checked and taken.
            let mut mine = self.sources.entry(source).or_insert(0);
            if *mine >= self.per_source {
                Some(AdmissionRefused::PerSource { limit: self.per_source })
            } else if self
                .in_progress
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.total).then_some(n + 1)
                })
                .is_err()
            {
                Some(AdmissionRefused::Total { limit: self.total })
            } else {
                *mine += 1;
                None
            }
        };
        match refused {
            Some(why) => {
                // Forget the source again if it has no handshake in progress.
                self.sources.remove_if(&source, |_, n| *n == 0);
                Err(why)
            }
            None => Ok(HandshakePermit { limiter: self.clone(), source }),
        }
    }

    /// Handshakes in progress from `ip`'s source.
    pub fn in_progress_from(&self, ip: IpAddr) -> usize {
        self.sources.get(&Source::of(ip)).map_or(0, |n| *n)
    }

    /// Handshakes in progress in all.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        // Both counts go down in one step, while the source's entry is held.
        match limiter.sources.entry(self.source) {
            dashmap::Entry::Occupied(mut e) => {
                *e.get_mut() = e.get().saturating_sub(1);
                limiter.in_progress.fetch_sub(1, Ordering::AcqRel);
                if *e.get() == 0 {
                    // Forget idle sources: the map holds only sources with a handshake now.
                    e.remove();
                }
            }
            dashmap::Entry::Vacant(_) => {
                limiter.in_progress.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn concurrent_admissions_and_drops_never_exceed_the_caps_and_leave_nothing_behind() {
        let limiter = HandshakeLimiter::new(3, 8);
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let limiter = limiter.clone();
                scope.spawn(move || {
                    let source = ip(&format!("10.0.0.{}", t % 4));
                    for _ in 0..2_000 {
                        if let Ok(permit) = limiter.try_admit(source) {
                            assert!(limiter.in_progress() <= 8);
                            assert!(limiter.in_progress_from(source) <= 3);
                            drop(permit);
                        }
                    }
                });
            }
        });
        assert_eq!(limiter.in_progress(), 0);
        assert!(limiter.sources.is_empty(), "no state kept for idle sources");
    }

    #[test]
    fn a_flood_from_one_source_spends_only_its_own_allowance() {
        let limiter = HandshakeLimiter::new(4, 10);
        let flood: Vec<_> = (0..4).map(|_| limiter.try_admit(ip("127.0.0.2")).unwrap()).collect();
        for _ in 0..100 {
            assert_eq!(
                limiter.try_admit(ip("127.0.0.2")).unwrap_err(),
                AdmissionRefused::PerSource { limit: 4 }
            );
        }
        assert_eq!(limiter.in_progress(), 4, "refusals take no slot");
        let honest: Vec<_> = (0..4).map(|_| limiter.try_admit(ip("127.0.0.1")).unwrap()).collect();
        assert_eq!(limiter.in_progress_from(ip("127.0.0.1")), 4);
        // Two more sources reach the total.
        let other = [limiter.try_admit(ip("10.0.0.1")).unwrap()];
        let other2 = [limiter.try_admit(ip("10.0.0.2")).unwrap()];
        assert_eq!(
            limiter.try_admit(ip("10.0.0.3")).unwrap_err(),
            AdmissionRefused::Total { limit: 10 }
        );
        drop(flood);
        assert_eq!(limiter.in_progress_from(ip("127.0.0.2")), 0);
        assert_eq!(limiter.in_progress(), 6);
        assert!(limiter.try_admit(ip("10.0.0.3")).is_ok(), "freed slots are free again");
        drop((honest, other, other2));
        assert_eq!(limiter.in_progress(), 0);
        assert!(limiter.sources.is_empty(), "no state kept for idle sources");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let limiter = HandshakeLimiter::new(1, 10);
        let _a = limiter.try_admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(limiter.try_admit(ip("2001:db8:1:2:ffff::9")).is_err(), "same /64");
        assert!(limiter.try_admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _b = limiter.try_admit(ip("192.0.2.7")).unwrap();
        assert!(limiter.try_admit(ip("::ffff:192.0.2.7")).is_err(), "the same IPv4 host");
    }
}
