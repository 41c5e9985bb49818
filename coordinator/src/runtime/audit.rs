//! The audit log's writer: one thread owns the log, so that its appends — each synced to disk —
//! never run on an async worker. Callers send an entry and await its acknowledgement.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::audit::{AuditLog, EntryKind};

type Entry = (EntryKind, serde_json::Value, oneshot::Sender<()>);

/// The handle to the writer thread (it ends when the handle is dropped).
#[derive(Debug)]
pub(super) struct AuditWriter {
    entries: std::sync::mpsc::Sender<Entry>,
}

impl AuditWriter {
    /// Starts the thread that owns `log`.
    pub(super) fn start(mut log: AuditLog) -> std::io::Result<AuditWriter> {
        let (entries, rx) = std::sync::mpsc::channel::<Entry>();
        std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            for (kind, detail, done) in rx {
                if let Err(e) = log.append(kind, detail, unix_ms()) {
                    tracing::error!(error = %e, "audit log append failed");
                }
                let _ = done.send(());
            }
        })?;
        Ok(AuditWriter { entries })
    }

    /// Appends one entry; resolves once it is written and synced (or its append failed, which
    /// the writer logs).
    pub(super) async fn append(&self, kind: EntryKind, detail: serde_json::Value) {
        let (done, written) = oneshot::channel();
        if self.entries.send((kind, detail, done)).is_err() {
            tracing::error!("the audit log's writer has stopped; an entry is lost");
            return;
        }
        let _ = written.await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
