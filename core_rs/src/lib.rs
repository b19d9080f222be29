//! Kami's issuance core.
//!
//! The pure modules here know nothing of Python, prices, agents or orders: they move opaque
//! key entries between pool states, encrypt and decrypt, and parse key files. Only `py`
//! touches PyO3, so everything else is testable with `cargo test --no-default-features`.

pub mod crypto;
pub mod error;
pub mod normalize;
pub mod parse;
pub mod pool;

#[cfg(feature = "python")]
mod py;

pub use error::CoreError;

/// The version of this crate, reported by `kami version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
