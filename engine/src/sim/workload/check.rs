//! The checks after every step: the whole log read back and compared with the model of
//! what it must hold (see the parent module for the rules).

use std::collections::BTreeMap;

use bytes::Bytes;
use wharf_protocol::batch::{
    batches, set_base_offset, set_partition_leader_epoch, validate_batch_with, CountRule,
};

use crate::sim::InjectedFault;
use crate::{DamageKind, DamageReport, EngineError, Offset};

use super::{tag_of, Entry, World};

impl World {
    /// Checks a batch the log returned against the model.
    pub(super) fn check_batch_known(
        &mut self,
        base: i64,
        last: i64,
        bytes: &[u8],
    ) -> Result<(), String> {
        if let Some(e) = self.entries.get(&base) {
            if e.last == last && e.bytes[..] == *bytes {
                return Ok(());
            }
        }
        let tag = tag_of(bytes).ok_or_else(|| format!("the batch at {base} carries no tag"))?;
        let issued = self
            .issued
            .get(&tag)
            .ok_or_else(|| format!("the batch at {base} (#{tag}) was never appended"))?;
        let mut expected = issued.payload.to_vec();
        set_base_offset(&mut expected, base);
        let epoch = wharf_protocol::batch::BatchHeader::view(bytes)
            .map_or(-1, |h| h.partition_leader_epoch());
        set_partition_leader_epoch(&mut expected, epoch);
        if expected[..] != *bytes {
            return Err(format!(
                "the batch at {base} (#{tag}) is not what was appended"
            ));
        }
        if epoch < 0 || epoch > self.leader_epoch {
            return Err(format!("the batch at {base} carries leader epoch {epoch}"));
        }
        match self.entries.get(&base) {
            Some(e) if e.tag == tag => Err(format!("#{tag} at {base} changed its bytes")),
            Some(e) => Err(format!(
                "the log has #{tag} at {base}, where #{} was acknowledged",
                e.tag
            )),
            None => Ok(()),
        }
    }

    pub(super) fn check_read(
        &mut self,
        from: i64,
        result: Result<Bytes, EngineError>,
    ) -> Result<(), String> {
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(EngineError::OffsetOutOfRange { .. }) => return Ok(()),
            // Reads during a failed write path's reload get KAFKA_STORAGE_ERROR.
            Err(EngineError::Storage { .. })
                if self.log.is_none()
                    || self.disruption.unsynced_lost
                    || self.log.as_ref().is_some_and(|l| l.write_error().is_some()) =>
            {
                return Ok(())
            }
            Err(e) => return Err(format!("read at {from} failed: {e}")),
        };
        let mut expect_next: Option<i64> = None;
        for (_, batch) in batches(&bytes) {
            let info = validate_batch_with(batch, usize::MAX, CountRule::AtMost)
                .map_err(|e| format!("read at {from} returned a bad batch: {e}"))?;
            match expect_next {
                None if info.base_offset > from || info.last_offset() < from => {
                    return Err(format!(
                        "read at {from} started with the batch {}..={}",
                        info.base_offset,
                        info.last_offset()
                    ))
                }
                Some(next) if info.base_offset != next => {
                    return Err(format!(
                        "read at {from} returned {} after a batch ending before {next}",
                        info.base_offset
                    ))
                }
                _ => {}
            }
            expect_next = Some(info.last_offset() + 1);
            // Batches read during a step that lost unsynced data may be gone since.
            if self.entries.contains_key(&info.base_offset) || !self.disruption.unsynced_lost {
                if let Err(e) = self.check_batch_known(info.base_offset, info.last_offset(), batch)
                {
                    if !self.disruption.unsynced_lost {
                        return Err(format!("read at {from}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the disk was really damaged in segment `base` (so reported loss is not
    /// the engine's doing).
    fn damaged(&self, base: i64, gap: bool) -> bool {
        let path = self.dir.join(format!("{base:020}.log"));
        self.disk.injected().iter().any(|f| match f {
            InjectedFault::BadSector { path: p, .. } | InjectedFault::Rot { path: p, .. } => {
                *p == path
            }
            InjectedFault::Deleted { path: p } => gap || *p == path,
            _ => false,
        })
    }

    /// Whether the disk was damaged in a segment that starts below `offset`.
    fn damage_below(&self, offset: i64) -> bool {
        self.disk.injected().iter().any(|f| match f {
            InjectedFault::BadSector { path, .. }
            | InjectedFault::Rot { path, .. }
            | InjectedFault::Deleted { path } => path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|base| base < offset),
            _ => false,
        })
    }

    /// Damage reports that explain losing `offset` (a cut) or the log start reaching it.
    fn loss_explained(&self, offset: i64, reports: &[DamageReport]) -> bool {
        if self.disruption.recovery_interrupted && self.damage_below(offset + 1) {
            return true;
        }
        reports.iter().any(|r| match r.kind {
            DamageKind::TailCut => {
                r.first_offset <= offset && self.damaged(r.segment_base_offset, false)
            }
            DamageKind::Skipped => {
                offset < r.end_offset && self.damaged(r.segment_base_offset, false)
            }
            DamageKind::Gap => offset < r.end_offset && self.damaged(r.segment_base_offset, true),
        })
    }

    /// Reads the whole log back and checks it against the model (see the module doc).
    pub(super) fn check(&mut self) -> Result<(), String> {
        if self.log.is_none() {
            self.open()?;
        }
        let log = self.log();
        let damaged: Vec<i64> = self
            .disk
            .injected()
            .iter()
            .filter_map(|f| match f {
                InjectedFault::BadSector { path, .. } | InjectedFault::Rot { path, .. } => path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok()),
                _ => None,
            })
            .collect();
        let checking = {
            let log = log.clone();
            self.rt
                .spawn_with_result(async move { log.check_invariants(&damaged).await })
        };
        self.rt.run_until_stalled();
        checking
            .take()
            .ok_or("the invariant check never finished")?
            .map_err(|e| format!("log invariant: {e}"))?;
        // Read everything, as a consumer from the start would.
        let mut found: Vec<(i64, i64, Bytes)> = Vec::new();
        let mut from = log.log_start_offset().0;
        let mut restarts = 0;
        loop {
            let reading = {
                let log = log.clone();
                let max = 1 + self.rng.below(64 << 10) as usize;
                self.rt
                    .spawn_with_result(async move { log.read(Offset(from), max).await })
            };
            self.rt.run_until_stalled();
            let bytes = match reading.take().ok_or("a read never finished")? {
                Ok(bytes) => bytes,
                Err(EngineError::OffsetOutOfRange { log_start, .. }) if restarts < 16 => {
                    // Damage found by this read moved the log start: read on from there.
                    restarts += 1;
                    found.retain(|(b, _, _)| *b >= log_start);
                    from = log_start.max(from);
                    continue;
                }
                // A log whose write path failed and is not reloaded yet: checked once it is.
                Err(EngineError::Storage { .. }) if log.write_error().is_some() => {
                    self.note("the log is being reloaded; not checked this step".into());
                    self.checked = false;
                    return Ok(());
                }
                Err(e) => return Err(format!("reading the log at {from}: {e}")),
            };
            if bytes.is_empty() {
                break;
            }
            for (_, batch) in batches(&bytes) {
                let info = validate_batch_with(batch, usize::MAX, CountRule::AtMost)
                    .map_err(|e| format!("a read at {from} returned a bad batch: {e}"))?;
                if let Some((_, last, _)) = found.last() {
                    if info.base_offset != last + 1 {
                        return Err(format!(
                            "offsets not contiguous: a batch at {} after one ending at {last}",
                            info.base_offset
                        ));
                    }
                } else if info.base_offset > from {
                    return Err(format!("a read at {from} started at {}", info.base_offset));
                }
                found.push((
                    info.base_offset,
                    info.last_offset(),
                    Bytes::copy_from_slice(batch),
                ));
                from = info.last_offset() + 1;
            }
        }
        if log.reloading() {
            // A failed write or structural change not reloaded from disk yet: what the log
            // shows may still turn into what is on disk. Checked against the model once
            // the reload is done.
            self.note("the log is not reloaded from disk yet; not checked this step".into());
            self.checked = false;
            return Ok(());
        }
        let (start, end) = (log.log_start_offset().0, log.log_end_offset().0);
        if let Some((_, last, _)) = found.last() {
            if last + 1 != end {
                return Err(format!(
                    "the log ends at {end} but its last batch at {last}"
                ));
            }
        } else if start != end && found.is_empty() {
            return Err(format!("the log [{start}, {end}) returned nothing"));
        }
        let new_reports: Vec<DamageReport> = log.damage_reports()[self.seen_reports..].to_vec();
        self.seen_reports += new_reports.len();
        self.stats.damage_reports += new_reports.len() as u64;
        for r in &new_reports {
            self.note(format!("damage report: {}", r.describe()));
            if r.kind != DamageKind::TailCut
                && !self.damaged(r.segment_base_offset, r.kind == DamageKind::Gap)
            {
                return Err(format!(
                    "damage reported where the disk has none: {}",
                    r.describe()
                ));
            }
        }
        self.reports.extend(new_reports);
        let reports = self.reports.clone();

        // The log start.
        if start < self.log_start {
            let explained = self
                .disruption
                .truncated_fully_to
                .is_some_and(|t| start >= t.min(self.log_start))
                || self.disruption.truncated_from.is_some_and(|t| start >= t)
                // A cut of a damaged last segment below a log start that could not be
                // recorded (a full disk).
                || reports.iter().any(|r| {
                    r.kind == DamageKind::TailCut
                        && r.first_offset <= start
                        && self.damaged(r.segment_base_offset, false)
                })
                // A log start moved by damage whose record could not be written (a full
                // or failing disk): after a restart it is where the files say.
                || ((self.full_disk_episodes
                        || self.faults.enospc_per_million > 0
                        || self.faults.fsync_eio_per_million > 0)
                    && reports.iter().any(|r| {
                        r.kind != DamageKind::TailCut
                            && r.previous_log_start_offset <= start
                            && start < r.end_offset
                    }));
            if !explained {
                return Err(format!(
                    "the log start went back from {} to {start}",
                    self.log_start
                ));
            }
        } else if start > self.log_start {
            let explained = self.disruption.deleted_to.is_some_and(|d| start <= d)
                || self.disruption.retention
                || self.disruption.truncated_fully_to.is_some()
                || self.loss_explained(start - 1, &reports)
                // A recovery that crashed after recording a log start moved by damage
                // reports nothing the next time: the damage is below the log start then.
                || (self.disruption.unsynced_lost && self.damage_below(start));
            if !explained {
                return Err(format!(
                    "the log start moved from {} to {start} for no reason",
                    self.log_start
                ));
            }
        }
        // What the model holds.
        let mut seen_tags: BTreeMap<u64, i64> = BTreeMap::new();
        for (base, last, bytes) in &found {
            if *last < start {
                continue;
            }
            let tag = tag_of(bytes).ok_or_else(|| format!("the batch at {base} carries no tag"))?;
            if let Some(other) = seen_tags.insert(tag, *base) {
                return Err(format!("#{tag} is in the log twice, at {other} and {base}"));
            }
            match self.check_batch_known(*base, *last, bytes) {
                Ok(()) => {}
                Err(e) => {
                    let lost_ok = self.disruption.unsynced_lost
                        || self.disruption.truncated_from.is_some_and(|t| *last >= t);
                    let required = *base < self.durable_end
                        && self.entries.contains_key(base)
                        && !self.loss_explained(*base, &reports);
                    if !lost_ok || required {
                        return Err(e);
                    }
                }
            }
        }
        // Everything acknowledged and still above the log start must be there.
        let present: BTreeMap<i64, (i64, Bytes)> = found
            .iter()
            .map(|(b, l, x)| (*b, (*l, x.clone())))
            .collect();
        let mut lost = Vec::new();
        for (base, e) in &self.entries {
            if e.last < start {
                continue;
            }
            match present.get(base) {
                Some((last, bytes)) if *last == e.last && *bytes == e.bytes => {}
                _ => lost.push((*base, e.last, e.tag)),
            }
        }
        for (base, last, tag) in &lost {
            let required = *base < self.durable_end;
            // A truncation takes the batch holding its offset whole.
            let truncated = self.disruption.truncated_from.is_some_and(|t| *last >= t)
                || self.disruption.truncated_fully_to.is_some();
            let explained = self.loss_explained(*base, &reports) || truncated;
            if required && !explained {
                return Err(format!(
                    "#{tag} at {base} was acknowledged as durable (durable end {}) and is gone (log [{start}, {end}))",
                    self.durable_end
                ));
            }
            if !required && !self.disruption.unsynced_lost && !explained {
                return Err(format!(
                    "#{tag} at {base} was acknowledged and is gone, though nothing failed (log [{start}, {end}))"
                ));
            }
        }
        if end < self.durable_end
            && !self.loss_explained(end, &reports)
            && self.disruption.truncated_from.is_none()
        {
            return Err(format!(
                "the log end went back to {end}, below the durable end {}",
                self.durable_end
            ));
        }
        // The model becomes what the log holds.
        self.entries = found
            .into_iter()
            .filter(|(_, last, _)| *last >= start)
            .map(|(base, last, bytes)| {
                let tag = tag_of(&bytes).unwrap_or(0);
                (base, Entry { last, tag, bytes })
            })
            .collect();
        self.log_start = start;
        self.durable_end = self.durable_end.min(end);
        self.checked = true;
        for p in &mut self.producers {
            if let Some((tag, base)) = p.last_acked {
                if self.entries.get(&base).is_none_or(|e| e.tag != tag) {
                    p.last_acked = None;
                }
            }
        }
        Ok(())
    }
}
