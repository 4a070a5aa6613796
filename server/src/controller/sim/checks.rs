//! What the simulator checks: the committed log as first applied anywhere (the oracle),
//! each node's image against a replay of it, one leader per term, acknowledged changes,
//! and at the end, convergence.

use super::*;

#[derive(Default)]
pub(super) struct Oracle {
    /// The committed log as first applied anywhere: index i at `entries[i - 1]`.
    pub(super) entries: Vec<(u64, Bytes)>,
    /// A replay of `entries` from nothing.
    pub(super) image: ClusterImage,
    /// `digests[i]`: the image digest after index i.
    pub(super) digests: Vec<u64>,
    pub(super) leaders: BTreeMap<u64, u64>,
    pub(super) created: BTreeSet<u128>,
    pub(super) deleted: BTreeSet<u128>,
    pub(super) registrations: BTreeSet<(i32, i64, u128)>,
    pub(super) producer_blocks: Vec<(i64, i64)>,
}

pub(super) fn digest(image: &ClusterImage) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    encode_records(&image.snapshot_records()).hash(&mut h);
    image.applied_offset().hash(&mut h);
    h.finish()
}

impl World {
    pub(super) fn oracle_apply(
        &mut self,
        i: Idx,
        index: u64,
        term: u64,
        data: Bytes,
    ) -> Result<(), String> {
        let len = self.oracle.entries.len() as u64;
        if index <= len {
            let (t, d) = &self.oracle.entries[index as usize - 1];
            if *t != term || *d != data {
                return Err(format!(
                    "node {} applied a different entry at index {index} (term {term}) than the one committed there before (term {t})",
                    i + 1
                ));
            }
            return Ok(());
        }
        if index != len + 1 {
            return Err(format!(
                "node {} applied entry {index}, but the committed log known so far ends at {len}",
                i + 1
            ));
        }
        let records = if data.is_empty() {
            Vec::new()
        } else {
            decode_records(&data).map_err(|e| format!("committed entry {index}: {e}"))?
        };
        self.check_partition_changes(index, &records)?;
        let errors = self.oracle.image.apply(index, term, &records);
        if let Some(e) = errors.first() {
            return Err(format!("committed entry {index} does not replay: {e}"));
        }
        self.oracle
            .image
            .check_invariants()
            .map_err(|e| format!("after committed entry {index}: {e}"))?;
        for r in &records {
            match r {
                MetadataRecord::TopicCreated { id, .. } => {
                    self.oracle.created.insert(id.0.as_u128());
                }
                MetadataRecord::TopicDeleted { id } => {
                    self.oracle.deleted.insert(id.0.as_u128());
                }
                MetadataRecord::BrokerRegistered(b) => {
                    self.oracle.registrations.insert((
                        b.node_id.0,
                        b.broker_epoch,
                        b.incarnation_id,
                    ));
                }
                MetadataRecord::BrokerFenced { .. } => self.stats.brokers_fenced += 1,
                _ => {}
            }
        }
        self.oracle.entries.push((term, data));
        self.oracle.digests.push(digest(&self.oracle.image));
        self.stats.committed_entries = index;
        Ok(())
    }

    /// Each partition change of committed entry `index` against the partition's state
    /// before it (the oracle's image, or an earlier record of the same entry): epochs only
    /// grow, the leader changes exactly when the leader epoch does, a new leader comes from
    /// the ISR (or, where its topic allows unclean election, is the whole new ISR), and a
    /// broker joins the ISR only under the same leader in the same epoch (AlterPartition).
    fn check_partition_changes(
        &mut self,
        index: u64,
        records: &[MetadataRecord],
    ) -> Result<(), String> {
        use crate::metadata::cluster::PartitionState;
        use crate::metadata::TopicId;
        let image = &self.oracle.image;
        let mut changed: BTreeMap<(TopicId, i32), PartitionState> = BTreeMap::new();
        let mut unclean: BTreeMap<TopicId, bool> = BTreeMap::new();
        // Brokers fenced or unfenced by earlier records of this entry.
        let mut usable: BTreeMap<NodeId, bool> = BTreeMap::new();
        let (mut elections, mut unclean_elections) = (0, 0);
        for r in records {
            match r {
                MetadataRecord::BrokerFenced { node } => {
                    usable.insert(*node, false);
                }
                MetadataRecord::BrokerUnfenced { node } => {
                    usable.insert(*node, true);
                }
                MetadataRecord::BrokerRegistered(b) => {
                    usable.insert(b.node_id, !b.fenced);
                }
                MetadataRecord::ConfigChanged { topic, name, value }
                    if name == "unclean.leader.election.enable" =>
                {
                    unclean.insert(*topic, value.as_deref() == Some("true"));
                }
                MetadataRecord::Partition {
                    topic,
                    partition,
                    state: next,
                } => {
                    let key = (*topic, partition.0);
                    let prev = changed
                        .get(&key)
                        .or_else(|| image.partition(*topic, *partition))
                        .cloned();
                    changed.insert(key, next.clone());
                    let Some(prev) = prev else {
                        continue;
                    };
                    let at = || format!("entry {index}, partition {}-{}", topic.0, partition.0);
                    if next.leader_epoch < prev.leader_epoch
                        || next.partition_epoch <= prev.partition_epoch
                    {
                        return Err(format!(
                            "{}: epochs go back or stand still ({:?}/{} after {:?}/{})",
                            at(),
                            next.leader_epoch,
                            next.partition_epoch,
                            prev.leader_epoch,
                            prev.partition_epoch
                        ));
                    }
                    if next.replicas != prev.replicas {
                        return Err(format!("{}: replicas changed", at()));
                    }
                    let leader_changed = next.leader != prev.leader;
                    if leader_changed != (next.leader_epoch != prev.leader_epoch) {
                        return Err(format!(
                            "{}: leader {:?} -> {:?} with leader epoch {:?} -> {:?}",
                            at(),
                            prev.leader,
                            next.leader,
                            prev.leader_epoch,
                            next.leader_epoch
                        ));
                    }
                    if next.leader.is_some_and(|l| !next.isr.contains(&l)) {
                        return Err(format!("{}: the leader is not in the ISR", at()));
                    }
                    if let (true, Some(new_leader)) = (leader_changed, next.leader) {
                        elections += 1;
                        if !prev.isr.contains(&new_leader) {
                            let allowed = unclean.get(topic).copied().unwrap_or_else(|| {
                                image
                                    .topic_by_id(*topic)
                                    .and_then(|t| t.overrides.get("unclean.leader.election.enable"))
                                    .is_some_and(|v| v == "true")
                            });
                            if !allowed || next.isr != vec![new_leader] {
                                return Err(format!(
                                    "{}: broker {} leads from outside the ISR {:?} (unclean election allowed: {allowed}; new ISR {:?})",
                                    at(),
                                    new_leader.0,
                                    prev.isr,
                                    next.isr
                                ));
                            }
                            unclean_elections += 1;
                        }
                    }
                    let joined: Vec<_> =
                        next.isr.iter().filter(|n| !prev.isr.contains(n)).collect();
                    // KIP-841: a fenced (or unregistered) broker never joins an ISR.
                    let is_usable = |n: NodeId| {
                        usable
                            .get(&n)
                            .copied()
                            .unwrap_or_else(|| image.is_usable(n))
                    };
                    if let Some(n) = joined.iter().find(|n| !is_usable(***n)) {
                        return Err(format!(
                            "{}: broker {} joined the ISR while fenced or unregistered",
                            at(),
                            n.0
                        ));
                    }
                    let unclean_isr =
                        leader_changed && next.leader.is_some_and(|l| next.isr == vec![l]);
                    if !joined.is_empty()
                        && !unclean_isr
                        && (leader_changed || next.leader.is_none())
                    {
                        return Err(format!(
                            "{}: {joined:?} joined the ISR without its leader asking (leader {:?} -> {:?})",
                            at(),
                            prev.leader,
                            next.leader
                        ));
                    }
                }
                _ => {}
            }
        }
        self.stats.elections += elections;
        self.stats.unclean_elections += unclean_elections;
        Ok(())
    }

    /// The node's image equals the replay of the committed log at its offset.
    pub(super) fn check_node(&mut self, i: Idx) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let Some(node) = n.live.as_ref() else {
            return Ok(());
        };
        let offset = node.image().applied_offset();
        if offset == n.checked_offset {
            return Ok(());
        }
        n.checked_offset = offset;
        let Some(expected) = self.oracle.digests.get(offset as usize) else {
            return Err(format!(
                "node {} is at offset {offset}, beyond the committed log ({})",
                i + 1,
                self.oracle.entries.len()
            ));
        };
        if digest(node.image()) != *expected {
            return Err(format!(
                "node {}'s image at offset {offset} differs from a replay of the committed log",
                i + 1
            ));
        }
        if let Some(spec) = node.controller_image() {
            spec.check_invariants()
                .map_err(|e| format!("node {}'s controller image: {e}", i + 1))?;
        }
        Ok(())
    }

    pub(super) fn check_leaders(&mut self) -> Result<(), String> {
        for n in &self.nodes {
            let Some(node) = n.live.as_ref() else {
                continue;
            };
            let status = node.status();
            self.stats.max_term = self.stats.max_term.max(status.quorum.term);
            if status.quorum.role == StateRole::Leader {
                let id = n.id.0 as u64;
                if let Some(other) = self.oracle.leaders.insert(status.quorum.term, id) {
                    if other != id {
                        return Err(format!(
                            "two leaders in term {}: nodes {other} and {id}",
                            status.quorum.term
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_acknowledged(
        &mut self,
        request: &ControllerRequest,
        reply: &ControllerReply,
    ) -> Result<(), String> {
        match reply {
            ControllerReply::CreateTopics(items) => {
                let validate_only = matches!(
                    request,
                    ControllerRequest::CreateTopics {
                        validate_only: true,
                        ..
                    }
                );
                for created in items.iter().flatten() {
                    if !validate_only
                        && !self.oracle.created.contains(&created.topic.id.0.as_u128())
                    {
                        return Err(format!(
                            "topic {} was acknowledged but its creation is not in the committed log",
                            created.topic.name
                        ));
                    }
                }
            }
            ControllerReply::DeleteTopics(items) => {
                for deleted in items.iter().flatten() {
                    if !self.oracle.deleted.contains(&deleted.id.0.as_u128()) {
                        return Err(format!(
                            "topic {} was acknowledged deleted but that is not in the committed log",
                            deleted.name
                        ));
                    }
                }
            }
            ControllerReply::ProducerIds(block) => {
                let (first, end) = (block.first, block.first + block.count as i64);
                if self.oracle.image.next_producer_id() < end {
                    return Err(format!(
                        "producer ids {first}..{end} were handed out before being committed"
                    ));
                }
                if let Some((a, b)) = self
                    .oracle
                    .producer_blocks
                    .iter()
                    .find(|(a, b)| first < *b && *a < end)
                {
                    return Err(format!(
                        "producer ids {first}..{end} overlap the block {a}..{b} handed out before"
                    ));
                }
                self.oracle.producer_blocks.push((first, end));
            }
            ControllerReply::AlterPartition(topics) => {
                let ControllerRequest::AlterPartition(asked) = request else {
                    return Err("an AlterPartition answer to another request".into());
                };
                for (t, asked_topic) in topics.iter().zip(&asked.topics) {
                    for (p, item) in t.partitions.iter().zip(&asked_topic.partitions) {
                        let Ok(c) = &p.result else { continue };
                        self.stats.isr_changes_acknowledged +=
                            u64::from(c.partition_epoch > item.partition_epoch);
                        let mut wanted: Vec<NodeId> = item.new_isr.iter().map(|m| m.node).collect();
                        wanted.sort();
                        let mut got = c.isr.clone();
                        got.sort();
                        // Based on the state the leader named: that partition epoch,
                        // or the next when the ISR changed.
                        let based_on_it = c.partition_epoch == item.partition_epoch
                            || c.partition_epoch == item.partition_epoch + 1;
                        if got != wanted
                            || c.leader != Some(asked.broker)
                            || c.leader_epoch != item.leader_epoch
                            || !based_on_it
                        {
                            return Err(format!(
                                "AlterPartition asked for ISR {wanted:?} led by {} and was answered {c:?}",
                                asked.broker.0
                            ));
                        }
                        // Committed before the answer: the log holds that state or a
                        // later one.
                        // (A name may since belong to a topic created again.)
                        let topic_id = match &t.topic {
                            TopicRef::Id(id) => Some(*id),
                            TopicRef::Name(_) => None,
                        };
                        let Some(now) =
                            topic_id.and_then(|id| self.oracle.image.partition(id, p.partition))
                        else {
                            continue;
                        };
                        let same = now.partition_epoch == c.partition_epoch;
                        if now.partition_epoch < c.partition_epoch
                            || (same && (now.isr != c.isr || now.leader_epoch != c.leader_epoch))
                        {
                            return Err(format!(
                                "AlterPartition was answered {c:?} but the committed state is {now:?}"
                            ));
                        }
                    }
                }
            }
            ControllerReply::BrokerRegistration { broker_epoch } => {
                if let ControllerRequest::RegisterBroker(r) = request {
                    if !self.oracle.registrations.contains(&(
                        r.node.0,
                        *broker_epoch,
                        r.incarnation_id,
                    )) {
                        return Err(format!(
                            "broker {} was acknowledged registered with epoch {broker_epoch}, which is not in the committed log",
                            r.node.0
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // The end
    // -----------------------------------------------------------------------------------

    pub(super) fn final_checks(&mut self) -> Result<(), String> {
        let mut leaders = Vec::new();
        let mut max_term = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let node = n
                .live
                .as_ref()
                .ok_or_else(|| format!("node {} is not running after the calm phase", i + 1))?;
            let status = node.status();
            max_term = max_term.max(status.quorum.term);
            if status.quorum.role == StateRole::Leader {
                leaders.push((i, status.quorum.term, node.is_active_controller()));
            }
            if node.image().applied_offset() < self.marked_committed {
                return Err(format!(
                    "node {} applied {} entries after the calm phase; {} were committed two seconds before its end",
                    i + 1,
                    node.image().applied_offset(),
                    self.marked_committed
                ));
            }
        }
        match leaders.as_slice() {
            [(_, term, true)] if *term == max_term => {}
            _ => {
                return Err(format!(
                    "after the calm phase the leaders are {leaders:?} (node, term, active); expected one active controller in term {max_term}"
                ))
            }
        }
        if !self.final_change_sent || !self.final_change_acknowledged {
            return Err("the last change of the calm phase was not acknowledged".into());
        }
        for ((caller, token), o) in &self.outstanding {
            if o.at_ms < self.now - 5_000 {
                return Err(format!(
                    "request {token} of caller {caller} to node {} has had no answer for {} ms",
                    o.to + 1,
                    self.now - o.at_ms
                ));
            }
        }
        let image = self.oracle.image.clone();
        for b in &self.brokers {
            let registration = image.broker(b.id);
            if b.silent_in_calm {
                if registration.is_some_and(|r| !r.fenced) {
                    return Err(format!(
                        "broker {} has been silent for {} ms but is not fenced",
                        b.id.0, self.opts.heal_ms
                    ));
                }
            } else {
                match registration {
                    Some(r) if !r.fenced && r.incarnation_id == b.incarnation => {}
                    other => {
                        return Err(format!(
                            "broker {} is alive and heartbeating but its registration is {other:?}",
                            b.id.0
                        ))
                    }
                }
                if let Some(f) = &b.follower {
                    if f.image().applied_offset() < self.marked_committed {
                        return Err(format!(
                            "broker {} followed the log to {}; {} entries were committed two seconds before the end",
                            b.id.0,
                            f.image().applied_offset(),
                            self.marked_committed
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
