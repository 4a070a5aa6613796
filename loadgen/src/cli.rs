//! Command line: the workload, the load model and the outputs.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::idempotence::MAX_IN_FLIGHT_IDEMPOTENT;
use crate::keys::KeySpec;
use crate::payload::RecordSize;

/// Largest batch the producer builds (Kafka's default `max.request.size` is 1 MiB).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Largest record the producer builds.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Most connections one core opens (producers plus consumers).
pub const MAX_CONNECTIONS_PER_CORE: usize = 1024;
/// Seconds measured when neither --duration nor --records is given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Seconds of warm-up unless told otherwise (none for a --records run).
pub const DEFAULT_WARMUP_SECS: f64 = 2.0;
/// Most requests one connection keeps in flight.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Longest --group accepted (Kafka stores group ids as int16-length strings).
pub const MAX_GROUP_ID_BYTES: usize = i16::MAX as usize;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Produce records and measure the time to each acknowledgement.
    Produce,
    /// Fetch records and measure consumption throughput.
    Consume,
    /// Produce and consume at once; each record carries its send time, and the consumer
    /// measures produce-to-consume latency.
    E2e,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    /// The `acks` field of a Produce request.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

impl FromStr for Acks {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Acks> {
        match s {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            _ => bail!("acks must be 0, 1 or all, not {s:?}"),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum IsolationLevel {
    ReadUncommitted,
    ReadCommitted,
}

impl IsolationLevel {
    /// The `isolation_level` field of Fetch and ListOffsets.
    pub fn wire(self) -> i8 {
        match self {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "read_uncommitted",
            IsolationLevel::ReadCommitted => "read_committed",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// Measure any Kafka-compatible broker: throughput and latency percentiles (HdrHistogram),
/// closed loop (as fast as the broker acknowledges) or open loop at a fixed rate, with
/// latency measured from each record's intended send time.
#[derive(Parser, Debug, Clone)]
#[command(name = "wharf-loadgen", version)]
pub struct Args {
    /// What to run.
    #[arg(value_enum)]
    pub mode: Mode,

    /// A broker to bootstrap from (HOST:PORT); the others come from Metadata.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,

    /// Topic to produce to and consume from.
    #[arg(long, default_value = "wharf-loadgen")]
    pub topic: String,

    /// Create the topic with --partitions partitions (CreateTopics) if it does not exist.
    #[arg(long)]
    pub create_topic: bool,

    /// Partitions for --create-topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,

    /// Replication factor for --create-topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,

    /// Threads, one glommio executor each.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,

    /// CPUs to pin the threads to, one per core (e.g. `--cpus 1`); unpinned if absent.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// Producers per core, one connection each.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,

    /// Consumers per core (consume and e2e), one connection each; the topic's partitions
    /// are dealt among all consumers (with --group, by the group: each is a member).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,

    /// Produce requests in flight per producer connection (max.in.flight).
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,

    /// Record value size in bytes: `1024`, or a uniform range `100..1000`.
    #[arg(long, default_value = "1024")]
    pub record_size: RecordSize,

    /// Keys: `none`, `uniform:N` (N distinct keys) or `zipf:N[:EXPONENT]` (default 1.0).
    #[arg(long, default_value = "none")]
    pub keys: KeySpec,

    /// acks for Produce: 0, 1 or all.
    #[arg(long, default_value = "1")]
    pub acks: Acks,

    /// Idempotent producers (KIP-98, `enable.idempotence=true`): each connection gets a
    /// producer id from InitProducerId and stamps every batch with it and a sequence number
    /// per partition. Needs --acks all and --in-flight at most 5, as Kafka's producer does.
    #[arg(long)]
    pub idempotent: bool,

    /// Transactional producers (KIP-98, `transactional.id` set): each producer gets a
    /// transactional id of its own, finds its coordinator, and writes --records-per-txn
    /// records per transaction, then commits it (or aborts it, see --abort-ratio).
    /// Idempotent too, so it needs --acks all and --in-flight at most 5.
    #[arg(long)]
    pub transactional: bool,

    /// With --transactional: records each producer writes in one transaction.
    #[arg(long, default_value_t = 1000)]
    pub records_per_txn: u64,

    /// With --transactional: ids are PREFIX-RUN-N, RUN unique to the run and N the producer.
    #[arg(long, default_value = "wharf-loadgen")]
    pub transactional_id_prefix: String,

    /// With --transactional: transaction.timeout.ms sent in InitProducerId.
    #[arg(long, default_value_t = crate::idempotence::TRANSACTION_TIMEOUT_MS)]
    pub transaction_timeout_ms: i32,

    /// With --transactional: the share of transactions to abort instead of commit, 0 to 1
    /// (chosen at random per transaction).
    #[arg(long, default_value_t = 0.0)]
    pub abort_ratio: f64,

    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,

    /// Bytes of records per partition batch (batch.size).
    #[arg(long, default_value_t = 16384)]
    pub batch_size: usize,

    /// How long a batch waits for more records before it is sent (linger.ms); fractions
    /// allowed.
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,

    /// Open loop: records per second across all producers. Absent: closed loop, as fast as
    /// acknowledgements allow.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Seconds to measure, after the warm-up [default: 10, or no limit with --records].
    #[arg(long)]
    pub duration: Option<f64>,

    /// Stop after this many records (produced; consumed in consume mode); with --duration
    /// too, whichever comes first.
    #[arg(long)]
    pub records: Option<u64>,

    /// Seconds of load before measuring starts; not counted in the results
    /// [default: 2, or 0 with --records, so that every record asked for is measured].
    #[arg(long)]
    pub warmup: Option<f64>,

    /// Where consumers start.
    #[arg(long, value_enum, default_value = "latest")]
    pub from: StartFrom,

    /// Consume as members of this consumer group (classic protocol, range assignor): every
    /// consumer joins, gets its partitions from the group, starts at the group's committed
    /// offsets (--from where there are none) and commits what it consumed.
    #[arg(long)]
    pub group: Option<String>,

    /// With --group: session.timeout.ms, how long the coordinator waits for a heartbeat
    /// before it removes a member.
    #[arg(long, default_value_t = 45_000)]
    pub session_timeout_ms: i32,

    /// With --group: heartbeat.interval.ms.
    #[arg(long, default_value_t = 3_000)]
    pub heartbeat_interval_ms: i32,

    /// With --group: auto.commit.interval.ms, how often consumed offsets are committed (and
    /// once more at the end).
    #[arg(long, default_value_t = 5_000)]
    pub auto_commit_interval_ms: u64,

    /// Fetch isolation_level: read_committed returns records up to the last stable offset
    /// and drops those of aborted transactions (as Kafka's consumer does), read_uncommitted
    /// returns everything.
    #[arg(long, value_enum, default_value = "read_uncommitted")]
    pub isolation_level: IsolationLevel,

    /// Fetch max_wait_ms.
    #[arg(long, default_value_t = 100)]
    pub fetch_max_wait_ms: i32,

    /// Fetch min_bytes.
    #[arg(long, default_value_t = 1)]
    pub fetch_min_bytes: i32,

    /// Fetch max_bytes.
    #[arg(long, default_value_t = 50 << 20)]
    pub fetch_max_bytes: i32,

    /// Fetch partition_max_bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub partition_max_bytes: i32,

    /// Produce timeout_ms (how long the broker may wait for acks=all). A Produce unanswered
    /// for this plus --drain-timeout stops its producer, its outstanding records counted as
    /// NO_ANSWER_WITHIN_REQUEST_TIMEOUT.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: i32,

    /// Seconds to wait for outstanding requests after the run before they count as lost.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// client.id sent in every request header.
    #[arg(long, default_value = "wharf-loadgen")]
    pub client_id: String,

    /// Microseconds each executor spins before sleeping (lower wake-up latency, more CPU).
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,

    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write a latency-by-percentile plot here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write the full percentile distributions here (HdrHistogram's text format).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,

    /// Print the full percentile distribution after the summary.
    #[arg(long)]
    pub distribution: bool,

    /// No live line each second.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// Checks what clap cannot: ranges and combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cores == 0 {
            bail!("--cores must be at least 1");
        }
        if !self.cpus.is_empty() && self.cpus.len() != self.cores {
            bail!(
                "--cpus names {} CPUs for {} cores",
                self.cpus.len(),
                self.cores
            );
        }
        if self.producers + self.consumers > MAX_CONNECTIONS_PER_CORE {
            bail!("at most {MAX_CONNECTIONS_PER_CORE} connections per core");
        }
        if self.mode != Mode::Consume && self.producers == 0 {
            bail!("--producers must be at least 1 in {:?} mode", self.mode);
        }
        if self.mode != Mode::Produce && self.consumers == 0 {
            bail!("--consumers must be at least 1 in {:?} mode", self.mode);
        }
        if self.in_flight == 0 || self.in_flight > MAX_IN_FLIGHT {
            bail!("--in-flight must be 1..={MAX_IN_FLIGHT}");
        }
        if self.idempotent || self.transactional {
            let flag = if self.transactional {
                "--transactional"
            } else {
                "--idempotent"
            };
            if self.mode == Mode::Consume {
                bail!("{flag} applies to produce and e2e modes");
            }
            if self.acks != Acks::All {
                bail!(
                    "{flag} needs --acks all (as Kafka's producer: idempotence is only \
                     guaranteed when every in-sync replica has the batch), not --acks {}",
                    self.acks.name()
                );
            }
            if self.in_flight > MAX_IN_FLIGHT_IDEMPOTENT {
                bail!(
                    "{flag} allows at most {MAX_IN_FLIGHT_IDEMPOTENT} requests in flight per \
                     connection (as Kafka's producer), not --in-flight {}",
                    self.in_flight
                );
            }
        }
        if self.transactional {
            if self.records_per_txn == 0 {
                bail!("--records-per-txn must be at least 1");
            }
            if !(0.0..=1.0).contains(&self.abort_ratio) {
                bail!("--abort-ratio must be between 0 and 1");
            }
            if self.transaction_timeout_ms <= 0 {
                bail!("--transaction-timeout-ms must be positive");
            }
            // The id is an int16-length string: prefix, '-', 16 hex digits, '-', index.
            if self.transactional_id_prefix.is_empty()
                || self.transactional_id_prefix.len() > MAX_GROUP_ID_BYTES - 40
            {
                bail!(
                    "--transactional-id-prefix must be 1 to {} bytes",
                    MAX_GROUP_ID_BYTES - 40
                );
            }
            if self.mode == Mode::E2e && self.abort_ratio > 0.0 {
                bail!(
                    "--abort-ratio applies to produce mode: in e2e mode records of aborted \
                     transactions would count as lost"
                );
            }
        } else if self.abort_ratio != 0.0 {
            bail!("--abort-ratio applies with --transactional");
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_BYTES {
            bail!("--batch-size must be 1..={MAX_BATCH_BYTES}");
        }
        if self.record_size.max() > MAX_RECORD_BYTES {
            bail!("--record-size must be at most {MAX_RECORD_BYTES}");
        }
        if self.mode == Mode::E2e && self.record_size.min() < crate::payload::STAMP_BYTES {
            bail!(
                "e2e records carry a {}-byte stamp: --record-size must be at least that",
                crate::payload::STAMP_BYTES
            );
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of records per second");
            }
        }
        for (name, v) in [
            ("--duration", self.duration.unwrap_or(0.0)),
            ("--warmup", self.warmup_secs()),
            ("--linger-ms", self.linger_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{name} must be a non-negative number");
            }
        }
        if self.partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        if let Some(group) = &self.group {
            if self.mode == Mode::Produce {
                bail!("--group applies to consume and e2e modes");
            }
            if group.is_empty() || group.len() > MAX_GROUP_ID_BYTES {
                bail!("--group must be 1 to {MAX_GROUP_ID_BYTES} bytes");
            }
            if self.session_timeout_ms <= 0 {
                bail!("--session-timeout-ms must be positive");
            }
            if self.heartbeat_interval_ms <= 0
                || self.heartbeat_interval_ms >= self.session_timeout_ms
            {
                bail!("--heartbeat-interval-ms must be positive and below --session-timeout-ms (Kafka's rule)");
            }
            if self.auto_commit_interval_ms == 0 {
                bail!("--auto-commit-interval-ms must be positive");
            }
        }
        if self.topic.is_empty() || self.topic.len() > 249 {
            bail!("--topic must be 1 to 249 characters");
        }
        if let Some(path) = &self.plot {
            crate::plot::check_plot_path(path)?;
        }
        self.bootstrap_addr().context("--bootstrap")?;
        Ok(())
    }

    pub fn bootstrap_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        self.bootstrap
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.bootstrap))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.bootstrap))
    }

    /// Seconds of warm-up: --warmup, 2 by default, none by default for a --records run.
    pub fn warmup_secs(&self) -> f64 {
        match (self.warmup, self.records) {
            (Some(w), _) => w,
            (None, Some(_)) => 0.0,
            (None, None) => DEFAULT_WARMUP_SECS,
        }
    }

    /// Seconds to measure: --duration, 10 by default, none for a --records run without it.
    pub fn measured_duration(&self) -> Option<f64> {
        match (self.duration, self.records) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_DURATION_SECS),
        }
    }

    /// Total producer connections.
    pub fn total_producers(&self) -> usize {
        if self.mode == Mode::Consume {
            0
        } else {
            self.cores * self.producers
        }
    }

    /// Total consumer connections.
    pub fn total_consumers(&self) -> usize {
        if self.mode == Mode::Produce {
            0
        } else {
            self.cores * self.consumers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["wharf-loadgen"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)?.validate()
    }

    #[test]
    fn idempotent_needs_acks_all_and_at_most_five_in_flight() {
        validate(&[
            "produce",
            "--idempotent",
            "--acks",
            "all",
            "--in-flight",
            "5",
        ])
        .unwrap();
        validate(&["e2e", "--idempotent", "--acks=-1"]).unwrap();
        for acks in ["0", "1"] {
            let e = validate(&["produce", "--idempotent", "--acks", acks]).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("--idempotent needs --acks all"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = validate(&[
            "produce",
            "--idempotent",
            "--acks",
            "all",
            "--in-flight",
            "6",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most 5 requests in flight"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        // Without --idempotent, both stay allowed.
        validate(&["produce", "--acks", "1", "--in-flight", "6"]).unwrap();
    }

    #[test]
    fn transactional_needs_acks_all_and_a_sensible_abort_ratio() {
        validate(&[
            "produce",
            "--transactional",
            "--acks",
            "all",
            "--records-per-txn",
            "100",
            "--abort-ratio",
            "0.25",
        ])
        .unwrap();
        let e = validate(&["produce", "--transactional"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--transactional needs --acks all"), "{e}");
        for ratio in [
            "--abort-ratio=1.5",
            "--abort-ratio=-0.1",
            "--abort-ratio=NaN",
        ] {
            let e = validate(&["produce", "--transactional", "--acks", "all", ratio])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--abort-ratio"), "{ratio}: {e}");
        }
        let e = validate(&["produce", "--acks", "all", "--abort-ratio", "0.5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("with --transactional"), "{e}");
        let e = validate(&[
            "produce",
            "--transactional",
            "--acks",
            "all",
            "--records-per-txn",
            "0",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--records-per-txn"), "{e}");
        let e = validate(&["consume", "--transactional", "--acks", "all"]).unwrap_err();
        assert!(e.to_string().contains("produce and e2e"), "{e}");
    }

    #[test]
    fn isolation_level_takes_kafka_names() {
        let args =
            Args::try_parse_from(["x", "consume", "--isolation-level", "read_committed"]).unwrap();
        assert_eq!(args.isolation_level, IsolationLevel::ReadCommitted);
        assert_eq!(args.isolation_level.wire(), 1);
        let args = Args::try_parse_from(["x", "consume"]).unwrap();
        assert_eq!(args.isolation_level, IsolationLevel::ReadUncommitted);
        assert!(Args::try_parse_from(["x", "consume", "--isolation-level", "committed"]).is_err());
    }

    #[test]
    fn idempotent_is_for_producing_modes() {
        let e = validate(&["consume", "--idempotent", "--acks", "all"]).unwrap_err();
        assert!(e.to_string().contains("produce and e2e"), "{e}");
    }
}
