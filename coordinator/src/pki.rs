//! Certificates and keys: a development PKI (`pki init`), signing a site's certificate
//! request with an organisation's CA (`pki sign`), and loading the coordinator's signing key.
//!
//! Trust rests on the CA: whoever holds its key can issue a certificate for any client id and
//! so impersonate any client (DESIGN.md, "Trust in the PKI"). [`init`] therefore makes a
//! *development* CA and says so in its name and in the folder's `README.txt`. In production
//! each site makes its key and a certificate request itself (`fedsec-client pki request`),
//! and the organisation's CA, kept away from the coordinator, signs it with [`sign_csr`].

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fedsec_crypto::ClientId;
use rayon::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Common name of the development CA; it says what the CA is wherever the certificate is shown.
pub const DEV_CA_COMMON_NAME: &str = "fedsec development CA - not for production";

/// The name of the operator's certificate and key files, and its common name.
pub const OPERATOR_NAME: &str = "operator";

/// Validity of the development CA, in days.
pub const DEV_CA_DAYS: u32 = 5 * 365;

/// Validity of the server and client certificates `init` issues, in days.
pub const DEV_CERT_DAYS: u32 = 365;

/// The longest validity [`sign_csr`] grants, in days.
pub const MAX_CERT_DAYS: u32 = 5 * 365;

/// How far back a new certificate's `notBefore` is set, to tolerate clock skew between hosts.
const CLOCK_SKEW: Duration = Duration::minutes(5);

const README: &str = "\
This folder was made by `fedsec-coordinator pki init`. It is a DEVELOPMENT PKI:
a throw-away certificate authority for demos, tests and trials.

  ca.pem, ca.key                     the development CA (\"fedsec development CA - not for production\")
  server.pem, server.key             the coordinator's TLS certificate and key
  client-NNN.pem, client-NNN.key     one certificate and key per client; a client's id is
                                     SHA-256 of its certificate's public key
  operator.pem, operator.key         the operator's certificate, for `fedsec-coordinator
                                     status` and other Admin calls once its id is listed in
                                     the coordinator's `admins`
  coordinator-signing.key, .pub      the coordinator's Ed25519 key that signs checkpoint
                                     manifests and the audit log (not a TLS key)

WARNING: whoever holds ca.key can issue a certificate for any client id and so
impersonate any client, which voids the secure-aggregation guarantee. Never use
this CA in production. In production, each site runs `fedsec-client pki request`
and sends its certificate request (CSR) to the organisation's CA, whose key is
kept off the coordinator; the CA signs it with `fedsec-coordinator pki sign`.

Files ending in .key are private keys (mode 0600): do not copy them off this host
except each client's own key to that client.
";

/// Everything that can go wrong making or reading certificates and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// `init` writes only into a missing or empty folder unless forced.
    #[error("{path} exists and is not empty; refusing to overwrite it (use --force)")]
    DirectoryNotEmpty { path: PathBuf },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A server name for the certificate is neither a DNS name nor an IP address.
    #[error("server name {name:?} is not a valid DNS name or IP address")]
    InvalidServerName { name: String },
    /// The common name of a certificate is empty or too long.
    #[error("common name {name:?} must be 1 to 64 characters without control characters")]
    InvalidCommonName { name: String },
    /// A validity period outside 1..=MAX_CERT_DAYS days.
    #[error("certificate validity of {days} days is outside 1..={max} days")]
    InvalidValidity { days: u32, max: u32 },
    /// rcgen refused to build or sign a certificate.
    #[error("could not make the {what}: {source}")]
    Certificate { what: &'static str, source: rcgen::Error },
    /// The certificate request does not parse or its signature does not verify.
    #[error("the certificate request is invalid: {0}")]
    InvalidCsr(rcgen::Error),
    /// Client certificates carry Ed25519 keys: the same key signs the protocol messages.
    #[error("the certificate request's key is {algorithm}, but client keys must be Ed25519")]
    CsrKeyNotEd25519 { algorithm: String },
    /// The CA certificate does not parse.
    #[error("the CA certificate is invalid: {0}")]
    InvalidCaCertificate(rcgen::Error),
    /// The CA key does not parse.
    #[error("the CA key is invalid: {0}")]
    InvalidCaKey(rcgen::Error),
    /// The CA key is not the key of the CA certificate.
    #[error("the CA key does not belong to the CA certificate")]
    CaKeyMismatch,
    /// A new key could not be encoded as PKCS#8.
    #[error("could not encode the {what}: {source}")]
    KeyEncoding { what: &'static str, source: ed25519_dalek::pkcs8::Error },
    /// A key file does not hold a key of the expected form.
    #[error("{path}: not an Ed25519 {kind} key in PKCS#8 / SPKI PEM: {reason}")]
    BadKeyFile { path: PathBuf, kind: &'static str, reason: String },
}

/// Result alias.
pub type Result<T, E = PkiError> = core::result::Result<T, E>;

/// What [`init`] wrote.
#[derive(Debug, Clone)]
pub struct PkiSummary {
    /// The folder holding everything.
    pub dir: PathBuf,
    /// The development CA certificate (give it to every client and the coordinator).
    pub ca_cert: PathBuf,
    /// The coordinator's TLS certificate.
    pub server_cert: PathBuf,
    /// The coordinator's TLS key.
    pub server_key: PathBuf,
    /// The coordinator's signing key for checkpoints and the audit log.
    pub signing_key: PathBuf,
    /// Its public half (PEM `PUBLIC KEY`), which clients pin.
    pub signing_public_key: PathBuf,
    /// One entry per client, in order `client-001`, `client-002`, ...
    pub clients: Vec<ClientCredentials>,
    /// The operator's certificate (`operator.pem` / `.key`): a certificate from the same CA,
    /// whose id the coordinator's `admins` lists to let it call the Admin service.
    pub operator: ClientCredentials,
}

/// One client's files and id, as written by [`init`].
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// `client-001`, `client-002`, ...
    pub name: String,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// SHA-256 of the certificate's public key.
    pub id: ClientId,
}

/// Makes a development PKI in `out`: a CA, a server certificate for `localhost`, `127.0.0.1`,
/// `::1` and `server_names`, `clients` client certificates, and the coordinator's signing key.
///
/// Refuses an existing non-empty `out` unless `force`. Private keys are written with mode
/// 0600 and the folder with mode 0700 (on Unix).
pub fn init(
    out: &Path,
    clients: usize,
    server_names: &[String],
    force: bool,
) -> Result<PkiSummary> {
    init_with(out, clients, server_names, force, Durability::Synced)
}

/// [`init`] for a folder that does not outlive the process (a simulation's or a test's
/// temporary folder): the same files with the same modes, but private keys are not forced to
/// disk one by one, which costs seconds for a thousand clients and protects nothing there.
pub fn init_scratch(
    out: &Path,
    clients: usize,
    server_names: &[String],
    force: bool,
) -> Result<PkiSummary> {
    init_with(out, clients, server_names, force, Durability::Scratch)
}

/// Whether private keys are synced to disk before [`init`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Scratch,
}

fn init_with(
    out: &Path,
    clients: usize,
    server_names: &[String],
    force: bool,
    durability: Durability,
) -> Result<PkiSummary> {
    prepare_dir(out, force)?;
    let now = OffsetDateTime::now_utc();

    let (ca_key, ca_key_pem) = generate_ed25519("CA key")?;
    let mut ca_params = params(DEV_CA_COMMON_NAME, now, DEV_CA_DAYS)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Certificate { what: "CA certificate", source })?;
    let ca_cert_path = out.join("ca.pem");
    write_public(&ca_cert_path, &ca_cert.pem())?;
    write_private(&out.join("ca.key"), &ca_key_pem, durability)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // ECDSA P-256: the TLS server identity every gRPC stack accepts (grpcio, grpcurl and
    // grpc_health_probe offer no Ed25519 signature scheme); only clients need Ed25519 keys.
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Certificate { what: "server key", source })?;
    let mut server_params = params("fedsec coordinator", now, DEV_CERT_DAYS)?;
    server_params.subject_alt_names = server_alt_names(server_names)?;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|source| PkiError::Certificate { what: "server certificate", source })?;
    let server_cert_path = out.join("server.pem");
    let server_key_path = out.join("server.key");
    write_public(&server_cert_path, &server_cert.pem())?;
    write_private(&server_key_path, &Zeroizing::new(server_key.serialize_pem()), durability)?;

    // Client credentials are independent of each other: issued on all cores. The operator's
    // is issued the same way, under its own name.
    let issue = |name: String| -> Result<ClientCredentials> {
        let (key, key_pem) = generate_ed25519("client key")?;
        let cert = client_params(&name, now, DEV_CERT_DAYS)?
            .signed_by(&key, &issuer)
            .map_err(|source| PkiError::Certificate { what: "client certificate", source })?;
        let id = ClientId::from_spki_der(&rcgen::PublicKeyData::subject_public_key_info(&key));
        let cert_path = out.join(format!("{name}.pem"));
        let key_path = out.join(format!("{name}.key"));
        write_public(&cert_path, &cert.pem())?;
        write_private(&key_path, &key_pem, durability)?;
        Ok(ClientCredentials { name, cert: cert_path, key: key_path, id })
    };
    let issued = (1..=clients)
        .into_par_iter()
        .map(|i| issue(format!("client-{i:03}")))
        .collect::<Result<Vec<_>>>()?;
    let operator = issue(OPERATOR_NAME.to_string())?;

    let signing = SigningKey::generate(&mut fedsec_crypto::rng::os_rng());
    let signing_path = out.join("coordinator-signing.key");
    let signing_pub_path = out.join("coordinator-signing.pub");
    let signing_pem = fedsec_wire::x509::ed25519_private_key_pem(&signing)
        .map_err(|source| PkiError::KeyEncoding { what: "coordinator signing key", source })?;
    write_private(&signing_path, &signing_pem, durability)?;
    let public_pem =
        signing.verifying_key().to_public_key_pem(Default::default()).map_err(|e| {
            PkiError::BadKeyFile {
                path: signing_pub_path.clone(),
                kind: "public",
                reason: e.to_string(),
            }
        })?;
    write_public(&signing_pub_path, &public_pem)?;
    write_public(&out.join("README.txt"), README)?;

    Ok(PkiSummary {
        dir: out.to_path_buf(),
        ca_cert: ca_cert_path,
        server_cert: server_cert_path,
        server_key: server_key_path,
        signing_key: signing_path,
        signing_public_key: signing_pub_path,
        clients: issued,
        operator,
    })
}

/// Signs a site's certificate request with a CA, for `days` days; returns the certificate PEM.
///
/// Only Ed25519 requests are accepted (the certificate's key also signs protocol messages).
/// The certificate keeps only the request's subject: it is issued for client authentication
/// alone, whatever extensions the request asked for.
pub fn sign_csr(ca_cert_pem: &str, ca_key_pem: &str, csr_pem: &str, days: u32) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::InvalidCsr)?;
    if csr.public_key.algorithm() != &PKCS_ED25519 {
        return Err(PkiError::CsrKeyNotEd25519 {
            algorithm: format!("{:?}", csr.public_key.algorithm()),
        });
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(PkiError::InvalidCaKey)?;
    let ca_spki = pem_certificate_spki(ca_cert_pem)?;
    if rcgen::PublicKeyData::subject_public_key_info(&ca_key) != ca_spki {
        return Err(PkiError::CaKeyMismatch);
    }
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(PkiError::InvalidCaCertificate)?;
    let mut params = client_params("", OffsetDateTime::now_utc(), days)?;
    params.distinguished_name = csr.params.distinguished_name.clone();
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|source| PkiError::Certificate { what: "client certificate", source })?;
    Ok(cert.pem())
}

/// Loads an Ed25519 signing key from a PKCS#8 PEM file (`coordinator-signing.key`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let pem = read(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| PkiError::BadKeyFile {
        path: path.to_path_buf(),
        kind: "private",
        reason: e.to_string(),
    })
}

/// Loads an Ed25519 public key from an SPKI PEM file (`coordinator-signing.pub`).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let pem = read(path)?;
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| PkiError::BadKeyFile {
        path: path.to_path_buf(),
        kind: "public",
        reason: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

/// The SPKI of the first certificate in a PEM text.
fn pem_certificate_spki(pem: &str) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let invalid = || PkiError::InvalidCaCertificate(rcgen::Error::CouldNotParseCertificate);
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| invalid())?;
    fedsec_wire::x509::spki_of(&der).map_err(|_| invalid())
}

/// A fresh Ed25519 key from the operating system's RNG, and its PKCS#8 v1 PEM (the form
/// OpenSSL, Python's `ssl` and grpcio read).
fn generate_ed25519(what: &'static str) -> Result<(KeyPair, Zeroizing<String>)> {
    let key = SigningKey::generate(&mut fedsec_crypto::rng::os_rng());
    let pem = fedsec_wire::x509::ed25519_private_key_pem(&key)
        .map_err(|source| PkiError::KeyEncoding { what, source })?;
    let pair = KeyPair::from_pem(&pem).map_err(|source| PkiError::Certificate { what, source })?;
    Ok((pair, pem))
}

/// Common parameters: subject, a random serial, validity from a little before `now`.
fn params(common_name: &str, now: OffsetDateTime, days: u32) -> Result<CertificateParams> {
    if days == 0 || days > MAX_CERT_DAYS {
        return Err(PkiError::InvalidValidity { days, max: MAX_CERT_DAYS });
    }
    if common_name.chars().count() > 64 || common_name.chars().any(char::is_control) {
        return Err(PkiError::InvalidCommonName { name: common_name.to_string() });
    }
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if !common_name.is_empty() {
        dn.push(DnType::CommonName, common_name);
    }
    p.distinguished_name = dn;
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + Duration::days(i64::from(days));
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Parameters of a client certificate: digital signatures, client authentication only.
fn client_params(common_name: &str, now: OffsetDateTime, days: u32) -> Result<CertificateParams> {
    let mut p = params(common_name, now, days)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p)
}

fn server_alt_names(extra: &[String]) -> Result<Vec<SanType>> {
    let mut names = vec![
        SanType::DnsName("localhost".try_into().expect("localhost is a valid DNS name")),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for name in extra {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PkiError::InvalidServerName { name: name.clone() });
        }
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| PkiError::InvalidServerName { name: name.clone() })?,
            ),
        };
        if !names.contains(&san) {
            names.push(san);
        }
    }
    Ok(names)
}

/// 16 random bytes with the top bit clear (a positive DER integer, RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    use rand::Rng;
    let mut bytes = [0u8; 16];
    fedsec_crypto::rng::os_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the encoding keeps all 16 bytes
    SerialNumber::from_slice(&bytes)
}

/// Creates `dir` (mode 0700 on Unix) or checks that it is empty, unless `force`.
fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    let io = |source| PkiError::Io { path: dir.to_path_buf(), source };
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(PkiError::DirectoryNotEmpty { path: dir.to_path_buf() });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes a private key: mode 0600 on Unix, even when the file existed before.
fn write_private(path: &Path, contents: &str, durability: Durability) -> Result<()> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    file.write_all(contents.as_bytes()).map_err(io)?;
    match durability {
        Durability::Synced => file.sync_all().map_err(io),
        Durability::Scratch => Ok(()),
    }
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(|source| PkiError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_consistent_development_pki() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let summary = init(&out, 2, &["coordinator.example".into()], false).unwrap();
        assert_eq!(summary.clients.len(), 2);
        assert_eq!(summary.clients[1].name, "client-002");
        for name in ["ca.pem", "ca.key", "server.pem", "server.key", "README.txt"] {
            assert!(out.join(name).is_file(), "{name} missing");
        }
        let readme = fs::read_to_string(out.join("README.txt")).unwrap();
        assert!(readme.contains("whoever holds ca.key") && readme.contains("DEVELOPMENT"));
        // The client id is SHA-256 of the certificate's SPKI, and the key file matches it.
        let client = &summary.clients[0];
        let cert = rustls_pki_types::pem::PemObject::from_pem_file(&client.cert).unwrap();
        let cert: rustls_pki_types::CertificateDer = cert;
        assert_eq!(fedsec_wire::x509::client_id_of(&cert).unwrap(), client.id);
        let key = load_signing_key(&client.key).unwrap();
        let identity = fedsec_crypto::sign::IdentityKey::from_signing_key(key);
        assert_eq!(identity.id(), client.id);
        // The coordinator's signing key and its public half belong together.
        let signing = load_signing_key(&summary.signing_key).unwrap();
        let public = load_verifying_key(&summary.signing_public_key).unwrap();
        assert_eq!(signing.verifying_key(), public);
        // The chain verifies as a client credential against the CA.
        let ca: rustls_pki_types::CertificateDer =
            rustls_pki_types::pem::PemObject::from_pem_file(&summary.ca_cert).unwrap();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let creds = fedsec_wire::x509::X509Credentials::new(&[&ca], now).unwrap();
        let vk = fedsec_crypto::sign::CredentialVerifier::verify(
            &creds,
            &client.id,
            &fedsec_wire::x509::encode_chain(&[&cert]),
        )
        .unwrap();
        assert_eq!(vk, identity.verifying_key());
        // The CA says what it is.
        let cn = DEV_CA_COMMON_NAME.as_bytes();
        assert!(cn.ends_with(b"not for production"));
        assert!(ca.windows(cn.len()).any(|w| w == cn), "the CA's subject names it");
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        for scratch in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let summary = if scratch { init_scratch } else { init }(dir.path(), 3, &[], false);
            let summary = summary.unwrap();
            let names: Vec<&str> = summary.clients.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["client-001", "client-002", "client-003"]);
            for path in [
                dir.path().join("ca.key"),
                summary.server_key.clone(),
                summary.signing_key.clone(),
                summary.clients[0].key.clone(),
                summary.clients[2].key.clone(),
            ] {
                let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn init_refuses_a_non_empty_folder_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), "x").unwrap();
        assert!(matches!(init(dir.path(), 1, &[], false), Err(PkiError::DirectoryNotEmpty { .. })));
        assert!(init(dir.path(), 1, &[], true).is_ok());
        assert!(dir.path().join("precious").exists());
    }

    #[test]
    fn bad_server_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), 0, &["bad name".into()], false),
            Err(PkiError::InvalidServerName { .. })
        ));
    }

    #[test]
    fn sign_csr_refuses_a_non_ed25519_request_and_a_mismatched_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), 0, &[], false).unwrap();
        let ca_cert = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let ca_key = fs::read_to_string(dir.path().join("ca.key")).unwrap();
        let ecdsa = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default().serialize_request(&ecdsa).unwrap().pem().unwrap();
        assert!(matches!(
            sign_csr(&ca_cert, &ca_key, &csr, 30),
            Err(PkiError::CsrKeyNotEd25519 { .. })
        ));
        let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let csr = CertificateParams::default().serialize_request(&ed).unwrap().pem().unwrap();
        let other_key = KeyPair::generate_for(&PKCS_ED25519).unwrap().serialize_pem();
        assert!(matches!(sign_csr(&ca_cert, &other_key, &csr, 30), Err(PkiError::CaKeyMismatch)));
        assert!(matches!(sign_csr(&ca_cert, &ca_key, "garbage", 30), Err(PkiError::InvalidCsr(_))));
        assert!(matches!(
            sign_csr(&ca_cert, &ca_key, &csr, 0),
            Err(PkiError::InvalidValidity { .. })
        ));
        assert!(sign_csr(&ca_cert, &ca_key, &csr, 30).is_ok());
    }
}
