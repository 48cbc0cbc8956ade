//! A replica's hold on a Lease it renews, the one piece of lease arithmetic both ownership modes
//! share (the leader's Lease, `leader.rs`; a replica's own ring Lease, `shards.rs`): when the last
//! renewal that succeeded began, whether the hold stands, when it lapses (a renew deadline after
//! that renewal, whatever the request in flight is doing), how long the next request may take,
//! and when the next renewal is due.

use super::leader::LeaseSettings;
use std::time::{Duration, Instant};

/// A hold on a Lease: none until a renewal (or acquisition) succeeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// When the last renewal that succeeded began.
    renewed: Option<Instant>,
}

impl Hold {
    /// A hold renewed at `at`.
    #[cfg(test)]
    pub fn renewed_at(at: Instant) -> Self {
        Self { renewed: Some(at) }
    }

    /// Takes a renewal that began at `at` and succeeded.
    pub fn renew(&mut self, at: Instant) {
        self.renewed = Some(at);
    }

    /// Lets the hold go (another holder, or a renewal refused for good).
    pub fn release(&mut self) {
        self.renewed = None;
    }

    /// When the last renewal that succeeded began.
    pub fn last(&self) -> Option<Instant> {
        self.renewed
    }

    /// When the hold lapses: a renew deadline after the last renewal began.
    pub fn lapses_at(&self, lease: &LeaseSettings) -> Option<Instant> {
        self.renewed.map(|at| at + lease.renew_deadline())
    }

    /// Whether the hold stands at `now`.
    pub fn holds(&self, now: Instant, lease: &LeaseSettings) -> bool {
        self.lapses_at(lease).is_some_and(|lapses| now < lapses)
    }

    /// How long the next request may take: while the hold stands, only until it lapses (a
    /// renewal that hangs must not keep a replica acting past its renew deadline, when another
    /// may be about to take over); otherwise a whole renew deadline.
    pub fn step_budget(&self, now: Instant, lease: &LeaseSettings) -> Duration {
        match self.lapses_at(lease) {
            Some(lapses) if lapses > now => lapses - now,
            _ => lease.renew_deadline(),
        }
    }

    /// When the next renewal is due (`None`: at once, nothing held).
    pub fn next_renewal(&self, lease: &LeaseSettings) -> Option<Instant> {
        self.renewed.map(|at| at + lease.renew_every())
    }

    /// Whether a renewal is due at `now`.
    pub fn renewal_due(&self, now: Instant, lease: &LeaseSettings) -> bool {
        self.next_renewal(lease).is_none_or(|due| now >= due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> LeaseSettings {
        LeaseSettings {
            name: "levee".into(),
            namespace: "levee".into(),
            duration: Duration::from_secs(6),
            pod_uid: None,
        }
    }

    #[test]
    fn a_hold_lapses_a_renew_deadline_after_its_last_renewal_began() {
        let lease = lease();
        let start = Instant::now();
        let hold = Hold::renewed_at(start);
        let deadline = lease.renew_deadline();
        assert!(hold.holds(start + deadline - Duration::from_millis(1), &lease));
        assert!(!hold.holds(start + deadline, &lease));
        assert!(!Hold::default().holds(start, &lease));
    }

    #[test]
    fn the_budget_of_a_step_is_what_is_left_of_the_hold() {
        let lease = lease();
        let start = Instant::now();
        let hold = Hold::renewed_at(start);
        let deadline = lease.renew_deadline();
        assert_eq!(
            hold.step_budget(start + Duration::from_secs(1), &lease),
            deadline - Duration::from_secs(1)
        );
        // Lapsed, or nothing held: a whole renew deadline.
        assert_eq!(hold.step_budget(start + deadline, &lease), deadline);
        assert_eq!(Hold::default().step_budget(start, &lease), deadline);
    }

    #[test]
    fn a_renewal_is_due_every_renew_period_and_at_once_with_nothing_held() {
        let lease = lease();
        let start = Instant::now();
        let mut hold = Hold::default();
        assert!(hold.renewal_due(start, &lease));
        hold.renew(start);
        assert!(!hold.renewal_due(start + lease.renew_every() - Duration::from_millis(1), &lease));
        assert!(hold.renewal_due(start + lease.renew_every(), &lease));
        hold.release();
        assert_eq!(hold.last(), None);
    }
}
