//! How many TokenReviews the metrics API may ask of the API server: a few in flight at once and a
//! steady rate with a small burst. A flood of made-up bearer tokens (each one new, so no cached
//! answer helps) then costs the API server a bounded load, and the callers past the budget get a
//! 429 at once instead of queueing. Tokens already reviewed are answered from the cache and
//! never touch the budget, so a scraper that was reviewed keeps its access through a flood.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The budget's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReviewLimits {
    /// TokenReviews in flight at once.
    pub concurrent: usize,
    /// TokenReviews a second, on average.
    pub per_second: f64,
    /// TokenReviews that may be made at once after a quiet spell.
    pub burst: f64,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        Self {
            concurrent: 4,
            per_second: 10.0,
            burst: 20.0,
        }
    }
}

/// A token bucket: `burst` reviews available, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    available: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            available: burst,
            refilled: now,
        }
    }

    /// Takes one review from the bucket at `now`: false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.available = (self.available + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next review is available.
    pub fn wait(&self) -> Duration {
        let missing = (1.0 - self.available).max(0.0);
        Duration::from_secs_f64(missing / self.per_second.max(f64::MIN_POSITIVE))
    }
}

/// The budget shared by every request of one metrics API.
pub struct ReviewBudget {
    in_flight: Semaphore,
    bucket: Mutex<TokenBucket>,
}

/// Why a review may not be made now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// When to try again, rounded up to whole seconds (at least 1).
    pub retry_after_seconds: u64,
}

impl ReviewBudget {
    pub fn new(limits: ReviewLimits) -> Self {
        Self {
            in_flight: Semaphore::new(limits.concurrent.max(1)),
            bucket: Mutex::new(TokenBucket::new(
                limits.per_second,
                limits.burst.max(1.0),
                Instant::now(),
            )),
        }
    }

    /// A permit to make one review now, held while it is in flight.
    pub fn admit(&self) -> Result<SemaphorePermit<'_>, OverBudget> {
        let busy = OverBudget {
            retry_after_seconds: 1,
        };
        let permit = self.in_flight.try_acquire().map_err(|_| busy.clone())?;
        let mut bucket = self.bucket.lock().expect("review budget lock");
        if bucket.take(Instant::now()) {
            Ok(permit)
        } else {
            Err(OverBudget {
                retry_after_seconds: bucket.wait().as_secs_f64().ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0, start);
        let granted = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(granted, 20, "the burst, all at once");
        assert!(
            !bucket.take(start + Duration::from_millis(50)),
            "half a review refilled"
        );
        assert!(
            bucket.take(start + Duration::from_millis(100)),
            "one refilled after 0.1 s"
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(
            (0..100).filter(|_| bucket.take(later)).count(),
            20,
            "a quiet minute refills the burst, no more"
        );
    }

    #[test]
    fn a_bucket_says_how_long_to_wait() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 1.0, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start));
        assert_eq!(bucket.wait(), Duration::from_millis(500));
    }

    #[test]
    fn reviews_in_flight_are_capped() {
        let budget = ReviewBudget::new(ReviewLimits {
            concurrent: 2,
            per_second: 1000.0,
            burst: 1000.0,
        });
        let first = budget.admit().unwrap();
        let _second = budget.admit().unwrap();
        assert!(budget.admit().is_err(), "a third while two are in flight");
        drop(first);
        assert!(budget.admit().is_ok(), "room again once one is done");
    }
}
