//! Level-triggered events between tasks of one shard: shutdown, and "this partition got
//! new data" for fetch long polls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// A one-way latch: once set, every present and future waiter is released.
#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn new() -> Rc<Latch> {
        Rc::new(Latch::default())
    }

    pub fn set(&self) {
        self.set.set(true);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the latch is set.
    pub fn wait(self: &Rc<Self>) -> LatchWait {
        LatchWait {
            latch: self.clone(),
        }
    }
}

pub struct LatchWait {
    latch: Rc<Latch>,
}

impl Future for LatchWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.latch.set.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.latch.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A wake-up for one waiting task: [`Notify::notify`] sets a flag that the next (or the
/// current) [`Notify::notified`] consumes. Notifications while nobody waits are kept (as
/// one), so none is lost between a check and a wait.
#[derive(Default)]
pub struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves at the next notification (at once if one is pending), consuming it.
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One waiter's flag, which any number of [`Watchers`] lists may fire.
#[derive(Default)]
pub struct WakeSlot {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl WakeSlot {
    pub fn new() -> Rc<WakeSlot> {
        Rc::new(WakeSlot::default())
    }

    pub fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once fired.
    pub fn wait(self: &Rc<Self>) -> SlotWait {
        SlotWait { slot: self.clone() }
    }
}

pub struct SlotWait {
    slot: Rc<WakeSlot>,
}

impl Future for SlotWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slot.fired.get() {
            return Poll::Ready(());
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The waiters interested in one source of events (e.g. appends to one partition).
/// Holds them weakly: a waiter that gave up (timed out) is pruned on the next registration,
/// so an idle source never accumulates dead waiters.
#[derive(Default)]
pub struct Watchers {
    slots: RefCell<Vec<Weak<WakeSlot>>>,
}

impl Watchers {
    pub fn register(&self, slot: &Rc<WakeSlot>) {
        let mut slots = self.slots.borrow_mut();
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Rc::downgrade(slot));
    }

    /// Fires and forgets every registered waiter.
    pub fn notify_all(&self) {
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.fire();
        }
    }

    pub fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_fire_live_slots_and_prune_dead_ones() {
        let watchers = Watchers::default();
        let live = WakeSlot::new();
        watchers.register(&live);
        for _ in 0..100 {
            let gone = WakeSlot::new();
            watchers.register(&gone);
        }
        assert!(
            watchers.len() <= 2,
            "dead waiters are pruned on registration"
        );
        watchers.notify_all();
        assert!(live.fired.get());
        assert!(watchers.is_empty());
    }

    #[test]
    fn latch_releases_waiters_registered_before_and_after() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor");
        ex.run(async {
            let latch = Latch::new();
            let l2 = latch.clone();
            let waiter = glommio::spawn_local(async move { l2.wait().await });
            glommio::yield_if_needed().await;
            latch.set();
            waiter.await;
            latch.wait().await;
        });
    }
}
