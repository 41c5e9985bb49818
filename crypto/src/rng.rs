//! The operating system's random number generator, for every secret the protocol makes.
//!
//! Key pairs, self-mask seeds and Shamir polynomial coefficients always come from here, never
//! from a generator the caller passes in: keys reused across attempts (a seeded simulation
//! replaying its seed, say) would let a server reconstruct b_u in one attempt and s_u^SK in the
//! other and strip every mask from y_u.

use rand::rngs::SysRng;
use rand_core::UnwrapErr;

/// The OS RNG (`getrandom`), as an infallible `CryptoRng`.
pub fn os_rng() -> UnwrapErr<SysRng> {
    UnwrapErr(SysRng)
}
