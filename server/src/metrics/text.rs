//! The Prometheus text exposition format, version 0.0.4: a `# HELP` and a `# TYPE` line per
//! metric family, then one `name{labels} value` line per series. Label values are escaped
//! (backslash, double quote, newline) because group ids are arbitrary client strings.

use std::fmt::Write;

use super::{ShardSnapshot, LATENCY_BUCKETS};
use crate::kafka::router::ROUTES;
use crate::node::calls::CallKind;

/// The `Content-Type` of a scrape's response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a label value with the escapes the format requires.
fn escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One series: `name{k="v",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escaped(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The label of an API slot: the router's slot of each API it serves, then one for API
/// keys it does not route.
fn api_label(slot: usize) -> String {
    match ROUTES.get(slot) {
        Some(route) => format!("{:?}", route.api_key),
        None => "unknown".to_string(),
    }
}

/// The whole scrape: every family of the merged snapshot of all shards.
pub fn encode(all: &ShardSnapshot, shards: usize) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let slots = (ROUTES.len() + 1).min(all.apis.len());
    let labels: Vec<String> = (0..slots).map(api_label).collect();
    // Routed APIs are always listed (rates need the zero); unknown API keys once seen.
    let shown: Vec<usize> = (0..slots)
        .filter(|&i| i < ROUTES.len() || all.apis[i].requests > 0)
        .collect();

    family(
        &mut out,
        "wharf_requests_total",
        "counter",
        "Kafka requests answered, by API.",
    );
    for &i in &shown {
        sample(
            &mut out,
            "wharf_requests_total",
            &[("api", &labels[i])],
            all.apis[i].requests,
        );
    }
    family(
        &mut out,
        "wharf_request_errors_total",
        "counter",
        "Kafka requests that failed: closed for a malformed body, an unsupported version, or (Produce, Fetch) a response with a partition error code.",
    );
    for &i in &shown {
        sample(
            &mut out,
            "wharf_request_errors_total",
            &[("api", &labels[i])],
            all.apis[i].errors,
        );
    }
    family(
        &mut out,
        "wharf_request_latency_seconds",
        "histogram",
        "Time from a request frame being read to its response being ready, by API.",
    );
    for &i in &shown {
        let api = &all.apis[i];
        let mut cumulative = 0u64;
        for (slot, (_, le)) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += api.buckets[slot];
            sample(
                &mut out,
                "wharf_request_latency_seconds_bucket",
                &[("api", &labels[i]), ("le", le)],
                cumulative,
            );
        }
        cumulative += api.buckets[LATENCY_BUCKETS.len()];
        sample(
            &mut out,
            "wharf_request_latency_seconds_bucket",
            &[("api", &labels[i]), ("le", "+Inf")],
            cumulative,
        );
        sample(
            &mut out,
            "wharf_request_latency_seconds_sum",
            &[("api", &labels[i])],
            api.latency_sum_nanos as f64 / 1e9,
        );
        sample(
            &mut out,
            "wharf_request_latency_seconds_count",
            &[("api", &labels[i])],
            cumulative,
        );
    }

    family(
        &mut out,
        "wharf_request_bytes_total",
        "counter",
        "Bytes of Kafka request frames read.",
    );
    sample(
        &mut out,
        "wharf_request_bytes_total",
        &[],
        all.request_bytes,
    );
    family(
        &mut out,
        "wharf_response_bytes_total",
        "counter",
        "Bytes of Kafka response frames produced.",
    );
    sample(
        &mut out,
        "wharf_response_bytes_total",
        &[],
        all.response_bytes,
    );
    for (name, help, value) in [
        (
            "wharf_replication_bad_frames_total",
            "Replication frames refused (malformed, oversized or out of order); each closed its connection.",
            all.replication.bad_frames,
        ),
        (
            "wharf_replication_refused_batches_total",
            "Leader answers whose record batches a follower refused (CRC, offsets or epochs); each closed its connection.",
            all.replication.refused_batches,
        ),
        (
            "wharf_replication_bytes_sent_total",
            "Bytes of replication responses sent to followers.",
            all.replication.bytes_sent,
        ),
        (
            "wharf_replication_bytes_received_total",
            "Bytes of record batches appended from leaders.",
            all.replication.bytes_received,
        ),
    ] {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], value);
    }
    family(
        &mut out,
        "wharf_shard_calls_total",
        "counter",
        "Calls between shards (and of a shard to itself), by kind, counted where they are answered.",
    );
    for (kind, count) in CallKind::ALL.iter().zip(&all.calls) {
        sample(
            &mut out,
            "wharf_shard_calls_total",
            &[("call", kind.name())],
            count,
        );
    }
    family(
        &mut out,
        "wharf_open_connections",
        "gauge",
        "Kafka client connections open now.",
    );
    sample(&mut out, "wharf_open_connections", &[], all.connections);

    family(
        &mut out,
        "wharf_partition_log_start_offset",
        "gauge",
        "First offset still in the partition's log.",
    );
    for p in &all.partitions {
        let partition = p.partition.to_string();
        sample(
            &mut out,
            "wharf_partition_log_start_offset",
            &[("topic", &p.topic), ("partition", &partition)],
            p.log_start_offset,
        );
    }
    family(
        &mut out,
        "wharf_partition_log_end_offset",
        "gauge",
        "The partition's high watermark: the offset its next record gets, once written.",
    );
    for p in &all.partitions {
        let partition = p.partition.to_string();
        sample(
            &mut out,
            "wharf_partition_log_end_offset",
            &[("topic", &p.topic), ("partition", &partition)],
            p.log_end_offset,
        );
    }
    family(
        &mut out,
        "wharf_partition_last_stable_offset",
        "gauge",
        "The partition's last stable offset: read_committed consumers read below it (the high watermark unless a transaction is open).",
    );
    for p in &all.partitions {
        let partition = p.partition.to_string();
        sample(
            &mut out,
            "wharf_partition_last_stable_offset",
            &[("topic", &p.topic), ("partition", &partition)],
            p.last_stable_offset,
        );
    }
    family(
        &mut out,
        "wharf_partition_size_bytes",
        "gauge",
        "Bytes of the partition's log segments.",
    );
    for p in &all.partitions {
        let partition = p.partition.to_string();
        sample(
            &mut out,
            "wharf_partition_size_bytes",
            &[("topic", &p.topic), ("partition", &partition)],
            p.size_bytes,
        );
    }

    type CleanerValue = fn(&crate::metrics::CleanerSnapshot) -> String;
    let cleaner_families: [(&str, &str, &str, CleanerValue); 6] = [
        (
            "wharf_log_cleaner_dirty_ratio",
            "gauge",
            "Share of a compacted partition's log not cleaned yet (cleanable bytes over all), as of the cleaner's last look; a round is due above min.cleanable.dirty.ratio.",
            |c| c.dirty_ratio.to_string(),
        ),
        (
            "wharf_log_cleaner_runs_total",
            "counter",
            "Cleaning rounds finished on a compacted partition.",
            |c| c.runs.to_string(),
        ),
        (
            "wharf_log_cleaner_errors_total",
            "counter",
            "Cleaning rounds on a compacted partition that failed.",
            |c| c.errors.to_string(),
        ),
        (
            "wharf_log_cleaner_bytes_read_total",
            "counter",
            "Bytes of log the cleaner read from a compacted partition.",
            |c| c.bytes_read.to_string(),
        ),
        (
            "wharf_log_cleaner_bytes_written_total",
            "counter",
            "Bytes of cleaned segments the cleaner wrote for a compacted partition.",
            |c| c.bytes_written.to_string(),
        ),
        (
            "wharf_log_cleaner_last_run_timestamp_ms",
            "gauge",
            "Wall-clock time (ms since the epoch) the last cleaning round of a compacted partition finished; 0 before the first.",
            |c| c.last_run_ms.to_string(),
        ),
    ];
    for (name, kind, help, value) in cleaner_families {
        family(&mut out, name, kind, help);
        for p in &all.partitions {
            let Some(cleaner) = &p.cleaner else { continue };
            let partition = p.partition.to_string();
            sample(
                &mut out,
                name,
                &[("topic", &p.topic), ("partition", &partition)],
                value(cleaner),
            );
        }
    }

    family(
        &mut out,
        "wharf_group_members",
        "gauge",
        "Members of a consumer group.",
    );
    for g in &all.groups {
        sample(
            &mut out,
            "wharf_group_members",
            &[("group", &g.group_id)],
            g.members,
        );
    }
    family(
        &mut out,
        "wharf_group_state",
        "gauge",
        "A consumer group's state (the series with value 1).",
    );
    for g in &all.groups {
        sample(
            &mut out,
            "wharf_group_state",
            &[("group", &g.group_id), ("state", g.state)],
            1,
        );
    }
    family(
        &mut out,
        "wharf_group_committed_offset",
        "gauge",
        "Offset a consumer group committed for a partition.",
    );
    for g in &all.groups {
        for (topic, partition, offset) in &g.offsets {
            let partition = partition.to_string();
            sample(
                &mut out,
                "wharf_group_committed_offset",
                &[
                    ("group", &g.group_id),
                    ("topic", topic),
                    ("partition", &partition),
                ],
                offset,
            );
        }
    }
    family(
        &mut out,
        "wharf_group_lag_records",
        "gauge",
        "Records between a group's committed offset and the partition's last stable offset (its high watermark unless a transaction is open).",
    );
    for g in &all.groups {
        for (topic, partition, offset) in &g.offsets {
            let Ok(at) = all
                .partitions
                .binary_search_by(|p| (p.topic.as_str(), p.partition).cmp(&(topic, *partition)))
            else {
                continue;
            };
            // Against the LSO: a read_committed consumer cannot pass it, and an open
            // transaction's records are not yet work to do.
            let lag = (all.partitions[at].last_stable_offset - offset).max(0);
            let partition = partition.to_string();
            sample(
                &mut out,
                "wharf_group_lag_records",
                &[
                    ("group", &g.group_id),
                    ("topic", topic),
                    ("partition", &partition),
                ],
                lag,
            );
        }
    }

    if let Some(c) = &all.control {
        family(
            &mut out,
            "wharf_controller_bad_frames_total",
            "counter",
            "Frames refused on the controller listener (each closed its connection).",
        );
        sample(
            &mut out,
            "wharf_controller_bad_frames_total",
            &[],
            c.bad_frames,
        );
        family(
            &mut out,
            "wharf_metadata_log_write_stalls_total",
            "counter",
            "Times a metadata log write failed (a full disk) and metadata changes waited for it.",
        );
        sample(
            &mut out,
            "wharf_metadata_log_write_stalls_total",
            &[],
            c.write_stalls,
        );
        family(
            &mut out,
            "wharf_metadata_log_stalled",
            "gauge",
            "1 while a metadata log write is failing and being retried.",
        );
        sample(
            &mut out,
            "wharf_metadata_log_stalled",
            &[],
            u64::from(c.writes_stalled),
        );
        family(
            &mut out,
            "wharf_metadata_applied_offset",
            "gauge",
            "The metadata log offset this node has applied.",
        );
        sample(
            &mut out,
            "wharf_metadata_applied_offset",
            &[],
            c.applied_offset,
        );
        family(
            &mut out,
            "wharf_metadata_quorum_term",
            "gauge",
            "The metadata quorum's Raft term as this node knows it.",
        );
        sample(&mut out, "wharf_metadata_quorum_term", &[], c.term);
        family(
            &mut out,
            "wharf_metadata_quorum_leader",
            "gauge",
            "The node id of the metadata quorum's leader (-1 while none is known).",
        );
        sample(&mut out, "wharf_metadata_quorum_leader", &[], c.leader);
        family(
            &mut out,
            "wharf_controller_active",
            "gauge",
            "1 on the active controller, 0 elsewhere.",
        );
        sample(
            &mut out,
            "wharf_controller_active",
            &[],
            u8::from(c.active_controller),
        );
    }
    family(
        &mut out,
        "wharf_shards",
        "gauge",
        "Shards (pinned executors) serving.",
    );
    sample(&mut out, "wharf_shards", &[], shards);
    family(
        &mut out,
        "wharf_build_info",
        "gauge",
        "The running wharf's version (always 1).",
    );
    sample(
        &mut out,
        "wharf_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::GroupSummary;
    use crate::metrics::{ApiSnapshot, PartitionSnapshot, API_SLOTS};

    fn snapshot() -> ShardSnapshot {
        let mut apis = vec![ApiSnapshot::default(); API_SLOTS];
        apis[0].requests = 3;
        apis[0].buckets[0] = 2;
        apis[0].buckets[LATENCY_BUCKETS.len()] = 1;
        apis[0].latency_sum_nanos = 11_000_000_000;
        ShardSnapshot {
            apis,
            partitions: vec![PartitionSnapshot {
                topic: "orders".into(),
                partition: 2,
                log_start_offset: 1,
                log_end_offset: 10,
                last_stable_offset: 10,
                size_bytes: 500,
                cleaner: Some(crate::metrics::CleanerSnapshot {
                    dirty_ratio: 0.25,
                    runs: 3,
                    errors: 0,
                    bytes_read: 4096,
                    bytes_written: 1024,
                    last_run_ms: 1_700_000_000_000,
                }),
            }],
            groups: vec![GroupSummary {
                group_id: "g\"1\\".into(),
                state: "Empty",
                members: 0,
                offsets: vec![("orders".into(), 2, 4), ("gone".into(), 0, 1)],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_their_count() {
        let text = encode(&snapshot(), 1);
        let api = api_label(0);
        assert!(text.contains(&format!(
            "wharf_request_latency_seconds_bucket{{api=\"{api}\",le=\"0.0001\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "wharf_request_latency_seconds_bucket{{api=\"{api}\",le=\"10\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "wharf_request_latency_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "wharf_request_latency_seconds_count{{api=\"{api}\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "wharf_request_latency_seconds_sum{{api=\"{api}\"}} 11\n"
        )));
        // The unknown-API slot is hidden until a request used it.
        assert!(!text.contains("api=\"unknown\""));
    }

    #[test]
    fn lag_is_end_minus_committed_and_label_values_are_escaped() {
        let text = encode(&snapshot(), 2);
        assert!(text.contains(
            "wharf_group_lag_records{group=\"g\\\"1\\\\\",topic=\"orders\",partition=\"2\"} 6\n"
        ));
        assert!(text.contains(
            "wharf_group_committed_offset{group=\"g\\\"1\\\\\",topic=\"gone\",partition=\"0\"} 1\n"
        ));
        // No partition, no lag.
        assert!(!text.contains("wharf_group_lag_records{group=\"g\\\"1\\\\\",topic=\"gone\""));
        assert!(text.contains("wharf_shards 2\n"));
        assert!(text.contains("wharf_build_info{version=\""));
    }

    #[test]
    fn compacted_partitions_report_their_cleaner() {
        let text = encode(&snapshot(), 1);
        for line in [
            "wharf_log_cleaner_dirty_ratio{topic=\"orders\",partition=\"2\"} 0.25\n",
            "wharf_log_cleaner_runs_total{topic=\"orders\",partition=\"2\"} 3\n",
            "wharf_log_cleaner_bytes_read_total{topic=\"orders\",partition=\"2\"} 4096\n",
            "wharf_log_cleaner_bytes_written_total{topic=\"orders\",partition=\"2\"} 1024\n",
            "# TYPE wharf_log_cleaner_runs_total counter\n",
        ] {
            assert!(text.contains(line), "{line}");
        }
        let mut plain = snapshot();
        plain.partitions[0].cleaner = None;
        let text = encode(&plain, 1);
        assert!(!text.contains("wharf_log_cleaner_runs_total{"));
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = encode(&snapshot(), 1);
        let mut typed: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| typed.last() == Some(b))
                    .unwrap_or(name);
                assert_eq!(typed.last(), Some(&base), "{line}");
            }
        }
    }
}
