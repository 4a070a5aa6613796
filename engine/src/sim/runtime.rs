//! A deterministic single-threaded executor with a simulated clock, for seeded simulation.
//!
//! Tasks are futures; I/O is a set of *pending completions* (closures) that simulated
//! devices submit. Each step the runtime picks, with its seeded generator, either a ready
//! task to poll or a pending completion to run, so tasks interleave and I/O completes in
//! every order a real machine could produce, and the same seed replays the same run.
//! Time only moves when the caller advances it. [`Runtime::crash`] drops every task and
//! every pending completion at once, as a process crash would.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use super::Rng;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Ids of woken tasks; shared with wakers, which must be `Send + Sync`.
#[derive(Default)]
struct ReadyQueue {
    ids: Vec<usize>,
    queued: Vec<bool>,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<ReadyQueue>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.queued.len() <= self.id {
            ready.queued.resize(self.id + 1, false);
        }
        if !ready.queued[self.id] {
            ready.queued[self.id] = true;
            ready.ids.push(self.id);
        }
    }
}

struct Inner {
    rng: RefCell<Rng>,
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<Mutex<ReadyQueue>>,
    completions: RefCell<Vec<Box<dyn FnOnce()>>>,
    now_ms: Cell<i64>,
    /// Chance per million that a step runs a completion rather than a ready task.
    io_bias_per_million: Cell<u32>,
    steps: Cell<u64>,
}

/// Handle on a deterministic executor; clones share it.
#[derive(Clone)]
pub struct Runtime {
    inner: Rc<Inner>,
}

/// The result of a task spawned with [`Runtime::spawn_with_result`], once it finished.
pub struct TaskResult<T> {
    slot: Rc<RefCell<Option<T>>>,
}

impl<T> TaskResult<T> {
    /// The task's output if it has finished (taken once).
    pub fn take(&self) -> Option<T> {
        self.slot.borrow_mut().take()
    }

    pub fn is_finished(&self) -> bool {
        self.slot.borrow().is_some()
    }
}

/// The simulated epoch: 2023-11-14, so timestamps look like real ones.
pub const SIM_EPOCH_MS: i64 = 1_700_000_000_000;

impl Runtime {
    pub fn new(seed: u64) -> Runtime {
        Runtime {
            inner: Rc::new(Inner {
                rng: RefCell::new(Rng::new(seed)),
                tasks: RefCell::new(Vec::new()),
                free: RefCell::new(Vec::new()),
                ready: Arc::new(Mutex::new(ReadyQueue::default())),
                completions: RefCell::new(Vec::new()),
                now_ms: Cell::new(SIM_EPOCH_MS),
                io_bias_per_million: Cell::new(300_000),
                steps: Cell::new(0),
            }),
        }
    }

    /// How often a step completes I/O rather than polling a task (per million).
    pub fn set_io_bias(&self, per_million: u32) {
        self.inner
            .io_bias_per_million
            .set(per_million.min(1_000_000));
    }

    /// The simulated clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.now_ms.get()
    }

    pub fn advance_ms(&self, ms: i64) {
        self.inner.now_ms.set(self.inner.now_ms.get() + ms.max(0));
    }

    /// Steps taken since the runtime was created.
    pub fn steps(&self) -> u64 {
        self.inner.steps.get()
    }

    /// Draws from the runtime's generator (for devices attached to it).
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.inner.rng.borrow_mut())
    }

    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.spawn_boxed(Box::pin(fut));
    }

    pub fn spawn_boxed(&self, task: Task) {
        let id = match self.inner.free.borrow_mut().pop() {
            Some(id) => {
                self.inner.tasks.borrow_mut()[id] = Some(task);
                id
            }
            None => {
                let mut tasks = self.inner.tasks.borrow_mut();
                tasks.push(Some(task));
                tasks.len() - 1
            }
        };
        self.waker(id).wake();
    }

    /// Spawns a task whose output can be collected with [`TaskResult::take`].
    pub fn spawn_with_result<T: 'static>(
        &self,
        fut: impl Future<Output = T> + 'static,
    ) -> TaskResult<T> {
        let slot = Rc::new(RefCell::new(None));
        let out = slot.clone();
        self.spawn(async move {
            let value = fut.await;
            *out.borrow_mut() = Some(value);
        });
        TaskResult { slot }
    }

    /// Registers a completion: a simulated device finishing an operation. It runs at a step
    /// the runtime chooses, after which the task waiting for it is woken by it.
    pub fn submit(&self, completion: Box<dyn FnOnce()>) {
        self.inner.completions.borrow_mut().push(completion);
    }

    /// Completions not yet run.
    pub fn pending_completions(&self) -> usize {
        self.inner.completions.borrow().len()
    }

    fn waker(&self, id: usize) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            ready: self.inner.ready.clone(),
        }))
    }

    fn pop_ready(&self) -> Option<usize> {
        let mut ready = self.inner.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.ids.is_empty() {
            return None;
        }
        let at = self.inner.rng.borrow_mut().below(ready.ids.len() as u64) as usize;
        let id = ready.ids.swap_remove(at);
        ready.queued[id] = false;
        Some(id)
    }

    fn has_ready(&self) -> bool {
        !self
            .inner
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .is_empty()
    }

    /// One step: poll a ready task or run a completion. False when there is neither.
    pub fn step(&self) -> bool {
        let has_ready = self.has_ready();
        let completions = self.inner.completions.borrow().len();
        if !has_ready && completions == 0 {
            return false;
        }
        self.inner.steps.set(self.inner.steps.get() + 1);
        let run_io = completions > 0
            && (!has_ready
                || self
                    .inner
                    .rng
                    .borrow_mut()
                    .chance(self.inner.io_bias_per_million.get()));
        if run_io {
            let completion = {
                let at = self.inner.rng.borrow_mut().below(completions as u64) as usize;
                self.inner.completions.borrow_mut().swap_remove(at)
            };
            completion();
            return true;
        }
        let Some(id) = self.pop_ready() else {
            return true;
        };
        let task = self
            .inner
            .tasks
            .borrow_mut()
            .get_mut(id)
            .and_then(Option::take);
        let Some(mut task) = task else {
            return true;
        };
        let waker = self.waker(id);
        let mut cx = Context::from_waker(&waker);
        match task.as_mut().poll(&mut cx) {
            Poll::Ready(()) => self.inner.free.borrow_mut().push(id),
            Poll::Pending => {
                if let Some(slot) = self.inner.tasks.borrow_mut().get_mut(id) {
                    *slot = Some(task);
                }
            }
        }
        true
    }

    /// Steps until no task is ready and no completion is pending (or `max_steps` passed);
    /// returns the steps taken.
    pub fn run_until_stalled(&self) -> u64 {
        self.run_for(u64::MAX)
    }

    /// At most `max_steps` steps; fewer if the runtime stalls first.
    pub fn run_for(&self, max_steps: u64) -> u64 {
        let mut steps = 0;
        while steps < max_steps && self.step() {
            steps += 1;
        }
        steps
    }

    /// Live tasks (spawned and not finished).
    pub fn task_count(&self) -> usize {
        self.inner
            .tasks
            .borrow()
            .iter()
            .filter(|t| t.is_some())
            .count()
    }

    /// A process crash: every task and every pending completion is dropped. Devices apply
    /// their own crash semantics (see [`super::SimDisk::crash`]) before or after.
    pub fn crash(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        self.inner.free.borrow_mut().clear();
        let completions = std::mem::take(&mut *self.inner.completions.borrow_mut());
        {
            let mut ready = self.inner.ready.lock().unwrap_or_else(|e| e.into_inner());
            ready.ids.clear();
            ready.queued.clear();
        }
        // Dropped outside the borrows: their destructors may touch the runtime.
        drop(tasks);
        drop(completions);
    }
}

/// A future that completes when a simulated device runs its completion; the device
/// fills the slot and wakes the task.
pub struct Completion<T> {
    slot: Rc<CompletionSlot<T>>,
}

pub(crate) struct CompletionSlot<T> {
    value: RefCell<Option<T>>,
    waker: RefCell<Option<Waker>>,
}

impl<T> CompletionSlot<T> {
    pub fn complete(&self, value: T) {
        *self.value.borrow_mut() = Some(value);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl<T> Completion<T> {
    pub(crate) fn new() -> (Completion<T>, Rc<CompletionSlot<T>>) {
        let slot = Rc::new(CompletionSlot {
            value: RefCell::new(None),
            waker: RefCell::new(None),
        });
        (Completion { slot: slot.clone() }, slot)
    }
}

impl<T> Future for Completion<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(value) = self.slot.value.borrow_mut().take() {
            return Poll::Ready(value);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_interleaves_tasks_the_same_way() {
        let order = |seed| {
            let rt = Runtime::new(seed);
            let log = Rc::new(RefCell::new(Vec::new()));
            for t in 0..4 {
                let log = log.clone();
                rt.spawn(async move {
                    for i in 0..3 {
                        log.borrow_mut().push(t * 10 + i);
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
                    }
                });
            }
            rt.run_until_stalled();
            assert_eq!(rt.task_count(), 0);
            let v = log.borrow().clone();
            v
        };
        assert_eq!(order(5), order(5));
        assert_eq!(order(5).len(), 12);
    }

    #[test]
    fn completions_wake_their_task_and_a_crash_drops_everything() {
        let rt = Runtime::new(1);
        let (done, slot) = Completion::<u32>::new();
        let result = rt.spawn_with_result(done);
        rt.submit(Box::new(move || slot.complete(7)));
        rt.run_until_stalled();
        assert_eq!(result.take(), Some(7));
        let (never, _slot) = Completion::<u32>::new();
        let _pending = rt.spawn_with_result(never);
        rt.run_until_stalled();
        assert_eq!(rt.task_count(), 1);
        rt.crash();
        assert_eq!(rt.task_count(), 0);
    }
}
