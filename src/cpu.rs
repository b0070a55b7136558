//! The bounded pool for CPU-heavy work: parsing and canonicalizing large bodies, merges,
//! rendering large contexts, vector scans.
//!
//! Such work must not run on the request runtime's workers: on a small machine one 10 MB body
//! or one exact scan of 100k vectors would stall every other request (health checks, cached
//! reads) for as long as it takes. Work below [`HEAVY_BYTES`] runs inline, where handing it
//! to another thread would cost more than it saves; above it, on tokio's blocking threads,
//! at most one fewer at once than the machine has cores, so a flood of big requests queues here
//! instead of oversubscribing the CPU.
//!
//! Background work (the server's embeddings of written contexts) goes through
//! [`run_background`], which lets every waiting request's work go first: a request waits at
//! most for one background job already running, never for a queue of them.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, Semaphore};

/// Work on this many bytes or more of JSON goes to the pool (parsing 64 KiB takes about
/// 100 µs, the point where another thread starts to pay).
pub const HEAVY_BYTES: usize = 64 * 1024;

/// What the pool runs at once, whatever the number of callers: one less than the cores (at
/// least one), so that a core is always left to the request runtime.
static POOL: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    Semaphore::new(cores.saturating_sub(1).max(1))
});

/// Callers of [`run`] waiting for the pool.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Told when no caller of [`run`] waits any more.
static CLEAR: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Runs `work` on the pool and waits for it, without holding a runtime worker meanwhile. A
/// panic in `work` carries on in the caller, as if it had run inline.
pub async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let permit = {
        let waiting = Waiting::enter();
        let permit = POOL.acquire().await.expect("the pool is never closed");
        drop(waiting);
        permit
    };
    let value = on_a_blocking_thread(work).await;
    drop(permit);
    value
}

/// [`run`] for background work: it waits until no caller of [`run`] is waiting, so requests'
/// work goes first. Keep each job short (a few hundred milliseconds): a request that arrives
/// while one runs waits for it.
pub async fn run_background<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    loop {
        let clear = CLEAR.notified();
        if WAITING.load(Ordering::Acquire) == 0 {
            let permit = POOL.acquire().await.expect("the pool is never closed");
            // A request came while this one waited for the pool: it goes first.
            if WAITING.load(Ordering::Acquire) == 0 {
                let value = on_a_blocking_thread(work).await;
                drop(permit);
                return value;
            }
            drop(permit);
            continue;
        }
        clear.await;
    }
}

async fn on_a_blocking_thread<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Counts a caller of [`run`] as waiting while it lives (a caller dropped while waiting, too).
struct Waiting;

impl Waiting {
    fn enter() -> Self {
        WAITING.fetch_add(1, Ordering::AcqRel);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if WAITING.fetch_sub(1, Ordering::AcqRel) == 1 {
            CLEAR.notify_waiters();
        }
    }
}

/// Runs `work` inline when it is about fewer than [`HEAVY_BYTES`] bytes, else on the pool.
pub async fn run_sized<T, F>(bytes: usize, work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if bytes < HEAVY_BYTES {
        work()
    } else {
        run(work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_thread_of_its_own_and_returns_its_value() {
        let caller = std::thread::current().id();
        let (value, thread) = run(|| (6 * 7, std::thread::current().id())).await;
        assert_eq!(value, 42);
        assert_ne!(thread, caller);
        let (_, inline) = run_sized(10, || ((), std::thread::current().id())).await;
        assert_eq!(inline, caller);
    }

    /// Background work queued behind a running job lets a request's work, queued after it,
    /// run first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requests_work_goes_before_background_work() {
        let width = POOL.available_permits();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        // Every permit taken by work that waits for the signal.
        let mut holders = Vec::new();
        let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
        for _ in 0..width {
            let hold = hold.clone();
            holders.push(tokio::spawn(run(move || {
                let _ = hold.lock().unwrap().recv();
            })));
        }
        while POOL.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let background = {
            let order = order.clone();
            tokio::spawn(run_background(move || {
                order.lock().unwrap().push("background")
            }))
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let request = {
            let order = order.clone();
            tokio::spawn(run(move || order.lock().unwrap().push("request")))
        };
        while WAITING.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..width {
            release.send(()).unwrap();
        }
        for holder in holders {
            holder.await.unwrap();
        }
        request.await.unwrap();
        background.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["request", "background"]);
    }

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_in_the_pool_reaches_the_caller() {
        run(|| panic!("boom")).await
    }
}
