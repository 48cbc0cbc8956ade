//! The latest sample of every policy, in memory: written by the policy tasks on every tick, read
//! by whatever publishes them (the external metrics API, levee's own `/metrics`). No reader ever
//! calls Redis.

use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the last tick of one policy measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyValues {
    pub namespace: String,
    pub policy: String,
    /// The weighted backlog of the queues that could be read (the last one while Redis cannot
    /// be reached, which makes the sample `failed`).
    pub pending: u64,
    /// Each queue's depth: the last one read (kept while a later read fails, which makes the
    /// sample `failed`), `None` before any read succeeded.
    pub queues: Vec<(String, Option<u64>)>,
    pub sampled_at: Timestamp,
    /// When it was measured on this process's monotonic clock: staleness is judged by this, so
    /// a wall clock stepped backwards cannot make an old sample look new.
    pub sampled: Instant,
    /// Whether the sample failed (any queue unreadable, or Redis unreachable).
    pub failed: bool,
    /// The policy's sample interval: values older than three of them are stale.
    pub interval: Duration,
}

impl PolicyValues {
    /// Keeps what `previous` knew that this sample could not read: the depth of each queue whose
    /// read failed and, when Redis could not be reached at all (`unreachable`), the backlog and
    /// every depth. The sample stays `failed`, so nobody takes these for fresh numbers.
    pub fn keep_last_known(&mut self, previous: &PolicyValues, unreachable: bool) {
        if unreachable {
            self.pending = previous.pending;
            self.queues = previous.queues.clone();
            return;
        }
        for (name, depth) in &mut self.queues {
            if depth.is_none() {
                *depth = previous
                    .queues
                    .iter()
                    .find(|(previous_name, _)| previous_name == name)
                    .and_then(|(_, previous_depth)| *previous_depth);
            }
        }
    }

    /// Whether an HPA should not act on these values at `now` (monotonic).
    pub fn stale(&self, now: Instant) -> bool {
        self.failed || now.saturating_duration_since(self.sampled) > self.interval * 3
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

    /// One policy's values.
    pub fn get(&self, namespace: &str, policy: &str) -> Option<Arc<PolicyValues>> {
        let namespaces = self.namespaces.read().expect("metric values lock");
        namespaces.get(namespace)?.get(policy).cloned()
    }

    /// Every policy's values, by namespace then name.
    pub fn all(&self) -> Vec<Arc<PolicyValues>> {
        let namespaces = self.namespaces.read().expect("metric values lock");
        let mut all: Vec<Arc<PolicyValues>> = namespaces.values().flat_map(|p| p.values().cloned()).collect();
        all.sort_by(|a, b| (&a.namespace, &a.policy).cmp(&(&b.namespace, &b.policy)));
        all
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(sampled_at: Timestamp, sampled: Instant) -> PolicyValues {
        PolicyValues {
            namespace: "jobs".into(),
            policy: "p".into(),
            pending: 1,
            queues: Vec::new(),
            sampled_at,
            sampled,
            failed: false,
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn failed_reads_keep_the_last_known_numbers() {
        let now = Instant::now();
        let mut previous = values(Timestamp::now(), now);
        previous.pending = 9;
        previous.queues = vec![("a".into(), Some(4)), ("b".into(), Some(5))];
        let mut partial = values(Timestamp::now(), now);
        partial.pending = 3;
        partial.queues = vec![("a".into(), Some(3)), ("b".into(), None), ("new".into(), None)];
        partial.failed = true;
        partial.keep_last_known(&previous, false);
        assert_eq!(partial.pending, 3, "the readable queues' total");
        assert_eq!(
            partial.queues,
            vec![("a".into(), Some(3)), ("b".into(), Some(5)), ("new".into(), None)]
        );
        let mut unreachable = values(Timestamp::now(), now);
        unreachable.pending = 0;
        unreachable.failed = true;
        unreachable.keep_last_known(&previous, true);
        assert_eq!((unreachable.pending, unreachable.queues.len()), (9, 2));
        assert!(unreachable.failed);
    }

    #[test]
    fn a_wall_clock_stepped_back_cannot_hide_an_old_sample() {
        let sampled = Instant::now();
        // The wall clock was stepped back an hour after the sample: its wall time is "ahead".
        let ahead = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let old = values(ahead, sampled);
        assert!(
            old.stale(sampled + Duration::from_secs(10)),
            "10 s > 3 intervals of 1 s"
        );
        assert!(!old.stale(sampled + Duration::from_secs(2)));
        assert!(!old.stale(sampled), "a fresh sample is not stale");
    }
}
