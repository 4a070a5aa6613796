//! Counters and latency histograms. Each core records into its own [`Stats`] (plain fields,
//! no atomics, no lock); once a second the core hands the interval's `Stats` to the main
//! thread over a channel and starts a fresh one.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use kafka_protocol::error::ParseResponseErrorCode;

/// Largest latency a histogram holds; larger values are clamped to it (and show as such).
pub const MAX_LATENCY_NS: u64 = 600 * 1_000_000_000;
/// Significant decimal digits the histograms keep: values within 0.1%.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// What happened in one interval (or a whole run) on one core (or all of them).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Records the broker acknowledged (or, with acks=0, that were written to the socket).
    pub produced_records: u64,
    /// Key and value bytes of those records.
    pub produced_bytes: u64,
    /// Record-batch bytes of those records, as the broker stores them.
    pub produced_batch_bytes: u64,
    pub produce_requests: u64,
    pub consumed_records: u64,
    /// Record-batch bytes fetched.
    pub consumed_bytes: u64,
    pub fetch_requests: u64,
    /// Records whose batch the broker refused, that a broken connection lost, or that got
    /// no answer before the drain timeout.
    pub error_records: u64,
    /// Occurrences per error, by name (Kafka error names, or a short description).
    pub errors: BTreeMap<String, u64>,
    /// Intended send time to acknowledgement, ns.
    pub produce_latency: Histogram<u64>,
    /// Intended send time to the moment a consumer had the record, ns.
    pub e2e_latency: Histogram<u64>,
    /// `--transactional`: transactions committed and aborted (EndTxn answered without
    /// error), and the acknowledged records in them.
    pub txn_committed: u64,
    pub txn_aborted: u64,
    pub txn_committed_records: u64,
    pub txn_aborted_records: u64,
    /// AddPartitionsToTxn sent again because the coordinator was still finishing the
    /// previous transaction (CONCURRENT_TRANSACTIONS) or moving.
    pub txn_add_partitions_retries: u64,
    /// EndTxn (commit) request to response, ns.
    pub commit_latency: Histogram<u64>,
    /// Latest run-clock time at which anything was recorded here, ns.
    pub last_event_ns: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            produced_records: 0,
            produced_bytes: 0,
            produced_batch_bytes: 0,
            produce_requests: 0,
            consumed_records: 0,
            consumed_bytes: 0,
            fetch_requests: 0,
            error_records: 0,
            errors: BTreeMap::new(),
            produce_latency: new_histogram(),
            e2e_latency: new_histogram(),
            txn_committed: 0,
            txn_aborted: 0,
            txn_committed_records: 0,
            txn_aborted_records: 0,
            txn_add_partitions_retries: 0,
            commit_latency: new_histogram(),
            last_event_ns: 0,
        }
    }

    pub fn record_produce_latency(&mut self, ns: u64) {
        self.produce_latency.saturating_record(ns.max(1));
    }

    pub fn record_e2e_latency(&mut self, ns: u64) {
        self.e2e_latency.saturating_record(ns.max(1));
    }

    /// Counts one occurrence of `error` that cost `records` records.
    pub fn record_error(&mut self, error: &str, records: u64) {
        *self.errors.entry(error.to_string()).or_insert(0) += 1;
        self.error_records += records;
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn add(&mut self, other: &Stats) {
        self.produced_records += other.produced_records;
        self.produced_bytes += other.produced_bytes;
        self.produced_batch_bytes += other.produced_batch_bytes;
        self.produce_requests += other.produce_requests;
        self.consumed_records += other.consumed_records;
        self.consumed_bytes += other.consumed_bytes;
        self.fetch_requests += other.fetch_requests;
        self.error_records += other.error_records;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        // Same bounds on both sides, so adding cannot fail.
        self.produce_latency
            .add(&other.produce_latency)
            .expect("histograms share bounds");
        self.e2e_latency
            .add(&other.e2e_latency)
            .expect("histograms share bounds");
        self.txn_committed += other.txn_committed;
        self.txn_aborted += other.txn_aborted;
        self.txn_committed_records += other.txn_committed_records;
        self.txn_aborted_records += other.txn_aborted_records;
        self.txn_add_partitions_retries += other.txn_add_partitions_retries;
        self.commit_latency
            .add(&other.commit_latency)
            .expect("histograms share bounds");
        self.last_event_ns = self.last_event_ns.max(other.last_event_ns);
    }
}

/// What the consumer-group members of one core (or all of them) went through, over the
/// whole run: members join before the load starts, so this is not split into intervals.
#[derive(Clone, Debug)]
pub struct GroupStats {
    /// Members that got a first assignment.
    pub members: u64,
    /// JoinGroup + SyncGroup rounds completed (each member's first one included).
    pub joins: u64,
    /// Rejoins of members that had an assignment (the coordinator said to rebalance, or
    /// the member's generation or id was no longer valid).
    pub rebalances: u64,
    /// From the first JoinGroup of a round to the assignment, summed over rounds, ns.
    pub rebalance_ns_total: u64,
    /// The longest such round, ns.
    pub rebalance_ns_max: u64,
    /// The newest generation any member joined.
    pub max_generation: i32,
    pub heartbeats: u64,
    /// OffsetCommit requests answered without error.
    pub commits: u64,
    /// OffsetCommit requests answered with an error (counted by name in the errors too).
    pub failed_commits: u64,
    /// OffsetCommit request to response, ns.
    pub commit_latency: Histogram<u64>,
    /// Codes that are the group protocol's normal signalling, not failures
    /// (MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS), by name.
    pub signals: BTreeMap<String, u64>,
}

impl Default for GroupStats {
    fn default() -> Self {
        GroupStats {
            members: 0,
            joins: 0,
            rebalances: 0,
            rebalance_ns_total: 0,
            rebalance_ns_max: 0,
            max_generation: -1,
            heartbeats: 0,
            commits: 0,
            failed_commits: 0,
            commit_latency: new_histogram(),
            signals: BTreeMap::new(),
        }
    }
}

impl GroupStats {
    pub fn record_signal(&mut self, name: &str) {
        *self.signals.entry(name.to_string()).or_insert(0) += 1;
    }

    pub fn record_rebalance_time(&mut self, ns: u64) {
        self.rebalance_ns_total += ns;
        self.rebalance_ns_max = self.rebalance_ns_max.max(ns);
    }

    pub fn add(&mut self, other: &GroupStats) {
        self.members += other.members;
        self.joins += other.joins;
        self.rebalances += other.rebalances;
        self.rebalance_ns_total += other.rebalance_ns_total;
        self.rebalance_ns_max = self.rebalance_ns_max.max(other.rebalance_ns_max);
        self.max_generation = self.max_generation.max(other.max_generation);
        self.heartbeats += other.heartbeats;
        self.commits += other.commits;
        self.failed_commits += other.failed_commits;
        self.commit_latency
            .add(&other.commit_latency)
            .expect("histograms share bounds");
        for (k, v) in &other.signals {
            *self.signals.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// Kafka's name for an error code (`NOT_LEADER_OR_FOLLOWER` style), for counting.
pub fn kafka_error_name(code: i16) -> String {
    match code.err() {
        None => "NONE".to_string(),
        Some(e) => {
            let debug = format!("{e:?}");
            // CamelCase to Kafka's SCREAMING_SNAKE_CASE; unknown codes keep their number.
            if debug.starts_with("Unknown(") {
                return format!("UNKNOWN_ERROR_CODE_{code}");
            }
            let mut out = String::with_capacity(debug.len() + 8);
            for (i, c) in debug.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// What an error counted under `name` (a Kafka error name, perhaps followed by the request
/// in parentheses) means, for a person; `None` where the name says enough.
pub fn explain_error(name: &str) -> Option<&'static str> {
    let code = name.split(' ').next().unwrap_or(name);
    Some(match code {
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" => {
            "the broker refused transactions: it does not support them, or does not let this \
             client use the transactional id"
        }
        "CLUSTER_AUTHORIZATION_FAILED" => {
            "the broker refused a producer id: it does not allow idempotent producers to this \
             client"
        }
        "PRODUCER_FENCED" | "INVALID_PRODUCER_EPOCH" => {
            "another producer with the same transactional id started and fenced this one"
        }
        "INVALID_TRANSACTION_TIMEOUT" => {
            "--transaction-timeout-ms is above the broker's transaction.max.timeout.ms"
        }
        "INVALID_TXN_STATE" => {
            "the coordinator's state of the transaction does not allow that request (it may \
             have aborted the transaction after its timeout)"
        }
        "CONCURRENT_TRANSACTIONS" => {
            "the coordinator was still finishing this producer's previous transaction"
        }
        "COORDINATOR_NOT_AVAILABLE" | "NOT_COORDINATOR" | "COORDINATOR_LOAD_IN_PROGRESS" => {
            "the transaction coordinator was not ready (starting, moving or loading its log)"
        }
        "OUT_OF_ORDER_SEQUENCE_NUMBER" => {
            "the broker saw a gap in a producer's sequence numbers (a batch before was lost or \
             refused)"
        }
        "UNSUPPORTED_FOR_MESSAGE_FORMAT" | "UNSUPPORTED_VERSION" => {
            "the broker does not speak that request or version"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_refusals_are_explained() {
        let e = explain_error("TRANSACTIONAL_ID_AUTHORIZATION_FAILED (FindCoordinator)").unwrap();
        assert!(e.contains("refused transactions"), "{e}");
        assert!(explain_error("PRODUCER_FENCED (EndTxn)").is_some());
        assert_eq!(explain_error("NOT_LEADER_OR_FOLLOWER"), None);
    }

    #[test]
    fn error_names_follow_kafka() {
        assert_eq!(kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(kafka_error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn adding_stats_adds_counts_errors_and_latencies() {
        let mut a = Stats::new();
        a.produced_records = 10;
        a.record_error("X", 3);
        a.record_produce_latency(1_000);
        a.last_event_ns = 5;
        let mut b = Stats::new();
        b.produced_records = 5;
        b.record_error("X", 2);
        b.record_error("Y", 1);
        b.record_produce_latency(3_000);
        b.last_event_ns = 9;
        a.add(&b);
        assert_eq!(a.produced_records, 15);
        assert_eq!(a.errors.get("X"), Some(&2));
        assert_eq!(a.errors.get("Y"), Some(&1));
        assert_eq!(a.error_records, 6);
        assert_eq!(a.total_errors(), 3);
        assert_eq!(a.produce_latency.len(), 2);
        assert_eq!(a.last_event_ns, 9);
    }

    #[test]
    fn latencies_beyond_the_bound_are_clamped_not_lost() {
        let mut s = Stats::new();
        s.record_produce_latency(MAX_LATENCY_NS * 10);
        assert_eq!(s.produce_latency.len(), 1);
        assert!(s.produce_latency.max() >= MAX_LATENCY_NS * 999 / 1000);
    }
}
