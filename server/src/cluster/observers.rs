//! Brokers that follow the metadata log without voting (KRaft's observers), as the active
//! controller hears from them: the offset each fetched from (what it has applied) and when.
//! DescribeQuorum lists them, so `wharf cluster status` can show how far each lags.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::controller::image::ClusterImage;
use crate::controller::node::VoterProgress;
use crate::metadata::NodeId;

#[derive(Clone, Copy, Debug)]
struct Observer {
    log_end: u64,
    last_fetch_ms: i64,
}

/// Registered brokers that fetched the log from this node. Only node ids the image knows
/// as brokers are kept, which bounds the map by the cluster's brokers.
#[derive(Default)]
pub struct Observers {
    seen: RefCell<BTreeMap<NodeId, Observer>>,
}

impl Observers {
    /// `node` asked for the log from `from_offset` at `now_ms`.
    pub fn fetched(&self, image: &ClusterImage, node: NodeId, from_offset: u64, now_ms: i64) {
        if image.broker(node).is_none() {
            return;
        }
        self.seen.borrow_mut().insert(
            node,
            Observer {
                log_end: from_offset.saturating_sub(1),
                last_fetch_ms: now_ms,
            },
        );
    }

    /// Each observer still registered, with the offset it last fetched from.
    pub fn progress(&self, image: &ClusterImage) -> Vec<VoterProgress> {
        let mut seen = self.seen.borrow_mut();
        // Unregistered brokers are forgotten (none are yet, but the map stays bounded).
        seen.retain(|id, _| image.broker(*id).is_some());
        seen.iter()
            .map(|(id, o)| VoterProgress {
                node: *id,
                log_end: o.log_end,
                last_heard_ms: Some(o.last_fetch_ms),
            })
            .collect()
    }
}
