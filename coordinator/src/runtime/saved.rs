//! The running attempt's saved state, sealed: what the store holds between a phase close and
//! the attempt's end, so that a restarted coordinator resumes the same attempt.
//!
//! Layout: `MAGIC ‖ task id (16) ‖ ctx (32) ‖ closed phase (1) ‖ payload ‖ tag (32)`, where the
//! payload is the [`SavedAttempt`]'s encoding and the tag is HMAC-SHA256 over everything before
//! it, under a key bound to the attempt: HKDF-SHA256 of the coordinator's signing key, salt
//! `fedsec/v1/attempt-state`, info `task id ‖ ctx`. A state changed by one bit, cut short,
//! moved to another task or made by another coordinator key is refused; one of another attempt
//! fails the key's binding. The tag is checked in constant time before anything is decoded.
//! Which phase is the newest saved is the audit log's to say (a `phase_saved` entry with the
//! state's SHA-256), since a MAC cannot tell an older state of the same attempt from the last.

use ed25519_dalek::SigningKey;
use fedsec_crypto::secagg::Phase;
use fedsec_crypto::{RoundContext, TaskId};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::engine::SavedAttempt;

/// The first bytes of a sealed state (its format's version).
const MAGIC: &[u8; 24] = b"fedsec attempt state v1\n";
const SALT: &[u8] = b"fedsec/v1/attempt-state";
const HEADER: usize = MAGIC.len() + 16 + 32 + 1;
const TAG: usize = 32;
/// What an audit entry's tag covers first (a sealed state's MAC input starts with `MAGIC`).
const ENTRY_LABEL: &[u8] = b"fedsec/v1/phase-saved";

/// Why a sealed state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Shorter than its header and tag, or another format.
    #[error("it is not a saved attempt state of this format")]
    NotAState,
    /// Saved for another task.
    #[error("it was saved for another task")]
    OtherTask,
    /// The tag does not verify: changed, cut, or sealed under another key.
    #[error("its authentication tag does not verify (changed, or sealed by another key)")]
    BadTag,
    /// Authentic, but its content does not decode or does not match its header.
    #[error("its content does not decode into the attempt its header names")]
    Undecodable,
}

fn mac(signing: &SigningKey, task: TaskId, ctx: &RoundContext) -> Hmac<Sha256> {
    let seed = Zeroizing::new(signing.to_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    let mut info = [0u8; 48];
    info[..16].copy_from_slice(&task.0);
    info[16..].copy_from_slice(&ctx.0);
    Hkdf::<Sha256>::new(Some(SALT), seed.as_ref())
        .expand(&info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_ref()).expect("HMAC takes any key length")
}

/// Seals `saved` for `task` under the coordinator's key.
pub fn seal(signing: &SigningKey, task: TaskId, saved: &SavedAttempt) -> Vec<u8> {
    let ctx = saved.ctx();
    let payload = saved.to_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&task.0);
    out.extend_from_slice(&ctx.0);
    out.push(saved.closed().index() as u8);
    out.extend_from_slice(&payload);
    let mut m = mac(signing, task, &ctx);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

/// Opens a sealed state of `task`: checks its tag, then decodes it.
pub fn open(signing: &SigningKey, task: TaskId, sealed: &[u8]) -> Result<SavedAttempt, SealError> {
    if sealed.len() < HEADER + TAG || !sealed.starts_with(MAGIC) {
        return Err(SealError::NotAState);
    }
    let (body, tag) = sealed.split_at(sealed.len() - TAG);
    if body[MAGIC.len()..MAGIC.len() + 16] != task.0 {
        return Err(SealError::OtherTask);
    }
    let ctx = RoundContext(body[MAGIC.len() + 16..HEADER - 1].try_into().expect("32 bytes"));
    let mut m = mac(signing, task, &ctx);
    m.update(body);
    m.verify_slice(tag).map_err(|_| SealError::BadTag)?;
    let saved = SavedAttempt::from_bytes(&body[HEADER..]).ok_or(SealError::Undecodable)?;
    let phase = body[HEADER - 1] as usize;
    if saved.ctx() != ctx || saved.closed().index() != phase || saved.plan.task_id != task {
        return Err(SealError::Undecodable);
    }
    Ok(saved)
}

/// The tag of the `phase_saved` audit entry that names a sealed state: HMAC-SHA256, under the
/// attempt's key, of `phase_saved ‖ phase ‖ SHA-256 of the sealed state`. Only the coordinator's
/// key makes it, so an entry appended by someone who can write the log but lacks the key (to
/// make an older state look like the last one saved) does not verify.
pub fn entry_tag(
    signing: &SigningKey,
    task: TaskId,
    ctx: &RoundContext,
    phase: Phase,
    sha256: &[u8; 32],
) -> [u8; 32] {
    let mut m = mac(signing, task, ctx);
    m.update(ENTRY_LABEL);
    m.update(&[phase.index() as u8]);
    m.update(sha256);
    m.finalize().into_bytes().into()
}

/// Whether `tag` is [`entry_tag`]'s for these, compared in constant time.
pub fn entry_tag_verifies(
    signing: &SigningKey,
    task: TaskId,
    ctx: &RoundContext,
    phase: Phase,
    sha256: &[u8; 32],
    tag: &[u8],
) -> bool {
    let mut m = mac(signing, task, ctx);
    m.update(ENTRY_LABEL);
    m.update(&[phase.index() as u8]);
    m.update(sha256);
    m.verify_slice(tag).is_ok()
}

/// Whether a saved state of phase `closed` with SHA-256 `sha` may resume, given the
/// `phase_saved` entries of its attempt whose tags verify (phase, SHA-256), wherever they sit
/// in the log: `(recorded, one_behind)`. Phases only rise within an attempt, so the highest
/// phase tagged is the last one released (an older entry copied to the end of the log does
/// not change that). *Recorded*: the state is of that phase and every entry of that phase
/// names it. *One behind*: the state is of the phase after it (or of phase 0 with no entry),
/// saved but never recorded, so never released. Neither: it must not resume.
pub fn judge(closed: u64, sha: &str, verified: &[(u64, &str)]) -> (bool, bool) {
    let highest = verified.iter().map(|(phase, _)| *phase).max();
    let recorded = highest == Some(closed)
        && verified.iter().filter(|(phase, _)| *phase == closed).all(|(_, h)| *h == sha);
    let one_behind = match highest {
        Some(phase) => phase + 1 == closed,
        None => closed == 0,
    };
    (recorded, one_behind)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fedsec_crypto::secagg::driver::make_plan;
    use fedsec_crypto::secagg::server::ClosedState;
    use fedsec_crypto::{AdversaryClass, CheckpointHash, ClientId, GraphKind};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn saved(task: TaskId) -> SavedAttempt {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut ids: Vec<ClientId> = (0..8u8).map(|i| ClientId([i; 32])).collect();
        let mut plan = make_plan(
            &mut ids,
            GraphKind::Complete,
            100_000,
            0,
            AdversaryClass::SemiMalicious,
            16,
            CheckpointHash([5; 32]),
            &mut rng,
        )
        .unwrap();
        plan.task_id = task;
        SavedAttempt {
            plan: Arc::new(plan),
            checkpoint_version: 3,
            upload_chunk_words: 4,
            server: ClosedState {
                closed: Phase::MaskedInputCollection,
                adverts: Vec::new(),
                u2: vec![0, 1],
                dealings: Vec::new(),
                complaints: Vec::new(),
                u3: vec![1],
                sum: vec![0xAB; 64],
                signatures: Vec::new(),
                unmasking: Vec::new(),
            },
            keys: vec![(ClientId([1; 32]), vec![0, 1])],
            shares: Vec::new(),
            answered: vec![vec![(ClientId([1; 32]), [7; 32])]; 3],
            upload_digests: Vec::new(),
            upload_bytes: 64,
            phase_seconds: vec![0.5, 0.25, 1.0],
            set_sizes: vec![8, 2, 2, 1],
            contributed: vec![ClientId([1; 32])],
        }
    }

    #[test]
    fn a_sealed_state_opens_under_its_key_and_task_only() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let task = TaskId([2; 16]);
        let s = saved(task);
        let sealed = seal(&key, task, &s);
        assert_eq!(open(&key, task, &sealed).unwrap(), s);
        // Every single flipped bit is refused, whatever it hits.
        for i in (0..sealed.len()).step_by(7) {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(open(&key, task, &bad).is_err(), "a bit flipped at byte {i} opened");
        }
        // Cut short, sealed by another key, or opened as another task's: refused.
        assert!(open(&key, task, &sealed[..sealed.len() - 1]).is_err());
        assert_eq!(open(&key, task, &sealed[..10]), Err(SealError::NotAState));
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(open(&other, task, &sealed), Err(SealError::BadTag));
        assert_eq!(open(&key, TaskId([3; 16]), &sealed), Err(SealError::OtherTask));
        // A state whose header names another attempt fails the key's binding.
        let mut moved = sealed.clone();
        moved[MAGIC.len() + 16] ^= 1;
        assert_eq!(open(&key, task, &moved), Err(SealError::BadTag));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes: refused, never a panic.
        #[test]
        fn any_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let key = SigningKey::from_bytes(&[1; 32]);
            proptest::prop_assert!(open(&key, TaskId([2; 16]), &bytes).is_err());
        }

        /// A sealed state with any bytes changed, cut or added: refused, never a panic.
        #[test]
        fn a_sealed_state_changed_anywhere_is_refused(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), 1..=255u8), 1..4),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
        ) {
            let key = SigningKey::from_bytes(&[1; 32]);
            let task = TaskId([2; 16]);
            let mut sealed = seal(&key, task, &saved(task));
            let len = sealed.len();
            for (at, x) in edits {
                sealed[at % len] ^= x;
            }
            if let Some(cut) = cut {
                sealed.truncate(cut % len);
            }
            sealed.extend_from_slice(&tail);
            proptest::prop_assert!(open(&key, task, &sealed).is_err());
        }
    }

    /// Only the state the last released phase names resumes, or the one after it (never
    /// released); an older state is refused even when its own entry is copied to the end of
    /// the log, and so is a second state of the same phase.
    #[test]
    fn only_the_last_released_state_or_the_next_one_resumes() {
        let entries = [(0, "a"), (1, "b"), (2, "c")];
        assert_eq!(judge(2, "c", &entries), (true, false));
        assert_eq!(judge(3, "d", &entries), (false, true));
        // An old entry replayed at the end does not make its state the last.
        let replayed = [(0, "a"), (1, "b"), (2, "c"), (1, "b")];
        assert_eq!(judge(1, "b", &replayed), (false, false));
        // Another state of the last phase, or a state two phases on.
        assert_eq!(judge(2, "x", &entries), (false, false));
        assert_eq!(judge(4, "e", &entries), (false, false));
        // Nothing recorded yet: only phase 0's state (saved, never released) resumes.
        assert_eq!(judge(0, "a", &[]), (false, true));
        assert_eq!(judge(1, "b", &[]), (false, false));
    }

    #[test]
    fn the_sealed_bytes_hold_no_secret_and_the_same_state_seals_alike() {
        let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(17));
        let task = TaskId([2; 16]);
        let a = seal(&key, task, &saved(task));
        assert_eq!(
            a,
            seal(&key, task, &saved(task)),
            "deterministic: a retry writes the same bytes"
        );
        // The coordinator's key is nowhere in it.
        assert!(!a.windows(32).any(|w| w == key.to_bytes()));
    }
}
