//! A broker of one shard inside the calling process, fed request frames directly: the real
//! decode, handler and encode path, the real engine on a data directory, and no sockets.
//! For tools that drive the request path at a rate sockets would not allow (the wire
//! fuzzer); the broker itself never uses it.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use wharf_protocol::frame::decode_request_header;

use crate::config::BrokerConfig;
use crate::config::StartupError;
use crate::controller::image::ClusterImage;
use crate::kafka::{router, HandlerError, Reply, RequestContext};
use crate::node::calls::{mesh_builder, ShardMesh};
use crate::node::Shard;
use crate::shard::{oneshot, ShardId};

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// The response frame, size prefix included.
    Response(Bytes),
    /// No response is due (Produce with acks=0).
    NoResponse,
    /// The connection would be closed: the request is malformed.
    Closed(String),
    /// The connection would be closed because the broker could not encode its own answer:
    /// never acceptable.
    EncodeFailed(String),
}

/// The running shard, handed to the caller's task on the shard's thread.
pub struct Embedded {
    shard: Rc<Shard>,
}

impl Embedded {
    pub fn config(&self) -> &BrokerConfig {
        &self.shard.config
    }

    /// Handles one request frame (the bytes after its size prefix), as a connection would.
    pub async fn request(&self, mut frame: Bytes) -> Outcome {
        let head = match decode_request_header(&mut frame) {
            Ok(head) => head,
            Err(e) => return Outcome::Closed(e.to_string()),
        };
        let (dispatched, _) = oneshot::channel();
        let ctx = RequestContext::new(self.shard.clone(), head, None, None, dispatched);
        match router::handle_detailed(ctx, frame).await {
            (reply @ (Reply::Frame(_) | Reply::Parts(_)), _) => {
                Outcome::Response(reply.into_frame().unwrap_or_default())
            }
            (Reply::NoResponse, _) => Outcome::NoResponse,
            (Reply::Close, Some(HandlerError::Encode(e))) => Outcome::EncodeFailed(e),
            (Reply::Close, why) => Outcome::Closed(why.map(|e| e.to_string()).unwrap_or_default()),
        }
    }
}

/// Starts a one-shard broker on `config.data_dir` in a new thread, runs `body` on it, closes
/// every partition, and returns what `body` returned.
pub fn run<F, Fut, T>(config: BrokerConfig, body: F) -> Result<T, StartupError>
where
    F: FnOnce(Embedded) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let mut config = config.with_bound_port(9092);
    config.shards = 1;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartupError(format!("cannot create data dir: {e}")))?;
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| StartupError(format!("cannot resolve data dir: {e}")))?;
    // A one-node cluster of its own, whatever the configuration says.
    config.cluster = crate::config::ClusterConfig::single(config.node_id);
    let prepared = crate::cluster::startup::prepare(&config)?;
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("wharf-embedded")
        .spawn(move || async move {
            let mesh = ShardMesh::join(mesh_builder(1))
                .await
                .map_err(StartupError)?;
            let shard = Rc::new(Shard::new(ShardId(0), config, ClusterImage::empty(), mesh));
            ShardMesh::start(&shard);
            crate::cluster::startup::bring_up(&shard, prepared, None)
                .await
                .map_err(StartupError)?;
            let out = body(Embedded {
                shard: shard.clone(),
            })
            .await;
            shard.shutdown.set();
            for (tp, e) in shard.partitions.close_all().await {
                tracing::warn!("closing {tp:?}: {e}");
            }
            Ok(out)
        })
        .map_err(|e| StartupError(format!("cannot start the shard: {e}")))?;
    handle
        .join()
        .map_err(|_| StartupError("the shard stopped abnormally".into()))?
}
