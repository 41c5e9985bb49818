//! Certificate chains: their framing (`decode_chain`), the federation CA's certificates as trust
//! anchors, and the verification of a client's chain.

use std::sync::OnceLock;

use fedsec_crypto::ClientId;
use fedsec_crypto::sign::{CredentialRefusal, CredentialVerifier};
use fedsec_wire::x509::{
    CertificateRefusal, ChainError, MAX_CERT_LEN, MAX_CHAIN_CERTS, X509Credentials, X509Error,
    client_id_of, decode_chain, encode_chain, spki_of,
};
use proptest::collection::vec;
use proptest::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, date_time_ymd,
};

use crate::{apply, cases, edits};

/// 2026-01-01T00:00:00Z, inside every certificate's validity.
const NOW: u64 = 1_767_225_600;

/// A federation's certificates: a root, an intermediate it signed, and a client's leaf that
/// the intermediate signed; and a root of another federation.
struct Pki {
    root: Vec<u8>,
    other_root: Vec<u8>,
    intermediate: Vec<u8>,
    leaf: Vec<u8>,
    client: ClientId,
}

fn params(cn: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(2025, 1, 1);
    p.not_after = date_time_ymd(2030, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let key = || KeyPair::generate_for(&PKCS_ED25519).expect("an Ed25519 key");
        let (root_key, root_params) = (key(), params("root", true));
        let root = root_params.self_signed(&root_key).expect("a root").der().to_vec();
        let root = (root, Issuer::new(root_params, root_key));
        let (mid_key, mid_params) = (key(), params("intermediate", true));
        let mid = mid_params.signed_by(&mid_key, &root.1).expect("an intermediate");
        let mid = (mid.der().to_vec(), Issuer::new(mid_params, mid_key));
        let leaf = params("client", false).signed_by(&key(), &mid.1).expect("a leaf");
        let leaf = leaf.der().to_vec();
        let other_key = key();
        let other_root = params("other", true).self_signed(&other_key).expect("a root");
        Pki {
            root: root.0,
            other_root: other_root.der().to_vec(),
            intermediate: mid.0,
            client: client_id_of(&leaf).expect("the leaf parses"),
            leaf,
        }
    })
}

impl Pki {
    fn credentials(&self) -> X509Credentials {
        X509Credentials::new(&[&self.other_root, &self.root], NOW).expect("two roots")
    }

    /// The client's credential: leaf, then intermediate.
    fn chain(&self) -> Vec<u8> {
        encode_chain(&[&self.leaf, &self.intermediate])
    }
}

/// The refusal `decode_chain` owes the encoding of `certs` cut to its first `cut` bytes, from
/// the framing's rules: a big-endian u32 length of 1 to `MAX_CERT_LEN`, then that many bytes,
/// at most `MAX_CHAIN_CERTS` times, and at least once.
fn framing(certs: &[Vec<u8>], cut: usize) -> Result<Vec<Vec<u8>>, ChainError> {
    let mut at = 0;
    let mut whole = Vec::new();
    for (index, cert) in certs.iter().enumerate() {
        if at == cut {
            break;
        }
        if index == MAX_CHAIN_CERTS {
            return Err(ChainError::TooManyCertificates);
        }
        if cut - at < 4 {
            return Err(ChainError::TruncatedLength { index });
        }
        let len = cert.len();
        if len == 0 || len > MAX_CERT_LEN {
            return Err(ChainError::CertificateLength { index, len });
        }
        let present = cut - at - 4;
        if present < len {
            return Err(ChainError::TruncatedCertificate { index, announced: len, present });
        }
        whole.push(cert.clone());
        at += 4 + len;
    }
    if whole.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(whole)
}

/// Certificates of every length the framing tells apart.
fn certificates() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let len = prop_oneof![
        12 => 1..40usize,
        1 => Just(0),
        1 => MAX_CERT_LEN - 1..=MAX_CERT_LEN + 1,
    ];
    vec((len, any::<u8>()).prop_map(|(n, b)| vec![b; n]), 0..=MAX_CHAIN_CERTS + 2)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_bytes_decode_as_a_chain_that_encodes_back_or_are_refused_by_the_rule_they_break(certs in certificates(), cut in any::<usize>(), bytes in vec(any::<u8>(), 0..64)) {
        let encoded = encode_chain(&certs);
        let cut = cut % (encoded.len() + 1);
        prop_assert_eq!(decode_chain(&encoded[..cut]), framing(&certs, cut));
        match decode_chain(&bytes) {
            Ok(chain) => {
                prop_assert_eq!(&encode_chain(&chain), &bytes);
                prop_assert!((1..=MAX_CHAIN_CERTS).contains(&chain.len()));
                prop_assert!(chain.iter().all(|c| (1..=MAX_CERT_LEN).contains(&c.len())));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        // Not a certificate, not a CA, not a credential.
        prop_assert!(matches!(spki_of(&bytes), Err(X509Error::MalformedCertificate(_))));
        let anchors = X509Credentials::new(&[&bytes], NOW);
        prop_assert!(matches!(anchors, Err(X509Error::BadTrustAnchor { index: 0, .. })), "{anchors:?}");
        prop_assert!(pki().credentials().check(&pki().client, &bytes).is_err());
    }

    #[test]
    fn a_truncated_chain_is_refused_by_where_it_ends(cut in any::<usize>()) {
        let pki = pki();
        let chain = pki.chain();
        let cut = cut % chain.len();
        let (leaf, mid) = (pki.leaf.len(), pki.intermediate.len());
        let malformed = |e| Err(X509Error::MalformedChain(e));
        let want = match cut {
            0 => malformed(ChainError::Empty),
            c if c < 4 => malformed(ChainError::TruncatedLength { index: 0 }),
            c if c < 4 + leaf => malformed(ChainError::TruncatedCertificate { index: 0, announced: leaf, present: c - 4 }),
            // The leaf alone: its issuer is missing.
            c if c == 4 + leaf => Err(X509Error::ChainRejected(CertificateRefusal::UnknownIssuer)),
            c if c < 8 + leaf => malformed(ChainError::TruncatedLength { index: 1 }),
            c => malformed(ChainError::TruncatedCertificate { index: 1, announced: mid, present: c - 8 - leaf }),
        };
        prop_assert_eq!(pki.credentials().check(&pki.client, &chain[..cut]), want);
    }

    #[test]
    fn a_certificate_chain_changed_anywhere_is_refused_by_the_layer_it_breaks(changes in edits(), claimed in any::<[u8; 32]>()) {
        let pki = pki();
        let creds = pki.credentials();
        let chain = pki.chain();
        prop_assert_eq!(creds.check(&pki.client, &chain).map(|_| ()), Ok(()));
        // Another client's id on the same chain: the identity check.
        if ClientId(claimed) != pki.client {
            prop_assert_eq!(creds.check(&ClientId(claimed), &chain), Err(X509Error::Identity(CredentialRefusal::IdMismatch)));
        }
        let changed = apply(&chain, &changes);
        let verdict = creds.check(&pki.client, &changed);
        match (decode_chain(&changed), &verdict) {
            (Err(framing), _) => prop_assert_eq!(&verdict, &Err(X509Error::MalformedChain(framing))),
            // Unchanged, or certificates appended that the path does not need.
            (Ok(certs), Ok(_)) => {
                prop_assert!(changed == chain || (certs.len() > 2 && certs[0] == pki.leaf && certs[1] == pki.intermediate), "{certs:?}")
            }
            (Ok(_), Err(X509Error::MalformedCertificate(_) | X509Error::ChainRejected(_) | X509Error::Identity(_))) => {}
            (Ok(_), Err(other)) => prop_assert!(false, "refused by no check of a chain: {other}"),
        }
        // Through the core's trait, a refusal names the claimed client.
        if verdict.is_err() {
            let refused = creds.verify(&pki.client, &changed);
            prop_assert!(matches!(refused, Err(fedsec_crypto::Error::BadCredential { client, .. }) if client == pki.client), "{refused:?}");
        }
    }

    #[test]
    fn ca_certificates_and_leaves_changed_anywhere_are_refused_by_name_or_parse_without_panicking(root_changes in edits(), leaf_changes in edits()) {
        let pki = pki();
        let root = apply(&pki.root, &root_changes);
        match X509Credentials::new(&[&pki.other_root, &root], NOW) {
            Ok(creds) => {
                let verdict = creds.check(&pki.client, &pki.chain());
                if root == pki.root {
                    prop_assert!(verdict.is_ok(), "{verdict:?}");
                }
            }
            Err(e) => prop_assert!(matches!(e, X509Error::BadTrustAnchor { index: 1, .. }), "{e}"),
        }
        let leaf = apply(&pki.leaf, &leaf_changes);
        match spki_of(&leaf) {
            Ok(spki) => prop_assert_eq!(client_id_of(&leaf), Ok(ClientId::from_spki_der(&spki))),
            Err(e) => prop_assert!(matches!(e, X509Error::MalformedCertificate(_)), "{e}"),
        }
    }
}
