//! The metadata quorum: raft-rs's `RawNode` over the [`LogStore`], used the way raft-rs 0.7
//! asks (its `five_mem_node` example): messages in through [`Quorum::step`], time through
//! [`Quorum::tick`], proposals through [`Quorum::propose`]; then each [`Quorum::ready`]
//! hands out what to send at once, what to apply, and the writes to make durable before the
//! rest is sent and [`Quorum::advance`] is called. No I/O, no clock, no threads here.
//!
//! Consensus itself is raft-rs's. What this wrapper adds:
//! - the voter set is static (`controller.quorum.voters`); no configuration changes;
//! - pre-vote and check-quorum are on, so a leader cut off from the majority steps down
//!   (and its pending proposals are failed by the controller) instead of hanging;
//! - election timeouts are drawn from a seeded generator instead of raft-rs's thread-local
//!   one, so a simulator replays the same elections from the same seed.

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, Snapshot};
use raft::{RawNode, StateRole};

use crate::controller::log_store::{DiskOp, LogStore};
use crate::controller::rng::Rng;

/// How the quorum is tuned. Ticks are the driver's: one every [`TICK_MS`] in the broker.
#[derive(Clone, Debug)]
pub struct QuorumConfig {
    pub node_id: u64,
    pub voters: Vec<u64>,
    /// A follower starts an election after `election_tick..2*election_tick` ticks without
    /// hearing from a leader; a leader steps down after `election_tick` ticks without a
    /// majority (check quorum).
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// The last index already applied to the image this node starts from (its snapshot).
    pub applied: u64,
    /// Entries bytes per append message (at least one entry is always sent).
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Proposed but uncommitted entry bytes a leader accepts before refusing proposals.
    pub max_uncommitted_size: u64,
}

/// Milliseconds per Raft tick in the broker: elections after 1–2 s of silence (Kafka's
/// `controller.quorum.election.timeout.ms` is 1000), heartbeats every 200 ms.
pub const TICK_MS: i64 = 100;

impl QuorumConfig {
    pub fn new(node_id: u64, voters: Vec<u64>, applied: u64) -> QuorumConfig {
        QuorumConfig {
            node_id,
            voters,
            election_tick: 10,
            heartbeat_tick: 2,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 64,
            max_uncommitted_size: 64 * 1024 * 1024,
        }
    }
}

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader of the metadata quorum")]
    NotLeader,
    #[error("the metadata quorum leader dropped the proposal (too much uncommitted data, or a leader transfer)")]
    Dropped,
}

/// Why a message was not stepped into Raft.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("raft refused the message: {0}")]
pub struct StepError(pub String);

/// One Ready's work, in the order it must be done: send `messages`, install `snapshot`,
/// apply `committed`, make `writes` durable, send `persisted_messages`, then `advance`.
#[derive(Debug, Default)]
pub struct QuorumReady {
    /// May leave before the writes are durable (a leader's appends: Raft thesis 10.2.1).
    pub messages: Vec<Message>,
    /// A snapshot from the leader: the image must be rebuilt from its data.
    pub snapshot: Option<Snapshot>,
    /// Committed entries, in order, already durable here.
    pub committed: Vec<Entry>,
    /// Writes to complete before `persisted_messages` are sent and `advance` is called.
    pub writes: Vec<DiskOp>,
    /// Votes and append acknowledgements: they promise what `writes` make durable.
    pub persisted_messages: Vec<Message>,
}

/// What [`Quorum::advance`] adds: more messages, more committed entries, and an unsynced
/// record of the new commit index.
#[derive(Debug, Default)]
pub struct QuorumAdvance {
    pub messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub writes: Vec<DiskOp>,
}

/// A node's view of the quorum, for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumStatus {
    pub term: u64,
    pub leader: Option<u64>,
    pub role: StateRole,
    pub commit: u64,
    pub last_index: u64,
}

pub struct Quorum {
    raw: RawNode<LogStore>,
    rng: Rng,
    min_election_tick: usize,
    max_election_tick: usize,
    /// (term, role) when the election timeout was last drawn.
    drawn_for: (u64, StateRole),
    in_ready: Option<raft::Ready>,
}

impl Quorum {
    pub fn new(
        config: &QuorumConfig,
        store: LogStore,
        rng: Rng,
        logger: &slog::Logger,
    ) -> Result<Quorum, raft::Error> {
        let raft_config = raft::Config {
            id: config.node_id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied: config.applied,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: config.max_uncommitted_size,
            ..raft::Config::default()
        };
        let raw = RawNode::new(&raft_config, store, logger)?;
        let mut quorum = Quorum {
            min_election_tick: raft_config.min_election_tick(),
            max_election_tick: raft_config.max_election_tick(),
            raw,
            rng,
            drawn_for: (u64::MAX, StateRole::Follower),
            in_ready: None,
        };
        quorum.draw_election_timeout();
        Ok(quorum)
    }

    /// raft-rs draws a new randomized election timeout (from `thread_rng`) whenever the
    /// term or role changes; overwrite it from our seeded generator at the same moments.
    fn draw_election_timeout(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now != self.drawn_for {
            self.drawn_for = now;
            let t = self
                .rng
                .range(self.min_election_tick as u64, self.max_election_tick as u64);
            self.raw.raft.set_randomized_election_timeout(t as usize);
        }
    }

    fn assert_not_in_ready(&self) {
        assert!(
            self.in_ready.is_none(),
            "raft-rs forbids stepping, ticking or proposing between ready() and advance()"
        );
    }

    pub fn tick(&mut self) {
        self.assert_not_in_ready();
        self.raw.tick();
        self.draw_election_timeout();
    }

    /// The end of this voter's log a heartbeat claims is committed beyond, if it does:
    /// `Some((commit, last_index))`. raft-rs panics on such a heartbeat ("to_commit … is out
    /// of range") once the term lets it through; a voter meets one when its metadata log was
    /// lost or replaced while the others remember what it acknowledged, or when a node of
    /// another cluster reaches its address. It must not be stepped.
    pub fn commit_beyond_log(&self, message: &Message) -> Option<(u64, u64)> {
        let last_index = self.raw.raft.raft_log.last_index();
        let heartbeat = message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat;
        (heartbeat && message.term >= self.raw.raft.term && message.commit > last_index)
            .then_some((message.commit, last_index))
    }

    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.assert_not_in_ready();
        let result = self.raw.step(message);
        self.draw_election_timeout();
        result.map_err(|e| StepError(e.to_string()))
    }

    /// Starts an election at once, as a timeout would. A lone voter need not wait out an
    /// election timeout to lead (it wins its own vote).
    pub fn campaign(&mut self) -> Result<(), StepError> {
        self.assert_not_in_ready();
        let result = self.raw.campaign();
        self.draw_election_timeout();
        result.map_err(|e| StepError(e.to_string()))
    }

    /// The index after the last entry: where the next proposal will go.
    pub fn next_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index() + 1
    }

    /// Proposes one entry; on success its index and term. The entry counts only once it is
    /// committed at that index with that term.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        self.assert_not_in_ready();
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        let index = self.next_index();
        let term = self.raw.raft.term;
        self.raw
            .propose(Vec::new(), data.to_vec())
            .map_err(|_| ProposeError::Dropped)?;
        if self.raw.raft.raft_log.last_index() != index {
            return Err(ProposeError::Dropped);
        }
        Ok((index, term))
    }

    pub fn has_ready(&self) -> bool {
        self.in_ready.is_none() && self.raw.has_ready()
    }

    /// The next Ready's work; `None` if there is none. The log store is updated in memory
    /// at once (Raft reads it back); `writes` make it durable.
    pub fn ready(&mut self) -> Option<QuorumReady> {
        if !self.has_ready() {
            return None;
        }
        let mut rd = self.raw.ready();
        let mut out = QuorumReady {
            messages: rd.take_messages(),
            ..QuorumReady::default()
        };
        let store = self.raw.mut_store();
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            out.writes.extend(store.apply_snapshot(snapshot.clone()));
            out.snapshot = Some(snapshot);
        }
        out.committed = rd.take_committed_entries();
        // The hard state goes first: a crash may keep any prefix of unsynced writes, and a
        // log holding entries of a term the hard state has not reached breaks Raft (the
        // node would answer votes at an older term than its own log's).
        //
        // But its commit index must not run ahead of the entries on disk: when the entries
        // of this Ready replace a conflicting suffix (a new leader overwriting an old one's
        // uncommitted entries), a crash between the two writes would leave the old entries
        // below the recorded commit, and the restarted node would apply them as committed.
        // So the first write keeps the commit index already recorded, and the new one
        // follows the entries.
        let new_commit = rd.hs().map(|hs| hs.commit);
        if let Some(hs) = rd.hs() {
            let mut first = hs.clone();
            if !rd.entries().is_empty() {
                first.commit = first.commit.min(store.hard_state().commit);
            }
            out.writes.extend(store.set_hard_state(first));
        }
        out.writes.extend(store.append(rd.entries()));
        if let Some(commit) = new_commit.filter(|c| *c > store.hard_state().commit) {
            out.writes.extend(store.set_commit(commit));
        }
        if rd.must_sync()
            && out
                .writes
                .iter()
                .any(|w| matches!(w, DiskOp::Append { .. }))
        {
            out.writes.extend(store.sync());
        }
        out.persisted_messages = rd.take_persisted_messages();
        self.in_ready = Some(rd);
        Some(out)
    }

    /// Ends the Ready taken by [`Quorum::ready`], once its writes are durable and its
    /// committed entries applied.
    pub fn advance(&mut self) -> QuorumAdvance {
        let rd = self.in_ready.take().expect("advance() follows ready()");
        let mut light = self.raw.advance(rd);
        let mut out = QuorumAdvance {
            messages: light.take_messages(),
            committed: light.take_committed_entries(),
            writes: Vec::new(),
        };
        if let Some(commit) = light.commit_index() {
            out.writes = self.raw.mut_store().set_commit(commit);
        }
        // The caller applies `committed` before anything else reaches Raft.
        self.raw.advance_apply();
        self.draw_election_timeout();
        out
    }

    /// A snapshot message to `to` was handed to the network. raft-rs pauses replication to
    /// a follower it sent a snapshot until told; reporting at once lets it probe again, and
    /// if the snapshot never arrived the follower's refusal makes the leader send another.
    pub fn report_snapshot_sent(&mut self, to: u64) {
        self.assert_not_in_ready();
        self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
    }

    /// The connection to `to` failed: the leader stops streaming to it and probes.
    pub fn report_unreachable(&mut self, to: u64) {
        self.assert_not_in_ready();
        self.raw.report_unreachable(to);
    }

    pub fn store(&self) -> &LogStore {
        self.raw.store()
    }

    /// Compacts the log at the applied `index` with the image's snapshot `data`.
    pub fn compact(&mut self, index: u64, data: Bytes, keep_entries: u64) -> Vec<DiskOp> {
        self.assert_not_in_ready();
        self.raw.mut_store().compact(index, data, keep_entries)
    }

    pub fn node_id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn leader(&self) -> Option<u64> {
        let id = self.raw.raft.leader_id;
        (id != raft::INVALID_ID).then_some(id)
    }

    /// Each voter's matched index (how much of its log agrees with the leader's), when this
    /// node leads; `None` otherwise (only the leader tracks it).
    pub fn progress(&self) -> Option<Vec<(u64, u64)>> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        let mut out: Vec<(u64, u64)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched))
            .collect();
        out.sort_unstable();
        Some(out)
    }

    pub fn status(&self) -> QuorumStatus {
        QuorumStatus {
            term: self.raw.raft.term,
            leader: self.leader(),
            role: self.raw.raft.state,
            commit: self.raw.raft.raft_log.committed,
            last_index: self.raw.raft.raft_log.last_index(),
        }
    }
}

/// A `slog` drain that forwards raft-rs's log lines to `tracing` (target `raft`), building
/// the line only when tracing wants it.
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use tracing::Level;
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => Level::ERROR,
            slog::Level::Warning => Level::WARN,
            // raft-rs's routine lines (role changes, elections); the broker logs leadership
            // changes itself, once each.
            slog::Level::Info | slog::Level::Debug => Level::DEBUG,
            slog::Level::Trace => Level::TRACE,
        };
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "raft", $level) {
                    let line = format_line(record, values);
                    tracing::event!(target: "raft", $level, "{line}");
                }
            };
        }
        match level {
            Level::ERROR => forward!(Level::ERROR),
            Level::WARN => forward!(Level::WARN),
            Level::INFO => forward!(Level::INFO),
            Level::DEBUG => forward!(Level::DEBUG),
            _ => forward!(Level::TRACE),
        }
        Ok(())
    }
}

fn format_line(record: &slog::Record<'_>, values: &slog::OwnedKVList) -> String {
    use slog::KV;
    struct Line(String);
    impl slog::Serializer for Line {
        fn emit_arguments(
            &mut self,
            key: slog::Key,
            val: &std::fmt::Arguments<'_>,
        ) -> slog::Result {
            use std::fmt::Write;
            let _ = write!(self.0, " {key}={val}");
            Ok(())
        }
    }
    let mut line = Line(record.msg().to_string());
    let _ = record.kv().serialize(record, &mut line);
    let _ = values.serialize(record, &mut line);
    line.0
}

/// The logger raft-rs gets: everything goes to `tracing` (raft-rs tags its lines with the
/// node id itself).
pub fn raft_logger(_node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quorum(id: u64, voters: &[u64], seed: u64) -> Quorum {
        Quorum::new(
            &QuorumConfig::new(id, voters.to_vec(), 0),
            LogStore::new(voters.to_vec()),
            Rng::new(seed),
            &raft_logger(id),
        )
        .unwrap()
    }

    /// Drives a quorum alone: everything synced, nothing sent.
    fn run_ready(q: &mut Quorum) -> Vec<Entry> {
        let mut applied = Vec::new();
        while let Some(rd) = q.ready() {
            applied.extend(rd.committed);
            applied.extend(q.advance().committed);
        }
        applied
    }

    #[test]
    fn a_single_voter_elects_itself_and_commits_its_proposals() {
        let mut q = quorum(1, &[1], 5);
        for _ in 0..30 {
            q.tick();
            run_ready(&mut q);
        }
        assert!(q.is_leader());
        let (index, term) = q.propose(Bytes::from_static(b"hello")).unwrap();
        let applied = run_ready(&mut q);
        let e = applied
            .iter()
            .find(|e| e.index == index)
            .expect("committed");
        assert_eq!((e.term, &e.data[..]), (term, &b"hello"[..]));
        assert_eq!(q.store().hard_state().commit, index);
    }

    #[test]
    fn a_follower_refuses_proposals() {
        let mut q = quorum(1, &[1, 2, 3], 5);
        assert_eq!(
            q.propose(Bytes::from_static(b"x")),
            Err(ProposeError::NotLeader)
        );
    }

    #[test]
    fn election_timeouts_come_from_the_seed() {
        let timeouts = |seed| {
            let q = quorum(1, &[1, 2, 3], seed);
            q.raw.raft.randomized_election_timeout()
        };
        assert_eq!(timeouts(9), timeouts(9));
        let all: std::collections::BTreeSet<usize> = (0..50).map(timeouts).collect();
        assert!(all.len() > 1);
        assert!(all.iter().all(|t| (10..20).contains(t)));
    }
}
