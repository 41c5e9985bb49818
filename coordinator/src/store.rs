//! Checkpoint storage on an object store: a local directory by default, memory for tests,
//! S3-compatible and cloud stores by URL with the `cloud` feature.
//!
//! Layout, per task and version:
//!
//! ```text
//! tasks/{task id, hex}/checkpoints/{version, 20 digits}.safetensors     the model
//! tasks/{task id, hex}/checkpoints/{version, 20 digits}.manifest.json   its signed manifest
//! tasks/{task id, hex}/attempt.state                                    the running attempt
//! tasks/{task id, hex}/contributors.json                                who contributed on the current checkpoint
//! tasks/{task id, hex}/definition.pb                                    an Admin-created task (its CreateTaskRequest)
//! tasks/{task id, hex}/started                                          the task was started (empty)
//! ```
//!
//! `attempt.state` is the running attempt as its last phase close left it, sealed by the
//! caller ([`crate::runtime`]); it is written over at each phase close and deleted when the
//! attempt ends.
//!
//! The manifest is the commit marker. [`CheckpointStore::put`] writes the data first and the
//! manifest second, and readers only see versions whose manifest exists, so a crash between the
//! two writes leaves nothing visible. Each write is atomic on its own: `LocalFileSystem` writes
//! to a temporary file in the target directory and renames (or, for a create-only write,
//! hard-links) it into place; cloud stores publish an object only when its upload completes.
//!
//! The store checks size and SHA-256 of what it reads against the manifest, but not the
//! manifest's signature, whose key belongs to the caller: [`CheckpointStore::get_verified`]
//! checks that too.

use std::sync::Arc;

use fedsec_wire::at_rest::{KeyRing, Object};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use fedsec_crypto::{CheckpointHash, ClientId, TaskId};
use fedsec_wire::checkpoint::{CheckpointError, SignedManifest};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Suffix of a checkpoint's data object.
const DATA_SUFFIX: &str = ".safetensors";
/// Suffix of a checkpoint's manifest object.
const MANIFEST_SUFFIX: &str = ".manifest.json";

/// Everything that can go wrong storing or loading a checkpoint. Every variant about an object
/// names its path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL has a scheme this build cannot open, or is not a URL at all.
    #[error("cannot open checkpoint store {url:?}: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    /// The local checkpoint directory could not be created.
    #[error("cannot create checkpoint directory {}: {source}", root.display())]
    CreateDir { root: std::path::PathBuf, source: std::io::Error },
    /// The object store refused to open.
    #[error("cannot open checkpoint store {url:?}: {source}")]
    Open { url: String, source: object_store::Error },
    /// A version is written at most once.
    #[error("checkpoint version {version} already exists: {path}")]
    VersionExists { version: u64, path: Path },
    /// No committed checkpoint has this version.
    #[error("no checkpoint at {path}")]
    NotFound { path: Path },
    /// The bytes handed to `put` are not the checkpoint the manifest describes.
    #[error("refusing to store {path}: the bytes do not match the manifest: {source}")]
    BytesDoNotMatchManifest { path: Path, source: CheckpointError },
    /// Stored data does not match its manifest (size or SHA-256): the data is corrupt.
    #[error("checkpoint data at {path} is corrupt: {source}")]
    Corrupt { path: Path, source: CheckpointError },
    /// A stored manifest is not valid manifest JSON.
    #[error("checkpoint manifest at {path} is malformed: {source}")]
    MalformedManifest { path: Path, source: serde_json::Error },
    /// A stored manifest describes another task or version than the one its path names.
    #[error(
        "checkpoint manifest at {path} describes version {found_version} of task {found_task}, \
         not the version and task its path names"
    )]
    MisplacedManifest { path: Path, found_version: u64, found_task: String },
    /// A stored manifest's signature does not verify under the caller's key.
    #[error("checkpoint manifest at {path} is not signed by the expected key: {source}")]
    Unverified { path: Path, source: CheckpointError },
    /// A stored record is not what its format says.
    #[error("{path} is malformed: {reason}")]
    MalformedRecord { path: Path, reason: String },
    /// The object store failed (IO, network, permissions).
    #[error("object store failed at {path}: {source}")]
    Backend { path: Path, source: object_store::Error },
    /// An encrypted object did not open (the error names it).
    #[error(transparent)]
    Sealed(#[from] fedsec_wire::at_rest::AtRestError),
    /// An object is encrypted, but no key-encryption key is configured.
    #[error("{path} is encrypted, but no [encryption] key is configured to open it")]
    NoKey { path: Path },
}

/// Versioned, signed checkpoints of every task, on any [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// The directory of a local store: its files are synced to disk by [`put`](Self::put).
    local_root: Option<std::path::PathBuf>,
    /// Encryption at rest: every object sealed under a fresh data key wrapped by this ring's
    /// KEK, and every object read opened with it (an unencrypted one is refused).
    keys: Option<Arc<KeyRing>>,
}

impl CheckpointStore {
    /// Stores checkpoints on `store`, at its root.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        CheckpointStore { store, local_root: None, keys: None }
    }

    /// Encrypts every object written from now on under `keys`, and opens every object read
    /// with them (refusing one that is not encrypted).
    pub fn with_keys(mut self, keys: Arc<KeyRing>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Whether the store encrypts at rest.
    pub fn encrypts(&self) -> bool {
        self.keys.is_some()
    }

    /// `bytes` as stored at `path`: sealed if the store encrypts.
    fn seal(&self, path: &Path, bytes: Bytes) -> Bytes {
        match &self.keys {
            Some(keys) => {
                let (purpose, version) = object_kind(path);
                let object = Object { purpose, name: path.as_ref(), version };
                Bytes::from(keys.seal(&object, &bytes))
            }
            None => bytes,
        }
    }

    /// The object stored at `path`, opened if the store encrypts.
    fn open(&self, path: &Path, stored: Bytes) -> Result<Bytes, StoreError> {
        match &self.keys {
            Some(keys) => {
                let (purpose, version) = object_kind(path);
                let object = Object { purpose, name: path.as_ref(), version };
                Ok(Bytes::from(keys.open(&object, &stored)?))
            }
            None if KeyRing::is_sealed(&stored) => Err(StoreError::NoKey { path: path.clone() }),
            None => Ok(stored),
        }
    }

    /// Re-wraps every object of the store under the current key-encryption key (after a
    /// rotation): returns how many were re-wrapped (or sealed) and how many were already under
    /// it. An object in the clear is refused, or sealed with `seal_plaintext` (to turn
    /// encryption on for a store that has run without it).
    pub async fn rewrap(&self, seal_plaintext: bool) -> Result<(usize, usize), StoreError> {
        let Some(keys) = &self.keys else {
            return Err(StoreError::NoKey { path: Path::from("tasks") });
        };
        let prefix = Path::from("tasks");
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend { path: prefix.clone(), source })?;
        let (mut moved, mut kept) = (0, 0);
        for meta in objects {
            let path = meta.location;
            let stored = self.read_raw(&path).await?;
            if KeyRing::sealed_under(&stored).as_deref() == Some(keys.current_id().as_str()) {
                kept += 1;
                continue;
            }
            let (purpose, version) = object_kind(&path);
            let object = Object { purpose, name: path.as_ref(), version };
            let rewrapped = if seal_plaintext && !KeyRing::is_sealed(&stored) {
                keys.seal(&object, &stored)
            } else {
                keys.rewrap(&object, &stored)?
            };
            self.store
                .put(&path, PutPayload::from(rewrapped))
                .await
                .map_err(|source| StoreError::Backend { path: path.clone(), source })?;
            self.sync_in_place(&path).await?;
            moved += 1;
        }
        Ok((moved, kept))
    }

    /// Opens the store a URL names:
    ///
    /// - a plain path or a `file://` URL: a local directory, created if missing;
    /// - `memory://`: an in-memory store (tests, demos), empty at start;
    /// - with the `cloud` feature, `s3://bucket/prefix`, `gs://…`, `az://…` and the https
    ///   forms `object_store` recognises, configured from the environment (`AWS_…`,
    ///   `GOOGLE_…`, `AZURE_…` variables).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let unsupported =
            |reason: String| StoreError::UnsupportedUrl { url: url.to_owned(), reason };
        if url.is_empty() {
            return Err(unsupported("the location is empty".into()));
        }
        if !url.contains("://") {
            return Self::local(std::path::Path::new(url), url);
        }
        let parsed = url::Url::parse(url).map_err(|e| unsupported(e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let root = parsed
                    .to_file_path()
                    .map_err(|()| unsupported("not an absolute local file path".into()))?;
                Self::local(&root, url)
            }
            "memory" => Ok(Self::new(Arc::new(InMemory::new()))),
            #[cfg(feature = "cloud")]
            _ => {
                if let Err(e) = object_store::ObjectStoreScheme::parse(&parsed) {
                    return Err(unsupported(e.to_string()));
                }
                let (store, prefix) = object_store::parse_url_opts(&parsed, std::env::vars())
                    .map_err(|source| StoreError::Open { url: url.to_owned(), source })?;
                let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                    Arc::from(store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                };
                Ok(Self::new(store))
            }
            #[cfg(not(feature = "cloud"))]
            other => Err(unsupported(format!(
                "scheme {other}:// is not supported; use a local path, file:// or memory:// \
                 (cloud stores need the `cloud` feature)"
            ))),
        }
    }

    /// Like [`from_url`](Self::from_url), but creates nothing: `None` when the store is a
    /// local directory that does not exist yet (so holds no checkpoint). Start-up checks what
    /// the store holds with this before anything is written.
    pub fn open_existing(url: &str) -> Result<Option<Self>, StoreError> {
        if let Some(root) = local_root(url)
            && !root
                .try_exists()
                .map_err(|source| StoreError::CreateDir { root: root.clone(), source })?
        {
            return Ok(None);
        }
        Self::from_url(url).map(Some)
    }

    /// A local directory, created if missing.
    fn local(root: &std::path::Path, url: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root)
            .map_err(|source| StoreError::CreateDir { root: root.to_owned(), source })?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .map_err(|source| StoreError::Open { url: url.to_owned(), source })?;
        let root = std::fs::canonicalize(root)
            .map_err(|source| StoreError::CreateDir { root: root.to_owned(), source })?;
        Ok(CheckpointStore { store: Arc::new(fs), local_root: Some(root), keys: None })
    }

    /// Stores a checkpoint: its data, then its manifest, which commits it.
    ///
    /// Refuses a version that already exists (the manifest is written create-only), and bytes
    /// that do not match the manifest's size and SHA-256. Data left without a manifest by an
    /// interrupted `put` is invisible and is overwritten. One writer per task is assumed (the
    /// round engine); should two race on the same version, one is refused and readers detect
    /// mismatched data by its hash.
    pub async fn put(&self, manifest: &SignedManifest, bytes: Bytes) -> Result<(), StoreError> {
        let (task, version) = (manifest.manifest.task_id, manifest.manifest.version);
        let data_path = data_path(task, version);
        let manifest_path = manifest_path(task, version);
        manifest.manifest.check_bytes(&bytes).map_err(|source| {
            StoreError::BytesDoNotMatchManifest { path: data_path.clone(), source }
        })?;
        // Checked first so that committed data is never overwritten; the create-only write of
        // the manifest below is what makes the refusal atomic.
        match self.store.head(&manifest_path).await {
            Ok(_) => return Err(StoreError::VersionExists { version, path: manifest_path }),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(StoreError::Backend { path: manifest_path, source }),
        }
        self.store
            .put(&data_path, PutPayload::from(self.seal(&data_path, bytes)))
            .await
            .map_err(|source| StoreError::Backend { path: data_path.clone(), source })?;
        // The data is on disk before the manifest that commits it exists.
        self.sync(&data_path).await?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|source| {
            StoreError::MalformedManifest { path: manifest_path.clone(), source }
        })?;
        let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let json = self.seal(&manifest_path, Bytes::from(json));
        match self.store.put_opts(&manifest_path, PutPayload::from(json), create).await {
            Ok(_) => self.sync(&manifest_path).await,
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(StoreError::VersionExists { version, path: manifest_path })
            }
            Err(source) => Err(StoreError::Backend { path: manifest_path, source }),
        }
    }

    /// Syncs the data and the manifest of a committed checkpoint to disk (after a `put` that
    /// wrote them but whose sync failed: the retry finds the version committed).
    pub async fn sync_committed(&self, task: TaskId, version: u64) -> Result<(), StoreError> {
        self.sync(&data_path(task, version)).await?;
        self.sync(&manifest_path(task, version)).await
    }

    /// Writes `path` (over what was there) in a directory already on disk, then syncs it.
    async fn put_in_place(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put(path, PutPayload::from(self.seal(path, bytes)))
            .await
            .map_err(|source| StoreError::Backend { path: path.clone(), source })?;
        self.sync_in_place(path).await
    }

    /// Syncs an object of a local store written over in a directory that is already on disk
    /// (the task's, made with its first checkpoint): the file, then its directory (for the
    /// rename). Two syncs where [`sync`](Self::sync) takes one per directory up to the root.
    async fn sync_in_place(&self, path: &Path) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let file = root.join(path.as_ref());
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if cfg!(unix)
                && let Some(dir) = file.parent()
            {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        synced.map_err(|e| StoreError::Backend {
            path: path.clone(),
            source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) },
        })
    }

    /// Syncs a written object of a local store to disk: the file, then each directory from
    /// its own up to the store's root (a new task's directories are new too). A cloud store
    /// has made an object durable when its upload completes.
    async fn sync(&self, path: &Path) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let file = root.join(path.as_ref());
        let root = root.clone();
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            // Elsewhere a directory cannot be opened to sync it; the rename is the OS's.
            let mut dir = if cfg!(unix) { file.parent() } else { None };
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        synced.map_err(|e| StoreError::Backend {
            path: path.clone(),
            source: object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) },
        })
    }

    /// Saves the running attempt's sealed state of `task` (over the one before), durably: on a
    /// local store the file and its directories are synced before this returns.
    pub async fn put_attempt_state(&self, task: TaskId, sealed: Bytes) -> Result<(), StoreError> {
        let path = attempt_state_path(task);
        self.put_in_place(&path, sealed).await
    }

    /// The saved attempt state of `task`, if there is one.
    pub async fn attempt_state(&self, task: TaskId) -> Result<Option<Bytes>, StoreError> {
        match self.read(&attempt_state_path(task)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves who contributed on `task`'s checkpoint `checkpoint` (over the record of an earlier
    /// checkpoint), durably. Not authenticated: it only spares useless selections (a client
    /// left out is refused by its own ledger; one added waits for the next checkpoint).
    pub async fn put_contributors(
        &self,
        task: TaskId,
        checkpoint: CheckpointHash,
        clients: &[ClientId],
    ) -> Result<(), StoreError> {
        let path = contributors_path(task);
        let record = Contributors {
            checkpoint: hex::encode(checkpoint.0),
            clients: clients.iter().map(ClientId::to_hex).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("strings always serialize");
        self.put_in_place(&path, Bytes::from(json)).await
    }

    /// Who contributed on the checkpoint the record names, if there is a record.
    pub async fn contributors(
        &self,
        task: TaskId,
    ) -> Result<Option<(CheckpointHash, Vec<ClientId>)>, StoreError> {
        let path = contributors_path(task);
        let bytes = match self.read(&path).await {
            Ok(bytes) => bytes,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let malformed = |reason: String| StoreError::MalformedRecord { path: path.clone(), reason };
        let record: Contributors =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        let hash = |h: &str| -> Result<[u8; 32], StoreError> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).map_err(|e| malformed(format!("{h:?}: {e}")))?;
            Ok(out)
        };
        let checkpoint = CheckpointHash(hash(&record.checkpoint)?);
        let clients =
            record.clients.iter().map(|c| hash(c).map(ClientId)).collect::<Result<_, _>>()?;
        Ok(Some((checkpoint, clients)))
    }

    /// Saves the definition of a task created through Admin (its `CreateTaskRequest`, without
    /// the initial model, which is checkpoint 0), durably, so a restart creates it again.
    pub async fn put_task_definition(
        &self,
        task: TaskId,
        definition: Bytes,
    ) -> Result<(), StoreError> {
        let path = task_file(task, DEFINITION);
        self.put_in_place(&path, definition).await
    }

    /// Marks `task` as started (`mark`: the caller's signed mark), durably, so that a restart
    /// lets clients in again at once.
    pub async fn put_task_started(&self, task: TaskId, mark: Bytes) -> Result<(), StoreError> {
        let path = task_file(task, STARTED);
        self.put_in_place(&path, mark).await
    }

    /// The definitions of the Admin-created tasks, each with its started mark if any.
    pub async fn task_definitions(
        &self,
    ) -> Result<Vec<(TaskId, Bytes, Option<Bytes>)>, StoreError> {
        let prefix = Path::from("tasks");
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend { path: prefix.clone(), source })?;
        let task_of = |p: &Path| -> Option<TaskId> {
            let parts: Vec<_> = p.parts().collect();
            let [_, id, _] = parts.as_slice() else { return None };
            let mut out = [0u8; 16];
            hex::decode_to_slice(id.as_ref(), &mut out).ok()?;
            Some(TaskId(out))
        };
        let started: std::collections::BTreeMap<TaskId, Path> = objects
            .iter()
            .filter(|m| m.location.filename() == Some(STARTED))
            .filter_map(|m| Some((task_of(&m.location)?, m.location.clone())))
            .collect();
        let mut out = Vec::new();
        for meta in objects.iter().filter(|m| m.location.filename() == Some(DEFINITION)) {
            let Some(task) = task_of(&meta.location) else { continue };
            let bytes = self.read(&meta.location).await?;
            let mark = match started.get(&task) {
                Some(path) => Some(self.read(path).await?),
                None => None,
            };
            out.push((task, bytes, mark));
        }
        Ok(out)
    }

    /// Deletes the saved attempt state of `task` (its attempt ended); no error if none.
    pub async fn delete_attempt_state(&self, task: TaskId) -> Result<(), StoreError> {
        let path = attempt_state_path(task);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Backend { path, source }),
        }
    }

    /// Where the saved attempt state of `task` is ([`put_attempt_state`](Self::put_attempt_state)).
    pub fn attempt_state_path(task: TaskId) -> Path {
        attempt_state_path(task)
    }

    /// The checkpoint `version` of `task` and its manifest, after checking the data's size and
    /// SHA-256 against the manifest (not its signature: see [`get_verified`](Self::get_verified)).
    pub async fn get(
        &self,
        task: TaskId,
        version: u64,
    ) -> Result<(SignedManifest, Bytes), StoreError> {
        let manifest = self.manifest(task, version).await?;
        let path = data_path(task, version);
        let bytes = self.read(&path).await?;
        manifest
            .manifest
            .check_bytes(&bytes)
            .map_err(|source| StoreError::Corrupt { path, source })?;
        Ok((manifest, bytes))
    }

    /// [`get`](Self::get), then checks the manifest's signature under `key`.
    pub async fn get_verified(
        &self,
        task: TaskId,
        version: u64,
        key: &VerifyingKey,
    ) -> Result<(SignedManifest, Bytes), StoreError> {
        let (manifest, bytes) = self.get(task, version).await?;
        manifest.verify(key).map_err(|source| StoreError::Unverified {
            path: manifest_path(task, version),
            source,
        })?;
        Ok((manifest, bytes))
    }

    /// The manifest of the task's newest committed checkpoint, if any.
    pub async fn latest(&self, task: TaskId) -> Result<Option<SignedManifest>, StoreError> {
        match self.versions(task).await?.last() {
            Some(&version) => Ok(Some(self.manifest(task, version).await?)),
            None => Ok(None),
        }
    }

    /// The manifests of all the task's committed checkpoints, oldest first.
    pub async fn list(&self, task: TaskId) -> Result<Vec<SignedManifest>, StoreError> {
        let mut out = Vec::new();
        for version in self.versions(task).await? {
            out.push(self.manifest(task, version).await?);
        }
        Ok(out)
    }

    /// The committed versions of `task` (those with a manifest), ascending.
    async fn versions(&self, task: TaskId) -> Result<Vec<u64>, StoreError> {
        let prefix = checkpoints_dir(task);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| StoreError::Backend { path: prefix.clone(), source })?;
        let mut versions: Vec<u64> = objects
            .iter()
            .filter_map(|meta| {
                meta.location.filename()?.strip_suffix(MANIFEST_SUFFIX)?.parse().ok()
            })
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Reads and parses one manifest, checking it describes the task and version of its path
    /// (not its signature).
    pub async fn manifest(&self, task: TaskId, version: u64) -> Result<SignedManifest, StoreError> {
        let path = manifest_path(task, version);
        let json = self.read(&path).await?;
        let manifest: SignedManifest = serde_json::from_slice(&json)
            .map_err(|source| StoreError::MalformedManifest { path: path.clone(), source })?;
        let m = &manifest.manifest;
        if m.version != version || m.task_id != task {
            return Err(StoreError::MisplacedManifest {
                path,
                found_version: m.version,
                found_task: m.task_id.to_hex(),
            });
        }
        Ok(manifest)
    }

    /// Reads a whole object, opened if the store encrypts.
    async fn read(&self, path: &Path) -> Result<Bytes, StoreError> {
        let stored = self.read_raw(path).await?;
        self.open(path, stored)
    }

    /// Reads a whole object as stored.
    async fn read_raw(&self, path: &Path) -> Result<Bytes, StoreError> {
        let read = async { self.store.get(path).await?.bytes().await };
        read.await.map_err(|source| match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { path: path.clone() },
            source => StoreError::Backend { path: path.clone(), source },
        })
    }
}

/// What an object of the store is, from its name: its purpose and version (0 if none), bound
/// to its ciphertext when the store encrypts.
fn object_kind(path: &Path) -> (&'static str, u64) {
    let name = path.filename().unwrap_or_default();
    let version = |suffix: &str| name.strip_suffix(suffix).and_then(|v| v.parse().ok());
    if let Some(v) = version(MANIFEST_SUFFIX) {
        return ("manifest", v);
    }
    if let Some(v) = version(DATA_SUFFIX) {
        return ("checkpoint", v);
    }
    match name {
        "attempt.state" => ("attempt-state", 0),
        "contributors.json" => ("contributors", 0),
        DEFINITION => ("task-definition", 0),
        STARTED => ("task-started", 0),
        _ => ("object", 0),
    }
}

/// The local directory a store URL names (a plain path or `file://`), if it names one.
fn local_root(url: &str) -> Option<std::path::PathBuf> {
    if !url.contains("://") {
        return Some(std::path::PathBuf::from(url));
    }
    let parsed = url::Url::parse(url).ok()?;
    (parsed.scheme() == "file").then(|| parsed.to_file_path().ok()).flatten()
}

/// `tasks/{task}/checkpoints`.
/// `contributors.json`: who contributed on which checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Contributors {
    /// The checkpoint's SHA-256, hex.
    checkpoint: String,
    /// Client ids, hex.
    clients: Vec<String>,
}

const DEFINITION: &str = "definition.pb";
const STARTED: &str = "started";

fn task_file(task: TaskId, name: &str) -> Path {
    Path::from(format!("tasks/{}/{name}", task.to_hex()))
}

fn contributors_path(task: TaskId) -> Path {
    Path::from(format!("tasks/{}/contributors.json", task.to_hex()))
}

fn attempt_state_path(task: TaskId) -> Path {
    Path::from(format!("tasks/{}/attempt.state", task.to_hex()))
}

fn checkpoints_dir(task: TaskId) -> Path {
    Path::from(format!("tasks/{}/checkpoints", task.to_hex()))
}

/// Where the safetensors bytes of a checkpoint live.
fn data_path(task: TaskId, version: u64) -> Path {
    checkpoints_dir(task).join(format!("{version:020}{DATA_SUFFIX}"))
}

/// Where the signed manifest of a checkpoint lives.
fn manifest_path(task: TaskId, version: u64) -> Path {
    checkpoints_dir(task).join(format!("{version:020}{MANIFEST_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use fedsec_crypto::ids::CheckpointHash;
    use fedsec_wire::checkpoint::Manifest;
    use fedsec_wire::model::{Model, Tensor};
    use zeroize::Zeroizing;

    const TASK: TaskId = TaskId([0xab; 16]);

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    /// A checkpoint of `version` (its values depend on the version) and its signed manifest.
    fn checkpoint(version: u64) -> (SignedManifest, Bytes) {
        let v = version as f32;
        let bytes = Model::new()
            .with("w", Tensor::new(vec![2, 2], vec![v, -v, 0.5, 1.0]).expect("4 values"))
            .to_safetensors()
            .expect("a valid model serializes");
        let manifest = Manifest {
            version,
            parent_version: version.saturating_sub(1),
            sha256: CheckpointHash::of(&bytes),
            size_bytes: bytes.len() as u64,
            task_id: TASK,
            round_summary: format!("round {version}"),
        };
        (manifest.sign(&key()), Bytes::from(bytes))
    }

    /// Runs one scenario on an in-memory store and on a temporary directory.
    macro_rules! on_both_backends {
        ($scenario:ident) => {
            mod $scenario {
                #[tokio::test]
                async fn in_memory() {
                    let store = super::CheckpointStore::from_url("memory://").unwrap();
                    super::$scenario(&store, None).await;
                }

                #[tokio::test]
                async fn local_directory() {
                    let dir = tempfile::tempdir().unwrap();
                    let root = dir.path().join("checkpoints");
                    let store = super::CheckpointStore::from_url(root.to_str().unwrap()).unwrap();
                    super::$scenario(&store, Some(&root)).await;
                }
            }
        };
    }

    /// Replaces an object's content behind the store's back.
    async fn overwrite(store: &CheckpointStore, path: &Path, content: Vec<u8>) {
        store.store.put(path, PutPayload::from(content)).await.unwrap();
    }

    on_both_backends!(round_trip);
    async fn round_trip(store: &CheckpointStore, _: Option<&std::path::Path>) {
        assert!(store.latest(TASK).await.unwrap().is_none());
        assert!(store.list(TASK).await.unwrap().is_empty());
        for version in [0, 1, 2, 10] {
            let (manifest, bytes) = checkpoint(version);
            store.put(&manifest, bytes).await.unwrap();
        }
        let (manifest, bytes) = store.get(TASK, 2).await.unwrap();
        assert_eq!((manifest, bytes), checkpoint(2));
        let (_, bytes) = store.get_verified(TASK, 10, &key().verifying_key()).await.unwrap();
        assert_eq!(bytes, checkpoint(10).1);
        let versions: Vec<u64> =
            store.list(TASK).await.unwrap().iter().map(|m| m.manifest.version).collect();
        assert_eq!(versions, [0, 1, 2, 10]);
        assert_eq!(store.latest(TASK).await.unwrap(), Some(checkpoint(10).0));
        assert!(store.latest(TaskId([0; 16])).await.unwrap().is_none());
    }

    on_both_backends!(existing_version_is_refused);
    async fn existing_version_is_refused(store: &CheckpointStore, _: Option<&std::path::Path>) {
        let (manifest, bytes) = checkpoint(1);
        store.put(&manifest, bytes.clone()).await.unwrap();
        let mut other = manifest.clone();
        other.manifest.round_summary = "a second round 1".into();
        let err = store.put(&other.manifest.sign(&key()), bytes).await.unwrap_err();
        assert!(matches!(err, StoreError::VersionExists { version: 1, .. }), "{err}");
        assert!(err.to_string().contains(&manifest_path(TASK, 1).to_string()), "{err}");
        assert_eq!(store.get(TASK, 1).await.unwrap().0, manifest);
    }

    on_both_backends!(bytes_must_match_the_manifest);
    async fn bytes_must_match_the_manifest(store: &CheckpointStore, _: Option<&std::path::Path>) {
        let (manifest, _) = checkpoint(1);
        let err = store.put(&manifest, checkpoint(2).1).await.unwrap_err();
        assert!(matches!(err, StoreError::BytesDoNotMatchManifest { .. }), "{err}");
        assert!(store.latest(TASK).await.unwrap().is_none());
    }

    on_both_backends!(data_without_manifest_is_invisible);
    async fn data_without_manifest_is_invisible(
        store: &CheckpointStore,
        _: Option<&std::path::Path>,
    ) {
        let (first, bytes) = checkpoint(0);
        store.put(&first, bytes).await.unwrap();
        // A crash after writing the data of version 1 and before its manifest.
        let (second, bytes) = checkpoint(1);
        overwrite(store, &data_path(TASK, 1), bytes.to_vec()).await;
        assert_eq!(store.latest(TASK).await.unwrap(), Some(first.clone()));
        assert_eq!(store.list(TASK).await.unwrap(), [first]);
        let err = store.get(TASK, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        // Putting the version again after the crash commits it.
        store.put(&second, bytes).await.unwrap();
        assert_eq!(store.latest(TASK).await.unwrap(), Some(second));
    }

    on_both_backends!(flipped_byte_in_data_is_refused_naming_the_path);
    async fn flipped_byte_in_data_is_refused_naming_the_path(
        store: &CheckpointStore,
        root: Option<&std::path::Path>,
    ) {
        let (manifest, bytes) = checkpoint(3);
        store.put(&manifest, bytes.clone()).await.unwrap();
        let path = data_path(TASK, 3);
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        match root {
            // On disk, corrupt the file itself.
            Some(root) => std::fs::write(root.join(path.as_ref()), &flipped).unwrap(),
            None => overwrite(store, &path, flipped).await,
        }
        let err = store.get(TASK, 3).await.unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Corrupt { source: CheckpointError::HashMismatch { version: 3 }, .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(path.as_ref()), "{err}");
    }

    on_both_backends!(corrupt_manifest_is_refused_naming_the_path);
    async fn corrupt_manifest_is_refused_naming_the_path(
        store: &CheckpointStore,
        _: Option<&std::path::Path>,
    ) {
        let (manifest, bytes) = checkpoint(4);
        store.put(&manifest, bytes).await.unwrap();
        let path = manifest_path(TASK, 4);
        overwrite(store, &path, b"{\"version\": 4, \"sha256\": ".to_vec()).await;
        let err = store.get(TASK, 4).await.unwrap_err();
        assert!(matches!(err, StoreError::MalformedManifest { .. }), "{err}");
        assert!(err.to_string().contains(path.as_ref()), "{err}");
        let err = store.list(TASK).await.unwrap_err();
        assert!(err.to_string().contains(path.as_ref()), "{err}");
    }

    on_both_backends!(manifest_in_the_wrong_place_is_refused);
    async fn manifest_in_the_wrong_place_is_refused(
        store: &CheckpointStore,
        _: Option<&std::path::Path>,
    ) {
        // An old, validly signed manifest copied over a newer version's name.
        let (old, old_bytes) = checkpoint(1);
        store.put(&old, old_bytes).await.unwrap();
        let (new, new_bytes) = checkpoint(2);
        store.put(&new, new_bytes).await.unwrap();
        let json = serde_json::to_vec(&old).unwrap();
        overwrite(store, &manifest_path(TASK, 2), json).await;
        let err = store.latest(TASK).await.unwrap_err();
        assert!(matches!(err, StoreError::MisplacedManifest { found_version: 1, .. }), "{err}");
    }

    on_both_backends!(get_verified_checks_the_signature);
    async fn get_verified_checks_the_signature(
        store: &CheckpointStore,
        _: Option<&std::path::Path>,
    ) {
        let (manifest, bytes) = checkpoint(5);
        store.put(&manifest, bytes).await.unwrap();
        let stranger = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let err = store.get_verified(TASK, 5, &stranger).await.unwrap_err();
        assert!(matches!(err, StoreError::Unverified { .. }), "{err}");
        assert!(err.to_string().contains(manifest_path(TASK, 5).as_ref()), "{err}");
    }

    #[test]
    fn from_url_refuses_unknown_schemes() {
        let err = CheckpointStore::from_url("ftp://example.com/checkpoints").unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err}");
        assert!(err.to_string().contains("ftp"), "{err}");
        assert!(matches!(CheckpointStore::from_url(""), Err(StoreError::UnsupportedUrl { .. })));
    }

    /// An encrypting store: everything it writes is sealed (no tensor name, no manifest field
    /// in the stored bytes), it reads back what it wrote, and refuses an object swapped for
    /// another, a flipped bit, a wrong key and an unencrypted object, naming the object; a
    /// store without the key refuses its objects too; after a rotation old objects still read
    /// and `rewrap` moves them all under the new key.
    #[tokio::test]
    async fn an_encrypting_store_seals_every_object_and_refuses_swaps_and_changes() {
        use fedsec_wire::at_rest::Kek;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        let plain = CheckpointStore::from_url(root.to_str().unwrap()).unwrap();
        let old = Kek::generate();
        let old_hex = old.to_hex();
        let store = plain.clone().with_keys(Arc::new(KeyRing::new(old, vec![])));
        for v in [1, 2] {
            let (m, b) = checkpoint(v);
            store.put(&m, b).await.unwrap();
        }
        store.put_contributors(TASK, CheckpointHash([1; 32]), &[ClientId([2; 32])]).await.unwrap();
        store.put_attempt_state(TASK, Bytes::from_static(b"sealed attempt")).await.unwrap();
        // On disk: only sealed bytes.
        let mut files = 0;
        for entry in walk(&root) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(KeyRing::is_sealed(&bytes), "{} is sealed", entry.display());
            for plaintext in [&b"\"w\""[..], b"round_summary", b"sealed attempt", b"0202020202"] {
                assert!(
                    !bytes.windows(plaintext.len()).any(|w| w == plaintext),
                    "{}",
                    entry.display()
                );
            }
            files += 1;
        }
        assert_eq!(files, 6);
        // It reads back what it wrote.
        let (m, b) = store.get_verified(TASK, 2, &key().verifying_key()).await.unwrap();
        assert_eq!((m, b), checkpoint(2));
        assert_eq!(store.latest(TASK).await.unwrap().unwrap().manifest.version, 2);
        assert_eq!(store.attempt_state(TASK).await.unwrap().unwrap(), &b"sealed attempt"[..]);
        // Version 1's data in version 2's place: refused, naming version 2's object.
        let v1 = plain.read_raw(&data_path(TASK, 1)).await.unwrap();
        let v2 = plain.read_raw(&data_path(TASK, 2)).await.unwrap();
        overwrite(&store, &data_path(TASK, 2), v1.to_vec()).await;
        let e = store.get(TASK, 2).await.unwrap_err().to_string();
        assert!(e.contains(data_path(TASK, 2).as_ref()) && e.contains("does not open"), "{e}");
        // A flipped bit.
        let mut flipped = v2.to_vec();
        flipped[v2.len() / 2] ^= 1;
        overwrite(&store, &data_path(TASK, 2), flipped).await;
        assert!(matches!(store.get(TASK, 2).await, Err(StoreError::Sealed(_))));
        overwrite(&store, &data_path(TASK, 2), v2.to_vec()).await;
        // An unencrypted object in an encrypted store.
        overwrite(&store, &contributors_path(TASK), b"{}".to_vec()).await;
        let e = store.contributors(TASK).await.unwrap_err().to_string();
        assert!(e.contains("contributors.json") && e.contains("not encrypted"), "{e}");
        // A wrong key, and no key at all.
        let wrong = plain.clone().with_keys(Arc::new(KeyRing::new(Kek::generate(), vec![])));
        let e = wrong.get(TASK, 2).await.unwrap_err().to_string();
        assert!(e.contains(manifest_path(TASK, 2).as_ref()), "{e}");
        let e = plain.get(TASK, 2).await.unwrap_err().to_string();
        assert!(e.contains("no [encryption] key"), "{e}");
        // Rotation: the old key as a previous one still reads; rewrap moves every object.
        store.put_contributors(TASK, CheckpointHash([1; 32]), &[]).await.unwrap();
        let mut previous = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(old_hex.as_str(), previous.as_mut()).unwrap();
        let new = Kek::generate();
        let new_hex = new.to_hex();
        let rotated =
            plain.clone().with_keys(Arc::new(KeyRing::new(new, vec![Kek::new(previous)])));
        assert_eq!(rotated.get(TASK, 1).await.unwrap(), checkpoint(1));
        assert_eq!(rotated.rewrap(false).await.unwrap(), (6, 0));
        assert_eq!(rotated.rewrap(false).await.unwrap(), (0, 6));
        let mut only = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(new_hex.as_str(), only.as_mut()).unwrap();
        let new_only = plain.with_keys(Arc::new(KeyRing::new(Kek::new(only), vec![])));
        assert_eq!(new_only.get(TASK, 2).await.unwrap(), checkpoint(2));
        // A plaintext object is refused by a rewrap, and sealed by one told to.
        overwrite(
            &new_only,
            &contributors_path(TASK),
            b"{\"checkpoint\":\"\",\"clients\":[]}".to_vec(),
        )
        .await;
        assert!(matches!(new_only.rewrap(false).await, Err(StoreError::Sealed(_))));
        assert_eq!(new_only.rewrap(true).await.unwrap(), (1, 5));
        assert!(KeyRing::is_sealed(&new_only.read_raw(&contributors_path(TASK)).await.unwrap()));
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[tokio::test]
    async fn file_url_opens_a_directory_it_creates() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a b").join("c");
        let url = url::Url::from_directory_path(&root).unwrap();
        let store = CheckpointStore::from_url(url.as_str()).unwrap();
        let (manifest, bytes) = checkpoint(0);
        store.put(&manifest, bytes).await.unwrap();
        assert!(root.join(data_path(TASK, 0).as_ref()).is_file());
        assert!(root.join(manifest_path(TASK, 0).as_ref()).is_file());
    }

    /// Start-up looks into the store before anything is written: a local store that does not
    /// exist is not created by looking.
    #[tokio::test]
    async fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        let plain = root.display().to_string();
        let file_url = url::Url::from_directory_path(&root).unwrap().to_string();
        for url in [&plain, &file_url] {
            assert!(CheckpointStore::open_existing(url).unwrap().is_none(), "{url}");
            assert!(!root.exists(), "{url}");
        }
        assert!(CheckpointStore::open_existing("memory://").unwrap().is_some());
        let (manifest, bytes) = checkpoint(0);
        CheckpointStore::from_url(&plain).unwrap().put(&manifest, bytes).await.unwrap();
        let store = CheckpointStore::open_existing(&file_url).unwrap().expect("it exists now");
        assert_eq!(store.manifest(TASK, 0).await.unwrap(), manifest);
        assert_eq!(store.latest(TASK).await.unwrap().map(|m| m.manifest.version), Some(0));
    }
}
