//! Bindings for `crypto`: `Cipher`, fingerprints, normalisation, constant-time comparison.

// PyO3 extracts sequence arguments into owned `Vec`s; a slice parameter is not an option.
#![allow(clippy::needless_pass_by_value)]

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyList, PyString};

use crate::crypto::{self, Fingerprinter, Keyring};
use crate::normalize;

/// Envelope encryption of card keys with AES-256-GCM.
///
/// Built from the 32-byte master key. Data keys are created with `generate_data_key` (store
/// the returned wrapped key) or loaded with `add_data_key`; new ciphertext uses the active
/// one, and every ciphertext names its key id, so old ciphertext still decrypts after
/// rotation. A ciphertext is bound to its SKU and entry id: moved to another row it fails
/// with `CryptoError`. Safe to share between threads; batch calls release the GIL.
///
/// Ciphertext: version (1 byte, = 1), key id (4 bytes, big-endian), nonce (12 bytes),
/// encrypted UTF-8 code, tag (16 bytes): 33 bytes more than the code.
#[pyclass(module = "engine._core", frozen)]
pub struct Cipher {
    // Readers take a snapshot and drop the lock at once; writers swap in an updated copy.
    // Nobody holds the lock while detached from or waiting for the interpreter, which is
    // what would deadlock a lock held across `py.detach`.
    ring: Mutex<Arc<Keyring>>,
}

impl Cipher {
    fn snapshot(&self) -> Arc<Keyring> {
        Arc::clone(&self.ring.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn update<T>(
        &self,
        change: impl FnOnce(&mut Keyring) -> crate::error::CoreResult<T>,
    ) -> PyResult<T> {
        // The swap is all-or-nothing, so a poisoned lock still guards a consistent keyring.
        let mut guard = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ring = Keyring::clone(&guard);
        let value = change(&mut ring)?;
        *guard = Arc::new(ring);
        Ok(value)
    }
}

#[pymethods]
impl Cipher {
    /// Creates a cipher from the 32-byte master key. Raises ValueError for another length.
    #[new]
    fn new(master_key: &[u8]) -> PyResult<Self> {
        let ring = Keyring::new(master_key)?;
        Ok(Self {
            ring: Mutex::new(Arc::new(ring)),
        })
    }

    /// Creates a random data key under `key_id`, loads it and returns it wrapped by the
    /// master key (61 bytes) for the caller to store. The new key is not active: store the
    /// wrapped key durably first, then call `set_active`. Raises ValueError if `key_id` is
    /// already loaded.
    fn generate_data_key<'py>(
        &self,
        py: Python<'py>,
        key_id: u32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let wrapped = self.update(|ring| ring.generate_data_key(key_id))?;
        Ok(PyBytes::new(py, &wrapped))
    }

    /// Unwraps a stored data key and loads it under `key_id`; `active=True` also makes it
    /// the key for new ciphertext. Raises CryptoError if the wrapped key does not open under
    /// this master key (or was stored under another id), ValueError if a different key is
    /// already loaded under `key_id`. Loading the same key again is a no-op.
    #[pyo3(signature = (key_id, wrapped, *, active = false))]
    fn add_data_key(&self, key_id: u32, wrapped: &[u8], active: bool) -> PyResult<()> {
        self.update(|ring| {
            ring.add_data_key(key_id, wrapped)?;
            if active {
                ring.set_active(key_id)?;
            }
            Ok(())
        })
    }

    /// Makes the loaded data key `key_id` the one new ciphertext is written with. Raises
    /// ValueError if it is not loaded.
    fn set_active(&self, key_id: u32) -> PyResult<()> {
        self.update(|ring| ring.set_active(key_id))
    }

    /// The id of the data key new ciphertext uses, or None before one is activated.
    #[getter]
    fn active_key_id(&self) -> Option<u32> {
        self.snapshot().active_key_id()
    }

    /// The ids of the loaded data keys, ascending.
    #[getter]
    fn key_ids(&self) -> Vec<u32> {
        self.snapshot().key_ids()
    }

    /// The data key id named in a ciphertext's header (to find entries still under a
    /// retired key). Raises CryptoError if it is not a ciphertext of a known version.
    #[staticmethod]
    fn key_id_of(ciphertext: &[u8]) -> PyResult<u32> {
        Ok(crypto::key_id_of(ciphertext)?)
    }

    /// Encrypts `code` for entry `entry_id` of `sku` under the active data key. Raises
    /// CryptoError if no data key is active.
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        sku: &str,
        entry_id: i64,
        code: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ciphertext = self.snapshot().encrypt(sku, entry_id, code)?;
        Ok(PyBytes::new(py, &ciphertext))
    }

    /// Decrypts the ciphertext of entry `entry_id` of `sku`. Raises CryptoError if it does
    /// not open: wrong or unloaded key, another SKU or entry, or tampered.
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        sku: &str,
        entry_id: i64,
        ciphertext: &[u8],
    ) -> PyResult<Bound<'py, PyString>> {
        let code = zeroize::Zeroizing::new(self.snapshot().decrypt(sku, entry_id, ciphertext)?);
        Ok(PyString::new(py, &code))
    }

    /// Encrypts `(entry_id, code)` pairs of one SKU, in order, without holding the GIL.
    fn encrypt_many<'py>(
        &self,
        py: Python<'py>,
        sku: &str,
        items: Vec<(i64, PyBackedStr)>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ring = self.snapshot();
        // An import encrypts a million codes: large batches use every core.
        let parts = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(items.len() / 50_000)
            .max(1);
        let per_part = items.len().div_ceil(parts).max(1);
        let sealed = py.detach(|| {
            std::thread::scope(|scope| {
                let workers: Vec<_> = items
                    .chunks(per_part)
                    .map(|part| {
                        let ring = &ring;
                        scope.spawn(move || {
                            ring.encrypt_many(sku, part.iter().map(|(id, code)| (*id, &**code)))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| {
                        worker
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })?;
        PyList::new(
            py,
            sealed
                .iter()
                .flat_map(crypto::Sealed::iter)
                .map(|ciphertext| PyBytes::new(py, ciphertext)),
        )
    }

    /// Decrypts `(entry_id, ciphertext)` pairs of one SKU, in order, without holding the
    /// GIL. All or nothing: the first entry that does not open raises CryptoError naming
    /// its entry id.
    fn decrypt_many<'py>(
        &self,
        py: Python<'py>,
        sku: &str,
        items: Vec<(i64, PyBackedBytes)>,
    ) -> PyResult<Bound<'py, PyList>> {
        let ring = self.snapshot();
        let opened = py.detach(|| {
            ring.decrypt_many(
                sku,
                items.iter().map(|(id, ciphertext)| (*id, &**ciphertext)),
            )
        })?;
        PyList::new(py, opened.iter().map(|code| PyString::new(py, code)))
    }

    fn __repr__(&self) -> String {
        let ring = self.snapshot();
        let active = ring
            .active_key_id()
            .map_or_else(|| "None".to_owned(), |id| id.to_string());
        format!(
            "Cipher(active_key_id={active}, key_ids={:?})",
            ring.key_ids()
        )
    }
}

/// HMAC-SHA256 of `normalize_code(code)` under `key` (at least 32 bytes, separate from the
/// encryption keys): the blind index for finding duplicate codes without decrypting.
/// Raises ValueError for a short key.
#[pyfunction]
fn fingerprint<'py>(py: Python<'py>, key: &[u8], code: &str) -> PyResult<Bound<'py, PyBytes>> {
    let digest = Fingerprinter::new(key)?.fingerprint(code);
    Ok(PyBytes::new(py, &digest))
}

/// `fingerprint` of each code, in order, without holding the GIL.
#[pyfunction]
fn fingerprint_many<'py>(
    py: Python<'py>,
    key: &[u8],
    codes: Vec<PyBackedStr>,
) -> PyResult<Bound<'py, PyList>> {
    let fingerprinter = Fingerprinter::new(key)?;
    let digests: Vec<[u8; crypto::FINGERPRINT_LEN]> = py.detach(|| {
        codes
            .iter()
            .map(|code| fingerprinter.fingerprint(code))
            .collect()
    });
    PyList::new(py, digests.iter().map(|digest| PyBytes::new(py, digest)))
}

/// The distinct non-empty codes by fingerprint, in fingerprint order, without holding the
/// GIL: `(fingerprints, codes, duplicates)`, keeping each code's first occurrence and
/// counting the later ones.
#[pyfunction]
fn distinct_by_fingerprint<'py>(
    py: Python<'py>,
    key: &[u8],
    codes: Vec<PyBackedStr>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, usize)> {
    let fingerprinter = Fingerprinter::new(key)?;
    let distinct = py.detach(|| fingerprinter.distinct_sorted(&codes));
    let non_empty = codes.iter().filter(|code| !code.is_empty()).count();
    let fingerprints = PyList::new(
        py,
        distinct.iter().map(|(digest, _)| PyBytes::new(py, digest)),
    )?;
    // The caller's own str objects, not copies.
    let kept = PyList::new(py, distinct.iter().map(|(_, index)| &codes[*index]))?;
    Ok((fingerprints, kept, non_empty - distinct.len()))
}

/// The normal form codes are compared, fingerprinted and stored in: Unicode whitespace
/// (the White_Space property) trimmed at both ends, then Unicode NFC. Nothing else: codes
/// are case-sensitive and inner whitespace is kept.
#[pyfunction]
fn normalize_code(code: &str) -> String {
    normalize::normalize_code(code).into_owned()
}

/// Compares two byte strings in time independent of where they differ (for MACs, tokens,
/// signatures). Their lengths are not secret: different lengths return False at once.
#[pyfunction]
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    crypto::constant_time_eq(a, b)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Cipher>()?;
    m.add_function(wrap_pyfunction!(fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint_many, m)?)?;
    m.add_function(wrap_pyfunction!(distinct_by_fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_code, m)?)?;
    m.add_function(wrap_pyfunction!(constant_time_eq, m)?)?;
    Ok(())
}
