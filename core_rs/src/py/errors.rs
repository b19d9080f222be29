//! Python exceptions for `CoreError`, one per variant, all under `EngineError`.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::CoreError;

create_exception!(
    engine._core,
    EngineError,
    PyException,
    "Base class of every error raised by engine._core."
);
create_exception!(
    engine._core,
    OutOfStock,
    EngineError,
    "Fewer entries are available than requested; nothing was held."
);
create_exception!(
    engine._core,
    HoldNotFound,
    EngineError,
    "The holder holds nothing (expired, released or never held)."
);
create_exception!(
    engine._core,
    Overloaded,
    EngineError,
    "The pool's coalescing queue is full; back off and retry."
);
create_exception!(
    engine._core,
    PoolUnavailable,
    EngineError,
    "Redis could not be reached; retryable."
);
create_exception!(
    engine._core,
    IntegrityError,
    EngineError,
    "Pool data is inconsistent; never retried blindly."
);
create_exception!(
    engine._core,
    CryptoError,
    EngineError,
    "Encryption or decryption failed (wrong key, tampered or moved ciphertext)."
);

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        let message = err.to_string();
        match err {
            CoreError::OutOfStock { .. } => OutOfStock::new_err(message),
            CoreError::HoldNotFound => HoldNotFound::new_err(message),
            CoreError::Overloaded(_) => Overloaded::new_err(message),
            CoreError::PoolUnavailable(_) => PoolUnavailable::new_err(message),
            CoreError::Integrity(_) => IntegrityError::new_err(message),
            CoreError::Crypto(_) => CryptoError::new_err(message),
            CoreError::InvalidArgument(_) => PyValueError::new_err(message),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("OutOfStock", py.get_type::<OutOfStock>())?;
    m.add("HoldNotFound", py.get_type::<HoldNotFound>())?;
    m.add("Overloaded", py.get_type::<Overloaded>())?;
    m.add("PoolUnavailable", py.get_type::<PoolUnavailable>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("CryptoError", py.get_type::<CryptoError>())?;
    Ok(())
}
