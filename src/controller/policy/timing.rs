//! When a policy's task ticks and writes: its phase within the interval, fixed by its UID, and
//! the shared grid the policies of a backend read together tick on (Kafka's cluster).

use crate::api::BackpressurePolicy;
use crate::sampler::BackendEndpoint;
use kube::ResourceExt;

/// Ticks every `sampleInterval`, at an offset within the interval that the policy's UID fixes, so
/// a thousand policies started together do not all tick in the same instant (each tick then runs
/// beside few others, and the API server sees an even load). Kafka policies are the exception:
/// those of one cluster share its phase, on one grid of the process's time, so that with one
/// interval they tick in the same instant and the sampler reads them in one cluster tick
/// (`sampler/kafka/batch.rs`); a late tick skips to the grid rather than drift off it.
pub fn ticker(policy: &BackpressurePolicy) -> tokio::time::Interval {
    let period: std::time::Duration = policy.spec.sample_interval.into();
    let now = tokio::time::Instant::now();
    let (start, missed) = match BackendEndpoint::tick_grid(&policy.spec) {
        Some(grid) => (
            on_grid(*GRID_ORIGIN, now, period) + period.mul_f64(phase_of(&grid)),
            tokio::time::MissedTickBehavior::Skip,
        ),
        None => (
            now + period.mul_f64(phase_of(&task_key(policy))),
            tokio::time::MissedTickBehavior::Delay,
        ),
    };
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(missed);
    interval
}

/// Where the grids of the tickers that share one start (`on_grid`).
static GRID_ORIGIN: std::sync::LazyLock<tokio::time::Instant> =
    std::sync::LazyLock::new(tokio::time::Instant::now);

/// The first instant at or after `now` that is a whole number of `period`s after `origin`.
fn on_grid(
    origin: tokio::time::Instant,
    now: tokio::time::Instant,
    period: std::time::Duration,
) -> tokio::time::Instant {
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let period_ns = period.as_nanos().max(1);
    let periods = elapsed.div_ceil(period_ns);
    origin + std::time::Duration::from_nanos(u64::try_from(periods * period_ns).unwrap_or(u64::MAX))
}

/// What identifies a policy's task and fixes its phases: its UID (its name where none is set).
pub fn task_key(policy: &BackpressurePolicy) -> String {
    policy.uid().unwrap_or_else(|| policy.name_any())
}

/// A fraction in [0, 1) that is the same for the same key (FNV-1a).
pub fn phase_of(key: &str) -> f64 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::{on_grid, phase_of};

    #[test]
    fn a_grid_instant_is_the_first_whole_period_at_or_after_now() {
        let origin = tokio::time::Instant::now();
        let period = std::time::Duration::from_millis(1000);
        let at = |ms: u64| origin + std::time::Duration::from_millis(ms);
        assert_eq!(on_grid(origin, at(0), period), at(0));
        assert_eq!(on_grid(origin, at(1), period), at(1000));
        assert_eq!(on_grid(origin, at(2500), period), at(3000));
        assert_eq!(on_grid(origin, at(3000), period), at(3000));
    }

    #[test]
    fn phases_are_stable_and_spread_over_the_interval() {
        assert_eq!(phase_of("a-uid"), phase_of("a-uid"));
        let phases: Vec<f64> = (0..1000).map(|i| phase_of(&format!("uid-{i}"))).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        // Ten buckets of a tenth each: none empty, none holding more than twice its share.
        let mut buckets = [0_usize; 10];
        for phase in phases {
            buckets[(phase * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| (50..=200).contains(&n)), "{buckets:?}");
    }
}
