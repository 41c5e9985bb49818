//! Published test vectors for every primitive the protocol is built on, run against the exact
//! crates (and, where the crate exposes it, the exact fedsec wrapper) that the protocol uses.
//!
//! Each vector file under `tests/vectors/` names its source; the bytes are copied from the
//! RFC / NIST text and were cross-checked against an independent implementation when the
//! files were written. A failure here means a dependency (or our use of it) no longer
//! computes the standard function.

use aes::Aes128;
use aes::cipher::BlockCipherEncrypt;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use fedsec_crypto::keys::{PublicKey, SecretScalar};
use fedsec_crypto::prg::MaskSeed;
use fedsec_crypto::sign::IdentityKey;
use hkdf::Hkdf;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

/// Decodes a hex field of a vector file, naming the field if it is malformed.
fn unhex(field: &str, s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("field {field}: not hex: {e}"))
}

/// Decodes a hex field that must be exactly `N` bytes.
fn unhex_array<const N: usize>(field: &str, s: &str) -> [u8; N] {
    let v = unhex(field, s);
    v.as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("field {field}: {} bytes, expected {N}", v.len()))
}

fn parse<'a, T: Deserialize<'a>>(name: &str, text: &'a str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("tests/vectors/{name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// RFC 5869: HKDF-SHA256 (the KDF under `kdf::derive`).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct HkdfFile {
    cases: Vec<HkdfCase>,
}

#[derive(Deserialize)]
struct HkdfCase {
    name: String,
    ikm: String,
    salt: String,
    info: String,
    length: usize,
    prk: String,
    okm: String,
}

#[test]
fn rfc5869_hkdf_sha256_test_cases_1_to_3() {
    let file: HkdfFile =
        parse("rfc5869_hkdf_sha256.json", include_str!("vectors/rfc5869_hkdf_sha256.json"));
    assert_eq!(file.cases.len(), 3, "RFC 5869 has three SHA-256 test cases");
    for case in &file.cases {
        let ikm = unhex("ikm", &case.ikm);
        let salt = unhex("salt", &case.salt);
        let info = unhex("info", &case.info);
        let prk = unhex("prk", &case.prk);
        let okm = unhex("okm", &case.okm);
        assert_eq!(okm.len(), case.length, "{}: OKM length", case.name);
        // RFC 5869 §2.2: "if not provided, [salt] is set to a string of HashLen zeros".
        let salt = (!salt.is_empty()).then_some(salt.as_slice());

        let (got_prk, hk) = Hkdf::<Sha256>::extract(salt, &ikm);
        assert_eq!(got_prk.as_slice(), prk.as_slice(), "{}: PRK", case.name);
        let mut got_okm = vec![0u8; case.length];
        hk.expand(&info, &mut got_okm).expect("L <= 255 * HashLen");
        assert_eq!(got_okm, okm, "{}: OKM", case.name);

        // Expanding from the published PRK gives the same OKM.
        let from_prk = Hkdf::<Sha256>::from_prk(&prk).expect("PRK is HashLen bytes");
        let mut again = vec![0u8; case.length];
        from_prk.expand(&info, &mut again).expect("L <= 255 * HashLen");
        assert_eq!(again, okm, "{}: OKM from PRK", case.name);

        // `Hkdf::new(None, ..)` (what `kdf::derive` calls) equals extract with no salt.
        if salt.is_none() {
            let mut via_new = vec![0u8; case.length];
            Hkdf::<Sha256>::new(None, &ikm).expand(&info, &mut via_new).expect("valid length");
            assert_eq!(via_new, okm, "{}: OKM via Hkdf::new", case.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NIST SP 800-38A F.5.1: AES-128-CTR (the cipher of the mask PRG).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CtrFile {
    key: String,
    init_counter: String,
    blocks: Vec<CtrBlock>,
}

#[derive(Deserialize)]
struct CtrBlock {
    block: usize,
    input_block: String,
    output_block: String,
    plaintext: String,
    ciphertext: String,
}

fn nist_f51() -> CtrFile {
    parse(
        "nist_sp800_38a_f51_aes128_ctr.json",
        include_str!("vectors/nist_sp800_38a_f51_aes128_ctr.json"),
    )
}

#[test]
fn nist_sp800_38a_f51_ctr_aes128_encrypt() {
    let f = nist_f51();
    assert_eq!(f.blocks.len(), 4);
    let key: [u8; 16] = unhex_array("key", &f.key);
    let iv: [u8; 16] = unhex_array("init_counter", &f.init_counter);
    let plaintext: Vec<u8> =
        f.blocks.iter().flat_map(|b| unhex("plaintext", &b.plaintext)).collect();
    let ciphertext: Vec<u8> =
        f.blocks.iter().flat_map(|b| unhex("ciphertext", &b.ciphertext)).collect();

    let mut buf = plaintext.clone();
    Ctr128BE::<Aes128>::new(&key.into(), &iv.into()).apply_keystream(&mut buf);
    assert_eq!(buf, ciphertext, "CTR-AES128.Encrypt of the four blocks");

    // CTR decryption is the same operation (F.5.2).
    Ctr128BE::<Aes128>::new(&key.into(), &iv.into()).apply_keystream(&mut buf);
    assert_eq!(buf, plaintext, "CTR-AES128.Decrypt of the four blocks");

    // The keystream alone (what the mask PRG consumes) is the sequence of output blocks.
    let mut keystream = [0u8; 64];
    Ctr128BE::<Aes128>::new(&key.into(), &iv.into()).apply_keystream(&mut keystream);
    let outputs: Vec<u8> =
        f.blocks.iter().flat_map(|b| unhex("output_block", &b.output_block)).collect();
    assert_eq!(keystream.as_slice(), outputs.as_slice(), "keystream = output blocks");
}

#[test]
fn nist_sp800_38a_f51_counter_blocks_are_128_bit_big_endian() {
    let f = nist_f51();
    let key: [u8; 16] = unhex_array("key", &f.key);
    let aes = Aes128::new(&key.into());
    let mut counter = u128::from_be_bytes(unhex_array("init_counter", &f.init_counter));
    for b in &f.blocks {
        let input: [u8; 16] = unhex_array("input_block", &b.input_block);
        assert_eq!(
            input,
            counter.to_be_bytes(),
            "block {}: counter is init + {}",
            b.block,
            b.block - 1
        );
        let mut block = input.into();
        aes.encrypt_block(&mut block);
        assert_eq!(block.as_slice(), unhex("output_block", &b.output_block), "block {}", b.block);
        counter = counter.wrapping_add(1);
    }
}

#[test]
fn nist_sp800_38a_f51_seek_to_block_2_gives_blocks_3_and_4() {
    let f = nist_f51();
    let key: [u8; 16] = unhex_array("key", &f.key);
    let iv: [u8; 16] = unhex_array("init_counter", &f.init_counter);
    let mut cipher = Ctr128BE::<Aes128>::new(&key.into(), &iv.into());
    // Block 2 (zero-based) starts at byte 32: the 3rd block of the vector.
    cipher.seek(32u64);
    assert_eq!(cipher.current_pos::<u64>(), 32);
    let mut tail: Vec<u8> =
        f.blocks[2..].iter().flat_map(|b| unhex("plaintext", &b.plaintext)).collect();
    cipher.apply_keystream(&mut tail);
    let expected: Vec<u8> =
        f.blocks[2..].iter().flat_map(|b| unhex("ciphertext", &b.ciphertext)).collect();
    assert_eq!(tail, expected, "seek(32) then encrypt = ciphertext blocks 3 and 4");

    // Seeking into the middle of a block works too (the PRG seeks to any 4-byte word).
    let mut cipher = Ctr128BE::<Aes128>::new(&key.into(), &iv.into());
    cipher.seek(36u64);
    let mut word = [0u8; 4];
    cipher.apply_keystream(&mut word);
    let out3 = unhex("output_block", &f.blocks[2].output_block);
    assert_eq!(word.as_slice(), &out3[4..8], "keystream bytes 36..40");
}

/// The mask PRG is AES-128-CTR with a zero initial counter: word i of a mask is the
/// little-endian u32 at bytes 4i..4i+4 of AES-128(seed, i / 4 as a 128-bit big-endian block).
/// Checked here against the raw block cipher the NIST vectors above vouch for.
#[test]
fn mask_prg_is_aes128_ctr_from_a_zero_counter() {
    let f = nist_f51();
    // Use the NIST key as the mask seed, so the block cipher is the one just tested.
    let key: [u8; 16] = unhex_array("key", &f.key);
    let aes = Aes128::new(&key.into());
    let seed = MaskSeed::from_bytes(key);
    for first_word in [0usize, 1, 3, 4, 1000, 4099] {
        let mut words = [0u32; 12];
        seed.expand_into(first_word, &mut words);
        for (k, got) in words.iter().enumerate() {
            let i = first_word + k;
            let mut block = ((i / 4) as u128).to_be_bytes().into();
            aes.encrypt_block(&mut block);
            let at = 4 * (i % 4);
            let want = u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
            assert_eq!(*got, want, "mask word {i}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 8439: AEAD_CHACHA20_POLY1305 (share encryption).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AeadFile {
    cases: Vec<AeadCase>,
}

#[derive(Deserialize)]
struct AeadCase {
    name: String,
    key: String,
    nonce: String,
    aad: String,
    plaintext: String,
    ciphertext: String,
    tag: String,
}

struct AeadVector {
    name: String,
    cipher: ChaCha20Poly1305,
    nonce: [u8; 12],
    aad: Vec<u8>,
    plaintext: Vec<u8>,
    sealed: Vec<u8>,
}

fn rfc8439() -> Vec<AeadVector> {
    let file: AeadFile = parse(
        "rfc8439_chacha20poly1305.json",
        include_str!("vectors/rfc8439_chacha20poly1305.json"),
    );
    file.cases
        .iter()
        .map(|c| {
            let key: [u8; 32] = unhex_array("key", &c.key);
            let mut sealed = unhex("ciphertext", &c.ciphertext);
            sealed.extend(unhex("tag", &c.tag));
            AeadVector {
                name: c.name.clone(),
                cipher: ChaCha20Poly1305::new(&Key::from(key)),
                nonce: unhex_array("nonce", &c.nonce),
                aad: unhex("aad", &c.aad),
                plaintext: unhex("plaintext", &c.plaintext),
                sealed,
            }
        })
        .collect()
}

#[test]
fn rfc8439_2_8_2_aead_encryption() {
    let v = rfc8439();
    let v = v.iter().find(|v| v.name.starts_with("2.8.2")).expect("the §2.8.2 vector");
    assert!(v.plaintext.starts_with(b"Ladies and Gentlemen of the class of '99"));
    let sealed = v
        .cipher
        .encrypt(&Nonce::from(v.nonce), Payload { msg: &v.plaintext, aad: &v.aad })
        .expect("short message");
    assert_eq!(sealed, v.sealed, "ciphertext ‖ tag");
}

#[test]
fn rfc8439_a5_aead_decryption() {
    let v = rfc8439();
    let v = v.iter().find(|v| v.name.starts_with("A.5")).expect("the §A.5 vector");
    let opened = v
        .cipher
        .decrypt(&Nonce::from(v.nonce), Payload { msg: &v.sealed, aad: &v.aad })
        .expect("the A.5 ciphertext is authentic");
    assert_eq!(opened, v.plaintext);
    assert!(opened.starts_with(b"Internet-Drafts are draft documents"));
}

#[test]
fn rfc8439_vectors_reject_any_tampering() {
    for v in rfc8439() {
        let nonce = Nonce::from(v.nonce);
        for at in [0, v.sealed.len() / 2, v.sealed.len() - 1] {
            let mut bad = v.sealed.clone();
            bad[at] ^= 0x01;
            let r = v.cipher.decrypt(&nonce, Payload { msg: &bad, aad: &v.aad });
            assert!(r.is_err(), "{}: bit flip at byte {at} accepted", v.name);
        }
        let mut aad = v.aad.clone();
        aad[0] ^= 0x80;
        let r = v.cipher.decrypt(&nonce, Payload { msg: &v.sealed, aad: &aad });
        assert!(r.is_err(), "{}: altered AAD accepted", v.name);
        let mut other = v.nonce;
        other[11] ^= 1;
        let r = v.cipher.decrypt(&Nonce::from(other), Payload { msg: &v.sealed, aad: &v.aad });
        assert!(r.is_err(), "{}: altered nonce accepted", v.name);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 9496: ristretto255 (key agreement keys).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RistrettoFile {
    multiples_of_generator: Vec<Multiple>,
    invalid_encodings: Vec<Invalid>,
    from_uniform_bytes: Vec<Uniform>,
}

#[derive(Deserialize)]
struct Multiple {
    multiple: u64,
    encoding: String,
}

#[derive(Deserialize)]
struct Invalid {
    reason: String,
    encoding: String,
}

#[derive(Deserialize)]
struct Uniform {
    input: String,
    output: String,
}

fn rfc9496() -> RistrettoFile {
    parse("rfc9496_ristretto255.json", include_str!("vectors/rfc9496_ristretto255.json"))
}

#[test]
fn rfc9496_a1_multiples_of_the_generator() {
    let f = rfc9496();
    assert_eq!(f.multiples_of_generator.len(), 16, "0·B through 15·B");
    let mut running = RistrettoPoint::identity();
    for (i, m) in f.multiples_of_generator.iter().enumerate() {
        assert_eq!(m.multiple, i as u64, "multiples are listed in order");
        let enc: [u8; 32] = unhex_array("encoding", &m.encoding);

        // Repeated addition, scalar multiplication, and decode-then-encode all agree.
        assert_eq!(running.compress().to_bytes(), enc, "{i}·B by repeated addition");
        let by_scalar = Scalar::from(m.multiple) * RISTRETTO_BASEPOINT_POINT;
        assert_eq!(by_scalar.compress().to_bytes(), enc, "{i}·B by scalar multiplication");
        assert_eq!(RistrettoPoint::mul_base(&Scalar::from(m.multiple)), by_scalar);
        let decoded = CompressedRistretto(enc).decompress().expect("a valid encoding");
        assert_eq!(decoded, running, "{i}·B decodes to the same element");
        assert_eq!(decoded.compress().to_bytes(), enc, "{i}·B re-encodes canonically");

        // Our key types: s·G for s = i, and the decoder that accepts peers' keys.
        let public = PublicKey::from_bytes(&enc);
        if i == 0 {
            assert!(public.is_none(), "the identity (0·B) is not a valid public key");
        } else {
            let public = public.expect("a non-identity element is a valid public key");
            assert_eq!(public.to_bytes(), enc);
            let secret = SecretScalar::from_scalar(Scalar::from(m.multiple));
            assert_eq!(secret.public().to_bytes(), enc, "SecretScalar({i}).public()");
            assert!(public.matches(&Scalar::from(m.multiple)));
        }
        running += RISTRETTO_BASEPOINT_POINT;
    }
}

#[test]
fn rfc9496_a2_invalid_encodings_are_rejected() {
    let f = rfc9496();
    assert_eq!(f.invalid_encodings.len(), 29);
    for bad in &f.invalid_encodings {
        let enc: [u8; 32] = unhex_array("encoding", &bad.encoding);
        assert!(
            CompressedRistretto(enc).decompress().is_none(),
            "curve25519-dalek accepted {} ({})",
            bad.encoding,
            bad.reason
        );
        assert!(
            PublicKey::from_bytes(&enc).is_none(),
            "PublicKey::from_bytes accepted {} ({})",
            bad.encoding,
            bad.reason
        );
    }
    // The identity is a valid group element but never a valid public key.
    let identity = RistrettoPoint::identity().compress().to_bytes();
    assert!(CompressedRistretto(identity).decompress().is_some());
    assert!(PublicKey::from_bytes(&identity).is_none(), "the identity is rejected");
}

#[test]
fn rfc9496_a3_group_elements_from_uniform_bytes() {
    let f = rfc9496();
    assert_eq!(f.from_uniform_bytes.len(), 11);
    for v in &f.from_uniform_bytes {
        let input: [u8; 64] = unhex_array("input", &v.input);
        let output: [u8; 32] = unhex_array("output", &v.output);
        let p = RistrettoPoint::from_uniform_bytes(&input);
        assert_eq!(p.compress().to_bytes(), output, "from_uniform_bytes({})", v.input);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 8032: Ed25519 (identity signatures).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Ed25519File {
    cases: Vec<Ed25519Case>,
}

#[derive(Deserialize)]
struct Ed25519Case {
    name: String,
    secret_key: String,
    public_key: String,
    message: String,
    signature: String,
}

#[test]
fn rfc8032_7_1_ed25519_test_vectors() {
    let file: Ed25519File =
        parse("rfc8032_ed25519.json", include_str!("vectors/rfc8032_ed25519.json"));
    let names: Vec<&str> = file.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]);
    for case in &file.cases {
        let secret: [u8; 32] = unhex_array("secret_key", &case.secret_key);
        let public: [u8; 32] = unhex_array("public_key", &case.public_key);
        let message = unhex("message", &case.message);
        let signature: [u8; 64] = unhex_array("signature", &case.signature);

        let sk = SigningKey::from_bytes(&secret);
        assert_eq!(sk.verifying_key().to_bytes(), public, "{}: public key", case.name);
        assert_eq!(sk.sign(&message).to_bytes(), signature, "{}: signature", case.name);

        let vk = VerifyingKey::from_bytes(&public).expect("a valid public key");
        let sig = Signature::from_bytes(&signature);
        assert!(vk.verify(&message, &sig).is_ok(), "{}: verify", case.name);
        assert!(vk.verify_strict(&message, &sig).is_ok(), "{}: verify_strict", case.name);

        // A flipped bit in the signature or the message is refused.
        let mut bad = signature;
        bad[0] ^= 1;
        assert!(vk.verify_strict(&message, &Signature::from_bytes(&bad)).is_err());
        let mut other = message.clone();
        other.push(0);
        assert!(vk.verify_strict(&other, &sig).is_err(), "{}: longer message", case.name);

        // The identity key of a fedsec client wraps the same key.
        let identity = IdentityKey::from_signing_key(SigningKey::from_bytes(&secret));
        assert_eq!(identity.verifying_key().to_bytes(), public, "{}: IdentityKey", case.name);
    }

    let tests = |name: &str| file.cases.iter().find(|c| c.name == name).expect("present");
    assert_eq!(unhex("message", &tests("TEST 1024").message).len(), 1023);
    // TEST SHA(abc) signs the 64-byte SHA-512 digest of "abc".
    assert_eq!(unhex("message", &tests("TEST SHA(abc)").message), Sha512::digest(b"abc").to_vec());
}
