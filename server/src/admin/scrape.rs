//! Reading a broker's metrics endpoint (Prometheus text format) for what the Kafka protocol
//! does not carry: the log cleaner's progress per partition.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::client::AdminError;

/// A scrape larger than this is refused (a broker with a million partitions stays well below).
const MAX_SCRAPE_BYTES: u64 = 256 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The log cleaner's figures for one compacted partition, as its broker's metrics give them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CleanerStats {
    /// Share of the log's bytes not cleaned yet, at the cleaner's last look.
    pub dirty_ratio: f64,
    /// Cleaning rounds finished.
    pub runs: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// When the last round finished, ms since the Unix epoch; 0 before the first.
    pub last_run_ms: u64,
}

/// The body of `GET /metrics` from `endpoint` (HOST:PORT).
pub fn fetch(endpoint: &str) -> Result<String, AdminError> {
    let connect_error = |reason: String| AdminError::Connect {
        addr: format!("{endpoint} (metrics)"),
        reason,
    };
    let addr = endpoint
        .to_socket_addrs()
        .map_err(|e| connect_error(e.to_string()))?
        .next()
        .ok_or_else(|| connect_error("no address".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| connect_error(e.to_string()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: wharf\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .take(MAX_SCRAPE_BYTES + 1)
        .read_to_end(&mut response)?;
    if response.len() as u64 > MAX_SCRAPE_BYTES {
        return Err(AdminError::Protocol(format!(
            "the metrics of {endpoint} are larger than {MAX_SCRAPE_BYTES} bytes"
        )));
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        AdminError::Protocol(format!(
            "{endpoint} did not answer with HTTP: is it the metrics listener?"
        ))
    })?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(AdminError::Protocol(format!(
            "{endpoint} answered `{status}` to GET /metrics"
        )));
    }
    Ok(body.to_string())
}

/// The cleaner's figures by (topic, partition), from a scrape's body.
pub fn cleaner_stats(body: &str) -> HashMap<(String, i32), CleanerStats> {
    let mut out: HashMap<(String, i32), CleanerStats> = HashMap::new();
    for line in body.lines().filter(|l| l.starts_with("wharf_log_cleaner_")) {
        let Some((name, topic, partition, value)) = parse_sample(line) else {
            continue;
        };
        let stats = out.entry((topic, partition)).or_default();
        match name {
            "wharf_log_cleaner_dirty_ratio" => stats.dirty_ratio = value,
            "wharf_log_cleaner_runs_total" => stats.runs = value as u64,
            "wharf_log_cleaner_bytes_read_total" => stats.bytes_read = value as u64,
            "wharf_log_cleaner_bytes_written_total" => stats.bytes_written = value as u64,
            "wharf_log_cleaner_last_run_timestamp_ms" => stats.last_run_ms = value as u64,
            _ => {}
        }
    }
    out
}

/// `name{topic="t",partition="p"} value` → its parts; `None` for any other shape.
fn parse_sample(line: &str) -> Option<(&str, String, i32, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    let value: f64 = value.trim().split_whitespace().next()?.parse().ok()?;
    let mut topic = None;
    let mut partition = None;
    for label in labels.split(',') {
        let (key, quoted) = label.split_once('=')?;
        let text = quoted.strip_prefix('"')?.strip_suffix('"')?;
        match key {
            "topic" => topic = Some(text.to_string()),
            "partition" => partition = text.parse().ok(),
            _ => {}
        }
    }
    Some((name, topic?, partition?, value))
}

/// A time in ms since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SSZ`, or `never` for 0.
pub fn format_timestamp_ms(ms: u64) -> String {
    if ms == 0 {
        return "never".to_string();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaner_samples_are_gathered_by_partition_and_other_lines_ignored() {
        let body = "# HELP wharf_log_cleaner_runs_total Cleaning rounds finished.\n\
            # TYPE wharf_log_cleaner_runs_total counter\n\
            wharf_log_cleaner_runs_total{topic=\"changelog\",partition=\"0\"} 3\n\
            wharf_log_cleaner_dirty_ratio{topic=\"changelog\",partition=\"0\"} 0.25\n\
            wharf_log_cleaner_bytes_read_total{topic=\"changelog\",partition=\"0\"} 9000\n\
            wharf_log_cleaner_bytes_written_total{topic=\"changelog\",partition=\"0\"} 3000\n\
            wharf_log_cleaner_last_run_timestamp_ms{topic=\"changelog\",partition=\"0\"} 1700000000000\n\
            wharf_log_cleaner_runs_total{topic=\"other\",partition=\"2\"} 1\n\
            wharf_partition_size_bytes{topic=\"changelog\",partition=\"0\"} 4096\n\
            wharf_log_cleaner_runs_total{topic=\"broken\"} 1\n\
            wharf_log_cleaner_runs_total{topic=\"x\",partition=\"0\"} not-a-number\n";
        let stats = cleaner_stats(body);
        assert_eq!(stats.len(), 2, "{stats:?}");
        assert_eq!(
            stats[&("changelog".to_string(), 0)],
            CleanerStats {
                dirty_ratio: 0.25,
                runs: 3,
                bytes_read: 9000,
                bytes_written: 3000,
                last_run_ms: 1_700_000_000_000,
            }
        );
        assert_eq!(stats[&("other".to_string(), 2)].runs, 1);
    }

    #[test]
    fn timestamps_are_printed_in_utc() {
        assert_eq!(format_timestamp_ms(0), "never");
        assert_eq!(
            format_timestamp_ms(1_700_000_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(format_timestamp_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
