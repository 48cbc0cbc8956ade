//! What the in-memory stores keep of a pod and of a workload: the few strings the actuator
//! compares and the index looks up, each allocated to its length. Every replica holds every pod
//! and workload it watches; kept as parsed (`stored.rs`: an `ObjectMeta`, whose labels and
//! annotations are `BTreeMap`s that allocate a node of room for eleven pairs, 536 bytes, for the
//! first) a pod and its Deployment came to 6.3 KiB a pair in a heap profile, most of a replica's
//! memory after the policies themselves (docs/benchmarks.md).

use super::indexed_store::Indexed;
use super::marks::CONDITION_ACCEPTING;
use super::stored::{StoredPod, StoredWorkload};
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::Expression;

/// The annotations levee reads all start with this.
const LEVEE_ANNOTATIONS: &str = "levee.dev/";

/// Keys and their values, sorted by key, each key once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(Box<str>, Box<str>)]>);

impl Pairs {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(held, _)| (**held).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (&**key, &**value))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Pairs {
    /// Sorted by key; of a key given twice, the last value.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = pairs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        pairs.reverse();
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        pairs.dedup_by(|(later, _), (earlier, _)| later == earlier);
        Self(pairs.into_boxed_slice())
    }
}

/// What identifies an object, its labels, levee's own annotations, and whether it is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptMeta {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
    pub resource_version: Box<str>,
    pub labels: Pairs,
    /// Only `levee.dev/…`: the marks are all levee compares.
    pub annotations: Pairs,
    /// A deletion timestamp is set.
    pub deleting: bool,
}

impl From<ObjectMeta> for KeptMeta {
    fn from(meta: ObjectMeta) -> Self {
        let text = |value: Option<String>| value.unwrap_or_default().into_boxed_str();
        Self {
            namespace: text(meta.namespace),
            name: text(meta.name),
            uid: text(meta.uid),
            resource_version: text(meta.resource_version),
            labels: meta.labels.into_iter().flatten().collect(),
            annotations: meta
                .annotations
                .into_iter()
                .flatten()
                .filter(|(key, _)| key.starts_with(LEVEE_ANNOTATIONS))
                .collect(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// The workload controlling a pod, by its owner reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub kind: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
}

/// A pod's `levee.dev/accepting` condition, as far as levee compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptingCondition {
    pub status: Box<str>,
    pub reason: Option<Box<str>>,
}

impl From<PodCondition> for AcceptingCondition {
    fn from(condition: PodCondition) -> Self {
        Self {
            status: condition.status.into(),
            reason: condition.reason.map(String::into_boxed_str),
        }
    }
}

/// A pod: its metadata, its controller (which workload it belongs to) and levee's condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptPod {
    pub meta: KeptMeta,
    pub controller: Option<Controller>,
    pub accepting: Option<AcceptingCondition>,
}

impl From<StoredPod> for KeptPod {
    fn from(pod: StoredPod) -> Self {
        let mut meta = pod.metadata;
        let controller = meta
            .owner_references
            .take()
            .into_iter()
            .flatten()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| Controller {
                kind: owner.kind.into(),
                name: owner.name.into(),
                uid: owner.uid.into(),
            });
        let accepting = pod
            .status
            .and_then(|status| status.conditions)
            .into_iter()
            .flatten()
            .find(|condition| condition.type_ == CONDITION_ACCEPTING)
            .map(AcceptingCondition::from);
        Self {
            meta: meta.into(),
            controller,
            accepting,
        }
    }
}

/// A workload (Deployment, StatefulSet, DaemonSet): its metadata and its pod selector. `None`
/// for a selector that is missing or that does not parse: it selects no pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptWorkload {
    pub meta: KeptMeta,
    pub selector: Option<KeptSelector>,
}

impl<K> From<StoredWorkload<K>> for KeptWorkload {
    fn from(workload: StoredWorkload<K>) -> Self {
        Self {
            meta: workload.metadata.into(),
            selector: workload.spec.and_then(|spec| KeptSelector::parse(spec.selector)),
        }
    }
}

/// A label selector: its `matchLabels` pairs, which the store's label index looks up, and its
/// parsed `matchExpressions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptSelector {
    pub equal: Pairs,
    pub expressions: Box<[Expression]>,
}

impl KeptSelector {
    /// `None` for an expression with an unknown operator, or `In`/`NotIn` without values
    /// (the API server refuses both on a workload).
    pub fn parse(selector: LabelSelector) -> Option<Self> {
        let expressions = selector
            .match_expressions
            .into_iter()
            .flatten()
            .map(Expression::try_from)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self {
            equal: selector.match_labels.into_iter().flatten().collect(),
            expressions: expressions.into_boxed_slice(),
        })
    }

    /// Whether it selects every object (it has no requirement at all).
    pub fn selects_all(&self) -> bool {
        self.equal.is_empty() && self.expressions.is_empty()
    }

    /// Whether an object whose label `key` has the value `label(key)` meets every requirement.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.equal.iter().all(|(key, value)| label(key) == Some(value))
            && self.expressions.iter().all(|expression| match expression {
                Expression::In(key, values) => label(key).is_some_and(|value| values.contains(value)),
                Expression::NotIn(key, values) => label(key).is_none_or(|value| !values.contains(value)),
                Expression::Equal(key, wanted) => label(key) == Some(wanted.as_str()),
                Expression::NotEqual(key, unwanted) => label(key) != Some(unwanted.as_str()),
                Expression::Exists(key) => label(key).is_some(),
                Expression::DoesNotExist(key) => label(key).is_none(),
            })
    }
}

impl Indexed for KeptMeta {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter()
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
    fn resource_version(&self) -> Option<&str> {
        Some(&self.resource_version)
    }
}

/// Both kept kinds are indexed by their metadata.
macro_rules! indexed_by_meta {
    ($($kind:ty),*) => {$(
        impl Indexed for $kind {
            fn namespace(&self) -> &str {
                self.meta.namespace()
            }
            fn name(&self) -> &str {
                self.meta.name()
            }
            fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
                self.meta.labels()
            }
            fn label(&self, key: &str) -> Option<&str> {
                self.meta.label(key)
            }
            fn resource_version(&self) -> Option<&str> {
                self.meta.resource_version()
            }
        }
    )*};
}

indexed_by_meta!(KeptPod, KeptWorkload);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_what_the_actuator_reads_and_nothing_else() {
        let pod: StoredPod = serde_json::from_value(json!({
            "metadata": {
                "name": "api-1", "namespace": "jobs", "uid": "u-1", "resourceVersion": "12",
                "labels": {"app": "api", "levee.dev/policy": "p"},
                "annotations": {"levee.dev/accepting": "false", "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "c"},
                                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5f", "uid": "u", "controller": true}],
                "deletionTimestamp": "2026-11-28T00:00:00Z"
            },
            "spec": {"containers": [{"name": "api", "image": "api:1"}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "levee.dev/accepting", "status": "False", "reason": "CircuitOpen", "message": "m".repeat(300)}]}
        }))
        .unwrap();
        let kept = KeptPod::from(pod);
        assert_eq!(
            (&*kept.meta.namespace, &*kept.meta.name, &*kept.meta.uid),
            ("jobs", "api-1", "u-1")
        );
        assert_eq!(kept.resource_version(), Some("12"));
        assert_eq!(kept.label("app"), Some("api"));
        assert_eq!(kept.label("levee.dev/policy"), Some("p"));
        assert_eq!(
            kept.meta.annotations.iter().collect::<Vec<_>>(),
            [("levee.dev/accepting", "false")]
        );
        assert!(kept.meta.deleting);
        let controller = kept.controller.unwrap();
        assert_eq!((&*controller.kind, &*controller.name), ("ReplicaSet", "api-5f"));
        let accepting = kept.accepting.unwrap();
        assert_eq!(
            (&*accepting.status, accepting.reason.as_deref()),
            ("False", Some("CircuitOpen"))
        );
    }

    #[test]
    fn a_workload_keeps_its_selector_and_levees_annotations() {
        let deployment: StoredWorkload<Deployment> = serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "jobs", "annotations": {"levee.dev/accepting": "true", "other": "x"}},
            "spec": {"selector": {"matchLabels": {"app": "api"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api"}]}}}
        }))
        .unwrap();
        let kept = KeptWorkload::from(deployment);
        assert_eq!(kept.meta.annotations.iter().count(), 1);
        let selector = kept.selector.unwrap();
        assert_eq!(selector.equal.get("app"), Some("api"));
        assert_eq!(selector.expressions.len(), 1);
    }

    fn selector(value: serde_json::Value) -> Option<KeptSelector> {
        KeptSelector::parse(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn a_selector_matches_as_kubernetes_does() {
        let labels: Pairs = [("app", "api"), ("tier", "a")].into_iter().collect();
        let matches = |value| selector(value).unwrap().matches(|key| labels.get(key));
        assert!(matches(json!({"matchLabels": {"app": "api"}})));
        assert!(!matches(json!({"matchLabels": {"app": "api", "tier": "b"}})));
        assert!(matches(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})
        ));
        assert!(!matches(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(matches(
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(matches(
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
        ));
        assert!(!matches(
            json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
        ));
        assert!(selector(json!({})).unwrap().selects_all());
        assert!(selector(json!({"matchExpressions": [{"key": "app", "operator": "Near"}]})).is_none());
        assert!(selector(json!({"matchExpressions": [{"key": "app", "operator": "In"}]})).is_none());
    }

    #[test]
    fn pairs_are_sorted_and_keep_the_last_value_of_a_key() {
        let pairs: Pairs = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(pairs.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "3")]);
        assert_eq!(pairs.get("c"), None);
    }
}
