//! Calls between shards over glommio's channel mesh.
//!
//! The mesh knows nothing of what it carries: a shard's context above this layer names its
//! call and reply types and how it answers a call ([`Handler`]). Calls are data (typed
//! enums), so they can be logged, counted and replayed; nothing runs on another shard but
//! what its own handler does with the call.
//!
//! - [`Mesh::call`] is *the* way to have another shard (or this one) do something: the call
//!   moves to the target shard (owned payloads: `Bytes` move, they are not copied), its
//!   handler answers it there, and the reply comes back the same way.
//! - Calls are *enqueued when `call` is called*, not when the returned future is first
//!   polled, and each (source, target) pair is a FIFO: two calls made in order from one shard
//!   start on the target in that order. Produce relies on this to append a connection's
//!   pipelined requests in request order.
//! - A call to the calling shard itself runs as a local task, with the same ordering.
//! - The receiving shard answers each call in its own task, so a slow call never blocks the
//!   mesh, and nothing waits on a send while holding a receive: no cross-shard deadlock.
//! - If the target shard has stopped, the call fails with [`MeshError`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Waker;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};

use crate::shard::oneshot;
use crate::shard::ShardId;

/// Messages in flight between two shards. Depth of each (source, target) channel.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// A future that stays on its shard.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A shard's context, as the mesh sees it: the calls it takes, the replies it gives, and how
/// it answers one. Lives in an `Rc` on its shard.
pub trait Handler: 'static {
    type Call: Send + 'static;
    type Reply: Send + 'static;
    /// This shard's end of the mesh.
    fn mesh(&self) -> &Mesh<Self::Call, Self::Reply>;
    /// Answers a call from `source` (this shard itself for a local call).
    fn handle(self: Rc<Self>, source: ShardId, call: Self::Call) -> LocalFuture<Self::Reply>;
}

/// What travels on the mesh.
pub enum Envelope<C, R> {
    Call { call_id: u64, call: C },
    Reply { call_id: u64, value: R },
}

pub type MeshHandle<C, R> = MeshBuilder<Envelope<C, R>, Full>;

pub fn mesh_builder<C: Send + 'static, R: Send + 'static>(shard_count: usize) -> MeshHandle<C, R> {
    MeshBuilder::full(shard_count, MESH_CHANNEL_CAPACITY)
}

/// The target shard is gone (shutting down) or dropped the call.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} did not answer (shutting down)")]
pub struct MeshError(pub usize);

struct Outbound<C, R> {
    queue: RefCell<VecDeque<Envelope<C, R>>>,
    pump_waker: RefCell<Option<Waker>>,
}

/// One shard's end of the mesh.
pub struct Mesh<C: Send + 'static, R: Send + 'static> {
    me: ShardId,
    senders: Senders<Envelope<C, R>>,
    outbound: Vec<Outbound<C, R>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<R>>>,
    next_call_id: Cell<u64>,
    receivers: RefCell<Option<Receivers<Envelope<C, R>>>>,
}

impl<C: Send + 'static, R: Send + 'static> Mesh<C, R> {
    /// Joins the mesh; resolves once every shard has joined.
    pub async fn join(builder: MeshHandle<C, R>) -> Result<Mesh<C, R>, String> {
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

    /// Shards in the mesh, this one included.
    pub fn shard_count(&self) -> usize {
        self.outbound.len()
    }

    /// Starts the tasks that receive from every other shard and the ones that send to them.
    pub fn start<H: Handler<Call = C, Reply = R>>(handler: &Rc<H>) {
        let mut receivers = handler
            .mesh()
            .receivers
            .borrow_mut()
            .take()
            .expect("the mesh is started once");
        for (source, receiver) in receivers.streams() {
            let handler = handler.clone();
            glommio::spawn_local(async move {
                while let Some(envelope) = receiver.recv().await {
                    deliver(&handler, ShardId(source), envelope);
                }
            })
            .detach();
        }
        for target in 0..handler.mesh().outbound.len() {
            if target == handler.mesh().me.0 {
                continue;
            }
            let handler = handler.clone();
            glommio::spawn_local(async move { handler.mesh().pump(ShardId(target)).await })
                .detach();
        }
    }

    /// Has shard `target` answer `call` with its handler; resolves to the reply. See the
    /// [module documentation](self) for the ordering and ownership rules.
    pub fn call<H: Handler<Call = C, Reply = R>>(
        handler: &Rc<H>,
        target: ShardId,
        call: C,
    ) -> impl Future<Output = Result<R, MeshError>> + 'static {
        enum Pending<R> {
            Local(glommio::Task<R>),
            Remote(oneshot::Receiver<R>),
        }
        let mesh = handler.mesh();
        let pending = if target == mesh.me {
            Pending::Local(glommio::spawn_local(handler.clone().handle(mesh.me, call)))
        } else {
            Pending::Remote(mesh.call_remote(target, call))
        };
        async move {
            match pending {
                Pending::Local(task) => Ok(task.await),
                Pending::Remote(rx) => rx.await.ok_or(MeshError(target.0)),
            }
        }
    }

    /// Has every shard (this one included) answer the call `make` builds for it; the
    /// replies in shard order. All calls are queued before the first reply is awaited.
    pub async fn call_all<H: Handler<Call = C, Reply = R>>(
        handler: &Rc<H>,
        make: impl Fn() -> C,
    ) -> Vec<Result<R, MeshError>> {
        let calls: Vec<_> = (0..handler.mesh().shard_count())
            .map(|i| Mesh::call(handler, ShardId(i), make()))
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            results.push(call.await);
        }
        results
    }

    fn enqueue(&self, target: ShardId, envelope: Envelope<C, R>) {
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

    fn call_remote(&self, target: ShardId, call: C) -> oneshot::Receiver<R> {
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(call_id, tx);
        self.enqueue(target, Envelope::Call { call_id, call });
        rx
    }
}

fn deliver<H: Handler>(handler: &Rc<H>, source: ShardId, envelope: Envelope<H::Call, H::Reply>) {
    match envelope {
        Envelope::Call { call_id, call } => {
            let handler = handler.clone();
            glommio::spawn_local(async move {
                let value = handler.clone().handle(source, call).await;
                handler
                    .mesh()
                    .enqueue(source, Envelope::Reply { call_id, value });
            })
            .detach();
        }
        Envelope::Reply { call_id, value } => {
            if let Some(sender) = handler.mesh().pending.borrow_mut().remove(&call_id) {
                sender.send(value);
            }
        }
    }
}
