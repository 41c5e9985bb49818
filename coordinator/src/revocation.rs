//! Revocation: a reloadable deny-list of client ids.
//!
//! The file holds one client id per line, as 64 lowercase hex digits (SHA-256 of the client
//! certificate's public key); `#` starts a comment, blank lines are ignored. A denied client is
//! refused at the gRPC layer ([`crate::auth::authenticate`]) and never selected for a round.
//!
//! ```text
//! # site 7 lost its laptop, 2025-03-02
//! 3b1f0c0e9d6a4c6e8f2b7d5a1c3e9f0b2d4c6a8e0f1b3d5c7e9a0b2c4d6e8f0a
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use fedsec_crypto::ClientId;

/// What can go wrong reading a deny-list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DenyListError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A line is not a client id.
    #[error(
        "{path}:{line}: {content:?} is not a client id (64 lowercase hex digits, optionally followed by a # comment)"
    )]
    MalformedLine { path: PathBuf, line: usize, content: String },
}

/// A set of denied client ids, loaded from a file and reloadable while the server runs.
///
/// Cheap to clone: clones share the same list, so a reload is seen by all of them.
#[derive(Debug, Clone)]
pub struct DenyList {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    /// The list in force, replaced whole on a reload (readers never wait for a writer).
    ids: watch::Sender<Arc<HashSet<ClientId>>>,
}

impl DenyList {
    /// A list that denies nobody and has no file to reload.
    pub fn empty() -> Self {
        DenyList { inner: Arc::new(Inner { path: None, ids: watch::Sender::new(Arc::default()) }) }
    }

    /// Loads the list from `path`.
    pub fn load(path: &Path) -> Result<Self, DenyListError> {
        let ids = read(path)?;
        Ok(DenyList {
            inner: Arc::new(Inner {
                path: Some(path.to_path_buf()),
                ids: watch::Sender::new(Arc::new(ids)),
            }),
        })
    }

    /// Reads the file again and swaps the list in one step; returns the number of denied ids.
    ///
    /// If the file cannot be read or has a malformed line, the current list stays in force.
    pub fn reload(&self) -> Result<usize, DenyListError> {
        let Some(path) = &self.inner.path else {
            return Ok(0);
        };
        let ids = Arc::new(read(path)?);
        let count = ids.len();
        self.inner.ids.send_replace(ids);
        Ok(count)
    }

    /// Whether `id` is denied.
    pub fn contains(&self, id: &ClientId) -> bool {
        self.snapshot().contains(id)
    }

    /// The denied ids, in byte order.
    pub fn ids(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.snapshot().iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The number of denied ids.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether nobody is denied.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// The file the list is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn snapshot(&self) -> Arc<HashSet<ClientId>> {
        self.inner.ids.borrow().clone()
    }
}

fn read(path: &Path) -> Result<HashSet<ClientId>, DenyListError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| DenyListError::Io { path: path.to_path_buf(), source })?;
    parse(&text).map_err(|(line, content)| DenyListError::MalformedLine {
        path: path.to_path_buf(),
        line,
        content,
    })
}

/// Parses the file's text; on error, the 1-based line number and its content.
fn parse(text: &str) -> Result<HashSet<ClientId>, (usize, String)> {
    let mut ids = HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let id = parse_id(entry).ok_or_else(|| (index + 1, raw.to_string()))?;
        ids.insert(id);
    }
    Ok(ids)
}

fn parse_id(hex_id: &str) -> Option<ClientId> {
    if hex_id.len() != 64 || !hex_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_id, &mut bytes).ok()?;
    Some(ClientId(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3b1f0c0e9d6a4c6e8f2b7d5a1c3e9f0b2d4c6a8e0f1b3d5c7e9a0b2c4d6e8f0a";
    const B: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    fn id(hex_id: &str) -> ClientId {
        parse_id(hex_id).unwrap()
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, format!("# revoked\n\n{A}  # lost laptop\n   {B}\n")).unwrap();
        let list = DenyList::load(&path).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains(&id(A)) && list.contains(&id(B)));
        assert!(!list.contains(&ClientId([1; 32])));
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, format!("{A}\n\n{}\n", A.to_uppercase())).unwrap();
        let err = DenyList::load(&path).unwrap_err();
        assert!(matches!(err, DenyListError::MalformedLine { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("deny.txt:3"), "{err}");
        let missing = dir.path().join("missing.txt");
        let err = DenyList::load(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.txt"), "{err}");
    }

    #[test]
    fn reload_swaps_the_list_and_keeps_it_when_the_file_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let list = DenyList::load(&path).unwrap();
        let shared = list.clone();
        std::fs::write(&path, format!("{B}\n")).unwrap();
        assert_eq!(list.reload().unwrap(), 1);
        assert!(!shared.contains(&id(A)) && shared.contains(&id(B)));
        std::fs::write(&path, "not an id\n").unwrap();
        assert!(list.reload().is_err());
        assert!(shared.contains(&id(B)), "a bad file must leave the old list in force");
    }

    #[test]
    fn empty_list_denies_nobody() {
        let list = DenyList::empty();
        assert!(list.is_empty() && !list.contains(&ClientId([0; 32])));
        assert_eq!(list.reload().unwrap(), 0);
    }
}
