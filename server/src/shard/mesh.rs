//! Cross-shard calls over glommio's channel mesh.
//!
//! [`Shard::invoke_on`](crate::shard::Shard::invoke_on) is *the* way to run work on the
//! shard that owns a partition (or a group, or the metadata controller):
//!
//! ```text
//! let owner = ownership::owner_of(tp, shard.shard_count);
//! let high_watermark = shard
//!     .invoke_on(owner, move |owner| async move {
//!         owner.partitions.get(tp).map(|p| p.log.log_end_offset().0)
//!     })
//!     .await?;
//! ```
//!
//! - The closure is `Send` and everything it captures moves to the target shard (owned
//!   payloads: `Bytes` move, they are not copied); it runs there with that shard's
//!   `Rc<Shard>` and may await freely. Its result (`Send`) comes back the same way.
//! - Calls are *enqueued when `invoke_on` is called*, not when the returned future is first
//!   polled, and each (source, target) pair is a FIFO: two calls made in order from one shard
//!   start on the target in that order. Produce relies on this to append a connection's
//!   pipelined requests in request order.
//! - A call to the calling shard itself runs as a local task, with the same ordering.
//! - The receiving shard runs each call as its own task, so a slow call never blocks the
//!   mesh, and nothing waits on a send while holding a receive: no cross-shard deadlock.
//! - If the target shard has stopped, the call fails with [`MeshError`].

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Waker;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};

use crate::shard::oneshot;
use crate::shard::{Shard, ShardId};

/// Messages in flight between two shards. Depth of each (source, target) channel.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

type AnyValue = Box<dyn Any + Send>;
type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
type Job = Box<dyn FnOnce(Rc<Shard>) -> LocalFuture<AnyValue> + Send>;

/// What travels on the mesh.
pub enum Envelope {
    Call { call_id: u64, job: Job },
    Reply { call_id: u64, value: AnyValue },
}

pub type MeshHandle = MeshBuilder<Envelope, Full>;

pub fn mesh_builder(shard_count: usize) -> MeshHandle {
    MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY)
}

/// The target shard is gone (shutting down) or dropped the call.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} did not answer (shutting down)")]
pub struct MeshError(pub usize);

struct Outbound {
    queue: RefCell<VecDeque<Envelope>>,
    pump_waker: RefCell<Option<Waker>>,
}

/// One shard's end of the mesh.
pub struct Mesh {
    me: ShardId,
    senders: Senders<Envelope>,
    outbound: Vec<Outbound>,
    pending: RefCell<HashMap<u64, oneshot::Sender<AnyValue>>>,
    next_call_id: Cell<u64>,
    receivers: RefCell<Option<Receivers<Envelope>>>,
}

impl Mesh {
    /// Joins the mesh; resolves once every shard has joined.
    pub async fn join(builder: MeshHandle) -> Result<Mesh, String> {
        let (senders, receivers) = builder
            .join()
            .await
            .map_err(|_| "cannot join the shard mesh".to_string())?;
        let me = ShardId(senders.peer_id());
        let outbound = (0..senders.nr_consumers())
            .map(|_| Outbound {
                queue: RefCell::new(VecDeque::new()),
                pump_waker: RefCell::new(None),
            })
            .collect();
        Ok(Mesh {
            me,
            senders,
            outbound,
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            receivers: RefCell::new(Some(receivers)),
        })
    }

    pub fn me(&self) -> ShardId {
        self.me
    }

    /// Starts the tasks that receive from every other shard and the ones that send to them.
    pub fn start(shard: &Rc<Shard>) {
        let mut receivers = shard
            .mesh
            .receivers
            .borrow_mut()
            .take()
            .expect("the mesh is started once");
        for (source, receiver) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(envelope) = receiver.recv().await {
                    shard.mesh.deliver(&shard, ShardId(source), envelope);
                }
            })
            .detach();
        }
        for target in 0..shard.mesh.outbound.len() {
            if target == shard.mesh.me.0 {
                continue;
            }
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.mesh.pump(ShardId(target)).await }).detach();
        }
    }

    fn deliver(&self, shard: &Rc<Shard>, source: ShardId, envelope: Envelope) {
        match envelope {
            Envelope::Call { call_id, job } => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let value = job(shard.clone()).await;
                    shard
                        .mesh
                        .enqueue(source, Envelope::Reply { call_id, value });
                })
                .detach();
            }
            Envelope::Reply { call_id, value } => {
                if let Some(sender) = self.pending.borrow_mut().remove(&call_id) {
                    sender.send(value);
                }
            }
        }
    }

    fn enqueue(&self, target: ShardId, envelope: Envelope) {
        let out = &self.outbound[target.0];
        out.queue.borrow_mut().push_back(envelope);
        if let Some(w) = out.pump_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Sends `target`'s queue in order, one message at a time.
    async fn pump(&self, target: ShardId) {
        loop {
            let next = self.outbound[target.0].queue.borrow_mut().pop_front();
            match next {
                Some(envelope) => {
                    // The target stopped: fail the call (its caller's receiver resolves to
                    // None) instead of leaving it waiting forever.
                    if let Err(glommio::GlommioError::Closed(glommio::ResourceType::Channel(
                        Envelope::Call { call_id, .. },
                    ))) = self.senders.send_to(target.0, envelope).await
                    {
                        self.pending.borrow_mut().remove(&call_id);
                    }
                }
                None => {
                    std::future::poll_fn(|cx| {
                        let out = &self.outbound[target.0];
                        if out.queue.borrow().is_empty() {
                            *out.pump_waker.borrow_mut() = Some(cx.waker().clone());
                            std::task::Poll::Pending
                        } else {
                            std::task::Poll::Ready(())
                        }
                    })
                    .await;
                }
            }
        }
    }

    /// True when nothing waits to be sent to another shard.
    pub fn outbound_is_empty(&self) -> bool {
        self.outbound.iter().all(|o| o.queue.borrow().is_empty())
    }

    fn call_remote(&self, target: ShardId, job: Job) -> oneshot::Receiver<AnyValue> {
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(call_id, tx);
        self.enqueue(target, Envelope::Call { call_id, job });
        rx
    }
}

impl Shard {
    /// Runs `f` on shard `target` with that shard's context and resolves to its result.
    /// See the [module documentation](self) for the ordering and ownership rules.
    pub fn invoke_on<F, Fut, R>(
        self: &Rc<Self>,
        target: ShardId,
        f: F,
    ) -> impl Future<Output = Result<R, MeshError>> + 'static
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        enum Pending<R> {
            Local(glommio::Task<R>),
            Remote(oneshot::Receiver<AnyValue>),
        }
        let pending = if target == self.id {
            Pending::Local(glommio::spawn_local(f(self.clone())))
        } else {
            let job: Job = Box::new(move |shard| {
                Box::pin(async move {
                    let value: AnyValue = Box::new(f(shard).await);
                    value
                })
            });
            Pending::Remote(self.mesh.call_remote(target, job))
        };
        async move {
            match pending {
                Pending::Local(task) => Ok(task.await),
                Pending::Remote(rx) => {
                    let value = rx.await.ok_or(MeshError(target.0))?;
                    Ok(*value
                        .downcast::<R>()
                        .expect("a reply carries the type its call's closure returned"))
                }
            }
        }
    }

    /// Runs `f` on every shard (this one included) and resolves to the results in shard order.
    pub async fn invoke_on_all<F, Fut, R>(self: &Rc<Self>, f: F) -> Vec<Result<R, MeshError>>
    where
        F: FnOnce(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let calls: Vec<_> = (0..self.shard_count)
            .map(|i| self.invoke_on(ShardId(i), f.clone()))
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            results.push(call.await);
        }
        results
    }
}
