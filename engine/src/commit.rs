//! Group-commit bookkeeping: appends are numbered by the running byte count of the log
//! (a sequence), and callers wait until the written (or synced) sequence passes theirs.
//! One completed write or one `fdatasync` advances the sequence once and wakes every
//! waiter it covers. A failure fails a range of the sequence (what was queued when it
//! happened) and the sequence goes on past it, so the log can take appends again once it
//! has recovered; numbers are never reused.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Failed ranges remembered; every waiter in a range is woken when it fails, so only a
/// waiter that has not looked since could still ask, and it looks at once.
const MAX_FAILED_RANGES: usize = 64;

/// A monotonically advancing sequence with waiters. Invariant: `done` never decreases; a
/// sequence number at or below `done` completed unless it lies in a failed range.
#[derive(Default)]
pub(crate) struct SeqWaiters {
    done: Cell<u64>,
    /// `(after, up_to, reason)`: sequence numbers in `(after, up_to]` failed.
    failed: RefCell<VecDeque<(u64, u64, String)>>,
    /// Set when nothing more will ever complete (the log closed).
    closed: RefCell<Option<String>>,
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
        self.wake_up_to(seq);
    }

    /// Everything after `done` up to `up_to` will never complete: those waiters fail with
    /// `reason`, and the sequence continues after `up_to`.
    pub fn fail_up_to(&self, up_to: u64, reason: &str) {
        let done = self.done.get();
        if up_to > done {
            let mut failed = self.failed.borrow_mut();
            if failed.len() == MAX_FAILED_RANGES {
                failed.pop_front();
            }
            failed.push_back((done, up_to, reason.to_string()));
            drop(failed);
            self.done.set(up_to);
        }
        self.wake_up_to(up_to);
    }

    /// Nothing more will complete: wake every waiter with `reason`.
    pub fn close(&self, reason: &str) {
        self.closed
            .borrow_mut()
            .get_or_insert_with(|| reason.to_string());
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        waiters.into_iter().for_each(|(_, waker)| waker.wake());
    }

    fn wake_up_to(&self, seq: u64) {
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

    /// The outcome for `seq` if it is known.
    pub fn outcome(&self, seq: u64) -> Option<Result<(), String>> {
        if seq <= self.done.get() {
            let failed = self.failed.borrow();
            return Some(
                match failed
                    .iter()
                    .find(|(after, up_to, _)| seq > *after && seq <= *up_to)
                {
                    Some((_, _, reason)) => Err(reason.clone()),
                    None => Ok(()),
                },
            );
        }
        self.closed.borrow().as_ref().map(|r| Err(r.clone()))
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
        if let Some(outcome) = w.outcome(self.seq) {
            return Poll::Ready(outcome);
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
    fn one_advance_wakes_every_covered_waiter_and_failures_cover_a_range() {
        let rt = crate::sim::Runtime::new(1);
        let w = Rc::new(SeqWaiters::default());
        let tasks: Vec<_> = (1..=6u64)
            .map(|seq| {
                let w = w.clone();
                rt.spawn_with_result(async move { w.wait(seq * 10).await })
            })
            .collect();
        rt.run_until_stalled();
        w.advance(30);
        w.fail_up_to(50, "disk full");
        rt.run_until_stalled();
        w.advance(70);
        rt.run_until_stalled();
        let results: Vec<_> = tasks.iter().map(|t| t.take()).collect();
        assert_eq!(results[..3], [Some(Ok(())), Some(Ok(())), Some(Ok(()))]);
        assert_eq!(
            results[3..5],
            [Some(Err("disk full".into())), Some(Err("disk full".into()))]
        );
        assert_eq!(
            results[5],
            Some(Ok(())),
            "the sequence goes on after a failure"
        );
        w.close("closed");
        assert_eq!(w.outcome(80), Some(Err("closed".into())));
        assert_eq!(w.outcome(40), Some(Err("disk full".into())));
    }
}
