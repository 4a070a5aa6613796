//! The broker requests: registration, heartbeats (fencing, unfencing, controlled shutdown)
//! and producer-id blocks, each as (records to propose, reply).

use super::*;

pub(super) fn check_broker_epoch(
    image: &ClusterImage,
    node: NodeId,
    broker_epoch: i64,
) -> Result<&BrokerRegistration, ControllerError> {
    let broker = image.broker(node).ok_or_else(|| {
        ControllerError::BrokerIdNotRegistered(format!("Broker {} is not registered.", node.0))
    })?;
    if broker.broker_epoch != broker_epoch {
        return Err(ControllerError::StaleBrokerEpoch(format!(
            "Expected broker epoch {} for broker {}, but got {broker_epoch}.",
            broker.broker_epoch, node.0
        )));
    }
    Ok(broker)
}

pub(super) fn allocate_producer_ids(
    image: &ClusterImage,
    node: NodeId,
    broker_epoch: i64,
) -> Planned {
    if let Err(e) = check_broker_epoch(image, node, broker_epoch) {
        return (Vec::new(), Err(e));
    }
    let first = image.next_producer_id();
    let Some(next) = first.checked_add(PRODUCER_ID_BLOCK_SIZE) else {
        return (
            Vec::new(),
            Err(ControllerError::Metadata(MetadataError::Storage(
                "producer ids are exhausted".into(),
            ))),
        );
    };
    (
        vec![MetadataRecord::ProducerIdsAllocated {
            node,
            broker_epoch,
            next_producer_id: next,
        }],
        Ok(ControllerReply::ProducerIds(ProducerIdBlock {
            first,
            count: PRODUCER_ID_BLOCK_SIZE as i32,
        })),
    )
}

pub(super) fn register_broker(
    config: &ControllerConfig,
    active: &mut Active,
    now_ms: i64,
    r: RegisterBroker,
    next_index: u64,
) -> Planned {
    let image = &active.image;
    if let Some(cluster_id) = image.cluster_id() {
        if !r.cluster_id.is_empty() && r.cluster_id != cluster_id {
            return (
                Vec::new(),
                Err(ControllerError::InconsistentClusterId(format!(
                    "Expected cluster ID {cluster_id}, but broker {} has cluster ID {}.",
                    r.node.0, r.cluster_id
                ))),
            );
        }
    }
    if r.node.0 < 0 {
        return (
            Vec::new(),
            Err(ControllerError::Metadata(MetadataError::InvalidRequest(
                format!("Broker id {} is negative.", r.node.0),
            ))),
        );
    }
    let existing = image.broker(r.node);
    if let Some(b) = existing {
        if b.incarnation_id == r.incarnation_id {
            // A retried registration of the same process: the same epoch, unless it moved.
            active.sessions.touch(r.node, now_ms);
            if b.listeners == r.listeners && b.rack == r.rack {
                return (
                    Vec::new(),
                    Ok(ControllerReply::BrokerRegistration {
                        broker_epoch: b.broker_epoch,
                    }),
                );
            }
        } else if !b.fenced && active.sessions.is_alive(r.node, now_ms) {
            // A fenced broker has no valid session (KRaft's hasValidSession): one that
            // shut down in order, or was fenced for silence, is replaced at once.
            return (
                Vec::new(),
                Err(ControllerError::DuplicateBrokerRegistration(format!(
                    "Another broker is registered with broker id {}; it was heard from less than broker.session.timeout.ms ago. Retry once it has stopped.",
                    r.node.0
                ))),
            );
        }
    }
    let same_process = existing.is_some_and(|b| b.incarnation_id == r.incarnation_id);
    let broker_epoch = if same_process {
        existing.map_or(0, |b| b.broker_epoch)
    } else {
        next_index as i64
    };
    let mut records = vec![MetadataRecord::BrokerRegistered(BrokerRegistration {
        node_id: r.node,
        incarnation_id: r.incarnation_id,
        broker_epoch,
        listeners: r.listeners,
        rack: r.rack,
        // A new process starts fenced: it leads nothing until it has caught up.
        fenced: if same_process {
            existing.is_some_and(|b| b.fenced)
        } else {
            true
        },
    })];
    if !same_process {
        records.extend(leave_partitions(image, r.node, |t| {
            config.unclean_enabled(image, t)
        }));
    }
    active.sessions.touch(r.node, now_ms);
    (
        records,
        Ok(ControllerReply::BrokerRegistration { broker_epoch }),
    )
}

pub(super) fn heartbeat(
    config: &ControllerConfig,
    active: &mut Active,
    now_ms: i64,
    h: Heartbeat,
) -> Planned {
    let broker = match check_broker_epoch(&active.image, h.node, h.broker_epoch) {
        Ok(b) => b,
        Err(e) => return (Vec::new(), Err(e)),
    };
    active.sessions.touch(h.node, now_ms);
    let caught_up = h.applied_offset >= broker.broker_epoch as u64;
    let fenced = broker.fenced;
    let reply = |is_fenced: bool, should_shut_down: bool| {
        Ok(ControllerReply::BrokerHeartbeat(HeartbeatReply {
            is_caught_up: caught_up,
            is_fenced,
            should_shut_down,
        }))
    };
    if h.want_shut_down || h.want_fence {
        // Controlled shutdown: leadership moves away before the broker is told to stop.
        let records = if fenced {
            Vec::new()
        } else {
            let image = &active.image;
            fence_records(image, h.node, |t| config.unclean_enabled(image, t))
        };
        return (records, reply(true, h.want_shut_down));
    }
    if fenced && caught_up {
        let image = &active.image;
        let records = unfence_records(image, h.node, |t| config.unclean_enabled(image, t));
        return (records, reply(false, false));
    }
    (Vec::new(), reply(fenced, false))
}
