//! A broker-only node's copy of the cluster metadata (KRaft's `process.roles=broker`).
//!
//! Such a node runs no Raft. It pulls the committed metadata log from the active
//! controller with FetchMetadata, from the offset after the one it applied — or the
//! snapshot first, when the controller compacted those entries away — and applies it to
//! its [`MetadataFollower`] exactly as voters apply their own log; each new image goes to
//! the shards the way a voter's driver hands its images over.
//!
//! Where the active controller is: the voter that answered last; a voter that is not the
//! controller answers NOT_CONTROLLER naming the one it knows, and without any hint the
//! voters are tried in turn. An answer that makes no sense (it does not decode, is too big,
//! carries records that do not decode or entries that do not follow what was applied)
//! closes that connection, and the next voter is tried.
//!
//! The follower keeps nothing on disk: a restarted broker fetches the log again, from the
//! controller's snapshot when it has one (see docs/cluster.md, "Brokers that are not
//! voters").

use std::rc::Rc;
use std::time::Duration;

use crate::cluster::net::FetchFailure;
use crate::cluster::{ControlPlane, Metadata};
use crate::controller::follower::MetadataFollower;
use crate::controller::node::MetadataFetch;
use crate::controller::requests::ControllerError;

/// Most bytes of entries one FetchMetadata answer may carry (the controller caps it too).
const FETCH_MAX_BYTES: u32 = 8 << 20;
/// How long one FetchMetadata may take: the controller's long poll
/// (`net::FETCH_MAX_WAIT`) plus a margin.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before asking another voter after a failure.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Pause before following a NOT_CONTROLLER hint.
const HINT_BACKOFF: Duration = Duration::from_millis(10);
/// Pause after an answer with nothing new (the controller already waited for news).
const IDLE_PAUSE: Duration = Duration::from_millis(20);

/// Follows the committed metadata log for as long as the process runs (a voter reads its
/// own log instead: there is nothing to do for it).
pub async fn run(control: Rc<ControlPlane>) {
    let Metadata::Follower(follower) = &control.metadata else {
        return;
    };
    let me = control.me;
    let mut unreachable_logged = false;
    loop {
        let Some(target) = control.controller_guess() else {
            glommio::timer::sleep(RETRY_BACKOFF).await;
            continue;
        };
        let from_offset = follower.borrow().next_offset();
        let answer = control
            .peers
            .fetch_metadata(target, me, from_offset, FETCH_MAX_BYTES, FETCH_TIMEOUT)
            .await;
        let fetched = match answer {
            Ok(Ok(fetched)) => fetched,
            Ok(Err(ControllerError::NotController { leader })) => {
                let hint = leader.filter(|l| *l != target && *l != me);
                control.controller_hint(hint);
                glommio::timer::sleep(if hint.is_some() {
                    HINT_BACKOFF
                } else {
                    RETRY_BACKOFF
                })
                .await;
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(voter = target.0, "metadata fetch refused: {e}");
                control.controller_hint(None);
                glommio::timer::sleep(RETRY_BACKOFF).await;
                continue;
            }
            Err(FetchFailure::BadAnswer(e)) => {
                control.count_bad_frame();
                tracing::warn!(
                    voter = target.0,
                    "closed the controller connection to node {}: {e}; trying the other voters",
                    target.0
                );
                control.controller_hint(None);
                glommio::timer::sleep(RETRY_BACKOFF).await;
                continue;
            }
            Err(FetchFailure::Unreachable(e)) => {
                if !unreachable_logged {
                    tracing::info!(
                        voter = target.0,
                        "cannot fetch the metadata log from node {}: {e}; trying the other voters",
                        target.0
                    );
                    unreachable_logged = true;
                }
                control.controller_hint(None);
                glommio::timer::sleep(RETRY_BACKOFF).await;
                continue;
            }
        };
        unreachable_logged = false;
        control.controller_hint(Some(target));
        match apply(&control, follower, fetched) {
            Ok(true) => {}
            Ok(false) => glommio::timer::sleep(IDLE_PAUSE).await,
            Err(e) => {
                control.count_bad_frame();
                tracing::warn!(
                    voter = target.0,
                    "closing the controller connection to node {}: its metadata answer cannot be applied ({e}); trying the other voters",
                    target.0
                );
                control.peers.reset(target);
                control.controller_hint(None);
                glommio::timer::sleep(RETRY_BACKOFF).await;
            }
        }
    }
}

/// Applies one answer; `Ok(false)` when it held nothing new.
fn apply(
    control: &ControlPlane,
    follower: &std::cell::RefCell<MetadataFollower>,
    fetched: MetadataFetch,
) -> Result<bool, String> {
    let image = {
        let mut f = follower.borrow_mut();
        let before = f.image().applied_offset();
        match fetched {
            MetadataFetch::Snapshot { index, term, data } => {
                if index <= before {
                    // Not newer than what was applied: a snapshot never moves a follower
                    // back (the controller sends one only when entries were compacted).
                    return Err(format!(
                        "a snapshot at offset {index}, not after the applied offset {before}"
                    ));
                }
                f.load_snapshot(index, term, &data)
                    .map_err(|e| e.to_string())?;
                control
                    .known_committed
                    .set(control.known_committed.get().max(index));
                tracing::info!(index, "loaded the controller's metadata snapshot");
            }
            MetadataFetch::Entries {
                committed_offset,
                entries,
            } => {
                if entries
                    .iter()
                    .any(|(index, _, _)| *index > committed_offset)
                {
                    return Err("entries past the committed offset".into());
                }
                for e in f.apply_entries(&entries).map_err(|e| e.to_string())? {
                    tracing::error!("{e}");
                }
                control.known_committed.set(committed_offset);
            }
        }
        let after = f.image().applied_offset();
        if after == before {
            return Ok(false);
        }
        f.image().clone()
    };
    control.offer_image(image);
    Ok(true)
}
