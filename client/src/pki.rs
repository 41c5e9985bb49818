//! The site's side of the production PKI flow: make a key and a certificate request (CSR)
//! for the organisation's CA (`fedsec-client pki request`), and load the key afterwards.
//!
//! The key never leaves the site: only `site.csr.pem` is sent to the CA, which returns a
//! certificate for client authentication. The site's client id is known as soon as the key
//! exists: SHA-256 of its public key (DER `SubjectPublicKeyInfo`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use fedsec_crypto::ClientId;
use fedsec_crypto::sign::IdentityKey;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

/// File name of the site's private key.
pub const KEY_FILE: &str = "site.key";

/// File name of the site's certificate request.
pub const CSR_FILE: &str = "site.csr.pem";

/// What can go wrong making or loading the site's key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// An existing key is never overwritten: it is the site's identity.
    #[error("{path} already exists; refusing to overwrite the site's key (move it away first)")]
    WouldOverwrite { path: PathBuf },
    /// The common name is empty, too long or has control characters.
    #[error("common name {name:?} must be 1 to 64 characters without control characters")]
    InvalidCommonName { name: String },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// rcgen could not make the key or the request.
    #[error("could not make the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    /// The new key could not be encoded as PKCS#8.
    #[error("could not encode the new key: {0}")]
    Encode(ed25519_dalek::pkcs8::Error),
    /// The key file does not hold an Ed25519 PKCS#8 PEM key.
    #[error("{path}: not an Ed25519 PKCS#8 PEM private key: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
}

/// What [`request`] wrote.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    /// The private key (PKCS#8 PEM, mode 0600): keep it on the site.
    pub key: PathBuf,
    /// The certificate request (PEM): send it to the organisation's CA.
    pub csr: PathBuf,
    /// The site's client id, SHA-256 of its public key.
    pub id: ClientId,
}

/// Makes an Ed25519 key and a certificate request with subject `CN=common_name` in `out_dir`
/// (`site.key`, mode 0600, and `site.csr.pem`). Refuses to overwrite an existing key.
pub fn request(out_dir: &Path, common_name: &str) -> Result<CsrRequest, PkiError> {
    if common_name.is_empty()
        || common_name.chars().count() > 64
        || common_name.chars().any(char::is_control)
    {
        return Err(PkiError::InvalidCommonName { name: common_name.to_string() });
    }
    let key_path = out_dir.join(KEY_FILE);
    let csr_path = out_dir.join(CSR_FILE);
    if key_path.exists() {
        return Err(PkiError::WouldOverwrite { path: key_path });
    }
    fs::create_dir_all(out_dir)
        .map_err(|source| PkiError::Io { path: out_dir.to_path_buf(), source })?;

    let signing = SigningKey::generate(&mut fedsec_crypto::rng::os_rng());
    // PKCS#8 v1, the form OpenSSL, Python's `ssl` and grpcio read.
    let key_pem = fedsec_wire::x509::ed25519_private_key_pem(&signing).map_err(PkiError::Encode)?;
    let key = KeyPair::from_pem(&key_pem)?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    let csr = params.serialize_request(&key)?.pem()?;
    let id = ClientId::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&key));

    write_private(&key_path, &key_pem)?;
    fs::write(&csr_path, csr).map_err(|source| PkiError::Io { path: csr_path.clone(), source })?;
    Ok(CsrRequest { key: key_path, csr: csr_path, id })
}

/// Loads the site's identity key (the key of its certificate) from a PKCS#8 PEM file.
pub fn load_identity_key(path: &Path) -> Result<IdentityKey, PkiError> {
    let pem = fs::read_to_string(path)
        .map_err(|source| PkiError::Io { path: path.to_path_buf(), source })?;
    let key = SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| PkiError::BadKeyFile { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(IdentityKey::from_signing_key(key))
}

/// Writes a private key with mode 0600 (on Unix); never replaces an existing file.
fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_writes_a_private_key_and_an_ed25519_csr() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(dir.path(), "site 7").unwrap();
        let csr = fs::read_to_string(&req.csr).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // The id printed now is the id the key will have in the certificate.
        assert_eq!(load_identity_key(&req.key).unwrap().id(), req.id);
        // PKCS#8 v1 (version 0, no public key: 48 bytes), which OpenSSL and grpcio read.
        let key = fs::read_to_string(&req.key).unwrap();
        use rustls_pki_types::pem::{PemObject, SectionKind};
        let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(key.as_bytes()).unwrap();
        assert_eq!((der.len(), &der[2..5]), (48, &[2u8, 1, 0][..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&req.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(matches!(request(dir.path(), "site 7"), Err(PkiError::WouldOverwrite { .. })));
        assert!(matches!(request(dir.path(), ""), Err(PkiError::InvalidCommonName { .. })));
    }
}
