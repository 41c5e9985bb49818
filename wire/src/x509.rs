//! Client credentials that are X.509 certificate chains, checked against the federation CA.
//!
//! A client's credential is its certificate chain (leaf first), carried in the protocol as the
//! bytes of [`encode_chain`]. [`X509Credentials`] verifies such a chain with rustls-webpki for
//! client-authentication use at a time the caller passes in (this crate reads no clock), checks
//! that the leaf's key is Ed25519, and that SHA-256 of the leaf's `SubjectPublicKeyInfo` is the
//! claimed [`ClientId`] (DESIGN.md, "Identities"). It parses nothing else of the certificates.
//!
//! The core only knows the [`CredentialVerifier`] trait; this implementation of it lives here,
//! beside the wire types, because the client (checking its own certificate) and the coordinator
//! (checking its peers') both need it and the core reads no certificates.

use core::time::Duration;

use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use fedsec_crypto::ids::ClientId;
use fedsec_crypto::sign::{CredentialRefusal, CredentialVerifier, identity_key_of_spki};

/// Why an encoded certificate chain ([`encode_chain`]) does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The chain holds more than [`MAX_CHAIN_CERTS`] certificates.
    #[error("more than {MAX_CHAIN_CERTS} certificates")]
    TooManyCertificates,
    /// The bytes end inside the length of certificate `index`.
    #[error("truncated length of certificate {index}")]
    TruncatedLength {
        /// The certificate's position, leaf = 0.
        index: usize,
    },
    /// A certificate's length is 0 or above [`MAX_CERT_LEN`].
    #[error("certificate {index} is {len} bytes, outside 1..={MAX_CERT_LEN}")]
    CertificateLength {
        /// The certificate's position, leaf = 0.
        index: usize,
        /// Its announced length.
        len: usize,
    },
    /// The bytes end inside certificate `index`.
    #[error("certificate {index} is truncated: {announced} bytes announced, {present} present")]
    TruncatedCertificate {
        /// The certificate's position, leaf = 0.
        index: usize,
        /// Its announced length.
        announced: usize,
        /// The bytes left.
        present: usize,
    },
    /// The chain holds no certificate.
    #[error("no certificate")]
    Empty,
}

/// Why rustls-webpki refuses a certificate or chain: precise for the refusals a federation
/// meets in practice, webpki's own name for the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateRefusal {
    /// The chain does not lead to a trusted CA.
    #[error("certificate chain does not lead to the federation CA")]
    UnknownIssuer,
    /// A certificate's validity ended before the time checked.
    #[error(
        "certificate expired: not after {not_after} s, checked at {checked_at} s since the epoch"
    )]
    Expired {
        /// Its `notAfter`, seconds since the Unix epoch.
        not_after: u64,
        /// The time checked.
        checked_at: u64,
    },
    /// A certificate's validity starts after the time checked.
    #[error(
        "certificate not yet valid: not before {not_before} s, checked at {checked_at} s since the epoch"
    )]
    NotYetValid {
        /// Its `notBefore`, seconds since the Unix epoch.
        not_before: u64,
        /// The time checked.
        checked_at: u64,
    },
    /// The leaf is not issued for client authentication.
    #[error("certificate is not issued for client authentication")]
    NotClientAuth,
    /// A CA certificate is presented as a client's.
    #[error("a CA certificate is used as a client certificate")]
    CaAsEndEntity,
    /// Not valid DER.
    #[error("certificate is not valid DER")]
    BadDer,
    /// Any other refusal, as webpki names it.
    #[error("certificate chain rejected: {0}")]
    Other(String),
}

/// What can be wrong with a certificate, a chain, or the federation's CA certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X509Error {
    /// A credential is not an encoded certificate chain.
    #[error("malformed certificate chain: {0}")]
    MalformedChain(#[from] ChainError),
    /// A certificate does not parse as X.509 DER.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(CertificateRefusal),
    /// The chain does not verify for client authentication at the time checked.
    #[error("{0}")]
    ChainRejected(CertificateRefusal),
    /// The leaf's key is not the claimed client's Ed25519 identity key.
    #[error("{0}")]
    Identity(CredentialRefusal),
    /// A federation CA certificate cannot serve as a trust anchor.
    #[error("CA certificate {index} cannot be a trust anchor: {reason}")]
    BadTrustAnchor {
        /// Its position among the CA certificates given.
        index: usize,
        /// Why.
        reason: CertificateRefusal,
    },
    /// No CA certificate was given.
    #[error("no CA certificate given")]
    NoTrustAnchor,
}

/// Result alias.
pub type Result<T, E = X509Error> = core::result::Result<T, E>;

/// The most certificates a credential chain may hold (leaf and intermediates).
pub const MAX_CHAIN_CERTS: usize = 8;

/// The largest DER certificate a credential chain may hold, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// Signature algorithms accepted on certificate chains. Client keys are Ed25519, but an
/// organisation's CA and intermediates may sign with ECDSA or RSA.
static SIGNATURE_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = webpki::ALL_VERIFICATION_ALGS;

/// Encodes a certificate chain (DER certificates, leaf first) as a credential: each certificate
/// is preceded by its length as a big-endian `u32`.
pub fn encode_chain<C: AsRef<[u8]>>(chain: &[C]) -> Vec<u8> {
    let total = chain.iter().map(|c| 4 + c.as_ref().len()).sum();
    let mut out = Vec::with_capacity(total);
    for cert in chain {
        let cert = cert.as_ref();
        let len = u32::try_from(cert.len()).expect("a certificate in memory is below 4 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(cert);
    }
    out
}

/// Decodes the bytes of [`encode_chain`] into DER certificates, leaf first.
///
/// Bounded: at most [`MAX_CHAIN_CERTS`] certificates of at most [`MAX_CERT_LEN`] bytes each;
/// an empty chain, a truncated length or certificate, or trailing bytes are refused.
pub fn decode_chain(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ChainError> {
    let mut rest = bytes;
    let mut chain = Vec::new();
    while !rest.is_empty() {
        if chain.len() == MAX_CHAIN_CERTS {
            return Err(ChainError::TooManyCertificates);
        }
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(ChainError::TruncatedLength { index: chain.len() });
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > MAX_CERT_LEN {
            return Err(ChainError::CertificateLength { index: chain.len(), len });
        }
        if after.len() < len {
            return Err(ChainError::TruncatedCertificate {
                index: chain.len(),
                announced: len,
                present: after.len(),
            });
        }
        let (cert, after) = after.split_at(len);
        chain.push(cert.to_vec());
        rest = after;
    }
    if chain.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(chain)
}

/// The DER `SubjectPublicKeyInfo` of a DER certificate (outer `SEQUENCE` included).
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let der = CertificateDer::from(cert_der);
    let cert =
        EndEntityCert::try_from(&der).map_err(|e| X509Error::MalformedCertificate(refusal(&e)))?;
    Ok(cert.subject_public_key_info().as_ref().to_vec())
}

/// The id of the holder of a DER certificate: SHA-256 of its `SubjectPublicKeyInfo`.
pub fn client_id_of(cert_der: &[u8]) -> Result<ClientId> {
    Ok(ClientId::from_spki_der(&spki_of(cert_der)?))
}

/// Verifies certificate-chain credentials against the federation CA at a fixed time.
///
/// Build one per round (the time is that of the round): the core reads no clock.
#[derive(Debug, Clone)]
pub struct X509Credentials {
    roots: Vec<TrustAnchor<'static>>,
    now: UnixTime,
    /// Where set, chains must also be valid at this later instant (the server's admission:
    /// valid from T until the attempt's last deadline).
    until: Option<UnixTime>,
}

impl X509Credentials {
    /// A verifier trusting the given DER CA certificates, checking validity at `now_unix_secs`
    /// (seconds since the Unix epoch).
    pub fn new<C: AsRef<[u8]>>(ca_roots_der: &[C], now_unix_secs: u64) -> Result<Self> {
        let roots = ca_roots_der
            .iter()
            .enumerate()
            .map(|(index, der)| {
                let der = CertificateDer::from(der.as_ref());
                webpki::anchor_from_trusted_cert(&der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| X509Error::BadTrustAnchor { index, reason: refusal(&e) })
            })
            .collect::<Result<Vec<_>>>()?;
        if roots.is_empty() {
            return Err(X509Error::NoTrustAnchor);
        }
        Ok(X509Credentials {
            roots,
            now: UnixTime::since_unix_epoch(Duration::from_secs(now_unix_secs)),
            until: None,
        })
    }

    /// The same roots, judging chains at `at` (Unix seconds) and, if given, also at `until`:
    /// a chain passes only if it is valid at both, so at every instant between (each
    /// certificate's validity is one interval).
    pub fn at(&self, at: u64, until: Option<u64>) -> Self {
        let time = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(s));
        X509Credentials { roots: self.roots.clone(), now: time(at), until: until.map(time) }
    }
}

impl X509Credentials {
    /// Verifies `credential` (an [`encode_chain`]d chain, leaf first) for `claimed`: the chain
    /// leads to the federation CA for client authentication at this verifier's time, and the
    /// leaf's key is `claimed`'s Ed25519 identity key, which it returns.
    pub fn check(&self, claimed: &ClientId, credential: &[u8]) -> Result<VerifyingKey> {
        let chain = decode_chain(credential)?;
        let (leaf, intermediates) = chain.split_first().expect("decode_chain refuses empty chains");
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let cert = EndEntityCert::try_from(&leaf_der)
            .map_err(|e| X509Error::MalformedCertificate(refusal(&e)))?;
        for time in core::iter::once(self.now).chain(self.until) {
            cert.verify_for_usage(
                SIGNATURE_ALGORITHMS,
                &self.roots,
                &intermediates,
                time,
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| X509Error::ChainRejected(refusal(&e)))?;
        }
        identity_key_of_spki(claimed, cert.subject_public_key_info().as_ref())
            .map_err(X509Error::Identity)
    }
}

impl CredentialVerifier for X509Credentials {
    fn for_attempt(
        &self,
        cert_time: u64,
        until: Option<u64>,
    ) -> Option<std::sync::Arc<dyn CredentialVerifier>> {
        Some(std::sync::Arc::new(self.at(cert_time, until)))
    }

    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> fedsec_crypto::Result<VerifyingKey> {
        self.check(claimed, credential).map_err(|e| fedsec_crypto::Error::BadCredential {
            client: *claimed,
            reason: match e {
                X509Error::Identity(reason) => reason,
                other => CredentialRefusal::Credential(other.to_string()),
            },
        })
    }
}

/// The refusal a webpki error stands for.
#[allow(deprecated)] // webpki may still return the context-free EKU variant; match it too
fn refusal(e: &webpki::Error) -> CertificateRefusal {
    match e {
        webpki::Error::UnknownIssuer => CertificateRefusal::UnknownIssuer,
        webpki::Error::CertExpired { time, not_after } => CertificateRefusal::Expired {
            not_after: not_after.as_secs(),
            checked_at: time.as_secs(),
        },
        webpki::Error::CertNotValidYet { time, not_before } => CertificateRefusal::NotYetValid {
            not_before: not_before.as_secs(),
            checked_at: time.as_secs(),
        },
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            CertificateRefusal::NotClientAuth
        }
        webpki::Error::CaUsedAsEndEntity => CertificateRefusal::CaAsEndEntity,
        webpki::Error::BadDer | webpki::Error::BadDerTime => CertificateRefusal::BadDer,
        other => CertificateRefusal::Other(format!("{other:?}")),
    }
}

/// An Ed25519 private key as PKCS#8 v1 PEM (RFC 5208: the private key alone, without the
/// optional public key of v2). OpenSSL 3.0, Python's `ssl` and grpcio refuse the v2 form that
/// ring writes for Ed25519; ring, rustls, rcgen and ed25519-dalek read both.
pub fn ed25519_private_key_pem(
    key: &SigningKey,
) -> Result<zeroize::Zeroizing<String>, ed25519_dalek::pkcs8::Error> {
    KeypairBytes { secret_key: key.to_bytes(), public_key: None }
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, date_time_ymd,
    };

    /// 2026-01-01T00:00:00Z, inside every test certificate's validity.
    const NOW: u64 = 1_767_225_600;
    /// 2031-01-01T00:00:00Z, after every test certificate's not_after (2030-01-01).
    const LATER: u64 = 1_924_992_000;

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = date_time_ymd(2025, 1, 1);
        p.not_after = date_time_ymd(2030, 1, 1);
        p
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = params(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        p
    }

    fn make_ca(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let p = ca_params(cn);
        let der = p.self_signed(&key).unwrap().der().to_vec();
        Ca { der, issuer: Issuer::new(p, key) }
    }

    fn intermediate(parent: &Ca) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let p = ca_params("intermediate");
        let der = p.signed_by(&key, &parent.issuer).unwrap().der().to_vec();
        Ca { der, issuer: Issuer::new(p, key) }
    }

    fn leaf_with(
        ca: &Ca,
        alg: &'static rcgen::SignatureAlgorithm,
        eku: ExtendedKeyUsagePurpose,
    ) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = params("site");
        p.extended_key_usages = vec![eku];
        p.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    fn leaf(ca: &Ca) -> Vec<u8> {
        leaf_with(ca, &PKCS_ED25519, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn rejected(result: Result<VerifyingKey>) -> CertificateRefusal {
        match result {
            Err(X509Error::ChainRejected(reason)) => reason,
            other => panic!("expected ChainRejected, got {other:?}"),
        }
    }

    #[test]
    fn good_chain_verifies_and_returns_the_leaf_key() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[&ca.der], NOW).unwrap();
        let key = creds.verify(&id, &encode_chain(&[&cert])).unwrap();
        let spki = spki_of(&cert).unwrap();
        assert_eq!(fedsec_crypto::sign::ed25519_spki_der(&key).as_slice(), spki.as_slice());
        assert_eq!(ClientId::from_spki_der(&spki), id);
    }

    #[test]
    fn chain_through_an_intermediate_verifies() {
        let root = make_ca("root");
        let mid = intermediate(&root);
        let cert = leaf(&mid);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[&root.der], NOW).unwrap();
        assert!(creds.verify(&id, &encode_chain(&[cert.clone(), mid.der.clone()])).is_ok());
        // Without the intermediate the chain does not reach the root.
        assert_eq!(
            rejected(creds.check(&id, &encode_chain(&[&cert]))),
            CertificateRefusal::UnknownIssuer
        );
    }

    #[test]
    fn certificate_from_another_ca_is_rejected() {
        let ca = make_ca("ca");
        let other = make_ca("other");
        let cert = leaf(&other);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let r = rejected(creds.check(&id, &encode_chain(&[&cert])));
        assert_eq!(r, CertificateRefusal::UnknownIssuer);
        // Through the core's trait, the same refusal is a BadCredential naming the client.
        assert_eq!(
            creds.verify(&id, &encode_chain(&[&cert])),
            Err(fedsec_crypto::Error::BadCredential {
                client: id,
                reason: CredentialRefusal::Credential(X509Error::ChainRejected(r).to_string()),
            })
        );
    }

    #[test]
    fn expired_certificate_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], LATER).unwrap();
        let r = rejected(creds.check(&id, &encode_chain(&[&cert])));
        assert!(matches!(r, CertificateRefusal::Expired { checked_at: LATER, .. }), "{r}");
    }

    /// An attempt's verifier judges every chain at the plan's instant T, whatever the clock
    /// reads; the server's also requires the chain to last until the attempt's last deadline.
    #[test]
    fn an_attempt_judges_chains_at_its_instant_and_the_server_until_its_last_deadline() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let id = client_id_of(&cert).unwrap();
        let chain = encode_chain(&[&cert]);
        // Built at a time the certificate had expired, judging at T (before not_after).
        let late = X509Credentials::new(&[&ca.der], LATER).unwrap();
        assert!(late.check(&id, &chain).is_err());
        let at_t = late.for_attempt(NOW, None).expect("certificates read the time");
        assert!(at_t.verify(&id, &chain).is_ok());
        // The server's admission: valid at T, but expired before the attempt's last deadline.
        let not_after = 1_893_456_000; // 2030-01-01T00:00:00Z
        let server = late.for_attempt(not_after - 60, Some(not_after + 60)).unwrap();
        assert!(matches!(
            server.verify(&id, &chain),
            Err(fedsec_crypto::Error::BadCredential { .. })
        ));
        let server = late.for_attempt(not_after - 120, Some(not_after - 60)).unwrap();
        assert!(server.verify(&id, &chain).is_ok());
        // Not yet valid at T.
        let early = late.for_attempt(1_700_000_000, None).unwrap();
        assert!(early.verify(&id, &chain).is_err());
    }

    #[test]
    fn wrong_claimed_id_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let creds = X509Credentials::new(&[&ca.der], NOW).unwrap();
        let someone_else = client_id_of(&leaf(&ca)).unwrap();
        assert_eq!(
            creds.check(&someone_else, &encode_chain(&[&cert])),
            Err(X509Error::Identity(CredentialRefusal::IdMismatch))
        );
        assert_eq!(
            creds.verify(&someone_else, &encode_chain(&[&cert])),
            Err(fedsec_crypto::Error::BadCredential {
                client: someone_else,
                reason: CredentialRefusal::IdMismatch
            })
        );
    }

    #[test]
    fn non_ed25519_leaf_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf_with(&ca, &PKCS_ECDSA_P256_SHA256, ExtendedKeyUsagePurpose::ClientAuth);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        assert_eq!(
            creds.check(&id, &encode_chain(&[&cert])),
            Err(X509Error::Identity(CredentialRefusal::NotEd25519))
        );
    }

    #[test]
    fn server_certificate_is_not_a_client_credential() {
        let ca = make_ca("ca");
        let cert = leaf_with(&ca, &PKCS_ED25519, ExtendedKeyUsagePurpose::ServerAuth);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let r = rejected(creds.check(&id, &encode_chain(&[&cert])));
        assert_eq!(r, CertificateRefusal::NotClientAuth);
    }

    #[test]
    fn garbage_is_rejected() {
        let ca = make_ca("ca");
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let id = ClientId([7; 32]);
        // Not even a chain encoding.
        assert!(matches!(creds.check(&id, b"garbage"), Err(X509Error::MalformedChain(_))));
        // A well-formed chain of one certificate that is not DER.
        assert!(matches!(
            creds.check(&id, &encode_chain(&[b"not a certificate"])),
            Err(X509Error::MalformedCertificate(_))
        ));
        assert!(matches!(spki_of(b"junk"), Err(X509Error::MalformedCertificate(_))));
        assert!(matches!(
            X509Credentials::new(&[b"junk"], NOW),
            Err(X509Error::BadTrustAnchor { index: 0, .. })
        ));
        assert_eq!(X509Credentials::new::<&[u8]>(&[], NOW).unwrap_err(), X509Error::NoTrustAnchor);
    }

    #[test]
    fn chain_encoding_round_trips_and_is_bounded() {
        let certs = vec![vec![1u8; 10], vec![2u8; 300]];
        assert_eq!(decode_chain(&encode_chain(&certs)).unwrap(), certs);
        let too_many = vec![vec![0u8; 4]; MAX_CHAIN_CERTS + 1];
        assert_eq!(decode_chain(&encode_chain(&too_many)), Err(ChainError::TooManyCertificates));
        let too_big = vec![vec![0u8; MAX_CERT_LEN + 1]];
        assert_eq!(
            decode_chain(&encode_chain(&too_big)),
            Err(ChainError::CertificateLength { index: 0, len: MAX_CERT_LEN + 1 })
        );
        let mut truncated = encode_chain(&certs);
        truncated.pop();
        assert_eq!(
            decode_chain(&truncated),
            Err(ChainError::TruncatedCertificate { index: 1, announced: 300, present: 299 })
        );
        assert_eq!(decode_chain(&[0, 0]), Err(ChainError::TruncatedLength { index: 0 }));
        assert_eq!(decode_chain(&[]), Err(ChainError::Empty));
    }
}
