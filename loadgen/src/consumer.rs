//! One consumer: one connection, a fixed set of partitions, one Fetch in flight (as Kafka
//! consumers do per broker). It checks every batch's CRC like a real consumer
//! (`check.crcs`), counts records and bytes, and in e2e mode reads each record's stamp to
//! measure produce-to-consume latency.
//!
//! With `--group` a consumer is one member's fetcher for one leader: the member
//! (`group.rs`) starts it with the positions the group gave, stops it through the
//! [`MemberLink`] before a rebalance, and reads the positions it publishes there to commit
//! them. The fetch loop itself is the same in both cases.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::{ApiKey, FetchRequest, TopicName};
use kafka_protocol::records::RecordBatchDecoder;
use wharf_protocol::batch::{batches, validate_batch_with, BatchInfo, Compression, CountRule};
use wharf_protocol::txn::control::{
    decode_control_batch, ControlBatch, ControlContent, TransactionResult,
};

use crate::admin::{list_offsets, topic_name, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::cli::StartFrom;
use crate::conn::{decode_response, Conn};
use crate::group::{run_over, MemberLink};
use crate::payload::read_stamp;
use crate::run::{Shared, Workload};
use crate::schedule::Clock;
use crate::stats::{kafka_error_name, Stats};

/// Fetch versions spoken: v4 is the first with RecordBatch v2; v11 is the newest before
/// flexible versions (v12) and what librdkafka 2.x sends. Staying below v12 also keeps a
/// broker's stray tagged fields from making its answers undecodable here.
const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=11;
/// Largest batch a consumer accepts.
const MAX_FETCHED_BATCH_BYTES: usize = 64 << 20;

pub struct Consumer {
    conn: Conn,
    version: i16,
    workload: Rc<Workload>,
    shared: Arc<Shared>,
    clock: Clock,
    topic: TopicName,
    offsets: BTreeMap<i32, i64>,
    /// When records last arrived (run clock), for the --records idle limit.
    last_progress_ns: u64,
    /// e2e: when to give up on records not yet consumed (set once the producers are done).
    e2e_deadline_ns: Option<u64>,
    stats: Rc<RefCell<Stats>>,
    /// With --group: the member this consumer fetches for.
    link: Option<Rc<MemberLink>>,
    /// The connection may hold an unanswered request or be closed: not to be reused.
    broken: bool,
}

impl Consumer {
    /// Connects and looks up where each partition starts.
    pub async fn connect(
        leader: std::net::SocketAddr,
        partitions: Vec<i32>,
        workload: Rc<Workload>,
        shared: Arc<Shared>,
        clock: Clock,
        stats: Rc<RefCell<Stats>>,
    ) -> anyhow::Result<Consumer> {
        let mut conn = Conn::connect(leader, &workload.client_id).await?;
        let version = conn.version(ApiKey::Fetch, FETCH_VERSIONS)?;
        let timestamp = match workload.from {
            StartFrom::Earliest => EARLIEST_TIMESTAMP,
            StartFrom::Latest => LATEST_TIMESTAMP,
        };
        let offsets = list_offsets(
            &mut conn,
            &workload.topic,
            &partitions,
            timestamp,
            workload.isolation_level.wire(),
        )
        .await?;
        Ok(Consumer {
            conn,
            version,
            topic: topic_name(&workload.topic),
            offsets,
            last_progress_ns: 0,
            e2e_deadline_ns: None,
            workload,
            shared,
            clock,
            stats,
            link: None,
            broken: false,
        })
    }

    /// A group member's fetcher on `conn` (the partitions' leader), starting at `offsets`.
    pub fn for_member(
        conn: Conn,
        offsets: BTreeMap<i32, i64>,
        link: Rc<MemberLink>,
        workload: Rc<Workload>,
        shared: Arc<Shared>,
        clock: Clock,
        stats: Rc<RefCell<Stats>>,
    ) -> anyhow::Result<Consumer> {
        let version = conn.version(ApiKey::Fetch, FETCH_VERSIONS)?;
        Ok(Consumer {
            conn,
            version,
            topic: topic_name(&workload.topic),
            offsets,
            last_progress_ns: 0,
            e2e_deadline_ns: None,
            workload,
            shared,
            clock,
            stats,
            link: Some(link),
            broken: false,
        })
    }

    /// Fetches until the member stops it or the run is over; returns it so that its
    /// connection can serve the next assignment.
    pub async fn run_for_member(mut self, workload: Rc<Workload>) -> Consumer {
        self.workload = workload;
        self.last_progress_ns = self.clock.now_ns();
        self.run().await;
        self
    }

    /// The connection, unless it failed or holds an unanswered request.
    pub fn into_conn(self) -> Option<Conn> {
        (!self.broken).then_some(self.conn)
    }

    /// Whether to stop, counting as errors what did not arrive in time.
    fn finished(&mut self, now: u64) -> bool {
        if let Some(link) = &self.link {
            // In a group the run ends for every member at once (see `group::run_over`).
            return link.stop.get() || run_over(&self.workload, &self.shared, &self.stats, now);
        }
        let w = &self.workload;
        let produced = self.shared.produced.load(Ordering::Relaxed);
        let consumed = self.shared.consumed.load(Ordering::Relaxed);
        if now >= w.stop_ns.saturating_add(w.drain_ns) {
            self.report_missing(produced, consumed);
            return true;
        }
        match (w.run_id, w.consume_target) {
            // e2e: until every producer is done and every record it got acknowledged is in,
            // or the drain timeout has passed since the producers finished.
            (Some(_), _) => {
                if self.shared.producers_done.load(Ordering::Acquire) < w.total_producers {
                    return false;
                }
                let deadline = *self
                    .e2e_deadline_ns
                    .get_or_insert(now.saturating_add(w.drain_ns));
                if consumed >= produced {
                    return true;
                }
                if now >= deadline {
                    self.report_missing(produced, consumed);
                    return true;
                }
                false
            }
            (None, Some(target)) => {
                if consumed >= target {
                    return true;
                }
                if now.saturating_sub(self.last_progress_ns) >= w.drain_ns {
                    self.stats
                        .borrow_mut()
                        .record_error("NO_NEW_RECORDS_WITHIN_DRAIN_TIMEOUT", 0);
                    return true;
                }
                now >= w.stop_ns
            }
            (None, None) => now >= w.stop_ns,
        }
    }

    /// e2e: records acknowledged to producers but never seen by a consumer are lost records.
    fn report_missing(&self, produced: u64, consumed: u64) {
        if self.workload.run_id.is_some()
            && consumed < produced
            && !self.shared.missing_reported.swap(true, Ordering::AcqRel)
        {
            self.stats.borrow_mut().record_error(
                "ACKED_BUT_NOT_CONSUMED_BEFORE_DRAIN_TIMEOUT",
                produced - consumed,
            );
        }
    }

    /// Consumes with the run's timing in `workload` until the stop time, the record target,
    /// or (e2e) until every acknowledged record is in.
    pub async fn run_with(mut self, workload: Rc<Workload>) {
        self.last_progress_ns = workload.start_ns;
        self.workload = workload;
        self.run().await
    }

    async fn run(&mut self) {
        let hard_stop_ns = self.workload.stop_ns.saturating_add(self.workload.drain_ns);
        while !self.finished(self.clock.now_ns()) {
            let request = self.request();
            let correlation_id = match self.conn.enqueue(self.version, &request) {
                Ok(id) => id,
                Err(e) => return self.fail(&format!("cannot encode Fetch: {e:#}")),
            };
            let frame = {
                // A fetch is answered within its max wait; past that plus the drain timeout
                // the broker is not answering.
                let now = self.clock.now_ns();
                let answer_by = now
                    .saturating_add(self.workload.fetch_max_wait_ms.max(0) as u64 * 1_000_000)
                    .saturating_add(self.workload.drain_ns)
                    .min(hard_stop_ns);
                match self.conn.wait(Some(self.clock.instant(answer_by))).await {
                    Err(e) => {
                        return self.fail(&format!("connection to {}: {e:#}", self.conn.peer()))
                    }
                    Ok(false) if self.workload.run_id.is_some() => {
                        // A long poll cut short by the drain timeout: what matters is which
                        // records never arrived.
                        let shared = &self.shared;
                        let (produced, consumed) = (
                            shared.produced.load(Ordering::Relaxed),
                            shared.consumed.load(Ordering::Relaxed),
                        );
                        self.broken = true;
                        return self.report_missing(produced, consumed);
                    }
                    Ok(false) => return self.fail("NO_ANSWER_BEFORE_DRAIN_TIMEOUT"),
                    Ok(true) => {}
                }
                match self.conn.take_frame() {
                    Err(e) => {
                        return self.fail(&format!("connection to {}: {e:#}", self.conn.peer()))
                    }
                    Ok(Some(f)) if f.correlation_id == correlation_id => f,
                    Ok(_) => return self.fail("RESPONSE_WITH_UNKNOWN_CORRELATION_ID"),
                }
            };
            let now = self.clock.now_ns();
            match decode_response::<FetchRequest>(frame.bytes, self.version) {
                Ok(response) => {
                    if response.error_code != 0 {
                        self.stats
                            .borrow_mut()
                            .record_error(&kafka_error_name(response.error_code), 0);
                    }
                    for topic in response.responses {
                        for p in topic.partitions {
                            if p.error_code != 0 {
                                self.stats
                                    .borrow_mut()
                                    .record_error(&kafka_error_name(p.error_code), 0);
                                continue;
                            }
                            if let Some(records) = p.records {
                                let aborted = AbortedTransactions::new(
                                    p.aborted_transactions.as_deref().unwrap_or_default(),
                                );
                                self.on_records(p.partition_index, records, aborted, now);
                            }
                        }
                    }
                }
                Err(e) => self
                    .stats
                    .borrow_mut()
                    .record_error(&format!("UNDECODABLE_FETCH_RESPONSE ({e:#})"), 0),
            }
            self.stats.borrow_mut().fetch_requests += 1;
        }
    }

    fn request(&self) -> FetchRequest {
        let w = &self.workload;
        let mut topic = FetchTopic::default();
        topic.topic = self.topic.clone();
        topic.partitions = self
            .offsets
            .iter()
            .map(|(p, offset)| {
                let mut fp = FetchPartition::default();
                fp.partition = *p;
                fp.fetch_offset = *offset;
                fp.partition_max_bytes = w.partition_max_bytes;
                fp
            })
            .collect();
        let mut request = FetchRequest::default();
        request.max_wait_ms = w.fetch_max_wait_ms;
        request.isolation_level = w.isolation_level.wire();
        request.min_bytes = w.fetch_min_bytes;
        request.max_bytes = w.fetch_max_bytes;
        request.topics = vec![topic];
        request
    }

    fn on_records(
        &mut self,
        partition: i32,
        records: Bytes,
        mut aborted: AbortedTransactions,
        now: u64,
    ) {
        let Some(offset) = self.offsets.get(&partition).copied() else {
            self.stats
                .borrow_mut()
                .record_error("FETCH_RESPONSE_FOR_UNASKED_PARTITION", 0);
            return;
        };
        let mut next = offset;
        let mut counted = 0u64;
        let mut stamped = 0u64;
        let mut bytes = 0u64;
        let mut stats = self.stats.borrow_mut();
        for (at, batch) in batches(&records) {
            let info = match validate_batch_with(batch, MAX_FETCHED_BATCH_BYTES, CountRule::AtMost)
            {
                Ok(info) => info,
                Err(e) => {
                    stats.record_error(&format!("CORRUPT_BATCH ({:?})", e.kind()), 0);
                    break;
                }
            };
            let last = info.last_offset();
            if last < next {
                continue; // a batch before the fetch offset, returned whole
            }
            bytes += batch.len() as u64;
            next = last + 1;
            // read_committed: drop the records of aborted transactions (the broker lists
            // them; read_uncommitted answers list none).
            if aborted.drops(&info, batch) {
                continue;
            }
            if info.is_control() {
                continue;
            }
            // Records before the fetch offset in the first batch are not counted.
            counted += (last - info.base_offset.max(offset) + 1)
                .min(i64::from(info.records_count))
                .max(0) as u64;
            if let Some(run_id) = self.workload.run_id {
                let mut record_stamp = |value: Option<&[u8]>, stats: &mut Stats| {
                    if let Some(sent) = value.and_then(|v| read_stamp(v, run_id)) {
                        stats.record_e2e_latency(now.saturating_sub(sent));
                        stamped += 1;
                    }
                };
                if info.compression == Compression::None {
                    match wharf_protocol::batch::records(batch) {
                        Ok(iter) => {
                            for r in iter {
                                match r {
                                    Ok(r) => record_stamp(r.value, &mut stats),
                                    Err(_) => {
                                        stats.record_error("CORRUPT_RECORD", 0);
                                        break;
                                    }
                                }
                            }
                        }
                        Err(_) => stats.record_error("CORRUPT_RECORD", 0),
                    }
                } else {
                    let mut b = records.slice(at..at + batch.len());
                    match RecordBatchDecoder::decode(&mut b) {
                        Ok(set) => set
                            .records
                            .iter()
                            .for_each(|r| record_stamp(r.value.as_deref(), &mut stats)),
                        Err(_) => stats.record_error("UNDECODABLE_COMPRESSED_BATCH", 0),
                    }
                }
            }
        }
        stats.consumed_records += counted;
        stats.consumed_bytes += bytes;
        drop(stats);
        self.offsets.insert(partition, next);
        if let Some(link) = &self.link {
            if next != offset {
                link.positions.borrow_mut().insert(partition, next);
            }
            if counted > 0 {
                self.shared
                    .last_progress_ns
                    .fetch_max(now, Ordering::Relaxed);
            }
        }
        if counted > 0 {
            self.last_progress_ns = now;
            let mut stats = self.stats.borrow_mut();
            stats.last_event_ns = stats.last_event_ns.max(now);
        }
        let progress = if self.workload.run_id.is_some() {
            stamped
        } else {
            counted
        };
        self.shared.consumed.fetch_add(progress, Ordering::Relaxed);
    }

    fn fail(&mut self, error: &str) {
        self.broken = true;
        self.stats.borrow_mut().record_error(error, 0);
    }
}

/// The aborted transactions a read_committed Fetch answer lists for one partition, applied
/// to its batches in offset order as Kafka's consumer does (`CompletedFetch`): a producer's
/// transactional batches are dropped from the first offset of its aborted transaction up to
/// that transaction's ABORT marker.
pub struct AbortedTransactions {
    /// (first offset, producer id), latest first, so the next one due is at the end.
    pending: Vec<(i64, i64)>,
    /// Producers whose aborted transaction is under way at the current batch.
    aborting: std::collections::HashSet<i64>,
}

impl AbortedTransactions {
    pub fn new(listed: &[AbortedTransaction]) -> AbortedTransactions {
        let mut pending: Vec<(i64, i64)> = listed
            .iter()
            .map(|a| (a.first_offset, a.producer_id.0))
            .collect();
        pending.sort_unstable_by(|a, b| b.cmp(a));
        AbortedTransactions {
            pending,
            aborting: Default::default(),
        }
    }

    /// Whether `batch` (with header `info`) is to be dropped: a transactional batch of an
    /// aborted transaction. An ABORT marker ends its producer's aborted transaction (the
    /// marker itself is a control batch, skipped anyway).
    pub fn drops(&mut self, info: &BatchInfo, batch: &[u8]) -> bool {
        if info.producer_id < 0 {
            return false;
        }
        while let Some(&(first, producer)) = self.pending.last() {
            if first > info.last_offset() {
                break;
            }
            self.aborting.insert(producer);
            self.pending.pop();
        }
        if info.is_control() {
            if let Ok(ControlBatch {
                content: ControlContent::EndTxn(marker),
                ..
            }) = decode_control_batch(batch, MAX_FETCHED_BATCH_BYTES)
            {
                if marker.result == TransactionResult::Abort {
                    self.aborting.remove(&info.producer_id);
                }
            }
            return false;
        }
        info.is_transactional() && self.aborting.contains(&info.producer_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ProducerId;
    use wharf_protocol::batch::{set_base_offset, validate_batch, BatchBuilder};
    use wharf_protocol::txn::control::EndTxnMarker;

    /// A transactional batch of `records` records of `producer` at `base_offset`.
    fn data(producer: i64, base_offset: i64, records: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new()
            .base_offset(base_offset)
            .producer(producer, 0, 0)
            .transactional(true);
        for _ in 0..records {
            b.push(None, Some(b"v"), &[], 1);
        }
        b.build()
    }

    /// A batch of a producer without id (not idempotent) at `base_offset`.
    fn plain(base_offset: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new().base_offset(base_offset);
        b.push(None, Some(b"v"), &[], 1);
        b.build()
    }

    fn marker(producer: i64, offset: i64, result: TransactionResult) -> Vec<u8> {
        let mut batch = EndTxnMarker {
            result,
            coordinator_epoch: 0,
        }
        .to_batch(producer, 0, 1);
        assert!(set_base_offset(&mut batch, offset));
        batch
    }

    fn aborted(list: &[(i64, i64)]) -> AbortedTransactions {
        let listed: Vec<AbortedTransaction> = list
            .iter()
            .map(|(producer, first)| {
                let mut a = AbortedTransaction::default();
                a.producer_id = ProducerId(*producer);
                a.first_offset = *first;
                a
            })
            .collect();
        AbortedTransactions::new(&listed)
    }

    /// Which batches of `log` a read_committed consumer keeps, by base offset.
    fn kept(log: &[Vec<u8>], filter: &mut AbortedTransactions) -> Vec<i64> {
        log.iter()
            .filter_map(|batch| {
                let info = validate_batch(batch, 1 << 20).unwrap();
                let dropped = filter.drops(&info, batch);
                (!dropped && !info.is_control()).then_some(info.base_offset)
            })
            .collect()
    }

    #[test]
    fn read_committed_drops_aborted_transactions_up_to_their_abort_marker() {
        use TransactionResult::{Abort, Commit};
        // Producers 7 and 8 interleave: 7 aborts a transaction at 0-4 (marker 7), commits
        // one at 8-9 (marker 10); 8 commits 5-6 (marker 11) and aborts 12 (marker 13).
        let log = vec![
            data(7, 0, 3),
            data(7, 3, 2),
            data(8, 5, 2),
            marker(7, 7, Abort),
            data(7, 8, 2),
            marker(7, 10, Commit),
            marker(8, 11, Commit),
            data(8, 12, 1),
            marker(8, 13, Abort),
            plain(14),
        ];
        let mut filter = aborted(&[(7, 0), (8, 12)]);
        assert_eq!(kept(&log, &mut filter), vec![5, 8, 14]);
        // read_uncommitted answers list no aborted transactions: everything is kept.
        assert_eq!(kept(&log, &mut aborted(&[])), vec![0, 3, 5, 8, 12, 14]);
    }
}
