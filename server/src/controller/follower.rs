//! The metadata image of a broker that is not a voter: it pulls committed entries (or a
//! snapshot first, when the log was compacted) from the active controller with
//! FetchMetadata and applies them exactly as voters apply their own log.

use bytes::Bytes;

use crate::controller::image::{ApplyError, ClusterImage};
use crate::controller::records::{decode_records, RecordError};

/// Why a fetched piece of log was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FollowError {
    #[error("fetched metadata entry {got} does not follow the applied offset {applied}")]
    OutOfOrder { got: u64, applied: u64 },
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A broker's copy of the metadata image, fed by FetchMetadata.
#[derive(Debug, Clone)]
pub struct MetadataFollower {
    image: ClusterImage,
}

impl Default for MetadataFollower {
    fn default() -> Self {
        MetadataFollower {
            image: ClusterImage::empty(),
        }
    }
}

impl MetadataFollower {
    pub fn image(&self) -> &ClusterImage {
        &self.image
    }

    /// The offset to fetch from next.
    pub fn next_offset(&self) -> u64 {
        self.image.applied_offset() + 1
    }

    /// Replaces the image with a snapshot at `index`.
    pub fn load_snapshot(
        &mut self,
        index: u64,
        term: u64,
        data: &Bytes,
    ) -> Result<(), FollowError> {
        let records = decode_records(data)?;
        self.image = ClusterImage::from_snapshot(index, term, &records)?;
        Ok(())
    }

    /// Applies fetched entries `(index, term, data)` in order. Entries already applied are
    /// skipped; a gap is an error (fetch again from [`next_offset`]).
    ///
    /// [`next_offset`]: MetadataFollower::next_offset
    pub fn apply_entries(
        &mut self,
        entries: &[(u64, u64, Bytes)],
    ) -> Result<Vec<ApplyError>, FollowError> {
        let mut errors = Vec::new();
        for (index, term, data) in entries {
            if *index <= self.image.applied_offset() {
                continue;
            }
            if *index != self.image.applied_offset() + 1 {
                return Err(FollowError::OutOfOrder {
                    got: *index,
                    applied: self.image.applied_offset(),
                });
            }
            // An undecodable entry is skipped, as voters skip it.
            let records = if data.is_empty() {
                Vec::new()
            } else {
                decode_records(data).unwrap_or_default()
            };
            errors.extend(self.image.apply(*index, *term, &records));
        }
        Ok(errors)
    }
}
