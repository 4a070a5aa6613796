//! A single-threaded async lock that can be closed, for the log's I/O sequencing: any
//! executor can drive it (glommio in production, the simulator's in tests).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A mutual-exclusion lock without data. Waiters are served in arrival order; once
/// closed, every acquisition fails.
#[derive(Default)]
pub(crate) struct Lock {
    locked: Cell<bool>,
    closed: Cell<bool>,
    next_ticket: Cell<u64>,
    /// `(ticket, waker)` of waiting acquisitions, oldest first.
    waiters: RefCell<Vec<(u64, Waker)>>,
}

/// Held while alive.
pub(crate) struct Guard<'a> {
    lock: &'a Lock,
}

/// The lock was closed.
#[derive(Debug)]
pub(crate) struct Closed;

impl Lock {
    pub fn acquire(&self) -> Acquire<'_> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Acquire {
            lock: self,
            ticket,
            registered: false,
        }
    }

    /// Fails every waiting and later acquisition.
    pub fn close(&self) {
        self.closed.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_iter().for_each(|(_, w)| w.wake());
    }

    pub fn is_locked(&self) -> bool {
        self.locked.get()
    }

    fn release(&self) {
        self.locked.set(false);
        if let Some((_, waker)) = self.waiters.borrow().first() {
            waker.wake_by_ref();
        }
    }
}

pub(crate) struct Acquire<'a> {
    lock: &'a Lock,
    ticket: u64,
    registered: bool,
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<Guard<'a>, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let lock = self.lock;
        if lock.closed.get() {
            return Poll::Ready(Err(Closed));
        }
        let mut waiters = lock.waiters.borrow_mut();
        let first = waiters.first().is_none_or(|(t, _)| *t == self.ticket);
        if !lock.locked.get() && (first || !self.registered && waiters.is_empty()) {
            if self.registered {
                waiters.retain(|(t, _)| *t != self.ticket);
            }
            self.registered = false;
            lock.locked.set(true);
            return Poll::Ready(Ok(Guard { lock }));
        }
        match waiters.iter_mut().find(|(t, _)| *t == self.ticket) {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => waiters.push((self.ticket, cx.waker().clone())),
        }
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if self.registered {
            let mut waiters = self.lock.waiters.borrow_mut();
            let was_first = waiters.first().is_some_and(|(t, _)| *t == self.ticket);
            waiters.retain(|(t, _)| *t != self.ticket);
            // The next in line may be able to go now.
            if was_first && !self.lock.locked.get() {
                if let Some((_, w)) = waiters.first() {
                    w.wake_by_ref();
                }
            }
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn waiters_take_turns_in_order_and_close_fails_them() {
        let rt = crate::sim::Runtime::new(4);
        let lock = Rc::new(Lock::default());
        let order = Rc::new(RefCell::new(Vec::new()));
        for i in 0..5 {
            let (lock, order) = (lock.clone(), order.clone());
            rt.spawn(async move {
                let _g = lock.acquire().await.expect("open");
                order.borrow_mut().push(i);
                // Hold it across a yield.
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
                assert!(lock.is_locked());
            });
        }
        rt.run_until_stalled();
        assert_eq!(order.borrow().len(), 5);
        lock.close();
        let l = lock.clone();
        let failed = rt.spawn_with_result(async move { l.acquire().await.is_err() });
        rt.run_until_stalled();
        assert_eq!(failed.take(), Some(true));
    }
}
