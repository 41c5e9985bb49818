//! Waiting before calling again: exponential backoff with jitter, and the coordinator's
//! retry-after.
//!
//! A client backs off when the coordinator is away (`UNAVAILABLE` and other transport
//! failures), busy (`RESOURCE_EXHAUSTED`: a rate limit, the uploads it receives at once), and
//! after it leaves an attempt (a refused plan, an aborted round, a failed call), so that many
//! clients turned away at once do not come back at once, and one that keeps failing does not
//! check in and download the model again and again. Each wait is drawn at random in
//! [d/2, d], with d doubling from a first wait up to a cap; when the coordinator names a wait
//! in the metadata [`RETRY_AFTER_MS_METADATA`], the client waits at least that long (capped at
//! [`MAX_RETRY_AFTER`]) plus up to d/2 of jitter.
//!
//! The jitter is not secret, but it is still drawn from the caller's RNG (the driver passes
//! the thread RNG), never from global state, so the waits can be tested with a seeded one.
//! Nothing here sleeps: [`Backoff`] only says how long.

use std::time::Duration;

pub use fedsec_proto::RETRY_AFTER_MS_METADATA;
use rand::{Rng, RngExt};

/// The longest retry-after the client honours: a coordinator cannot park it for longer per
/// refusal.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Exponential backoff with jitter. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits that start around `first` and double up to `max` (`max ≥ first`).
    pub fn new(first: Duration, max: Duration) -> Self {
        let max = max.max(first);
        Backoff { first, max, next: first }
    }

    /// The wait before the next try: at random in [d/2, d], or, when the coordinator asked for
    /// `retry_after`, that (capped at [`MAX_RETRY_AFTER`]) plus at random up to d/2. Then d
    /// doubles, up to the cap.
    pub fn next_wait(
        &mut self,
        rng: &mut (impl Rng + ?Sized),
        retry_after: Option<Duration>,
    ) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.max);
        let half = d / 2;
        match retry_after {
            Some(asked) => asked.min(MAX_RETRY_AFTER) + jitter(rng, half),
            None => half + jitter(rng, d - half),
        }
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A wait drawn at random in [0, span].
fn jitter(rng: &mut (impl Rng + ?Sized), span: Duration) -> Duration {
    let micros = u64::try_from(span.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.random_range(0..=micros))
}

/// The wait a refusal asks for in its metadata ([`RETRY_AFTER_MS_METADATA`], a decimal count
/// of milliseconds), if it names one that parses.
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_MS_METADATA)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_millis)
}

/// `after` (what the coordinator said in a check-in answer), spread by up to a tenth of it
/// (at most one second), so that clients told the same thing do not all come back at once.
pub fn spread(rng: &mut (impl Rng + ?Sized), after: Duration) -> Duration {
    after + jitter(rng, (after / 10).min(Duration::from_secs(1)))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_within_jittered_bounds_up_to_the_cap() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        let mut waits = Vec::new();
        for d in [100, 200, 400, 800, 1600, 2000, 2000, 2000] {
            let w = b.next_wait(&mut rng, None);
            assert!(w >= d / 2 * MS && w <= d * MS, "{w:?} outside [{}, {d}] ms", d / 2);
            waits.push(w);
        }
        // Jittered: the waits at the cap are not all equal.
        assert!(waits[5..].windows(2).any(|p| p[0] != p[1]), "{waits:?}");
        b.reset();
        assert!(b.next_wait(&mut rng, None) <= 100 * MS);
    }

    #[test]
    fn clients_turned_away_together_spread_out() {
        let waits: Vec<Duration> = (0..20)
            .map(|seed| {
                let mut b = Backoff::new(1000 * MS, 30_000 * MS);
                b.next_wait(&mut ChaCha8Rng::seed_from_u64(seed), None)
            })
            .collect();
        let min = waits.iter().min().unwrap();
        let max = waits.iter().max().unwrap();
        assert!(*max - *min > 100 * MS, "{waits:?}");
    }

    #[test]
    fn a_retry_after_is_honoured_and_capped() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        let w = b.next_wait(&mut rng, Some(5000 * MS));
        assert!(w >= 5000 * MS && w <= 5050 * MS, "{w:?}");
        let w = b.next_wait(&mut rng, Some(Duration::from_secs(86_400)));
        assert!(w >= MAX_RETRY_AFTER && w <= MAX_RETRY_AFTER + 100 * MS, "{w:?}");
    }

    #[test]
    fn the_retry_after_comes_from_the_status_metadata() {
        let mut s = tonic::Status::resource_exhausted("rate limited");
        assert_eq!(retry_after(&s), None);
        s.metadata_mut().insert(RETRY_AFTER_MS_METADATA, "1500".parse().unwrap());
        assert_eq!(retry_after(&s), Some(1500 * MS));
        s.metadata_mut().insert(RETRY_AFTER_MS_METADATA, "soon".parse().unwrap());
        assert_eq!(retry_after(&s), None, "a value that does not parse is ignored");
    }

    #[test]
    fn a_check_in_answer_is_spread_by_a_tenth_at_most() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let w = spread(&mut rng, 500 * MS);
            assert!(w >= 500 * MS && w <= 550 * MS, "{w:?}");
            let w = spread(&mut rng, Duration::from_secs(60));
            assert!(w >= Duration::from_secs(60) && w <= Duration::from_secs(61), "{w:?}");
        }
    }
}
