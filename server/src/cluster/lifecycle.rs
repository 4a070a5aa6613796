//! This node as a broker of the cluster (KIP-631): it registers with the active controller
//! under a new incarnation id each time the process starts, heartbeats every
//! `broker.heartbeat.interval.ms` with the metadata offset its shards serve, and is
//! unfenced once that offset reaches its registration. Only then does it serve clients: its
//! partitions are led by it and its image holds everything before its registration.
//!
//! A registration refused with DUPLICATE_BROKER_REGISTRATION (the previous process of this
//! node id is still within its session on the controller, after a crash) is retried until
//! that session runs out, as Kafka's brokers do.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::cluster::ControlPlane;
use crate::controller::requests::{
    ControllerError, ControllerReply, ControllerRequest, Heartbeat, RegisterBroker,
};
use crate::metadata::cluster::{
    Listener, CLIENT_LISTENER, CONTROLLER_LISTENER, REPLICATION_LISTENER,
};
use crate::shard::event::Latch;

/// Heartbeats while fenced (catching up) come this often, so start-up is quick.
const FENCED_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// Pause before registering again after a refusal.
const REGISTER_BACKOFF: Duration = Duration::from_millis(250);

/// This node's registration.
pub struct BrokerState {
    pub incarnation_id: u128,
    epoch: Cell<Option<i64>>,
    fenced: Cell<bool>,
    /// Set at controlled shutdown: no more heartbeats (one would unfence the broker).
    stopping: Cell<bool>,
    /// Set once the node was unfenced for the first time: it may serve clients.
    pub ready: Rc<Latch>,
}

impl BrokerState {
    pub fn new(incarnation_id: u128) -> BrokerState {
        BrokerState {
            incarnation_id,
            epoch: Cell::new(None),
            fenced: Cell::new(true),
            stopping: Cell::new(false),
            ready: Latch::new(),
        }
    }

    /// The broker epoch of the current registration (the log offset of its record).
    pub fn epoch(&self) -> Option<i64> {
        self.epoch.get()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.get()
    }

    /// The broker is stopping: registration and heartbeats end.
    pub fn stop(&self) {
        self.stopping.set(true);
    }
}

/// The listeners this node registers: clients, controllers (if it is a voter with an
/// address) and replication (if configured).
fn listeners(control: &ControlPlane) -> Vec<Listener> {
    let config = &control.shard.config;
    let mut out = vec![Listener {
        name: CLIENT_LISTENER.into(),
        host: config.advertised_host.clone(),
        port: config.advertised_port,
    }];
    if let Some((host, port)) = config
        .cluster
        .voter(control.me.0)
        .and_then(|v| v.address.clone())
    {
        out.push(Listener {
            name: CONTROLLER_LISTENER.into(),
            host,
            port,
        });
    }
    if let Some(addr) = config.cluster.replication_listen {
        out.push(Listener {
            name: REPLICATION_LISTENER.into(),
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    out
}

/// Registers and heartbeats for as long as the process runs.
pub async fn run(control: Rc<ControlPlane>) {
    let interval = Duration::from_millis(control.shard.config.cluster.heartbeat_interval_ms as u64);
    let mut waiting_logged = false;
    while !control.broker.stopping.get() {
        // Register (again).
        let registration = ControllerRequest::RegisterBroker(RegisterBroker {
            node: control.me,
            incarnation_id: control.broker.incarnation_id,
            cluster_id: control
                .with_image(|image| image.cluster_id().unwrap_or_default().to_string()),
            listeners: listeners(&control),
            rack: None,
        });
        match control.call(registration).await {
            Ok(ControllerReply::BrokerRegistration { broker_epoch }) => {
                tracing::info!(broker_epoch, "registered with the controller");
                control.broker.epoch.set(Some(broker_epoch));
            }
            Err(ControllerError::DuplicateBrokerRegistration(_)) => {
                if !waiting_logged {
                    tracing::info!(
                        "the controller still counts this node's previous process as alive; registering again once its session (broker.session.timeout.ms) has run out"
                    );
                    waiting_logged = true;
                }
                glommio::timer::sleep(REGISTER_BACKOFF).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("registration not accepted yet: {e}");
                glommio::timer::sleep(REGISTER_BACKOFF).await;
                continue;
            }
            Ok(other) => {
                tracing::error!("unexpected answer to a registration: {other:?}");
                glommio::timer::sleep(REGISTER_BACKOFF).await;
                continue;
            }
        }
        heartbeat_until_stale(&control, interval).await;
        control.broker.epoch.set(None);
        control.broker.fenced.set(true);
    }
}

/// Heartbeats until the controller no longer knows this registration.
async fn heartbeat_until_stale(control: &Rc<ControlPlane>, interval: Duration) {
    loop {
        let Some(broker_epoch) = control.broker.epoch() else {
            return;
        };
        if control.broker.stopping.get() {
            return;
        }
        let heartbeat = ControllerRequest::Heartbeat(Heartbeat {
            node: control.me,
            broker_epoch,
            applied_offset: control.published_offset(),
            // A voter out of its quorum no longer learns the cluster's changes: it must not
            // lead partitions on a stale image.
            want_fence: control.is_out_of_quorum(),
            want_shut_down: false,
        });
        match control.call(heartbeat).await {
            Ok(ControllerReply::BrokerHeartbeat(reply)) => {
                if reply.is_fenced != control.broker.fenced.get() {
                    if reply.is_fenced {
                        tracing::warn!("this broker was fenced by the controller");
                    } else {
                        tracing::info!("this broker is unfenced: it leads its partitions");
                    }
                }
                control.broker.fenced.set(reply.is_fenced);
                if !reply.is_fenced {
                    control.broker.ready.set();
                }
            }
            _ if control.broker.stopping.get() => return,
            Err(ControllerError::StaleBrokerEpoch(m))
            | Err(ControllerError::BrokerIdNotRegistered(m)) => {
                tracing::warn!("registering again: {m}");
                return;
            }
            Err(e) => tracing::debug!("heartbeat not answered: {e}"),
            Ok(other) => tracing::error!("unexpected answer to a heartbeat: {other:?}"),
        }
        let pause = if control.broker.fenced.get() {
            FENCED_HEARTBEAT_INTERVAL
        } else {
            interval
        };
        glommio::timer::sleep(pause).await;
    }
}
