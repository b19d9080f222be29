//! The bridge from Rust futures to asyncio, on a tokio runtime this module owns.
//!
//! Why not pyo3-async-runtimes: its runtime is a `'static` that can never be shut down, so
//! a tokio thread can still be inside `Python::attach` (finishing a result hand-off) while
//! the interpreter finalizes, which aborts the process ("PyGILState_Release: thread state
//! must be current", PyO3/pyo3-async-runtimes#40), as seen with short-lived worker
//! processes. Here the runtime lives in a mutex: it is created on first use (after a server
//! forks its workers, never at import) and an `atexit` hook shuts it down, with the GIL
//! released, before finalization starts.
//!
//! One crossing per call: the coroutine's result is converted to Python objects once, on
//! the tokio thread, and handed to the event loop with `call_soon_threadsafe`.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;
use tokio::runtime::{Builder, Handle, Runtime};

use crate::CoreError;

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static RESOLVE: PyOnceLock<Py<PyCFunction>> = PyOnceLock::new();

fn handle() -> PyResult<Handle> {
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.handle().clone());
    }
    let rt = Builder::new_multi_thread()
        .thread_name("kami-core")
        .enable_all()
        .build()
        .map_err(|e| CoreError::PoolUnavailable(format!("cannot start the I/O runtime: {e}")))?;
    let handle = rt.handle().clone();
    *slot = Some(rt);
    Ok(handle)
}

/// Stop the runtime (registered with `atexit`): waits briefly for tasks at an await point,
/// with the GIL released so a task handing over a result can finish.
#[pyfunction]
fn _shutdown_runtime(py: Python<'_>) {
    let rt = RUNTIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(rt) = rt {
        py.detach(|| rt.shutdown_timeout(Duration::from_secs(2)));
    }
}

/// Complete `future` unless it was cancelled meanwhile (runs on the event loop).
#[pyfunction]
fn _resolve(future: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        future.call_method1("set_result", (value,))?;
    } else {
        future.call_method1("set_exception", (value,))?;
    }
    Ok(())
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
    let resolve = RESOLVE
        .get_or_try_init(py, || wrap_pyfunction!(_resolve, py).map(Bound::unbind))?
        .clone_ref(py);
    let (event_loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    handle()?.spawn(async move {
        let result = fut.await;
        Python::attach(move |py| {
            let (ok, value) = match result {
                Ok(v) => match v.into_py_any(py) {
                    Ok(obj) => (true, obj),
                    Err(e) => (false, e.into_value(py).into_any()),
                },
                Err(e) => (false, PyErr::from(e).into_value(py).into_any()),
            };
            // Fails only if the loop is closed: nobody is waiting any more.
            let _ = event_loop_ref
                .bind(py)
                .call_method1("call_soon_threadsafe", (resolve, future_ref, ok, value));
        });
    });
    Ok(future)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let shutdown = wrap_pyfunction!(_shutdown_runtime, py)?;
    py.import("atexit")?.call_method1("register", (shutdown,))?;
    Ok(())
}
