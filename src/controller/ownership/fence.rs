//! The fence every write for a policy passes: taken while this replica acts on the policy, it
//! lets a write start only while that still holds (the same run of the same ownership), and ends
//! a write in flight the moment it stops holding: the leader stepping down at its renew
//! deadline, or a replica's ring Lease past `acting_until`, or the policy moving to another
//! replica. A write ended that way may still reach the API server if it was already on the
//! wire; it is sent before the renew deadline, and the next owner acts only once the Lease
//! itself has expired, a `leaseDuration − renewDeadline` later.
//!
//! Before, a pass checked ownership once before the status and once after it: against a slow
//! API server, the 224 pod writes already queued went on after the replica stepped down, the
//! last 7.07 s later, some 5 s into the next owner's tenure.

use crate::controller::Ownership;
use crate::controller::ownership::shards::Acting;
use std::future::Future;

/// Proof, checked again at every write, that this replica acts on one policy.
#[derive(Clone)]
pub struct Fence {
    ownership: Ownership,
    identity: String,
    /// The policy's place in the ring (`ring_key`).
    key: String,
    /// The run of holding the Lease the fence was taken in (0 under a leader): a later run, even
    /// of this replica, is another tenure.
    run: u64,
}

/// A write the fence kept from starting or ended: this replica stopped acting on the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced;

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not written: this replica stopped acting on the policy")
    }
}

impl Fence {
    /// The fence of the policy at `key`, when `identity` acts on it now.
    pub(in crate::controller) fn take(ownership: &Ownership, identity: &str, key: String) -> Option<Self> {
        match ownership.acting(identity, &key) {
            Acting::Yes(run) => Some(Self {
                ownership: ownership.clone(),
                identity: identity.to_string(),
                key,
                run,
            }),
            Acting::Paused(_) | Acting::No => None,
        }
    }

    /// Whether this replica still acts on the policy, in the tenure the fence was taken in.
    pub fn holds(&self) -> bool {
        self.ownership.acting(&self.identity, &self.key) == Acting::Yes(self.run)
    }

    /// `write`, started only while the fence holds and ended when it stops holding.
    pub async fn write<F: Future>(&self, write: F) -> Result<F::Output, Fenced> {
        if !self.holds() {
            return Err(Fenced);
        }
        tokio::select! {
            biased;
            () = self.lapsed() => Err(Fenced),
            written = write => Ok(written),
        }
    }

    /// Resolves once the fence no longer holds (never while it does).
    async fn lapsed(&self) {
        match &self.ownership {
            Ownership::Leader(leading) => {
                let mut leading = leading.clone();
                // A closed channel keeps its last value: no step-down will come.
                if leading.wait_for(|leads| !*leads).await.is_err() && *leading.borrow() {
                    std::future::pending::<()>().await;
                }
            }
            Ownership::Shards(view) => {
                let mut view = view.clone();
                loop {
                    let until = {
                        let seen = view.borrow_and_update();
                        if seen.acting(&self.identity, &self.key) != Acting::Yes(self.run) {
                            return;
                        }
                        seen.acting_until
                    };
                    let Some(until) = until else { return };
                    tokio::select! {
                        changed = view.changed() => if changed.is_err() {
                            // No renewal will come: acting ends at `until`.
                            tokio::time::sleep_until(until.into()).await;
                            return;
                        },
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ownership::shards::ShardView;
    use std::time::{Duration, Instant};
    use tokio::sync::watch;

    fn leader(leading: bool) -> (watch::Sender<bool>, Ownership) {
        let (sender, receiver) = watch::channel(leading);
        (sender, Ownership::Leader(receiver))
    }

    #[tokio::test]
    async fn a_write_in_flight_ends_when_the_leader_steps_down_and_none_starts_after() {
        let (sender, ownership) = leader(true);
        let fence = Fence::take(&ownership, "me", "ns/p".into()).expect("leading");
        let hangs = fence.write(std::future::pending::<()>());
        tokio::pin!(hangs);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut hangs)
                .await
                .is_err()
        );
        sender.send_replace(false);
        assert_eq!(hangs.await, Err(Fenced));
        assert_eq!(fence.write(async { 1 }).await, Err(Fenced));
        sender.send_replace(true);
        // Leading again is a new tenure only in the ring; under one Lease the run is the same.
        assert_eq!(fence.write(async { 1 }).await, Ok(1));
    }

    #[tokio::test]
    async fn a_fence_on_a_leader_whose_election_ended_keeps_its_last_answer() {
        let (sender, ownership) = leader(true);
        let fence = Fence::take(&ownership, "me", "ns/p".into()).expect("leading");
        drop(sender);
        assert_eq!(fence.write(async { 2 }).await, Ok(2));
    }

    fn view(acting_for: Option<Duration>, run: u64) -> ShardView {
        ShardView {
            members: vec!["me".into()],
            acting_until: acting_for.map(|d| Instant::now() + d),
            peers: Default::default(),
            run,
        }
    }

    #[tokio::test]
    async fn a_ring_write_ends_at_acting_until_without_any_change_of_view() {
        let (_sender, receiver) = watch::channel(view(Some(Duration::from_millis(50)), 1));
        let ownership = Ownership::Shards(receiver);
        let fence = Fence::take(&ownership, "me", "ns/p".into()).expect("acting");
        let started = Instant::now();
        assert_eq!(fence.write(std::future::pending::<()>()).await, Err(Fenced));
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(!fence.holds());
    }

    #[tokio::test]
    async fn a_new_run_of_the_same_replica_is_another_tenure() {
        let (sender, receiver) = watch::channel(view(Some(Duration::from_secs(60)), 1));
        let ownership = Ownership::Shards(receiver);
        let fence = Fence::take(&ownership, "me", "ns/p".into()).expect("acting");
        assert_eq!(fence.write(async { 3 }).await, Ok(3));
        sender.send_replace(view(Some(Duration::from_secs(60)), 2));
        assert_eq!(fence.write(async { 3 }).await, Err(Fenced));
        assert!(Fence::take(&ownership, "other", "ns/p".into()).is_none());
    }
}
