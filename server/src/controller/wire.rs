//! Raft messages between raft-rs's `eraftpb` structs and our flatbuffers frames, field by
//! field. This is how RUSTSEC-2024-0437 (protobuf 2 recursing without bound on untrusted
//! input) is kept out: bytes from the network are only ever read by the flatbuffers
//! verifier and this mapping; protobuf's parsers (`parse_from_bytes`, `merge_from`) are
//! never called, and raft-rs only sees structs built here.
//!
//! Incoming messages are checked before Raft sees them: only network message types, from
//! another voter, to this node, with normal entries only, and a snapshot (if any) for the
//! configured voter set whose records decode.

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use wharf_protocol::controller as wire;

use crate::controller::records::decode_records;

/// Why an incoming Raft message was refused (the peer's connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftWireError {
    #[error("raft message from node {0}, which is not a voter of this quorum")]
    NotAVoter(u64),
    #[error("raft message addressed to node {to}, but this is node {me}")]
    WrongNode { to: u64, me: u64 },
    #[error("raft message of type {0} is not accepted from the network")]
    BadType(u8),
    #[error("raft entry {0} is not a normal entry")]
    BadEntry(u64),
    #[error("raft snapshot refused: {0}")]
    BadSnapshot(String),
    #[error(
        "node {from} says entries up to {commit} of the metadata log are committed here, but \
         this voter's metadata log ends at {last_index}: either this voter's metadata log was \
         lost or replaced, or a node of another cluster reaches this address. This voter \
         takes no part in the metadata quorum until it is restarted (one that forgot what it \
         acknowledged could lose committed metadata); see \"A damaged metadata log\" in \
         docs/cluster.md"
    )]
    CommitBeyondLog {
        from: u64,
        commit: u64,
        last_index: u64,
    },
}

fn message_type(t: u8) -> Option<MessageType> {
    Some(match t {
        3 => MessageType::MsgAppend,
        4 => MessageType::MsgAppendResponse,
        5 => MessageType::MsgRequestVote,
        6 => MessageType::MsgRequestVoteResponse,
        7 => MessageType::MsgSnapshot,
        8 => MessageType::MsgHeartbeat,
        9 => MessageType::MsgHeartbeatResponse,
        13 => MessageType::MsgTransferLeader,
        14 => MessageType::MsgTimeoutNow,
        15 => MessageType::MsgReadIndex,
        16 => MessageType::MsgReadIndexResp,
        17 => MessageType::MsgRequestPreVote,
        18 => MessageType::MsgRequestPreVoteResponse,
        // MsgHup, MsgBeat, MsgPropose, MsgUnreachable, MsgSnapStatus and MsgCheckQuorum
        // are local to a node.
        _ => return None,
    })
}

/// An outgoing message as a frame body.
pub fn to_wire(m: Message) -> wire::RaftMessage {
    let snapshot = (m.get_msg_type() == MessageType::MsgSnapshot).then(|| {
        let s = m.get_snapshot();
        let meta = s.get_metadata();
        let cs = meta.get_conf_state();
        wire::RaftSnapshot {
            index: meta.index,
            term: meta.term,
            conf_state: wire::ConfState {
                voters: cs.voters.clone(),
                learners: cs.learners.clone(),
                voters_outgoing: cs.voters_outgoing.clone(),
                learners_next: cs.learners_next.clone(),
                auto_leave: cs.auto_leave,
            },
            data: s.data.clone(),
        }
    });
    let msg_type = m.get_msg_type() as u8;
    let entries = m
        .entries
        .into_iter()
        .map(|e| wire::RaftEntry {
            entry_type: e.get_entry_type() as u8,
            term: e.term,
            index: e.index,
            data: e.data,
            context: e.context,
        })
        .collect();
    wire::RaftMessage {
        msg_type,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries,
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot,
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context,
        priority: m.priority,
    }
}

/// An incoming frame body as a Raft message for node `me` of `voters`, if it is one Raft
/// may see.
pub fn from_wire(m: wire::RaftMessage, voters: &[u64], me: u64) -> Result<Message, RaftWireError> {
    if !voters.contains(&m.from) || m.from == me {
        return Err(RaftWireError::NotAVoter(m.from));
    }
    if m.to != me {
        return Err(RaftWireError::WrongNode { to: m.to, me });
    }
    let msg_type = message_type(m.msg_type).ok_or(RaftWireError::BadType(m.msg_type))?;
    let mut out = Message::default();
    out.set_msg_type(msg_type);
    out.to = m.to;
    out.from = m.from;
    out.term = m.term;
    out.log_term = m.log_term;
    out.index = m.index;
    out.commit = m.commit;
    out.commit_term = m.commit_term;
    out.request_snapshot = m.request_snapshot;
    out.reject = m.reject;
    out.reject_hint = m.reject_hint;
    out.context = m.context;
    out.priority = m.priority;
    let mut entries = Vec::with_capacity(m.entries.len());
    for e in m.entries {
        if e.entry_type != EntryType::EntryNormal as u8 {
            return Err(RaftWireError::BadEntry(e.index));
        }
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryNormal);
        entry.term = e.term;
        entry.index = e.index;
        entry.data = e.data;
        entry.context = e.context;
        entries.push(entry);
    }
    out.entries = entries.into();
    match (msg_type, m.snapshot) {
        (MessageType::MsgSnapshot, Some(s)) => {
            let cs = &s.conf_state;
            if cs.voters != voters
                || !cs.learners.is_empty()
                || !cs.voters_outgoing.is_empty()
                || !cs.learners_next.is_empty()
            {
                return Err(RaftWireError::BadSnapshot(format!(
                    "it is for voters {:?}, this quorum's are {voters:?}",
                    cs.voters
                )));
            }
            decode_records(&s.data).map_err(|e| RaftWireError::BadSnapshot(e.to_string()))?;
            let mut snapshot = Snapshot::default();
            snapshot.data = s.data;
            let meta = snapshot.mut_metadata();
            meta.index = s.index;
            meta.term = s.term;
            let mut conf_state = ConfState::default();
            conf_state.voters = s.conf_state.voters;
            meta.set_conf_state(conf_state);
            out.set_snapshot(snapshot);
        }
        (MessageType::MsgSnapshot, None) => {
            return Err(RaftWireError::BadSnapshot("the snapshot is missing".into()))
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::encode_records;
    use bytes::Bytes;

    fn append() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 2;
        m.to = 1;
        m.term = 4;
        m.index = 9;
        m.log_term = 3;
        m.commit = 8;
        let mut e = Entry::default();
        e.index = 10;
        e.term = 4;
        e.data = Bytes::from_static(b"abc");
        m.entries = vec![e].into();
        m
    }

    #[test]
    fn messages_round_trip_through_the_wire_types() {
        let m = append();
        let back = from_wire(to_wire(m.clone()), &[1, 2, 3], 1).unwrap();
        assert_eq!(back, m);

        let mut s = Message::default();
        s.set_msg_type(MessageType::MsgSnapshot);
        s.from = 3;
        s.to = 1;
        let mut snap = Snapshot::default();
        snap.data = encode_records(&[]);
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 5;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.set_snapshot(snap);
        assert_eq!(from_wire(to_wire(s.clone()), &[1, 2, 3], 1).unwrap(), s);
    }

    #[test]
    fn messages_from_outside_the_quorum_or_of_local_types_are_refused() {
        let m = to_wire(append());
        assert_eq!(
            from_wire(m.clone(), &[1, 3], 1),
            Err(RaftWireError::NotAVoter(2))
        );
        assert!(matches!(
            from_wire(m.clone(), &[1, 2, 3], 3),
            Err(RaftWireError::WrongNode { .. })
        ));
        let mut hup = m.clone();
        hup.msg_type = 0;
        assert_eq!(
            from_wire(hup, &[1, 2, 3], 1),
            Err(RaftWireError::BadType(0))
        );
        let mut conf = m;
        conf.entries[0].entry_type = 1;
        assert_eq!(
            from_wire(conf, &[1, 2, 3], 1),
            Err(RaftWireError::BadEntry(10))
        );
    }

    #[test]
    fn snapshots_for_other_voters_or_with_bad_records_are_refused() {
        let mut m = to_wire(append());
        m.msg_type = 7;
        m.snapshot = Some(wire::RaftSnapshot {
            index: 5,
            term: 2,
            conf_state: wire::ConfState {
                voters: vec![1, 2, 3, 4],
                ..Default::default()
            },
            data: encode_records(&[]),
        });
        assert!(matches!(
            from_wire(m.clone(), &[1, 2, 3], 1),
            Err(RaftWireError::BadSnapshot(_))
        ));
        let s = m.snapshot.as_mut().unwrap();
        s.conf_state.voters = vec![1, 2, 3];
        s.data = Bytes::from_static(b"garbage!");
        assert!(matches!(
            from_wire(m, &[1, 2, 3], 1),
            Err(RaftWireError::BadSnapshot(_))
        ));
    }
}
