//! TLS towards the coordinator: the federation CA as the only trust anchor, and the site's
//! certificate and Ed25519 key as the client identity (mutual TLS).

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// What can go wrong building the client's TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// A PEM input holds no certificate or does not parse.
    #[error("the {what} holds no valid PEM certificate")]
    NoCertificate { what: &'static str },
    /// The key is not an Ed25519 PKCS#8 PEM key; client identities are Ed25519.
    #[error("the client key is not an Ed25519 PKCS#8 PEM key: {reason}")]
    KeyNotEd25519 { reason: String },
    /// The key is not the key of the certificate (files mixed up between sites).
    #[error("the client key does not belong to the client certificate")]
    KeyDoesNotMatchCertificate,
    /// The server name is empty.
    #[error("the coordinator's server name is empty")]
    EmptyServerName,
}

/// Installs the ring crypto provider as rustls' process default (once; later calls do
/// nothing). Call it at start-up, before connecting.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A tonic TLS configuration that trusts only `ca_pem`, presents `cert_pem` with the Ed25519
/// key `key_pem` (PKCS#8 PEM), and expects the coordinator's certificate to name
/// `server_name`.
///
/// The key is checked against the certificate here, so a mix-up fails now with a clear error
/// rather than later as a refused handshake.
pub fn client_tls(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    server_name: &str,
) -> Result<ClientTlsConfig, ClientTlsError> {
    if server_name.is_empty() {
        return Err(ClientTlsError::EmptyServerName);
    }
    first_certificate(ca_pem, "federation CA")?;
    let leaf = first_certificate(cert_pem, "client certificate")?;
    let key = SigningKey::from_pkcs8_pem(key_pem)
        .map_err(|e| ClientTlsError::KeyNotEd25519 { reason: e.to_string() })?;
    let leaf_spki = fedsec_wire::x509::spki_of(&leaf)
        .map_err(|_| ClientTlsError::NoCertificate { what: "client certificate" })?;
    if leaf_spki[..] != fedsec_crypto::sign::ed25519_spki_der(&key.verifying_key())[..] {
        return Err(ClientTlsError::KeyDoesNotMatchCertificate);
    }
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name))
}

fn first_certificate(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, ClientTlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| ClientTlsError::NoCertificate { what })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519};

    fn self_signed(key: &KeyPair) -> String {
        CertificateParams::new(vec!["site".to_string()]).unwrap().self_signed(key).unwrap().pem()
    }

    #[test]
    fn key_must_be_ed25519_and_belong_to_the_certificate() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let cert = self_signed(&key);
        let ca = cert.clone();
        assert!(client_tls(&ca, &cert, &key.serialize_pem(), "localhost").is_ok());
        let other = KeyPair::generate_for(&PKCS_ED25519).unwrap().serialize_pem();
        assert!(matches!(
            client_tls(&ca, &cert, &other, "localhost"),
            Err(ClientTlsError::KeyDoesNotMatchCertificate)
        ));
        let ecdsa = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            client_tls(&ca, &self_signed(&ecdsa), &ecdsa.serialize_pem(), "localhost"),
            Err(ClientTlsError::KeyNotEd25519 { .. })
        ));
        assert!(matches!(
            client_tls("", &cert, &key.serialize_pem(), "localhost"),
            Err(ClientTlsError::NoCertificate { what: "federation CA" })
        ));
        assert!(matches!(
            client_tls(&ca, &cert, &key.serialize_pem(), ""),
            Err(ClientTlsError::EmptyServerName)
        ));
    }
}
