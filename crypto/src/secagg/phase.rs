//! The six phases of a SecAgg attempt — Bonawitz et al. §4, Figure 4, rounds 0–4, with protocol
//! v2's Complaints ("1½") between ShareKeys and MaskedInputCollection — named once.
//!
//! [`Phase`] lives in the protocol core because the core's own state machines are built on it:
//! [`ClientPhase`](super::client::ClientPhase) and [`ServerPhase`](super::server::ServerPhase)
//! are a phase or a terminal state, and take their names from it (`phase()`), and the core's
//! errors name the phase they concern with it. The round engine, the client round, the wire
//! crate and the simulation use the same type.

/// The six phases, in order. Every party — client round, round engine, gRPC adapter, the
/// simulation — names phases with this type; [`Phase::name`] is how messages and errors show it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Phase {
    /// Phase 0: each client advertises its two public keys and its self-mask commitment.
    AdvertiseKeys,
    /// Phase 1: each client sends its encrypted shares to its share holders.
    ShareKeys,
    /// Phase 1½ (protocol v2): each client complains about the dealers whose shares are bad,
    /// and learns the excluded set E.
    Complaints,
    /// Phase 2: each client uploads its masked input.
    MaskedInputCollection,
    /// Phase 3: each client signs the set of clients whose input is in the sum (U3).
    ConsistencyCheck,
    /// Phase 4: each client reveals the shares that unmask the sum.
    Unmasking,
}

impl Phase {
    /// All six, in order.
    pub const ALL: [Phase; 6] = [
        Phase::AdvertiseKeys,
        Phase::ShareKeys,
        Phase::Complaints,
        Phase::MaskedInputCollection,
        Phase::ConsistencyCheck,
        Phase::Unmasking,
    ];

    /// The phase's name, as messages, errors, logs and reports show it.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::AdvertiseKeys => "AdvertiseKeys",
            Phase::ShareKeys => "ShareKeys",
            Phase::Complaints => "Complaints",
            Phase::MaskedInputCollection => "MaskedInputCollection",
            Phase::ConsistencyCheck => "ConsistencyCheck",
            Phase::Unmasking => "Unmasking",
        }
    }

    /// Its position, 0–5 (Complaints, the design's phase 1½, is 2; the phases after it are one
    /// more than their number in the paper).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The phase at position `index` (0–5).
    pub fn from_index(index: usize) -> Option<Phase> {
        Phase::ALL.get(index).copied()
    }

    /// The phase after this one (none after [`Phase::Unmasking`]).
    pub fn next(self) -> Option<Phase> {
        Phase::from_index(self.index() + 1)
    }

    /// The phase named `name` (as [`Phase::name`] writes it).
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_names_and_order_agree() {
        for (i, p) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
            assert_eq!(Phase::from_index(i), Some(p));
            assert_eq!(Phase::from_name(p.name()), Some(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(Phase::from_index(6), None);
        assert_eq!(Phase::ShareKeys.next(), Some(Phase::Complaints));
        assert_eq!(Phase::Complaints.next(), Some(Phase::MaskedInputCollection));
        assert_eq!(Phase::Unmasking.next(), None);
        assert_eq!(Phase::AdvertiseKeys.next(), Some(Phase::ShareKeys));
        assert!(Phase::AdvertiseKeys < Phase::Unmasking);
    }
}
