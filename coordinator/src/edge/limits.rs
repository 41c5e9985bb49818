//! Per-method message size limits, enforced on the gRPC length prefix before a message is
//! buffered.
//!
//! A gRPC message on the wire is a 5-byte prefix (a compression flag and a big-endian `u32`
//! length) followed by the message. [`LimitedBody`] wraps a request body and reads only the
//! prefixes as the bytes pass through: a message longer than its method's limit ends the body
//! with a `RESOURCE_EXHAUSTED` status naming the method and the limit, before tonic has
//! reserved or buffered anything for it. At most the HTTP/2 flow-control window of the stream
//! has reached the coordinator by then.
//!
//! The limits come from what each method carries ([`SizeLimits::for_tasks`]): a check-in and a
//! long-poll request are small; an advert carries a certificate chain of bounded size
//! ([`fedsec_wire::x509::MAX_CHAIN_CERTS`] × [`fedsec_wire::x509::MAX_CERT_LEN`]); a
//! ShareKeys message one fixed-size ciphertext per neighbour and one fixed-size commitment
//! entry per holder, at most `n − 1` and `n` for the largest round `n` a task may select; an upload chunk its words; an unmasking response two shares
//! per neighbour. They are upper bounds over every task the coordinator runs, recomputed when
//! a task is created.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use fedsec_crypto::ClientId;

use super::rate::{RateClass, RateLimits};
use crate::engine::TaskConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of the gRPC length prefix.
const PREFIX: usize = 5;

/// The limit of small requests: check-in, long-poll calls, status queries, health, reflection.
pub const SMALL_MESSAGE_BYTES: usize = 64 << 10;

/// Framing of a message beyond its payload: the round reference (four fields, 72 bytes of
/// ids) and field tags and lengths, with room to spare.
const FRAMING_BYTES: usize = 1024;

/// Bytes of one entry of a ShareKeys message (`EncryptedShares`: a 32-byte id, an 80-byte
/// ciphertext, tags and lengths), rounded up.
const SHARE_ENTRY_BYTES: usize = 128;

/// Bytes of one commitment entry of a ShareKeys message (protocol v2: 128 bytes, a tag and a
/// length), rounded up. A ShareKeys message carries one per holder, the dealer's own included.
const COMMITMENT_ENTRY_BYTES: usize = 136;

/// Bytes of one complaint (protocol v2): the accused's id, the share as forwarded (its dealer,
/// 80-byte ciphertext, 128-byte entry, index, size, an inclusion path of at most 32 hashes and
/// the 64-byte signature), K and the 96-byte proof, with tags and lengths, rounded up.
const COMPLAINT_BYTES: usize = 1664;

/// Bytes of one revealed share (`RevealedShare`: a 32-byte owner id and a 32-byte scalar, tags
/// and lengths), rounded up.
const REVEALED_SHARE_BYTES: usize = 80;

/// The size limit of each gRPC method, in bytes of the encoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// `Federation/AdvertiseKeys`.
    pub advertise_keys: usize,
    /// `Federation/ShareKeys`.
    pub share_keys: usize,
    /// `Federation/Complaints`.
    pub complaints: usize,
    /// One message (chunk) of `Federation/UploadMaskedInput`.
    pub upload_chunk: usize,
    /// `Federation/Unmask`.
    pub unmask: usize,
    /// `Admin/CreateTask` (it carries the initial model).
    pub create_task: usize,
    /// Every other method, of the fedsec services, health and reflection.
    pub small: usize,
}

impl SizeLimits {
    /// The limits of a coordinator running `tasks` (with no task, those of an empty round).
    pub fn for_tasks<'a>(tasks: impl IntoIterator<Item = &'a TaskConfig>) -> SizeLimits {
        let (mut n, mut words) = (1usize, 1usize);
        for t in tasks {
            n = n.max(t.max_selected());
            words = words.max(t.upload_chunk_words as usize);
        }
        let chain = fedsec_wire::x509::MAX_CHAIN_CERTS * (fedsec_wire::x509::MAX_CERT_LEN + 8);
        let cap = fedsec_proto::MAX_MESSAGE_BYTES;
        SizeLimits {
            // Three 32-byte keys, two 64-byte proofs of knowledge, a 64-byte signature, the
            // chain and the framing.
            advertise_keys: (chain + 6 * 96 + FRAMING_BYTES).min(cap),
            // A ciphertext per neighbour, a commitment entry per holder, the root's signature.
            share_keys: n
                .saturating_mul(SHARE_ENTRY_BYTES + COMMITMENT_ENTRY_BYTES)
                .saturating_add(96 + FRAMING_BYTES)
                .min(cap),
            // At most one complaint per neighbour, and the signature.
            complaints: n
                .saturating_mul(COMPLAINT_BYTES)
                .saturating_add(64 + FRAMING_BYTES)
                .min(cap),
            upload_chunk: words.saturating_mul(4).saturating_add(FRAMING_BYTES).min(cap),
            // A share of b_v for each holder and of s_v^SK for each dropped neighbour.
            unmask: n
                .saturating_mul(2 * REVEALED_SHARE_BYTES)
                .saturating_add(FRAMING_BYTES)
                .min(cap),
            create_task: cap,
            small: SMALL_MESSAGE_BYTES,
        }
    }

    /// The larger limit of the two for each method (the limits of two sets of tasks together).
    pub fn union(self, other: SizeLimits) -> SizeLimits {
        SizeLimits {
            advertise_keys: self.advertise_keys.max(other.advertise_keys),
            share_keys: self.share_keys.max(other.share_keys),
            complaints: self.complaints.max(other.complaints),
            upload_chunk: self.upload_chunk.max(other.upload_chunk),
            unmask: self.unmask.max(other.unmask),
            create_task: self.create_task.max(other.create_task),
            small: self.small.max(other.small),
        }
    }

    /// The limit of the method at `path` (`/package.Service/Method`).
    pub fn of_path(&self, path: &str) -> usize {
        match path {
            "/fedsec.v1.Federation/AdvertiseKeys" => self.advertise_keys,
            "/fedsec.v1.Federation/ShareKeys" => self.share_keys,
            "/fedsec.v1.Federation/Complaints" => self.complaints,
            "/fedsec.v1.Federation/UploadMaskedInput" => self.upload_chunk,
            "/fedsec.v1.Federation/Unmask" => self.unmask,
            "/fedsec.v1.Admin/CreateTask" => self.create_task,
            _ => self.small,
        }
    }
}

/// The current [`SizeLimits`], shared between the services (which update them when a task is
/// created) and the edge layer (which reads them for each request).
#[derive(Debug, Clone)]
pub struct SharedLimits(Arc<tokio::sync::watch::Sender<SizeLimits>>);

impl Default for SharedLimits {
    fn default() -> Self {
        SharedLimits(Arc::new(tokio::sync::watch::Sender::new(SizeLimits::for_tasks([]))))
    }
}

impl SharedLimits {
    /// The limits now (a copy of the published ones).
    pub fn get(&self) -> SizeLimits {
        *self.0.borrow()
    }

    /// Replaces the limits.
    pub fn set(&self, limits: SizeLimits) {
        self.0.send_replace(limits);
    }

    /// Raises the limits to take a new task's messages too.
    pub fn add_task(&self, task: &TaskConfig) {
        self.0.send_modify(|limits| *limits = limits.union(SizeLimits::for_tasks([task])));
    }
}

/// The `RESOURCE_EXHAUSTED` status of a message over its method's limit.
pub fn too_large(method: &str, len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "{method}: a message of {len} bytes is over this method's limit of {limit} bytes"
    ))
}

/// A request body whose gRPC messages may not exceed `limit` bytes each. See the
/// [module docs](self).
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    method: Arc<str>,
    limit: usize,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to pass before the next prefix.
    payload_left: usize,
    /// A message was over the limit: the body has ended with an error.
    refused: bool,
    /// Charges the messages after the first to their sender's rate limit.
    meter: Option<Meter>,
    /// Counts the bytes that pass and the refusals.
    metrics: Option<crate::metrics::EdgeMetrics>,
}

/// Charges each message of a stream after the first (which its call paid for at the edge) to
/// the sender's bucket of its class: an upload pays per chunk.
#[derive(Debug)]
pub struct Meter {
    rate: Arc<RateLimits>,
    client: ClientId,
    class: RateClass,
    messages: u64,
}

impl Meter {
    /// A meter charging `client`'s bucket of `class`.
    pub fn new(rate: Arc<RateLimits>, client: ClientId, class: RateClass) -> Self {
        Meter { rate, client, class, messages: 0 }
    }

    /// A message begins: the refusal if it is over the rate.
    fn message(&mut self) -> Result<(), Status> {
        self.messages += 1;
        if self.messages == 1 {
            return Ok(());
        }
        self.rate.check(&self.client, self.class)
    }
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`, the body of a call of `method` (its path, for the error message).
    pub fn new(inner: B, method: Arc<str>, limit: usize) -> Self {
        LimitedBody {
            inner,
            method,
            limit,
            prefix: [0; PREFIX],
            prefix_len: 0,
            payload_left: 0,
            refused: false,
            meter: None,
            metrics: None,
        }
    }

    /// Counts the bytes that pass, and the refusals, in `metrics`.
    pub fn counted(mut self, metrics: Option<crate::metrics::EdgeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Charges the messages after the first to `meter`.
    pub fn metered(mut self, meter: Option<Meter>) -> Self {
        self.meter = meter;
        self
    }

    fn count(&self, why: crate::metrics::Refusal) {
        if let Some(m) = &self.metrics {
            m.refused(why);
        }
    }

    /// Follows the message boundaries through `data`; the status if a message is too long.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        if let Some(m) = &self.metrics {
            m.bytes_in(data.len());
        }
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(data.len());
                self.payload_left -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (PREFIX - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == PREFIX {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.limit {
                    self.count(crate::metrics::Refusal::Size);
                    return Err(too_large(&self.method, len, self.limit));
                }
                if let Some(meter) = &mut self.meter
                    && let Err(refused) = meter.message()
                {
                    self.count(crate::metrics::Refusal::RateLimit);
                    return Err(refused);
                }
                self.payload_left = len;
            }
        }
        Ok(())
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.scan(data.chunk())
                {
                    this.refused = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Status::from_error(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tonic::Code;

    fn frame(len: usize) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len));
        v
    }

    /// A body of `chunks`, as a stream of data frames.
    fn body(chunks: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    async fn read_all(chunks: Vec<Vec<u8>>, limit: usize) -> Result<usize, Status> {
        let mut b =
            LimitedBody::new(body(chunks), Arc::from("/fedsec.v1.Federation/CheckIn"), limit);
        let mut seen = 0;
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => seen += f.data_ref().map_or(0, |d| d.len()),
                Err(status) => return Err(status),
            }
        }
        Ok(seen)
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_whole_however_they_are_split() {
        let stream: Vec<u8> = [frame(100), frame(0), frame(100), frame(3)].concat();
        // Split at every size from one byte up: prefixes across chunk boundaries included.
        for split in [1, 2, 3, 4, 5, 6, 7, 104, 105, 106, 1000] {
            let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
            assert_eq!(read_all(chunks, 100).await.unwrap(), stream.len(), "split {split}");
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_from_its_prefix_alone() {
        // Only the prefix of a 60 MiB message is sent: the refusal comes before any payload.
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&(60u32 << 20).to_be_bytes());
        let e = read_all(vec![frame(10), prefix], 64 << 10).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("/fedsec.v1.Federation/CheckIn"), "{}", e.message());
        assert!(e.message().contains("65536"), "the limit is named: {}", e.message());
        assert!(e.message().contains(&(60usize << 20).to_string()), "{}", e.message());
        // One byte over, split mid-prefix.
        let big = frame(101);
        let e = read_all(vec![big[..3].to_vec(), big[3..].to_vec()], 100).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
    }

    #[test]
    fn limits_follow_the_task() {
        let id = fedsec_crypto::TaskId([0; 16]);
        let mut small = TaskConfig::new(id, "a", 10);
        small.over_selection = 1.0;
        let mut large = TaskConfig::new(id, "b", 1000);
        large.over_selection = 1.0;
        large.upload_chunk_words = 1 << 18;
        let a = SizeLimits::for_tasks([&small]);
        let b = SizeLimits::for_tasks([&small, &large]);
        assert!(a.share_keys < b.share_keys && b.share_keys >= 1000 * 112);
        assert!(b.upload_chunk >= 4 << 18 && b.upload_chunk < (4 << 18) + 4096);
        assert!(a.advertise_keys >= 8 * 16 * 1024, "a full certificate chain fits");
        assert_eq!(b.of_path("/fedsec.v1.Federation/CheckIn"), SMALL_MESSAGE_BYTES);
        assert_eq!(b.of_path("/fedsec.v1.Federation/ShareKeys"), b.share_keys);
        // A complaint about each of 999 neighbours, each path of the most hashes, fits.
        use prost::Message;
        let complaint = fedsec_proto::v1::Complaint {
            accused: vec![1; 32],
            share: Some(fedsec_proto::v1::ForwardedShares {
                from: vec![1; 32],
                ciphertext: vec![2; 80],
                entry: vec![3; 128],
                index: u32::MAX,
                size: u32::MAX,
                path: vec![vec![4; 32]; fedsec_crypto::merkle::MAX_PATH],
                signature: vec![5; 64],
            }),
            shared_key: vec![6; 32],
            proof: vec![7; 96],
        };
        let full = fedsec_proto::v1::ComplaintsRequest {
            round: Some(fedsec_proto::v1::RoundRef {
                task_id: vec![0; 16],
                round_id: u64::MAX,
                attempt: vec![0; 16],
                context: vec![0; 32],
            }),
            complaints: vec![complaint; 999],
            signature: vec![8; 64],
        };
        assert!(full.encoded_len() <= b.complaints, "{} > {}", full.encoded_len(), b.complaints);
        assert_eq!(b.of_path("/fedsec.v1.Federation/Complaints"), b.complaints);
        assert_eq!(b.of_path("/fedsec.v1.Admin/CreateTask"), fedsec_proto::MAX_MESSAGE_BYTES);
        assert_eq!(b.of_path("/grpc.health.v1.Health/Check"), SMALL_MESSAGE_BYTES);
    }
}
