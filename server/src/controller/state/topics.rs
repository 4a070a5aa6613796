//! The topic requests: CreateTopics (with placement), DeleteTopics, CreatePartitions and
//! IncrementalAlterConfigs, each as (records to propose, reply).

use super::*;

pub(super) fn leader_counts(image: &ClusterImage) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, state) in image.all_partitions() {
        if let Some(l) = state.leader {
            *counts.entry(l).or_insert(0) += 1;
        }
    }
    counts
}

/// How many times each name is mentioned.
pub(super) fn mention_counts<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_insert(0) += 1;
    }
    counts
}

/// How many partitions each broker holds a replica of.
pub(super) fn replica_counts(image: &ClusterImage) -> BTreeMap<NodeId, i64> {
    let mut counts = BTreeMap::new();
    for (_, _, state) in image.all_partitions() {
        for r in &state.replicas {
            *counts.entry(*r).or_insert(0) += 1;
        }
    }
    counts
}

/// `max.broker.partitions`: the new `replicas` must not take any broker past the limit.
/// Internal topics are never refused (groups must keep working), but they count.
pub(super) fn check_broker_partitions(
    config: &ControllerConfig,
    counts: &BTreeMap<NodeId, i64>,
    replicas: &[Vec<NodeId>],
    internal: bool,
) -> Result<(), MetadataError> {
    if internal {
        return Ok(());
    }
    let mut added: BTreeMap<NodeId, i64> = BTreeMap::new();
    for r in replicas.iter().flatten() {
        *added.entry(*r).or_insert(0) += 1;
    }
    let max = config.max_broker_partitions;
    for (broker, more) in added {
        let holds = counts.get(&broker).copied().unwrap_or(0);
        if holds.saturating_add(more) > max {
            return Err(MetadataError::PolicyViolation(format!(
                "Broker {} holds {holds} partitions; {more} more would exceed max.broker.partitions ({max})",
                broker.0
            )));
        }
    }
    Ok(())
}

/// Adds `replicas` to `counts`.
pub(super) fn count_replicas(counts: &mut BTreeMap<NodeId, i64>, replicas: &[NodeId]) {
    for r in replicas {
        *counts.entry(*r).or_insert(0) += 1;
    }
}

/// Checks a manual replica assignment for one partition.
pub(super) fn check_assignment(
    image: &ClusterImage,
    config: &ControllerConfig,
    partition: i32,
    replicas: &[NodeId],
    expected_len: Option<usize>,
) -> Result<(), MetadataError> {
    let bad = |m: String| Err(MetadataError::InvalidReplicaAssignment(m));
    if replicas.is_empty() {
        return bad(format!(
            "The manual partition assignment for partition {partition} is empty."
        ));
    }
    let unique: BTreeSet<NodeId> = replicas.iter().copied().collect();
    if unique.len() != replicas.len() {
        return bad(format!(
            "Duplicate brokers not allowed in replica assignment: {}",
            replicas
                .iter()
                .map(|n| n.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(len) = expected_len {
        if replicas.len() != len {
            return bad(format!(
                "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {len} replica(s).",
                replicas.len()
            ));
        }
    }
    if replicas.len() > config.max_replication_factor.max(1) as usize {
        return Err(MetadataError::InvalidReplicationFactor(unsupported_rf(
            replicas.len() as i16,
        )));
    }
    if let Some(unknown) = replicas.iter().find(|n| image.broker(**n).is_none()) {
        return bad(format!(
            "The manual partition assignment includes broker {}, but no broker with that ID is registered.",
            unknown.0
        ));
    }
    if !replicas.iter().any(|n| image.is_usable(*n)) {
        return bad(format!(
            "All brokers specified in the manual partition assignment for partition {partition} are fenced or in controlled shutdown."
        ));
    }
    Ok(())
}

pub(super) fn unsupported_rf(rf: i16) -> String {
    format!(
        "Replication factor {rf} is not supported yet: this version of Wharf keeps one replica of each partition (replicated partitions are not built yet); use a replication factor of 1."
    )
}

/// A new partition on `replicas`: all in sync, led by the first usable one.
pub(super) fn new_partition(image: &ClusterImage, replicas: Vec<NodeId>) -> PartitionState {
    let mut state = PartitionState {
        isr: replicas.clone(),
        replicas,
        leader: None,
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
    };
    state.leader = liveness::choose_leader(&state, |n| image.is_usable(n));
    state
}

/// Replicas for `count` new partitions from `first`, spread over the usable brokers.
pub(super) fn place(
    rng: &mut Rng,
    usable: &[NodeId],
    leaders: &BTreeMap<NodeId, usize>,
    first: i32,
    count: i32,
    rf: usize,
) -> Vec<Vec<NodeId>> {
    let start = least_loaded(
        usable,
        |b| leaders.get(&b).copied().unwrap_or(0),
        rng.next_u64(),
    );
    let shift = rng.range(0, usable.len() as u64) as usize;
    // Offset the start so that partition `first` lands on the least loaded broker.
    let start = (start + usable.len() - (first.max(0) as usize % usable.len())) % usable.len();
    assign_replicas(usable, first, count, rf, start, shift)
}

pub(super) fn fresh_topic_id(rng: &mut Rng, image: &ClusterImage, taken: &[TopicId]) -> TopicId {
    loop {
        let id = topic_id_from_bits(rng.next_u128());
        if image.topic_by_id(id).is_none() && !taken.contains(&id) {
            return id;
        }
    }
}

pub(super) fn create_topics(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    topics: Vec<CreateTopic>,
    validate_only: bool,
) -> Planned {
    let usable = image.usable_brokers();
    let mut leaders = leader_counts(image);
    let mut replicas_held = replica_counts(image);
    let mut total = image.partition_count_total();
    let mut taken_names: Vec<String> = Vec::new();
    let mut taken_ids: Vec<TopicId> = Vec::new();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    for ct in topics {
        let planned = plan_topic(
            config,
            rng,
            image,
            &usable,
            &leaders,
            &taken_names,
            &taken_ids,
            total,
            &replicas_held,
            ct,
        );
        match planned {
            Ok((created, topic_records)) => {
                total += created.topic.partition_count as usize;
                taken_names.push(created.topic.name.clone());
                taken_ids.push(created.topic.id);
                for r in &topic_records {
                    if let MetadataRecord::Partition { state, .. } = r {
                        count_replicas(&mut replicas_held, &state.replicas);
                        if let Some(l) = state.leader {
                            *leaders.entry(l).or_insert(0) += 1;
                        }
                    }
                }
                if !validate_only {
                    records.extend(topic_records);
                }
                results.push(Ok(created));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    (records, Ok(ControllerReply::CreateTopics(results)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn plan_topic(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    usable: &[NodeId],
    leaders: &BTreeMap<NodeId, usize>,
    taken_names: &[String],
    taken_ids: &[TopicId],
    total: usize,
    replicas_held: &BTreeMap<NodeId, i64>,
    ct: CreateTopic,
) -> Result<(CreatedTopic, Vec<MetadataRecord>), MetadataError> {
    let CreateTopic {
        topic,
        replication_factor,
        mut assignments,
    } = ct;
    let replicas: Vec<Vec<NodeId>>;
    let partitions: i32;
    if !assignments.is_empty() {
        if topic.partitions != -1 || replication_factor != -1 {
            return Err(MetadataError::InvalidRequest(
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
            ));
        }
        assignments.sort_by_key(|a| a.partition);
        if assignments
            .iter()
            .enumerate()
            .any(|(i, a)| a.partition != i as i32)
        {
            return Err(MetadataError::InvalidReplicaAssignment(
                "Partitions should be a consecutive 0-based integer sequence".into(),
            ));
        }
        let len = assignments[0].replicas.len();
        for a in &assignments {
            check_assignment(image, config, a.partition, &a.replicas, Some(len))?;
        }
        partitions = assignments.len() as i32;
        replicas = assignments.into_iter().map(|a| a.replicas).collect();
    } else {
        partitions = if topic.partitions == -1 {
            config.num_partitions
        } else {
            topic.partitions
        };
        let rf = if replication_factor == -1 {
            config.default_replication_factor
        } else {
            replication_factor
        };
        if rf < 1 {
            return Err(MetadataError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        if rf as usize > usable.len() {
            return Err(MetadataError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
                usable.len()
            )));
        }
        if rf > config.max_replication_factor {
            return Err(MetadataError::InvalidReplicationFactor(unsupported_rf(rf)));
        }
        // Checked again with the name below; needed here to bound the placement.
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(MetadataError::InvalidPartitions(format!(
                "Number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {partitions}"
            )));
        }
        replicas = place(rng, usable, leaders, 0, partitions, rf as usize);
    }
    let new_topic = NewTopic {
        partitions,
        ..topic
    };
    let taken: Vec<&str> = taken_names.iter().map(String::as_str).collect();
    let overrides = validate_new_topic(image.metadata(), &new_topic, &taken)?;
    check_broker_partitions(config, replicas_held, &replicas, new_topic.internal)?;
    if total + partitions as usize > config.max_cluster_partitions {
        return Err(MetadataError::InvalidPartitions(format!(
            "Creating {partitions} partitions would take the cluster past its limit of {} partitions.",
            config.max_cluster_partitions
        )));
    }
    let id = fresh_topic_id(rng, image, taken_ids);
    let rf = replicas[0].len() as i16;
    let mut records = Vec::with_capacity(1 + partitions as usize);
    records.push(MetadataRecord::TopicCreated {
        name: new_topic.name.clone(),
        id,
        configs: overrides.clone(),
        internal: new_topic.internal,
    });
    for (p, r) in replicas.into_iter().enumerate() {
        records.push(MetadataRecord::Partition {
            topic: id,
            partition: PartitionId(p as i32),
            state: new_partition(image, r),
        });
    }
    let created = CreatedTopic {
        topic: crate::metadata::TopicMeta {
            name: new_topic.name,
            id,
            partition_count: partitions,
            overrides,
            internal: new_topic.internal,
        },
        replication_factor: rf,
    };
    Ok((created, records))
}

pub(super) fn delete_topics(
    image: &ClusterImage,
    targets: Vec<crate::metadata::controller::TopicRef>,
) -> Planned {
    let mut deleted: Vec<TopicId> = Vec::new();
    let mut records = Vec::new();
    let results = targets
        .iter()
        .map(|target| {
            let topic = deletion_target(image.metadata(), target)?;
            if deleted.contains(&topic.id) {
                return Err(match target {
                    crate::metadata::controller::TopicRef::Name(_) => MetadataError::UnknownTopic,
                    crate::metadata::controller::TopicRef::Id(_) => MetadataError::UnknownTopicId,
                });
            }
            deleted.push(topic.id);
            records.push(MetadataRecord::TopicDeleted { id: topic.id });
            Ok(topic.clone())
        })
        .collect();
    (records, Ok(ControllerReply::DeleteTopics(results)))
}

pub(super) fn create_partitions(
    config: &ControllerConfig,
    rng: &mut Rng,
    image: &ClusterImage,
    topics: Vec<PartitionsIncrease>,
    validate_only: bool,
) -> Planned {
    let usable = image.usable_brokers();
    let mut leaders = leader_counts(image);
    let mut replicas_held = replica_counts(image);
    let mut total = image.partition_count_total();
    let mut records = Vec::new();
    // Counted once: a request may name hundreds of thousands of topics.
    let names = mention_counts(topics.iter().map(|t| t.topic.as_str()));
    let mut results = Vec::with_capacity(topics.len());
    for t in &topics {
        let result = (|| {
            if names.get(t.topic.as_str()).copied().unwrap_or(0) > 1 {
                return Err(MetadataError::InvalidRequest(format!(
                    "Duplicate topic in request: {}",
                    t.topic
                )));
            }
            let topic = image.topic(&t.topic).ok_or(MetadataError::UnknownTopic)?;
            check_partition_increase(topic, t.total)?;
            let added = t.total - topic.partition_count;
            if total + added as usize > config.max_cluster_partitions {
                return Err(MetadataError::InvalidPartitions(format!(
                    "Adding {added} partitions would take the cluster past its limit of {} partitions.",
                    config.max_cluster_partitions
                )));
            }
            let rf = image
                .partitions(topic.id)
                .first()
                .map_or(1, |p| p.replicas.len());
            let replicas = if t.assignments.is_empty() {
                if rf > usable.len() {
                    return Err(MetadataError::InvalidReplicationFactor(format!(
                        "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
                        usable.len()
                    )));
                }
                place(rng, &usable, &leaders, topic.partition_count, added, rf)
            } else {
                if t.assignments.len() != added as usize {
                    return Err(MetadataError::InvalidReplicaAssignment(format!(
                        "Increasing the number of partitions by {added} but {} assignments provided.",
                        t.assignments.len()
                    )));
                }
                for (i, r) in t.assignments.iter().enumerate() {
                    check_assignment(image, config, topic.partition_count + i as i32, r, Some(rf))?;
                }
                t.assignments.clone()
            };
            check_broker_partitions(config, &replicas_held, &replicas, topic.internal)?;
            for r in &replicas {
                count_replicas(&mut replicas_held, r);
            }
            let mut topic_records = Vec::with_capacity(replicas.len());
            for (i, r) in replicas.into_iter().enumerate() {
                let state = new_partition(image, r);
                if let Some(l) = state.leader {
                    *leaders.entry(l).or_insert(0) += 1;
                }
                topic_records.push(MetadataRecord::Partition {
                    topic: topic.id,
                    partition: PartitionId(topic.partition_count + i as i32),
                    state,
                });
            }
            total += added as usize;
            if !validate_only {
                records.extend(topic_records);
            }
            Ok(())
        })();
        results.push(result);
    }
    (records, Ok(ControllerReply::CreatePartitions(results)))
}

pub(super) fn alter_configs(
    config: &ControllerConfig,
    image: &ClusterImage,
    topics: Vec<(String, Vec<crate::metadata::controller::AlterOp>)>,
    validate_only: bool,
) -> Planned {
    let names: BTreeMap<String, usize> = mention_counts(topics.iter().map(|(n, _)| n.as_str()))
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    let mut records = Vec::new();
    let results = topics
        .into_iter()
        .map(|(name, ops)| {
            if names.get(&name).copied().unwrap_or(0) > 1 {
                return Err(MetadataError::InvalidRequest(format!(
                    "Duplicate resource in request: topic {name}"
                )));
            }
            let topic = image.topic(&name).ok_or(MetadataError::UnknownTopic)?;
            let next = apply_ops(&topic.overrides, ops, &config.topic_defaults)?;
            if !validate_only {
                for (k, v) in &next {
                    if topic.overrides.get(k) != Some(v) {
                        records.push(MetadataRecord::ConfigChanged {
                            topic: topic.id,
                            name: k.clone(),
                            value: Some(v.clone()),
                        });
                    }
                }
                for k in topic.overrides.keys().filter(|k| !next.contains_key(*k)) {
                    records.push(MetadataRecord::ConfigChanged {
                        topic: topic.id,
                        name: k.clone(),
                        value: None,
                    });
                }
            }
            Ok(())
        })
        .collect();
    (records, Ok(ControllerReply::AlterConfigs(results)))
}
