//! The latest sample of every policy, in memory: written by the policy tasks on every tick,
//! read by metric requests. No request ever calls Redis.

use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// One namespace's policies, by name.
type Policies = BTreeMap<String, Arc<PolicyValues>>;

/// The shared store, by namespace then policy; cheap to clone.
#[derive(Clone, Default)]
pub struct MetricValues {
    namespaces: Arc<RwLock<HashMap<String, Policies>>>,
}

impl MetricValues {
    /// Replaces a policy's values.
    pub fn publish(&self, values: PolicyValues) {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        let policies = namespaces.entry(values.namespace.clone()).or_default();
        policies.insert(values.policy.clone(), Arc::new(values));
    }

    /// Drops a deleted policy.
    pub fn forget(&self, namespace: &str, policy: &str) {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        if let Some(policies) = namespaces.get_mut(namespace) {
            policies.remove(policy);
            if policies.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    /// The policies of a namespace, sorted by name; only those named in `only` when given (the
    /// HPA's selector names one policy, so most requests look at one entry, not all).
    pub fn in_namespace(&self, namespace: &str, only: Option<&BTreeSet<String>>) -> Vec<Arc<PolicyValues>> {
        let namespaces = self.namespaces.read().expect("metric values lock");
        let Some(policies) = namespaces.get(namespace) else {
            return Vec::new();
        };
        match only {
            Some(names) => names
                .iter()
                .filter_map(|name| policies.get(name).cloned())
                .collect(),
            None => policies.values().cloned().collect(),
        }
    }
}
