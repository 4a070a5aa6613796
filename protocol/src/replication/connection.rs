//! The order of frames on one replication connection, checked at each end.

use std::collections::VecDeque;

use bytes::Bytes;

use super::codec::{decode_frame, encode_request};
use super::types::*;
use super::{FrameError, MAX_IN_FLIGHT_REQUESTS};

/// The leader's end of a connection from one follower: requests only, from one replica,
/// with increasing correlation ids.
#[derive(Debug, Default)]
pub struct LeaderConnection {
    replica_id: Option<i32>,
    last_correlation_id: Option<i32>,
}

impl LeaderConnection {
    pub fn new() -> LeaderConnection {
        LeaderConnection::default()
    }

    /// Decodes a frame from the follower and checks it belongs on this connection.
    pub fn receive(&mut self, frame: &Bytes) -> Result<FetchRequest, FrameError> {
        let request = match decode_frame(frame)? {
            Message::FetchRequest(request) => request,
            Message::FetchResponse(_) => {
                return Err(FrameError::OutOfOrder(
                    "a response sent to a leader".to_string(),
                ))
            }
        };
        if let Some(last) = self.last_correlation_id {
            if request.correlation_id <= last {
                return Err(FrameError::OutOfOrder(format!(
                    "request {} after request {last}",
                    request.correlation_id
                )));
            }
        }
        match self.replica_id {
            Some(id) if id != request.replica_id => {
                return Err(FrameError::OutOfOrder(format!(
                    "a request from replica {} on the connection of replica {id}",
                    request.replica_id
                )))
            }
            _ => self.replica_id = Some(request.replica_id),
        }
        self.last_correlation_id = Some(request.correlation_id);
        Ok(request)
    }
}

/// The follower's end of a connection to one leader: it numbers its requests and takes
/// responses in their order, each answering exactly the partitions asked for.
#[derive(Debug, Default)]
pub struct FollowerConnection {
    next_correlation_id: i32,
    in_flight: VecDeque<FetchRequest>,
}

impl FollowerConnection {
    pub fn new() -> FollowerConnection {
        FollowerConnection::default()
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Numbers `request`, remembers it and encodes it (a whole frame, ready to write).
    pub fn send(&mut self, mut request: FetchRequest) -> Result<Bytes, FrameError> {
        if self.in_flight.len() >= MAX_IN_FLIGHT_REQUESTS {
            return Err(FrameError::TooLarge {
                size: self.in_flight.len() + 1,
                max_bytes: MAX_IN_FLIGHT_REQUESTS,
            });
        }
        if self.next_correlation_id == i32::MAX {
            // A connection this old is replaced rather than wrapping its ids around.
            return Err(FrameError::OutOfOrder(
                "correlation ids exhausted on this connection".to_string(),
            ));
        }
        request.correlation_id = self.next_correlation_id;
        let bytes = encode_request(&request)?;
        self.next_correlation_id += 1;
        self.in_flight.push_back(request);
        Ok(bytes)
    }

    /// Decodes a frame from the leader and matches it with the oldest request in flight;
    /// returns that request with its response.
    pub fn receive(&mut self, frame: &Bytes) -> Result<(FetchRequest, FetchResponse), FrameError> {
        let response = match decode_frame(frame)? {
            Message::FetchResponse(response) => response,
            Message::FetchRequest(_) => {
                return Err(FrameError::OutOfOrder(
                    "a request sent to a follower".to_string(),
                ))
            }
        };
        let Some(request) = self.in_flight.front() else {
            return Err(FrameError::OutOfOrder(format!(
                "response {} with no request in flight",
                response.correlation_id
            )));
        };
        if response.correlation_id != request.correlation_id {
            return Err(FrameError::OutOfOrder(format!(
                "response {} where response {} was due",
                response.correlation_id, request.correlation_id
            )));
        }
        if response.error_code == 0 {
            let same = response.partitions.len() == request.partitions.len()
                && response
                    .partitions
                    .iter()
                    .zip(&request.partitions)
                    .all(|(r, q)| {
                        r.header.topic_id == q.topic_id && r.header.partition == q.partition
                    });
            if !same {
                return Err(FrameError::OutOfOrder(format!(
                    "response {} does not answer the partitions of its request, in order",
                    response.correlation_id
                )));
            }
        }
        let request = self.in_flight.pop_front().expect("checked above");
        Ok((request, response))
    }
}
