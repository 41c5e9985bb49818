//! Property-based fuzzing of every decoder of untrusted bytes in `fedsec-wire`: the phase
//! messages, plans, round references and enums (`messages`, judged by `spec`), checkpoint
//! manifests and model files (`files`), and certificate chains (`certificates`).
//!
//! What holds, for any input: the decoder does not panic; what it accepts encodes back to the
//! same wire message (decode ∘ encode is the identity on what decode accepts); what it refuses
//! it refuses with an error that names the field or the check, the one the input actually
//! broke wherever that can be predicted.
//!
//! Each property runs `FEDSEC_FUZZ_CASES` cases, or a smoke count when it is unset. A long run
//! (on two cores, 1 400 000 cases take about ten minutes; the slowest properties, those that
//! sign or verify, run some 4 000 cases a second):
//!
//! ```text
//! FEDSEC_FUZZ_CASES=1400000 cargo test --release -p fedsec-wire --test fuzz
//! ```

use proptest::prelude::*;
use proptest::test_runner::Config;

#[path = "../common/mod.rs"]
mod common;

mod certificates;
mod files;
mod messages;
mod spec;

/// The configuration of a property: `FEDSEC_FUZZ_CASES` cases, or `smoke` when it is unset.
pub fn cases(smoke: u32) -> Config {
    let cases = std::env::var("FEDSEC_FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("FEDSEC_FUZZ_CASES is a number of cases"))
        .unwrap_or(smoke);
    Config::with_cases(cases)
}

/// One change to encoded bytes. Positions are taken modulo the length at the time of the edit.
#[derive(Debug, Clone)]
pub enum Edit {
    /// XOR a byte with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first bytes.
    Truncate(usize),
    /// Insert a byte.
    Insert(usize, u8),
    /// Append bytes.
    Extend(Vec<u8>),
}

/// One to three edits, mostly bit flips.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), 0..8u32).prop_map(|(at, bit)| Edit::Flip(at, 1 << bit)),
        2 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Edit::Extend),
    ];
    prop::collection::vec(edit, 1..4)
}

/// `bytes` with `edits` applied.
pub fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits {
        let len = out.len();
        match edit {
            Edit::Flip(at, mask) if len > 0 => out[at % len] ^= mask,
            Edit::Flip(..) => {}
            Edit::Truncate(at) => out.truncate(at % (len + 1)),
            Edit::Insert(at, b) => out.insert(at % (len + 1), *b),
            Edit::Extend(tail) => out.extend_from_slice(tail),
        }
    }
    out
}
