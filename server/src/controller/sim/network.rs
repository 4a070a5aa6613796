//! The simulated network between voters: loss, duplication, delays (and so reordering),
//! partitions; and the malformed frames thrown at the voters.

use super::*;

impl World {
    pub(super) fn connected(&self, a: Idx, b: Idx) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    pub(super) fn send_raft(&mut self, from: Idx, m: wire::RaftMessage) {
        self.stats.raft_messages += 1;
        let to = (m.to as usize).wrapping_sub(1);
        if to >= self.nodes.len() {
            return;
        }
        let frame = wire::Frame {
            correlation_id: 0,
            metadata_offset: 0,
            body: wire::Body::Raft(m),
        };
        let Ok(bytes) = encode_frame(&frame) else {
            self.stats.raft_messages_lost += 1;
            return;
        };
        if !self.calm && self.rng.chance(self.opts.loss_per_mille, 1000) {
            self.stats.raft_messages_lost += 1;
            return;
        }
        let copies = if !self.calm && self.rng.chance(self.opts.duplicate_per_mille, 1000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.chance(1, 20) {
                self.rng.range(20, 300)
            } else {
                self.rng.range(1, 15)
            } as i64;
            self.schedule(
                delay,
                Event::Raft {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// A connection's read path: length prefix, size cap, verification, decoding.
    pub(super) fn receive(bytes: &Bytes) -> Result<wire::Frame, String> {
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = split_frame(&mut buf, MAX_FRAME_BYTES)
            .map_err(|e| e.to_string())?
            .ok_or("a partial frame")?;
        if !buf.is_empty() {
            return Err("bytes after the frame".into());
        }
        decode_frame(&frame).map_err(|e| e.to_string())
    }

    pub(super) fn deliver_raft(&mut self, to: Idx, from: Idx, bytes: Bytes) -> Result<(), String> {
        if !self.connected(from, to) {
            self.stats.raft_messages_lost += 1;
            return Ok(());
        }
        let Some(node) = self.nodes[to].live.as_mut() else {
            return Ok(());
        };
        let frame = Self::receive(&bytes)
            .map_err(|e| format!("a Raft frame from node {} was refused: {e}", from + 1))?;
        let Ok(Incoming::Raft(m)) = incoming_from_frame(frame) else {
            return Err("a Raft frame decoded as something else".into());
        };
        if self.opts.trace {
            println!(
                "[{:>6} ms] node {} <- node {}: type {} term {} log_term {} index {} commit {} reject {} entries {}",
                self.now,
                to + 1,
                from + 1,
                m.msg_type,
                m.term,
                m.log_term,
                m.index,
                m.commit,
                m.reject,
                m.entries.len()
            );
        }
        node.step(m).map_err(|e| {
            format!(
                "node {} refused a Raft message from node {}: {e}",
                to + 1,
                from + 1
            )
        })?;
        self.pump(to)
    }

    pub(super) fn deliver_garbage(
        &mut self,
        to: Idx,
        bytes: Bytes,
        must_refuse: bool,
    ) -> Result<(), String> {
        let Some(node) = self.nodes[to].live.as_mut() else {
            return Ok(());
        };
        let trace = self.opts.trace;
        let refused = match Self::receive(&bytes) {
            Err(_) => true,
            Ok(frame) => match incoming_from_frame(frame) {
                Ok(Incoming::Raft(m)) => {
                    if trace {
                        println!(
                            "[{:>6} ms] node {} gets a bad frame that decodes: {m:?}",
                            self.now,
                            to + 1
                        );
                    }
                    node.step(m).is_err()
                }
                _ => true,
            },
        };
        if refused {
            self.stats.garbage_refused += 1;
        } else if must_refuse {
            return Err(format!("node {} accepted a frame it must refuse", to + 1));
        }
        self.pump(to)
    }

    pub(super) fn garbage(&mut self) -> (Bytes, bool) {
        let voters = self.voters.len() as u64;
        let raft = |from: u64, to: u64, msg_type: u8| {
            let frame = wire::Frame {
                correlation_id: 0,
                metadata_offset: 0,
                body: wire::Body::Raft(wire::RaftMessage {
                    msg_type,
                    from,
                    to,
                    term: 1_000_000,
                    ..wire::RaftMessage::default()
                }),
            };
            encode_frame(&frame).expect("a small frame encodes")
        };
        let to = self.rng.range(1, voters + 1);
        match self.rng.range(0, 6) {
            0 => {
                // Random bytes behind a plausible length.
                let len = self.rng.range(1, 200) as usize;
                let mut b = BytesMut::new();
                b.extend_from_slice(&(len as u32).to_be_bytes());
                for _ in 0..len {
                    b.extend_from_slice(&[self.rng.next_u64() as u8]);
                }
                (b.freeze(), false)
            }
            1 => {
                // An oversized length: refused before anything is read.
                let mut b = BytesMut::new();
                b.extend_from_slice(
                    &((MAX_FRAME_BYTES as u32) + 1 + self.rng.range(0, 1000) as u32).to_be_bytes(),
                );
                b.extend_from_slice(&[0u8; 16]);
                (b.freeze(), true)
            }
            2 => (raft(99, to, 5), true),
            3 => (raft(to % voters + 1, voters + 7, 3), true),
            4 => (raft(to % voters + 1, to, 0), true),
            _ => {
                // A valid frame cut short.
                let full = raft(to % voters + 1, to, 8);
                let cut = self.rng.range(1, full.len() as u64 / 2) as usize;
                (full.slice(..cut), true)
            }
        }
    }
}
