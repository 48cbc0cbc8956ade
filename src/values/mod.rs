//! The latest sample of every policy, in memory: written by the policy tasks on every tick, read
//! by whatever publishes them (the external metrics API, the KEDA external scaler, levee's own
//! `/metrics`). No reader ever calls Redis. A reader may also subscribe to one policy and be woken
//! whenever its values change (the external scaler's `StreamIsActive` pushes that way).
//!
//! With `--ownership=shards` and peers (`peer_wire`), a replica holds the values of the
//! policies it acts on, sampled here, and those of the others, taken from their owners: every
//! replica answers for every policy while Redis is sampled once per policy per tick.

pub mod peer_wire;

use crate::circuit::{Level, State};
use crate::forecast::Forecast;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the last tick of one policy measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyValues {
    pub namespace: String,
    pub policy: String,
    /// The weighted backlog of the queues that could be read (the last one while Redis cannot
    /// be reached, which makes the sample `failed`).
    pub pending: u64,
    /// Each queue's figures.
    pub queues: Vec<QueueValues>,
    /// The age of the oldest waiting job over the queues; `None` when no queue keeps one.
    pub latency: Option<Duration>,
    /// The backlog's forecast; `None` before enough samples.
    pub forecast: Option<Forecast>,
    pub sampled_at: Timestamp,
    /// When it was measured on this process's monotonic clock: staleness is judged by this, so
    /// a wall clock stepped backwards cannot make an old sample look new.
    pub sampled: Instant,
    /// Whether the sample failed (any queue unreadable, or Redis unreachable).
    pub failed: bool,
    /// The policy's sample interval: values older than three of them are stale.
    pub interval: Duration,
    /// The circuit as last decided (the leader) or read from status (a follower); `None` until
    /// the first decision.
    pub circuit: Option<CircuitValues>,
    /// Redis policies: the fullest master's memory at the last sample that read it.
    pub memory: Option<MemoryValues>,
    /// Who measured them.
    pub source: Source,
    /// Where these stand in the store's publications (set by the store): a peer asks for what
    /// was published since the last number it saw.
    pub published: u64,
    /// The owner's publication at which these values last differed from the ones before, in
    /// anything but when they were sampled (set by the owner's store; a peer's values keep the
    /// owner's number): a peer that holds them is only told they were sampled again.
    pub changed: u64,
}

/// Who measured a policy's values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// This replica, acting on the policy: what it shares with its peers.
    #[default]
    Owner,
    /// This replica, not acting on the policy, while no fresh values came from its owner.
    Follower,
    /// The replica named, which acted on the policy when it sent them.
    Peer(String),
}

/// A Redis policy's memory figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryValues {
    /// `used_memory` of the fullest master.
    pub used: u64,
    /// Its `maxmemory`, `None` without a limit.
    pub max: Option<u64>,
    /// The policy's `thresholds.memory.warning` in bytes (`None`: no memory thresholds, or a
    /// percentage of no limit).
    pub warning: Option<u64>,
}

/// One queue's figures: the last ones read (kept while a later read fails, which makes the sample
/// `failed`), `None` before any read succeeded (and, for the latency, for a layout that keeps no
/// enqueue time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueValues {
    pub name: String,
    pub depth: Option<u64>,
    pub latency: Option<Duration>,
}

impl QueueValues {
    pub fn new(name: &str, depth: Option<u64>, latency: Option<Duration>) -> Self {
        Self {
            name: name.to_string(),
            depth,
            latency,
        }
    }
}

/// The circuit's state and the backlog's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitValues {
    pub state: State,
    pub level: Level,
}

impl PolicyValues {
    /// Keeps what `previous` knew that this sample could not read: the depth of each queue whose
    /// read failed and, when Redis could not be reached at all (`unreachable`), the backlog and
    /// every depth. The sample stays `failed`, so nobody takes these for fresh numbers. The
    /// circuit is the one last decided until the next decision replaces it.
    pub fn keep_last_known(&mut self, previous: &PolicyValues, unreachable: bool) {
        self.circuit = self.circuit.or(previous.circuit);
        self.memory = self.memory.or(previous.memory);
        if unreachable {
            self.pending = previous.pending;
            self.queues = previous.queues.clone();
            self.latency = previous.latency;
            return;
        }
        for queue in &mut self.queues {
            let Some(last) = previous.queues.iter().find(|q| q.name == queue.name) else {
                continue;
            };
            queue.depth = queue.depth.or(last.depth);
            queue.latency = queue.latency.or(last.latency);
        }
    }

    /// Whether these say what `other` says, when they were sampled aside.
    pub fn same_content(&self, other: &PolicyValues) -> bool {
        self.pending == other.pending
            && self.queues == other.queues
            && self.latency == other.latency
            && self.forecast == other.forecast
            && self.failed == other.failed
            && self.interval == other.interval
            && self.circuit == other.circuit
            && self.memory == other.memory
            && self.source == other.source
    }

    /// `used_memory / maxmemory` of the fullest master; `None` without a reading or a limit.
    pub fn memory_ratio(&self) -> Option<f64> {
        let memory = self.memory?;
        Some(memory.used as f64 / memory.max? as f64)
    }

    /// Whether these came from the policy's owner within three sample intervals of `now`: a
    /// replica not acting on the policy then leaves Redis alone.
    pub fn fresh_from_peer(&self, now: Instant) -> bool {
        matches!(self.source, Source::Peer(_))
            && now.saturating_duration_since(self.sampled) <= self.interval * 3
    }

    /// Whether an autoscaler should not act on these values at `now` (monotonic).
    pub fn stale(&self, now: Instant) -> bool {
        self.failed || now.saturating_duration_since(self.sampled) > self.interval * 3
    }
}

/// One policy's latest values (`None` while a subscriber waits for a policy levee does not run).
type Slot = watch::Sender<Option<Arc<PolicyValues>>>;

/// One namespace's policies, by name.
type Policies = BTreeMap<String, Slot>;

/// The shared store, by namespace then policy; cheap to clone.
#[derive(Clone, Default)]
pub struct MetricValues {
    namespaces: Arc<RwLock<HashMap<String, Policies>>>,
    /// The last publication's number. Each is numbered while its slot is held (or the whole
    /// store is), so a reader that took this number before looking at the slots has seen every
    /// publication up to it.
    published: Arc<AtomicU64>,
}

impl MetricValues {
    fn next_number(&self) -> u64 {
        self.published.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Replaces a policy's values.
    pub fn publish(&self, mut values: PolicyValues) {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        values.published = self.next_number();
        let policies = namespaces.entry(values.namespace.clone()).or_default();
        match policies.get(&values.policy) {
            Some(slot) => {
                values.changed = match slot.borrow().as_deref() {
                    Some(previous) if previous.same_content(&values) => previous.changed,
                    _ => values.published,
                };
                slot.send_replace(Some(Arc::new(values)));
            }
            None => {
                values.changed = values.published;
                policies.insert(values.policy.clone(), watch::Sender::new(Some(Arc::new(values))));
            }
        }
    }

    /// Takes a peer's word that a policy's values, as they stood at its publication `changed`,
    /// were sampled again at `sampled` (`sampled_at` on the wall clock): the held values are
    /// renewed when they came from that peer at that publication (subscribers are not woken:
    /// nothing they read changed). False when they did not: this replica holds other values and
    /// needs the peer's whole answer.
    pub fn confirm_from_peer(&self, confirmed: &peer_wire::Confirmed) -> bool {
        let namespaces = self.namespaces.read().expect("metric values lock");
        let Some(slot) = namespaces
            .get(&confirmed.namespace)
            .and_then(|policies| policies.get(&confirmed.policy))
        else {
            return false;
        };
        let mut renewed = false;
        slot.send_if_modified(|held| {
            if let Some(current) = held
                && current.source == confirmed.source
                && current.changed == confirmed.changed
            {
                renewed = true;
                if current.sampled < confirmed.sampled {
                    let values = Arc::make_mut(current);
                    values.sampled = confirmed.sampled;
                    values.sampled_at = confirmed.sampled_at;
                }
            }
            false
        });
        renewed
    }

    /// Takes values a peer sent for a policy this replica knows of (the caller's to check) and
    /// does not sample as its owner: in place of its own sample while they are fresh (however
    /// recent its own: the replica then stops sampling the policy), else when newer than what it
    /// holds; whether they were taken.
    pub fn take_from_peer(&self, values: PolicyValues) -> bool {
        let fresh = values.fresh_from_peer(Instant::now());
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        let slot = namespaces
            .entry(values.namespace.clone())
            .or_default()
            .entry(values.policy.clone())
            .or_insert_with(|| watch::Sender::new(None));
        slot.send_if_modified(|held| match held {
            None => {
                *held = Some(Arc::new(PolicyValues {
                    published: self.next_number(),
                    ..values
                }));
                true
            }
            Some(current)
                if (current.source == Source::Follower && fresh)
                    || (current.source != Source::Owner && current.sampled < values.sampled) =>
            {
                *held = Some(Arc::new(PolicyValues {
                    published: self.next_number(),
                    ..values
                }));
                true
            }
            _ => false,
        })
    }

    /// The values this replica sampled as the owner and published after the publication
    /// numbered `since`, sorted, and the number of the last publication they include.
    pub fn owned_since(&self, since: u64) -> (Vec<Arc<PolicyValues>>, u64) {
        let upto = self.published.load(Ordering::SeqCst);
        let mut owned = self.all();
        owned.retain(|values| values.source == Source::Owner && values.published > since);
        (owned, upto)
    }

    /// Sets a policy's circuit; subscribers are woken only when it changed.
    pub fn publish_circuit(&self, namespace: &str, policy: &str, circuit: CircuitValues) {
        let namespaces = self.namespaces.read().expect("metric values lock");
        let Some(slot) = namespaces
            .get(namespace)
            .and_then(|policies| policies.get(policy))
        else {
            return;
        };
        slot.send_if_modified(|values| match values {
            Some(values) if values.circuit != Some(circuit) => {
                let values = Arc::make_mut(values);
                values.circuit = Some(circuit);
                values.published = self.next_number();
                values.changed = values.published;
                true
            }
            _ => false,
        });
    }

    /// Drops a deleted policy (its subscribers see `None`).
    pub fn forget(&self, namespace: &str, policy: &str) {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        if let Some(policies) = namespaces.get_mut(namespace) {
            if let Some(slot) = policies.get(policy) {
                slot.send_replace(None);
            }
            policies.retain(|_, slot| slot.borrow().is_some() || slot.receiver_count() > 0);
            if policies.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    /// Follows one policy's values, whether levee runs it yet or not. Dropping the receiver
    /// and calling `unsubscribed` lets the store forget a policy that never came.
    pub fn subscribe(&self, namespace: &str, policy: &str) -> watch::Receiver<Option<Arc<PolicyValues>>> {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        namespaces
            .entry(namespace.to_string())
            .or_default()
            .entry(policy.to_string())
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe()
    }

    /// A subscriber of `policy` went away: forget the policy if it holds no values and nobody
    /// else follows it.
    pub fn unsubscribed(&self, namespace: &str, policy: &str) {
        let mut namespaces = self.namespaces.write().expect("metric values lock");
        if let Some(policies) = namespaces.get_mut(namespace) {
            if policies
                .get(policy)
                .is_some_and(|slot| slot.borrow().is_none() && slot.receiver_count() == 0)
            {
                policies.remove(policy);
            }
            if policies.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    /// One policy's values.
    pub fn get(&self, namespace: &str, policy: &str) -> Option<Arc<PolicyValues>> {
        let namespaces = self.namespaces.read().expect("metric values lock");
        namespaces.get(namespace)?.get(policy)?.borrow().clone()
    }

    /// Every policy's values, by namespace then name.
    pub fn all(&self) -> Vec<Arc<PolicyValues>> {
        let namespaces = self.namespaces.read().expect("metric values lock");
        let mut all: Vec<Arc<PolicyValues>> = namespaces
            .values()
            .flat_map(|p| p.values().filter_map(|slot| slot.borrow().clone()))
            .collect();
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
                .filter_map(|name| policies.get(name)?.borrow().clone())
                .collect(),
            None => policies
                .values()
                .filter_map(|slot| slot.borrow().clone())
                .collect(),
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
            latency: None,
            forecast: None,
            sampled_at,
            sampled,
            failed: false,
            interval: Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Source::Owner,
            published: 0,
            changed: 0,
        }
    }

    #[test]
    fn peer_values_replace_only_older_values_of_a_policy_not_sampled_here_as_owner() {
        let store = MetricValues::default();
        let start = Instant::now();
        let from_peer = |pending: u64, at: Instant| PolicyValues {
            pending,
            source: Source::Peer("shard-b".into()),
            ..values(Timestamp::now(), at)
        };
        assert!(
            store.take_from_peer(from_peer(1, start)),
            "a policy with no values here takes the owner's"
        );
        store.forget("jobs", "p");
        let now = Instant::now();
        let mut follower = values(Timestamp::now(), now);
        follower.source = Source::Follower;
        store.publish(follower);
        assert!(
            store.take_from_peer(from_peer(5, now - Duration::from_millis(100))),
            "fresh values from the owner replace a follower's own sample, even a newer one"
        );
        let start = now + Duration::from_millis(500);
        assert!(store.take_from_peer(from_peer(2, start + Duration::from_secs(1))));
        assert!(
            !store.take_from_peer(from_peer(3, start)),
            "older than what is held"
        );
        let held = store.get("jobs", "p").unwrap();
        assert_eq!(held.pending, 2);
        assert!(held.fresh_from_peer(start + Duration::from_secs(4)));
        assert!(!held.fresh_from_peer(start + Duration::from_secs(5)));
        assert!(
            store.owned_since(0).0.is_empty(),
            "a peer's values are not shared on"
        );
        store.publish(values(Timestamp::now(), start + Duration::from_secs(2)));
        assert!(
            !store.take_from_peer(from_peer(4, start + Duration::from_secs(9))),
            "the owner's own samples are never replaced"
        );
        let (owned, upto) = store.owned_since(0);
        assert_eq!(owned.len(), 1);
        assert!(store.owned_since(upto).0.is_empty(), "nothing new since");
        store.publish_circuit(
            "jobs",
            "p",
            CircuitValues {
                state: State::Open,
                level: Level::Critical,
            },
        );
        let (changed, _) = store.owned_since(upto);
        assert_eq!(changed.len(), 1, "a new circuit is a new publication");
    }

    #[test]
    fn failed_reads_keep_the_last_known_numbers() {
        let now = Instant::now();
        let mut previous = values(Timestamp::now(), now);
        previous.pending = 9;
        previous.queues = vec![
            QueueValues::new("a", Some(4), None),
            QueueValues::new("b", Some(5), Some(Duration::from_secs(7))),
        ];
        let mut partial = values(Timestamp::now(), now);
        partial.pending = 3;
        partial.queues = vec![
            QueueValues::new("a", Some(3), None),
            QueueValues::new("b", None, None),
            QueueValues::new("new", None, None),
        ];
        partial.failed = true;
        partial.keep_last_known(&previous, false);
        assert_eq!(partial.pending, 3, "the readable queues' total");
        assert_eq!(
            partial.queues,
            vec![
                QueueValues::new("a", Some(3), None),
                QueueValues::new("b", Some(5), Some(Duration::from_secs(7))),
                QueueValues::new("new", None, None),
            ]
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

    #[tokio::test]
    async fn a_subscriber_is_woken_by_new_values_and_by_a_changed_circuit_only() {
        let store = MetricValues::default();
        let mut follower = store.subscribe("jobs", "p");
        assert!(follower.borrow_and_update().is_none(), "not run yet");
        store.publish(values(Timestamp::now(), Instant::now()));
        assert!(follower.has_changed().unwrap());
        assert_eq!(follower.borrow_and_update().as_ref().unwrap().pending, 1);
        let open = CircuitValues {
            state: State::Open,
            level: Level::Critical,
        };
        store.publish_circuit("jobs", "p", open);
        assert!(follower.has_changed().unwrap(), "the circuit changed");
        assert_eq!(follower.borrow_and_update().as_ref().unwrap().circuit, Some(open));
        store.publish_circuit("jobs", "p", open);
        assert!(!follower.has_changed().unwrap(), "the same circuit wakes nobody");
        let mut next = values(Timestamp::now(), Instant::now());
        next.keep_last_known(&store.get("jobs", "p").unwrap(), false);
        assert_eq!(next.circuit, Some(open), "a new sample keeps the last decision");
        store.forget("jobs", "p");
        assert!(follower.has_changed().unwrap());
        assert!(follower.borrow_and_update().is_none(), "a deleted policy is None");
        assert!(store.all().is_empty());
    }

    #[test]
    fn a_policy_nobody_runs_is_forgotten_when_its_last_subscriber_leaves() {
        let store = MetricValues::default();
        let follower = store.subscribe("jobs", "never");
        let other = store.subscribe("jobs", "never");
        drop(follower);
        store.unsubscribed("jobs", "never");
        assert_eq!(
            store.namespaces.read().unwrap()["jobs"].len(),
            1,
            "one still follows it"
        );
        drop(other);
        store.unsubscribed("jobs", "never");
        assert!(store.namespaces.read().unwrap().is_empty());
        store.publish(values(Timestamp::now(), Instant::now()));
        store.unsubscribed("jobs", "p");
        assert!(store.get("jobs", "p").is_some(), "a running policy stays");
    }
}
