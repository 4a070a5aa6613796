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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::records::MetadataRecord;
    use crate::metadata::cluster::BrokerRegistration;

    fn image_with_broker(node: i32) -> ClusterImage {
        let mut image = ClusterImage::empty();
        let errors = image.apply(
            1,
            1,
            &[MetadataRecord::BrokerRegistered(BrokerRegistration {
                node_id: NodeId(node),
                incarnation_id: 7,
                broker_epoch: 1,
                listeners: Vec::new(),
                rack: None,
                fenced: true,
            })],
        );
        assert!(errors.is_empty(), "{errors:?}");
        image
    }

    #[test]
    fn registered_brokers_are_observed_at_what_they_applied_and_strangers_are_not() {
        let image = image_with_broker(4);
        let observers = Observers::default();
        observers.fetched(&image, NodeId(4), 11, 1_000);
        observers.fetched(&image, NodeId(9), 5, 1_000);
        observers.fetched(&image, NodeId(4), 13, 2_000);
        assert_eq!(
            observers.progress(&image),
            vec![VoterProgress {
                node: NodeId(4),
                log_end: 12,
                last_heard_ms: Some(2_000),
            }]
        );
        // A broker the image no longer knows is forgotten.
        assert!(observers.progress(&ClusterImage::empty()).is_empty());
        assert!(observers.progress(&image).is_empty());
    }
}
