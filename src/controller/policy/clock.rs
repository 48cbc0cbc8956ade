//! The circuit's clock: the wall time when levee started, moved forward by the monotonic clock.
//! Durations the circuit measures (minimum open time, alertAfter) therefore follow real elapsed
//! time even when the wall clock is stepped; status still records wall-clock instants, which is
//! what a restarted levee resumes from.

use jiff::{SignedDuration, Timestamp};
use std::time::Instant;

/// Wall time anchored once, advanced monotonically.
#[derive(Clone, Copy, Debug)]
pub struct CircuitClock {
    wall: Timestamp,
    mono: Instant,
}

impl CircuitClock {
    /// Anchored at the present.
    pub fn start() -> Self {
        Self::anchored(Timestamp::now(), Instant::now())
    }

    /// Anchored at `wall` = `mono`.
    pub fn anchored(wall: Timestamp, mono: Instant) -> Self {
        Self { wall, mono }
    }

    /// The circuit's time at `mono`, in whole seconds as status stores them (so a restart
    /// resumes exactly).
    pub fn at(&self, mono: Instant) -> Timestamp {
        let elapsed = SignedDuration::try_from(mono.saturating_duration_since(self.mono))
            .unwrap_or(SignedDuration::MAX);
        let now = self.wall.saturating_add(elapsed).unwrap_or(self.wall);
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }

    /// The circuit's time now.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{Circuit, CircuitRules, Observation, State};
    use crate::fixtures;
    use std::time::Duration;

    #[test]
    fn a_wall_clock_stepped_back_does_not_lengthen_the_minimum_open_time() {
        let rules = CircuitRules {
            min_open: SignedDuration::from_secs(30),
            ..fixtures::rules(20, 50, 5)
        };
        let started = Instant::now();
        let clock = CircuitClock::anchored(Timestamp::from_second(1_800_000_000).unwrap(), started);
        let mut circuit = Circuit::default();
        circuit.step(&rules, clock.at(started), Observation::pending(60), None);
        assert_eq!(circuit.state, State::Open);
        // An hour's step back of the wall clock changes nothing here: 31 s later is 31 s later.
        let later = clock.at(started + Duration::from_secs(31));
        assert_eq!(later.as_second() - 1_800_000_000, 31);
        circuit.step(&rules, later, Observation::pending(10), None);
        assert_eq!(
            circuit.state,
            State::HalfOpen,
            "the dwell ended after 30 s of real time"
        );
    }

    #[test]
    fn whole_seconds_and_never_backwards() {
        let started = Instant::now();
        let clock = CircuitClock::anchored(Timestamp::from_second(100).unwrap(), started);
        assert_eq!(clock.at(started + Duration::from_millis(1500)).as_second(), 101);
        assert_eq!(clock.at(started).as_second(), 100);
    }
}
