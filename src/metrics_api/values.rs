//! The latest sample of every policy, in memory: written by the policy tasks on every tick,
//! read by metric requests. No request ever calls Redis.

use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What the last tick of one policy measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyValues {
    pub namespace: String,
    pub policy: String,
    /// The weighted backlog (of the queues that could be read).
    pub pending: u64,
    /// Each queue's depth, `None` when it could not be read.
    pub queues: Vec<(String, Option<u64>)>,
    pub sampled_at: Timestamp,
    /// Whether the sample failed (any queue unreadable, or Redis unreachable).
    pub failed: bool,
    /// The policy's sample interval: values older than three of them are stale.
    pub interval: Duration,
}

impl PolicyValues {
    /// Whether an HPA should not act on these values at `now`.
    pub fn stale(&self, now: Timestamp) -> bool {
        let age = now.duration_since(self.sampled_at);
        self.failed
            || age > jiff::SignedDuration::try_from(self.interval * 3).unwrap_or(jiff::SignedDuration::MAX)
    }
}

/// The shared store; cheap to clone.
#[derive(Clone, Default)]
pub struct MetricValues {
    policies: Arc<RwLock<HashMap<(String, String), PolicyValues>>>,
}

impl MetricValues {
    /// Replaces a policy's values.
    pub fn publish(&self, values: PolicyValues) {
        let key = (values.namespace.clone(), values.policy.clone());
        self.policies
            .write()
            .expect("metric values lock")
            .insert(key, values);
    }

    /// Drops a deleted policy.
    pub fn forget(&self, namespace: &str, policy: &str) {
        self.policies
            .write()
            .expect("metric values lock")
            .remove(&(namespace.to_string(), policy.to_string()));
    }

    /// Every policy of a namespace, sorted by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<PolicyValues> {
        let policies = self.policies.read().expect("metric values lock");
        let mut found: Vec<PolicyValues> = policies
            .values()
            .filter(|v| v.namespace == namespace)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.policy.cmp(&b.policy));
        found
    }
}
