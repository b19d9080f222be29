//! Smart batching of concurrent requests per pool shard.
//!
//! While one script call for a lane (a pool shard) is in flight, later requests queue; when
//! it returns, the next call takes everything queued (up to `max_batch`). There is no timer:
//! an idle lane serves a lone caller at once, and the batch grows only when callers arrive
//! faster than Redis answers. The queue is bounded so a stalled Redis turns into
//! `Overloaded` instead of unbounded memory.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::error::{CoreError, CoreResult};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs one batch of requests for one lane and returns one result per request, in order.
pub trait Executor<R, T>: Send + Sync + 'static {
    fn execute(self: Arc<Self>, lane: String, batch: Vec<R>) -> BoxFuture<Vec<CoreResult<T>>>;
}

type Waiter<R, T> = (R, oneshot::Sender<CoreResult<T>>);

struct LaneState<R, T> {
    queue: VecDeque<Waiter<R, T>>,
    /// A driver task owns the lane: it is either waiting on Redis or about to drain the queue.
    driving: bool,
}

type Lane<R, T> = Arc<Mutex<LaneState<R, T>>>;

pub struct Coalescer<R, T> {
    // std Mutex, not tokio's: it is never held across an await, and the critical sections
    // are a few pointer moves, so an async mutex would only add overhead.
    lanes: Mutex<HashMap<String, Lane<R, T>>>,
    max_batch: usize,
    max_queue: usize,
}

fn lock<G>(m: &Mutex<G>) -> std::sync::MutexGuard<'_, G> {
    // A panic while holding one of these locks cannot leave the state half-updated (every
    // critical section is a single push/pop/flag write), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: Send + 'static, T: Send + 'static> Coalescer<R, T> {
    pub fn new(max_batch: usize, max_queue: usize) -> Self {
        Self {
            lanes: Mutex::new(HashMap::new()),
            max_batch: max_batch.max(1),
            max_queue: max_queue.max(1),
        }
    }

    fn lane(&self, key: &str) -> Lane<R, T> {
        let mut lanes = lock(&self.lanes);
        if let Some(lane) = lanes.get(key) {
            return Arc::clone(lane);
        }
        let lane = Arc::new(Mutex::new(LaneState {
            queue: VecDeque::new(),
            driving: false,
        }));
        lanes.insert(key.to_owned(), Arc::clone(&lane));
        lane
    }

    /// Number of requests waiting (not yet sent) on a lane.
    pub fn queued(&self, key: &str) -> usize {
        let lanes = lock(&self.lanes);
        lanes.get(key).map_or(0, |lane| lock(lane).queue.len())
    }

    /// Queue `request` on lane `key` and wait for its own result. Must be called inside a
    /// tokio runtime (the driver is a spawned task, so a cancelled caller never stalls the
    /// others queued behind it).
    pub async fn submit<E: Executor<R, T>>(
        &self,
        exec: &Arc<E>,
        key: &str,
        request: R,
    ) -> CoreResult<T> {
        let lane = self.lane(key);
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = lock(&lane);
            if state.queue.len() >= self.max_queue {
                return Err(CoreError::Overloaded(state.queue.len()));
            }
            state.queue.push_back((request, tx));
            !std::mem::replace(&mut state.driving, true)
        };
        if start {
            tokio::spawn(drive(
                lane,
                key.to_owned(),
                Arc::clone(exec),
                self.max_batch,
            ));
        }
        rx.await.map_err(|_| {
            CoreError::PoolUnavailable("the pool's batch driver stopped unexpectedly".into())
        })?
    }
}

/// Clears `driving` if the driver dies (panic in the executor), so the lane is not wedged;
/// queued senders are dropped, which their callers see as `PoolUnavailable`.
struct DriveGuard<R, T> {
    lane: Lane<R, T>,
    done: bool,
}

impl<R, T> Drop for DriveGuard<R, T> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = lock(&self.lane);
            state.driving = false;
            state.queue.clear();
        }
    }
}

async fn drive<R, T, E: Executor<R, T>>(
    lane: Lane<R, T>,
    key: String,
    exec: Arc<E>,
    max_batch: usize,
) {
    let mut guard = DriveGuard {
        lane: Arc::clone(&lane),
        done: false,
    };
    loop {
        let batch: Vec<Waiter<R, T>> = {
            let mut state = lock(&lane);
            if state.queue.is_empty() {
                state.driving = false;
                guard.done = true;
                return;
            }
            let n = state.queue.len().min(max_batch);
            state.queue.drain(..n).collect()
        };
        let (requests, senders): (Vec<R>, Vec<_>) = batch.into_iter().unzip();
        let expected = senders.len();
        let results = Arc::clone(&exec).execute(key.clone(), requests).await;
        if results.len() == expected {
            for (tx, result) in senders.into_iter().zip(results) {
                // The caller may have gone away (cancelled); its result is simply dropped.
                let _ = tx.send(result);
            }
        } else {
            let got = results.len();
            for tx in senders {
                let _ = tx.send(Err(CoreError::Integrity(format!(
                    "batch of {expected} requests got {got} results"
                ))));
            }
        }
    }
}

/// A copy of `err` for each request of a batch that failed as a whole.
pub fn replicate(err: &CoreError) -> CoreError {
    match err {
        CoreError::OutOfStock {
            requested,
            available,
        } => CoreError::OutOfStock {
            requested: *requested,
            available: *available,
        },
        CoreError::HoldNotFound => CoreError::HoldNotFound,
        CoreError::Overloaded(n) => CoreError::Overloaded(*n),
        CoreError::PoolUnavailable(m) => CoreError::PoolUnavailable(m.clone()),
        CoreError::Integrity(m) => CoreError::Integrity(m.clone()),
        CoreError::Crypto(m) => CoreError::Crypto(m.clone()),
        CoreError::InvalidArgument(m) => CoreError::InvalidArgument(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// Serves `Some(n)` requests with `n * 10` and `None` with `OutOfStock`, after waiting
    /// for `gate` (when set) so tests can hold a batch in flight; records batch sizes.
    struct Fake {
        batches: Mutex<Vec<usize>>,
        gate: Option<Arc<Notify>>,
        started: AtomicUsize,
        short: bool,
    }

    impl Fake {
        fn new(gate: Option<Arc<Notify>>) -> Arc<Self> {
            Arc::new(Self {
                batches: Mutex::new(Vec::new()),
                gate,
                started: AtomicUsize::new(0),
                short: false,
            })
        }
    }

    impl Executor<Option<u64>, u64> for Fake {
        fn execute(
            self: Arc<Self>,
            _lane: String,
            batch: Vec<Option<u64>>,
        ) -> BoxFuture<Vec<CoreResult<u64>>> {
            Box::pin(async move {
                self.started.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = &self.gate {
                    gate.notified().await;
                }
                lock(&self.batches).push(batch.len());
                let mut out: Vec<CoreResult<u64>> = batch
                    .into_iter()
                    .map(|r| {
                        r.map(|n| n * 10).ok_or(CoreError::OutOfStock {
                            requested: 1,
                            available: 0,
                        })
                    })
                    .collect();
                if self.short {
                    out.pop();
                }
                out
            })
        }
    }

    async fn wait_started(fake: &Fake, n: usize) {
        while fake.started.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn lone_request_is_served_at_once() {
        let c = Coalescer::new(8, 8);
        let fake = Fake::new(None);
        assert_eq!(c.submit(&fake, "a", Some(4)).await.ok(), Some(40));
        assert_eq!(*lock(&fake.batches), vec![1]);
    }

    #[tokio::test]
    async fn requests_queued_during_a_call_share_the_next_and_keep_their_own_results() {
        let gate = Arc::new(Notify::new());
        let c = Arc::new(Coalescer::new(3, 100));
        let fake = Fake::new(Some(Arc::clone(&gate)));
        let mut handles = Vec::new();
        for i in 0..7u64 {
            let (c2, f2) = (Arc::clone(&c), Arc::clone(&fake));
            let req = if i == 2 { None } else { Some(i) };
            handles.push(tokio::spawn(
                async move { c2.submit(&f2, "sku", req).await },
            ));
            if i == 0 {
                wait_started(&fake, 1).await;
            }
        }
        while c.queued("sku") < 6 {
            tokio::task::yield_now().await;
        }
        // First call: 1 request. Then batches capped at 3: 3, 3.
        for n in 1..=3 {
            wait_started(&fake, n).await;
            gate.notify_one();
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.ok().and_then(Result::ok));
        }
        assert_eq!(
            results,
            vec![
                Some(0),
                Some(10),
                None,
                Some(30),
                Some(40),
                Some(50),
                Some(60)
            ]
        );
        assert_eq!(*lock(&fake.batches), vec![1, 3, 3]);
        assert_eq!(c.queued("sku"), 0);
    }

    #[tokio::test]
    async fn full_queue_is_overloaded() {
        let gate = Arc::new(Notify::new());
        let c = Arc::new(Coalescer::new(100, 2));
        let fake = Fake::new(Some(Arc::clone(&gate)));
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (c2, f2) = (Arc::clone(&c), Arc::clone(&fake));
            handles.push(tokio::spawn(
                async move { c2.submit(&f2, "sku", Some(1)).await },
            ));
            wait_started(&fake, 1).await;
        }
        // One in flight, two queued: the queue is full.
        while c.queued("sku") < 2 {
            tokio::task::yield_now().await;
        }
        let err = c.submit(&fake, "sku", Some(1)).await;
        assert!(matches!(err, Err(CoreError::Overloaded(2))));
        // Other lanes are independent.
        let free = Coalescer::new(100, 2);
        let quick = Fake::new(None);
        assert!(free.submit(&quick, "other", Some(1)).await.is_ok());
        gate.notify_one();
        wait_started(&fake, 2).await;
        gate.notify_one();
        for h in handles {
            assert_eq!(h.await.ok().and_then(Result::ok), Some(10));
        }
    }

    #[tokio::test]
    async fn wrong_result_count_is_an_integrity_error() {
        let c = Coalescer::new(8, 8);
        let fake = Arc::new(Fake {
            batches: Mutex::new(Vec::new()),
            gate: None,
            started: AtomicUsize::new(0),
            short: true,
        });
        let r = c.submit(&fake, "a", Some(1)).await;
        assert!(matches!(r, Err(CoreError::Integrity(_))));
        // The lane keeps working afterwards.
        let ok = Fake::new(None);
        assert_eq!(c.submit(&ok, "a", Some(2)).await.ok(), Some(20));
    }

    #[test]
    fn replicate_keeps_the_variant() {
        let e = replicate(&CoreError::OutOfStock {
            requested: 3,
            available: 1,
        });
        assert!(matches!(
            e,
            CoreError::OutOfStock {
                requested: 3,
                available: 1
            }
        ));
    }
}
