//! When to try something that failed again: doubling delays from one second to a minute. Used for
//! re-reading a policy's Secrets while Redis refuses them or they are missing, so a broken
//! policy costs a few API reads a minute per replica, not one per tick.

use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(60);

/// Failures in a row and when the next attempt is allowed.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    failures: u32,
    next: Option<Instant>,
}

impl Backoff {
    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Records a failure at `now`.
    pub fn failed(&mut self, now: Instant) {
        let delay = FIRST
            .checked_mul(1 << self.failures.min(16))
            .unwrap_or(LONGEST)
            .min(LONGEST);
        self.failures = self.failures.saturating_add(1);
        self.next = Some(now + delay);
    }

    /// Records a success: the next failure starts from the first delay.
    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_minute() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        assert!(backoff.ready(start));
        let mut delays = Vec::new();
        for _ in 0..9 {
            backoff.failed(start);
            let delay = (0..=120)
                .map(Duration::from_secs)
                .find(|d| backoff.ready(start + *d))
                .unwrap();
            delays.push(delay.as_secs());
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        backoff.succeeded();
        assert!(backoff.ready(start));
    }
}
