//! A node: its logs and replicas, and the driver that carries out their effects —
//! registration and heartbeats, metadata, syncs, AlterPartition, the replication
//! connections at both ends (real frames through the real codec), Produce, crashes.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use wharf_protocol::batch::BatchBuilder;
use wharf_protocol::replication::{
    decode_frame, encode_response, FetchRequest, FetchResponse, FollowerConnection,
    LeaderConnection, Message, PartitionData, PartitionHeader, LENGTH_BYTES,
};

use super::log::LogModel;
use super::network::{corrupt_response, Endpoint, Msg};
use super::*;
use crate::replica::{
    AckWaiter, Acks, AlterPartitionAnswer, AlterPartitionProposal, Effects, FetchOutcome,
    FollowerFetch, LogOp, ProduceToken, ReplicaConfig, ReplicaState, RoleView,
};

pub struct Fetcher {
    pub generation: u64,
    pub conn: FollowerConnection,
    pub sent_at_ms: Option<i64>,
}

/// An acks=all append waiting for the high watermark.
pub struct PendingProduce {
    pub producer: usize,
    pub request: u64,
    pub partition: usize,
    pub base_offset: i64,
    pub batch: Bytes,
}

pub struct Node {
    pub id: NodeId,
    pub up: bool,
    /// Grows at every restart: a new process.
    pub incarnation: u64,
    /// Set once the controller registered this process.
    pub broker_epoch: Option<i64>,
    /// The metadata version at registration: anything older is from before this process.
    pub registered_version: u64,
    pub metadata_version: u64,
    pub config: ReplicaConfig,
    /// One per partition; they survive crashes (minus their unsynced tails).
    pub logs: Vec<LogModel>,
    /// One per partition, built at registration; gone at a crash.
    pub replicas: Vec<ReplicaState>,
    /// This node as a follower: a connection per leader node.
    pub fetchers: BTreeMap<usize, Fetcher>,
    /// This node as a leader: the current connection of each follower node.
    pub serving: BTreeMap<usize, (u64, LeaderConnection)>,
    pub waiting: BTreeMap<u64, PendingProduce>,
    pub alter_sent: Vec<Option<(AlterPartitionProposal, i64)>>,
    pub next_token: u64,
    pub next_sync_ms: i64,
    pub next_heartbeat_ms: i64,
    pub next_metadata_ms: i64,
    pub next_register_ms: i64,
}

impl Node {
    pub fn new(id: NodeId, partitions: usize, config: ReplicaConfig) -> Node {
        Node {
            id,
            up: true,
            incarnation: 1,
            broker_epoch: None,
            registered_version: 0,
            metadata_version: 0,
            config,
            logs: (0..partitions).map(|_| LogModel::default()).collect(),
            replicas: Vec::new(),
            fetchers: BTreeMap::new(),
            serving: BTreeMap::new(),
            waiting: BTreeMap::new(),
            alter_sent: vec![None; partitions],
            next_token: 1,
            next_sync_ms: 0,
            next_heartbeat_ms: 0,
            next_metadata_ms: 0,
            next_register_ms: 0,
        }
    }

    pub fn running(&self) -> bool {
        self.up && !self.replicas.is_empty()
    }
}

/// A batch of `values` (8 bytes each) at `base_offset` in leader epoch `epoch`.
fn build_batch(base_offset: i64, epoch: i32, values: &[u64], now_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new()
        .base_offset(base_offset)
        .partition_leader_epoch(epoch);
    for v in values {
        builder.push(None, Some(&v.to_be_bytes()), &[], now_ms);
    }
    Bytes::from(builder.build())
}

impl World {
    pub(super) fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.broker_epoch = None;
        node.metadata_version = 0;
        node.replicas.clear();
        node.fetchers.clear();
        node.serving.clear();
        node.waiting.clear();
        node.alter_sent.iter_mut().for_each(|a| *a = None);
        let mut lost = 0;
        for log in &mut node.logs {
            lost += log.crash(&mut self.rng);
        }
        self.stats.crashes += 1;
        self.stats.batches_lost_at_crash += lost as u64;
        self.trace(|| format!("node {} crashes, losing {lost} unsynced batches", i + 1));
    }

    pub(super) fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.up {
            return;
        }
        node.up = true;
        node.incarnation += 1;
        node.next_register_ms = self.now;
        self.trace(|| format!("node {} restarts", i + 1));
    }

    pub(super) fn node_tick(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        if !self.nodes[i].up {
            return Ok(());
        }
        let me = Endpoint::Node(i);
        let Some(broker_epoch) = self.nodes[i].broker_epoch else {
            if now >= self.nodes[i].next_register_ms {
                self.nodes[i].next_register_ms = now + 50;
                let incarnation = self.nodes[i].incarnation;
                self.send(me, Endpoint::Controller, Msg::Register { incarnation });
            }
            return Ok(());
        };
        if now >= self.nodes[i].next_heartbeat_ms {
            self.nodes[i].next_heartbeat_ms = now + 100;
            self.send(me, Endpoint::Controller, Msg::Heartbeat { broker_epoch });
        }
        if now >= self.nodes[i].next_metadata_ms {
            self.nodes[i].next_metadata_ms = now + 40;
            self.send(me, Endpoint::Controller, Msg::MetadataFetch);
        }
        if self.nodes[i].replicas.is_empty() {
            return Ok(());
        }
        let partitions = self.nodes[i].logs.len();
        if now >= self.nodes[i].next_sync_ms {
            // A group commit: every log's appends are synced, then reported.
            self.nodes[i].next_sync_ms = now + self.rng.range(1, self.opts.sync_every_ms + 1);
            for p in 0..partitions {
                let node = &mut self.nodes[i];
                node.logs[p].sync();
                let durable = node.logs[p].durable_end();
                let effects = node.replicas[p].synced(durable, now);
                self.apply_effects(i, p, effects)?;
            }
        }
        for p in 0..partitions {
            // The driver's periodic high-watermark checkpoint (written at once here).
            let node = &mut self.nodes[i];
            if let Some(hw) = node.replicas[p].high_watermark_checkpoint_due(now) {
                node.logs[p].checkpoint_high_watermark(hw);
            }
            let effects = self.nodes[i].replicas[p].tick(now);
            self.apply_effects(i, p, effects)?;
            if let Some((proposal, sent)) = self.nodes[i].alter_sent[p].clone() {
                if now - sent > ALTER_PARTITION_TIMEOUT_MS {
                    self.nodes[i].alter_sent[p] = None;
                    let effects = self.nodes[i].replicas[p].on_alter_partition_answer(
                        &proposal,
                        AlterPartitionAnswer::Error(ResponseError::RequestTimedOut),
                        now,
                    );
                    self.apply_effects(i, p, effects)?;
                }
            }
        }
        let timed_out: Vec<usize> = self.nodes[i]
            .fetchers
            .iter()
            .filter(|(_, f)| f.sent_at_ms.is_some_and(|t| now - t > FETCH_TIMEOUT_MS))
            .map(|(&l, _)| l)
            .collect();
        for leader in timed_out {
            self.close_fetcher(i, leader);
        }
        self.send_fetches(i)
    }

    fn new_fetcher(&mut self) -> Fetcher {
        self.next_generation += 1;
        Fetcher {
            generation: self.next_generation,
            conn: FollowerConnection::new(),
            sent_at_ms: None,
        }
    }

    /// Gives up the connection to `leader`: its fetches in flight failed; a new one opens.
    fn close_fetcher(&mut self, i: usize, leader: usize) {
        let now = self.now;
        let fetcher = self.new_fetcher();
        let node = &mut self.nodes[i];
        for r in &mut node.replicas {
            if r.role()
                == (RoleView::Follower {
                    leader: Some(node_id(leader)),
                })
            {
                r.fetch_failed(now);
            }
        }
        node.fetchers.insert(leader, fetcher);
    }

    fn send_fetches(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        for leader in (0..NODES).filter(|&l| l != i) {
            if !self.nodes[i].fetchers.contains_key(&leader) {
                let fetcher = self.new_fetcher();
                self.nodes[i].fetchers.insert(leader, fetcher);
            }
            let node = &mut self.nodes[i];
            let Some(broker_epoch) = node.broker_epoch else {
                return Ok(());
            };
            if node.fetchers[&leader].sent_at_ms.is_some() {
                continue;
            }
            let mut partitions = Vec::new();
            for (p, r) in node.replicas.iter_mut().enumerate() {
                if r.role()
                    != (RoleView::Follower {
                        leader: Some(node_id(leader)),
                    })
                {
                    continue;
                }
                if let Some(position) = r.next_fetch(now) {
                    partitions.push(position.to_wire(
                        TOPIC_ID,
                        p as i32,
                        FETCH_PARTITION_MAX_BYTES,
                    ));
                }
            }
            if partitions.is_empty() {
                continue;
            }
            let request = FetchRequest {
                correlation_id: 0,
                replica_id: node.id.0,
                broker_epoch,
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 4 * FETCH_PARTITION_MAX_BYTES,
                partitions,
            };
            let fetcher = node.fetchers.get_mut(&leader).expect("inserted above");
            let wire = fetcher
                .conn
                .send(request)
                .map_err(|e| format!("node {} cannot encode a fetch: {e}", i + 1))?;
            fetcher.sent_at_ms = Some(now);
            let generation = fetcher.generation;
            self.stats.fetches += 1;
            let frame = wire.slice(LENGTH_BYTES..);
            self.send(
                Endpoint::Node(i),
                Endpoint::Node(leader),
                Msg::Fetch { generation, frame },
            );
        }
        Ok(())
    }

    pub(super) fn node_receive(
        &mut self,
        i: usize,
        from: Endpoint,
        msg: Msg,
    ) -> Result<(), String> {
        if !self.nodes[i].up {
            return Ok(());
        }
        let now = self.now;
        match (from, msg) {
            (Endpoint::Node(f), Msg::Fetch { generation, frame }) => {
                self.serve_fetch(i, f, generation, frame)?
            }
            (Endpoint::Node(l), Msg::FetchResponse { generation, frame }) => {
                self.take_fetch_response(i, l, generation, frame)?
            }
            (Endpoint::Node(l), Msg::ConnectionClosed { generation }) => {
                if self.nodes[i]
                    .fetchers
                    .get(&l)
                    .is_some_and(|f| f.generation == generation)
                {
                    self.close_fetcher(i, l);
                }
            }
            (
                Endpoint::Producer(k),
                Msg::Produce {
                    request,
                    partition,
                    acks,
                    values,
                },
            ) => self.handle_produce(i, k, request, partition, acks, &values)?,
            (
                Endpoint::Controller,
                Msg::Registered {
                    incarnation,
                    broker_epoch,
                    version,
                },
            ) => {
                let node = &mut self.nodes[i];
                if incarnation == node.incarnation && node.broker_epoch.is_none() {
                    node.broker_epoch = Some(broker_epoch);
                    node.registered_version = version;
                    node.replicas = node
                        .logs
                        .iter()
                        .map(|log| {
                            ReplicaState::new(node.id, broker_epoch, node.config, log.local_log())
                        })
                        .collect();
                    self.trace(|| {
                        format!("node {} registered with broker epoch {broker_epoch}", i + 1)
                    });
                }
            }
            (Endpoint::Controller, Msg::StaleBrokerEpoch { broker_epoch }) => {
                if self.nodes[i].broker_epoch == Some(broker_epoch) {
                    // Another registration of this broker replaced ours: this process
                    // stops and a new one starts.
                    self.trace(|| format!("node {} is told its broker epoch is stale", i + 1));
                    self.crash(i);
                    let down_ms = self.rng.range(10, 100);
                    self.schedule(down_ms, Event::Restart(i));
                }
            }
            (
                Endpoint::Controller,
                Msg::Metadata {
                    version,
                    partitions,
                    ineligible,
                },
            ) => {
                let node = &mut self.nodes[i];
                if !node.running()
                    || version < node.registered_version
                    || version <= node.metadata_version
                {
                    return Ok(());
                }
                node.metadata_version = version;
                for (p, change) in partitions.iter().enumerate() {
                    let node = &mut self.nodes[i];
                    node.replicas[p].set_ineligible_replicas(ineligible.iter().copied());
                    let before = (node.replicas[p].role(), node.replicas[p].leader_epoch());
                    let effects = node.replicas[p].apply_partition_change(change, now);
                    let after = (node.replicas[p].role(), node.replicas[p].leader_epoch());
                    if before != after {
                        self.trace(|| {
                            format!("node {} p{p}: {before:?} -> {after:?} ({change:?})", i + 1)
                        });
                    }
                    self.apply_effects(i, p, effects)?;
                }
            }
            (
                Endpoint::Controller,
                Msg::AlterPartitionAnswer {
                    incarnation,
                    partition,
                    proposal,
                    answer,
                },
            ) => {
                let node = &mut self.nodes[i];
                if incarnation != node.incarnation || !node.running() {
                    return Ok(());
                }
                if node.alter_sent[partition]
                    .as_ref()
                    .is_some_and(|(sent, _)| *sent == proposal)
                {
                    node.alter_sent[partition] = None;
                }
                let effects =
                    node.replicas[partition].on_alter_partition_answer(&proposal, answer, now);
                self.apply_effects(i, partition, effects)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn serve_fetch(
        &mut self,
        i: usize,
        follower: usize,
        generation: u64,
        frame: Bytes,
    ) -> Result<(), String> {
        let now = self.now;
        if !self.nodes[i].running() {
            return Ok(());
        }
        let latest = self.nodes[i].serving.get(&follower).map(|(g, _)| *g);
        let decoded = if latest.is_none_or(|g| generation > g) {
            let mut conn = LeaderConnection::new();
            let result = conn.receive(&frame);
            self.nodes[i].serving.insert(follower, (generation, conn));
            result
        } else if latest == Some(generation) {
            let (_, conn) = self.nodes[i]
                .serving
                .get_mut(&follower)
                .expect("checked above");
            conn.receive(&frame)
        } else {
            // A request from a connection closed since, served anyway: it was queued
            // before the close.
            if !self.rng.per_mille(self.opts.late_request_per_mille) {
                return Ok(());
            }
            self.stats.late_requests_served += 1;
            match decode_frame(&frame) {
                Ok(Message::FetchRequest(request)) => Ok(request),
                Ok(_) => return Ok(()),
                Err(e) => Err(e),
            }
        };
        let request = match decoded {
            Ok(request) => request,
            Err(e) => {
                self.stats.connections_closed += 1;
                self.trace(|| {
                    format!(
                        "node {} closes the connection of node {}: {e}",
                        i + 1,
                        follower + 1
                    )
                });
                if latest.is_none_or(|g| generation >= g) {
                    self.nodes[i].serving.remove(&follower);
                }
                self.send(
                    Endpoint::Node(i),
                    Endpoint::Node(follower),
                    Msg::ConnectionClosed { generation },
                );
                return Ok(());
            }
        };
        let mut partitions = Vec::with_capacity(request.partitions.len());
        for asked in &request.partitions {
            let p = asked.partition as usize;
            if asked.topic_id != TOPIC_ID || p >= self.nodes[i].replicas.len() {
                partitions.push(PartitionData {
                    header: PartitionHeader::error(
                        asked.topic_id,
                        asked.partition,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ),
                    records: Bytes::new(),
                });
                continue;
            }
            let fetch = FollowerFetch::from_wire(&request, asked);
            let (answer, effects) = self.nodes[i].replicas[p].on_follower_fetch(&fetch, now);
            if answer.diverging_epoch.is_some() {
                self.stats.diverging_answers += 1;
            }
            if answer.error == Some(ResponseError::FencedLeaderEpoch) {
                self.stats.fenced_answers += 1;
            }
            self.apply_effects(i, p, effects)?;
            let records = match answer.read_from {
                Some(from) => self.nodes[i].logs[p].read(from, asked.max_bytes as usize),
                None => Bytes::new(),
            };
            partitions.push(PartitionData {
                header: answer.header(TOPIC_ID, asked.partition, records.len() as u32),
                records,
            });
        }
        let response = FetchResponse {
            correlation_id: request.correlation_id,
            error_code: 0,
            partitions,
        };
        let parts = encode_response(&response)
            .map_err(|e| format!("node {} cannot encode a response: {e}", i + 1))?;
        let mut wire = BytesMut::new();
        for part in parts {
            wire.extend_from_slice(&part);
        }
        let mut frame = wire.freeze().slice(LENGTH_BYTES..);
        if self.rng.per_mille(self.net.corrupt_per_mille) {
            frame = corrupt_response(&frame, &mut self.rng);
            self.stats.frames_corrupted += 1;
        }
        self.send(
            Endpoint::Node(i),
            Endpoint::Node(follower),
            Msg::FetchResponse { generation, frame },
        );
        Ok(())
    }

    fn take_fetch_response(
        &mut self,
        i: usize,
        leader: usize,
        generation: u64,
        frame: Bytes,
    ) -> Result<(), String> {
        let now = self.now;
        if !self.nodes[i].running() {
            return Ok(());
        }
        let Some(fetcher) = self.nodes[i].fetchers.get_mut(&leader) else {
            return Ok(());
        };
        if fetcher.generation != generation {
            // That connection is closed: its bytes cannot arrive any more.
            return Ok(());
        }
        let (request, response) = match fetcher.conn.receive(&frame) {
            Ok(answered) => answered,
            Err(e) => {
                self.stats.connections_closed += 1;
                self.trace(|| {
                    format!(
                        "node {} closes its connection to node {}: {e}",
                        i + 1,
                        leader + 1
                    )
                });
                self.close_fetcher(i, leader);
                return Ok(());
            }
        };
        fetcher.sent_at_ms = None;
        if response.error_code != 0 {
            self.close_fetcher(i, leader);
            return Ok(());
        }
        let mut refused = false;
        for (asked, data) in request.partitions.iter().zip(&response.partitions) {
            let p = asked.partition as usize;
            let r = &mut self.nodes[i].replicas[p];
            let hw_before = r.high_watermark();
            let (outcome, effects) = r.on_fetch_response(asked, &data.header, &data.records, now);
            match &outcome {
                FetchOutcome::Truncated { to } => {
                    self.stats.truncations += 1;
                    if *to < hw_before {
                        return Err(format!(
                            "node {} p{p} truncated to {to}, below its high watermark {hw_before}",
                            i + 1
                        ));
                    }
                    self.trace(|| format!("node {} p{p} truncates to {to}", i + 1));
                }
                FetchOutcome::Refused(why) => {
                    refused = true;
                    self.stats.refused += 1;
                    self.trace(|| format!("node {} p{p} refuses the leader's data: {why}", i + 1));
                }
                _ => {}
            }
            self.apply_effects(i, p, effects)?;
        }
        if refused {
            self.stats.connections_closed += 1;
            self.close_fetcher(i, leader);
        }
        Ok(())
    }

    fn handle_produce(
        &mut self,
        i: usize,
        producer: usize,
        request: u64,
        p: usize,
        acks: Acks,
        values: &[u64],
    ) -> Result<(), String> {
        let now = self.now;
        if !self.nodes[i].running() {
            return Ok(());
        }
        let node = &mut self.nodes[i];
        if let Err(error) = node.replicas[p].check_produce(acks) {
            self.send(
                Endpoint::Node(i),
                Endpoint::Producer(producer),
                Msg::ProduceAnswer {
                    request,
                    result: Err(error),
                },
            );
            return Ok(());
        }
        let base_offset = node.logs[p].end();
        let batch = build_batch(base_offset, node.replicas[p].leader_epoch(), values, now);
        node.logs[p]
            .append_as_leader(batch.clone())
            .map_err(|e| format!("node {} p{p} as leader: {e}", i + 1))?;
        let token = node.next_token;
        node.next_token += 1;
        let waiter = (acks == Acks::All).then_some(AckWaiter {
            token: ProduceToken(token),
            deadline_ms: now + PRODUCE_TIMEOUT_MS - 100,
        });
        if acks == Acks::All {
            node.waiting.insert(
                token,
                PendingProduce {
                    producer,
                    request,
                    partition: p,
                    base_offset,
                    batch,
                },
            );
        }
        let end = node.logs[p].end();
        let effects = node.replicas[p].appended(end, waiter, now);
        if acks == Acks::Leader {
            self.stats.acked_one += 1;
            self.send(
                Endpoint::Node(i),
                Endpoint::Producer(producer),
                Msg::ProduceAnswer {
                    request,
                    result: Ok(base_offset),
                },
            );
        }
        self.apply_effects(i, p, effects)
    }

    /// Carries out a replica's effects, as the broker's driver will.
    fn apply_effects(&mut self, i: usize, p: usize, effects: Effects) -> Result<(), String> {
        let now = self.now;
        for op in effects.log {
            let log = &mut self.nodes[i].logs[p];
            let done = match op {
                LogOp::AssignEpoch {
                    epoch,
                    start_offset,
                } => {
                    log.assign_epoch(epoch, start_offset);
                    Ok(())
                }
                LogOp::TruncateTo { offset } => log.truncate_to(offset),
                LogOp::TruncateFullyAndStartAt { offset } => {
                    log.reset(offset);
                    Ok(())
                }
                LogOp::AppendAsFollower { records, .. } => log.append_as_follower(records),
                LogOp::AdvanceLogStart { offset } => {
                    log.advance_start(offset);
                    Ok(())
                }
            };
            done.map_err(|e| format!("node {} p{p}: {e}", i + 1))?;
        }
        for ack in effects.acks {
            let Some(pending) = self.nodes[i].waiting.remove(&ack.token.0) else {
                continue;
            };
            match ack.result {
                Ok(()) => {
                    self.stats.acked_all += 1;
                    self.acknowledged(i, &pending)?;
                }
                Err(ResponseError::NotEnoughReplicasAfterAppend) => {
                    self.stats.not_enough_replicas_after_append += 1
                }
                Err(_) => {}
            }
            self.send(
                Endpoint::Node(i),
                Endpoint::Producer(pending.producer),
                Msg::ProduceAnswer {
                    request: pending.request,
                    result: ack.result.map(|()| pending.base_offset),
                },
            );
        }
        if let Some(proposal) = effects.alter_partition {
            let incarnation = self.nodes[i].incarnation;
            self.nodes[i].alter_sent[p] = Some((proposal.clone(), now));
            self.trace(|| format!("node {} p{p} sends AlterPartition {proposal:?}", i + 1));
            self.send(
                Endpoint::Node(i),
                Endpoint::Controller,
                Msg::AlterPartition {
                    incarnation,
                    partition: p,
                    proposal,
                },
            );
        }
        Ok(())
    }
}
