//! What an operator does to the store with the coordinator stopped (or beside it, read-only):
//! make a key-encryption key, re-wrap every object under the current key after a rotation,
//! export one checkpoint, decrypted and verified, for use elsewhere.

use std::path::Path;
use std::sync::Arc;

use fedsec_crypto::TaskId;
use fedsec_wire::at_rest::Kek;

use crate::config::CoordinatorConfig;
use crate::lock::{DataLock, lock_path};
use crate::store::CheckpointStore;

/// Writes a fresh key-encryption key (64 hex digits) to `out`, readable by its owner only;
/// refuses to overwrite a file. Returns the key's id.
pub fn keygen(out: &Path) -> Result<String, String> {
    let kek = Kek::generate();
    let err = |e: std::io::Error| format!("{}: {e}", out.display());
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut file = owner_only_new(out).map_err(err)?;
    let written = std::io::Write::write_all(&mut file, kek.to_hex().as_bytes())
        .and_then(|()| std::io::Write::write_all(&mut file, b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // No half-written key file left behind for the next try to trip on.
        let _ = std::fs::remove_file(out);
        return Err(err(e));
    }
    Ok(kek.id())
}

/// A new file (never an existing one) that only its owner may read.
fn owner_only_new(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The store the configuration names, with its keys.
fn store(config: &CoordinatorConfig) -> Result<CheckpointStore, String> {
    let store = CheckpointStore::open_existing(&config.store)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no store there", config.store))?;
    Ok(match &config.encryption {
        Some(e) => store.with_keys(Arc::new(e.key_ring().map_err(|e| e.to_string())?)),
        None => store,
    })
}

/// Re-wraps every object of the store under the current key-encryption key, with the
/// coordinator stopped (its data-directory lock is taken): `(re-wrapped, already current)`.
/// With `seal_plaintext`, objects in the clear are sealed (turning encryption on for a store
/// that ran without it); without it they are refused.
pub async fn rewrap(
    config: &CoordinatorConfig,
    seal_plaintext: bool,
) -> Result<(usize, usize), String> {
    if config.encryption.is_none() {
        return Err("rewrap needs an [encryption] section: the key to wrap under".into());
    }
    let _lock = DataLock::acquire(&lock_path(&config.audit_log)).map_err(|e| e.to_string())?;
    store(config)?.rewrap(seal_plaintext).await.map_err(|e| e.to_string())
}

/// Checkpoint `version` of `task` (the configured task if `None`), decrypted and verified
/// against the coordinator's key (its size, SHA-256 and signature), written to `out`.
pub async fn export(
    config: &CoordinatorConfig,
    task: Option<&str>,
    version: u64,
    out: &Path,
) -> Result<(), String> {
    let task = match task.or(config.task.as_ref().map(|t| t.id.as_str())) {
        Some(hex_id) => {
            let mut id = [0u8; 16];
            hex::decode_to_slice(hex_id, &mut id)
                .map_err(|_| format!("{hex_id:?} is not a task id (32 hex digits)"))?;
            TaskId(id)
        }
        None => return Err("no [task] in the configuration: name one with --task".into()),
    };
    let key = crate::pki::load_signing_key(&config.signing_key).map_err(|e| e.to_string())?;
    let (_, bytes) = store(config)?
        .get_verified(task, version, &key.verifying_key())
        .await
        .map_err(|e| e.to_string())?;
    // The plaintext model: a new file, readable by its owner only.
    let mut file = owner_only_new(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::io::Write::write_all(&mut file, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}
