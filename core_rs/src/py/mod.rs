//! The PyO3 binding layer: the only module that touches Python. Each area registers its
//! classes and functions from its own file.

mod crypto;
mod errors;
mod parse;
mod pool;
mod runtime;

use pyo3::prelude::*;

/// Kami's Rust core (`engine._core`).
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    errors::register(m)?;
    crypto::register(m)?;
    parse::register(m)?;
    runtime::register(m)?;
    pool::register(m)?;
    Ok(())
}
