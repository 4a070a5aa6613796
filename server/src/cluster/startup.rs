//! Starting the control plane: the metadata log is read and repaired on the main thread
//! before any shard runs ([`prepare`]); shard 0 then starts the driver, the controller
//! listener and the broker's registration ([`start`]) and waits until this node has caught
//! up and is unfenced ([`wait_ready`]). Then, and only then, the shards serve clients.
//!
//! A data directory written before clusters existed (`wharf-metadata.toml`, or only
//! partition directories) is taken over by a one-node cluster: the first controller's
//! bootstrap re-creates its topics with their ids, configs and producer-id high water, and
//! the file is renamed `wharf-metadata.toml.migrated` once the log holds all of it.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use wharf_engine::storage::DmaStorage;

use crate::cluster::disk::{read_metadata_dir, repair_blocking, StorageDisk, METADATA_DIR};
use crate::cluster::{follow, lifecycle, net, ControlPlane, Metadata};
use crate::config::StartupError;
use crate::config::{io_reason, BrokerConfig};
use crate::controller::image::ClusterImage;
use crate::controller::log_store::{LogStore, LogStoreError};
use crate::controller::migration::{migration_applied, migration_records, MIGRATED_SUFFIX};
use crate::controller::node::{Bootstrap, ControllerNode, NodeConfig};
use crate::controller::rng::Rng;
use crate::metadata::store::{self, METADATA_FILE};
use crate::metadata::{random_u128, MetadataImage, NodeId};
use crate::node::Shard;
use crate::shard::now_ms;

/// What start-up found on disk, handed to shard 0.
pub struct Prepared {
    /// A voter's metadata log; `None` on a broker-only node, which keeps no copy of the log
    /// and fetches it from the active controller at every start.
    store: Option<LogStore>,
    bootstrap: Bootstrap,
    /// The metadata of a data directory written before clusters, being taken over.
    legacy: Option<MetadataImage>,
}

fn voter_ids(config: &BrokerConfig) -> Vec<u64> {
    config.cluster.voters.iter().map(|v| v.id as u64).collect()
}

/// Reads (and repairs) the metadata log, and the metadata of an older data directory.
/// Blocking I/O: runs before any shard starts.
pub fn prepare(config: &BrokerConfig) -> Result<Prepared, StartupError> {
    if !config.cluster.is_voter(config.node_id) {
        return prepare_broker_only(config);
    }
    let data_dir = &config.data_dir;
    let dir = data_dir.join(METADATA_DIR);
    let shown = dir.display();
    std::fs::create_dir_all(&dir).map_err(|e| {
        StartupError(format!(
            "cannot create the metadata log directory {shown}: {}",
            io_reason(&e)
        ))
    })?;
    check_voters(&dir, config)?;
    let contents = read_metadata_dir(&dir).map_err(|e| {
        StartupError(format!(
            "cannot read the metadata log in {shown}: {}",
            io_reason(&e)
        ))
    })?;
    let (store, repairs, report) = LogStore::recover(
        voter_ids(config),
        contents.log.as_deref(),
        contents.snapshot.as_deref(),
    )
    .map_err(|e| {
        StartupError(format!(
            "cannot use the metadata log in {shown}: {e}{}",
            damage_remedy(&e, &dir, config)
        ))
    })?;
    repair_blocking(&dir, &repairs).map_err(|e| {
        StartupError(format!(
            "cannot repair the metadata log in {shown}: {}",
            io_reason(&e)
        ))
    })?;
    if report.torn_bytes > 0 {
        tracing::warn!(
            bytes = report.torn_bytes,
            "cut a torn write off the end of the metadata log"
        );
    }

    // Nothing bootstrapped yet: a new cluster, or an older data dir being taken over
    // (possibly again, after a crash before its bootstrap was committed).
    let fresh = !bootstrapped(&store);
    let legacy = store::load(data_dir).map_err(|e| StartupError(e.to_string()))?;
    let legacy = match legacy {
        Some(image) => Some(image),
        None if fresh => {
            // A data directory from before the metadata file: its topics are rebuilt from
            // the partition directories, as they always were.
            let found = store::scan_partition_dirs(data_dir).map_err(|e| {
                StartupError(format!(
                    "cannot read data dir {}: {}",
                    data_dir.display(),
                    io_reason(&e)
                ))
            })?;
            let rebuilt = store::reconcile(None, found).image;
            if rebuilt.topic_count() > 0 {
                tracing::warn!(
                    topics = rebuilt.topic_count(),
                    "no metadata: topics rebuilt from the partition directories"
                );
                Some(rebuilt)
            } else {
                None
            }
        }
        None => None,
    };
    if legacy.is_some() && fresh && config.cluster.voters.len() > 1 {
        return Err(StartupError(format!(
            "data dir {} holds topics of a single-node wharf ({METADATA_FILE}); taking them into a new cluster of several voters is not supported yet: start this node once without --controller-quorum-voters (a one-node cluster takes them over), or use an empty data dir",
            data_dir.display()
        )));
    }
    let me = NodeId(config.node_id);
    let bootstrap = match &legacy {
        Some(old) => Bootstrap {
            cluster_id: Some(old.cluster_id.clone()),
            records: migration_records(old, me),
        },
        None => Bootstrap::default(),
    };
    Ok(Prepared {
        store: Some(store),
        bootstrap,
        legacy,
    })
}

/// What an operator can do about a damaged metadata log or snapshot (bit rot, a bad
/// sector): the node never cuts committed entries to start. Empty for the other refusals,
/// whose messages say what to do.
fn damage_remedy(error: &LogStoreError, dir: &Path, config: &BrokerConfig) -> String {
    if !matches!(
        error,
        LogStoreError::Corrupt { .. } | LogStoreError::BadSnapshot(_)
    ) {
        return String::new();
    }
    if config.cluster.voters.len() > 1 {
        // A voter cannot be refilled from the others: raft-rs stops a follower whose log
        // ends below the commit index the leader sends it (the leader still counts the
        // entries this node acknowledged), and a voter that forgets its acknowledgements
        // and vote weakens the quorum's safety in any case.
        format!(
            "; the other voters go on without this one while they are a majority, but Wharf cannot rebuild a voter's metadata log from them (a voter started with an empty or older log is not supported), so keep {} as it is (see docs/cluster.md, \"A damaged metadata log\")",
            dir.display()
        )
    } else {
        format!(
            "; this node is the only voter, so no other copy of the metadata log exists: restore {} from a backup, or move it aside to rebuild the topics from the partition directories, as for a data directory from before clusters (with a new cluster id and new topic ids, and without topic configs or the producer-id blocks handed out)",
            dir.display()
        )
    }
}

/// A broker-only node keeps no metadata log. Its data dir must not hold a voter's log (the
/// voter set would change, which is not supported) nor a single-node wharf's metadata
/// (only a voter's bootstrap could take it over).
fn prepare_broker_only(config: &BrokerConfig) -> Result<Prepared, StartupError> {
    let data_dir = &config.data_dir;
    let voters_file = data_dir.join(METADATA_DIR).join(VOTERS_FILE);
    if voters_file.exists() {
        return Err(StartupError(format!(
            "data dir {} holds the metadata log of a voter ({}), but node.id {} is not among controller.quorum.voters: changing the voter set is not supported (start this node with the voters it was first started with, or use an empty data dir)",
            data_dir.display(),
            voters_file.display(),
            config.node_id
        )));
    }
    if data_dir.join(METADATA_FILE).exists() {
        return Err(StartupError(format!(
            "data dir {} holds topics of a single-node wharf ({METADATA_FILE}); a node that is a broker only cannot take them over: start it once without --controller-quorum-voters (a one-node cluster takes them over), or use an empty data dir",
            data_dir.display()
        )));
    }
    Ok(Prepared {
        store: None,
        bootstrap: Bootstrap::default(),
        legacy: None,
    })
}

/// The file recording the voter set the metadata log was started with.
const VOTERS_FILE: &str = "quorum-voters";

/// The voter set is static (no KIP-853): a log written for other voters is refused, with a
/// message saying so. The set is recorded beside the log on first start (snapshots record
/// it too, but a young log has none).
fn check_voters(dir: &Path, config: &BrokerConfig) -> Result<(), StartupError> {
    let path = dir.join(VOTERS_FILE);
    let ids = config.cluster.voter_ids();
    let configured = ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim() == configured => Ok(()),
        Ok(found) => Err(StartupError(format!(
            "the metadata log in {} was written for controller.quorum.voters with node ids {}, not {configured}: changing the voter set is not supported (start every node with the voters it was first started with)",
            dir.display(),
            found.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!("{VOTERS_FILE}.tmp"));
            let written = std::fs::write(&tmp, format!("{configured}\n"))
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &path))
                .and_then(|_| std::fs::File::open(dir)?.sync_all());
            written.map_err(|e| {
                StartupError(format!("cannot write {}: {}", path.display(), io_reason(&e)))
            })
        }
        Err(e) => Err(StartupError(format!(
            "cannot read {}: {}",
            path.display(),
            io_reason(&e)
        ))),
    }
}

/// Whether the log (or its snapshot) holds the cluster's bootstrap record.
fn bootstrapped(store: &LogStore) -> bool {
    use crate::controller::records::{decode_records, MetadataRecord};
    let has_bootstrap = |data: &[u8]| {
        decode_records(data).is_ok_and(|records| {
            records
                .iter()
                .any(|r| matches!(r, MetadataRecord::ClusterBootstrap { .. }))
        })
    };
    if store.snapshot_index() > 0 && has_bootstrap(&store.snapshot_ref().data) {
        return true;
    }
    let (first, last) = (store.first_index(), store.last_index());
    if last < first {
        return false;
    }
    store
        .entries_between(first, last + 1, u64::MAX)
        .is_ok_and(|entries| entries.iter().any(|e| has_bootstrap(&e.data)))
}

/// Starts the control plane on shard 0: the driver, the publisher, the controller listener
/// and connections, and the broker's registration.
pub fn start(
    shard: &Rc<Shard>,
    prepared: Prepared,
    controller_listener: Option<net::ControllerListener>,
) -> Result<(Rc<ControlPlane>, Option<MetadataImage>), String> {
    let config = &shard.config;
    let me = NodeId(config.node_id);
    let incarnation_id = random_u128();
    let voters: Vec<NodeId> = config.cluster.voters.iter().map(|v| NodeId(v.id)).collect();
    let metadata = match prepared.store {
        Some(store) => {
            let mut node_config = NodeConfig::new(me, voters.clone());
            let c = &mut node_config.controller;
            c.num_partitions = config.num_partitions;
            c.default_replication_factor = config.default_replication_factor;
            c.topic_defaults = config.topic_defaults.clone();
            c.session_timeout_ms = config.cluster.session_timeout_ms;
            c.auto_leader_rebalance_enable = config.cluster.auto_leader_rebalance_enable;
            c.leader_imbalance_check_interval_ms =
                config.cluster.leader_imbalance_check_interval_ms;
            c.max_broker_partitions = config.max_broker_partitions;
            // Partitions are replicated: any replication factor up to the registered
            // brokers.
            c.max_replication_factor = i16::MAX;
            c.local_incarnation = Some(incarnation_id);
            node_config.bootstrap = prepared.bootstrap.clone();
            let mut node =
                ControllerNode::open(node_config, store, Rng::new(random_u128() as u64), now_ms())
                    .map_err(|e| e.to_string())?;
            if voters == [me] {
                // Alone in the quorum: lead at once rather than after an election timeout.
                node.campaign();
            }
            Metadata::Voter {
                node: std::cell::RefCell::new(node),
                disk: StorageDisk::new(DmaStorage, config.data_dir.join(METADATA_DIR)),
            }
        }
        None => Metadata::Follower(Default::default()),
    };
    let control = Rc::new(ControlPlane {
        shard: shard.clone(),
        me,
        metadata,
        inbox: Default::default(),
        wake: Default::default(),
        waiters: Default::default(),
        next_token: std::cell::Cell::new(1),
        leader: std::cell::Cell::new(None),
        next_voter: std::cell::Cell::new(config.node_id.unsigned_abs() as usize),
        known_committed: std::cell::Cell::new(0),
        applied_watchers: Default::default(),
        observers: Default::default(),
        pending_image: Default::default(),
        offered_offset: std::cell::Cell::new(0),
        publish_wake: Default::default(),
        published_offset: std::cell::Cell::new(0),
        published_waiters: Default::default(),
        publish_failures: Default::default(),
        peers: net::Peers::new(&config.cluster, me),
        broker: lifecycle::BrokerState::new(incarnation_id),
        bad_frames: std::cell::Cell::new(0),
        writes_stalled: std::cell::Cell::new(false),
        write_stalls: std::cell::Cell::new(0),
        dropped_inputs: std::cell::Cell::new(0),
        unsafe_raft_warned_ms: std::cell::Cell::new(i64::MIN / 2),
    });
    *shard.control.borrow_mut() = Some(control.clone());
    control.peers.start(&control);
    if control.is_voter() {
        glommio::spawn_local(control.clone().run()).detach();
    } else {
        glommio::spawn_local(follow::run(control.clone())).detach();
    }
    glommio::spawn_local(control.clone().publish()).detach();
    if let Some(net::ControllerListener {
        listener,
        kafka_clients,
    }) = controller_listener
    {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves
        // here from the std listener (into_raw_fd gives it up).
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
        glommio::spawn_local(net::serve(control.clone(), listener, kafka_clients)).detach();
    }
    glommio::spawn_local(lifecycle::run(control.clone())).detach();
    // Kick the driver: the first Ready (a lone voter's election) needs no outside input.
    control.wake.notify();
    Ok((control, prepared.legacy))
}

/// Starts the control plane and waits until this node may serve clients.
pub async fn bring_up(
    shard: &Rc<Shard>,
    prepared: Prepared,
    controller_listener: Option<net::ControllerListener>,
) -> Result<(), String> {
    let (control, legacy) = start(shard, prepared, controller_listener)?;
    wait_ready(&control, legacy).await
}

/// Waits until this node is unfenced and its shards serve the image it was unfenced in;
/// then takes care of the data directory (renames a migrated metadata file, removes the
/// directories of partitions this node no longer holds). Partitions that fail to open are
/// a start-up error.
pub async fn wait_ready(
    control: &Rc<ControlPlane>,
    legacy: Option<MetadataImage>,
) -> Result<(), String> {
    let mut waited_logged = false;
    loop {
        let ready = futures_lite::future::or(
            async {
                control.broker.ready.wait().await;
                true
            },
            async {
                glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
                false
            },
        )
        .await;
        if ready {
            break;
        }
        if !waited_logged {
            waited_logged = true;
            let voters: Vec<String> = control
                .shard
                .config
                .cluster
                .voters
                .iter()
                .map(|v| match &v.address {
                    Some((h, p)) => format!("{}@{h}:{p}", v.id),
                    None => v.id.to_string(),
                })
                .collect();
            tracing::info!(
                "waiting for the metadata quorum ({}) to elect a controller and for this node to catch up",
                voters.join(",")
            );
        }
    }
    if let Some(first) = control.publish_failures.borrow().first() {
        return Err(first.clone());
    }
    let image = control.image();
    let data_dir = control.shard.config.data_dir.clone();
    let me = control.me;
    let migrated = match &legacy {
        None => true,
        Some(old) => migration_applied(&image, old),
    };
    let toml = data_dir.join(METADATA_FILE);
    if !migrated {
        tracing::error!(
            "{} was not taken over into the metadata log (the log was started without it); it is left in place, and partition directories are not cleaned up",
            toml.display()
        );
        return Ok(());
    }
    let result = glommio::executor()
        .spawn_blocking(move || tidy_data_dir(&data_dir, &image, me))
        .await;
    if let Err(e) = result {
        tracing::warn!("cleaning up the data dir: {e}");
    }
    Ok(())
}

/// Renames a taken-over metadata file aside and removes partition directories this node
/// holds no replica of (what remains of a deletion interrupted by a crash).
fn tidy_data_dir(data_dir: &Path, image: &ClusterImage, me: NodeId) -> Result<(), String> {
    let toml = data_dir.join(METADATA_FILE);
    if toml.exists() {
        let mut aside = toml.clone().into_os_string();
        aside.push(MIGRATED_SUFFIX);
        let aside = PathBuf::from(aside);
        std::fs::rename(&toml, &aside)
            .and_then(|_| std::fs::File::open(data_dir)?.sync_all())
            .map_err(|e| format!("cannot rename {}: {}", toml.display(), io_reason(&e)))?;
        tracing::info!(
            "{} is in the metadata log now; renamed it {}",
            toml.display(),
            aside.display()
        );
    }
    let found = store::scan_partition_dirs(data_dir)
        .map_err(|e| format!("cannot read {}: {}", data_dir.display(), io_reason(&e)))?;
    for f in found {
        let held = image.topic(&f.topic).is_some_and(|t| {
            image
                .partition(t.id, crate::metadata::PartitionId(f.partition))
                .is_some_and(|p| p.replicas.contains(&me))
        });
        if !held {
            tracing::warn!(dir = %f.dir.display(), "removing the directory of a partition this node no longer holds");
            std::fs::remove_dir_all(&f.dir)
                .map_err(|e| format!("cannot remove {}: {}", f.dir.display(), io_reason(&e)))?;
        }
    }
    Ok(())
}
