//! Per-identity rate limits: a token bucket per client certificate and class of method.
//!
//! Every certified client may spend, per class, at most a burst of tokens that refill at a
//! steady rate (GCRA, from the `governor` crate, keyed by [`ClientId`]):
//!
//! | class | what takes a token | default |
//! |---|---|---|
//! | [`RateClass::CheckIn`] | `CheckIn`, `GetRoundResult` | 20/s, bursts of 100 |
//! | [`RateClass::Protocol`] | each message of `AdvertiseKeys`, `ShareKeys`, each chunk of `UploadMaskedInput`, `ConsistencyCheck`, `Unmask`, and each `DownloadModel` call | 1,000/s, bursts of 10,000 |
//! | [`RateClass::ModelBytes`] | the checkpoint's size, in KiB, when a `DownloadModel` starts | 16 MiB/s, bursts of 2 GiB |
//! | [`RateClass::Admin`] | every `Admin` call | 20/s, bursts of 100 |
//!
//! Calls are charged in the edge layer from their headers, before their body is read; the
//! further messages of a stream (upload chunks) as their length prefix arrives; model bytes by
//! the download handler before it sends anything, for the whole checkpoint — a download
//! dropped half-way is charged in full, so asking again and again for the model costs its size
//! each time. A checkpoint larger than the burst is charged the burst (it can still be
//! fetched, once per refill of the bucket).
//!
//! Over the limit, a call is answered `RESOURCE_EXHAUSTED` naming the class and its limit,
//! with the wait until a token is free in the [`fedsec_proto::RETRY_AFTER_MS_METADATA`]
//! metadata, which the client library honours. Refusals are counted per class
//! ([`RateLimits::refused`]) and logged per client and class: the first of a period at once,
//! then their count at the end of the period ([`RateLimits::report`]); every line begins
//! `rate limit:` and names the client.
//!
//! Health checking and reflection are not limited (they are small and answered from memory).
//! In insecure mode (plain TCP, loopback demos) clients name themselves and all come from one
//! address, so there is no identity to key on: no rate limit applies there.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fedsec_crypto::ClientId;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use tonic::Status;

/// Units of [`RateClass::ModelBytes`] tokens: one token is a KiB.
const MODEL_TOKEN_BYTES: u64 = 1024;

/// The most tokens a class may refill per second (a period of one nanosecond).
const MAX_PER_SECOND: u64 = 1_000_000_000;

/// A class of methods with its own bucket per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RateClass {
    /// Check-ins and the result long-poll.
    CheckIn,
    /// The round's protocol messages, upload chunks and model download calls.
    Protocol,
    /// Bytes of checkpoint sent by `DownloadModel`.
    ModelBytes,
    /// The Admin service.
    Admin,
}

impl RateClass {
    /// Every class, in the order of [`RateLimits`]' counters.
    pub const ALL: [RateClass; 4] =
        [RateClass::CheckIn, RateClass::Protocol, RateClass::ModelBytes, RateClass::Admin];

    /// The class's name, as its keys in `[edge.rate_limits]` begin.
    pub fn name(self) -> &'static str {
        match self {
            RateClass::CheckIn => "check_in",
            RateClass::Protocol => "protocol",
            RateClass::ModelBytes => "model_bytes",
            RateClass::Admin => "admin",
        }
    }

    /// Its keys in `[edge.rate_limits]`: (rate, burst).
    pub fn keys(self) -> (&'static str, &'static str) {
        match self {
            RateClass::CheckIn => ("check_in_per_second", "check_in_burst"),
            RateClass::Protocol => ("protocol_per_second", "protocol_burst"),
            RateClass::ModelBytes => ("model_bytes_per_second", "model_bytes_burst"),
            RateClass::Admin => ("admin_per_second", "admin_burst"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The class whose token a call of the method at `path` takes at the edge, if any.
    /// (`DownloadModel` also takes [`RateClass::ModelBytes`] in its handler.)
    pub fn of_path(path: &str) -> Option<RateClass> {
        if path.starts_with("/fedsec.v1.Admin/") {
            return Some(RateClass::Admin);
        }
        let method = path.strip_prefix("/fedsec.v1.Federation/")?;
        match method {
            "CheckIn" | "GetRoundResult" => Some(RateClass::CheckIn),
            _ => Some(RateClass::Protocol),
        }
    }
}

/// The `[edge.rate_limits]` section: a refill rate and a burst per class, per client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Check-ins and result long-polls per second, per client.
    pub check_in_per_second: u64,
    /// Check-ins and result long-polls at once, per client.
    pub check_in_burst: u64,
    /// Protocol messages (upload chunks and download calls included) per second, per client.
    pub protocol_per_second: u64,
    /// Protocol messages at once, per client.
    pub protocol_burst: u64,
    /// Checkpoint bytes per second, per client.
    pub model_bytes_per_second: u64,
    /// Checkpoint bytes at once, per client.
    pub model_bytes_burst: u64,
    /// Admin calls per second, per client.
    pub admin_per_second: u64,
    /// Admin calls at once, per client.
    pub admin_burst: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            check_in_per_second: 20,
            check_in_burst: 100,
            protocol_per_second: 1_000,
            protocol_burst: 10_000,
            model_bytes_per_second: 16 << 20,
            model_bytes_burst: 2 << 30,
            admin_per_second: 20,
            admin_burst: 100,
        }
    }
}

/// A value of `[edge.rate_limits]` that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitConfigError {
    /// A rate or a burst is zero.
    #[error("edge.rate_limits.{key} must be greater than 0")]
    Zero { key: &'static str },
    /// A rate or a burst is beyond what a bucket can hold.
    #[error("edge.rate_limits.{key} = {value} is over its maximum of {max}")]
    TooLarge { key: &'static str, value: u64, max: u64 },
}

/// The rate and burst of one class, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    per_second: u64,
    burst: NonZeroU32,
}

impl RateLimitConfig {
    /// The (rate, burst) of `class`, as configured.
    fn values(&self, class: RateClass) -> (u64, u64) {
        match class {
            RateClass::CheckIn => (self.check_in_per_second, self.check_in_burst),
            RateClass::Protocol => (self.protocol_per_second, self.protocol_burst),
            RateClass::ModelBytes => (self.model_bytes_per_second, self.model_bytes_burst),
            RateClass::Admin => (self.admin_per_second, self.admin_burst),
        }
    }

    /// The limit of `class` in tokens (model bytes: KiB, rounded up).
    fn limit(&self, class: RateClass) -> Result<Limit, RateLimitConfigError> {
        let (per_second, burst) = self.values(class);
        let unit = if class == RateClass::ModelBytes { MODEL_TOKEN_BYTES } else { 1 };
        let (rate_key, burst_key) = class.keys();
        if per_second == 0 {
            return Err(RateLimitConfigError::Zero { key: rate_key });
        }
        if burst == 0 {
            return Err(RateLimitConfigError::Zero { key: burst_key });
        }
        let max_rate = MAX_PER_SECOND * unit;
        if per_second > max_rate {
            return Err(RateLimitConfigError::TooLarge {
                key: rate_key,
                value: per_second,
                max: max_rate,
            });
        }
        let max_burst = u64::from(u32::MAX) * unit;
        let tokens = u32::try_from(burst.div_ceil(unit)).ok().and_then(NonZeroU32::new).ok_or(
            RateLimitConfigError::TooLarge { key: burst_key, value: burst, max: max_burst },
        )?;
        Ok(Limit { per_second: per_second.div_ceil(unit), burst: tokens })
    }

    /// Checks the values (see [`RateLimitConfigError`]).
    pub fn check(&self) -> Result<(), RateLimitConfigError> {
        for class in RateClass::ALL {
            self.limit(class)?;
        }
        Ok(())
    }
}

/// A task whose honest clients would meet a rate limit: the defaults were sized for common
/// models, and this one is larger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskOverRateLimit {
    /// An upload has more chunks than the protocol burst: every upload would be refused.
    #[error(
        "an upload is {chunks} chunks, over edge.rate_limits.protocol_burst = {burst}: clients' uploads would be refused; raise protocol_burst or task.upload_chunk_words"
    )]
    UploadChunks { chunks: u64, burst: u64 },
    /// The checkpoint is larger than the model-bytes burst: a client can download it only once
    /// per refill of its bucket.
    #[error(
        "a checkpoint of {bytes} bytes is over edge.rate_limits.model_bytes_burst = {burst_bytes}: a client that must download it again waits for its bucket to refill; raise model_bytes_burst"
    )]
    Checkpoint { bytes: u64, burst_bytes: u64 },
}

type Keyed<C> = RateLimiter<
    ClientId,
    DefaultKeyedStateStore<ClientId>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// One class's limiter and its limit.
struct Bucket<C: Clock> {
    limit: Limit,
    limiter: Keyed<C>,
}

/// The rate limits of every class, for every client. See the [module docs](self).
pub struct RateLimits<C: Clock = MonotonicClock> {
    buckets: [Bucket<C>; 4],
    refused: [AtomicU64; 4],
    /// Refusals not yet reported, per client and class (a sharded map: a refusal updates one
    /// entry, a report takes each entry out).
    unreported: dashmap::DashMap<(ClientId, RateClass), u64>,
}

impl<C: Clock> std::fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<_> = self.buckets.iter().map(|b| b.limit).collect();
        f.debug_struct("RateLimits")
            .field("limits", &limits)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The limits `config` describes, on the monotonic clock.
    pub fn new(config: &RateLimitConfig) -> Result<Self, RateLimitConfigError> {
        Self::with_clock(config, &MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// The limits `config` describes, on `clock` (tests pass a fake one).
    pub fn with_clock(config: &RateLimitConfig, clock: &C) -> Result<Self, RateLimitConfigError> {
        let bucket = |class: RateClass| -> Result<Bucket<C>, RateLimitConfigError> {
            let limit = config.limit(class)?;
            // per_second ≤ 10⁹ (checked): the period is at least a nanosecond.
            let period = Duration::from_nanos(MAX_PER_SECOND / limit.per_second);
            let quota = Quota::with_period(period)
                .expect("a period of at least one nanosecond is positive")
                .allow_burst(limit.burst);
            Ok(Bucket { limit, limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()) })
        };
        Ok(RateLimits {
            buckets: [
                bucket(RateClass::CheckIn)?,
                bucket(RateClass::Protocol)?,
                bucket(RateClass::ModelBytes)?,
                bucket(RateClass::Admin)?,
            ],
            refused: Default::default(),
            unreported: dashmap::DashMap::new(),
        })
    }

    /// Takes one token of `class` for `client`, or says when one will be free.
    pub fn check(&self, client: &ClientId, class: RateClass) -> Result<(), Status> {
        self.check_n(client, class, 1)
    }

    /// Takes the tokens of a download of `bytes` of checkpoint for `client` (a KiB a token,
    /// at most the burst).
    pub fn check_model_bytes(&self, client: &ClientId, bytes: u64) -> Result<(), Status> {
        let tokens = bytes.div_ceil(MODEL_TOKEN_BYTES).max(1);
        self.check_n(client, RateClass::ModelBytes, tokens)
    }

    fn check_n(&self, client: &ClientId, class: RateClass, tokens: u64) -> Result<(), Status> {
        let bucket = &self.buckets[class.index()];
        let n = u32::try_from(tokens).map_or(bucket.limit.burst, |n| {
            NonZeroU32::new(n.min(bucket.limit.burst.get())).unwrap_or(NonZeroU32::MIN)
        });
        let wait = match bucket.limiter.check_key_n(client, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(bucket.limiter.clock().now()),
            // n ≤ burst, so this is not reached; refuse for a whole burst's refill if it is.
            Err(_) => Duration::from_secs_f64(
                f64::from(bucket.limit.burst.get()) / bucket.limit.per_second as f64,
            ),
        };
        self.refused[class.index()].fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut count = self.unreported.entry((*client, class)).or_default();
            *count += 1;
            *count == 1
        };
        let status = self.refusal(class, wait);
        if first {
            // The first refusal of a period is said at once; the rest are counted.
            tracing::warn!(
                client = %client.to_hex(),
                class = class.name(),
                "rate limit: a {} call refused ({}); further refusals are counted and reported",
                class.name(),
                self.describe(class)
            );
        }
        Err(status)
    }

    /// The `RESOURCE_EXHAUSTED` status of a call of `class` over its limit, to be retried
    /// after `wait`.
    fn refusal(&self, class: RateClass, wait: Duration) -> Status {
        let ms = wait.as_nanos().div_ceil(1_000_000).max(1);
        let mut status = Status::resource_exhausted(format!(
            "rate limit of {}: {} per client; retry in {ms} ms",
            class.name(),
            self.describe(class)
        ));
        let value = tonic::metadata::MetadataValue::from(u64::try_from(ms).unwrap_or(u64::MAX));
        status.metadata_mut().insert(fedsec_proto::RETRY_AFTER_MS_METADATA, value);
        status
    }

    /// What of a task with `dim` words per masked input in chunks of `chunk_words`, and a
    /// checkpoint of `checkpoint_bytes`, its honest clients would meet.
    pub fn check_task(
        &self,
        dim: u64,
        chunk_words: u64,
        checkpoint_bytes: u64,
    ) -> Vec<TaskOverRateLimit> {
        let mut over = Vec::new();
        let chunks = dim.div_ceil(chunk_words.max(1));
        // One token per chunk; the call that carries the first pays for it at the edge.
        let protocol = u64::from(self.buckets[RateClass::Protocol.index()].limit.burst.get());
        if chunks > protocol {
            over.push(TaskOverRateLimit::UploadChunks { chunks, burst: protocol });
        }
        let model = self.buckets[RateClass::ModelBytes.index()].limit.burst.get();
        let burst_bytes = u64::from(model) * MODEL_TOKEN_BYTES;
        if checkpoint_bytes > burst_bytes {
            over.push(TaskOverRateLimit::Checkpoint { bytes: checkpoint_bytes, burst_bytes });
        }
        over
    }

    /// The limit of `class` in words.
    fn describe(&self, class: RateClass) -> String {
        let limit = self.buckets[class.index()].limit;
        match class {
            RateClass::ModelBytes => format!(
                "{} KiB of checkpoint per second with bursts of {} KiB",
                limit.per_second, limit.burst
            ),
            _ => format!("{} calls per second with bursts of {}", limit.per_second, limit.burst),
        }
    }

    /// Calls of `class` refused since the start.
    pub fn refused(&self, class: RateClass) -> u64 {
        self.refused[class.index()].load(Ordering::Relaxed)
    }

    /// Calls refused since the start, in all classes.
    pub fn refused_total(&self) -> u64 {
        RateClass::ALL.iter().map(|&c| self.refused(c)).sum()
    }

    /// Logs the refusals since the last report (a line per client and class) and forgets the
    /// buckets of clients that are full again. Called every `period` by the server.
    pub fn report(&self, period: Duration) {
        let keys: Vec<(ClientId, RateClass)> = self.unreported.iter().map(|e| *e.key()).collect();
        // Each entry taken out whole: a refusal counted meanwhile goes to the next report.
        let unreported: BTreeMap<(ClientId, RateClass), u64> =
            keys.iter().filter_map(|k| self.unreported.remove(k)).collect();
        for ((client, class), count) in unreported {
            let limit = self.buckets[class.index()].limit;
            tracing::warn!(
                client = %client.to_hex(),
                class = class.name(),
                refused = count,
                per_second = limit.per_second,
                burst = limit.burst.get(),
                "rate limit: {count} {} calls refused from one client in the last {} s",
                class.name(),
                period.as_secs()
            );
        }
        for bucket in &self.buckets {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use tonic::Code;

    fn retry_ms(s: &Status) -> u64 {
        s.metadata()
            .get(fedsec_proto::RETRY_AFTER_MS_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    #[test]
    fn a_burst_passes_the_next_call_waits_and_tokens_refill() {
        let clock = FakeRelativeClock::default();
        let config =
            RateLimitConfig { check_in_per_second: 10, check_in_burst: 5, ..Default::default() };
        let limits = RateLimits::with_clock(&config, &clock).unwrap();
        let (a, b) = (ClientId([1; 32]), ClientId([2; 32]));
        for _ in 0..5 {
            limits.check(&a, RateClass::CheckIn).unwrap();
        }
        let s = limits.check(&a, RateClass::CheckIn).unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("check_in") && s.message().contains("bursts of 5"), "{s:?}");
        assert_eq!(retry_ms(&s), 100, "one token every 100 ms");
        // Another client, another class: their own buckets.
        limits.check(&b, RateClass::CheckIn).unwrap();
        limits.check(&a, RateClass::Protocol).unwrap();
        clock.advance(Duration::from_millis(60));
        assert_eq!(retry_ms(&limits.check(&a, RateClass::CheckIn).unwrap_err()), 40);
        clock.advance(Duration::from_millis(40));
        limits.check(&a, RateClass::CheckIn).unwrap();
        assert!(limits.check(&a, RateClass::CheckIn).is_err());
        // A pause refills the burst, no more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..5 {
            limits.check(&a, RateClass::CheckIn).unwrap();
        }
        assert!(limits.check(&a, RateClass::CheckIn).is_err());
        assert_eq!(limits.refused(RateClass::CheckIn), 4);
        assert_eq!(limits.refused_total(), 4);
        limits.report(Duration::from_secs(10));
    }

    #[test]
    fn model_bytes_are_charged_by_the_checkpoint_size() {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            model_bytes_per_second: 1 << 20,
            model_bytes_burst: 4 << 20,
            ..Default::default()
        };
        let limits = RateLimits::with_clock(&config, &clock).unwrap();
        let a = ClientId([1; 32]);
        limits.check_model_bytes(&a, 3 << 20).unwrap();
        let s = limits.check_model_bytes(&a, 3 << 20).unwrap_err();
        assert!(s.message().contains("model_bytes"), "{s:?}");
        // 2 MiB short at 1 MiB/s.
        assert_eq!(retry_ms(&s), 2000);
        clock.advance(Duration::from_secs(2));
        limits.check_model_bytes(&a, 3 << 20).unwrap();
        // A checkpoint over the burst is charged the burst: it passes once the bucket is full.
        clock.advance(Duration::from_secs(4));
        limits.check_model_bytes(&a, 64 << 20).unwrap();
        assert!(limits.check_model_bytes(&a, 1).is_err());
    }

    #[test]
    fn a_task_beyond_the_bursts_is_named() {
        let config = RateLimitConfig {
            protocol_burst: 100,
            model_bytes_burst: 1 << 20,
            ..Default::default()
        };
        let limits = RateLimits::new(&config).unwrap();
        assert_eq!(limits.check_task(100 * 64, 64, 1 << 20), vec![]);
        assert_eq!(
            limits.check_task(100 * 64 + 1, 64, (1 << 20) + 1),
            vec![
                TaskOverRateLimit::UploadChunks { chunks: 101, burst: 100 },
                TaskOverRateLimit::Checkpoint { bytes: (1 << 20) + 1, burst_bytes: 1 << 20 },
            ]
        );
        // The defaults take a 1 GiB model in chunks of 2^16 words.
        let limits = RateLimits::new(&RateLimitConfig::default()).unwrap();
        assert_eq!(limits.check_task((1 << 28) + 1, 1 << 16, 1 << 30), vec![]);
    }

    #[test]
    fn classes_of_methods_and_bad_values() {
        assert_eq!(RateClass::of_path("/fedsec.v1.Federation/CheckIn"), Some(RateClass::CheckIn));
        assert_eq!(
            RateClass::of_path("/fedsec.v1.Federation/GetRoundResult"),
            Some(RateClass::CheckIn)
        );
        for m in [
            "AdvertiseKeys",
            "ShareKeys",
            "UploadMaskedInput",
            "ConsistencyCheck",
            "Unmask",
            "DownloadModel",
        ] {
            let path = format!("/fedsec.v1.Federation/{m}");
            assert_eq!(RateClass::of_path(&path), Some(RateClass::Protocol), "{m}");
        }
        assert_eq!(RateClass::of_path("/fedsec.v1.Admin/GetTaskStatus"), Some(RateClass::Admin));
        assert_eq!(RateClass::of_path("/grpc.health.v1.Health/Check"), None);
        RateLimitConfig::default().check().unwrap();
        let c = RateLimitConfig { protocol_burst: 0, ..Default::default() };
        assert_eq!(c.check(), Err(RateLimitConfigError::Zero { key: "protocol_burst" }));
        let c = RateLimitConfig { admin_per_second: 0, ..Default::default() };
        assert_eq!(c.check(), Err(RateLimitConfigError::Zero { key: "admin_per_second" }));
        let c = RateLimitConfig { check_in_burst: 1 << 33, ..Default::default() };
        assert!(matches!(
            c.check(),
            Err(RateLimitConfigError::TooLarge { key: "check_in_burst", .. })
        ));
        // Model bytes count in KiB: a burst of 4 TiB fits.
        let c = RateLimitConfig { model_bytes_burst: 1 << 41, ..Default::default() };
        c.check().unwrap();
    }
}
