//! Two policies naming one workload. Each would write its own marks on the workload and its pods
//! every pass, undoing the other's: for 20 pods at a 200 ms interval some 205 writes a second,
//! for as long as both exist, with nothing said. Now exactly one of them writes a shared
//! target's marks, the *claimant*: of the live policies naming it (not being deleted), the one
//! whose name sorts first, a choice every replica makes alike without talking to the others.
//! The claimant writes the strictest of their decisions (a producer held back by any of them is
//! held back: the marks that do not accept win, and between two of those the worse circuit
//! state), each policy's decision being the one it saved in status, as producers only ever
//! follow a saved one. Every sharing policy says so in its `TargetsShared` condition.
//!
//! The policies come from the controller's own watch, kept as small [`KeptPolicy`] copies in an
//! [`IndexedStore`] whose index pairs are the policies' targets (`Deployment/api`), so a
//! target's policies are a lookup, not a scan of every policy at every pass.

use crate::api::{BackpressurePolicy, TargetKind};
use crate::circuit::{CircuitRules, State};
use crate::controller::act::marks::Marks;
use crate::controller::cache::indexed_store::{Indexed, IndexedStore};
use kube::ResourceExt;
use std::sync::Arc;

/// What levee keeps of a policy to share its targets.
#[derive(Clone, Debug)]
pub struct KeptPolicy {
    namespace: String,
    name: String,
    resource_version: Option<String>,
    deleting: bool,
    /// The decision its producers follow: its saved state, `None` in dry run (holds nothing
    /// back).
    saved: Option<State>,
    rules: CircuitRules,
    /// Its targets as index pairs (`Kind/name`, with the target's priority).
    targets: Vec<(String, u32)>,
}

/// The index key of a target.
fn target_key(kind: TargetKind, name: &str) -> String {
    format!("{kind:?}/{name}")
}

impl From<&BackpressurePolicy> for KeptPolicy {
    fn from(policy: &BackpressurePolicy) -> Self {
        Self {
            namespace: policy.namespace().unwrap_or_default(),
            name: policy.name_any(),
            resource_version: policy.resource_version(),
            deleting: policy.metadata.deletion_timestamp.is_some(),
            saved: (!policy.spec.dry_run)
                .then(|| policy.status.as_ref().and_then(|s| s.state).unwrap_or_default()),
            rules: policy.spec.circuit_rules(),
            targets: policy
                .spec
                .targets
                .iter()
                .map(|t| (target_key(t.kind, &t.name), t.priority))
                .collect(),
        }
    }
}

impl Indexed for KeptPolicy {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.targets.iter().map(|(key, _)| (key.as_str(), ""))
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.targets.iter().any(|(k, _)| k == key).then_some("")
    }
    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

impl KeptPolicy {
    /// The marks this policy's saved decision gives its target `key`.
    fn marks(&self, key: &str) -> Option<Marks> {
        let priority = self.targets.iter().find(|(k, _)| k == key)?.1;
        let intent = match self.saved {
            Some(state) => crate::controller::act::marks::Intent::Follow(state),
            None => {
                crate::controller::act::marks::Intent::Release(crate::controller::act::marks::Release::DryRun)
            }
        };
        Some(Marks::new(&self.name, intent, priority, &self.rules))
    }
}

/// A target of a policy that other live policies name too.
#[derive(Clone, Debug)]
pub struct Sharing {
    pub kind: TargetKind,
    pub name: String,
    /// The other live policies naming it, by name.
    pub others: Vec<Arc<KeptPolicy>>,
    /// The policy that writes its marks.
    pub claimant: String,
}

impl Sharing {
    /// Whether `policy` writes this target's marks.
    pub fn claimed_by(&self, policy: &str) -> bool {
        self.claimant == policy
    }

    /// The marks the claimant writes: the strictest of `own` and the other policies' saved
    /// decisions, under the claimant's label, the message naming the policy that decided.
    pub fn strictest(&self, own: Marks) -> Marks {
        let key = target_key(self.kind, &self.name);
        let severity = |marks: &Marks| (!marks.accepting, state_rank(marks.state));
        let mut winner = own.clone();
        for other in self.others.iter().filter_map(|other| other.marks(&key)) {
            if severity(&other) > severity(&winner) {
                winner = other;
            }
        }
        if winner.policy != own.policy {
            winner.message = format!("policy {} holds the decision: {}", winner.policy, winner.message);
            winner.policy = own.policy;
        }
        winner
    }

    /// The `TargetsShared` condition's sentence for this target, seen from `policy`.
    pub fn describe(&self, policy: &str) -> String {
        let others: Vec<&str> = self.others.iter().map(|o| o.name.as_str()).collect();
        let writer = if self.claimed_by(policy) {
            format!("this policy ({}) writes its marks", self.claimant)
        } else {
            format!("policy {} writes its marks", self.claimant)
        };
        format!(
            "{:?} {} is also a target of {}; {writer}, holding it back while any of them does",
            self.kind,
            self.name,
            others.join(", ")
        )
    }
}

/// Open is worse than HalfOpen, which is worse than Closed.
fn state_rank(state: State) -> u8 {
    match state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    }
}

/// The targets of `policy` that other live policies of its namespace name too, with who writes
/// their marks. A policy being deleted claims nothing: the others take its shared targets over
/// (and its release leaves them to them).
pub fn shared_targets(policies: &IndexedStore<KeptPolicy>, policy: &BackpressurePolicy) -> Vec<Sharing> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let deleting = policy.metadata.deletion_timestamp.is_some();
    policy
        .spec
        .targets
        .iter()
        .filter_map(|target| {
            let key = target_key(target.kind, &target.name);
            let mut others: Vec<Arc<KeptPolicy>> = policies
                .labelled(&namespace, &key, "")
                .into_iter()
                .filter(|other| other.name != name && !other.deleting)
                .collect();
            if others.is_empty() {
                return None;
            }
            others.sort_by(|a, b| a.name.cmp(&b.name));
            let first_other = others[0].name.clone();
            let claimant = if !deleting && name < first_other {
                name.clone()
            } else {
                first_other
            };
            Some(Sharing {
                kind: target.kind,
                name: target.name.clone(),
                others,
                claimant,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::act::marks::Intent;
    use serde_json::json;

    /// The policy `jobs/<name>` targeting the Deployment `api` at `priority`, saved `state`.
    fn policy(name: &str, priority: u32, state: &str, extra: serde_json::Value) -> BackpressurePolicy {
        let mut object = json!({
            "metadata": {"name": name, "namespace": "jobs", "uid": format!("uid-{name}")},
            "spec": {
                "redis": {"url": "redis://127.0.0.1:1"},
                "thresholds": {"warning": 2, "critical": 3, "recovery": 1},
                "targets": [{"kind": "Deployment", "name": "api", "priority": priority}]
            },
            "status": {"state": state}
        });
        crate::fixtures::merge(&mut object, extra);
        crate::fixtures::policy_with(object)
    }

    fn store(policies: &[&BackpressurePolicy]) -> IndexedStore<KeptPolicy> {
        IndexedStore::from_objects(policies.iter().map(|p| KeptPolicy::from(*p)))
    }

    fn own_marks(policy: &BackpressurePolicy, state: State) -> Marks {
        let rules = policy.spec.circuit_rules();
        Marks::new(
            &policy.name_any(),
            Intent::Follow(state),
            policy.spec.targets[0].priority,
            &rules,
        )
    }

    #[test]
    fn a_target_no_other_policy_names_is_not_shared() {
        let alone = policy("a", 10, "Closed", json!({}));
        let elsewhere = policy("b", 10, "Open", json!({"metadata": {"namespace": "other"}}));
        assert!(shared_targets(&store(&[&alone, &elsewhere]), &alone).is_empty());
    }

    #[test]
    fn the_first_name_claims_a_shared_target_on_both_sides() {
        let a = policy("a", 10, "Closed", json!({}));
        let b = policy("b", 10, "Open", json!({}));
        let policies = store(&[&a, &b]);
        let from_a = shared_targets(&policies, &a);
        let from_b = shared_targets(&policies, &b);
        assert_eq!((from_a.len(), from_b.len()), (1, 1));
        assert!(from_a[0].claimed_by("a") && from_b[0].claimed_by("a"));
        assert_eq!(from_a[0].others[0].name, "b");
        assert!(
            from_b[0].describe("b").contains("policy a writes its marks"),
            "{}",
            from_b[0].describe("b")
        );
    }

    #[test]
    fn the_claimant_writes_the_other_policys_hold_when_it_is_stricter() {
        let a = policy("a", 10, "Closed", json!({}));
        let b = policy("b", 10, "Open", json!({}));
        let sharing = &shared_targets(&store(&[&a, &b]), &a)[0];
        let marks = sharing.strictest(own_marks(&a, State::Closed));
        assert!(!marks.accepting);
        assert_eq!((marks.state, marks.policy.as_str()), (State::Open, "a"));
        assert!(
            marks.message.starts_with("policy b holds the decision"),
            "{}",
            marks.message
        );
    }

    #[test]
    fn a_hold_beats_a_priority_that_may_still_send() {
        // b is Open but this target is priority 1 in it, within openMaxPriority: accepting.
        let a = policy("a", 10, "HalfOpen", json!({}));
        let b = policy(
            "b",
            1,
            "Open",
            json!({"spec": {"circuit": {"openMaxPriority": 1}}}),
        );
        let sharing = &shared_targets(&store(&[&a, &b]), &a)[0];
        let marks = sharing.strictest(own_marks(&a, State::HalfOpen));
        assert!(!marks.accepting);
        assert_eq!(marks.state, State::HalfOpen);
        assert!(!marks.message.contains("policy b"), "{}", marks.message);
    }

    #[test]
    fn a_policy_in_dry_run_holds_nothing_back_for_the_claimant() {
        let a = policy("a", 10, "Closed", json!({}));
        let b = policy("b", 10, "Open", json!({"spec": {"dryRun": true}}));
        let sharing = &shared_targets(&store(&[&a, &b]), &a)[0];
        assert!(sharing.strictest(own_marks(&a, State::Closed)).accepting);
    }

    #[test]
    fn a_policy_being_deleted_neither_claims_nor_counts() {
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-12-08T00:00:00Z", "finalizers": ["levee.dev/release-targets"]}});
        let a = policy("a", 10, "Open", deleting);
        let b = policy("b", 10, "Closed", json!({}));
        let policies = store(&[&a, &b]);
        // Seen from b, the deleting a is not there: b's target is its own.
        assert!(shared_targets(&policies, &b).is_empty());
        // Seen from a (its release), b claims the target.
        let from_a = shared_targets(&policies, &a);
        assert!(from_a[0].claimed_by("b"));
    }
}
