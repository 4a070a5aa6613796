//! Memory accounting on a shard: how many bytes of requests it holds, and how many bytes of
//! responses each connection owes its client.
//!
//! A [`Budget`] is a shard's allowance for request bytes read from sockets and not yet
//! answered. A connection takes a [`Grant`] from it as a request's bytes arrive (never for
//! bytes only claimed by a size prefix) and the grant is returned when the request has been
//! answered. When the budget is spent, connections wait for it before reading further: the
//! shard stops reading sockets instead of buffering without end.
//!
//! A [`ResponseBacklog`] counts the bytes of one connection's responses that are ready (or,
//! for a Fetch, may become ready) but not yet written to the socket. Past its bound the
//! connection reads no more requests until its client has read some of what it is owed.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::Semaphore;

use crate::shard::event::{WakeSlot, Watchers};

/// A shard's allowance of request bytes.
pub struct Budget {
    semaphore: Rc<Semaphore>,
    total_bytes: usize,
}

impl Budget {
    pub fn new(total_bytes: usize) -> Budget {
        Budget {
            semaphore: Rc::new(Semaphore::new(total_bytes as u64)),
            total_bytes,
        }
    }

    /// Bytes not granted right now.
    pub fn available_bytes(&self) -> usize {
        self.semaphore.available() as usize
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// A grant of nothing yet, to [`Grant::grow`] as bytes arrive.
    pub fn empty_grant(&self) -> Grant {
        Grant {
            semaphore: self.semaphore.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`Budget`]; given back when dropped.
pub struct Grant {
    semaphore: Rc<Semaphore>,
    bytes: usize,
}

impl Grant {
    /// Takes `more` bytes, waiting until the budget has them. The caller bounds `more` by
    /// the budget's total (a request never exceeds it), so the wait always ends.
    pub async fn grow(&mut self, more: usize) -> Result<(), glommio::GlommioError<()>> {
        if more == 0 {
            return Ok(());
        }
        self.semaphore.acquire(more as u64).await?;
        self.bytes += more;
        Ok(())
    }

    /// Gives `fewer` of the granted bytes back at once.
    pub fn shrink(&mut self, fewer: usize) {
        let fewer = fewer.min(self.bytes);
        if fewer > 0 {
            self.bytes -= fewer;
            self.semaphore.signal(fewer as u64);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.semaphore.signal(self.bytes as u64);
        }
    }
}

/// The response bytes one connection owes its client.
pub struct ResponseBacklog {
    bytes: Cell<usize>,
    max_bytes: usize,
    room: Watchers,
}

impl ResponseBacklog {
    pub fn new(max_bytes: usize) -> Rc<ResponseBacklog> {
        Rc::new(ResponseBacklog {
            bytes: Cell::new(0),
            max_bytes,
            room: Watchers::default(),
        })
    }

    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn is_full(&self) -> bool {
        self.bytes.get() >= self.max_bytes
    }

    /// A response of `bytes` is waiting to be written.
    pub fn add(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() + bytes);
    }

    /// `bytes` of responses were written (or will never be).
    pub fn remove(&self, bytes: usize) {
        let was_full = self.is_full();
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
        if was_full && !self.is_full() {
            self.room.notify_all();
        }
    }

    /// Counts `bytes` a response may grow to until the returned reservation is dropped.
    pub fn reserve(self: &Rc<Self>, bytes: usize) -> Reservation {
        self.add(bytes);
        Reservation {
            backlog: self.clone(),
            bytes,
        }
    }

    /// Resolves once the backlog is below its bound.
    pub async fn wait_for_room(&self) {
        while self.is_full() {
            let slot = WakeSlot::new();
            self.room.register(&slot);
            slot.wait().await;
        }
    }
}

/// Response bytes held in a [`ResponseBacklog`] for a response still being built.
pub struct Reservation {
    backlog: Rc<ResponseBacklog>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.backlog.remove(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_executor(test: impl std::future::Future<Output = ()> + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test);
    }

    #[test]
    fn grants_return_their_bytes_when_dropped() {
        on_executor(async {
            let budget = Budget::new(100);
            let mut a = budget.empty_grant();
            a.grow(60).await.unwrap();
            let mut b = budget.empty_grant();
            b.grow(40).await.unwrap();
            assert_eq!(budget.available_bytes(), 0);
            drop(a);
            assert_eq!(budget.available_bytes(), 60);
            b.grow(60).await.unwrap();
            assert_eq!(b.bytes(), 100);
            b.shrink(30);
            assert_eq!(budget.available_bytes(), 30);
            drop(b);
            assert_eq!(budget.available_bytes(), 100);
        });
    }

    #[test]
    fn a_grant_waits_until_the_budget_has_room() {
        on_executor(async {
            let budget = Budget::new(10);
            let mut held = budget.empty_grant();
            held.grow(10).await.unwrap();
            let mut waiting = budget.empty_grant();
            let task = glommio::spawn_local(async move {
                waiting.grow(5).await.unwrap();
                waiting
            });
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            drop(held);
            let waiting = task.await;
            assert_eq!(waiting.bytes(), 5);
        });
    }

    #[test]
    fn the_backlog_lets_a_reader_go_on_once_below_its_bound() {
        on_executor(async {
            let backlog = ResponseBacklog::new(100);
            backlog.add(70);
            let reservation = backlog.reserve(50);
            assert!(backlog.is_full());
            let b = backlog.clone();
            let reader = glommio::spawn_local(async move { b.wait_for_room().await });
            glommio::executor().yield_task_queue_now().await;
            drop(reservation);
            reader.await;
            assert_eq!(backlog.bytes(), 70);
            backlog.remove(70);
            assert_eq!(backlog.bytes(), 0);
        });
    }
}
