//! Encryption at rest: envelope encryption with AES-256-GCM (the RustCrypto `aes-gcm` crate).
//!
//! Each object is encrypted under a fresh 256-bit data key; the data key is wrapped (AES-256-GCM
//! again) under a key-encryption key (KEK) that a [`KeySource`] provides — a key file that only
//! its owner may read, an environment variable, or an external command (the way `git credential`
//! helpers work: any KMS or Vault CLI that prints the key can stand behind it, with no vendor SDK
//! in our build). Both encryptions bind the object's purpose, name and version as associated
//! data, so an object cannot be swapped for another, moved to another name, or passed off as
//! another version: it then fails to open, with an error that names it.
//!
//! Layout of a sealed object (all lengths fixed but the last):
//!
//! ```text
//! "fedsec-enc-v1\0\0\0"  16  magic
//! KEK id                  8  SHA-256("fedsec/v1/kek-id" ‖ KEK)[..8]: which KEK wrapped the data key
//! wrap nonce             12
//! wrapped data key       48  AES-256-GCM(KEK; data key), 32 + 16 bytes
//! data nonce             12
//! ciphertext         n + 16  AES-256-GCM(data key; object)
//! ```
//!
//! Associated data of both: `fedsec/v1/at-rest` ‖ the part (`data-key` or `object`) ‖ the KEK
//! id (zeros for the object, whose key a re-wrap moves) ‖ purpose ‖ name, each of these four
//! prefixed by its length (u32, big-endian) ‖ version (u64, big-endian).
//!
//! Key rotation: a [`KeyRing`] seals under its current KEK and opens under the current one or
//! any previous one (found by id); [`KeyRing::rewrap`] re-wraps an object's data key under the
//! current KEK without touching its ciphertext.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand_core::Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The first bytes of every sealed object.
pub const MAGIC: &[u8; 16] = b"fedsec-enc-v1\0\0\0";

const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = 32 + TAG_LEN;
/// Bytes a sealed object has beyond its plaintext.
pub const OVERHEAD: usize = MAGIC.len() + ID_LEN + NONCE_LEN + WRAPPED_LEN + NONCE_LEN + TAG_LEN;

/// What an object is, bound to its ciphertext: its purpose (`checkpoint`, `manifest`, …), its
/// name (its path in the store) and its version (0 where it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    /// What the object is for.
    pub purpose: &'a str,
    /// Its name (path).
    pub name: &'a str,
    /// Its version, 0 where it has none.
    pub version: u64,
}

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.name, self.purpose)?;
        if self.version != 0 {
            write!(f, ", version {}", self.version)?;
        }
        f.write_str(")")
    }
}

/// Why an object or a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    /// The object is not sealed (no magic), where a sealed one is expected.
    #[error("{object}: not encrypted, but the store is; refused")]
    NotSealed {
        /// The object.
        object: String,
    },
    /// Shorter than a sealed object can be.
    #[error("{object}: truncated ({len} bytes)")]
    Truncated {
        /// The object.
        object: String,
        /// Its length.
        len: usize,
    },
    /// Sealed under a KEK the ring does not hold.
    #[error(
        "{object}: sealed under key {kek}, which is neither the current key-encryption key nor a previous one"
    )]
    UnknownKey {
        /// The object.
        object: String,
        /// The id of the KEK it names (hex).
        kek: String,
    },
    /// Authentication failed: a wrong key, an object swapped for another or changed.
    #[error(
        "{object}: does not open (the wrong key, another object in its place, or changed bytes)"
    )]
    Corrupt {
        /// The object.
        object: String,
    },
    /// A key could not be loaded.
    #[error("key-encryption key from {source_name}: {problem}")]
    Key {
        /// Where it was to come from (`file:…`, `env:…`, `command:…`).
        source_name: String,
        /// What went wrong.
        problem: String,
    },
}

/// A key-encryption key, with its id.
pub struct Kek {
    id: [u8; ID_LEN],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", hex::encode(self.id))
    }
}

impl Kek {
    /// The KEK `key`.
    pub fn new(key: Zeroizing<[u8; 32]>) -> Kek {
        let mut h = Sha256::new();
        h.update(b"fedsec/v1/kek-id");
        h.update(key.as_ref());
        let digest = h.finalize();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        Kek { id, key }
    }

    /// A fresh random KEK (for `keygen` and tests).
    pub fn generate() -> Kek {
        let mut key = Zeroizing::new([0u8; 32]);
        fedsec_crypto::rng::os_rng().fill_bytes(key.as_mut());
        Kek::new(key)
    }

    /// Its id, hex.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// The key as 64 hex digits (to write a key file).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key.as_ref()))
    }

    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.key)
    }
}

/// Where a KEK comes from: `file:PATH`, `env:NAME` or `command:PROGRAM ARGS…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the key (32 bytes, or 64 hex digits), readable by its owner only.
    File(PathBuf),
    /// An environment variable holding 64 hex digits.
    Env(String),
    /// A program (and its arguments, split on spaces; no shell) that prints 64 hex digits.
    Command(Vec<String>),
}

impl KeySource {
    /// Parses `file:PATH`, `env:NAME` or `command:PROGRAM ARGS…`; a relative file path is
    /// taken relative to `base`.
    pub fn parse(spec: &str, base: &Path) -> Result<KeySource, AtRestError> {
        // Never the spec itself: a key pasted in its place would land in a log.
        let shown = match spec.split_once(':') {
            Some((scheme, _)) if ["file", "env", "command"].contains(&scheme) => {
                format!("{scheme}:…")
            }
            _ => format!("a key source of {} characters", spec.chars().count()),
        };
        let bad = |problem: &str| AtRestError::Key {
            source_name: shown.clone(),
            problem: problem.to_owned(),
        };
        match spec.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(KeySource::File(base.join(path))),
            Some(("env", name)) if !name.is_empty() => Ok(KeySource::Env(name.to_owned())),
            Some(("command", line)) => {
                let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
                if argv.is_empty() {
                    return Err(bad("names no program"));
                }
                Ok(KeySource::Command(argv))
            }
            _ => Err(bad("is not file:PATH, env:NAME or command:PROGRAM ARGS")),
        }
    }

    fn name(&self) -> String {
        match self {
            KeySource::File(p) => format!("file:{}", p.display()),
            KeySource::Env(n) => format!("env:{n}"),
            KeySource::Command(argv) => format!("command:{}", argv.join(" ")),
        }
    }

    /// Loads the key.
    pub fn load(&self) -> Result<Kek, AtRestError> {
        let fail = |problem: String| AtRestError::Key { source_name: self.name(), problem };
        let text: Zeroizing<Vec<u8>> = match self {
            KeySource::File(path) => {
                // Opened once: the permissions checked are those of the file read.
                use std::io::Read;
                let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
                let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
                check_owner_only(&meta).map_err(fail)?;
                let mut bytes = Zeroizing::new(Vec::with_capacity(128));
                file.by_ref().take(128).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
                if bytes.len() == 32 && !bytes.iter().all(u8::is_ascii_hexdigit) {
                    let mut key = Zeroizing::new([0u8; 32]);
                    key.copy_from_slice(&bytes);
                    return Ok(Kek::new(key));
                }
                bytes
            }
            KeySource::Env(name) => Zeroizing::new(
                std::env::var(name)
                    .map_err(|_| fail("is not set (or not UTF-8)".into()))?
                    .into_bytes(),
            ),
            KeySource::Command(argv) => {
                let out = std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| fail(format!("cannot run: {e}")))?;
                let stdout = Zeroizing::new(out.stdout);
                if !out.status.success() {
                    return Err(fail(format!("exited with {}", out.status)));
                }
                stdout
            }
        };
        let hex_text =
            std::str::from_utf8(&text).map_err(|_| fail("is not 64 hex digits".into()))?;
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_text.trim(), key.as_mut())
            .map_err(|_| fail("is not 64 hex digits".into()))?;
        Ok(Kek::new(key))
    }
}

/// Refuses a key file that its group or others may read or write.
#[cfg(unix)]
fn check_owner_only(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode is {:o}: a key file must be readable by its owner only (chmod 600)",
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

/// The `[encryption]` section of a configuration file: where the current KEK comes from, and
/// the previous ones still accepted for reading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The current KEK: `file:PATH`, `env:NAME` or `command:PROGRAM ARGS`.
    pub key: String,
    /// Previous KEKs, still accepted for reading until every object is under the current one.
    #[serde(default)]
    pub previous: Vec<String>,
}

impl EncryptionConfig {
    /// Makes `file:` paths relative to `base` (the configuration file's folder), like every
    /// path of a configuration.
    pub fn resolve(&mut self, base: &Path) {
        for spec in std::iter::once(&mut self.key).chain(self.previous.iter_mut()) {
            if let Some(p) = spec.strip_prefix("file:")
                && Path::new(p).is_relative()
            {
                *spec = format!("file:{}", base.join(p).display());
            }
        }
    }

    /// Loads the keys: the ring that seals and opens.
    pub fn key_ring(&self) -> Result<KeyRing, AtRestError> {
        let load = |spec: &str| KeySource::parse(spec, Path::new(".")).and_then(|s| s.load());
        let current = load(&self.key)?;
        let previous = self.previous.iter().map(|s| load(s)).collect::<Result<Vec<_>, _>>()?;
        Ok(KeyRing::new(current, previous))
    }
}

/// The current KEK and the previous ones still accepted for reading.
#[derive(Debug)]
pub struct KeyRing {
    current: Kek,
    previous: Vec<Kek>,
}

impl KeyRing {
    /// A ring sealing under `current` and opening under it or any of `previous`.
    pub fn new(current: Kek, previous: Vec<Kek>) -> KeyRing {
        KeyRing { current, previous }
    }

    /// The id of the current KEK.
    pub fn current_id(&self) -> String {
        self.current.id()
    }

    /// Whether `bytes` are a sealed object (they start with [`MAGIC`]).
    pub fn is_sealed(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// Seals `plaintext` as `object` under a fresh data key, wrapped by the current KEK.
    pub fn seal(&self, object: &Object<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut rng = fedsec_crypto::rng::os_rng();
        let mut dek = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(dek.as_mut());
        let mut data_nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut data_nonce);
        let ciphertext = cipher_of(&dek)
            .encrypt(
                &nonce(&data_nonce),
                Payload { msg: plaintext, aad: &aad(b"object", &[0; ID_LEN], object) },
            )
            .expect("AES-GCM seals any object a store holds");
        self.wrap(object, &dek, &data_nonce, &ciphertext)
    }

    /// The sealed object: `dek` wrapped under the current KEK, then the data nonce and the
    /// ciphertext.
    fn wrap(
        &self,
        object: &Object<'_>,
        dek: &[u8; 32],
        data_nonce: &[u8],
        ciphertext: &[u8],
    ) -> Vec<u8> {
        let mut wrap_nonce = [0u8; NONCE_LEN];
        fedsec_crypto::rng::os_rng().fill_bytes(&mut wrap_nonce);
        let id = self.current.id;
        let wrapped = self
            .current
            .cipher()
            .encrypt(
                &nonce(&wrap_nonce),
                Payload { msg: dek.as_ref(), aad: &aad(b"data-key", &id, object) },
            )
            .expect("AES-GCM seals 32 bytes");
        let mut out = Vec::with_capacity(OVERHEAD - TAG_LEN + ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id);
        out.extend_from_slice(&wrap_nonce);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(data_nonce);
        out.extend_from_slice(ciphertext);
        out
    }

    /// Opens `sealed` as `object`: the plaintext, or why not (naming the object).
    pub fn open(&self, object: &Object<'_>, sealed: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let parts = Parts::of(object, sealed)?;
        let (dek, _) = self.unwrap(object, &parts)?;
        cipher_of(&dek)
            .decrypt(
                &nonce(parts.data_nonce),
                Payload { msg: parts.ciphertext, aad: &aad(b"object", &[0; ID_LEN], object) },
            )
            .map_err(|_| AtRestError::Corrupt { object: object.to_string() })
    }

    /// Re-wraps the data key of `sealed` under the current KEK, keeping its ciphertext: the
    /// object as the current KEK alone opens it. Checks the whole object first.
    pub fn rewrap(&self, object: &Object<'_>, sealed: &[u8]) -> Result<Vec<u8>, AtRestError> {
        self.open(object, sealed)?;
        let parts = Parts::of(object, sealed)?;
        if parts.id == self.current.id {
            return Ok(sealed.to_vec());
        }
        let (dek, _) = self.unwrap(object, &parts)?;
        Ok(self.wrap(object, &dek, parts.data_nonce, parts.ciphertext))
    }

    /// The data key of `parts`, and the id of the KEK that wrapped it.
    fn unwrap(
        &self,
        object: &Object<'_>,
        parts: &Parts<'_>,
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; ID_LEN]), AtRestError> {
        let kek = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == parts.id)
            .ok_or_else(|| AtRestError::UnknownKey {
            object: object.to_string(),
            kek: hex::encode(parts.id),
        })?;
        let dek = kek
            .cipher()
            .decrypt(
                &nonce(parts.wrap_nonce),
                Payload { msg: parts.wrapped, aad: &aad(b"data-key", &parts.id, object) },
            )
            .map_err(|_| AtRestError::Corrupt { object: object.to_string() })?;
        let dek = Zeroizing::new(dek);
        let mut key = Zeroizing::new([0u8; 32]);
        // AES-GCM authenticated 48 bytes: the plaintext is the 32 of a data key.
        key.copy_from_slice(&dek);
        Ok((key, parts.id))
    }

    /// The id of the KEK that wrapped `sealed`'s data key (hex), if it is sealed.
    pub fn sealed_under(sealed: &[u8]) -> Option<String> {
        let id = sealed.strip_prefix(MAGIC.as_slice())?.get(..ID_LEN)?;
        Some(hex::encode(id))
    }
}

struct Parts<'a> {
    id: [u8; ID_LEN],
    wrap_nonce: &'a [u8],
    wrapped: &'a [u8],
    data_nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Parts<'a> {
    fn of(object: &Object<'_>, sealed: &'a [u8]) -> Result<Parts<'a>, AtRestError> {
        let Some(rest) = sealed.strip_prefix(MAGIC.as_slice()) else {
            return Err(AtRestError::NotSealed { object: object.to_string() });
        };
        if sealed.len() < OVERHEAD {
            return Err(AtRestError::Truncated { object: object.to_string(), len: sealed.len() });
        }
        let (id, rest) = rest.split_at(ID_LEN);
        let (wrap_nonce, rest) = rest.split_at(NONCE_LEN);
        let (wrapped, rest) = rest.split_at(WRAPPED_LEN);
        let (data_nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Ok(Parts {
            id: id.try_into().expect("ID_LEN bytes"),
            wrap_nonce,
            wrapped,
            data_nonce,
            ciphertext,
        })
    }
}

fn cipher_of(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(<&Key<Aes256Gcm>>::from(key))
}

fn nonce(bytes: &[u8]) -> Nonce<aes_gcm::aead::consts::U12> {
    let n: [u8; NONCE_LEN] = bytes.try_into().expect("NONCE_LEN bytes");
    Nonce::from(n)
}

fn aad(part: &[u8], kek: &[u8; ID_LEN], object: &Object<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + object.purpose.len() + object.name.len());
    out.extend_from_slice(b"fedsec/v1/at-rest");
    for field in [part, kek.as_slice(), object.purpose.as_bytes(), object.name.as_bytes()] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&object.version.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: Object<'static> =
        Object { purpose: "checkpoint", name: "tasks/ab/checkpoints/3.safetensors", version: 3 };

    fn ring() -> KeyRing {
        KeyRing::new(Kek::generate(), vec![])
    }

    #[test]
    fn an_object_opens_as_itself_and_shows_nothing_of_its_plaintext() {
        let keys = ring();
        let plain = b"{\"dense.weight\":{\"dtype\":\"F32\"}} 0.125 0.125 0.125";
        let sealed = keys.seal(&MODEL, plain);
        assert!(KeyRing::is_sealed(&sealed));
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(12).any(|w| w == b"dense.weight"), "no tensor name in the bytes");
        assert_eq!(keys.open(&MODEL, &sealed).unwrap(), plain);
        // Fresh data key and nonces each time.
        assert_ne!(keys.seal(&MODEL, plain), sealed);
    }

    #[test]
    fn a_wrong_key_a_swapped_object_and_a_flipped_bit_are_refused_naming_the_object() {
        let keys = ring();
        let sealed = keys.seal(&MODEL, b"weights");
        let names = |e: AtRestError| {
            let text = e.to_string();
            assert!(text.contains(MODEL.name), "{text}");
            e
        };
        // Another KEK altogether: its id is unknown.
        let other = ring();
        assert!(matches!(
            names(other.open(&MODEL, &sealed).unwrap_err()),
            AtRestError::UnknownKey { .. }
        ));
        // Another KEK under the same id cannot be made; a forged id with the right layout
        // fails authentication.
        // Swapped: the same bytes under another name, purpose or version.
        for other in [
            Object { name: "tasks/ab/checkpoints/2.safetensors", version: 2, ..MODEL },
            Object { version: 4, ..MODEL },
            Object { purpose: "manifest", ..MODEL },
            Object { name: "tasks/cd/checkpoints/3.safetensors", ..MODEL },
        ] {
            let e = keys.open(&other, &sealed).unwrap_err();
            assert!(matches!(e, AtRestError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains(other.name));
        }
        // Every single flipped bit, in every part, is refused.
        for i in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert!(keys.open(&MODEL, &bad).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        // Truncated, and not sealed at all.
        let e = names(keys.open(&MODEL, &sealed[..OVERHEAD - 1]).unwrap_err());
        assert!(matches!(e, AtRestError::Truncated { .. }));
        let e = names(keys.open(&MODEL, b"weights").unwrap_err());
        assert!(matches!(e, AtRestError::NotSealed { .. }));
    }

    #[test]
    fn rotation_reads_old_objects_and_rewrap_moves_them_to_the_new_key() {
        let old = Kek::generate();
        let old_hex = old.to_hex();
        let sealed = KeyRing::new(old, vec![]).seal(&MODEL, b"weights");
        let again = |hex: &str| {
            let mut k = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(hex, k.as_mut()).unwrap();
            Kek::new(k)
        };
        let rotated = KeyRing::new(Kek::generate(), vec![again(&old_hex)]);
        assert_eq!(rotated.open(&MODEL, &sealed).unwrap(), b"weights", "old objects still read");
        assert!(rotated.seal(&MODEL, b"x").starts_with(MAGIC));
        assert_eq!(KeyRing::sealed_under(&rotated.seal(&MODEL, b"x")), Some(rotated.current_id()));
        let moved = rotated.rewrap(&MODEL, &sealed).unwrap();
        assert_eq!(KeyRing::sealed_under(&moved), Some(rotated.current_id()));
        let data = NONCE_LEN + b"weights".len() + TAG_LEN;
        assert_eq!(moved[moved.len() - data..], sealed[sealed.len() - data..], "ciphertext kept");
        // The new key alone opens it now.
        let new_only = KeyRing::new(again(&rotated.current.to_hex()), vec![]);
        assert_eq!(new_only.open(&MODEL, &moved).unwrap(), b"weights");
        assert!(new_only.open(&MODEL, &sealed).is_err());
        // A rewrap under the current key changes nothing; a corrupt object is not rewrapped.
        assert_eq!(rotated.rewrap(&MODEL, &moved).unwrap(), moved);
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(rotated.rewrap(&MODEL, &bad).is_err());
    }

    #[test]
    fn keys_come_from_an_owner_only_file_an_environment_variable_or_a_command() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate();
        let path = dir.path().join("store.kek");
        std::fs::write(&path, format!("{}\n", kek.to_hex().as_str())).unwrap();
        let source = KeySource::parse("file:store.kek", dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let e = source.load().unwrap_err().to_string();
            assert!(e.contains("store.kek") && e.contains("640"), "{e}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(source.load().unwrap().id(), kek.id());
        // 32 raw bytes are a key too.
        let raw = dir.path().join("raw.kek");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        let raw_kek = KeySource::File(raw).load().unwrap();
        assert_eq!(raw_kek.id(), Kek::new(Zeroizing::new([7u8; 32])).id());
        // A command that prints the key (as a KMS or Vault CLI would).
        let cmd = KeySource::parse(&format!("command:echo {}", kek.to_hex().as_str()), dir.path())
            .unwrap();
        assert_eq!(cmd.load().unwrap().id(), kek.id());
        let fails = KeySource::parse("command:false", dir.path()).unwrap().load().unwrap_err();
        assert!(fails.to_string().contains("command:false"), "{fails}");
        // An unset variable, a malformed key, an unknown scheme.
        let e = KeySource::Env("FEDSEC_TEST_SURELY_UNSET_KEK".into()).load().unwrap_err();
        assert!(e.to_string().contains("FEDSEC_TEST_SURELY_UNSET_KEK"), "{e}");
        let short = KeySource::parse("command:echo abcd", dir.path()).unwrap().load().unwrap_err();
        assert!(short.to_string().contains("64 hex digits"), "{short}");
        assert!(KeySource::parse("vault:x", dir.path()).is_err());
        // A key pasted where its source belongs is never echoed.
        let pasted = kek.to_hex();
        let e = KeySource::parse(pasted.as_str(), dir.path()).unwrap_err().to_string();
        assert!(!e.contains(&pasted[..16]), "{e}");
        // 32 hex characters are a mistaken 128-bit key, not 32 raw bytes: refused.
        let short_hex = dir.path().join("short.kek");
        std::fs::write(&short_hex, &pasted[..32]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&short_hex, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(KeySource::File(short_hex).load().is_err());
    }
}
