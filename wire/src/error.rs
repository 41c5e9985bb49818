//! What can be wrong with a wire message.

/// A field of a wire message that does not have the shape its type needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {field}: {reason}")]
pub struct WireError {
    /// The field, as `fedsec.proto` names it (`adverts.enc_pk`, `plan.quant`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: Reason,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// A required field is absent.
    #[error("missing")]
    Missing,
    /// A fixed-length field has another length.
    #[error("{got} bytes, expected {expected}")]
    Length {
        /// Its length.
        got: usize,
        /// The length its type has.
        expected: usize,
    },
    /// A list that must not be empty is.
    #[error("empty")]
    Empty,
    /// An enum field holds a value this version does not know (or leaves it unspecified).
    #[error("unknown or unspecified value {0}")]
    UnknownValue(i32),
    /// A list has another number of entries than the message needs.
    #[error("{got} entries, expected {expected}")]
    Count {
        /// Its entries.
        got: usize,
        /// The number it needs.
        expected: usize,
    },
    /// Parts of a stream came in the wrong order: the order they must come in.
    #[error("out of order: {0}")]
    Order(&'static str),
    /// A stream carries more bytes than its header announced.
    #[error("more than the {0} bytes announced")]
    TooLong(u64),
    /// A number is out of its range.
    #[error("{0} is out of range")]
    OutOfRange(u64),
    /// A list has more entries than it can have.
    #[error("{got} entries, at most {max}")]
    TooMany {
        /// Its entries.
        got: usize,
        /// The most it can have.
        max: usize,
    },
    /// Two fields that must name the same thing do not.
    #[error("does not match {0}")]
    Mismatch(&'static str),
}
