//! Client credentials that are X.509 certificate chains, checked against the federation CA.
//!
//! A client's credential is its certificate chain (leaf first), carried in the protocol as the
//! bytes of [`encode_chain`]. [`X509Credentials`] verifies such a chain with rustls-webpki for
//! client-authentication use at a time the caller passes in (this crate reads no clock), checks
//! that the leaf's key is Ed25519, and that SHA-256 of the leaf's `SubjectPublicKeyInfo` is the
//! claimed [`ClientId`] (DESIGN.md, "Identities"). It parses nothing else of the certificates.

use core::time::Duration;

use ed25519_dalek::VerifyingKey;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::error::{Error, Result};
use crate::ids::ClientId;
use crate::sign::{CredentialVerifier, identity_key_of_spki};

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
pub fn decode_chain(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut rest = bytes;
    let mut chain = Vec::new();
    while !rest.is_empty() {
        if chain.len() == MAX_CHAIN_CERTS {
            return Err(Error::MalformedChain(format!("more than {MAX_CHAIN_CERTS} certificates")));
        }
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(Error::MalformedChain(format!(
                "truncated length of certificate {}",
                chain.len()
            )));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > MAX_CERT_LEN {
            return Err(Error::MalformedChain(format!(
                "certificate {} is {len} bytes, outside 1..={MAX_CERT_LEN}",
                chain.len()
            )));
        }
        if after.len() < len {
            return Err(Error::MalformedChain(format!(
                "certificate {} is truncated: {len} bytes announced, {} present",
                chain.len(),
                after.len()
            )));
        }
        let (cert, after) = after.split_at(len);
        chain.push(cert.to_vec());
        rest = after;
    }
    if chain.is_empty() {
        return Err(Error::MalformedChain("no certificate".into()));
    }
    Ok(chain)
}

/// The DER `SubjectPublicKeyInfo` of a DER certificate (outer `SEQUENCE` included).
pub fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>> {
    let der = CertificateDer::from(cert_der);
    let cert =
        EndEntityCert::try_from(&der).map_err(|e| Error::MalformedCertificate(describe(&e)))?;
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
                    .map_err(|e| Error::BadTrustAnchor { index, reason: describe(&e) })
            })
            .collect::<Result<Vec<_>>>()?;
        if roots.is_empty() {
            return Err(Error::BadTrustAnchor {
                index: 0,
                reason: "no CA certificate given".into(),
            });
        }
        Ok(X509Credentials {
            roots,
            now: UnixTime::since_unix_epoch(Duration::from_secs(now_unix_secs)),
        })
    }
}

impl CredentialVerifier for X509Credentials {
    fn verify(&self, claimed: &ClientId, credential: &[u8]) -> Result<VerifyingKey> {
        let bad = |reason: String| Error::BadCredential { client: *claimed, reason };
        let chain = decode_chain(credential).map_err(|e| bad(e.to_string()))?;
        let (leaf, intermediates) = chain.split_first().expect("decode_chain refuses empty chains");
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let cert = EndEntityCert::try_from(&leaf_der)
            .map_err(|e| bad(format!("leaf certificate does not parse: {}", describe(&e))))?;
        cert.verify_for_usage(
            SIGNATURE_ALGORITHMS,
            &self.roots,
            &intermediates,
            self.now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| bad(describe(&e)))?;
        identity_key_of_spki(claimed, cert.subject_public_key_info().as_ref())
    }
}

/// A sentence for a webpki error, precise for the refusals a federation meets in practice.
#[allow(deprecated)] // webpki may still return the context-free EKU variant; match it too
fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => {
            "certificate chain does not lead to the federation CA".into()
        }
        webpki::Error::CertExpired { time, not_after } => format!(
            "certificate expired: not after {} s, checked at {} s since the epoch",
            not_after.as_secs(),
            time.as_secs()
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "certificate not yet valid: not before {} s, checked at {} s since the epoch",
            not_before.as_secs(),
            time.as_secs()
        ),
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            "certificate is not issued for client authentication".into()
        }
        webpki::Error::CaUsedAsEndEntity => {
            "a CA certificate is used as a client certificate".into()
        }
        webpki::Error::BadDer | webpki::Error::BadDerTime => "certificate is not valid DER".into(),
        other => format!("certificate chain rejected: {other:?}"),
    }
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

    fn reason(result: Result<VerifyingKey>) -> String {
        match result {
            Err(Error::BadCredential { reason, .. }) => reason,
            other => panic!("expected BadCredential, got {other:?}"),
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
        assert_eq!(crate::sign::ed25519_spki_der(&key).as_slice(), spki.as_slice());
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
        assert!(reason(creds.verify(&id, &encode_chain(&[&cert]))).contains("federation CA"));
    }

    #[test]
    fn certificate_from_another_ca_is_rejected() {
        let ca = make_ca("ca");
        let other = make_ca("other");
        let cert = leaf(&other);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let r = reason(creds.verify(&id, &encode_chain(&[&cert])));
        assert!(r.contains("does not lead to the federation CA"), "{r}");
    }

    #[test]
    fn expired_certificate_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], LATER).unwrap();
        let r = reason(creds.verify(&id, &encode_chain(&[&cert])));
        assert!(r.contains("expired"), "{r}");
    }

    #[test]
    fn wrong_claimed_id_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf(&ca);
        let creds = X509Credentials::new(&[&ca.der], NOW).unwrap();
        let someone_else = client_id_of(&leaf(&ca)).unwrap();
        let r = reason(creds.verify(&someone_else, &encode_chain(&[&cert])));
        assert!(r.contains("does not match the client id"), "{r}");
    }

    #[test]
    fn non_ed25519_leaf_is_rejected() {
        let ca = make_ca("ca");
        let cert = leaf_with(&ca, &PKCS_ECDSA_P256_SHA256, ExtendedKeyUsagePurpose::ClientAuth);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let r = reason(creds.verify(&id, &encode_chain(&[&cert])));
        assert!(r.contains("not an Ed25519"), "{r}");
    }

    #[test]
    fn server_certificate_is_not_a_client_credential() {
        let ca = make_ca("ca");
        let cert = leaf_with(&ca, &PKCS_ED25519, ExtendedKeyUsagePurpose::ServerAuth);
        let id = client_id_of(&cert).unwrap();
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let r = reason(creds.verify(&id, &encode_chain(&[&cert])));
        assert!(r.contains("client authentication"), "{r}");
    }

    #[test]
    fn garbage_is_rejected() {
        let ca = make_ca("ca");
        let creds = X509Credentials::new(&[ca.der], NOW).unwrap();
        let id = ClientId([7; 32]);
        // Not even a chain encoding.
        let r = reason(creds.verify(&id, b"garbage"));
        assert!(r.contains("malformed certificate chain"), "{r}");
        // A well-formed chain of one certificate that is not DER.
        let r = reason(creds.verify(&id, &encode_chain(&[b"not a certificate"])));
        assert!(r.contains("leaf certificate does not parse"), "{r}");
        assert!(matches!(spki_of(b"junk"), Err(Error::MalformedCertificate(_))));
        assert!(matches!(
            X509Credentials::new(&[b"junk"], NOW),
            Err(Error::BadTrustAnchor { index: 0, .. })
        ));
    }

    #[test]
    fn chain_encoding_round_trips_and_is_bounded() {
        let certs = vec![vec![1u8; 10], vec![2u8; 300]];
        assert_eq!(decode_chain(&encode_chain(&certs)).unwrap(), certs);
        let too_many = vec![vec![0u8; 4]; MAX_CHAIN_CERTS + 1];
        assert!(matches!(decode_chain(&encode_chain(&too_many)), Err(Error::MalformedChain(_))));
        let too_big = vec![vec![0u8; MAX_CERT_LEN + 1]];
        assert!(matches!(decode_chain(&encode_chain(&too_big)), Err(Error::MalformedChain(_))));
        let mut truncated = encode_chain(&certs);
        truncated.pop();
        assert!(matches!(decode_chain(&truncated), Err(Error::MalformedChain(_))));
        assert!(matches!(decode_chain(&[]), Err(Error::MalformedChain(_))));
    }
}
