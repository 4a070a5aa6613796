//! The results: the live line, the summary table, the JSON report and the full percentile
//! distribution (HdrHistogram's `.hgrm` text format).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::admin::TopicLayout;
use crate::cli::{Args, Mode};
use crate::stats::{GroupStats, Stats};

const NS_PER_MS: f64 = 1e6;
const BYTES_PER_MB: f64 = 1e6;
/// Quantile steps per halving of the distance to 100% in the distribution (HdrHistogram's
/// customary 5).
const DISTRIBUTION_TICKS_PER_HALF: u32 = 5;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// 1-minute load average when the run started and ended: above the CPUs the broker and
    /// the load generator use, something else competed with them for the CPU.
    pub load_average_start: Option<f64>,
    pub load_average_end: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSummary {
    pub cores: usize,
    pub producers_per_core: usize,
    pub consumers_per_core: usize,
    pub in_flight: usize,
    pub record_size: String,
    pub keys: String,
    pub acks: String,
    /// `--idempotent`: producers with a producer id and sequence numbers.
    pub idempotent: bool,
    /// `--transactional`: producers write in transactions of `records_per_txn` records,
    /// aborting `abort_ratio` of them.
    pub transactional: bool,
    pub records_per_txn: Option<u64>,
    pub abort_ratio: Option<f64>,
    /// Fetch isolation level of the consumers.
    pub isolation_level: String,
    pub compression: String,
    pub batch_size: usize,
    pub linger_ms: f64,
    /// "closed" or "open".
    pub load: String,
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: Option<f64>,
    pub records: Option<u64>,
    pub from: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub records: u64,
    /// Key and value bytes.
    pub bytes: u64,
    /// Record-batch bytes (produce: as sent; consume: as fetched).
    pub batch_bytes: u64,
    pub requests: u64,
    pub records_per_sec: f64,
    /// Key and value MB/s (1 MB = 10^6 bytes).
    pub mb_per_sec: f64,
    pub batch_mb_per_sec: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Quantile {
    pub percentile: f64,
    pub latency_ms: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
    /// Latency by percentile, HdrHistogram style (denser towards 100%).
    pub distribution: Vec<Quantile>,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / NS_PER_MS;
        let distribution = h
            .iter_quantiles(DISTRIBUTION_TICKS_PER_HALF)
            .map(|v| Quantile {
                percentile: v.quantile_iterated_to() * 100.0,
                latency_ms: ms(v.value_iterated_to()),
                count: v.count_since_last_iteration(),
            })
            .collect();
        Some(Latency {
            count: h.len(),
            mean_ms: h.mean() / NS_PER_MS,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            p99_99_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
            distribution,
        })
    }
}

/// `--transactional`: the transactions ended in the measured time.
#[derive(Clone, Debug, Serialize)]
pub struct TxnReport {
    pub committed: u64,
    pub aborted: u64,
    /// Records acknowledged in committed and in aborted transactions.
    pub committed_records: u64,
    pub aborted_records: u64,
    /// AddPartitionsToTxn requests sent again because the coordinator was still finishing
    /// the previous transaction (CONCURRENT_TRANSACTIONS), as Kafka's producer does.
    pub add_partitions_retries: u64,
    /// Transactions ended (committed or aborted) per second, and committed per second.
    pub transactions_per_sec: f64,
    pub commits_per_sec: f64,
    /// EndTxn (commit) request to response.
    pub commit_latency: Option<Latency>,
}

impl TxnReport {
    /// The summary's transaction line.
    pub fn render(&self) -> String {
        let latency = match &self.commit_latency {
            Some(l) => format!(
                "commit (EndTxn) p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ),
            None => "no commits".to_string(),
        };
        format!(
            "transactions: {} committed ({} records), {} aborted ({} records), {:.1} txn/s \
             ({:.1} commits/s), {} AddPartitionsToTxn retries; {latency}",
            group_digits(self.committed),
            group_digits(self.committed_records),
            group_digits(self.aborted),
            group_digits(self.aborted_records),
            self.transactions_per_sec,
            self.commits_per_sec,
            group_digits(self.add_partitions_retries),
        )
    }
}

/// What the consumer group went through (`--group`), over the whole run including the
/// joins before the load started.
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub group_id: String,
    /// Members that got an assignment.
    pub members: u64,
    /// JoinGroup + SyncGroup rounds completed, first joins included.
    pub joins: u64,
    /// Rejoins of members that already had an assignment.
    pub rebalances: u64,
    /// The newest generation a member joined.
    pub generation: i32,
    /// From a round's first JoinGroup to its assignment: the longest, and the sum over all
    /// rounds of all members.
    pub rebalance_max_ms: f64,
    pub rebalance_total_ms: f64,
    pub heartbeats: u64,
    /// OffsetCommit requests answered without error, and with one.
    pub commits: u64,
    pub failed_commits: u64,
    pub commit_p50_ms: Option<f64>,
    pub commit_p99_ms: Option<f64>,
    pub commit_max_ms: Option<f64>,
    /// Codes that are the group protocol's signalling rather than errors
    /// (MEMBER_ID_REQUIRED, REBALANCE_IN_PROGRESS), by name.
    pub signals: BTreeMap<String, u64>,
}

impl GroupReport {
    pub fn new(group_id: &str, g: &GroupStats) -> GroupReport {
        GroupReport {
            group_id: group_id.to_string(),
            members: g.members,
            joins: g.joins,
            rebalances: g.rebalances,
            generation: g.max_generation,
            rebalance_max_ms: g.rebalance_ns_max as f64 / NS_PER_MS,
            rebalance_total_ms: g.rebalance_ns_total as f64 / NS_PER_MS,
            heartbeats: g.heartbeats,
            commits: g.commits,
            failed_commits: g.failed_commits,
            commit_p50_ms: quantile_ms(&g.commit_latency, 0.5),
            commit_p99_ms: quantile_ms(&g.commit_latency, 0.99),
            commit_max_ms: max_ms(&g.commit_latency),
            signals: g.signals.clone(),
        }
    }

    /// The summary's group lines.
    pub fn render(&self) -> String {
        let plural = |n: u64, one: &str, many: &str| {
            format!("{} {}", group_digits(n), if n == 1 { one } else { many })
        };
        let signals = if self.signals.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .signals
                .iter()
                .map(|(name, n)| format!("{name} x{n}"))
                .collect();
            format!("; signals {}", list.join(", "))
        };
        format!(
            "group {}: {}, generation {}, {}, {}, rebalancing {:.0} ms longest \
             ({:.0} ms summed over members)\n\
             group {}: {} (p50 {} p99 {} max {} ms), {} failed, {}{signals}",
            self.group_id,
            plural(self.members, "member", "members"),
            self.generation,
            plural(self.joins, "join", "joins"),
            plural(self.rebalances, "rebalance", "rebalances"),
            self.rebalance_max_ms,
            self.rebalance_total_ms,
            self.group_id,
            plural(self.commits, "commit", "commits"),
            fmt_ms(self.commit_p50_ms),
            fmt_ms(self.commit_p99_ms),
            fmt_ms(self.commit_max_ms),
            self.failed_commits,
            plural(self.heartbeats, "heartbeat", "heartbeats"),
        )
    }
}

/// One second of the run, as the live line shows it.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalLine {
    /// Seconds since the load started, at the end of this interval.
    pub t_s: f64,
    pub warmup: bool,
    pub produce_records: u64,
    pub produce_bytes: u64,
    pub consume_records: u64,
    pub produce_p50_ms: Option<f64>,
    pub produce_p99_ms: Option<f64>,
    pub produce_p99_9_ms: Option<f64>,
    pub produce_max_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub e2e_max_ms: Option<f64>,
    pub errors: u64,
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / NS_PER_MS)
}

fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / NS_PER_MS)
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "-".to_string())
}

impl IntervalLine {
    pub fn new(t_s: f64, warmup: bool, s: &Stats) -> IntervalLine {
        IntervalLine {
            t_s,
            warmup,
            produce_records: s.produced_records,
            produce_bytes: s.produced_bytes,
            consume_records: s.consumed_records,
            produce_p50_ms: quantile_ms(&s.produce_latency, 0.5),
            produce_p99_ms: quantile_ms(&s.produce_latency, 0.99),
            produce_p99_9_ms: quantile_ms(&s.produce_latency, 0.999),
            produce_max_ms: max_ms(&s.produce_latency),
            e2e_p50_ms: quantile_ms(&s.e2e_latency, 0.5),
            e2e_p99_ms: quantile_ms(&s.e2e_latency, 0.99),
            e2e_max_ms: max_ms(&s.e2e_latency),
            errors: s.total_errors(),
        }
    }

    /// The live line. Counts are per interval (one second, the last one possibly shorter).
    pub fn render(&self, mode: Mode) -> String {
        let mut line = format!(
            "[{:6.1}s]{}",
            self.t_s,
            if self.warmup { " warm-up" } else { "        " }
        );
        if mode != Mode::Consume {
            let _ = write!(
                line,
                " produce {:>11} rec {:>8.1} MB | p50 {} p99 {} p99.9 {} max {} ms",
                group_digits(self.produce_records),
                self.produce_bytes as f64 / BYTES_PER_MB,
                fmt_ms(self.produce_p50_ms),
                fmt_ms(self.produce_p99_ms),
                fmt_ms(self.produce_p99_9_ms),
                fmt_ms(self.produce_max_ms),
            );
        }
        if mode != Mode::Produce {
            let _ = write!(
                line,
                " | consume {:>11} rec",
                group_digits(self.consume_records)
            );
        }
        if mode == Mode::E2e {
            let _ = write!(
                line,
                " | e2e p50 {} p99 {} max {} ms",
                fmt_ms(self.e2e_p50_ms),
                fmt_ms(self.e2e_p99_ms),
                fmt_ms(self.e2e_max_ms)
            );
        }
        let _ = write!(line, " | errors {}", self.errors);
        line
    }
}

/// `1234567` → `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub mode: Mode,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: usize,
    pub workload: WorkloadSummary,
    pub machine: Machine,
    /// From the end of the warm-up to the last acknowledgement (or the stop time).
    pub measured_seconds: f64,
    pub produce: Option<Throughput>,
    pub consume: Option<Throughput>,
    /// Intended send time to acknowledgement.
    pub produce_latency: Option<Latency>,
    /// Intended send time to consumption.
    pub e2e_latency: Option<Latency>,
    /// Occurrences of each error the broker (or the connection) produced.
    pub errors: BTreeMap<String, u64>,
    /// Records lost to those errors.
    pub error_records: u64,
    /// What the errors mean, for those whose name does not say enough.
    pub error_notes: BTreeMap<String, String>,
    /// `--group` runs: what the consumer group went through.
    pub group: Option<GroupReport>,
    /// `--transactional` runs: the transactions.
    pub transactions: Option<TxnReport>,
    pub intervals: Vec<IntervalLine>,
    /// Latency histograms (not serialized; for the distribution file and the plot).
    #[serde(skip)]
    pub histograms: Histograms,
}

#[derive(Clone, Debug, Default)]
pub struct Histograms {
    pub produce: Option<Histogram<u64>>,
    pub e2e: Option<Histogram<u64>>,
}

/// Below this many measured seconds the summary warns that its rates mean little.
const SHORT_RUN_SECS: f64 = 0.1;

impl Report {
    pub fn new(
        args: &Args,
        layout: &TopicLayout,
        machine: Machine,
        measured_seconds: f64,
        total: &Stats,
        intervals: Vec<IntervalLine>,
    ) -> Report {
        let secs = measured_seconds.max(1e-9);
        let throughput = |records: u64, bytes: u64, batch_bytes: u64, requests: u64| Throughput {
            records,
            bytes,
            batch_bytes,
            requests,
            records_per_sec: records as f64 / secs,
            mb_per_sec: bytes as f64 / BYTES_PER_MB / secs,
            batch_mb_per_sec: batch_bytes as f64 / BYTES_PER_MB / secs,
        };
        let produces = args.mode != Mode::Consume;
        let consumes = args.mode != Mode::Produce;
        Report {
            tool: "wharf-loadgen".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: args.mode,
            bootstrap: args.bootstrap.clone(),
            topic: args.topic.clone(),
            partitions: layout.leaders.len(),
            workload: WorkloadSummary {
                cores: args.cores,
                producers_per_core: if produces { args.producers } else { 0 },
                consumers_per_core: if consumes { args.consumers } else { 0 },
                in_flight: args.in_flight,
                record_size: args.record_size.to_string(),
                keys: args.keys.to_string(),
                acks: args.acks.name().to_string(),
                idempotent: args.idempotent || args.transactional,
                transactional: args.transactional,
                records_per_txn: args.transactional.then_some(args.records_per_txn),
                abort_ratio: args.transactional.then_some(args.abort_ratio),
                isolation_level: args.isolation_level.name().to_string(),
                compression: format!("{:?}", args.compression).to_lowercase(),
                batch_size: args.batch_size,
                linger_ms: args.linger_ms,
                load: if args.rate.is_some() {
                    "open"
                } else {
                    "closed"
                }
                .to_string(),
                rate: args.rate,
                warmup_s: args.warmup_secs(),
                duration_s: args.measured_duration(),
                records: args.records,
                from: format!("{:?}", args.from).to_lowercase(),
            },
            machine,
            measured_seconds,
            produce: produces.then(|| {
                throughput(
                    total.produced_records,
                    total.produced_bytes,
                    total.produced_batch_bytes,
                    total.produce_requests,
                )
            }),
            consume: consumes
                .then(|| {
                    throughput(
                        total.consumed_records,
                        0,
                        total.consumed_bytes,
                        total.fetch_requests,
                    )
                })
                .map(|mut t| {
                    // A consumer sees batches, not the split into keys and values.
                    t.bytes = t.batch_bytes;
                    t.mb_per_sec = t.batch_mb_per_sec;
                    t
                }),
            produce_latency: produces
                .then(|| Latency::from_histogram(&total.produce_latency))
                .flatten(),
            e2e_latency: (args.mode == Mode::E2e)
                .then(|| Latency::from_histogram(&total.e2e_latency))
                .flatten(),
            errors: total.errors.clone(),
            error_notes: total
                .errors
                .keys()
                .filter_map(|name| {
                    crate::stats::explain_error(name).map(|note| (name.clone(), note.to_string()))
                })
                .collect(),
            error_records: total.error_records,
            group: None,
            transactions: (args.transactional && produces).then(|| TxnReport {
                committed: total.txn_committed,
                aborted: total.txn_aborted,
                committed_records: total.txn_committed_records,
                aborted_records: total.txn_aborted_records,
                add_partitions_retries: total.txn_add_partitions_retries,
                transactions_per_sec: (total.txn_committed + total.txn_aborted) as f64 / secs,
                commits_per_sec: total.txn_committed as f64 / secs,
                commit_latency: Latency::from_histogram(&total.commit_latency),
            }),
            intervals,
            histograms: Histograms {
                produce: (produces && !total.produce_latency.is_empty())
                    .then(|| total.produce_latency.clone()),
                e2e: (args.mode == Mode::E2e && !total.e2e_latency.is_empty())
                    .then(|| total.e2e_latency.clone()),
            },
        }
    }

    /// The summary table printed at the end.
    pub fn summary(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        let load = match w.rate {
            Some(rate) => format!("open loop at {} rec/s", group_digits(rate as u64)),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "\nwharf-loadgen {:?} against {} topic {} ({} partition{})",
            self.mode,
            self.bootstrap,
            self.topic,
            self.partitions,
            if self.partitions == 1 { "" } else { "s" }
        );
        let _ =
            writeln!(
            out,
            "workload: {} records, keys {}, acks {}, idempotent {}{}, compression {}, batch {} B, \
             linger {} ms, {} producer(s) x {} in flight + {} consumer(s) per core, {} core(s), \
             {load}{}",
            w.record_size,
            w.keys,
            w.acks,
            if w.idempotent { "yes" } else { "no" },
            match (w.records_per_txn, w.abort_ratio) {
                (Some(n), Some(ratio)) if ratio > 0.0 => {
                    format!(", transactions of {n} records ({:.0}% aborted)", ratio * 100.0)
                }
                (Some(n), _) => format!(", transactions of {n} records"),
                _ => String::new(),
            },
            w.compression,
            w.batch_size,
            w.linger_ms,
            w.producers_per_core,
            w.in_flight,
            w.consumers_per_core,
            w.cores,
            if self.mode != Mode::Produce {
                format!(", consumers {}", w.isolation_level)
            } else {
                String::new()
            },
        );
        let load = match (
            self.machine.load_average_start,
            self.machine.load_average_end,
        ) {
            (Some(a), Some(b)) => format!(", load average {a:.2} → {b:.2}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "measured {:.2} s after {} s warm-up on {} CPUs ({}), kernel {}{load}",
            self.measured_seconds,
            w.warmup_s,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.kernel
        );
        if self.measured_seconds < SHORT_RUN_SECS {
            let _ = writeln!(
                out,
                "note: the measured time is only {:.1} ms; rates over so short a time say little \
                 (run longer with --duration or more --records)",
                self.measured_seconds * 1e3
            );
        }
        let _ = writeln!(
            out,
            "\n{:<10} {:>14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "",
            "records/s",
            "MB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "p99.99",
            "max ms",
            "count"
        );
        let row = |out: &mut String, name: &str, t: Option<&Throughput>, l: Option<&Latency>| {
            let (rps, mbps) = match t {
                Some(t) => (
                    group_digits(t.records_per_sec as u64),
                    format!("{:.1}", t.mb_per_sec),
                ),
                None => (String::new(), String::new()),
            };
            let lat = |f: fn(&Latency) -> f64| {
                l.map(|l| format!("{:.3}", f(l)))
                    .unwrap_or_else(|| "-".into())
            };
            let _ = writeln!(
                out,
                "{:<10} {:>14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                rps,
                mbps,
                lat(|l| l.p50_ms),
                lat(|l| l.p90_ms),
                lat(|l| l.p99_ms),
                lat(|l| l.p99_9_ms),
                lat(|l| l.p99_99_ms),
                lat(|l| l.max_ms),
                l.map(|l| group_digits(l.count)).unwrap_or_default(),
            );
        };
        if let Some(t) = &self.produce {
            row(&mut out, "produce", Some(t), self.produce_latency.as_ref());
        }
        if let Some(t) = &self.consume {
            row(&mut out, "consume", Some(t), None);
        }
        if self.mode == Mode::E2e {
            row(&mut out, "e2e", None, self.e2e_latency.as_ref());
        }
        if let Some(t) = &self.transactions {
            row(&mut out, "commit", None, t.commit_latency.as_ref());
            let _ = writeln!(out, "\n{}", t.render());
        }
        if let Some(g) = &self.group {
            let _ = writeln!(out, "\n{}", g.render());
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "\nerrors: none");
        } else {
            let _ = writeln!(
                out,
                "\nerrors ({} records lost):",
                group_digits(self.error_records)
            );
            for (name, count) in &self.errors {
                let _ = writeln!(out, "  {count:>10}  {name}");
                if let Some(note) = self.error_notes.get(name) {
                    let _ = writeln!(out, "              ({note})");
                }
            }
        }
        out
    }

    /// The full percentile distributions in HdrHistogram's text format, values in ms.
    pub fn distribution_text(&self) -> String {
        let mut out = String::new();
        for (name, h) in [
            ("produce", &self.histograms.produce),
            ("e2e", &self.histograms.e2e),
        ] {
            if let Some(h) = h {
                let _ = writeln!(out, "# {name} latency (ms)");
                out.push_str(&hgrm(h));
                out.push('\n');
            }
        }
        out
    }

    pub fn to_json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// True if the broker answered anything with an error.
    pub fn had_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// HdrHistogram's percentile distribution text (as `outputPercentileDistribution` with a
/// value scale of ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(DISTRIBUTION_TICKS_PER_HALF) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            v.value_iterated_to() as f64 / NS_PER_MS,
            q,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / NS_PER_MS,
        h.stdev() / NS_PER_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / NS_PER_MS,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::TopicLayout;
    use clap::Parser;

    fn report_for(stats: &Stats, argv: &[&str]) -> Report {
        let args = Args::parse_from(argv);
        let layout = TopicLayout {
            topic: "t".into(),
            leaders: [
                (0, "127.0.0.1:9092".parse().unwrap()),
                (1, "127.0.0.1:9092".parse().unwrap()),
            ]
            .into_iter()
            .collect(),
        };
        let machine = Machine {
            cpus: 2,
            cpu_model: "test".into(),
            kernel: "6".into(),
            load_average_start: Some(0.5),
            load_average_end: Some(1.25),
        };
        Report::new(
            &args,
            &layout,
            machine,
            2.0,
            stats,
            vec![IntervalLine::new(1.0, false, stats)],
        )
    }

    fn sample_stats() -> Stats {
        let mut s = Stats::new();
        s.produced_records = 1000;
        s.produced_bytes = 1_000_000;
        s.produced_batch_bytes = 1_010_000;
        s.produce_requests = 10;
        for i in 1..=1000u64 {
            s.record_produce_latency(i * 1_000); // 1 us .. 1 ms
        }
        s.record_error("NOT_LEADER_OR_FOLLOWER", 7);
        s
    }

    #[test]
    fn json_report_carries_throughput_percentiles_errors_and_distribution() {
        let report = report_for(
            &sample_stats(),
            &["wharf-loadgen", "produce", "--acks", "all", "--rate", "500"],
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert_eq!(json["mode"], "produce");
        assert_eq!(json["partitions"], 2);
        assert_eq!(json["workload"]["acks"], "all");
        assert_eq!(json["workload"]["load"], "open");
        assert_eq!(json["workload"]["rate"], 500.0);
        assert_eq!(json["produce"]["records"], 1000);
        assert_eq!(json["produce"]["records_per_sec"], 500.0);
        assert_eq!(json["produce"]["mb_per_sec"], 0.5);
        let lat = &json["produce_latency"];
        assert_eq!(lat["count"], 1000);
        let p50 = lat["p50_ms"].as_f64().unwrap();
        assert!((0.499..=0.501).contains(&p50), "p50 {p50}");
        let p99 = lat["p99_ms"].as_f64().unwrap();
        assert!((0.989..=0.991).contains(&p99), "p99 {p99}");
        let max = lat["max_ms"].as_f64().unwrap();
        assert!((0.999..=1.001).contains(&max), "max {max}");
        let dist = lat["distribution"].as_array().unwrap();
        assert!(dist.len() > 20);
        let last = dist.last().unwrap();
        assert_eq!(last["percentile"], 100.0);
        let counted: u64 = dist.iter().map(|q| q["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 1000, "the distribution accounts for every sample");
        assert_eq!(json["errors"]["NOT_LEADER_OR_FOLLOWER"], 1);
        assert_eq!(json["error_records"], 7);
        assert!(json["e2e_latency"].is_null());
        assert!(json["consume"].is_null());
        assert_eq!(json["intervals"][0]["produce_records"], 1000);
    }

    #[test]
    fn summary_names_workload_and_errors() {
        let report = report_for(
            &sample_stats(),
            &["wharf-loadgen", "produce", "--record-size", "100"],
        );
        let text = report.summary();
        assert!(text.contains("100 B records"), "{text}");
        assert!(text.contains("closed loop"), "{text}");
        assert!(text.contains("acks 1, idempotent no,"), "{text}");
        let idempotent = report_for(
            &sample_stats(),
            &["wharf-loadgen", "produce", "--acks", "all", "--idempotent"],
        );
        let text = idempotent.summary();
        assert!(text.contains("acks all, idempotent yes,"), "{text}");
        assert!(text.contains("NOT_LEADER_OR_FOLLOWER"), "{text}");
        assert!(text.contains("500"), "{text}");
        assert!(text.contains("load average 0.50 → 1.25"), "{text}");
    }

    #[test]
    fn distribution_text_is_hgrm_shaped() {
        let report = report_for(&sample_stats(), &["wharf-loadgen", "produce"]);
        let text = report.distribution_text();
        assert!(text.starts_with("# produce latency (ms)"));
        assert!(text.contains("1/(1-Percentile)"));
        assert!(text.contains("Total count    =         1000"));
        let last_value_line = text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .last();
        assert!(
            last_value_line.unwrap().contains("1.000000000000"),
            "{text}"
        );
    }

    #[test]
    fn group_runs_report_members_rebalances_and_commits() {
        let mut g = GroupStats {
            members: 3,
            joins: 5,
            rebalances: 2,
            max_generation: 4,
            ..GroupStats::default()
        };
        g.record_rebalance_time(3_000_000_000);
        g.record_rebalance_time(500_000_000);
        g.commits = 7;
        g.commit_latency.saturating_record(2_000_000);
        g.record_signal("REBALANCE_IN_PROGRESS");
        let mut report = report_for(&Stats::new(), &["wharf-loadgen", "consume", "--group", "g"]);
        report.group = Some(GroupReport::new("g", &g));
        let text = report.summary();
        assert!(
            text.contains("group g: 3 members, generation 4, 5 joins, 2 rebalances"),
            "{text}"
        );
        assert!(
            text.contains("rebalancing 3000 ms longest (3500 ms summed over members)"),
            "{text}"
        );
        assert!(text.contains("group g: 7 commits (p50 2.0"), "{text}");
        assert!(text.contains("REBALANCE_IN_PROGRESS x1"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert_eq!(json["group"]["commits"], 7);
        assert_eq!(json["group"]["rebalance_max_ms"], 3000.0);
        let p50 = json["group"]["commit_p50_ms"].as_f64().unwrap();
        assert!((1.99..=2.01).contains(&p50), "{p50}");
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
