//! The invariants, checked after every event, and convergence at the end.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::log::{LogModel, StoredBatch};
use super::node::PendingProduce;
use super::*;
use crate::replica::OffsetQuery;

/// A batch acknowledged to an acks=all producer.
pub struct Acked {
    pub base_offset: i64,
    pub batch: Bytes,
}

/// What the checks remember between events.
pub struct Oracle {
    /// Per partition: the committed history, batch by batch from offset 0, as every
    /// leader's log below its high watermark has shown it.
    committed: Vec<Vec<StoredBatch>>,
    acked: Vec<Vec<Acked>>,
    /// Per partition: the leader of each epoch (node, broker epoch).
    leaders: Vec<BTreeMap<i32, (usize, i64)>>,
    /// Per (node, partition): the leadership (broker epoch, epoch) and its high watermark.
    leader_hw: BTreeMap<(usize, usize), (i64, i32, i64)>,
    /// Per (node, partition): up to where its log was found equal to the committed history,
    /// for which process and which removal count of its log.
    verified: BTreeMap<(usize, usize), (u64, u64, i64)>,
    /// Per (node, partition) in the controller's ISR: how many acknowledged batches its
    /// log was found to hold on disk, as of which removal count of the log.
    isr_holds: BTreeMap<(usize, usize), (u64, usize)>,
    /// Per partition and leader epoch: the largest latest offset its leader would have
    /// told a consumer (ListOffsets).
    latest_shown: Vec<BTreeMap<i32, i64>>,
}

impl Oracle {
    pub fn new(partitions: usize) -> Oracle {
        Oracle {
            committed: vec![Vec::new(); partitions],
            acked: (0..partitions).map(|_| Vec::new()).collect(),
            leaders: vec![BTreeMap::new(); partitions],
            leader_hw: BTreeMap::new(),
            verified: BTreeMap::new(),
            isr_holds: BTreeMap::new(),
            latest_shown: vec![BTreeMap::new(); partitions],
        }
    }
}

fn committed_end(committed: &[StoredBatch]) -> i64 {
    committed.last().map_or(0, |b| b.end_offset)
}

fn holds(log: &LogModel, base_offset: i64, batch: &Bytes) -> bool {
    log.batch_at(base_offset).is_some_and(|b| &b.bytes == batch)
}

impl World {
    /// An acks=all answer is going out: every member of the leader's maximal ISR must have
    /// the batch on disk, at its offset.
    pub(super) fn acknowledged(
        &mut self,
        i: usize,
        pending: &PendingProduce,
    ) -> Result<(), String> {
        let p = pending.partition;
        let members = self.nodes[i].replicas[p].maximal_isr().unwrap_or_default();
        for member in members {
            let Some(m) = node_index(member) else {
                continue;
            };
            let log = &self.nodes[m].logs[p];
            let on_disk = log
                .batch_at(pending.base_offset)
                .is_some_and(|b| b.bytes == pending.batch && b.end_offset <= log.durable_end());
            if !on_disk {
                return Err(format!(
                    "node {} acknowledged p{p} offset {} (acks=all) but ISR member {} does not have it on disk",
                    i + 1,
                    pending.base_offset,
                    m + 1
                ));
            }
        }
        self.oracle.acked[p].push(Acked {
            base_offset: pending.base_offset,
            batch: pending.batch.clone(),
        });
        Ok(())
    }

    pub(super) fn check(&mut self) -> Result<(), String> {
        // Leaders first: they extend the committed history the others are checked against.
        for i in 0..NODES {
            let node = &self.nodes[i];
            if !node.running() {
                continue;
            }
            let broker_epoch = node.broker_epoch.unwrap_or(-1);
            for p in 0..node.replicas.len() {
                let r = &node.replicas[p];
                let log = &node.logs[p];
                if r.log_end_offset() != log.end()
                    || r.log_start_offset() != log.start()
                    || r.epochs() != log.epochs()
                    || r.durable_end_offset() > log.durable_end()
                {
                    return Err(format!(
                        "node {} p{p}: the replica sees its log as {}..{} (on disk to {}, epochs {:?}), the log is {}..{} (on disk to {}, epochs {:?})",
                        i + 1,
                        r.log_start_offset(),
                        r.log_end_offset(),
                        r.durable_end_offset(),
                        r.epochs().entries(),
                        log.start(),
                        log.end(),
                        log.durable_end(),
                        log.epochs().entries()
                    ));
                }
                if !r.is_leader() {
                    continue;
                }
                let epoch = r.leader_epoch();
                let hw = r.high_watermark();
                match self.oracle.leaders[p].insert(epoch, (i, broker_epoch)) {
                    Some(other) if other != (i, broker_epoch) => {
                        return Err(format!(
                            "p{p} epoch {epoch} has two leaders: node {} (broker epoch {}) and node {} (broker epoch {broker_epoch})",
                            other.0 + 1,
                            other.1,
                            i + 1
                        ));
                    }
                    Some(_) => {}
                    None => {
                        // A new leadership: every acknowledged batch is in its log.
                        for a in &self.oracle.acked[p] {
                            if !holds(log, a.base_offset, &a.batch) {
                                return Err(format!(
                                    "node {} leads p{p} in epoch {epoch} without the acks=all batch at offset {}",
                                    i + 1,
                                    a.base_offset
                                ));
                            }
                        }
                    }
                }
                match self
                    .oracle
                    .leader_hw
                    .insert((i, p), (broker_epoch, epoch, hw))
                {
                    Some((be, e, before)) if (be, e) == (broker_epoch, epoch) && hw < before => {
                        return Err(format!(
                            "node {} p{p}: the leader's high watermark went back from {before} to {hw} in epoch {epoch}",
                            i + 1
                        ));
                    }
                    _ => {}
                }
                // KIP-207: the latest offset consumers are told never goes back from one
                // leader epoch to the next (a new leader does not tell it while its high
                // watermark is behind the start of its epoch). A deposed leader that has not
                // heard yet may tell less than its successor: clients that send the epoch
                // they know are fenced from it (KIP-320).
                if let Ok(Some(latest)) = r.listed_offset(OffsetQuery::Latest, hw) {
                    let shown = &mut self.oracle.latest_shown[p];
                    if let Some((&at, &before)) =
                        shown.range(..=epoch).max_by_key(|(_, offset)| **offset)
                    {
                        if latest < before {
                            return Err(format!(
                                "node {} p{p}: leading epoch {epoch}, it would tell consumers the latest offset is {latest}, below the {before} shown in epoch {at}",
                                i + 1
                            ));
                        }
                    }
                    let entry = shown.entry(epoch).or_insert(latest);
                    *entry = (*entry).max(latest);
                }
                let committed = &mut self.oracle.committed[p];
                let from = committed_end(committed);
                if hw > from {
                    let batches = log.batches();
                    let first = batches.partition_point(|b| b.base_offset < from);
                    if batches.get(first).is_none_or(|b| b.base_offset != from) {
                        return Err(format!(
                            "node {} p{p}: the leader's high watermark {hw} is past the committed end {from}, which is not a batch boundary in its log",
                            i + 1
                        ));
                    }
                    for b in batches[first..].iter().take_while(|b| b.end_offset <= hw) {
                        committed.push(b.clone());
                    }
                }
            }
        }
        // Every member of the controller's ISR holds every acknowledged batch on disk: it
        // may be elected at any moment. (Nodes that are down keep their logs.)
        for p in 0..self.opts.partitions {
            for i in 0..NODES {
                if !self.controller.partitions[p].isr.contains(&node_id(i)) {
                    self.oracle.isr_holds.remove(&(i, p));
                    continue;
                }
                let log = &self.nodes[i].logs[p];
                let acked = &self.oracle.acked[p];
                let from = match self.oracle.isr_holds.get(&(i, p)) {
                    Some(&(removals, count)) if removals == log.removals => count,
                    _ => 0,
                };
                for a in &acked[from..] {
                    let on_disk = log
                        .batch_at(a.base_offset)
                        .is_some_and(|b| b.bytes == a.batch && b.end_offset <= log.durable_end());
                    if !on_disk {
                        return Err(format!(
                            "node {} is in the ISR of p{p} ({:?}) without the acks=all batch at offset {} on disk",
                            i + 1,
                            self.controller.partitions[p].isr,
                            a.base_offset
                        ));
                    }
                }
                self.oracle
                    .isr_holds
                    .insert((i, p), (log.removals, acked.len()));
            }
        }
        // Every replica's log below its high watermark is the committed history, and so is
        // its log below its high-watermark checkpoint: a restart starts from that one.
        for i in 0..NODES {
            let node = &self.nodes[i];
            if !node.running() {
                continue;
            }
            for p in 0..node.replicas.len() {
                let log = &node.logs[p];
                let hw = node.replicas[p]
                    .high_watermark()
                    .max(log.hw_checkpoint().min(log.end()));
                let committed = &self.oracle.committed[p];
                let key = (node.incarnation, log.removals);
                let entry =
                    self.oracle
                        .verified
                        .entry((i, p))
                        .or_insert((key.0, key.1, log.start()));
                if (entry.0, entry.1) != key {
                    *entry = (key.0, key.1, log.start());
                }
                let batches = log.batches();
                let first = batches.partition_point(|b| b.end_offset <= entry.2);
                for b in batches[first..].iter().take_while(|b| b.end_offset <= hw) {
                    let at = committed.partition_point(|c| c.base_offset < b.base_offset);
                    match committed.get(at) {
                        Some(c) if c == b => entry.2 = b.end_offset,
                        Some(_) => {
                            return Err(format!(
                                "node {} p{p}: the batch at offset {} below its high watermark or checkpoint {hw} differs from the committed one",
                                i + 1,
                                b.base_offset
                            ))
                        }
                        None => {
                            return Err(format!(
                                "node {} p{p}: its high watermark or checkpoint {hw} covers offset {}, past the committed end {}",
                                i + 1,
                                b.base_offset,
                                committed_end(committed)
                            ))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything about partition `p` on every node, for a failure message.
    fn describe_partition(&self, p: usize) -> String {
        let mut out = format!("\n  controller: {:?}", self.controller.partitions[p]);
        for (i, node) in self.nodes.iter().enumerate() {
            let log = &node.logs[p];
            out.push_str(&format!(
                "\n  node {} (up {}, broker epoch {:?}): log {}..{} on disk to {}; {:?}",
                i + 1,
                node.up,
                node.broker_epoch,
                log.start(),
                log.end(),
                log.durable_end(),
                node.replicas.get(p)
            ));
        }
        out
    }

    /// After the calm: everything back, one leader each, logs equal, nothing pending.
    pub(super) fn check_converged(&self) -> Result<(), String> {
        self.converged().map_err(|(p, why)| match p {
            Some(p) => format!("{why}{}", self.describe_partition(p)),
            None => why,
        })
    }

    fn converged(&self) -> Result<(), (Option<usize>, String)> {
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.running() {
                return Err((None, format!("node {} did not come back", i + 1)));
            }
        }
        for p in 0..self.opts.partitions {
            let part = &self.controller.partitions[p];
            let Some(leader) = part.leader.and_then(node_index) else {
                return Err((
                    Some(p),
                    format!("p{p} has no leader after the calm ({part:?})"),
                ));
            };
            let r = &self.nodes[leader].replicas[p];
            if !r.is_leader() || r.leader_epoch() != part.leader_epoch.0 {
                return Err((
                    Some(p),
                    format!(
                        "p{p}: node {} does not lead epoch {} after the calm ({:?}, epoch {})",
                        leader + 1,
                        part.leader_epoch.0,
                        r.role(),
                        r.leader_epoch()
                    ),
                ));
            }
            let mut isr = part.isr.clone();
            isr.sort();
            if isr.len() != NODES {
                return Err((
                    Some(p),
                    format!("p{p}: the ISR did not grow back: {:?}", part.isr),
                ));
            }
            let log = &self.nodes[leader].logs[p];
            if r.high_watermark() != log.end() {
                return Err((
                    Some(p),
                    format!(
                        "p{p}: the leader's high watermark {} is short of its log end {}",
                        r.high_watermark(),
                        log.end()
                    ),
                ));
            }
            if r.waiting_acks() > 0 || r.isr_change_pending() {
                return Err((
                    Some(p),
                    format!("p{p}: the leader still has appends or an ISR change pending"),
                ));
            }
            for (i, node) in self.nodes.iter().enumerate() {
                if node.logs[p].batches() != log.batches() {
                    return Err((
                        Some(p),
                        format!(
                            "p{p}: node {}'s log ({}..{}) differs from the leader's ({}..{})",
                            i + 1,
                            node.logs[p].start(),
                            node.logs[p].end(),
                            log.start(),
                            log.end()
                        ),
                    ));
                }
            }
            for a in &self.oracle.acked[p] {
                if !holds(log, a.base_offset, &a.batch) {
                    return Err((
                        Some(p),
                        format!(
                            "p{p}: the acks=all batch at offset {} is lost",
                            a.base_offset
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
