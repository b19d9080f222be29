//! The bridge from Rust futures to asyncio, on a tokio runtime this module owns.
//!
//! Why not pyo3-async-runtimes: (1) its runtime is a `'static` that can never be shut down,
//! so a tokio thread can still be inside `Python::attach` while the interpreter finalizes,
//! which aborts the process ("PyGILState_Release: thread state must be current",
//! PyO3/pyo3-async-runtimes#40), as seen with short-lived worker processes; (2) it takes the
//! GIL on a tokio thread and calls `call_soon_threadsafe` once per result. Under a flash
//! sale a coalesced batch completes 256 futures at once, and 256 GIL hand-offs between a
//! busy event loop and the I/O threads cost more than the Redis call itself.
//!
//! Here, per event loop, finished results wait in a queue as plain Rust values, and the
//! first one of a burst writes one byte to a socket the loop watches (`add_reader`). The
//! loop then drains the queue in one callback: it converts every result to Python objects
//! and resolves the futures, with the GIL it already holds. Tokio threads never take the
//! GIL on this path. (Loops without `add_reader` fall back to one `call_soon_threadsafe`
//! per burst.)
//!
//! The runtime is created on first use (after a server forks its workers, never at
//! import), and an `atexit` hook shuts it down, with the GIL released, before finalization.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::runtime::{Builder, Handle, Runtime};

use crate::CoreError;

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static SINKS: Mutex<Option<HashMap<usize, Arc<Sink>>>> = Mutex::new(None);
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a push, a swap or a map lookup: a panic cannot leave
    // the data half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle() -> PyResult<Handle> {
    let mut slot = lock(&RUNTIME);
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.handle().clone());
    }
    // One I/O thread by default: a server runs one process per core already, and the
    // thread only moves bytes (the work is in Redis); KAMI_CORE_THREADS overrides it.
    let threads = std::env::var("KAMI_CORE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(1);
    let rt = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("kami-core")
        .enable_all()
        .build()
        .map_err(|e| CoreError::PoolUnavailable(format!("cannot start the I/O runtime: {e}")))?;
    let handle = rt.handle().clone();
    *slot = Some(rt);
    Ok(handle)
}

/// Stop the runtime (registered with `atexit`): waits briefly for tasks at an await point,
/// with the GIL released so nothing waits on it.
#[pyfunction]
fn _shutdown_runtime(py: Python<'_>) {
    let rt = lock(&RUNTIME).take();
    if let Some(rt) = rt {
        py.detach(|| rt.shutdown_timeout(Duration::from_secs(2)));
    }
    lock(&SINKS).take();
}

/// Turns a finished Rust result into Python objects, on the event loop thread.
type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// How a sink wakes its event loop.
enum Wake {
    /// One byte on a socket pair whose read end the loop watches with `add_reader`. The
    /// sink holds no reference to the loop, so the loop can be collected (and its sink
    /// forgotten, see `_drop_sink`).
    Socket { wake: UnixStream, watch: UnixStream },
    /// Loops without `add_reader`: `call_soon_threadsafe(drainer)`, with the GIL.
    Threadsafe {
        event_loop: Py<PyAny>,
        drainer: PyOnceLock<Py<Drainer>>,
    },
}

/// The completion queue of one event loop.
struct Sink {
    done: Mutex<Vec<(Py<PyAny>, Convert)>>,
    /// A wake-up is on its way: later results just join the queue.
    armed: AtomicBool,
    wake: Wake,
}

impl Sink {
    fn push(&self, future: Py<PyAny>, convert: Convert) {
        lock(&self.done).push((future, convert));
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.wake {
            // A full socket buffer (WouldBlock) means a wake-up is pending anyway.
            Wake::Socket { wake, .. } => {
                let _ = (&*wake).write(&[1]);
            }
            Wake::Threadsafe {
                event_loop,
                drainer,
            } => Python::attach(|py| {
                if let Some(drainer) = drainer.get(py) {
                    // Fails only if the loop is closed: nobody is waiting any more.
                    let _ = event_loop
                        .bind(py)
                        .call_method1("call_soon_threadsafe", (drainer.clone_ref(py),));
                }
            }),
        }
    }

    fn drain(&self, py: Python<'_>) {
        if let Wake::Socket { watch, .. } = &self.wake {
            let mut buf = [0u8; 256];
            while matches!((&*watch).read(&mut buf), Ok(n) if n > 0) {}
        }
        self.armed.store(false, Ordering::Release);
        let done = std::mem::take(&mut *lock(&self.done));
        for (future, convert) in done {
            let future = future.bind(py);
            // A cancelled caller's future is done already; its result is dropped.
            if matches!(
                future.call_method0("done").and_then(|d| d.is_truthy()),
                Ok(false)
            ) {
                let _ = match convert(py) {
                    Ok(value) => future.call_method1("set_result", (value,)),
                    Err(err) => future.call_method1("set_exception", (err.into_value(py),)),
                };
            }
        }
    }
}

/// The loop-side callback of a `Sink`.
#[pyclass(frozen)]
struct Drainer {
    sink: Arc<Sink>,
}

#[pymethods]
impl Drainer {
    fn __call__(&self, py: Python<'_>) {
        self.sink.drain(py);
    }
}

/// Forget the sink of a garbage-collected event loop (called by `weakref.finalize`).
#[pyfunction]
fn _drop_sink(key: usize) {
    if let Some(map) = lock(&SINKS).as_mut() {
        map.remove(&key);
    }
}

fn socket_pair() -> Option<(UnixStream, UnixStream)> {
    let (wake, watch) = UnixStream::pair().ok()?;
    wake.set_nonblocking(true).ok()?;
    watch.set_nonblocking(true).ok()?;
    Some((wake, watch))
}

fn new_sink(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Sink>> {
    let py = event_loop.py();
    if let Some((wake, watch)) = socket_pair() {
        let fd = watch.as_raw_fd();
        let sink = Arc::new(Sink {
            done: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
            wake: Wake::Socket { wake, watch },
        });
        let drainer = Py::new(
            py,
            Drainer {
                sink: Arc::clone(&sink),
            },
        )?;
        if event_loop.call_method1("add_reader", (fd, drainer)).is_ok() {
            return Ok(sink);
        }
    }
    let sink = Arc::new(Sink {
        done: Mutex::new(Vec::new()),
        armed: AtomicBool::new(false),
        wake: Wake::Threadsafe {
            event_loop: event_loop.clone().unbind(),
            drainer: PyOnceLock::new(),
        },
    });
    let drainer = Py::new(
        py,
        Drainer {
            sink: Arc::clone(&sink),
        },
    )?;
    if let Wake::Threadsafe { drainer: slot, .. } = &sink.wake {
        let _ = slot.set(py, drainer);
    }
    Ok(sink)
}

fn sink_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Sink>> {
    let key = event_loop.as_ptr().addr();
    if let Some(sink) = lock(&SINKS).as_ref().and_then(|m| m.get(&key)) {
        return Ok(Arc::clone(sink));
    }
    let sink = new_sink(event_loop)?;
    let py = event_loop.py();
    let forget = wrap_pyfunction!(_drop_sink, py)?;
    py.import("weakref")?
        .call_method1("finalize", (event_loop, forget, key))?;
    lock(&SINKS)
        .get_or_insert_with(HashMap::new)
        .insert(key, Arc::clone(&sink));
    Ok(sink)
}

/// Run `fut` on the runtime and return an asyncio future of its result. Cancelling the
/// asyncio future does not stop the Redis call: every pool operation is idempotent per
/// holder, so a caller that gave up can retry and get the same entries.
pub fn spawn<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let get_loop = GET_RUNNING_LOOP.get_or_try_init(py, || {
        py.import("asyncio")?
            .getattr("get_running_loop")
            .map(Bound::unbind)
    })?;
    let event_loop = get_loop.bind(py).call0()?;
    let future = event_loop.call_method0("create_future")?;
    let sink = sink_for(&event_loop)?;
    let mut pending = Pending {
        sink,
        future: Some(future.clone().unbind()),
    };
    handle()?.spawn(async move {
        let result = fut.await;
        pending.complete(Box::new(move |py| match result {
            Ok(v) => v.into_py_any(py),
            Err(e) => Err(PyErr::from(e)),
        }));
    });
    Ok(future)
}

/// A future still owed a result. If its task ends without one (a panic unwinding, or the
/// runtime shutting down), `Drop` delivers an error instead of leaving the caller waiting.
struct Pending {
    sink: Arc<Sink>,
    future: Option<Py<PyAny>>,
}

impl Pending {
    fn complete(&mut self, convert: Convert) {
        if let Some(future) = self.future.take() {
            self.sink.push(future, convert);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.complete(Box::new(|_| {
            Err(
                CoreError::Integrity("the engine's I/O task stopped without a result".into())
                    .into(),
            )
        }));
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let shutdown = wrap_pyfunction!(_shutdown_runtime, py)?;
    py.import("atexit")?.call_method1("register", (shutdown,))?;
    Ok(())
}
