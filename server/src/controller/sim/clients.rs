//! The admin client and the brokers: requests and replies as frames, retries where
//! NOT_CONTROLLER points, registration, heartbeats, and non-voter brokers following the log.

use super::*;

impl World {
    pub(super) fn random_live(&mut self) -> Idx {
        let live: Vec<Idx> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].live.is_some())
            .collect();
        if live.is_empty() {
            return self.rng.range(0, self.nodes.len() as u64) as usize;
        }
        live[self.rng.range(0, live.len() as u64) as usize]
    }

    pub(super) fn send(&mut self, caller: Caller, to: Idx, sent: Sent, attempts: u32) {
        let token = self.next_token;
        self.next_token += 1;
        let frame = match &sent {
            Sent::Request(r) => request_to_frame(token, r),
            Sent::Fetch => {
                let Caller::Broker(b) = caller else {
                    unreachable!("only brokers fetch")
                };
                let from = self.brokers[b]
                    .follower
                    .as_ref()
                    .map_or(1, MetadataFollower::next_offset);
                fetch_request_to_frame(token, self.brokers[b].id, from, 64 * 1024)
            }
        };
        let bytes = encode_frame(&frame).expect("requests are small");
        self.stats.requests += 1;
        self.outstanding.insert(
            (caller_key(caller), token),
            Outstanding {
                sent,
                to,
                at_ms: self.now,
                attempts,
            },
        );
        let delay = self.rng.range(1, 10) as i64;
        self.schedule(
            delay,
            Event::Request {
                to,
                caller,
                token,
                bytes,
            },
        );
    }

    pub(super) fn deliver_request(
        &mut self,
        to: Idx,
        caller: Caller,
        token: Token,
        bytes: Bytes,
    ) -> Result<(), String> {
        let now = self.now;
        if self.nodes[to].live.is_none() {
            self.schedule(
                1,
                Event::Reply {
                    caller,
                    token,
                    bytes: None,
                },
            );
            return Ok(());
        }
        let frame =
            Self::receive(&bytes).map_err(|e| format!("a request frame was refused: {e}"))?;
        let incoming = incoming_from_frame(frame).map_err(|e| e.to_string())?;
        let voters = self.voter_ids();
        let n = &mut self.nodes[to];
        let node = n.live.as_mut().expect("checked live");
        match incoming {
            Incoming::Request(request) => {
                n.inflight.insert(token, (caller, now));
                node.request(now, token, request);
                self.pump(to)
            }
            Incoming::FetchMetadata(f) => {
                let fetch = node.fetch_metadata(f.from_offset, f.max_bytes as u64);
                let frame = fetch_reply_to_frame(token, &fetch, &voters);
                let bytes = encode_frame(&frame)
                    .map_err(|e| format!("a fetch reply does not encode: {e}"))?;
                let delay = self.rng.range(1, 10) as i64;
                self.schedule(
                    delay,
                    Event::Reply {
                        caller,
                        token,
                        bytes: Some(bytes),
                    },
                );
                Ok(())
            }
            Incoming::DescribeQuorum(_) => {
                let frame = describe_quorum_reply_to_frame(token, &node.quorum_view());
                let bytes = encode_frame(&frame)
                    .map_err(|e| format!("a DescribeQuorum reply does not encode: {e}"))?;
                self.schedule(
                    1,
                    Event::Reply {
                        caller,
                        token,
                        bytes: Some(bytes),
                    },
                );
                Ok(())
            }
            Incoming::Raft(_) => Err("a request decoded as a Raft message".into()),
        }
    }

    pub(super) fn deliver_reply(
        &mut self,
        caller: Caller,
        token: Token,
        bytes: Option<Bytes>,
    ) -> Result<(), String> {
        let Some(out) = self.outstanding.remove(&(caller_key(caller), token)) else {
            return Err(format!(
                "a reply to request {token}, which is not outstanding"
            ));
        };
        let Some(bytes) = bytes else {
            self.stats.disconnected += 1;
            return self.on_failure(caller, out, None);
        };
        let frame = Self::receive(&bytes).map_err(|e| format!("a reply frame was refused: {e}"))?;
        if let Sent::Fetch = out.sent {
            let fetch = fetch_reply_from_frame(frame).map_err(|e| e.to_string())?;
            return self.on_fetch(caller, out, fetch);
        }
        let reply = reply_from_frame(frame).map_err(|e| e.to_string())?;
        match reply {
            Err(ControllerError::NotController { leader }) => {
                self.stats.not_controller += 1;
                let leader = leader.map(|l| l.0 as usize - 1);
                self.on_failure(caller, out, leader)
            }
            Ok(reply) => {
                self.stats.requests_ok += 1;
                let Sent::Request(request) = out.sent else {
                    unreachable!("fetches returned above")
                };
                self.check_acknowledged(&request, &reply)?;
                self.on_success(caller, request, reply, out.to)
            }
            Err(e) => {
                let Sent::Request(request) = out.sent else {
                    unreachable!("fetches returned above")
                };
                self.on_error(caller, request, e)
            }
        }
    }

    /// NOT_CONTROLLER or a lost connection: try again, where pointed, after a pause.
    pub(super) fn on_failure(
        &mut self,
        caller: Caller,
        out: Outstanding,
        leader: Option<Idx>,
    ) -> Result<(), String> {
        let target = leader.filter(|l| *l < self.nodes.len());
        match caller {
            Caller::Admin => {
                self.admin_target = target;
                if let (Sent::Request(request), true) = (out.sent, out.attempts < 100) {
                    let to = target.unwrap_or_else(|| self.random_live());
                    let backoff = self.rng.range(20, 200) as i64;
                    self.schedule(
                        backoff,
                        Event::Resend {
                            caller,
                            to,
                            request,
                            attempts: out.attempts + 1,
                        },
                    );
                }
            }
            Caller::Broker(b) => {
                self.brokers[b].target = target;
            }
            // The leader sends its next proposal from its next view of the metadata.
            Caller::Leader(b) => {
                self.brokers[b].target = target;
            }
        }
        Ok(())
    }

    /// An acknowledged change must be in the committed log.
    pub(super) fn on_success(
        &mut self,
        caller: Caller,
        request: ControllerRequest,
        reply: ControllerReply,
        to: Idx,
    ) -> Result<(), String> {
        match caller {
            Caller::Admin => {
                self.admin_target = Some(to);
                if let (
                    ControllerRequest::CreateTopics { topics, .. },
                    ControllerReply::CreateTopics(items),
                ) = (&request, &reply)
                {
                    if topics.iter().any(|t| t.topic.name.starts_with("final-")) {
                        if items.iter().all(Result::is_ok) {
                            self.final_change_acknowledged = true;
                        } else {
                            // Refused (no unfenced broker yet, say): try again shortly.
                            self.trace(|| format!("final change refused: {items:?}"));
                            self.schedule(500, Event::FinalChange);
                        }
                    }
                }
            }
            Caller::Leader(_) => {
                self.stats.alter_partition_answered += 1;
            }
            Caller::Broker(b) => {
                let broker = &mut self.brokers[b];
                broker.target = Some(to);
                if let (
                    ControllerRequest::RegisterBroker(r),
                    ControllerReply::BrokerRegistration { broker_epoch },
                ) = (request, reply)
                {
                    // A reply for an earlier process of this broker is ignored.
                    if r.incarnation_id == broker.incarnation {
                        broker.epoch = Some(broker_epoch);
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_error(
        &mut self,
        caller: Caller,
        request: ControllerRequest,
        error: ControllerError,
    ) -> Result<(), String> {
        // A broker whose registration is gone or replaced registers again.
        if let (
            Caller::Broker(b),
            ControllerRequest::Heartbeat(h),
            ControllerError::StaleBrokerEpoch(_) | ControllerError::BrokerIdNotRegistered(_),
        ) = (caller, &request, error)
        {
            if self.brokers[b].epoch == Some(h.broker_epoch) {
                self.brokers[b].epoch = None;
            }
        }
        Ok(())
    }

    pub(super) fn on_fetch(
        &mut self,
        caller: Caller,
        out: Outstanding,
        fetch: Result<MetadataFetch, ControllerError>,
    ) -> Result<(), String> {
        let Caller::Broker(b) = caller else {
            return Err("an admin fetched metadata".into());
        };
        let broker = &mut self.brokers[b];
        let Some(follower) = broker.follower.as_mut() else {
            return Ok(());
        };
        match fetch {
            Err(ControllerError::NotController { leader }) => {
                broker.target = leader.map(|l| l.0 as usize - 1);
                return Ok(());
            }
            Err(_) => return Ok(()),
            Ok(MetadataFetch::Snapshot { index, term, data }) => {
                if index >= follower.next_offset() {
                    follower.load_snapshot(index, term, &data).map_err(|e| {
                        format!("broker {} cannot load a fetched snapshot: {e}", broker.id.0)
                    })?;
                }
            }
            Ok(MetadataFetch::Entries { entries, .. }) => {
                let errors = follower.apply_entries(&entries).map_err(|e| {
                    format!("broker {} cannot apply fetched entries: {e}", broker.id.0)
                })?;
                if let Some(e) = errors.first() {
                    return Err(format!("broker {}: {e}", broker.id.0));
                }
            }
        }
        broker.target = Some(out.to);
        let image = follower.image();
        let offset = image.applied_offset() as usize;
        match self.oracle.digests.get(offset) {
            Some(d) if *d == digest(image) => Ok(()),
            Some(_) => Err(format!(
                "broker {}'s fetched image at offset {offset} differs from a replay of the committed log",
                broker.id.0
            )),
            None => Err(format!("broker {} fetched past the committed log", broker.id.0)),
        }
    }

    // -----------------------------------------------------------------------------------
    // Actors
    // -----------------------------------------------------------------------------------

    pub(super) fn admin_request(&mut self) -> ControllerRequest {
        let name = TOPIC_NAMES[self.rng.range(0, TOPIC_NAMES.len() as u64) as usize].to_string();
        match self.rng.range(0, 10) {
            0..=3 => ControllerRequest::CreateTopics {
                topics: vec![CreateTopic {
                    topic: NewTopic {
                        name,
                        partitions: self.rng.range(0, 4) as i32 - 1
                            + i32::from(self.rng.chance(1, 2)),
                        configs: vec![(
                            "retention.ms".into(),
                            Some(self.rng.range(1, 100_000).to_string()),
                        )],
                        internal: false,
                    },
                    // The default, one to three replicas, or more than there are brokers.
                    replication_factor: match self.rng.range(0, 10) {
                        0..=4 => -1,
                        5..=8 => self.rng.range(1, 4) as i16,
                        _ => 9,
                    },
                    assignments: vec![],
                }],
                validate_only: self.rng.chance(1, 10),
            },
            4..=5 => ControllerRequest::DeleteTopics {
                topics: vec![TopicRef::Name(name)],
            },
            6 => ControllerRequest::CreatePartitions {
                topics: vec![PartitionsIncrease {
                    topic: name,
                    total: self.rng.range(1, 7) as i32,
                    assignments: vec![],
                }],
                validate_only: false,
            },
            7 if self.rng.chance(1, 2) => ControllerRequest::AlterConfigs {
                topics: vec![(
                    name,
                    vec![AlterOp::Set(
                        "unclean.leader.election.enable".into(),
                        self.rng.chance(1, 2).to_string(),
                    )],
                )],
                validate_only: false,
            },
            7 => ControllerRequest::AlterConfigs {
                topics: vec![(
                    name,
                    if self.rng.chance(1, 2) {
                        vec![AlterOp::Set(
                            "retention.ms".into(),
                            self.rng.range(1, 1000).to_string(),
                        )]
                    } else {
                        vec![AlterOp::Delete("retention.ms".into())]
                    },
                )],
                validate_only: false,
            },
            _ => {
                let (node, epoch) = self
                    .brokers
                    .iter()
                    .find_map(|b| b.epoch.map(|e| (b.id, e)))
                    .unwrap_or((NodeId(1), 0));
                ControllerRequest::AllocateProducerIds {
                    node,
                    broker_epoch: epoch,
                }
            }
        }
    }

    pub(super) fn admin(&mut self) {
        let mine = self
            .outstanding
            .keys()
            .filter(|(c, _)| *c == caller_key(Caller::Admin))
            .count();
        if mine < 8 && !self.calm {
            let request = self.admin_request();
            let to = self.admin_target.unwrap_or_else(|| self.random_live());
            self.send(Caller::Admin, to, Sent::Request(request), 0);
        }
        let next = self.rng.range(20, 300) as i64;
        self.schedule(next, Event::Admin);
    }

    pub(super) fn broker_busy(&self, b: usize) -> bool {
        let key = caller_key(Caller::Broker(b));
        self.outstanding
            .iter()
            .any(|((c, _), o)| *c == key && matches!(o.sent, Sent::Request(_)))
    }

    pub(super) fn broker(&mut self, b: usize) {
        let interval = self.opts.heartbeat_interval_ms;
        let jitter = self.rng.range(0, interval as u64 / 5) as i64;
        self.schedule(interval - interval / 10 + jitter, Event::Broker(b));
        // Non-voter brokers fall silent now and then: paused, or restarted.
        if self.brokers[b].voter.is_none() {
            if self.calm {
                self.brokers[b].up = !self.brokers[b].silent_in_calm;
            } else if self.brokers[b].up && self.rng.chance(1, 15) {
                self.brokers[b].up = false;
                self.brokers[b].down_until = self.now + self.rng.range(500, 8_000) as i64;
            } else if !self.brokers[b].up && self.now >= self.brokers[b].down_until {
                self.brokers[b].up = true;
                if self.rng.chance(1, 2) {
                    let incarnation = self.rng.next_u128();
                    let broker = &mut self.brokers[b];
                    broker.incarnation = incarnation;
                    broker.epoch = None;
                    broker.follower = Some(MetadataFollower::default());
                }
            }
        }
        if !self.brokers[b].up || self.broker_busy(b) {
            return;
        }
        let broker = &self.brokers[b];
        let request = match broker.epoch {
            None => ControllerRequest::RegisterBroker(RegisterBroker {
                node: broker.id,
                incarnation_id: broker.incarnation,
                cluster_id: String::new(),
                listeners: vec![Listener {
                    name: "PLAINTEXT".into(),
                    host: format!("broker{}", broker.id.0),
                    port: 9092,
                }],
                rack: None,
            }),
            Some(epoch) => {
                let applied = match (broker.voter, &broker.follower) {
                    (Some(i), _) => self.nodes[i]
                        .live
                        .as_ref()
                        .map_or(0, |n| n.image().applied_offset()),
                    (None, Some(f)) => f.image().applied_offset(),
                    (None, None) => 0,
                };
                ControllerRequest::Heartbeat(Heartbeat {
                    node: broker.id,
                    broker_epoch: epoch,
                    applied_offset: applied,
                    want_fence: false,
                    want_shut_down: false,
                })
            }
        };
        let to = broker.target.unwrap_or_else(|| self.random_live());
        self.send(Caller::Broker(b), to, Sent::Request(request), 0);
    }

    pub(super) fn follow(&mut self, b: usize) {
        self.schedule(300, Event::Follow(b));
        let key = caller_key(Caller::Broker(b));
        let fetching = self
            .outstanding
            .iter()
            .any(|((c, _), o)| *c == key && matches!(o.sent, Sent::Fetch));
        if !self.brokers[b].up || fetching {
            return;
        }
        let to = self.brokers[b].target.unwrap_or_else(|| self.random_live());
        self.send(Caller::Broker(b), to, Sent::Fetch, 0);
    }
}
