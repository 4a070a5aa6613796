//! The shard runtime: one glommio `LocalExecutor` per core, pinned, and what shards need to
//! run side by side without sharing anything: the [`mesh`] they call each other over,
//! latches and wake-ups ([`event`]), sockets split for a reader and a writer task
//! ([`halves`]), one-shot replies ([`oneshot`]) and byte budgets
//! ([`budget`]). Nothing here knows of Kafka, partitions or metadata: a shard's state lives
//! in the context above this layer (`crate::node`), which names the calls shards send each
//! other.

pub mod budget;
pub mod event;
pub mod halves;
pub mod mesh;
pub mod oneshot;

use std::future::Future;

use glommio::{LocalExecutorBuilder, Placement};

/// A shard's index, 0..shard_count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// I/O memory each executor registers with io_uring (RLIMIT_MEMLOCK is often small).
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

/// Wall-clock milliseconds since the Unix epoch: Kafka's timestamps (commits, retention,
/// producer expiry) are wall-clock, and deadlines compared with them use the same clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts shard `id`'s executor on its own thread, pinned to `cpu` when given, and runs
/// `main` on it. The thread ends when `main` does.
pub fn spawn<F, Fut>(
    id: ShardId,
    cpu: Option<usize>,
    main: F,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("wharf-shard-{}", id.0))
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        // Shard 0 parks one blocking thread waiting for SIGTERM; resolving peers' names and
        // tidying the data dir need others.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(3))
        .spawn(main)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
