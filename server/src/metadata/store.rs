//! The data directory's layout (`<data>/<topic>-<partition>`, Kafka's; the metadata log's
//! directory) and the metadata file of data directories written before clusters existed,
//! which start-up takes over into the metadata log (`crate::cluster::startup`).
//!
//! That file was rewritten whole on every change (temporary file, fsync, rename, fsync of
//! the directory); `save` still writes it that way, for tests that make such directories.
//!
//! These functions block; they run at start-up, before any shard, or on a blocking thread.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::MAX_PARTITIONS_PER_TOPIC;
use crate::metadata::topic_config::{self, TopicOverrides};
use crate::metadata::{
    new_cluster_id, new_topic_id, validate_topic_name, MetadataImage, TopicId, TopicMeta,
};

/// The metadata file's name in the data directory. It cannot be mistaken for a partition
/// directory, whose names end in `-<digits>`.
pub const METADATA_FILE: &str = "wharf-metadata.toml";
/// The directory of the cluster's metadata log (Kafka's name for it). Its name has a
/// partition directory's shape, so the topic `__cluster_metadata` is reserved.
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
/// The topic name the metadata log's directory would belong to.
pub const METADATA_LOG_TOPIC: &str = "__cluster_metadata";
const METADATA_TMP_FILE: &str = "wharf-metadata.toml.tmp";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct MetadataFile {
    format_version: u32,
    cluster_id: String,
    /// The first producer id never handed out (absent in files written before it existed).
    #[serde(default)]
    next_producer_id: i64,
    #[serde(default)]
    topics: Vec<TopicEntry>,
}

#[derive(Serialize, Deserialize)]
struct TopicEntry {
    name: String,
    id: String,
    partitions: i32,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

/// The directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// Reads the metadata file; `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<MetadataImage>, StoreError> {
    let path = data_dir.join(METADATA_FILE);
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Read {
                path: shown,
                reason: crate::config::io_reason(&e),
            })
        }
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: shown.clone(),
        reason,
    };
    let file: MetadataFile =
        toml::from_str(&text).map_err(|e| corrupt(e.message().replace('\n', " ")))?;
    if file.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "unknown format version {}",
            file.format_version
        )));
    }
    let mut topics = Vec::with_capacity(file.topics.len());
    for entry in file.topics {
        validate_topic_name(&entry.name).map_err(&corrupt)?;
        let id = uuid::Uuid::parse_str(&entry.id)
            .map_err(|e| corrupt(format!("topic {}: bad id: {e}", entry.name)))?;
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&entry.partitions) {
            return Err(corrupt(format!(
                "topic {}: bad partition count {}",
                entry.name, entry.partitions
            )));
        }
        let mut overrides = TopicOverrides::new();
        for (name, value) in entry.configs {
            let value = topic_config::validate(&name, &value)
                .map_err(|e| corrupt(format!("topic {}: {e}", entry.name)))?;
            overrides.insert(name, value);
        }
        topics.push(TopicMeta {
            name: entry.name,
            id: TopicId(id),
            partition_count: entry.partitions,
            overrides,
            internal: entry.internal,
        });
    }
    if file.next_producer_id < 0 {
        return Err(corrupt(format!(
            "bad next_producer_id {}",
            file.next_producer_id
        )));
    }
    let mut image = MetadataImage::new(file.cluster_id, topics);
    image.next_producer_id = file.next_producer_id;
    Ok(Some(image))
}

/// Writes the metadata file atomically and durably.
pub fn save(data_dir: &Path, image: &MetadataImage) -> Result<(), StoreError> {
    let file = MetadataFile {
        format_version: FORMAT_VERSION,
        cluster_id: image.cluster_id.clone(),
        next_producer_id: image.next_producer_id,
        topics: image
            .topics()
            .map(|t| TopicEntry {
                name: t.name.clone(),
                id: t.id.0.hyphenated().to_string(),
                partitions: t.partition_count,
                internal: t.internal,
                configs: t.overrides.clone(),
            })
            .collect(),
    };
    let text = toml::to_string(&file).expect("the metadata file's types always serialise to TOML");
    let tmp = data_dir.join(METADATA_TMP_FILE);
    let path = data_dir.join(METADATA_FILE);
    let write_err = |e: std::io::Error| StoreError::Write {
        path: path.display().to_string(),
        reason: crate::config::io_reason(&e),
    };
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(text.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(write_err)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// A `<topic>-<partition>` directory found in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPartition {
    pub topic: String,
    pub partition: i32,
    pub dir: PathBuf,
}

/// Lists the partition directories in `data_dir`.
pub fn scan_partition_dirs(data_dir: &Path) -> std::io::Result<Vec<FoundPartition>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name == METADATA_LOG_DIR {
            continue;
        }
        let Some((topic, partition)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        if partition < 0
            || validate_topic_name(topic).is_err()
            || partition.to_string().len() != name.len() - topic.len() - 1
        {
            continue;
        }
        found.push(FoundPartition {
            topic: topic.to_string(),
            partition,
            dir: entry.path(),
        });
    }
    found.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(found)
}

/// What start-up makes of the data directory: the metadata to serve, whether it must be
/// written (it was rebuilt), and directories that belong to no topic any more.
pub struct Reconciled {
    pub image: MetadataImage,
    pub rebuilt: bool,
    pub leftovers: Vec<PathBuf>,
}

/// Matches the metadata file against the partition directories. Without a metadata file
/// (a data directory from before it existed, or one whose file was lost) the topics are
/// rebuilt from the directories, so no data is dropped; with one, directories it does not
/// list are leftovers of deletions.
pub fn reconcile(loaded: Option<MetadataImage>, found: Vec<FoundPartition>) -> Reconciled {
    match loaded {
        Some(image) => {
            let leftovers = found
                .into_iter()
                .filter(|f| {
                    image
                        .topic(&f.topic)
                        .is_none_or(|t| f.partition >= t.partition_count)
                })
                .map(|f| f.dir)
                .collect();
            Reconciled {
                image,
                rebuilt: false,
                leftovers,
            }
        }
        None => {
            let mut counts: BTreeMap<String, i32> = BTreeMap::new();
            for f in &found {
                let count = counts.entry(f.topic.clone()).or_insert(0);
                *count = (*count).max(f.partition + 1);
            }
            let topics = counts
                .into_iter()
                .filter(|(_, count)| *count <= MAX_PARTITIONS_PER_TOPIC)
                .map(|(name, count)| TopicMeta {
                    internal: name == crate::metadata::OFFSETS_TOPIC,
                    name,
                    id: new_topic_id(),
                    partition_count: count,
                    overrides: TopicOverrides::new(),
                });
            let image = MetadataImage::new(new_cluster_id(), topics);
            Reconciled {
                image,
                rebuilt: true,
                leftovers: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32) -> TopicMeta {
        let mut overrides = TopicOverrides::new();
        overrides.insert("retention.ms".into(), "1000".into());
        TopicMeta {
            name: name.into(),
            id: new_topic_id(),
            partition_count: partitions,
            overrides,
            internal: false,
        }
    }

    #[test]
    fn metadata_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut image = MetadataImage::new(new_cluster_id(), [topic("a", 3), topic("b", 1)]);
        image.next_producer_id = 3000;
        save(dir.path(), &image).unwrap();
        let loaded = load(dir.path()).unwrap().expect("saved");
        assert_eq!(loaded, image);
    }

    #[test]
    fn damaged_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(METADATA_FILE),
            "format_version = 1\ncluster_id = 3\n",
        )
        .unwrap();
        let e = load(dir.path()).err().expect("damaged").to_string();
        assert!(e.contains(METADATA_FILE), "{e}");
    }

    #[test]
    fn scan_finds_only_partition_directories() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["orders-0", "orders-1", "a-b-2", "nope", "x-01", "z-x"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("file-0"), b"").unwrap();
        let found: Vec<(String, i32)> = scan_partition_dirs(dir.path())
            .unwrap()
            .into_iter()
            .map(|f| (f.topic, f.partition))
            .collect();
        assert_eq!(
            found,
            vec![
                ("a-b".into(), 2),
                ("orders".into(), 0),
                ("orders".into(), 1)
            ]
        );
    }

    #[test]
    fn reconcile_rebuilds_without_a_file_and_finds_leftovers_with_one() {
        let found = |topic: &str, partition: i32| FoundPartition {
            topic: topic.into(),
            partition,
            dir: PathBuf::from(format!("{topic}-{partition}")),
        };
        let rebuilt = reconcile(None, vec![found("a", 0), found("a", 2), found("b", 0)]);
        assert!(rebuilt.rebuilt);
        assert_eq!(rebuilt.image.topic("a").map(|t| t.partition_count), Some(3));
        assert_eq!(rebuilt.image.topic("b").map(|t| t.partition_count), Some(1));

        let image = MetadataImage::new("c".into(), [topic("a", 1)]);
        let r = reconcile(
            Some(image),
            vec![found("a", 0), found("a", 1), found("gone", 0)],
        );
        assert!(!r.rebuilt);
        assert_eq!(
            r.leftovers,
            vec![PathBuf::from("a-1"), PathBuf::from("gone-0")]
        );
    }
}
