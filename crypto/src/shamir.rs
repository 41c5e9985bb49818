//! t-of-n Shamir secret sharing over the Ristretto255 scalar field.
