//! The coordinator's tamper-evident audit log.
//!
//! The log is a file of JSON lines, appended to and never rewritten. Each line is one
//! [`AuditEntry`]: `{"seq":…,"time":…,"kind":…,"detail":…,"prev":…}`, where `prev` is the
//! lowercase hex SHA-256 of the previous line's exact bytes (without its newline). The first
//! entry's `prev` is the SHA-256 of [`GENESIS`], which names the log format. Changing, inserting
//! or removing any line therefore breaks the chain at the line after it.
//!
//! The end of the chain is pinned by the **head file**, `{log}.head` (see [`head_path`]):
//! `{"seq":N,"hash":…,"public_key":…,"signature":…}`, rewritten atomically after every append.
//! `hash` is the SHA-256 of entry `N`'s line, and `signature` is the coordinator's Ed25519
//! signature over the length-prefixed encoding (see [`fedsec_crypto::kdf::push_lp`]) of
//! [`HEAD_LABEL`] ‖ seq (u64 big-endian) ‖ hash. So lines removed from the end, or appended by
//! anyone without the coordinator key, no longer match the head.
//!
//! **The head of an empty log** has `"seq":null` and the genesis hash as `hash`; in the signed
//! encoding its seq is the empty byte string, which the length prefix keeps distinct from any
//! 8-byte seq.
//!
//! **What the log records:** what happened (tasks, enrollments, rounds, checkpoints, refusals,
//! admin actions), never key material and never any client's vector. Callers pass ids and
//! counts only, in `detail`; the log is meant to be read by operators and auditors.
//!
//! **Crash behaviour:** lines are written with one write and synced before the head is
//! replaced ([`AuditLog::append_batch`] writes a batch of lines, then one head). A crash
//! between the two leaves the head behind the log, and a crash inside the write may leave a
//! torn last line. [`AuditLog::open`] recovers from exactly that and nothing else: every line
//! the head covers must be intact; past it, at most [`MAX_RECOVERED_LINES`] complete lines
//! that chain from the head are accepted, and one torn last line (bytes with no newline) is
//! cut off. It then signs a new head and appends an [`EntryKind::AuditRecovered`] entry that
//! says how many lines it accepted and how many bytes it cut, so an auditor sees every
//! recovery. Anything else — a changed line, a log shorter than its head, more lines past the
//! head than one batch holds — is refused as before. [`verify`] itself stays strict: a log
//! that has not been reopened since the crash fails it with [`AuditError::HeadMismatch`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fedsec_crypto::kdf::push_lp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The string whose SHA-256 is the `prev` of entry 0; it names the log format.
pub const GENESIS: &[u8] = b"fedsec/v1/audit-genesis";

/// The domain label that starts the bytes a head signature covers.
pub const HEAD_LABEL: &[u8] = b"fedsec/v1/audit-head";

/// The most entries [`AuditLog::append_batch`] writes under one head, and so the most complete
/// lines past the signed head that [`AuditLog::open`] accepts when it recovers a log.
pub const MAX_RECOVERED_LINES: u64 = 1024;

/// What [`AuditLog::open`] did to recover a log left by a crash between its lines and its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Entries the signed head covered.
    pub head_entries: u64,
    /// Complete lines past the head that chain from it, accepted.
    pub lines_accepted: u64,
    /// Bytes of a torn last line, cut off.
    pub torn_bytes: u64,
}

/// What an audit entry records. Serialized in snake_case (`round_started`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryKind {
    /// A training task was created.
    TaskCreated,
    /// A training task started running rounds.
    TaskStarted,
    /// A client checked in for the first time.
    Enrollment,
    /// A round started (selection done).
    RoundStarted,
    /// A round produced an aggregate.
    RoundCompleted,
    /// A round was given up (too few survivors, deadline, refusal of the plan…).
    RoundAborted,
    /// A checkpoint was written and signed.
    Checkpoint,
    /// A client or request was refused (denied client, replay, malformed message…).
    Refusal,
    /// The deny-list of client ids was reloaded.
    DenyListReloaded,
    /// An operator action.
    Admin,
    /// The log was recovered at open after a crash between its lines and its head (see
    /// [`Recovery`]).
    AuditRecovered,
    /// A phase of a running attempt closed and what the server held was saved: the SHA-256 of
    /// the saved state. Written before the phase's output goes to any client.
    PhaseSaved,
    /// A restarted coordinator resumed an attempt from its saved state.
    AttemptResumed,
    /// Too few eligible clients remain for a round on the current checkpoint.
    TaskStalled,
    /// An operator re-published the model above every version a client reported (with the
    /// operator's identity and reason); the `checkpoint` entry of the new version follows.
    ModelRepublished,
    /// A client's complaints (protocol v2): each complaint, its judgement, and the evidence
    /// judging it took (`record`, which `audit verify` judges again).
    Complaints,
    /// The clients phase 1½ excluded (E; protocol v2).
    Excluded,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When it happened, in unix milliseconds, as given by the caller.
    #[serde(rename = "time")]
    pub time_ms: u64,
    /// What happened.
    pub kind: EntryKind,
    /// The caller's ids and counts; never key material or client vectors.
    pub detail: serde_json::Value,
    /// Lowercase hex SHA-256 of the previous line (of [`GENESIS`] for entry 0).
    pub prev: String,
}

/// SHA-256 of one entry's exact line bytes (without the newline).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// The hash as lowercase hex, as it appears in `prev` and in the head file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntryHash({})", self.to_hex())
    }
}

/// What [`verify`] found in an intact log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries in the log.
    pub entries: u64,
    /// Complaints judged again (protocol v2), each to the judgement recorded.
    pub complaints: u64,
    /// Hash of the last entry (the genesis hash for an empty log), as the signed head states.
    pub head_hash: [u8; 32],
}

/// Why an audit log or its head was refused. File errors name the file, line errors the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line is not a complete audit entry (bad JSON, unknown or missing field, no newline).
    #[error("{}:{line}: not an audit entry: {reason}", path.display())]
    Malformed {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The head file is not a canonical signed head.
    #[error("{}: not an audit head: {reason}", path.display())]
    MalformedHead {
        /// The head file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A line's `prev` is not the hash of the line before it: something before it changed.
    #[error("{}:{line}: `prev` is not the SHA-256 of the line before; the chain is broken", path.display())]
    BrokenChain {
        /// The log file.
        path: PathBuf,
        /// 1-based line number of the entry whose `prev` does not match.
        line: u64,
    },
    /// A line's `seq` does not follow the previous one.
    #[error("{}:{line}: expected seq {expected}, found {got}", path.display())]
    SequenceGap {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The seq that line must carry.
        expected: u64,
        /// The seq it carries.
        got: u64,
    },
    /// The signed head does not end the log: lines were removed from the end, appended
    /// without the coordinator key, or the last line was changed.
    #[error(
        "{}: the signed head covers {head_entries} entries, but {} has {log_entries} entries or another last entry",
        head.display(),
        path.display()
    )]
    HeadMismatch {
        /// The log file.
        path: PathBuf,
        /// The head file.
        head: PathBuf,
        /// Entries the head says the log has.
        head_entries: u64,
        /// Entries the log has.
        log_entries: u64,
    },
    /// The head's signature does not verify under the trusted coordinator key.
    #[error("{}: the head signature does not verify under the coordinator's key", path.display())]
    BadHeadSignature {
        /// The head file.
        path: PathBuf,
    },
    /// The head's signature verifies, but its `public_key` field names another key.
    #[error("{}: the head names a public key other than the coordinator's", path.display())]
    HeadKeyMismatch {
        /// The head file.
        path: PathBuf,
    },
    /// The log has entries but no head file: its end cannot be checked.
    #[error("{}: the signed head is missing", path.display())]
    MissingHead {
        /// The head file that should exist.
        path: PathBuf,
    },
    /// The head file exists but its log does not.
    #[error("{}: the audit log is missing, but its signed head exists", path.display())]
    MissingLog {
        /// The log file that should exist.
        path: PathBuf,
    },
    /// More entries in one batch than [`MAX_RECOVERED_LINES`].
    #[error("{entries} entries in one batch; at most {MAX_RECOVERED_LINES}")]
    BatchTooLarge {
        /// Entries in the batch.
        entries: usize,
    },
    /// An earlier append failed part-way, so the file's end is unknown; reopen to re-verify.
    #[error("{}: an earlier append failed; reopen the log to verify it before appending", path.display())]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
}

/// The head file of a log: the log's path with `.head` appended (`audit.jsonl.head`).
pub fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// SHA-256 of [`GENESIS`]: the `prev` of entry 0 and the hash in an empty log's head.
pub fn genesis_hash() -> [u8; 32] {
    Sha256::digest(GENESIS).into()
}

/// An open audit log that appends entries and keeps the signed head in step.
///
/// One `AuditLog` per file: two writers on the same file would break the chain.
pub struct AuditLog {
    path: PathBuf,
    head: PathBuf,
    file: File,
    key: SigningKey,
    entries: u64,
    last_hash: [u8; 32],
    poisoned: bool,
    /// Bytes of the file up to the end of the last entry.
    len: u64,
    recovered: Option<Recovery>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .field("last_hash", &EntryHash(self.last_hash))
            .field("public_key", &hex::encode(self.key.verifying_key().as_bytes()))
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log at `path`, creating it and its signed head if neither exists (or if the
    /// log is empty and has no head yet). An existing log is verified against its head under
    /// `key`'s public half first; a broken log is refused with the error naming file and line.
    /// A log left by a crash between its lines and its head is recovered (see the
    /// [module docs](self) and [`recovered`](Self::recovered)).
    pub fn open(path: &Path, key: SigningKey) -> Result<AuditLog, AuditError> {
        let head = head_path(path);
        let log_exists = path.try_exists().map_err(io_error(path))?;
        let head_exists = head.try_exists().map_err(io_error(&head))?;
        let (entries, last_hash, len, recovered) = match (log_exists, head_exists) {
            (true, true) => {
                let (head_seq, head_hash) = read_head(&head, &key.verifying_key())?;
                let tail = scan(path, &head, head_seq, &head_hash)?;
                let head_entries = head_seq.map_or(0, |s| s + 1);
                if tail.entries == head_entries && tail.torn_bytes == 0 {
                    (tail.entries, tail.last_hash, tail.valid_len, None)
                } else {
                    if tail.torn_bytes > 0 {
                        let file =
                            OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
                        file.set_len(tail.valid_len).map_err(io_error(path))?;
                        file.sync_all().map_err(io_error(path))?;
                    }
                    let recovery = Recovery {
                        head_entries,
                        lines_accepted: tail.entries - head_entries,
                        torn_bytes: tail.torn_bytes,
                    };
                    (tail.entries, tail.last_hash, tail.valid_len, Some(recovery))
                }
            }
            (false, true) => return Err(AuditError::MissingLog { path: path.to_owned() }),
            (true, false) => {
                // An empty log without a head is what a crash right after creation leaves.
                if fs::metadata(path).map_err(io_error(path))?.len() != 0 {
                    return Err(AuditError::MissingHead { path: head });
                }
                write_head(&head, &key, None, &genesis_hash())?;
                (0, genesis_hash(), 0, None)
            }
            (false, false) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.sync_all().map_err(io_error(path))?;
                sync_parent(path)?;
                write_head(&head, &key, None, &genesis_hash())?;
                (0, genesis_hash(), 0, None)
            }
        };
        let file = OpenOptions::new().append(true).open(path).map_err(io_error(path))?;
        let mut log = AuditLog {
            path: path.to_owned(),
            head,
            file,
            key,
            entries,
            last_hash,
            poisoned: false,
            len,
            recovered: None,
        };
        if let Some(r) = recovered {
            tracing::warn!(
                log = %path.display(),
                head_entries = r.head_entries,
                lines_accepted = r.lines_accepted,
                torn_bytes = r.torn_bytes,
                "audit log recovered after a crash between its lines and its head"
            );
            let detail = serde_json::json!({
                "head_entries": r.head_entries,
                "lines_accepted": r.lines_accepted,
                "torn_bytes_cut": r.torn_bytes,
            });
            // One batch of one line: its sync also flushes the accepted lines, which a killed
            // process may have left unsynced, and one new head covers them and it together —
            // so no head ever covers the accepted lines without the entry that names them.
            log.append(EntryKind::AuditRecovered, detail, unix_ms())?;
            log.recovered = Some(r);
        }
        Ok(log)
    }

    /// What [`open`](Self::open) recovered, if the log needed it.
    pub fn recovered(&self) -> Option<Recovery> {
        self.recovered
    }

    /// Opens this log's file again after a failed append poisoned this handle: lines past the
    /// signed head are the failed batch's (never acknowledged, still queued by the caller) and
    /// are cut off, then the log is verified as [`open`](Self::open) does.
    pub fn reopen(&self) -> Result<AuditLog, AuditError> {
        let (head_seq, head_hash) = read_head(&self.head, &self.key.verifying_key())?;
        let tail = scan(&self.path, &self.head, head_seq, &head_hash)?;
        if tail.valid_len + tail.torn_bytes > tail.head_len {
            let file =
                OpenOptions::new().write(true).open(&self.path).map_err(io_error(&self.path))?;
            file.set_len(tail.head_len).map_err(io_error(&self.path))?;
            file.sync_all().map_err(io_error(&self.path))?;
        }
        AuditLog::open(&self.path, self.key.clone())
    }

    /// Whether an append failed in a way that left the file's end unknown.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Appends one entry at `time_ms` (unix milliseconds; the caller owns the clock), syncs it
    /// to disk, then atomically replaces the signed head. Returns the new entry's hash.
    ///
    /// `detail` holds ids and counts only, never key material or client vectors. See
    /// [`append_batch`](Self::append_batch) for what a failure leaves.
    pub fn append(
        &mut self,
        kind: EntryKind,
        detail: serde_json::Value,
        time_ms: u64,
    ) -> Result<EntryHash, AuditError> {
        let hashes = self.append_batch([(kind, detail, time_ms)])?;
        Ok(hashes[0])
    }

    /// Appends entries (each `(kind, detail, time_ms)`) with one write and one sync, then
    /// replaces the signed head once: a batch costs the fsyncs of one entry. Returns the new
    /// entries' hashes. At most [`MAX_RECOVERED_LINES`] entries (more is refused with
    /// [`AuditError::BatchTooLarge`]).
    ///
    /// If a step fails before the new head replaces the old, the lines are cut off again and
    /// the log is as it was: the same entries can be appended later. If that cut fails too, the
    /// log refuses further appends ([`AuditError::Poisoned`]) until reopened
    /// ([`reopen`](Self::reopen)). A head renamed into place whose directory could not be
    /// synced counts as written: its lines are synced, and should the rename be lost in a
    /// crash, [`open`](Self::open) recovers them.
    pub fn append_batch(
        &mut self,
        entries: impl IntoIterator<Item = (EntryKind, serde_json::Value, u64)>,
    ) -> Result<Vec<EntryHash>, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned { path: self.path.clone() });
        }
        let mut bytes = Vec::new();
        let mut hashes = Vec::new();
        let mut last_hash = self.last_hash;
        for (kind, detail, time_ms) in entries {
            let seq = self.entries + hashes.len() as u64;
            let entry = AuditEntry { seq, time_ms, kind, detail, prev: hex::encode(last_hash) };
            let start = bytes.len();
            serde_json::to_writer(&mut bytes, &entry)
                .expect("an entry of integers, strings and a JSON value always serializes");
            last_hash = Sha256::digest(&bytes[start..]).into();
            bytes.push(b'\n');
            hashes.push(EntryHash(last_hash));
        }
        if hashes.is_empty() {
            return Ok(hashes);
        }
        if hashes.len() as u64 > MAX_RECOVERED_LINES {
            return Err(AuditError::BatchTooLarge { entries: hashes.len() });
        }
        let last_seq = self.entries + hashes.len() as u64 - 1;
        let written = self.write_lines(&bytes).and_then(|()| {
            match write_head(&self.head, &self.key, Some(last_seq), &last_hash) {
                Ok(()) => Ok(()),
                Err(HeadWriteError::BeforeRename(e)) => Err(e),
                // The lines are synced and the new head is in place; should the rename not
                // survive a crash, the old head and the synced lines are what `open` recovers.
                Err(HeadWriteError::AfterRename(e)) => {
                    tracing::warn!(error = %e, "audit head written, its directory not synced");
                    Ok(())
                }
            }
        });
        if let Err(e) = written {
            // Undo: no head names the lines yet.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.entries = last_seq + 1;
        self.last_hash = last_hash;
        self.len += bytes.len() as u64;
        Ok(hashes)
    }

    fn write_lines(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        self.file.write_all(bytes).map_err(io_error(&self.path))?;
        self.file.flush().map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))
    }

    /// Number of entries in the log.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Hash of the last entry (the genesis hash while the log is empty).
    pub fn last_hash(&self) -> EntryHash {
        EntryHash(self.last_hash)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Verifies the log at `log` against its signed head at `head`.
///
/// `key` must come from a trusted source (the operator's copy of the coordinator's public
/// key), never from the head file: a head signed by another key fails even if it names that
/// key. Checks that the head is canonical and signed by `key`, that every line parses, that
/// seqs run 0, 1, 2… and every `prev` matches, and that the head's seq and hash are the last
/// line's. Reads the log line by line, so its size is not bounded by memory.
pub fn verify(log: &Path, head: &Path, key: &VerifyingKey) -> Result<VerifyReport, AuditError> {
    let (head_seq, head_hash) = read_head(head, key)?;
    let tail = scan(log, head, head_seq, &head_hash)?;
    let head_entries = head_seq.map_or(0, |s| s.saturating_add(1));
    if tail.torn_bytes > 0 {
        return Err(AuditError::Malformed {
            path: log.to_owned(),
            line: tail.entries + 1,
            reason: "the line has no newline (an interrupted write?)".into(),
        });
    }
    if tail.entries != head_entries {
        return Err(AuditError::HeadMismatch {
            path: log.to_owned(),
            head: head.to_owned(),
            head_entries,
            log_entries: tail.entries,
        });
    }
    let complaints = rejudge_complaints(log)?;
    Ok(VerifyReport { entries: tail.entries, complaints, head_hash: tail.last_hash })
}

/// Judges again every complaint the log records ([`EntryKind::Complaints`]) from the evidence
/// the entry holds, and refuses the log at the first one whose recorded judgement is not the
/// one the rules give; returns how many were judged.
fn rejudge_complaints(log: &Path) -> Result<u64, AuditError> {
    use fedsec_crypto::secagg::complaints::{AuditedComplaints, rejudge};
    let file = File::open(log).map_err(io_error(log))?;
    let mut judged = 0;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(io_error(log))?;
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else { continue };
        if entry.kind != EntryKind::Complaints {
            continue;
        }
        let malformed = |reason: String| AuditError::Malformed {
            path: log.to_owned(),
            line: i as u64 + 1,
            reason,
        };
        let bytes = entry.detail["record"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| malformed("a complaints entry without its record".into()))?;
        let record: AuditedComplaints = fedsec_crypto::secagg::messages::decode(&bytes)
            .map_err(|e| malformed(format!("the complaints record does not decode: {e}")))?;
        rejudge(&record).map_err(|e| malformed(format!("a complaint does not hold up: {e}")))?;
        judged += record.message.complaints.len() as u64;
    }
    Ok(judged)
}

/// What the log says of one attempt: its [`EntryKind::PhaseSaved`] entries (each phase, 0–4,
/// the saved state's SHA-256 and the entry's tag, hex, in log order) and whether the attempt
/// ended (completed or aborted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptHistory {
    /// Every phase saved, with the state's SHA-256 and the entry's tag (hex), in log order.
    pub saved: Vec<(u64, String, String)>,
    /// A `round_completed` or `round_aborted` entry names the attempt.
    pub ended: bool,
}

/// Reads `log` line by line for the entries of the attempt `attempt` (hex nonce) of `task`
/// (hex id). Lines that do not parse (a torn last line) are skipped: the log's integrity is
/// [`verify`]'s and [`AuditLog::open`]'s to judge.
pub fn attempt_history(
    log: &Path,
    task: &str,
    attempt: &str,
) -> Result<AttemptHistory, AuditError> {
    let file = File::open(log).map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
    let mut history = AttemptHistory::default();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else { continue };
        let d = &entry.detail;
        if d["task"] != task || d["attempt"] != attempt {
            continue;
        }
        match entry.kind {
            EntryKind::PhaseSaved => {
                if let (Some(phase), Some(sha)) = (d["phase"].as_u64(), d["state_sha256"].as_str())
                {
                    let tag = d["tag"].as_str().unwrap_or_default().to_owned();
                    history.saved.push((phase, sha.to_owned(), tag));
                }
            }
            EntryKind::RoundCompleted | EntryKind::RoundAborted => history.ended = true,
            _ => {}
        }
    }
    Ok(history)
}

/// The last attempt of `task` (hex id) that the log says started and never says ended, as
/// (round, hex nonce): an attempt a coordinator was running when it stopped.
pub fn unfinished_attempt(log: &Path, task: &str) -> Result<Option<(u64, String)>, AuditError> {
    let file = File::open(log).map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
    let mut open = None;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else { continue };
        let d = &entry.detail;
        if d["task"] != task {
            continue;
        }
        let attempt = d["attempt"].as_str().map(str::to_owned);
        match entry.kind {
            EntryKind::RoundStarted => {
                open = attempt.map(|a| (d["round"].as_u64().unwrap_or(0), a));
            }
            EntryKind::RoundCompleted | EntryKind::RoundAborted
                if attempt.is_some() && open.as_ref().map(|(_, a)| a) == attempt.as_ref() =>
            {
                open = None;
            }
            _ => {}
        }
    }
    Ok(open)
}

/// The highest checkpoint version of `task` (hex id) the log records (`checkpoint` entries; 0
/// if none): every version this coordinator signed and stored, whatever its store holds now.
pub fn highest_checkpoint(log: &Path, task: &str) -> Result<u64, AuditError> {
    let file = File::open(log).map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
    let mut highest = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| AuditError::Io { path: log.to_owned(), source })?;
        let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else { continue };
        if entry.kind == EntryKind::Checkpoint && entry.detail["task"] == task {
            highest = highest.max(entry.detail["version"].as_u64().unwrap_or(0));
        }
    }
    Ok(highest)
}

/// The head file as stored. Hex fields are lowercase; the file is compact JSON and a newline.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFile {
    /// Seq of the last entry; `null` for an empty log.
    seq: Option<u64>,
    hash: String,
    public_key: String,
    signature: String,
}

impl HeadFile {
    fn encode(seq: Option<u64>, hash: &[u8; 32], public_key: &[u8; 32], sig: &[u8; 64]) -> Vec<u8> {
        let head = HeadFile {
            seq,
            hash: hex::encode(hash),
            public_key: hex::encode(public_key),
            signature: hex::encode(sig),
        };
        let mut bytes = serde_json::to_vec(&head)
            .expect("a struct of an integer and strings always serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// The bytes a head signature covers: `HEAD_LABEL ‖ seq ‖ hash`, each length-prefixed; the
/// seq of an empty log is the empty string.
fn head_message(seq: Option<u64>, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * 8 + HEAD_LABEL.len() + 8 + 32);
    push_lp(&mut out, HEAD_LABEL);
    match seq {
        Some(seq) => push_lp(&mut out, &seq.to_be_bytes()),
        None => push_lp(&mut out, &[]),
    }
    push_lp(&mut out, hash);
    out
}

/// How writing the head failed: before the new head replaced the old (the old one stands), or
/// after (the new one is in place, its directory not synced).
#[derive(Debug)]
enum HeadWriteError {
    BeforeRename(AuditError),
    AfterRename(AuditError),
}

impl From<HeadWriteError> for AuditError {
    fn from(e: HeadWriteError) -> Self {
        match e {
            HeadWriteError::BeforeRename(e) | HeadWriteError::AfterRename(e) => e,
        }
    }
}

/// Signs and writes the head: a temporary file in the same directory, synced, then renamed
/// over the old head, then the directory synced, so a reader sees the old head or the new.
fn write_head(
    path: &Path,
    key: &SigningKey,
    seq: Option<u64>,
    hash: &[u8; 32],
) -> Result<(), HeadWriteError> {
    let signature = key.sign(&head_message(seq, hash));
    let bytes = HeadFile::encode(seq, hash, key.verifying_key().as_bytes(), &signature.to_bytes());
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let before = HeadWriteError::BeforeRename;
    let mut file = File::create(&tmp).map_err(io_error(&tmp)).map_err(before)?;
    file.write_all(&bytes).map_err(io_error(&tmp)).map_err(before)?;
    file.sync_all().map_err(io_error(&tmp)).map_err(before)?;
    fs::rename(&tmp, path).map_err(io_error(path)).map_err(before)?;
    sync_parent(path).map_err(HeadWriteError::AfterRename)
}

/// The complete lines of a log, checked against its head by [`scan`].
struct Tail {
    /// Complete lines (entries), all chained from the genesis.
    entries: u64,
    /// Hash of the last complete line (the genesis hash if none).
    last_hash: [u8; 32],
    /// Bytes up to the end of the last complete line.
    valid_len: u64,
    /// Bytes up to the end of the line the head names.
    head_len: u64,
    /// Bytes after it with no newline (a torn last line), past the head.
    torn_bytes: u64,
}

/// Reads `log` line by line: every complete line must parse, follow in seq and chain, and the
/// line the head names must hash to `head_hash`. Past the head, at most one batch
/// ([`MAX_RECOVERED_LINES`]) and a recovery entry of complete lines, and one torn last line,
/// are allowed; a log shorter than its head is refused.
fn scan(
    log: &Path,
    head: &Path,
    head_seq: Option<u64>,
    head_hash: &[u8; 32],
) -> Result<Tail, AuditError> {
    let head_entries = head_seq.map_or(0, |s| s.saturating_add(1));
    let mismatch = |log_entries| AuditError::HeadMismatch {
        path: log.to_owned(),
        head: head.to_owned(),
        head_entries,
        log_entries,
    };
    let file = File::open(log).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AuditError::MissingLog { path: log.to_owned() },
        _ => AuditError::Io { path: log.to_owned(), source: e },
    })?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut tail =
        Tail { entries: 0, last_hash: genesis_hash(), valid_len: 0, head_len: 0, torn_bytes: 0 };
    if head_entries == 0 && tail.last_hash != *head_hash {
        return Err(mismatch(0));
    }
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(io_error(log))?;
        if read == 0 {
            break;
        }
        let line = tail.entries + 1;
        let malformed =
            |reason: String| AuditError::Malformed { path: log.to_owned(), line, reason };
        let Some(body) = buf.strip_suffix(b"\n") else {
            if tail.entries < head_entries {
                return Err(malformed("the line has no newline (an interrupted write?)".into()));
            }
            tail.torn_bytes = read as u64;
            break;
        };
        let entry: AuditEntry =
            serde_json::from_slice(body).map_err(|e| malformed(json_reason(&e)))?;
        if entry.seq != tail.entries {
            return Err(AuditError::SequenceGap {
                path: log.to_owned(),
                line,
                expected: tail.entries,
                got: entry.seq,
            });
        }
        if entry.prev != hex::encode(tail.last_hash) {
            return Err(AuditError::BrokenChain { path: log.to_owned(), line });
        }
        tail.last_hash = Sha256::digest(body).into();
        tail.entries = line;
        tail.valid_len += read as u64;
        if tail.entries == head_entries {
            tail.head_len = tail.valid_len;
        }
        let head_line_differs = tail.entries == head_entries && tail.last_hash != *head_hash;
        // One batch, and the recovery entry a crash may have left after it.
        if head_line_differs || tail.entries > head_entries + MAX_RECOVERED_LINES + 1 {
            return Err(mismatch(tail.entries));
        }
    }
    if tail.entries < head_entries {
        return Err(mismatch(tail.entries));
    }
    Ok(tail)
}

/// Reads the head, checks it is canonical and signed by `key`; returns its seq and hash.
fn read_head(path: &Path, key: &VerifyingKey) -> Result<(Option<u64>, [u8; 32]), AuditError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => AuditError::MissingHead { path: path.to_owned() },
        _ => AuditError::Io { path: path.to_owned(), source: e },
    })?;
    let malformed = |reason: String| AuditError::MalformedHead { path: path.to_owned(), reason };
    let head: HeadFile = serde_json::from_slice(&bytes).map_err(|e| malformed(json_reason(&e)))?;
    let mut hash = [0u8; 32];
    let mut public_key = [0u8; 32];
    let mut signature = [0u8; 64];
    for (name, text, out) in [
        ("hash", &head.hash, &mut hash[..]),
        ("public_key", &head.public_key, &mut public_key[..]),
        ("signature", &head.signature, &mut signature[..]),
    ] {
        hex::decode_to_slice(text, out).map_err(|e| malformed(format!("`{name}`: {e}")))?;
    }
    // Only the bytes this code writes are accepted (no extra whitespace, no uppercase hex),
    // so every change to the head file is an error, not just the changes that matter.
    if bytes != HeadFile::encode(head.seq, &hash, &public_key, &signature) {
        return Err(malformed("not in canonical form".into()));
    }
    key.verify_strict(&head_message(head.seq, &hash), &Signature::from_bytes(&signature))
        .map_err(|_| AuditError::BadHeadSignature { path: path.to_owned() })?;
    if public_key != key.to_bytes() {
        return Err(AuditError::HeadKeyMismatch { path: path.to_owned() });
    }
    Ok((head.seq, hash))
}

/// A serde_json error without its "at line 1 column N" suffix (each record is one line),
/// with the column kept.
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    format!("{message} (column {})", e.column())
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_owned(), source }
}

/// Syncs the directory holding `path`, so a created or renamed file survives a crash.
#[cfg(unix)]
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Elsewhere a directory cannot be opened to sync it, so the rename is left to the OS.
#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> Result<(), AuditError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use serde_json::json;

    use super::*;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    /// A log of `n` entries in a fresh directory, written under `key(1)`.
    fn write_log(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        for i in 0..n {
            log.append(
                EntryKind::RoundCompleted,
                json!({ "round": i, "survivors": 97 }),
                1_000 + i,
            )
            .unwrap();
        }
        (dir, path)
    }

    fn verify_with(path: &Path, seed: u64) -> Result<VerifyReport, AuditError> {
        verify(path, &head_path(path), &key(seed).verifying_key())
    }

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let bytes = fs::read(path).unwrap();
        bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
    }

    /// The complaints of a round in which client 2 deals client 5 a share that does not
    /// decrypt, as the protocol server records them for the log.
    fn complaints_of_a_round() -> Vec<fedsec_crypto::secagg::complaints::AuditedComplaints> {
        use fedsec_crypto::secagg::client::{ContributionLedger, SecAggClient, hazmat};
        use fedsec_crypto::secagg::driver::{make_plan, stand_in_trained_on};
        use fedsec_crypto::secagg::server::SecAggServer;
        use fedsec_crypto::sign::{IdentityKey, RawKeyCredentials};
        use fedsec_crypto::{AdversaryClass, CheckpointHash, GraphKind};
        use std::sync::Arc;
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let keys: Vec<Arc<IdentityKey>> =
            (0..10).map(|_| Arc::new(IdentityKey::generate(&mut rng))).collect();
        let mut ids: Vec<_> = keys.iter().map(|k| k.id()).collect();
        let plan = make_plan(
            &mut ids,
            GraphKind::Complete,
            200_000,
            50_000,
            AdversaryClass::SemiMalicious,
            4,
            CheckpointHash([1; 32]),
            &mut rng,
        )
        .unwrap();
        let mut keys = keys;
        keys.sort_by_key(|k| k.id());
        let verifier = Arc::new(RawKeyCredentials);
        let policy = fedsec_crypto::secagg::client::ClientPolicy {
            min_clients: 2,
            min_surviving: 1,
            ..Default::default()
        };
        let mut clients: Vec<SecAggClient> = keys
            .iter()
            .map(|k| {
                let on = stand_in_trained_on(&plan, 0);
                SecAggClient::new(
                    k.clone(),
                    verifier.clone(),
                    &policy,
                    plan.clone(),
                    &on,
                    &ContributionLedger::default(),
                )
                .unwrap()
            })
            .collect();
        hazmat::deal_bad_share(&mut clients[2], ids[5], hazmat::BadShare::Undecryptable);
        let mut server = SecAggServer::new(plan.clone(), verifier).unwrap();
        for c in &clients {
            server.receive_advertise(c.advertise().client, c.advertise().clone()).unwrap();
        }
        let fwd = server.close_advertise().unwrap();
        for (c, f) in clients.iter_mut().zip(&fwd) {
            let m = c.handle_keys(f).unwrap();
            server.receive_share_keys(m.client, m).unwrap();
        }
        let fwd = server.close_share_keys().unwrap();
        for (c, f) in clients.iter_mut().zip(&fwd) {
            let m = c.handle_shares(f).unwrap();
            server.receive_complaints(m.client, m).unwrap();
        }
        server.close_complaints().unwrap();
        server.audited_complaints()
    }

    /// `audit verify` judges every recorded complaint again from the evidence its entry holds,
    /// and refuses a log whose judgement, evidence or signature was changed — naming the line.
    #[test]
    fn verify_judges_every_recorded_complaint_again() {
        use fedsec_crypto::secagg::complaints::Judgement;
        let records = complaints_of_a_round();
        assert_eq!(records.len(), 1, "the one holder of a bad share complained");
        assert!(records[0].judged()[0].judgement.upheld());
        let write = |record: &fedsec_crypto::secagg::complaints::AuditedComplaints| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let mut log = AuditLog::open(&path, key(1)).unwrap();
            log.append(EntryKind::RoundStarted, json!({ "round": 1 }), 1).unwrap();
            let hex = hex::encode(fedsec_crypto::secagg::messages::encode(record));
            log.append(EntryKind::Complaints, json!({ "round": 1, "record": hex }), 2).unwrap();
            (dir, path)
        };
        let (_d, path) = write(&records[0]);
        let report = verify_with(&path, 1).unwrap();
        assert_eq!((report.entries, report.complaints), (2, 1));
        // A judgement written otherwise than the rules give.
        let mut lied = records[0].clone();
        lied.accused[0].judgement =
            Judgement::False(fedsec_crypto::secagg::complaints::Unfounded::ShareOk);
        // Evidence changed after the fact (the complaint's ciphertext).
        let mut changed = records[0].clone();
        changed.message.complaints[0].dealt.ciphertext[0] ^= 1;
        // The accused's keys swapped for the complainer's.
        let mut keys = records[0].clone();
        keys.accused[0].keys.as_mut().unwrap().0 = keys.complainer_identity_key;
        for (bad, reason) in [
            (lied, "was judged false"),
            (changed, "is not signed by it"),
            (keys, "is not valid or not the client's"),
        ] {
            let (_d, path) = write(&bad);
            match verify_with(&path, 1) {
                Err(AuditError::Malformed { line: 2, reason: r, .. }) => {
                    assert!(r.contains(reason), "{r}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn written_log_verifies_and_chains_by_line_hash() {
        let (_dir, path) = write_log(5);
        let report = verify_with(&path, 1).unwrap();
        assert_eq!(report.entries, 5);
        let lines = lines(&path);
        assert_eq!(lines.len(), 5);
        let first: AuditEntry = serde_json::from_slice(&lines[0]).unwrap();
        assert_eq!(first.prev, hex::encode(genesis_hash()));
        assert_eq!(first.kind, EntryKind::RoundCompleted);
        assert_eq!(first.time_ms, 1_000);
        for (i, pair) in lines.windows(2).enumerate() {
            let next: AuditEntry = serde_json::from_slice(&pair[1]).unwrap();
            assert_eq!(next.seq, i as u64 + 1);
            assert_eq!(next.prev, hex::encode(Sha256::digest(&pair[0])));
        }
        assert_eq!(report.head_hash, <[u8; 32]>::from(Sha256::digest(&lines[4])));
        let text = String::from_utf8(lines[0].clone()).unwrap();
        assert!(text.starts_with(r#"{"seq":0,"time":1000,"kind":"round_completed","#), "{text}");
    }

    #[test]
    fn every_single_bit_flip_in_the_log_fails() {
        let (_dir, path) = write_log(5);
        let original = fs::read(&path).unwrap();
        for pos in 0..original.len() {
            for bit in 0..8 {
                let mut tampered = original.clone();
                tampered[pos] ^= 1 << bit;
                fs::write(&path, &tampered).unwrap();
                assert!(verify_with(&path, 1).is_err(), "flip of bit {bit} at byte {pos} passed");
            }
        }
        fs::write(&path, &original).unwrap();
        assert_eq!(verify_with(&path, 1).unwrap().entries, 5);
    }

    #[test]
    fn every_single_bit_flip_in_the_head_fails() {
        let (_dir, path) = write_log(2);
        let head = head_path(&path);
        let original = fs::read(&head).unwrap();
        for pos in 0..original.len() {
            for bit in 0..8 {
                let mut tampered = original.clone();
                tampered[pos] ^= 1 << bit;
                fs::write(&head, &tampered).unwrap();
                assert!(verify_with(&path, 1).is_err(), "flip of bit {bit} at byte {pos} passed");
            }
        }
    }

    #[test]
    fn changed_line_is_reported_at_the_next_line() {
        let (_dir, path) = write_log(5);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen(r#""round":1,"#, r#""round":7,"#, 1)).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(matches!(err, AuditError::BrokenChain { line: 3, .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}:3:", path.display())), "{err}");
    }

    #[test]
    fn deleting_the_last_line_fails() {
        let (_dir, path) = write_log(5);
        let kept: Vec<u8> =
            lines(&path)[..4].iter().flat_map(|l| [&l[..], b"\n"].concat()).collect();
        fs::write(&path, kept).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(
            matches!(err, AuditError::HeadMismatch { head_entries: 5, log_entries: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn line_appended_without_the_key_fails() {
        let (_dir, path) = write_log(3);
        let last = lines(&path).pop().unwrap();
        let forged = AuditEntry {
            seq: 3,
            time_ms: 5,
            kind: EntryKind::Admin,
            detail: json!({}),
            prev: hex::encode(Sha256::digest(&last)),
        };
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend(serde_json::to_vec(&forged).unwrap());
        bytes.push(b'\n');
        fs::write(&path, bytes).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(
            matches!(err, AuditError::HeadMismatch { head_entries: 3, log_entries: 4, .. }),
            "{err:?}"
        );
        // Opening takes it as the end of an interrupted batch, and says so in the log.
        let log = AuditLog::open(&path, key(1)).unwrap();
        let recovery = Recovery { head_entries: 3, lines_accepted: 1, torn_bytes: 0 };
        assert_eq!(log.recovered(), Some(recovery));
        assert_recovery_entry(&path, 4, 3, 1, 0);
    }

    /// The log verifies with a recovery entry at `seq` saying what was accepted and cut.
    fn assert_recovery_entry(path: &Path, seq: usize, head: u64, accepted: u64, torn: u64) {
        assert_eq!(verify_with(path, 1).unwrap().entries, seq as u64 + 1);
        let entry: AuditEntry = serde_json::from_slice(&lines(path)[seq]).unwrap();
        assert_eq!(entry.kind, EntryKind::AuditRecovered);
        assert_eq!(
            entry.detail,
            json!({ "head_entries": head, "lines_accepted": accepted, "torn_bytes_cut": torn })
        );
    }

    /// The log of `write_log(n)` as it is after entries `n..n + more` were written by one
    /// batch but the head was not: the head is `write_log(n)`'s.
    fn crash_before_head(n: u64, more: u64) -> (tempfile::TempDir, PathBuf) {
        let (dir, path) = write_log(n);
        let head = fs::read(head_path(&path)).unwrap();
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        let mut written = 0;
        while written < more {
            let n = (more - written).min(MAX_RECOVERED_LINES);
            let batch = (written..written + n).map(|i| (EntryKind::Refusal, json!({ "i": i }), 7));
            log.append_batch(batch).unwrap();
            written += n;
        }
        drop(log);
        fs::write(head_path(&path), head).unwrap();
        (dir, path)
    }

    #[test]
    fn a_crash_between_a_batch_and_its_head_is_recovered_at_open() {
        let (_dir, path) = crash_before_head(3, 5);
        assert!(matches!(verify_with(&path, 1), Err(AuditError::HeadMismatch { .. })));
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        assert_eq!(
            log.recovered(),
            Some(Recovery { head_entries: 3, lines_accepted: 5, torn_bytes: 0 })
        );
        assert_recovery_entry(&path, 8, 3, 5, 0);
        // Appending goes on from the recovery entry.
        log.append(EntryKind::Admin, json!({}), 9).unwrap();
        assert_eq!(verify_with(&path, 1).unwrap().entries, 10);
        // Reopening an intact log recovers nothing.
        drop(log);
        assert_eq!(AuditLog::open(&path, key(1)).unwrap().recovered(), None);
    }

    #[test]
    fn a_torn_last_line_past_the_head_is_cut_and_recorded() {
        for keep in [1usize, 20, 60] {
            let (_dir, path) = crash_before_head(2, 2);
            // The second line of the batch torn after `keep` bytes.
            let bytes = fs::read(&path).unwrap();
            let line_starts: Vec<usize> = std::iter::once(0)
                .chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
                .collect();
            let torn_at = line_starts[3] + keep;
            fs::write(&path, &bytes[..torn_at]).unwrap();
            let log = AuditLog::open(&path, key(1)).unwrap();
            let recovery = Recovery { head_entries: 2, lines_accepted: 1, torn_bytes: keep as u64 };
            assert_eq!(log.recovered(), Some(recovery), "torn after {keep} bytes");
            assert_recovery_entry(&path, 3, 2, 1, keep as u64);
        }
        // Zeros where a crash left the file longer than its data: torn too.
        let (_dir, path) = write_log(2);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend([0u8; 512]);
        fs::write(&path, &bytes).unwrap();
        AuditLog::open(&path, key(1)).unwrap();
        assert_recovery_entry(&path, 2, 2, 0, 512);
    }

    #[test]
    fn recovery_accepts_nothing_else() {
        // A torn line the head covers (a changed log, not a crash).
        let (_dir, path) = write_log(3);
        let original = fs::read(&path).unwrap();
        fs::write(&path, &original[..original.len() - 1]).unwrap();
        let err = AuditLog::open(&path, key(1)).unwrap_err();
        assert!(matches!(err, AuditError::Malformed { line: 3, .. }), "{err:?}");
        // A changed line past the head breaks the chain.
        let (_dir, path) = crash_before_head(2, 3);
        let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
        fs::write(&path, text.replacen(r#"{"i":1}"#, r#"{"i":9}"#, 1)).unwrap();
        let err = AuditLog::open(&path, key(1)).unwrap_err();
        assert!(matches!(err, AuditError::BrokenChain { line: 5, .. }), "{err:?}");
        // More complete lines past the head than one batch can write.
        let (_dir, path) = write_log(1);
        let head = fs::read(head_path(&path)).unwrap();
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        for _ in 0..2 {
            let batch = (0..MAX_RECOVERED_LINES / 2 + 1).map(|i| (EntryKind::Refusal, json!(i), 1));
            log.append_batch(batch).unwrap();
        }
        drop(log);
        fs::write(head_path(&path), head).unwrap();
        let before = fs::read(&path).unwrap();
        let err = AuditLog::open(&path, key(1)).unwrap_err();
        assert!(matches!(err, AuditError::HeadMismatch { head_entries: 1, .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), before, "a refused open must not write");
    }

    #[test]
    fn reopening_after_a_failed_append_cuts_the_lines_no_head_covers() {
        let (_dir, path) = write_log(2);
        let head = fs::read(head_path(&path)).unwrap();
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        let before = fs::read(&path).unwrap();
        // A batch whose head did not make it: its lines are still in the file.
        log.append_batch((0..3).map(|i| (EntryKind::Refusal, json!({ "i": i }), 2))).unwrap();
        fs::write(head_path(&path), &head).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend(b"{\"seq\":5");
        fs::write(&path, bytes).unwrap();
        let mut again = log.reopen().unwrap();
        assert_eq!(fs::read(&path).unwrap(), before, "cut back to the head");
        assert_eq!((again.entries(), again.recovered()), (2, None));
        again.append(EntryKind::Admin, json!({}), 3).unwrap();
        assert_eq!(verify_with(&path, 1).unwrap().entries, 3);
    }

    #[test]
    fn a_recovery_entry_shares_the_head_of_the_lines_it_accepts() {
        // One full batch past the head, and the recovery entry of an earlier recovery that
        // crashed before its head: still recovered.
        let (_dir, path) = crash_before_head(1, MAX_RECOVERED_LINES + 1);
        let log = AuditLog::open(&path, key(1)).unwrap();
        let accepted = MAX_RECOVERED_LINES + 1;
        assert_eq!(log.recovered().map(|r| r.lines_accepted), Some(accepted));
        assert_recovery_entry(&path, (2 + MAX_RECOVERED_LINES) as usize, 1, accepted, 0);
    }

    #[test]
    fn a_batch_costs_one_head_and_fails_whole() {
        let (_dir, path) = write_log(1);
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        let hashes = log
            .append_batch((0..10).map(|i| (EntryKind::Enrollment, json!({ "client": i }), 1)))
            .unwrap();
        assert_eq!(hashes.len(), 10);
        assert_eq!(log.last_hash(), hashes[9]);
        assert_eq!(verify_with(&path, 1).unwrap().entries, 11);
        let too_many = (0..=MAX_RECOVERED_LINES).map(|_| (EntryKind::Admin, json!({}), 1));
        assert!(matches!(log.append_batch(too_many), Err(AuditError::BatchTooLarge { .. })));
        // The head cannot be written (its temporary file's path is a directory): the batch's
        // lines are cut off again, the log is as it was and takes the same batch later.
        let tmp = PathBuf::from(format!("{}.tmp", head_path(&path).display()));
        fs::create_dir(&tmp).unwrap();
        let before = fs::read(&path).unwrap();
        let batch = || (0..3).map(|i| (EntryKind::Refusal, json!({ "i": i }), 2));
        let err = log.append_batch(batch()).unwrap_err();
        assert!(matches!(err, AuditError::Io { .. }), "{err:?}");
        assert!(!log.is_poisoned());
        assert_eq!(fs::read(&path).unwrap(), before, "the failed batch left nothing");
        assert_eq!(verify_with(&path, 1).unwrap().entries, 11);
        fs::remove_dir(&tmp).unwrap();
        log.append_batch(batch()).unwrap();
        assert_eq!(verify_with(&path, 1).unwrap().entries, 14);
    }

    #[test]
    fn head_signed_with_another_key_fails() {
        let (_dir, path) = write_log(3);
        let report = verify_with(&path, 1).unwrap();
        // A head re-signed by another key, naming that key: still not the coordinator's.
        write_head(&head_path(&path), &key(2), Some(2), &report.head_hash).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(matches!(err, AuditError::BadHeadSignature { .. }), "{err:?}");
        // The same head verifies under the key that signed it, so only the key was wrong.
        assert_eq!(verify_with(&path, 2).unwrap(), report);
        let err = AuditLog::open(&path, key(1)).unwrap_err();
        assert!(matches!(err, AuditError::BadHeadSignature { .. }), "{err:?}");
    }

    #[test]
    fn reopening_continues_the_chain() {
        let (_dir, path) = write_log(3);
        let before = verify_with(&path, 1).unwrap();
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        assert_eq!((log.entries(), log.last_hash().0), (3, before.head_hash));
        let hash = log.append(EntryKind::Admin, json!({ "action": "reload" }), 9_000).unwrap();
        drop(log);
        let lines = lines(&path);
        let fourth: AuditEntry = serde_json::from_slice(&lines[3]).unwrap();
        assert_eq!(fourth.seq, 3);
        assert_eq!(fourth.prev, hex::encode(before.head_hash));
        let report = verify_with(&path, 1).unwrap();
        assert_eq!((report.entries, report.head_hash), (4, hash.0));
    }

    #[test]
    fn opening_a_tampered_log_refuses_to_append() {
        let (_dir, path) = write_log(5);
        let mut bytes = fs::read(&path).unwrap();
        let pos = bytes.iter().position(|&b| b == b'9').unwrap(); // "survivors":97 in line 1
        bytes[pos] = b'8';
        fs::write(&path, &bytes).unwrap();
        let err = AuditLog::open(&path, key(1)).unwrap_err();
        assert!(matches!(err, AuditError::BrokenChain { line: 2, .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "a refused open must not write");
    }

    #[test]
    fn empty_log_has_a_signed_genesis_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        drop(AuditLog::open(&path, key(1)).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"");
        let report = verify_with(&path, 1).unwrap();
        assert_eq!(report, VerifyReport { entries: 0, complaints: 0, head_hash: genesis_hash() });
        let head: serde_json::Value =
            serde_json::from_slice(&fs::read(head_path(&path)).unwrap()).unwrap();
        assert_eq!(head["seq"], serde_json::Value::Null);
        assert!(matches!(verify_with(&path, 2), Err(AuditError::BadHeadSignature { .. })));
        // Reopening the empty log and appending starts at seq 0 from the genesis hash.
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        log.append(EntryKind::TaskCreated, json!({ "task": "t1" }), 1).unwrap();
        assert_eq!(verify_with(&path, 1).unwrap().entries, 1);
    }

    #[test]
    fn missing_head_or_log_is_refused() {
        let (_dir, path) = write_log(2);
        let head = head_path(&path);
        let saved = fs::read(&head).unwrap();
        fs::remove_file(&head).unwrap();
        assert!(matches!(verify_with(&path, 1), Err(AuditError::MissingHead { .. })));
        assert!(matches!(AuditLog::open(&path, key(1)), Err(AuditError::MissingHead { .. })));
        fs::write(&head, saved).unwrap();
        fs::remove_file(&path).unwrap();
        assert!(matches!(verify_with(&path, 1), Err(AuditError::MissingLog { .. })));
        assert!(matches!(AuditLog::open(&path, key(1)), Err(AuditError::MissingLog { .. })));
    }

    #[test]
    fn torn_last_line_and_seq_gap_are_named() {
        let (_dir, path) = write_log(3);
        let original = fs::read(&path).unwrap();
        fs::write(&path, &original[..original.len() - 1]).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(matches!(err, AuditError::Malformed { line: 3, .. }), "{err:?}");
        let text = String::from_utf8(original).unwrap();
        fs::write(&path, text.replacen(r#"{"seq":1,"#, r#"{"seq":2,"#, 1)).unwrap();
        let err = verify_with(&path, 1).unwrap_err();
        assert!(
            matches!(err, AuditError::SequenceGap { line: 2, expected: 1, got: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn detail_with_newlines_stays_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, key(1)).unwrap();
        log.append(EntryKind::Refusal, json!({ "reason": "a\nb" }), 1).unwrap();
        log.append(EntryKind::Refusal, json!({ "reason": "c" }), 2).unwrap();
        assert_eq!(lines(&path).len(), 2);
        assert_eq!(verify_with(&path, 1).unwrap().entries, 2);
    }
}
