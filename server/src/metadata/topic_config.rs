//! Topic configs with Kafka's names, types, defaults and broker-level default names
//! (`retention.ms` defaults to the broker's `log.retention.ms`, ...).
//!
//! A topic stores only its overrides; the effective value of every config is the override,
//! else the broker's configured default, else Kafka's default. Values are validated and
//! normalised when set, so what is stored always parses.

use std::collections::{BTreeMap, BTreeSet};

use wharf_engine::{CompactionConfig, LogConfig, TimestampType};
use wharf_protocol::batch::Compression;
use wharf_protocol::compression::Levels;
use wharf_protocol::convert::AppendPolicy;

use crate::config::{ConfigError, Settings};

/// How a config's value is typed (DescribeConfigs v3 `config_type` codes).
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum ConfigKind {
    Bool,
    Int {
        min: i64,
    },
    Long {
        min: i64,
    },
    /// An int in `min..=max`, or `also` (Kafka's "-1: the codec's default" for gzip).
    IntRange {
        min: i64,
        max: i64,
        also: Option<i64>,
    },
    Double {
        min: f64,
        max: f64,
    },
    /// One of the listed strings.
    Choice(&'static [&'static str]),
    /// A comma-separated list of the listed strings.
    List(&'static [&'static str]),
}

impl ConfigKind {
    /// Kafka's `ConfigType` codes as DescribeConfigs v3+ reports them.
    pub fn describe_type(self) -> i8 {
        match self {
            ConfigKind::Bool => 1,
            ConfigKind::Choice(_) => 2,
            ConfigKind::Int { .. } | ConfigKind::IntRange { .. } => 3,
            ConfigKind::Long { .. } => 5,
            ConfigKind::Double { .. } => 6,
            ConfigKind::List(_) => 7,
        }
    }
}

/// One topic config: its name, the broker config that sets its default, type and default.
#[derive(Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub broker_name: &'static str,
    pub kind: ConfigKind,
    pub default: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config this broker accepts. Others are refused with INVALID_CONFIG, as
/// Kafka refuses names it does not know.
pub static TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: ConfigKind::List(&["delete", "compact"]),
        default: "delete",
    },
    // `producer` stores batches as sent; a codec recompresses batches sent in another.
    ConfigDef {
        name: "compression.type",
        broker_name: "compression.type",
        kind: ConfigKind::Choice(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        default: "producer",
    },
    // KIP-390: the levels recompression uses (Kafka 3.8+).
    ConfigDef {
        name: "compression.gzip.level",
        broker_name: "compression.gzip.level",
        kind: ConfigKind::IntRange {
            min: 1,
            max: 9,
            also: Some(-1),
        },
        default: "-1",
    },
    ConfigDef {
        name: "compression.lz4.level",
        broker_name: "compression.lz4.level",
        kind: ConfigKind::IntRange {
            min: 1,
            max: 17,
            also: None,
        },
        default: "9",
    },
    ConfigDef {
        name: "compression.zstd.level",
        broker_name: "compression.zstd.level",
        kind: ConfigKind::IntRange {
            min: -131072,
            max: 22,
            also: None,
        },
        default: "3",
    },
    ConfigDef {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "86400000",
    },
    ConfigDef {
        name: "file.delete.delay.ms",
        broker_name: "log.segment.delete.delay.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "60000",
    },
    ConfigDef {
        name: "flush.messages",
        broker_name: "log.flush.interval.messages",
        kind: ConfigKind::Long { min: 1 },
        default: LONG_MAX,
    },
    ConfigDef {
        name: "flush.ms",
        broker_name: "log.flush.interval.ms",
        kind: ConfigKind::Long { min: 0 },
        default: LONG_MAX,
    },
    ConfigDef {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: ConfigKind::Int { min: 0 },
        default: "4096",
    },
    ConfigDef {
        name: "max.compaction.lag.ms",
        broker_name: "log.cleaner.max.compaction.lag.ms",
        kind: ConfigKind::Long { min: 1 },
        default: LONG_MAX,
    },
    ConfigDef {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: ConfigKind::Int { min: 0 },
        default: "1048588",
    },
    ConfigDef {
        name: "message.timestamp.after.max.ms",
        broker_name: "log.message.timestamp.after.max.ms",
        kind: ConfigKind::Long { min: 0 },
        default: LONG_MAX,
    },
    ConfigDef {
        name: "message.timestamp.before.max.ms",
        broker_name: "log.message.timestamp.before.max.ms",
        kind: ConfigKind::Long { min: 0 },
        default: LONG_MAX,
    },
    ConfigDef {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: ConfigKind::Choice(&["CreateTime", "LogAppendTime"]),
        default: "CreateTime",
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        broker_name: "log.cleaner.min.cleanable.ratio",
        kind: ConfigKind::Double { min: 0.0, max: 1.0 },
        default: "0.5",
    },
    ConfigDef {
        name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "0",
    },
    ConfigDef {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: ConfigKind::Int { min: 1 },
        default: "1",
    },
    ConfigDef {
        name: "preallocate",
        broker_name: "log.preallocate",
        kind: ConfigKind::Bool,
        default: "false",
    },
    ConfigDef {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: ConfigKind::Long { min: -1 },
        default: "-1",
    },
    ConfigDef {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: ConfigKind::Long { min: -1 },
        default: "604800000",
    },
    ConfigDef {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: ConfigKind::Int { min: 14 },
        default: "1073741824",
    },
    ConfigDef {
        name: "segment.index.bytes",
        broker_name: "log.index.size.max.bytes",
        kind: ConfigKind::Int { min: 4 },
        default: "10485760",
    },
    ConfigDef {
        name: "segment.jitter.ms",
        broker_name: "log.roll.jitter.ms",
        kind: ConfigKind::Long { min: 0 },
        default: "0",
    },
    ConfigDef {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: ConfigKind::Long { min: 1 },
        default: "604800000",
    },
    ConfigDef {
        name: "unclean.leader.election.enable",
        broker_name: "unclean.leader.election.enable",
        kind: ConfigKind::Bool,
        default: "false",
    },
];

pub fn config_def(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Why a config value was refused (Kafka: INVALID_CONFIG).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

/// The longest config value accepted. Every value the topic configs take is a number, a
/// choice or a short list, normalised when stored; this keeps a client from storing
/// megabytes in the metadata that every shard holds (a DOUBLE is kept as written).
pub const MAX_CONFIG_VALUE_BYTES: usize = 1024;

/// Checks `value` for config `name` and returns it normalised.
pub fn validate(name: &str, value: &str) -> Result<String, InvalidConfig> {
    let def = config_def(name)
        .ok_or_else(|| InvalidConfig(format!("Unknown topic config name: {name}")))?;
    if value.len() > MAX_CONFIG_VALUE_BYTES {
        return Err(InvalidConfig(format!(
            "Invalid value for configuration {name}: longer than {MAX_CONFIG_VALUE_BYTES} bytes"
        )));
    }
    validate_def(def, value)
}

fn validate_def(def: &ConfigDef, value: &str) -> Result<String, InvalidConfig> {
    let name = def.name;
    let value = value.trim();
    let bad = |why: String| {
        InvalidConfig(format!(
            "Invalid value {value} for configuration {name}: {why}"
        ))
    };
    match def.kind {
        ConfigKind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" => Ok("true".into()),
            "false" => Ok("false".into()),
            _ => Err(bad("Expected value to be either true or false".into())),
        },
        ConfigKind::Int { min } => {
            let n: i32 = value
                .parse()
                .map_err(|_| bad("Not a number of type INT".into()))?;
            if (n as i64) < min {
                return Err(bad(format!("Value must be at least {min}")));
            }
            Ok(n.to_string())
        }
        ConfigKind::IntRange { min, max, also } => {
            let n: i32 = value
                .parse()
                .map_err(|_| bad("Not a number of type INT".into()))?;
            let n = n as i64;
            if !(min..=max).contains(&n) && also != Some(n) {
                let or = also.map(|a| format!(" (or {a})")).unwrap_or_default();
                return Err(bad(format!("Value must be between {min} and {max}{or}")));
            }
            Ok(n.to_string())
        }
        ConfigKind::Long { min } => {
            let n: i64 = value
                .parse()
                .map_err(|_| bad("Not a number of type LONG".into()))?;
            if n < min {
                return Err(bad(format!("Value must be at least {min}")));
            }
            Ok(n.to_string())
        }
        ConfigKind::Double { min, max } => {
            let x: f64 = value
                .parse()
                .map_err(|_| bad("Not a number of type DOUBLE".into()))?;
            if !(min..=max).contains(&x) {
                return Err(bad(format!("Value must be between {min} and {max}")));
            }
            Ok(value.to_string())
        }
        ConfigKind::Choice(options) => match options.iter().find(|o| o.eq_ignore_ascii_case(value))
        {
            Some(o) => Ok(o.to_string()),
            None => Err(bad(format!(
                "String must be one of: {}",
                options.join(", ")
            ))),
        },
        ConfigKind::List(options) => {
            let mut seen = Vec::new();
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match options.iter().find(|o| o.eq_ignore_ascii_case(item)) {
                    Some(o) if !seen.contains(o) => seen.push(*o),
                    Some(_) => {}
                    None => {
                        return Err(bad(format!(
                            "List items must be among: {}",
                            options.join(", ")
                        )))
                    }
                }
            }
            if seen.is_empty() {
                return Err(bad("The list must not be empty".into()));
            }
            Ok(seen.join(","))
        }
    }
}

/// Where an effective value came from (DescribeConfigs `config_source` codes).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    DynamicTopic = 1,
    StaticBroker = 4,
    Default = 5,
}

/// The broker-level defaults of every topic config, from the configuration file.
#[derive(Clone, Debug)]
pub struct TopicDefaults {
    values: BTreeMap<&'static str, String>,
    set_by_broker: BTreeSet<&'static str>,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            values: TOPIC_CONFIGS
                .iter()
                .map(|d| (d.name, d.default.to_string()))
                .collect(),
            set_by_broker: BTreeSet::new(),
        }
    }
}

impl TopicDefaults {
    /// Takes the broker-level names (`log.retention.ms`, `log.retention.hours`, ...) out of
    /// the configuration file's settings.
    pub fn from_broker_settings(settings: &mut Settings) -> Result<TopicDefaults, ConfigError> {
        let mut defaults = TopicDefaults::default();
        // Kafka's precedence: .ms over .minutes over .hours.
        let retention = pick_ms(
            settings,
            "log.retention.ms",
            "log.retention.minutes",
            "log.retention.hours",
        )?;
        let roll = pick_ms(settings, "log.roll.ms", "", "log.roll.hours")?;
        for def in TOPIC_CONFIGS {
            let raw = match def.broker_name {
                "log.retention.ms" => retention.clone(),
                "log.roll.ms" => roll.clone(),
                name => take_any(settings, name)?,
            };
            if let Some(raw) = raw {
                let value = validate_def(def, &raw)
                    .map_err(|e| ConfigError(format!("`{}`: {e}", def.broker_name)))?;
                defaults.values.insert(def.name, value);
                defaults.set_by_broker.insert(def.name);
            }
        }
        Ok(defaults)
    }

    /// The broker-level value of topic config `name` and where it came from.
    pub fn get(&self, name: &str) -> Option<(&str, ConfigSource)> {
        let (key, value) = self.values.get_key_value(name)?;
        let source = if self.set_by_broker.contains(key) {
            ConfigSource::StaticBroker
        } else {
            ConfigSource::Default
        };
        Some((value.as_str(), source))
    }

    pub fn value(&self, name: &str) -> &str {
        self.get(name)
            .map(|(v, _)| v)
            .expect("every catalogued topic config has a default")
    }
}

fn take_any(settings: &mut Settings, name: &str) -> Result<Option<String>, ConfigError> {
    settings.take_scalar(name)
}

fn pick_ms(
    settings: &mut Settings,
    ms: &str,
    minutes: &str,
    hours: &str,
) -> Result<Option<String>, ConfigError> {
    let ms_value = settings.take_int(ms)?;
    let minutes_value = if minutes.is_empty() {
        None
    } else {
        settings.take_int(minutes)?
    };
    let hours_value = settings.take_int(hours)?;
    Ok(ms_value
        .or(minutes_value.map(|m| m.saturating_mul(60_000)))
        .or(hours_value.map(|h| h.saturating_mul(3_600_000)))
        .map(|v| v.to_string()))
}

/// A topic's config overrides (name → normalised value). Only catalogued names are stored.
pub type TopicOverrides = BTreeMap<String, String>;

/// The effective configuration of one topic.
pub struct EffectiveConfig<'a> {
    pub overrides: &'a TopicOverrides,
    pub defaults: &'a TopicDefaults,
}

impl EffectiveConfig<'_> {
    pub fn get(&self, name: &str) -> Option<(&str, ConfigSource)> {
        match self.overrides.get(name) {
            Some(v) => Some((v.as_str(), ConfigSource::DynamicTopic)),
            None => self.defaults.get(name),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> T {
        let (value, _) = self
            .get(name)
            .expect("every catalogued topic config has a value");
        value
            .parse()
            .ok()
            .expect("stored config values are validated when set")
    }

    pub fn min_insync_replicas(&self) -> i32 {
        self.parsed("min.insync.replicas")
    }

    /// What a produce to this topic must do to its records before the log takes them:
    /// the `compression.type` codec (none for `producer`), the KIP-390 levels, and whether
    /// `cleanup.policy` includes `compact` (KIP-467: keys required), with the limits of one
    /// conversion.
    pub fn append_policy(
        &self,
        max_decompressed_bytes: usize,
        max_output_bytes: usize,
    ) -> AppendPolicy {
        let target = match self.get("compression.type").map(|(v, _)| v) {
            Some("uncompressed") => Some(Compression::None),
            Some("gzip") => Some(Compression::Gzip),
            Some("snappy") => Some(Compression::Snappy),
            Some("lz4") => Some(Compression::Lz4),
            Some("zstd") => Some(Compression::Zstd),
            _ => None,
        };
        let compacted = self
            .get("cleanup.policy")
            .is_some_and(|(policy, _)| policy.split(',').any(|p| p == "compact"));
        let gzip: i64 = self.parsed("compression.gzip.level");
        let levels = Levels {
            // -1: zlib's default, 6.
            gzip: if gzip < 0 { 6 } else { gzip as u32 },
            lz4: self.parsed::<i64>("compression.lz4.level").clamp(1, 17) as u32,
            zstd: self.parsed::<i64>("compression.zstd.level") as i32,
        };
        AppendPolicy {
            target,
            levels,
            compacted,
            max_decompressed_bytes,
            max_output_bytes,
        }
    }

    /// The cleaner's settings when `cleanup.policy` includes `compact`; `None` otherwise.
    pub fn compaction(&self) -> Option<CompactionConfig> {
        let compacted = self
            .get("cleanup.policy")
            .is_some_and(|(policy, _)| policy.split(',').any(|p| p == "compact"));
        compacted.then(|| CompactionConfig {
            delete_retention_ms: self.parsed("delete.retention.ms"),
            min_compaction_lag_ms: self.parsed("min.compaction.lag.ms"),
            max_compaction_lag_ms: self.parsed("max.compaction.lag.ms"),
            min_cleanable_dirty_ratio: self.parsed("min.cleanable.dirty.ratio"),
        })
    }

    /// The engine's view of this topic's configuration.
    pub fn log_config(&self) -> LogConfig {
        let timestamp_type = match self.get("message.timestamp.type").map(|(v, _)| v) {
            Some("LogAppendTime") => TimestampType::LogAppendTime,
            _ => TimestampType::CreateTime,
        };
        // Kafka applies retention.ms / retention.bytes only under cleanup.policy=delete: a
        // compact-only topic keeps the latest value of every key (the cleaner removes the
        // rest), so an event-sourced topic never loses its latest values to age or size.
        let deletes = self
            .get("cleanup.policy")
            .is_none_or(|(policy, _)| policy.split(',').any(|p| p == "delete"));
        LogConfig {
            segment_bytes: self.parsed::<i64>("segment.bytes").max(0) as u64,
            segment_ms: self.parsed::<i64>("segment.ms").max(0) as u64,
            retention_ms: if deletes {
                self.parsed("retention.ms")
            } else {
                -1
            },
            retention_bytes: if deletes {
                self.parsed("retention.bytes")
            } else {
                -1
            },
            max_message_bytes: self
                .parsed::<i64>("max.message.bytes")
                .clamp(0, u32::MAX as i64) as u32,
            index_interval_bytes: self
                .parsed::<i64>("index.interval.bytes")
                .clamp(0, u32::MAX as i64) as u32,
            message_timestamp_type: timestamp_type,
            ..LogConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_validated_and_normalised() {
        assert_eq!(
            validate("cleanup.policy", " Compact, delete ").unwrap(),
            "compact,delete"
        );
        assert_eq!(
            validate("message.timestamp.type", "logappendtime").unwrap(),
            "LogAppendTime"
        );
        assert_eq!(validate("retention.ms", "-1").unwrap(), "-1");
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("segment.bytes", "abc").is_err());
        assert!(validate("min.insync.replicas", "0").is_err());
        assert_eq!(validate("compression.type", "ZSTD").unwrap(), "zstd");
        assert_eq!(
            validate("compression.type", "uncompressed").unwrap(),
            "uncompressed"
        );
        assert!(validate("compression.type", "brotli").is_err());
        assert!(validate("compression.gzip.level", "0").is_err());
        assert_eq!(validate("compression.gzip.level", "-1").unwrap(), "-1");
        assert!(validate("compression.lz4.level", "18").is_err());
        assert_eq!(validate("compression.zstd.level", "-5").unwrap(), "-5");
        let unknown = validate("no.such.config", "1").unwrap_err();
        assert!(unknown.0.contains("Unknown topic config name"), "{unknown}");
    }

    #[test]
    fn values_longer_than_any_config_takes_are_refused() {
        let longest = format!("0.{}", "5".repeat(MAX_CONFIG_VALUE_BYTES - 2));
        assert_eq!(
            validate("min.cleanable.dirty.ratio", &longest).unwrap(),
            longest
        );
        let longer = format!("{longest}5");
        let e = validate("min.cleanable.dirty.ratio", &longer).unwrap_err();
        assert!(e.0.contains("longer than 1024 bytes"), "{e}");
    }

    #[test]
    fn effective_value_is_override_then_broker_then_kafka_default() {
        let mut settings = Settings::empty();
        let defaults = TopicDefaults::from_broker_settings(&mut settings).unwrap();
        let mut overrides = TopicOverrides::new();
        overrides.insert("retention.ms".into(), "1000".into());
        let effective = EffectiveConfig {
            overrides: &overrides,
            defaults: &defaults,
        };
        assert_eq!(
            effective.get("retention.ms"),
            Some(("1000", ConfigSource::DynamicTopic))
        );
        assert_eq!(
            effective.get("segment.bytes"),
            Some(("1073741824", ConfigSource::Default))
        );
        let log = effective.log_config();
        assert_eq!(log.retention_ms, 1000);
        assert_eq!(log.segment_bytes, 1 << 30);
        assert_eq!(log.max_message_bytes, 1_048_588);
    }

    #[test]
    fn retention_deletes_only_under_the_delete_cleanup_policy() {
        let mut settings = Settings::empty();
        let defaults = TopicDefaults::from_broker_settings(&mut settings).unwrap();
        let mut overrides = TopicOverrides::new();
        overrides.insert("retention.ms".into(), "1000".into());
        overrides.insert("retention.bytes".into(), "4096".into());
        let retention = |overrides: &TopicOverrides| {
            let log = EffectiveConfig {
                overrides,
                defaults: &defaults,
            }
            .log_config();
            (log.retention_ms, log.retention_bytes)
        };
        assert_eq!(retention(&overrides), (1000, 4096));
        overrides.insert("cleanup.policy".into(), "compact".into());
        assert_eq!(retention(&overrides), (-1, -1));
        overrides.insert("cleanup.policy".into(), "compact,delete".into());
        assert_eq!(retention(&overrides), (1000, 4096));
    }

    #[test]
    fn append_policy_follows_compression_type_and_cleanup_policy() {
        let mut settings = Settings::empty();
        let defaults = TopicDefaults::from_broker_settings(&mut settings).unwrap();
        let mut overrides = TopicOverrides::new();
        let policy = |overrides: &TopicOverrides| {
            EffectiveConfig {
                overrides,
                defaults: &defaults,
            }
            .append_policy(1 << 20, 1 << 20)
        };
        let p = policy(&overrides);
        assert!(
            p.is_passthrough(),
            "producer codec, delete policy: stored as sent"
        );
        assert_eq!(p.levels, Levels::default());
        overrides.insert("compression.type".into(), "zstd".into());
        overrides.insert("compression.zstd.level".into(), "7".into());
        overrides.insert("cleanup.policy".into(), "delete,compact".into());
        let p = policy(&overrides);
        assert_eq!(p.target, Some(Compression::Zstd));
        assert_eq!(p.levels.zstd, 7);
        assert!(p.compacted);
    }

    #[test]
    fn compaction_settings_come_with_the_compact_cleanup_policy() {
        let mut settings = Settings::empty();
        let defaults = TopicDefaults::from_broker_settings(&mut settings).unwrap();
        let mut overrides = TopicOverrides::new();
        let compaction = |overrides: &TopicOverrides| {
            EffectiveConfig {
                overrides,
                defaults: &defaults,
            }
            .compaction()
        };
        assert_eq!(compaction(&overrides), None);
        overrides.insert("cleanup.policy".into(), "delete,compact".into());
        assert_eq!(compaction(&overrides), Some(CompactionConfig::default()));
        overrides.insert("min.cleanable.dirty.ratio".into(), "0.01".into());
        overrides.insert("delete.retention.ms".into(), "100".into());
        overrides.insert("min.compaction.lag.ms".into(), "5".into());
        overrides.insert("max.compaction.lag.ms".into(), "1000".into());
        assert_eq!(
            compaction(&overrides),
            Some(CompactionConfig {
                delete_retention_ms: 100,
                min_compaction_lag_ms: 5,
                max_compaction_lag_ms: 1000,
                min_cleanable_dirty_ratio: 0.01,
            })
        );
    }

    #[test]
    fn every_catalogued_default_is_valid() {
        for def in TOPIC_CONFIGS {
            assert_eq!(
                validate(def.name, def.default).as_deref(),
                Ok(def.default),
                "{}",
                def.name
            );
        }
    }
}
