//! Group-commit bookkeeping: appends are numbered by the running byte count of the log
//! (a sequence), and callers wait until the written (or synced) sequence passes theirs.
//! One completed write or one `fdatasync` advances the sequence once and wakes every
//! waiter it covers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A monotonically advancing sequence with waiters. Invariant: `done` never decreases;
/// once failed, every wait fails.
#[derive(Default)]
pub(crate) struct SeqWaiters {
    done: Cell<u64>,
    failed: RefCell<Option<String>>,
    waiters: RefCell<Vec<(u64, Waker)>>,
}

impl SeqWaiters {
    pub fn done(&self) -> u64 {
        self.done.get()
    }

    /// Everything up to `seq` is complete: wake its waiters.
    pub fn advance(&self, seq: u64) {
        assert!(
            seq >= self.done.get(),
            "a completion sequence went backwards"
        );
        self.done.set(seq);
        let ready: Vec<Waker> = {
            let mut waiters = self.waiters.borrow_mut();
            let mut ready = Vec::new();
            waiters.retain(|(wanted, waker)| {
                if *wanted <= seq {
                    ready.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            ready
        };
        ready.into_iter().for_each(Waker::wake);
    }

    /// Nothing more will complete: wake every waiter with `reason`.
    pub fn fail(&self, reason: &str) {
        self.failed
            .borrow_mut()
            .get_or_insert_with(|| reason.to_string());
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_iter().for_each(|(_, waker)| waker.wake());
    }

    /// Resolves when `seq` is complete, or with the failure reason.
    pub fn wait(&self, seq: u64) -> WaitSeq<'_> {
        WaitSeq { waiters: self, seq }
    }
}

pub(crate) struct WaitSeq<'a> {
    waiters: &'a SeqWaiters,
    seq: u64,
}

impl Future for WaitSeq<'_> {
    type Output = Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let w = self.waiters;
        if w.done.get() >= self.seq {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = w.failed.borrow().as_ref() {
            return Poll::Ready(Err(reason.clone()));
        }
        let mut waiters = w.waiters.borrow_mut();
        let known = waiters
            .iter()
            .any(|(seq, waker)| *seq == self.seq && waker.will_wake(cx.waker()));
        if !known {
            waiters.push((self.seq, cx.waker().clone()));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn one_advance_wakes_every_covered_waiter() {
        glommio::LocalExecutor::default().run(async {
            let w = Rc::new(SeqWaiters::default());
            let tasks: Vec<_> = (1..=5u64)
                .map(|seq| {
                    let w = w.clone();
                    glommio::spawn_local(async move { w.wait(seq * 10).await })
                })
                .collect();
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            w.advance(30);
            w.fail("disk gone");
            let results: Vec<_> = futures_lite_join(tasks).await;
            assert_eq!(results[..3], [Ok(()), Ok(()), Ok(())]);
            assert!(results[3..]
                .iter()
                .all(|r| r == &Err("disk gone".to_string())));
        });
    }

    async fn futures_lite_join<T>(tasks: Vec<glommio::Task<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await);
        }
        out
    }
}
