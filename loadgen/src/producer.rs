//! One producer: one connection to one partition leader, pipelined Produce requests.
//!
//! Records are appended to per-partition batches like Kafka's producer does (sticky
//! partition without keys, murmur2 of the key with keys); a batch is sent when it is full,
//! when it has waited `linger` (open loop only: closed loop sends full batches), or at the
//! end of the run, and only while fewer than `in_flight` requests are outstanding. Each record remembers its intended send time (open
//! loop: its slot in the rate schedule; closed loop: when it was created), and its latency
//! is acknowledgement time minus that.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
use kafka_protocol::protocol::HeaderVersion;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wharf_protocol::batch::{
    BatchBuilder, BATCH_HEADER_BYTES, CRC_COVERED_FROM, LOG_OVERHEAD_BYTES,
};

use crate::cli::CompressionArg;
use crate::conn::{decode_response, Conn, Frame};
use crate::idempotence::{init_producer_id, Sequencer, TRANSACTION_TIMEOUT_MS};
use crate::keys::{key_bytes, partition_for_key, KeySampler, KEY_BYTES};
use crate::payload::{write_stamp, Payloads};
use crate::produce_request::{put_partition_head, put_produce_head, PRODUCE_VERSIONS};
use crate::run::{Shared, Workload};
use crate::schedule::{Clock, RateSchedule};
use crate::stats::{kafka_error_name, Stats};
use crate::transaction::{transactional_id, Transactions};

/// Bytes of records a producer holds before it stops taking new ones (Kafka's
/// `buffer.memory` default). Open-loop records that wait for room keep their intended send
/// time, so the wait shows in their latency.
pub const MAX_BUFFERED_BYTES: usize = 32 << 20;
/// Per-record overhead estimate (length, attributes, deltas, lengths, header count).
const RECORD_OVERHEAD_BYTES: usize = 16;
const ATTR_COMPRESSION_MASK: i16 = 0x07;

struct OpenBatch {
    builder: BatchBuilder,
    records: u64,
    payload_bytes: u64,
    first_intended_ns: u64,
    intended: Vec<u64>,
    full: bool,
}

struct SentBatch {
    partition: i32,
    records: u64,
    payload_bytes: u64,
    batch_bytes: u64,
    intended: Vec<u64>,
}

struct InFlight {
    correlation_id: i32,
    expects_response: bool,
    /// When the request was queued: with acks != 0 it must be answered within the Produce
    /// timeout plus the drain timeout, or the broker is taken to have stopped answering.
    sent_ns: u64,
    batches: Vec<SentBatch>,
}

pub struct Producer {
    conn: Conn,
    version: i16,
    workload: Rc<Workload>,
    shared: std::sync::Arc<Shared>,
    clock: Clock,
    topic: TopicName,
    partitions: Vec<i32>,
    queues: Vec<VecDeque<OpenBatch>>,
    sticky: usize,
    keys: KeySampler,
    payloads: Payloads,
    scratch: Vec<u8>,
    schedule: Option<RateSchedule>,
    index: usize,
    budget: Option<u64>,
    buffered_bytes: usize,
    buffered_records: u64,
    in_flight: VecDeque<InFlight>,
    spare_intended: Vec<Vec<u64>>,
    spare_builders: Vec<BatchBuilder>,
    ready: Vec<(usize, OpenBatch)>,
    stats: Rc<RefCell<Stats>>,
    /// `--idempotent`: producer id, epoch and each partition's next sequence.
    sequencer: Option<Sequencer>,
    /// `--idempotent`: the error the broker answered InitProducerId with; this producer
    /// then sends nothing and counts the error once.
    init_refused: Option<String>,
    /// `--transactional`: the coordinator and the transaction under way.
    txn: Option<TxnState>,
}

/// A transactional producer's transactions: one at a time, each of `records_per_txn`
/// records (fewer for the last one of the run).
struct TxnState {
    ctl: Transactions,
    records_per_txn: u64,
    abort_ratio: f64,
    rng: SmallRng,
    /// Records the transaction under way may still take.
    room: u64,
    /// AddPartitionsToTxn succeeded and EndTxn has not been sent: a transaction is open.
    open: bool,
    /// Records of this transaction the broker acknowledged.
    acked: u64,
    /// A batch of this transaction was refused: it is aborted, not committed.
    failed: bool,
}

impl Producer {
    /// Connects and prepares producer `index` for `partitions` (all led by `leader`).
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        index: usize,
        leader: std::net::SocketAddr,
        partitions: Vec<i32>,
        budget: Option<u64>,
        workload: Rc<Workload>,
        shared: std::sync::Arc<Shared>,
        clock: Clock,
        stats: Rc<RefCell<Stats>>,
    ) -> anyhow::Result<Producer> {
        anyhow::ensure!(!partitions.is_empty(), "producer {index} has no partitions");
        let mut conn = Conn::connect(leader, &workload.client_id).await?;
        let version = conn.version(ApiKey::Produce, PRODUCE_VERSIONS)?;
        let seed = workload.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut txn = None;
        let (sequencer, init_refused) = if let Some(settings) = &workload.transactions {
            let timeout = Duration::from_millis(workload.request_timeout_ms.max(0) as u64);
            let id = transactional_id(&settings.transactional_id_prefix, workload.seed, index);
            match Transactions::init(
                &mut conn,
                &workload.client_id,
                id,
                settings.transaction_timeout_ms,
                timeout,
            )
            .await?
            {
                Ok(ctl) => {
                    let sequencer =
                        Sequencer::new(ctl.identity(), partitions.len()).transactional();
                    txn = Some(TxnState {
                        ctl,
                        records_per_txn: settings.records_per_txn,
                        abort_ratio: settings.abort_ratio,
                        rng: SmallRng::seed_from_u64(seed.rotate_left(17)),
                        room: settings.records_per_txn,
                        open: false,
                        acked: 0,
                        failed: false,
                    });
                    (Some(sequencer), None)
                }
                Err(error) => (None, Some(error)),
            }
        } else if workload.idempotent {
            let timeout = Duration::from_millis(workload.request_timeout_ms.max(0) as u64);
            match init_producer_id(&mut conn, None, TRANSACTION_TIMEOUT_MS, timeout).await? {
                Ok(identity) => (Some(Sequencer::new(identity, partitions.len())), None),
                Err((_, name)) => (None, Some(format!("{name} (InitProducerId)"))),
            }
        } else {
            (None, None)
        };
        Ok(Producer {
            conn,
            version,
            topic: crate::admin::topic_name(&workload.topic),
            queues: partitions.iter().map(|_| VecDeque::new()).collect(),
            sticky: index % partitions.len(),
            partitions,
            keys: KeySampler::new(&workload.keys, seed)?,
            payloads: Payloads::new(workload.record_size, seed),
            scratch: Vec::with_capacity(workload.record_size.max),
            schedule: None,
            index,
            budget,
            buffered_bytes: 0,
            buffered_records: 0,
            in_flight: VecDeque::with_capacity(workload.in_flight),
            spare_intended: Vec::new(),
            spare_builders: Vec::new(),
            ready: Vec::new(),
            workload,
            shared,
            clock,
            stats,
            sequencer,
            init_refused,
            txn,
        })
    }

    /// Produces with the run's timing in `workload` until the stop time (or the record
    /// budget), then waits for every answer up to the drain timeout. Errors are counted in
    /// the stats, not returned: a producer whose connection breaks stops, and the run
    /// reports it.
    pub async fn run_with(mut self, workload: Rc<Workload>) {
        self.schedule = workload.rate.map(|rate| {
            RateSchedule::new(
                rate,
                workload.total_producers,
                self.index,
                workload.start_ns,
            )
        });
        self.workload = workload;
        self.run().await
    }

    async fn run(&mut self) {
        if let Some(error) = self.init_refused.take() {
            return self.refused_at_init(&error).await;
        }
        let stop_ns = self.workload.stop_ns;
        let mut hard_stop_ns = stop_ns.saturating_add(self.workload.drain_ns);
        let mut draining = false;
        loop {
            let now = self.clock.now_ns();
            let generating = self.budget != Some(0)
                && match &self.schedule {
                    // Open loop: every record scheduled before the stop time is sent, however
                    // late this producer gets to it; dropping the ones it fell behind on
                    // would hide exactly the stalls an open loop is there to show.
                    Some(s) => s.peek_ns() < stop_ns,
                    None => now < stop_ns,
                };
            if !generating && !draining {
                // Done taking records (time or budget): answers are due within the drain timeout.
                draining = true;
                hard_stop_ns = hard_stop_ns.min(now.saturating_add(self.workload.drain_ns));
            }
            // A transaction takes --records-per-txn records; then it is ended (below) before
            // the next one begins.
            let generating = generating && self.txn.as_ref().is_none_or(|t| t.room > 0);
            if generating && self.txn.as_ref().is_some_and(|t| !t.open) {
                if let Err(e) = self.begin_txn().await {
                    return self.fail(&e);
                }
                continue; // time has passed: look again
            }
            if generating {
                self.generate(now);
            }
            // The budget (or the transaction's room) may have run out just now: then the last
            // partial batches go too.
            let generating = generating
                && self.budget != Some(0)
                && self.txn.as_ref().is_none_or(|t| t.room > 0);
            while self.in_flight.len() < self.workload.in_flight {
                match self.send_ready(now, !generating) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return self.fail(&format!("cannot encode Produce: {e:#}")),
                }
            }
            let quiet = self.in_flight.is_empty()
                && self.buffered_records == 0
                && self.conn.unsent_bytes() == 0;
            if !generating && quiet && self.txn.as_ref().is_some_and(|t| t.open) {
                // Every record of the transaction is answered: end it.
                if let Err(e) = self.end_txn().await {
                    return self.fail(&e);
                }
                continue;
            }
            if !generating && quiet {
                break;
            }
            if now >= hard_stop_ns {
                return self.fail("NO_ANSWER_BEFORE_DRAIN_TIMEOUT");
            }
            // A broker that stopped answering (frozen, or its host gone without a reset)
            // would otherwise hold a run bounded only by --records forever.
            if self.oldest_answer_due().is_some_and(|due| now >= due) {
                return self.fail("NO_ANSWER_WITHIN_REQUEST_TIMEOUT");
            }
            let deadline = self.next_deadline(now, generating, hard_stop_ns);
            let unacknowledged = self.in_flight.iter().any(|f| !f.expects_response);
            if let Err(e) = self
                .conn
                .wait_for(Some(self.clock.instant(deadline)), unacknowledged)
                .await
            {
                return self.fail(&format!("connection to {}: {e:#}", self.conn.peer()));
            }
            let now = self.clock.now_ns();
            loop {
                match self.conn.take_frame() {
                    Ok(Some(frame)) => self.on_response(frame, now),
                    Ok(None) => break,
                    Err(e) => {
                        return self.fail(&format!("connection to {}: {e:#}", self.conn.peer()))
                    }
                }
            }
            if self.conn.unsent_bytes() == 0 {
                self.complete_unacknowledged(now);
            }
        }
        self.shared.producers_done.fetch_add(1, Ordering::Release);
    }

    /// Starts a transaction: adds this producer's partitions to it. Err: what to count.
    async fn begin_txn(&mut self) -> Result<(), String> {
        let t = self.txn.as_mut().expect("a transactional producer");
        match t.ctl.add_partitions(&self.topic, &self.partitions).await {
            Err(e) => Err(format!("AddPartitionsToTxn: {e:#}")),
            Ok(Err(refused)) => Err(refused),
            Ok(Ok(retries)) => {
                self.stats.borrow_mut().txn_add_partitions_retries += retries;
                t.open = true;
                t.room = t.records_per_txn;
                t.acked = 0;
                t.failed = false;
                Ok(())
            }
        }
    }

    /// Ends the open transaction once all its Produce requests are answered: aborts it if a
    /// batch was refused or (--abort-ratio) by chance, commits it otherwise, and counts it
    /// with the EndTxn round trip. Err: what to count.
    async fn end_txn(&mut self) -> Result<(), String> {
        let t = self.txn.as_mut().expect("a transactional producer");
        let by_chance = t.abort_ratio > 0.0 && t.rng.random_bool(t.abort_ratio);
        let commit = !(t.failed || by_chance);
        let sent_ns = self.clock.now_ns();
        let result = t.ctl.end(commit).await;
        let now = self.clock.now_ns();
        match result {
            Err(e) => Err(format!("EndTxn: {e:#}")),
            Ok(Err(refused)) => Err(refused),
            Ok(Ok(())) => {
                let mut stats = self.stats.borrow_mut();
                if commit {
                    stats.txn_committed += 1;
                    stats.txn_committed_records += t.acked;
                    stats
                        .commit_latency
                        .saturating_record(now.saturating_sub(sent_ns).max(1));
                } else {
                    stats.txn_aborted += 1;
                    stats.txn_aborted_records += t.acked;
                }
                stats.last_event_ns = stats.last_event_ns.max(now);
                t.open = false;
                t.room = t.records_per_txn;
                t.acked = 0;
                t.failed = false;
                Ok(())
            }
        }
    }

    /// When the oldest request that expects an answer is overdue: the Produce timeout the
    /// broker was given, plus the drain timeout for the answer to arrive (as the consumer
    /// allows a fetch its max wait plus the drain timeout).
    fn oldest_answer_due(&self) -> Option<u64> {
        let allowance = (self.workload.request_timeout_ms.max(0) as u64)
            .saturating_mul(1_000_000)
            .saturating_add(self.workload.drain_ns);
        self.in_flight
            .iter()
            .find(|f| f.expects_response)
            .map(|f| f.sent_ns.saturating_add(allowance))
    }

    fn next_deadline(&self, now: u64, generating: bool, hard_stop_ns: u64) -> u64 {
        let mut deadline = hard_stop_ns;
        if let Some(due) = self.oldest_answer_due() {
            deadline = deadline.min(due);
        }
        if generating && now < self.workload.stop_ns {
            deadline = deadline.min(self.workload.stop_ns);
        }
        if self.in_flight.len() < self.workload.in_flight {
            if let (true, Some(s)) = (generating, &self.schedule) {
                if self.buffered_bytes < MAX_BUFFERED_BYTES {
                    deadline = deadline.min(s.peek_ns());
                }
            }
            for q in self.queues.iter().filter(|_| self.schedule.is_some()) {
                if let Some(b) = q.front() {
                    deadline =
                        deadline.min(b.first_intended_ns.saturating_add(self.workload.linger_ns));
                }
            }
        }
        deadline.max(now)
    }

    /// Takes the records that are due: open loop, every record whose intended time has
    /// come; closed loop, enough records to fill a batch when a request slot is free.
    fn generate(&mut self, now: u64) {
        let timestamp_ms = wall_clock_ms();
        if self.schedule.is_some() {
            while self.buffered_bytes < MAX_BUFFERED_BYTES
                && self.budget != Some(0)
                && self.txn_room()
            {
                let Some(s) = self.schedule.as_mut() else {
                    break;
                };
                let t = s.peek_ns();
                if t > now || t >= self.workload.stop_ns {
                    break;
                }
                s.take_due(now);
                self.append(t, timestamp_ms);
            }
        } else if self.in_flight.len() < self.workload.in_flight {
            while self.buffered_bytes < MAX_BUFFERED_BYTES
                && self.budget != Some(0)
                && self.txn_room()
            {
                if self.append(now, timestamp_ms) {
                    break;
                }
            }
        }
    }

    /// Whether the transaction under way (if any) takes more records.
    fn txn_room(&self) -> bool {
        self.txn.as_ref().is_none_or(|t| t.room > 0)
    }

    /// Appends one record intended at `intended_ns`; true if that closed a batch.
    fn append(&mut self, intended_ns: u64, timestamp_ms: i64) -> bool {
        if let Some(b) = self.budget.as_mut() {
            *b -= 1;
        }
        if let Some(t) = self.txn.as_mut() {
            t.room -= 1;
        }
        let key = self.keys.next_index().map(key_bytes);
        let mut value = self.payloads.next_value();
        if let Some(run_id) = self.workload.run_id {
            self.scratch.clear();
            self.scratch.extend_from_slice(value);
            write_stamp(&mut self.scratch, run_id, intended_ns);
            value = &self.scratch;
        }
        let record_bytes = value.len() + if key.is_some() { KEY_BYTES } else { 0 };
        let batch_size = self.workload.batch_size;
        let fits = |b: &OpenBatch| {
            !b.full
                && (b.records == 0
                    || b.builder.encoded_len() + record_bytes + RECORD_OVERHEAD_BYTES <= batch_size)
        };
        let mut closed = false;
        let slot = match &key {
            Some(k) => partition_for_key(k, self.partitions.len()),
            None => {
                // Sticky partitioner (KIP-480): stay on one partition until its batch is full.
                if let Some(b) = self.queues[self.sticky].back_mut() {
                    if !fits(b) {
                        closed |= !b.full;
                        b.full = true;
                        self.sticky = (self.sticky + 1) % self.partitions.len();
                    }
                }
                self.sticky
            }
        };
        let queue = &mut self.queues[slot];
        let need_new = match queue.back_mut() {
            None => true,
            Some(b) if fits(b) => false,
            Some(b) => {
                closed |= !b.full;
                b.full = true;
                true
            }
        };
        if need_new {
            let mut intended = self.spare_intended.pop().unwrap_or_default();
            intended.clear();
            queue.push_back(OpenBatch {
                builder: self.spare_builders.pop().unwrap_or_default(),
                records: 0,
                payload_bytes: 0,
                first_intended_ns: intended_ns,
                intended,
                full: false,
            });
        }
        let batch = queue.back_mut().expect("a batch was just ensured");
        batch.builder.push(
            key.as_ref().map(|k| k.as_slice()),
            Some(value),
            &[],
            timestamp_ms,
        );
        batch.records += 1;
        batch.payload_bytes += record_bytes as u64;
        batch.intended.push(intended_ns);
        self.buffered_bytes += record_bytes + RECORD_OVERHEAD_BYTES;
        self.buffered_records += 1;
        closed
    }

    /// Sends one Produce request with every ready batch (at most one per partition); false
    /// if no batch is ready.
    fn send_ready(&mut self, now: u64, flush: bool) -> anyhow::Result<bool> {
        let linger_ns = self.workload.linger_ns;
        let open_loop = self.schedule.is_some();
        let mut ready = std::mem::take(&mut self.ready);
        for (slot, queue) in self.queues.iter_mut().enumerate() {
            // Closed loop sends full batches only: records are generated when a request slot
            // is free, so a partly filled batch would only be the overflow of the last one.
            // Open loop follows linger.ms: a batch goes once it has waited that long.
            let is_ready = match queue.front() {
                None => false,
                Some(b) => {
                    b.full
                        || flush
                        || queue.len() > 1
                        || (open_loop && now >= b.first_intended_ns.saturating_add(linger_ns))
                }
            };
            if !is_ready {
                continue;
            }
            let b = queue.pop_front().expect("front exists");
            self.buffered_bytes -=
                (b.payload_bytes as usize) + RECORD_OVERHEAD_BYTES * b.records as usize;
            self.buffered_records -= b.records;
            if self.sticky == slot && !b.full {
                // Kafka's sticky partitioner moves on once a batch is sent.
                self.sticky = (slot + 1) % self.partitions.len();
            }
            ready.push((slot, b));
        }
        if ready.is_empty() {
            self.ready = ready;
            return Ok(false);
        }
        if let Some(sequencer) = &mut self.sequencer {
            // Sequences follow the order batches go out on this connection (KIP-98).
            for (slot, b) in ready.iter_mut() {
                sequencer.stamp(*slot, &mut b.builder);
            }
        }
        let compressed = match self.workload.compression {
            CompressionArg::None => Vec::new(),
            c => ready
                .iter()
                .map(|(_, b)| encode_batch(&b.builder, c))
                .collect::<anyhow::Result<Vec<Bytes>>>()?,
        };
        let (partitions, w) = (&self.partitions, &self.workload);
        let transactional_id = self.txn.as_ref().map(|t| t.ctl.transactional_id());
        let acks = w.acks.wire();
        let correlation_id = self.conn.enqueue_with(
            ApiKey::Produce as i16,
            self.version,
            ProduceRequest::header_version(self.version),
            |buf| {
                put_produce_head(
                    buf,
                    self.version,
                    transactional_id,
                    acks,
                    w.request_timeout_ms,
                    &w.topic,
                    ready.len(),
                )?;
                for (i, (slot, b)) in ready.iter().enumerate() {
                    match compressed.get(i) {
                        Some(bytes) => {
                            put_partition_head(buf, partitions[*slot], bytes.len())?;
                            buf.extend_from_slice(bytes);
                        }
                        None => {
                            put_partition_head(buf, partitions[*slot], b.builder.encoded_len())?;
                            b.builder.encode_into(buf);
                        }
                    }
                }
                Ok(())
            },
        )?;
        let mut sent = Vec::with_capacity(ready.len());
        for (i, (slot, mut b)) in ready.drain(..).enumerate() {
            let batch_bytes = compressed
                .get(i)
                .map(|c| c.len())
                .unwrap_or_else(|| b.builder.encoded_len());
            sent.push(SentBatch {
                partition: self.partitions[slot],
                records: b.records,
                payload_bytes: b.payload_bytes,
                batch_bytes: batch_bytes as u64,
                intended: b.intended,
            });
            b.builder.clear();
            self.spare_builders.push(b.builder);
        }
        self.ready = ready;
        self.in_flight.push_back(InFlight {
            correlation_id,
            expects_response: acks != 0,
            sent_ns: now,
            batches: sent,
        });
        Ok(true)
    }

    fn on_response(&mut self, frame: Frame, now: u64) {
        let Some(pos) = self
            .in_flight
            .iter()
            .position(|f| f.expects_response && f.correlation_id == frame.correlation_id)
        else {
            self.stats
                .borrow_mut()
                .record_error("RESPONSE_WITH_UNKNOWN_CORRELATION_ID", 0);
            return;
        };
        let in_flight = self.in_flight.remove(pos).expect("position is in range");
        let response = decode_response::<ProduceRequest>(frame.bytes, self.version);
        let mut stats = self.stats.borrow_mut();
        let mut acked = 0;
        let mut failed = false;
        for batch in in_flight.batches {
            let code = match &response {
                Err(_) => None,
                Ok(r) => r
                    .responses
                    .iter()
                    .filter(|t| t.name == self.topic)
                    .flat_map(|t| t.partition_responses.iter())
                    .find(|p| p.index == batch.partition)
                    .map(|p| p.error_code),
            };
            match (code, &response) {
                (None, Err(e)) => {
                    stats.record_error(
                        &format!("UNDECODABLE_PRODUCE_RESPONSE ({e:#})"),
                        batch.records,
                    );
                    failed = true;
                }
                (Some(0), _) => {
                    for t in &batch.intended {
                        stats.record_produce_latency(now.saturating_sub(*t));
                    }
                    stats.produced_records += batch.records;
                    stats.produced_bytes += batch.payload_bytes;
                    stats.produced_batch_bytes += batch.batch_bytes;
                    acked += batch.records;
                }
                (Some(code), _) => {
                    stats.record_error(&kafka_error_name(code), batch.records);
                    failed = true;
                }
                (None, Ok(_)) => {
                    stats.record_error("PARTITION_MISSING_FROM_PRODUCE_RESPONSE", batch.records);
                    failed = true;
                }
            }
            self.spare_intended.push(batch.intended);
        }
        stats.produce_requests += 1;
        stats.last_event_ns = stats.last_event_ns.max(now);
        drop(stats);
        if let Some(t) = self.txn.as_mut() {
            t.acked += acked;
            t.failed |= failed;
        }
        self.shared.produced.fetch_add(acked, Ordering::Relaxed);
    }

    /// acks=0: a request counts as done once it is written to the socket.
    fn complete_unacknowledged(&mut self, now: u64) {
        while let Some(pos) = self.in_flight.iter().position(|f| !f.expects_response) {
            let in_flight = self.in_flight.remove(pos).expect("position is in range");
            let mut stats = self.stats.borrow_mut();
            let mut done = 0;
            for batch in in_flight.batches {
                for t in &batch.intended {
                    stats.record_produce_latency(now.saturating_sub(*t));
                }
                stats.produced_records += batch.records;
                stats.produced_bytes += batch.payload_bytes;
                stats.produced_batch_bytes += batch.batch_bytes;
                done += batch.records;
                self.spare_intended.push(batch.intended);
            }
            stats.produce_requests += 1;
            stats.last_event_ns = stats.last_event_ns.max(now);
            drop(stats);
            self.shared.produced.fetch_add(done, Ordering::Relaxed);
        }
    }

    /// The broker refused InitProducerId: there is nothing to send idempotently. The error
    /// is counted once the warm-up is over, so that it shows in the measured results.
    async fn refused_at_init(&mut self, error: &str) {
        glommio::timer::sleep(
            self.clock
                .instant(self.workload.warmup_end_ns)
                .saturating_duration_since(std::time::Instant::now()),
        )
        .await;
        let now = self.clock.now_ns();
        let mut stats = self.stats.borrow_mut();
        stats.record_error(error, 0);
        stats.last_event_ns = stats.last_event_ns.max(now);
        drop(stats);
        self.shared.producers_done.fetch_add(1, Ordering::Release);
    }

    /// Counts everything outstanding as lost to `error` and stops this producer.
    fn fail(&mut self, error: &str) {
        let outstanding: u64 = self
            .in_flight
            .iter()
            .flat_map(|f| f.batches.iter())
            .map(|b| b.records)
            .sum();
        self.stats
            .borrow_mut()
            .record_error(error, outstanding + self.buffered_records);
        self.in_flight.clear();
        self.queues.iter_mut().for_each(VecDeque::clear);
        self.buffered_records = 0;
        self.shared.producers_done.fetch_add(1, Ordering::Release);
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Encodes the batch, compressing its records section if asked.
pub fn encode_batch(builder: &BatchBuilder, compression: CompressionArg) -> anyhow::Result<Bytes> {
    let plain = builder.build();
    let codec: i16 = match compression {
        CompressionArg::None => return Ok(Bytes::from(plain)),
        CompressionArg::Gzip => 1,
        CompressionArg::Snappy => 2,
        CompressionArg::Lz4 => 3,
        CompressionArg::Zstd => 4,
    };
    let records = &plain[BATCH_HEADER_BYTES..];
    let mut out = BytesMut::with_capacity(plain.len());
    out.put_slice(&plain[..BATCH_HEADER_BYTES]);
    let copy = |tmp: &mut BytesMut| -> anyhow::Result<()> {
        tmp.put_slice(records);
        Ok(())
    };
    match compression {
        CompressionArg::Gzip => Gzip::compress(&mut out, copy),
        CompressionArg::Snappy => Snappy::compress(&mut out, copy),
        CompressionArg::Lz4 => Lz4::compress(&mut out, copy),
        CompressionArg::Zstd => Zstd::compress(&mut out, copy),
        CompressionArg::None => Ok(()),
    }
    .context("compressing a batch")?;
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD_BYTES).context("batch too large")?;
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[21], out[22]]) & !ATTR_COMPRESSION_MASK | codec;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_COVERED_FROM..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;
    use wharf_protocol::batch::validate_batch;

    fn sample_builder() -> BatchBuilder {
        let mut b = BatchBuilder::new();
        for i in 0..50u8 {
            b.push(
                Some(&[i; 4]),
                Some(&[i; 100]),
                &[],
                1_700_000_000_000 + i as i64,
            );
        }
        b
    }

    #[test]
    fn a_reused_builder_encodes_like_a_fresh_one() {
        let mut reused = sample_builder();
        reused.clear();
        let mut fresh = BatchBuilder::new();
        for b in [&mut reused, &mut fresh] {
            b.push(None, Some(b"second batch"), &[], 42);
        }
        assert_eq!(reused.build(), fresh.build());
    }

    #[test]
    fn compressed_batches_are_valid_and_decode_to_the_same_records() {
        for compression in [
            CompressionArg::None,
            CompressionArg::Gzip,
            CompressionArg::Snappy,
            CompressionArg::Lz4,
            CompressionArg::Zstd,
        ] {
            let bytes = encode_batch(&sample_builder(), compression).unwrap();
            let info = validate_batch(&bytes, 1 << 20)
                .unwrap_or_else(|e| panic!("{compression:?}: {e:?}"));
            assert_eq!(info.records_count, 50);
            let mut buf = bytes.clone();
            let set = RecordBatchDecoder::decode(&mut buf).unwrap();
            assert_eq!(set.records.len(), 50, "{compression:?}");
            assert_eq!(set.records[7].value.as_deref(), Some(&[7u8; 100][..]));
            assert_eq!(set.records[7].key.as_deref(), Some(&[7u8; 4][..]));
            if compression != CompressionArg::None {
                assert!(
                    bytes.len() < sample_builder().encoded_len(),
                    "{compression:?} shrinks repeated bytes"
                );
            }
        }
    }
}
