//! Each shard's life: it joins the mesh, shard 0 brings the control plane up and tells the
//! others, every shard then serves clients (listeners, periodic work), and a termination
//! signal shuts them all down in order.

use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::BrokerConfig;
use crate::controller::image::ClusterImage;
use crate::node::calls::{Call, ShardMesh, ShardMeshHandle};
use crate::node::Shard;
use crate::reply;
use crate::shard::mesh::Mesh;
use crate::shard::ShardId;

/// What shard 0 starts the control plane from: the metadata log read at start-up and the
/// bound controller listener (when this node has one).
pub struct ControlStart {
    pub prepared: crate::cluster::startup::Prepared,
    pub controller_listener: Option<crate::cluster::net::ControllerListener>,
}

/// What a shard reports to the main thread once it serves (or why it cannot).
pub type ReadyReport = Result<ShardId, String>;

/// Everything a shard thread needs to start.
pub struct ShardStart {
    pub id: ShardId,
    pub cpu: Option<usize>,
    pub config: BrokerConfig,
    pub mesh: ShardMeshHandle,
    /// What shard 0 starts the control plane from (the other shards get `None`).
    pub control: Option<ControlStart>,
    pub ready: mpsc::Sender<ReadyReport>,
    /// The bound metrics listener, given to shard 0 only (when metrics are on).
    pub metrics_listener: Option<std::net::TcpListener>,
    /// The bound replication listener, given to shard 0 only (when configured).
    pub replication_listener: Option<std::net::TcpListener>,
}

/// Starts a shard on its own pinned thread. The thread ends after a graceful shutdown.
pub fn spawn(start: ShardStart) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    crate::shard::spawn(start.id, start.cpu, move || run(start))
}

async fn run(start: ShardStart) {
    let ShardStart {
        id,
        config,
        mesh,
        control,
        ready,
        metrics_listener,
        replication_listener,
        ..
    } = start;
    let mesh = match Mesh::join(mesh).await {
        Ok(mesh) => mesh,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let shard = Rc::new(Shard::new(id, config, ClusterImage::empty(), mesh));
    ShardMesh::start(&shard);

    // Clients are served once this node has caught up with the cluster's metadata and is
    // unfenced (its partitions are open and led by it): shard 0 brings the control plane
    // up and then tells the others.
    if id == crate::metadata::controller::CONTROLLER_SHARD {
        glommio::spawn_local(watch_for_termination(shard.clone())).detach();
        let Some(control) = control else {
            let _ = ready.send(Err("shard 0 was started without the control plane".into()));
            return;
        };
        let up = shard
            .unless_shutdown(crate::cluster::startup::bring_up(
                &shard,
                control.prepared,
                control.controller_listener,
            ))
            .await;
        match up {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                let _ = ready.send(Err(e));
                return;
            }
            None => {
                shard.stopped.wait().await;
                return;
            }
        }
        for other in 1..shard.shard_count {
            let _ = shard.call(ShardId(other), Call::ClusterReady).await;
        }
        shard.cluster_ready.set();
    } else {
        let up = futures_lite::future::or(
            async {
                shard.cluster_ready.wait().await;
                true
            },
            async {
                shard.stopped.wait().await;
                false
            },
        )
        .await;
        if !up {
            return;
        }
    }
    let listener = match crate::net::listen(shard.config.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot listen on {}: {e}",
                shard.config.listen
            )));
            return;
        }
    };
    glommio::spawn_local(crate::net::accept_loop(shard.clone(), listener)).detach();
    glommio::spawn_local(crate::partition::expire_producers_periodically(
        shard.clone(),
    ))
    .detach();
    glommio::spawn_local(crate::partition::maintain_logs_periodically(shard.clone())).detach();
    glommio::spawn_local(crate::partition::tick_periodically(shard.clone())).detach();
    // Transactions left in PrepareCommit or PrepareAbort are finished, and open ones time
    // out, without waiting for a client to ask.
    glommio::spawn_local(crate::txn::driver::load_local_partitions(shard.clone())).detach();
    crate::partition::cleaner::start(&shard);
    if let Some(listener) = replication_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
        // here from the std listener (into_raw_fd gives it up).
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(crate::replica::listener::serve(shard.clone(), listener)).detach();
    }
    if id == crate::metadata::controller::CONTROLLER_SHARD {
        // Fetches for the partitions this node follows, one connection per leader node.
        glommio::spawn_local(crate::replica::fetcher::run(shard.clone())).detach();
    }
    if let Some(listener) = metrics_listener {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
        // here from the std listener (into_raw_fd gives it up).
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(crate::metrics::http::serve(shard.clone(), listener)).detach();
    }
    let _ = ready.send(Ok(id));

    shard.stopped.wait().await;
    // Let replies to other shards (the last one acknowledges the stop) leave first.
    while !shard.mesh.outbound_is_empty() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// On shard 0: waits for SIGTERM or SIGINT, then shuts every shard down in order: stop
/// accepting and finish in-flight requests everywhere, then flush and close every log,
/// then stop the executors (shard 0 last, so it can still hear the others).
async fn watch_for_termination(shard: Rc<Shard>) {
    let signal = glommio::executor()
        .spawn_blocking(crate::broker::wait_for_termination_signal)
        .await;
    tracing::info!("{signal}: shutting down");
    crate::cluster::controlled_shutdown(&shard).await;
    shard.call_all(|| Call::Drain).await;
    let closed = shard.call_all(|| Call::CloseLogs).await;
    let failed: usize = closed
        .into_iter()
        .map(|r| r.map_or(0, |reply| reply!(reply, LogsClosed)))
        .sum();
    if failed > 0 {
        tracing::error!(
            partitions = failed,
            "some partitions failed to close cleanly"
        );
    }
    for other in 1..shard.shard_count {
        let _ = shard.call(ShardId(other), Call::Stop).await;
    }
    shard.stopped.set();
}
