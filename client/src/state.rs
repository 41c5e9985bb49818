//! What a client keeps across restarts: the newest checkpoint version it has seen (so a
//! coordinator cannot roll it back) and the checkpoints it contributed a masked input to (so
//! it never contributes twice on one checkpoint). Written atomically before the step it guards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fedsec_wire::at_rest::{AtRestError, KeyRing, Object};
use zeroize::Zeroizing;

use fedsec_crypto::secagg::client::ContributionLedger;
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// The persisted state, per task (32 hex digits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    /// Newest checkpoint version seen, per task.
    pub last_seen_version: BTreeMap<String, u64>,
    /// Checkpoints contributed to.
    pub ledger: ContributionLedger,
}

/// The state file in a state folder, and the folder's lock: one process at a time uses a
/// state folder (two would each save their own copy of the ledger over the other's).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    /// `client.lock`, locked exclusively while this value lives (the operating system
    /// releases it when the process exits, however it exits).
    _lock: std::fs::File,
    /// Encryption at rest: the keys, and the client the file belongs to (bound to it, so
    /// another client's state cannot be put in its place).
    keys: Option<(Arc<KeyRing>, String)>,
}

impl StateFile {
    /// The file `state.json` in `dir` (created if missing), with the folder locked; refused
    /// with [`ClientError::StateInUse`] while another process holds it.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|source| ClientError::Io { path: dir.into(), source })?;
        let lock_path = dir.join("client.lock");
        let io = |source| ClientError::Io { path: lock_path.clone(), source };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ClientError::StateInUse { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(StateFile { path: dir.join("state.json"), _lock: lock, keys: None })
    }

    /// Seals the file under `keys` from now on, bound to `client` (its id, hex); a file that
    /// is not sealed, or does not open, is refused naming it.
    pub fn with_keys(mut self, keys: Arc<KeyRing>, client: String) -> Self {
        self.keys = Some((keys, client));
        self
    }

    fn object<'a>(&'a self, client: &'a str) -> Object<'a> {
        Object { purpose: "client-state", name: client, version: 0 }
    }

    /// The saved state, or the empty state if there is none yet.
    pub fn load(&self) -> Result<ClientState> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let stale = match &self.keys {
                    Some((keys, _)) => {
                        KeyRing::sealed_under(&bytes).is_some_and(|id| id != keys.current_id())
                    }
                    None => false,
                };
                let bytes = match &self.keys {
                    Some((keys, client)) => Zeroizing::new(
                        keys.open(&self.object(client), &bytes).map_err(|e| self.named(e))?,
                    ),
                    None if KeyRing::is_sealed(&bytes) => {
                        return Err(self.named(AtRestError::Key {
                            source_name: "client.toml".into(),
                            problem:
                                "the state file is encrypted, but no [encryption] key is configured"
                                    .into(),
                        }));
                    }
                    None => Zeroizing::new(bytes),
                };
                let state: ClientState = serde_json::from_slice(&bytes)
                    .map_err(|source| ClientError::State { path: self.path.clone(), source })?;
                if stale {
                    // Sealed under a previous key: sealed again under the current one at
                    // once, so the previous key can go.
                    self.save(&state)?;
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientState::default()),
            Err(source) => Err(ClientError::Io { path: self.path.clone(), source }),
        }
    }

    /// The error of a state file that did not open, naming the file.
    fn named(&self, e: AtRestError) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        }
    }

    /// Saves `state` atomically and durably: a temporary file, synced, renamed over the old
    /// one, then the directory synced so that the rename itself survives a crash (else a
    /// power loss could bring back the old ledger, without the contribution it records).
    pub fn save(&self, state: &ClientState) -> Result<()> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|source| ClientError::State { path: self.path.clone(), source })?;
        let bytes = match &self.keys {
            Some((keys, client)) => keys.seal(&self.object(client), &bytes),
            None => bytes,
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| ClientError::Io { path: dir.to_owned(), source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `[encryption]`, the state file is sealed (nothing of the ledger in its bytes),
    /// bound to its client: another client's file, a flipped bit, a wrong key and a plaintext
    /// file are refused naming the file.
    #[test]
    fn an_encrypted_state_file_is_sealed_and_bound_to_its_client() {
        use fedsec_wire::at_rest::Kek;
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyRing::new(Kek::generate(), vec![]));
        let mut state = ClientState::default();
        state.last_seen_version.insert("00112233445566778899aabbccddeeff".into(), 7);
        {
            let f = StateFile::in_dir(dir.path()).unwrap().with_keys(keys.clone(), "aa".into());
            assert_eq!(f.load().unwrap(), ClientState::default(), "none yet");
            f.save(&state).unwrap();
            assert_eq!(f.load().unwrap(), state);
        }
        let path = dir.path().join("state.json");
        let bytes = std::fs::read(&path).unwrap();
        assert!(KeyRing::is_sealed(&bytes));
        for needle in [&b"last_seen_version"[..], b"00112233445566778899aabbccddeeff"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
        let refused = |keys: Arc<KeyRing>, client: &str| {
            let f = StateFile::in_dir(dir.path()).unwrap().with_keys(keys, client.into());
            let e = f.load().unwrap_err().to_string();
            assert!(e.contains("state.json"), "{e}");
            e
        };
        // Another client's state in its place.
        assert!(refused(keys.clone(), "bb").contains("does not open"));
        // A wrong key.
        assert!(refused(Arc::new(KeyRing::new(Kek::generate(), vec![])), "aa").contains("key"));
        // A flipped bit.
        let mut bad = bytes.clone();
        bad[bytes.len() - 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        refused(keys.clone(), "aa");
        // A plaintext file where a sealed one is expected.
        std::fs::write(&path, b"{}").unwrap();
        assert!(refused(keys, "aa").contains("not encrypted"));
    }

    /// After a rotation the state file still opens under the previous key and is sealed again
    /// under the current one at once; without a key, a sealed file is refused plainly.
    #[test]
    fn a_state_file_under_a_previous_key_is_sealed_again_on_load() {
        use fedsec_wire::at_rest::Kek;
        let dir = tempfile::tempdir().unwrap();
        let old = Kek::generate();
        let old_hex = old.to_hex();
        let again = |hex: &str| {
            let mut k = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(hex, k.as_mut()).unwrap();
            Kek::new(k)
        };
        let mut state = ClientState::default();
        state.last_seen_version.insert("ab".into(), 3);
        {
            let keys = Arc::new(KeyRing::new(old, vec![]));
            StateFile::in_dir(dir.path())
                .unwrap()
                .with_keys(keys, "aa".into())
                .save(&state)
                .unwrap();
        }
        let path = dir.path().join("state.json");
        let rotated = Arc::new(KeyRing::new(Kek::generate(), vec![again(&old_hex)]));
        {
            let f = StateFile::in_dir(dir.path()).unwrap().with_keys(rotated.clone(), "aa".into());
            assert_eq!(f.load().unwrap(), state);
        }
        let now = std::fs::read(&path).unwrap();
        assert_eq!(KeyRing::sealed_under(&now), Some(rotated.current_id()));
        let e = StateFile::in_dir(dir.path()).unwrap().load().unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("no [encryption] key"), "{e}");
    }

    #[test]
    fn one_holder_of_a_state_folder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateFile::in_dir(dir.path()).unwrap();
        let second = StateFile::in_dir(dir.path());
        assert!(matches!(second, Err(ClientError::StateInUse { .. })), "{second:?}");
        drop(first);
        StateFile::in_dir(dir.path()).expect("free once the first is gone");
    }

    #[test]
    fn round_trips_and_names_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(&dir.path().join("s")).unwrap();
        assert_eq!(file.load().unwrap(), ClientState::default());
        let mut state = ClientState::default();
        state.last_seen_version.insert("ab".into(), 7);
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), state);
        std::fs::write(dir.path().join("s/state.json"), b"{").unwrap();
        let err = file.load().unwrap_err();
        assert!(
            matches!(&err, ClientError::State { path, .. } if path.ends_with("s/state.json")),
            "{err}"
        );
    }
}
