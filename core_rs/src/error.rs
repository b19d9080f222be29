//! The one error type of the core. Every variant maps to exactly one Python exception
//! (see `py::errors`), so callers can tell "retry later" from "this is a bug".

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    /// Fewer entries are available than were asked for; nothing was held.
    #[error("out of stock: {requested} requested, {available} available")]
    OutOfStock { requested: u64, available: u64 },
    /// `confirm` or `release` named a holder that holds nothing (expired or never held).
    #[error("no hold found for this holder")]
    HoldNotFound,
    /// The coalescing queue for a pool is full; the caller should back off.
    #[error("pool overloaded: {0} callers already waiting")]
    Overloaded(usize),
    /// Redis could not be reached or answered with a connection-level error; retryable.
    #[error("pool unavailable: {0}")]
    PoolUnavailable(String),
    /// Data that must be consistent is not (a script reply of the wrong shape, a count that
    /// does not add up). Never retried blindly.
    #[error("integrity error: {0}")]
    Integrity(String),
    /// Encryption or decryption failed. The message never carries key material or plaintext.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// The caller passed an argument the core cannot use.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type CoreResult<T> = Result<T, CoreError>;
