//! The audit log's writer: one thread owns the log, so that its appends — each synced to disk —
//! never run on an async worker.
//!
//! **Group commit.** The thread takes every entry waiting in its queue (up to
//! [`MAX_RECOVERED_LINES`]) and appends them as one batch: one write, one sync, one new head.
//! An entry is acknowledged only once its batch is on disk, so callers that wait keep the
//! guarantee of one append per entry at the cost of one append per batch.
//!
//! **Fail closed.** When an append fails, the thread keeps the batch and everything queued after
//! it, in order, reports the failure ([`AuditState::Failing`]: the coordinator refuses new
//! check-ins, holds selection and turns its health to `NOT_SERVING`), and retries every
//! [`RETRY_EVERY`] — reopening the log first if the failure left its end unknown. Nothing is
//! acknowledged meanwhile, so whoever waits on an entry (the storing of a checkpoint) waits.
//! Once an append succeeds the state is [`AuditState::Writing`] again.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::audit::{AuditLog, EntryKind, MAX_RECOVERED_LINES, unix_ms};

/// How often a failing log is tried again.
pub(crate) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Whether the audit log takes entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditState {
    /// Entries are written as they come.
    Writing,
    /// The last append failed; entries wait in memory until it succeeds.
    Failing {
        /// The error, naming the file.
        error: String,
        /// Entries waiting.
        waiting: usize,
    },
}

struct Entry {
    kind: EntryKind,
    detail: serde_json::Value,
    time_ms: u64,
    done: Option<oneshot::Sender<()>>,
}

/// The writer thread has stopped: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log's writer has stopped")]
pub struct WriterStopped;

/// The handle to the writer thread (it ends when the handle is dropped, after writing what is
/// queued if it can).
#[derive(Debug)]
pub(super) struct AuditWriter {
    entries: Sender<Msg>,
    state: watch::Receiver<AuditState>,
}

impl AuditWriter {
    /// Starts the thread that owns `log`.
    pub(super) fn start(log: AuditLog) -> std::io::Result<AuditWriter> {
        let (entries, rx) = std::sync::mpsc::channel::<Msg>();
        let (state_tx, state) = watch::channel(AuditState::Writing);
        std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            Writer { log, queue: VecDeque::new(), flushes: Vec::new(), state: state_tx }.run(rx)
        })?;
        Ok(AuditWriter { entries, state })
    }

    /// Queues one entry, stamped now, without waiting for it: entries are written in the
    /// order they are queued, so waiting on a later one ([`append`](Self::append)) waits for
    /// this one too.
    pub(super) fn submit(&self, kind: EntryKind, detail: serde_json::Value) {
        self.send(kind, detail, None);
    }

    /// Appends one entry; resolves once it (and every entry queued before it) is written and
    /// synced. While the log is failing, that is once it has recovered. An error means the
    /// writer stopped and the entry is not written.
    pub(super) async fn append(
        &self,
        kind: EntryKind,
        detail: serde_json::Value,
    ) -> Result<(), WriterStopped> {
        let (done, written) = oneshot::channel();
        self.send(kind, detail, Some(done));
        written.await.map_err(|_| WriterStopped)
    }

    /// Waits up to `within` for every entry queued so far to be written; whether they were.
    pub(super) async fn flush(&self, within: Duration) -> bool {
        let (done, written) = oneshot::channel();
        if self.entries.send(Msg::Flush(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, written).await, Ok(Ok(())))
    }

    fn send(&self, kind: EntryKind, detail: serde_json::Value, done: Option<oneshot::Sender<()>>) {
        let entry = Entry { kind, detail, time_ms: unix_ms(), done };
        if self.entries.send(Msg::Entry(entry)).is_err() {
            tracing::error!(?kind, "the audit log's writer has stopped; an entry is lost");
        }
    }

    /// Whether the log takes entries now: not while it fails, nor once its writer stopped.
    pub(super) fn is_writing(&self) -> bool {
        self.state.has_changed().is_ok() && *self.state.borrow() == AuditState::Writing
    }

    /// Whether the writer thread still runs (it stops only if it panicked or the process
    /// ends).
    pub(super) fn is_running(&self) -> bool {
        self.state.has_changed().is_ok()
    }

    /// The log's state, as it changes.
    pub(super) fn state(&self) -> watch::Receiver<AuditState> {
        self.state.clone()
    }
}

/// What the writer thread receives.
enum Msg {
    Entry(Entry),
    /// Answer once every entry received before is written.
    Flush(oneshot::Sender<()>),
}

/// The thread's side.
struct Writer {
    log: AuditLog,
    /// Entries received and not yet written, oldest first.
    queue: VecDeque<Entry>,
    /// Flushes waiting, each with the number of queued entries it waits for.
    flushes: Vec<(usize, oneshot::Sender<()>)>,
    state: watch::Sender<AuditState>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut open = true;
        // While the log fails: when to try again (entries arriving meanwhile do not hurry it).
        let mut retry_at: Option<Instant> = None;
        while open || !self.queue.is_empty() {
            if self.queue.is_empty() {
                match rx.recv() {
                    Ok(m) => self.take(m),
                    Err(_) => break,
                }
            } else if let Some(at) = retry_at {
                match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(m) => self.take(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if open && retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            if self.write_some() {
                retry_at = None;
            } else if !open {
                // Shutting down with a log that fails: say what is lost.
                tracing::error!(
                    entries = self.queue.len(),
                    "the audit log's writer stops with entries it could not write"
                );
                break;
            } else {
                retry_at = Some(Instant::now() + RETRY_EVERY);
            }
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Entry(e) => self.queue.push_back(e),
            Msg::Flush(done) if self.queue.is_empty() => {
                let _ = done.send(());
            }
            Msg::Flush(done) => self.flushes.push((self.queue.len(), done)),
        }
    }

    fn is_failing(&self) -> bool {
        matches!(*self.state.borrow(), AuditState::Failing { .. })
    }

    /// Writes the oldest batch of the queue; whether it succeeded.
    fn write_some(&mut self) -> bool {
        if self.log.is_poisoned() {
            // The failed batch's lines are cut off; the whole queue is written again.
            match self.log.reopen() {
                Ok(log) => self.log = log,
                Err(e) => {
                    self.failing(e.to_string());
                    return false;
                }
            }
        }
        let n = self.queue.len().min(MAX_RECOVERED_LINES as usize);
        if n == 0 {
            return true;
        }
        let batch = self.queue.iter().take(n).map(|e| (e.kind, e.detail.clone(), e.time_ms));
        match self.log.append_batch(batch.collect::<Vec<_>>()) {
            Ok(_) => {
                self.acknowledge(n);
                if self.is_failing() {
                    tracing::info!("the audit log is written again");
                    self.state.send_replace(AuditState::Writing);
                }
                true
            }
            Err(e) => {
                self.failing(e.to_string());
                false
            }
        }
    }

    /// The first `n` queued entries are on disk.
    fn acknowledge(&mut self, n: usize) {
        let n = n.min(self.queue.len());
        for e in self.queue.drain(..n) {
            if let Some(done) = e.done {
                let _ = done.send(());
            }
        }
        for (waits_for, done) in std::mem::take(&mut self.flushes) {
            if waits_for <= n {
                let _ = done.send(());
            } else {
                self.flushes.push((waits_for - n, done));
            }
        }
    }

    fn failing(&mut self, error: String) {
        let waiting = self.queue.len();
        let changed = match &*self.state.borrow() {
            AuditState::Failing { error: was, .. } => *was != error,
            AuditState::Writing => true,
        };
        if changed {
            tracing::error!(
                %error,
                waiting,
                "audit log append failed: no new round starts until it can be written"
            );
        }
        self.state.send_replace(AuditState::Failing { error, waiting });
    }
}
