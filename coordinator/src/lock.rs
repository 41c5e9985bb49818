//! One coordinator per data directory: an exclusive advisory lock on `coordinator.lock`
//! beside the audit log.
//!
//! Two coordinators on the same audit log would break its hash chain, and on the same store
//! would race on checkpoint versions. [`crate::server::prepare`] takes this lock before it opens
//! or creates anything else, so a second coordinator started on the same configuration is
//! refused before it writes a byte, with the lock file and the process id that holds it.
//!
//! The lock is the operating system's (`flock` on Unix, `LockFileEx` on Windows): it is
//! released when the process exits, however it exits, so a stale lock file from a crashed
//! coordinator is harmless and is not removed (removing it would let two processes each lock a
//! different file of the same name). The file holds the process id of its latest holder, for
//! people.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file's name, in the audit log's folder.
pub const LOCK_FILE: &str = "coordinator.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock: a coordinator already runs on this data directory.
    #[error(
        "{}: another coordinator ({}) already uses this data directory; stop it first, or give this one its own audit_log and store",
        path.display(),
        holder.as_deref().map_or_else(|| "process id unknown".to_string(), |pid| format!("pid {pid}"))
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The process id the file names, if it names one.
        holder: Option<String>,
    },
    /// The folder or the lock file could not be created, opened or locked.
    #[error("{}: cannot lock: {source}", path.display())]
    Io {
        /// The lock file (or its folder).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DataLock {
    path: PathBuf,
    // Held open for the lock's lifetime: closing it releases the lock.
    _file: File,
}

/// Where the lock of a coordinator whose audit log is `audit_log` lives.
pub fn lock_path(audit_log: &Path) -> PathBuf {
    audit_log.parent().unwrap_or(Path::new(".")).join(LOCK_FILE)
}

impl DataLock {
    /// Creates the folder of `path` if needed, opens `path` and locks it exclusively without
    /// waiting; then writes this process's id into it.
    pub fn acquire(path: &Path) -> Result<DataLock, LockError> {
        let io = |source: std::io::Error| LockError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // The holder writes its pid right after locking; an empty file means it is
                // between the two, or an older version wrote nothing.
                let holder = std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                return Err(LockError::Held { path: path.to_path_buf(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataLock { path: path.to_path_buf(), _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = lock_path(&dir.path().join("data/audit.log"));
        assert_eq!(path, dir.path().join("data").join(LOCK_FILE));
        let first = DataLock::acquire(&path).unwrap();
        assert_eq!(first.path(), path);
        let pid = std::process::id().to_string();
        match DataLock::acquire(&path) {
            Err(e @ LockError::Held { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&format!("pid {pid}")), "{text}");
                assert!(text.contains("coordinator.lock"), "{text}");
            }
            other => panic!("expected the held lock, got {other:?}"),
        }
        drop(first);
        let again = DataLock::acquire(&path).unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().trim(), pid);
    }
}
