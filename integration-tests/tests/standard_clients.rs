//! Standard gRPC tools reach the coordinator: the keys `pki init` writes are PKCS#8 v1, which
//! OpenSSL reads; the server's certificate is ECDSA P-256, which every TLS stack accepts; and
//! grpcio (Python) calls health and lists the services by reflection (v1alpha and v1) over
//! mutual TLS with a development client certificate (Ed25519), against a real coordinator
//! process.
//!
//! grpcio comes from a virtual environment that `python/venv.sh` makes once under the target
//! folder (`.ci/run` makes it before the tests).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Federation, Options, bin, run_ok};
use rustls_pki_types::pem::{PemObject, SectionKind};

/// The DER of the first PEM block in `path`, a key or a certificate.
fn der_of(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(&pem)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(matches!(kind, SectionKind::PrivateKey | SectionKind::Certificate), "{kind:?}");
    der
}

const ID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pki_init_writes_pkcs8_v1_keys_and_a_p256_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(bin("fedsec-coordinator"))
            .args(["pki", "init", "--clients", "2", "--out"])
            .arg(dir.path()),
    );
    for name in ["ca.key", "client-001.key", "client-002.key", "coordinator-signing.key"] {
        let der = der_of(&dir.path().join(name));
        // PrivateKeyInfo ::= SEQUENCE { version INTEGER (0 = v1), algorithm, privateKey } —
        // an Ed25519 key of exactly 48 bytes, with no [1] public key.
        assert_eq!(der.len(), 48, "{name}: {der:02x?}");
        assert_eq!(&der[2..5], &[0x02, 0x01, 0x00], "{name} is not PKCS#8 v1");
        assert!(contains(&der, ID_ED25519), "{name} is not Ed25519");
    }
    let server_key = der_of(&dir.path().join("server.key"));
    assert_eq!(&server_key[..2], &[0x30, 0x81], "server.key: {server_key:02x?}");
    assert_eq!(&server_key[3..6], &[0x02, 0x01, 0x00], "server.key is not PKCS#8 v1");
    assert!(contains(&server_key, ID_EC_PUBLIC_KEY) && contains(&server_key, PRIME256V1));
    let server_cert = der_of(&dir.path().join("server.pem"));
    assert!(contains(&server_cert, ID_EC_PUBLIC_KEY) && contains(&server_cert, PRIME256V1));
    let client_cert = der_of(&dir.path().join("client-001.pem"));
    assert!(contains(&client_cert, ID_ED25519) && !contains(&client_cert, ID_EC_PUBLIC_KEY));
}

/// The virtual environment with grpcio, made once per target folder.
fn python_with_grpcio() -> PathBuf {
    let target = bin("fedsec-coordinator").parent().and_then(Path::parent).unwrap().to_path_buf();
    let venv = target.join("python-venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/venv.sh");
    let out = Command::new("sh").arg(&script).arg(&venv).output().expect("sh runs");
    assert!(
        out.status.success(),
        "{} failed (it needs python3 with venv and pip, and PyPI): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    venv.join("bin/python")
}

#[test]
fn grpcio_calls_health_and_reflection_over_mutual_tls() {
    let python = python_with_grpcio();
    let fed = Federation::start(Options::default());
    let port = fed.addr.rsplit(':').next().unwrap();
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/probe.py");
    // The server certificate names localhost: the address is given as a name, as users do.
    let out =
        run_ok(Command::new(python).arg(probe).arg(fed.pki()).arg(format!("localhost:{port}")));
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["health"], "SERVING", "{report}");
    for version in ["services", "services_v1"] {
        let services: Vec<&str> =
            report[version].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        for wanted in ["fedsec.v1.Admin", "fedsec.v1.Federation", "grpc.health.v1.Health"] {
            assert!(services.contains(&wanted), "{wanted} not in {version}: {report}");
        }
    }
    eprintln!("{report}");
}
