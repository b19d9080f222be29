//! Python binding of `pool::Pool`: one `future_into_py` crossing per call, results turned
//! into Python objects once, when the future completes.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use super::runtime::spawn;

use crate::error::CoreResult;
use crate::pool::keys::pack;
use crate::pool::{Entry, Pool, PoolConfig};

/// Entries as `list[tuple[int, bytes]]`.
struct Entries(Vec<Entry>);

impl<'py> IntoPyObject<'py> for Entries {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let items = self
            .0
            .into_iter()
            .map(|(id, ct)| {
                PyTuple::new(
                    py,
                    [
                        id.into_pyobject(py)?.into_any(),
                        PyBytes::new(py, &ct).into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }
}

/// `take_many`'s result as `dict[str, list[tuple[int, bytes]]]`.
struct PerSku(Vec<(String, Vec<Entry>)>);

impl<'py> IntoPyObject<'py> for PerSku {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let dict = PyDict::new(py);
        for (sku, entries) in self.0 {
            dict.set_item(sku, Entries(entries))?;
        }
        Ok(dict)
    }
}

#[derive(FromPyObject)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

/// Card-key pools in one Redis deployment (a server, or a cluster).
///
/// Nothing connects until the first call, so a server can build its pools before it forks
/// workers. Each pool (SKU) holds opaque entries ``(entry_id, ciphertext)`` with a priority
/// and a batch; ``reserve``/``confirm``/``release``/``take`` move them between available,
/// held and issued atomically, one Lua script call per batch of concurrent callers of the
/// same pool shard (coalescing: while a call is in flight, later callers queue, and the next
/// call serves up to ``max_batch`` of them; past ``max_queue`` waiting callers,
/// ``Overloaded``).
///
/// ``url`` is ``redis://``, ``rediss://``, ``unix:///path`` or ``redis+unix:///path``; with
/// ``cluster=True`` it may be a list of seed URLs. ``shards`` splits each pool over that many
/// hash tags ``{namespace:pool:SKU:N}`` (cluster slots). ``timeout_ms`` bounds connecting and
/// each Redis reply (``PoolUnavailable`` after it). Issued holders are remembered for
/// ``issued_ttl_ms`` to twice that (records rotate in two generations), so a retried
/// ``take``/``confirm`` returns the same entries.
#[pyclass(module = "engine._core", name = "Pool", frozen)]
pub struct PyPool {
    pool: Arc<Pool>,
}

#[pymethods]
impl PyPool {
    #[new]
    #[pyo3(signature = (
        url, *, namespace = "kami", shards = 1, max_batch = 256, max_queue = 65536,
        cluster = false, timeout_ms = 2000, issued_ttl_ms = 86_400_000,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: Urls,
        namespace: &str,
        shards: u32,
        max_batch: usize,
        max_queue: usize,
        cluster: bool,
        timeout_ms: u64,
        issued_ttl_ms: u64,
    ) -> PyResult<Self> {
        let urls = match url {
            Urls::One(u) => vec![u],
            Urls::Many(us) => us,
        };
        let config = PoolConfig {
            urls,
            cluster,
            namespace: namespace.to_owned(),
            shards,
            max_batch,
            max_queue,
            timeout: Duration::from_millis(timeout_ms),
            issued_ttl_ms,
        };
        Ok(Self {
            pool: Arc::new(Pool::new(config)?),
        })
    }

    /// The namespace (key prefix) of this pool client.
    #[getter]
    fn namespace(&self) -> String {
        self.pool.config().namespace.clone()
    }

    /// The number of shards each pool is split into.
    #[getter]
    fn shards(&self) -> u32 {
        self.pool.config().shards
    }

    /// "Now" for TTLs, in ms since the epoch; ``None`` (the default) uses Redis TIME.
    /// Tests set it to move time without sleeping.
    #[getter]
    fn get_clock_ms(&self) -> Option<u64> {
        self.pool.clock_ms()
    }

    #[setter]
    fn set_clock_ms(&self, value: Option<u64>) {
        self.pool.set_clock_ms(value);
    }

    /// Add entries ``(entry_id, ciphertext, priority)`` of ``batch`` to the pool of ``sku``;
    /// returns how many were new.
    ///
    /// Lower priority is taken first. Idempotency contract: entries are filed in buckets of
    /// (priority, batch), and each bucket remembers the highest entry id it ever received;
    /// an entry whose id is not above it is skipped (it was loaded before, and is available,
    /// held or issued). So load each bucket's entries in increasing id order across calls
    /// (ids from one sequence do this); within one call, order does not matter. Entry ids
    /// and priorities must be below 2**53; ciphertexts 1..=4096 bytes.
    #[pyo3(signature = (sku, entries, *, batch = 0))]
    fn load<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        entries: Vec<(u64, Bound<'py, PyBytes>, i64)>,
        batch: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        let entries = entries
            .into_iter()
            .map(|(id, ct, prio)| (id, ct.as_bytes().to_vec(), prio))
            .collect();
        spawn(py, async move { pool.load(&sku, entries, batch).await })
    }

    /// Add one batch's entries, all of one ``priority``: ``ids`` in increasing order and
    /// their ``ciphertexts``; returns how many were new. The bulk form of ``load`` (an
    /// import's million keys), with the same idempotency contract.
    #[pyo3(signature = (sku, ids, ciphertexts, *, priority, batch))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts sequences into owned Vecs
    fn load_sorted<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        ids: Vec<u64>,
        ciphertexts: Vec<PyBackedBytes>,
        priority: i64,
        batch: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        check_parallel(&ids, &ciphertexts)?;
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            let entries = packed(&ids, &ciphertexts)?;
            pool.load_sorted(&sku, priority, batch, entries).await
        })
    }

    /// Park one batch's entries of one ``priority`` (``ids`` strictly increasing, with
    /// their ``ciphertexts``) where no take can see them; returns how many are parked.
    /// Then ``activate_parked`` or ``unpark``; unclaimed, they vanish after ``ttl_s``.
    #[pyo3(signature = (sku, ids, ciphertexts, *, priority, batch, ttl_s = 3600))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts sequences into owned Vecs
    #[allow(clippy::too_many_arguments)]
    fn park_sorted<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        ids: Vec<u64>,
        ciphertexts: Vec<PyBackedBytes>,
        priority: i64,
        batch: u64,
        ttl_s: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        check_parallel(&ids, &ciphertexts)?;
        let pool = Arc::clone(&self.pool);
        // Packed in the task, not on the caller's thread: an import parks while its own
        // event loop streams the same keys to PostgreSQL.
        spawn(py, async move {
            let entries = packed(&ids, &ciphertexts)?;
            pool.park_sorted(&sku, priority, batch, entries, ttl_s)
                .await
        })
    }

    /// Make a batch's parked entries available; ``last_id`` is the batch's highest entry
    /// id. Returns how many, or None when the pool refused (the bucket is live already, or
    /// the pool is gone): load the batch the usual way then.
    #[pyo3(signature = (sku, *, priority, batch, last_id))]
    fn activate_parked<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        priority: i64,
        batch: u64,
        last_id: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            pool.activate_parked(&sku, priority, batch, last_id).await
        })
    }

    /// Drop a batch's parked entries (its import did not commit).
    #[pyo3(signature = (sku, *, priority, batch))]
    fn unpark<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        priority: i64,
        batch: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.unpark(&sku, priority, batch).await })
    }

    /// Hold ``quantity`` (1..=100) entries for ``holder`` for ``ttl_ms``; returns them as
    /// ``[(entry_id, ciphertext)]``.
    ///
    /// A repeated call with the same holder returns the same entries, never more (also once
    /// confirmed). Too few available (in ``batch``, when given) → ``OutOfStock`` and nothing
    /// is held.
    #[pyo3(signature = (sku, holder, quantity, ttl_ms, *, batch = None))]
    fn reserve<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        holder: String,
        quantity: u64,
        ttl_ms: u64,
        batch: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            pool.reserve(&sku, &holder, quantity, ttl_ms, batch)
                .await
                .map(Entries)
        })
    }

    /// Issue the entries held by ``holder`` for good; returns their ids. Idempotent: a
    /// confirmed holder gets the same ids again. ``HoldNotFound`` if the holder holds
    /// nothing (never held, released or expired).
    fn confirm<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        holder: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.confirm(&sku, &holder).await })
    }

    /// Return the entries held by ``holder`` to the pool (first in line); returns how many.
    /// ``HoldNotFound`` if the holder holds nothing.
    fn release<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        holder: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.release(&sku, &holder).await })
    }

    /// Reserve and confirm in one script call (prepaid issuance): returns
    /// ``[(entry_id, ciphertext)]``. A repeated take by the same holder returns the same
    /// entries for ``issued_ttl_ms``. ``OutOfStock`` if no shard has ``quantity`` entries.
    ///
    /// With ``shards > 1`` the holder's shards are tried in an order fixed by the holder's
    /// hash (so retries find the first result); one request is served by one shard.
    #[pyo3(signature = (sku, holder, quantity, *, batch = None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        holder: String,
        quantity: u64,
        batch: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            pool.take(&sku, &holder, quantity, batch).await.map(Entries)
        })
    }

    /// Take several SKUs ``[(sku, quantity)]`` for one holder, all or nothing: returns
    /// ``{sku: [(entry_id, ciphertext)]}``. Each SKU is held first; if one is short, the
    /// others are released and its ``OutOfStock`` is raised; then all are confirmed. A
    /// retry with the same holder returns the same entries.
    fn take_many<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<(String, u64)>,
        holder: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            pool.take_many(&requests, &holder).await.map(PerSku)
        })
    }

    /// ``(available, held, issued)`` counts of the pool, summed over its shards.
    fn stock<'py>(&self, py: Python<'py>, sku: String) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move {
            let s = pool.stock(&sku).await?;
            Ok((s.available, s.held, s.issued))
        })
    }

    /// Return every hold whose TTL passed (as of ``now_ms``, else the pool's clock) to the
    /// pool, and forget issued records older than ``issued_ttl_ms``; returns how many holds
    /// were returned. (Every other call also sweeps a few expired holds first.)
    #[pyo3(signature = (sku, now_ms = None))]
    fn expire<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        now_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.expire(&sku, now_ms).await })
    }

    /// Replace the pool of ``sku`` with ``entries`` ``(entry_id, ciphertext, priority,
    /// batch)``, the available entries according to PostgreSQL; holds and issued records
    /// are dropped and the issued count is set to ``issued``. Returns the number loaded.
    /// Each shard is replaced atomically with its first 4,000 entries; larger pools fill up
    /// over the next calls (a request in between sees a smaller pool, never a wrong one).
    #[pyo3(signature = (sku, entries, *, issued = 0))]
    fn rebuild<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        entries: Vec<(u64, Bound<'py, PyBytes>, i64, u64)>,
        issued: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        let entries = entries
            .into_iter()
            .map(|(id, ct, prio, b)| (id, ct.as_bytes().to_vec(), prio, b))
            .collect();
        spawn(py, async move { pool.rebuild(&sku, entries, issued).await })
    }

    /// Delete the pool of ``sku`` (entries, holds, issued records); returns how many entries
    /// were available.
    fn drain<'py>(&self, py: Python<'py>, sku: String) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.drain(&sku).await })
    }

    /// Whether the pool of ``sku`` is present in Redis (loaded or rebuilt, not drained or
    /// lost): a missing pool must be rebuilt before it serves.
    fn exists<'py>(&self, py: Python<'py>, sku: String) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.exists(&sku).await })
    }

    /// Un-issues a take the database never committed: the entries of ``holder``'s issued
    /// record go back to the pool, except the ids in ``drop`` (issued elsewhere: they leave
    /// circulation), and the record is forgotten, so a retry by the same holder takes fresh
    /// entries. Returns how many entries went back.
    #[pyo3(signature = (sku, holder, *, drop = None))]
    fn restore<'py>(
        &self,
        py: Python<'py>,
        sku: String,
        holder: String,
        drop: Option<Vec<u64>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        let drop = drop.unwrap_or_default();
        spawn(py, async move { pool.restore(&sku, &holder, &drop).await })
    }

    /// Holders with a live hold or an issued record in the pool of ``sku``.
    fn holders<'py>(&self, py: Python<'py>, sku: String) -> PyResult<Bound<'py, PyAny>> {
        let pool = Arc::clone(&self.pool);
        spawn(py, async move { pool.holders(&sku).await })
    }

    fn __repr__(&self) -> String {
        let c = self.pool.config();
        format!(
            "Pool(namespace={:?}, shards={}, cluster={})",
            c.namespace, c.shards, c.cluster
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPool>()
}

fn check_parallel(ids: &[u64], ciphertexts: &[PyBackedBytes]) -> PyResult<()> {
    if ids.len() == ciphertexts.len() {
        Ok(())
    } else {
        Err(PyValueError::new_err(
            "ids and ciphertexts must have the same length",
        ))
    }
}

/// (id, packed entry) pairs of a batch given as parallel sequences (done in the async task:
/// a million entries are not packed on the caller's event loop).
fn packed(ids: &[u64], ciphertexts: &[PyBackedBytes]) -> CoreResult<Vec<(u64, Vec<u8>)>> {
    ids.iter()
        .zip(ciphertexts)
        .map(|(id, ciphertext)| pack(*id, ciphertext).map(|packed| (*id, packed)))
        .collect()
}
