//! How often a queue's oldest job is read for its latency (`spec.redis.latencyRefresh`), and
//! its latency on the ticks in between. Pure: the caller passes the clock.
//!
//! Between two reads a queue's latency is the age of its oldest job at the last read plus the
//! time since, or zero when the tick's depth reads zero. That is an upper bound of the true
//! figure: the job read last may have run since (the true age is then smaller), and a job that
//! came after a read that found none is younger than the time since. A figure that reaches
//! `confirm_at` (the policy's lowest latency threshold) is read again in the same tick, so the
//! circuit never sees an estimate at or above a threshold: below every threshold, where an
//! upper bound is, the true figure is too, and the level is the same as a read would give.
//!
//! Reads are spread over the ticks: queue `i` is read again on the ticks `t` where
//! `(t + i) % every_ticks == 0`, so each tick reads about `1 / every_ticks` of the queues rather
//! than all of them on one tick in `every_ticks`.

use std::time::{Duration, Instant};

/// When a queue's latency is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyRefresh {
    /// Every this many ticks (1: every tick).
    pub every_ticks: u64,
    /// Read at once when the estimate reaches this (the lowest latency threshold).
    pub confirm_at: Option<Duration>,
}

impl LatencyRefresh {
    /// Read every tick.
    pub const EVERY_TICK: Self = Self {
        every_ticks: 1,
        confirm_at: None,
    };

    /// Every `refresh`, counted in ticks of `sample_interval` (rounded up, at least one).
    pub fn new(refresh: Duration, sample_interval: Duration, confirm_at: Option<Duration>) -> Self {
        let interval = sample_interval.as_nanos().max(1);
        let ticks = refresh.as_nanos().div_ceil(interval).max(1);
        Self {
            every_ticks: u64::try_from(ticks).unwrap_or(u64::MAX),
            confirm_at,
        }
    }
}

/// What the last read of a queue's latency found, and when it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LastRead {
    age: Duration,
    at: Instant,
}

/// The latency reads of one policy's queues, slot by slot (a slot per queue).
#[derive(Debug)]
pub struct LatencySchedule {
    refresh: LatencyRefresh,
    tick: u64,
    last: Vec<Option<LastRead>>,
}

impl LatencySchedule {
    pub fn new(refresh: LatencyRefresh, slots: usize) -> Self {
        Self {
            refresh,
            tick: 0,
            last: vec![None; slots],
        }
    }

    /// Whether `slot`'s latency is read in this tick: never read (or its last read failed), its
    /// turn, or an estimate that reached `confirm_at`.
    pub fn due(&self, slot: usize, now: Instant) -> bool {
        let Some(last) = self.last.get(slot).copied().flatten() else {
            return true;
        };
        let turn = self
            .tick
            .wrapping_add(slot as u64)
            .is_multiple_of(self.refresh.every_ticks);
        turn || self.refresh.confirm_at.is_some_and(|at| since(last, now) >= at)
    }

    /// Keeps what a read sent at `at` found (a failed read is read again next tick).
    pub fn record(&mut self, slot: usize, read: &Result<Duration, String>, at: Instant) {
        if let Some(entry) = self.last.get_mut(slot) {
            *entry = read.as_ref().ok().map(|&age| LastRead { age, at });
        }
    }

    /// `slot`'s latency on a tick that did not read it: zero when its depth reads zero, else the
    /// age at the last read plus the time since.
    pub fn estimate(
        &self,
        slot: usize,
        depth: &Result<u64, String>,
        now: Instant,
    ) -> Result<Duration, String> {
        let last = self
            .last
            .get(slot)
            .copied()
            .flatten()
            .ok_or_else(|| "the latency of this queue was never read".to_string())?;
        Ok(if depth == &Ok(0) {
            Duration::ZERO
        } else {
            since(last, now)
        })
    }

    /// Moves on to the next tick.
    pub fn end_tick(&mut self) {
        self.tick = self.tick.wrapping_add(1);
    }
}

fn since(last: LastRead, now: Instant) -> Duration {
    last.age + now.saturating_duration_since(last.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ticks_round_up_and_zero_means_every_tick() {
        assert_eq!(LatencyRefresh::new(10 * SECOND, SECOND, None).every_ticks, 10);
        assert_eq!(
            LatencyRefresh::new(SECOND, Duration::from_millis(300), None).every_ticks,
            4
        );
        assert_eq!(LatencyRefresh::new(Duration::ZERO, SECOND, None).every_ticks, 1);
        assert_eq!(LatencyRefresh::new(SECOND, 10 * SECOND, None).every_ticks, 1);
    }

    #[test]
    fn reads_are_spread_over_the_ticks_after_a_first_full_read() {
        let start = Instant::now();
        let mut schedule = LatencySchedule::new(LatencyRefresh::new(4 * SECOND, SECOND, None), 8);
        let mut reads_per_tick = Vec::new();
        for tick in 0..9u32 {
            let now = start + tick * SECOND;
            let due: Vec<usize> = (0..8).filter(|&slot| schedule.due(slot, now)).collect();
            for &slot in &due {
                schedule.record(slot, &Ok(SECOND), now);
            }
            reads_per_tick.push(due.len());
            schedule.end_tick();
        }
        assert_eq!(reads_per_tick, [8, 2, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn an_estimate_grows_from_the_last_read_and_is_zero_on_an_empty_queue() {
        let start = Instant::now();
        let mut schedule = LatencySchedule::new(LatencyRefresh::new(10 * SECOND, SECOND, None), 1);
        assert!(schedule.estimate(0, &Ok(3), start).is_err());
        schedule.record(0, &Ok(5 * SECOND), start);
        assert_eq!(schedule.estimate(0, &Ok(3), start + 2 * SECOND), Ok(7 * SECOND));
        assert_eq!(
            schedule.estimate(0, &Ok(0), start + 2 * SECOND),
            Ok(Duration::ZERO)
        );
        schedule.record(0, &Err("NOPERM".into()), start);
        assert!(schedule.due(0, start), "a failed read is read again");
    }

    #[test]
    fn an_estimate_at_the_lowest_threshold_is_read_again_at_once() {
        let start = Instant::now();
        let refresh = LatencyRefresh::new(100 * SECOND, SECOND, Some(30 * SECOND));
        let mut schedule = LatencySchedule::new(refresh, 2);
        schedule.record(0, &Ok(20 * SECOND), start);
        schedule.record(1, &Ok(Duration::ZERO), start);
        schedule.end_tick();
        assert!(!schedule.due(0, start + 9 * SECOND));
        assert!(schedule.due(0, start + 10 * SECOND), "20 s + 10 s reaches 30 s");
        assert!(!schedule.due(1, start + 29 * SECOND));
        assert!(schedule.due(1, start + 30 * SECOND));
    }
}
