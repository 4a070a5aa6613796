//! Time: the run's clock (ns since a shared origin) and the open-loop send schedule.
//!
//! Open loop means each record has an intended send time fixed in advance, `start + i /
//! rate`, whatever the broker does. Latency is measured from that intended time, not from
//! when the producer got around to sending: if the broker stalls for 50 ms, every record
//! that should have been sent during the stall reports the wait it suffered. Measuring from
//! the actual send time would hide the stall (coordinated omission).

use std::time::{Duration, Instant};

/// Nanoseconds since the run's origin, on a clock every thread shares (CLOCK_MONOTONIC).
#[derive(Copy, Clone, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new(origin: Instant) -> Clock {
        Clock { origin }
    }
    pub fn origin(&self) -> Instant {
        self.origin
    }
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }
    pub fn ns_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_nanos() as u64
    }
    pub fn instant(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }
}

/// The intended send times of one producer's records: `first_ns + i * period`.
#[derive(Clone, Debug)]
pub struct RateSchedule {
    first_ns: u64,
    period_ns: f64,
    next: u64,
}

impl RateSchedule {
    /// Producer `index` of `producers` sharing `total_rate` records/s from `start_ns`. Each
    /// producer runs at `total_rate / producers`, offset by `index / producers` of a period
    /// so that together they send at evenly spaced times.
    pub fn new(total_rate: f64, producers: usize, index: usize, start_ns: u64) -> RateSchedule {
        debug_assert!(total_rate > 0.0 && producers > 0 && index < producers);
        let period_ns = 1e9 * producers as f64 / total_rate;
        let first_ns = start_ns + (period_ns * index as f64 / producers as f64) as u64;
        RateSchedule {
            first_ns,
            period_ns,
            next: 0,
        }
    }

    /// Intended time of record `i`.
    pub fn intended_ns(&self, i: u64) -> u64 {
        self.first_ns + (i as f64 * self.period_ns) as u64
    }

    /// Intended time of the next record not yet taken.
    pub fn peek_ns(&self) -> u64 {
        self.intended_ns(self.next)
    }

    /// Takes the next record's intended time if it is due by `now_ns`.
    pub fn take_due(&mut self, now_ns: u64) -> Option<u64> {
        let t = self.peek_ns();
        if t <= now_ns {
            self.next += 1;
            Some(t)
        } else {
            None
        }
    }

    /// Records taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }

    pub fn period_ns(&self) -> f64 {
        self.period_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_hits_the_rate_without_drift() {
        // 3 records/us for a second: one in a billion is 3,000,000 records.
        let mut s = RateSchedule::new(3_000_000.0, 1, 0, 0);
        let mut count = 0u64;
        let mut last = 0;
        while let Some(t) = s.take_due(1_000_000_000 - 1) {
            assert!(t >= last, "times go forward");
            last = t;
            count += 1;
        }
        assert_eq!(count, 3_000_000);
        // The millionth record is where the rate says, to the nanosecond.
        assert_eq!(s.intended_ns(1_000_000), 333_333_333);
    }

    #[test]
    fn nothing_is_due_before_its_time() {
        let mut s = RateSchedule::new(1000.0, 1, 0, 5_000_000);
        assert_eq!(s.take_due(4_999_999), None);
        assert_eq!(s.take_due(5_000_000), Some(5_000_000));
        assert_eq!(s.take_due(5_999_999), None);
        assert_eq!(s.take_due(7_000_000), Some(6_000_000));
        assert_eq!(s.take_due(7_000_000), Some(7_000_000));
        assert_eq!(s.taken(), 3);
    }

    #[test]
    fn producers_interleave_evenly_and_share_the_rate() {
        // 4 producers at 4000/s in total: each at 1000/s, 250 us apart.
        let mut all: Vec<u64> = Vec::new();
        for i in 0..4 {
            let mut s = RateSchedule::new(4000.0, 4, i, 0);
            while let Some(t) = s.take_due(10_000_000 - 1) {
                all.push(t);
            }
        }
        assert_eq!(all.len(), 40);
        all.sort_unstable();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, i as u64 * 250_000);
        }
    }

    #[test]
    fn clock_measures_from_its_origin() {
        let origin = Instant::now();
        let clock = Clock::new(origin);
        assert_eq!(clock.ns_at(origin), 0);
        assert_eq!(clock.ns_at(origin + Duration::from_micros(5)), 5_000);
        assert_eq!(clock.instant(7_000), origin + Duration::from_micros(7));
        // An instant before the origin does not wrap around.
        assert_eq!(Clock::new(origin + Duration::from_secs(1)).ns_at(origin), 0);
    }
}
