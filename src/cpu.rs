//! The bounded pool for CPU-heavy work: parsing and canonicalizing large bodies, merges,
//! rendering large contexts, vector scans.
//!
//! Such work must not run on the request runtime's workers: on a small machine one 10 MB body
//! or one exact scan of 100k vectors would stall every other request (health checks, cached
//! reads) for as long as it takes. Work below [`HEAVY_BYTES`] runs inline, where handing it
//! to another thread would cost more than it saves; above it, on tokio's blocking threads,
//! at most one fewer at once than the machine has cores, so a flood of big requests queues here
//! instead of oversubscribing the CPU.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

/// Work on this many bytes or more of JSON goes to the pool (parsing 64 KiB takes about
/// 100 µs, the point where another thread starts to pay).
pub const HEAVY_BYTES: usize = 64 * 1024;

/// What the pool runs at once, whatever the number of callers: one less than the cores (at
/// least one), so that a core is always left to the request runtime.
static POOL: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    Semaphore::new(cores.saturating_sub(1).max(1))
});

/// Runs `work` on the pool and waits for it, without holding a runtime worker meanwhile. A
/// panic in `work` carries on in the caller, as if it had run inline.
pub async fn run<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let _permit = POOL.acquire().await.expect("the pool is never closed");
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
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

    #[tokio::test]
    #[should_panic(expected = "boom")]
    async fn a_panic_in_the_pool_reaches_the_caller() {
        run(|| panic!("boom")).await
    }
}
