//! What the in-memory stores keep of a pod and of a workload: the few strings the actuator
//! compares and the index looks up, each allocated to its length. Every replica holds every pod
//! and workload it watches; kept as parsed (`stored.rs`: an `ObjectMeta`, whose labels and
//! annotations are `BTreeMap`s that allocate a node of room for eleven pairs, 536 bytes, for the
//! first) a pod and its Deployment came to 6.3 KiB a pair in a heap profile, most of a replica's
//! memory after the policies themselves (docs/benchmarks.md).
//!
//! ## Labels: a bound, and what happens past it
//!
//! Of annotations only levee's marks are kept (`ANNOTATIONS_READ`): levee compares no other.
//!
//! Whoever may write pods or workloads in a namespace chooses their labels. Kubernetes bounds each
//! label (a key of at most 253 characters of DNS prefix, `/` and 63 of name: 317 bytes; a value of
//! at most 63) but not how many an object carries: only the whole object, about 1.5 MiB in etcd,
//! some 17,000 labels of 86 bytes. Kept whole, one pod with 10,000 such labels held 1.2 MB on every
//! replica, and the store's label index an entry more for each.
//!
//! So a replica keeps of one pod's or workload's labels at most [`LABELS_BOUND`] (64) and
//! [`LABEL_BYTES_BOUND`] (8 KiB of keys and values). A pod carries 5 to 20 labels: its template's
//! (the six `app.kubernetes.io/…` recommended ones, a team's, a chart's), its controller's
//! (`pod-template-hash`, `controller-revision-hash`, `statefulset.kubernetes.io/pod-name`), a
//! mesh's (Istio adds three) and levee's; 64 is three times a heavily labelled pod. 8 KiB is 64
//! labels of 128 bytes (a typical one is 20 to 60), or 21 of the longest Kubernetes allows. One
//! object's labels are then kept in at most 10 KiB (the pairs and the slice that holds them), and
//! the index holds an entry only for a label kept. A workload's selector is kept whole: cut, it
//! would select more.
//!
//! Past either bound, the labels levee reads by key are kept first, whatever the bound:
//! [`LABEL_POLICY`] (how levee finds what it marked) and [`LABEL_POD_TEMPLATE_HASH`] (which names a
//! pod's ReplicaSet, so its Deployment: `actuator.rs`); then the others in key order, each while
//! both bounds hold. `labels_left_out` counts the rest, and a warning names the object. A
//! selector (`KeptSelector::matches`, `IndexedStore::selected`) answers a requirement over a label
//! kept exactly, and one over a label the object lacks, when some were left out, as met: it may
//! be among them. Such a pod is then among a target's pods whenever the target's selector could
//! match it, and the actuator keeps only the pods the target owns (by the pod's controller
//! reference, kept whatever the labels): the ReplicaSet, StatefulSet and DaemonSet controllers
//! own only the pods their selector matches (a pod whose labels stop matching is released), so
//! the pods held back are those all the labels would have given. Answered the other way (never
//! matched) such a pod would keep taking work while its workload is held back.
//!
//! Keeping only the labels some selector levee evaluates reads was rejected: those selectors are
//! the target workloads', which tenants write and which arrive on another watch than the pods, in
//! any order. A pod kept before its workload is seen, or before a policy names that workload (a
//! policy's targets change at any time, and a Deployment can be deleted and made again under its
//! name with another selector), would lack the labels the selector reads, and the watch sends a
//! pod again only when it changes: every pod would have to be listed again whenever a selector
//! with a new key appears. And the keys would be tenant-written too: a selector of thousands of
//! requirements would make every pod of its namespace keep thousands of labels, so it would need
//! a bound as well.

use crate::api::labels::{
    ANNOTATION_ACCEPTING, ANNOTATION_POLICY, ANNOTATION_STATE, CONDITION_ACCEPTING, LABEL_POD_TEMPLATE_HASH,
    LABEL_POLICY,
};
use crate::controller::cache::indexed_store::Indexed;
use crate::controller::cache::selector::{KeptSelector, Pairs};
use crate::controller::cache::stored::{StoredPod, StoredWorkload};
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The annotations levee reads of a pod or workload, its marks (`marks.rs`): no other is kept.
const ANNOTATIONS_READ: [&str; 3] = [ANNOTATION_STATE, ANNOTATION_ACCEPTING, ANNOTATION_POLICY];

/// The most labels of one pod or workload a replica keeps.
pub const LABELS_BOUND: usize = 64;
/// The most bytes of labels (keys and values) of one pod or workload a replica keeps.
pub const LABEL_BYTES_BOUND: usize = 8 * 1024;
/// The labels levee reads by key: kept first, whatever the bounds.
const LABELS_READ: [&str; 2] = [LABEL_POLICY, LABEL_POD_TEMPLATE_HASH];

/// What identifies an object, its labels (within the bounds), levee's own annotations, and
/// whether it is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptMeta {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
    pub resource_version: Box<str>,
    /// At most [`LABELS_BOUND`] and [`LABEL_BYTES_BOUND`] of them (see the module's doc).
    pub labels: Pairs,
    /// Only levee's marks ([`ANNOTATIONS_READ`]), all levee compares: not the rest of
    /// `levee.dev/…`, which anyone who may write the object may fill (up to Kubernetes' 256 KiB
    /// of an object's annotations).
    pub annotations: Pairs,
    /// How many of its labels are not kept: a selector over a label it lacks may match it.
    pub labels_left_out: u32,
    /// A deletion timestamp is set.
    pub deleting: bool,
}

impl KeptMeta {
    /// What is kept of the metadata of an object of `kind`; a warning names it when some of its
    /// labels are left out.
    fn kept(meta: ObjectMeta, kind: &str) -> Self {
        let text = |value: Option<String>| value.unwrap_or_default().into_boxed_str();
        let (labels, labels_left_out) = bounded_labels(meta.labels.unwrap_or_default());
        let kept = Self {
            namespace: text(meta.namespace),
            name: text(meta.name),
            uid: text(meta.uid),
            resource_version: text(meta.resource_version),
            labels,
            annotations: meta
                .annotations
                .into_iter()
                .flatten()
                .filter(|(key, _)| ANNOTATIONS_READ.contains(&key.as_str()))
                .collect(),
            labels_left_out,
            deleting: meta.deletion_timestamp.is_some(),
        };
        if labels_left_out > 0 {
            tracing::warn!(
                kind,
                namespace = &*kept.namespace,
                name = &*kept.name,
                left_out = labels_left_out,
                kept = kept.labels.iter().count(),
                "more labels than levee keeps ({LABELS_BOUND}, {LABEL_BYTES_BOUND} bytes): a selector over one left out may match it, and a target's pods are then told by their owner"
            );
        }
        kept
    }
}

/// `labels` within [`LABELS_BOUND`] and [`LABEL_BYTES_BOUND`], and how many are left out: all of
/// them when they fit; otherwise [`LABELS_READ`] first, then the others in key order, each while
/// both bounds hold.
fn bounded_labels(mut labels: BTreeMap<String, String>) -> (Pairs, u32) {
    let size = |(key, value): (&String, &String)| key.len() + value.len();
    if labels.len() <= LABELS_BOUND && labels.iter().map(size).sum::<usize>() <= LABEL_BYTES_BOUND {
        return (labels.into_iter().collect(), 0);
    }
    let total = labels.len();
    let mut kept: Vec<(String, String)> = LABELS_READ
        .iter()
        .filter_map(|key| labels.remove_entry(*key))
        .collect();
    let mut bytes: usize = kept.iter().map(|(key, value)| size((key, value))).sum();
    for (key, value) in labels {
        if kept.len() == LABELS_BOUND {
            break;
        }
        let more = size((&key, &value));
        if bytes + more <= LABEL_BYTES_BOUND {
            bytes += more;
            kept.push((key, value));
        }
    }
    let left_out = u32::try_from(total - kept.len()).unwrap_or(u32::MAX);
    (kept.into_iter().collect(), left_out)
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
            meta: KeptMeta::kept(meta, "Pod"),
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

impl<K: k8s_openapi::Resource> From<StoredWorkload<K>> for KeptWorkload {
    fn from(workload: StoredWorkload<K>) -> Self {
        Self {
            meta: KeptMeta::kept(workload.metadata, K::KIND),
            selector: workload.spec.and_then(|spec| KeptSelector::parse(spec.selector)),
        }
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
    fn labels_truncated(&self) -> bool {
        self.labels_left_out > 0
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
            fn labels_truncated(&self) -> bool {
                self.meta.labels_truncated()
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
    use crate::controller::cache::indexed_store::IndexedStore;
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

    /// Every annotation levee writes is kept, so a marked object compares as marked; another
    /// `levee.dev/…` annotation, of any size, is not.
    #[test]
    fn the_marks_are_the_annotations_kept() {
        use crate::circuit::State;
        use crate::controller::act::marks::{Intent, Marks};
        let marks = Marks::new(
            "p",
            Intent::Follow(State::Open),
            10,
            &crate::fixtures::policy().spec.circuit_rules(),
        );
        let mut metadata = marks.metadata_patch()["metadata"].take();
        metadata["annotations"]["levee.dev/other"] = json!("x".repeat(200 * 1024));
        metadata["name"] = json!("api-1");
        let kept = KeptPod::from(serde_json::from_value::<StoredPod>(json!({"metadata": metadata})).unwrap());
        assert_eq!(kept.meta.annotations.iter().count(), ANNOTATIONS_READ.len());
        assert_eq!(kept.meta.annotations.get("levee.dev/other"), None);
        assert!(!marks.metadata_differs(&kept.meta.annotations, &kept.meta.labels));
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
        let matches = |value| selector(value).unwrap().matches(|key| labels.get(key), false);
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

    /// The bytes `pairs` hold on the heap (less the allocator's rounding).
    fn pairs_bytes(pairs: &Pairs) -> usize {
        pairs
            .iter()
            .map(|(key, value)| std::mem::size_of::<(Box<str>, Box<str>)>() + key.len() + value.len())
            .sum()
    }

    /// What a replica holds of `pod`: the struct and its heap (less the allocator's rounding).
    fn kept_bytes(pod: &KeptPod) -> usize {
        let meta = &pod.meta;
        let controller = pod
            .controller
            .as_ref()
            .map_or(0, |c| c.kind.len() + c.name.len() + c.uid.len());
        let accepting = pod
            .accepting
            .as_ref()
            .map_or(0, |a| a.status.len() + a.reason.as_deref().map_or(0, str::len));
        std::mem::size_of::<KeptPod>()
            + meta.namespace.len()
            + meta.name.len()
            + meta.uid.len()
            + meta.resource_version.len()
            + pairs_bytes(&meta.labels)
            + pairs_bytes(&meta.annotations)
            + controller
            + accepting
    }

    /// The pod `jobs/<name>` of the ReplicaSet `api-5f`, with `labels`.
    fn labelled_pod(name: &str, labels: serde_json::Map<String, serde_json::Value>) -> StoredPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "jobs", "uid": format!("u-{name}"), "resourceVersion": "1",
                         "labels": labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5f", "uid": "rs", "controller": true}]}
        }))
        .unwrap()
    }

    /// 10,000 labels of 86 bytes (`example.com/label-NNNNN`, a value of 63 characters: 860 KB,
    /// under etcd's 1.5 MiB for the whole pod), beside the target's `app: api`, the pod's
    /// `pod-template-hash`, levee's `levee.dev/policy` and `zone: a`.
    fn ten_thousand_labels() -> serde_json::Map<String, serde_json::Value> {
        let mut labels: serde_json::Map<String, serde_json::Value> = (0..10_000)
            .map(|i| (format!("example.com/label-{i:05}"), json!("v".repeat(63))))
            .collect();
        for (key, value) in [
            ("app", "api"),
            ("pod-template-hash", "5f"),
            ("levee.dev/policy", "p"),
            ("zone", "a"),
        ] {
            labels.insert(key.into(), json!(value));
        }
        labels
    }

    #[test]
    fn a_pod_with_ten_thousand_labels_is_kept_within_the_bound() {
        let labels = ten_thousand_labels();
        let whole: Pairs = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let kept = KeptPod::from(labelled_pod("big", labels));
        let before = KeptPod {
            meta: KeptMeta {
                labels: whole.clone(),
                ..kept.meta.clone()
            },
            ..kept.clone()
        };
        let count = kept.meta.labels.iter().count();
        let label_bytes: usize = kept.meta.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        eprintln!(
            "figure: a pod with {} labels ({} bytes of keys and values): kept as {} bytes with every label (before), {} bytes now ({count} labels, {label_bytes} bytes of them)",
            whole.iter().count(),
            whole.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            kept_bytes(&before),
            kept_bytes(&kept),
        );
        assert!(count <= LABELS_BOUND, "{count} labels kept");
        assert!(
            label_bytes <= LABEL_BYTES_BOUND,
            "{label_bytes} bytes of labels kept"
        );
        assert_eq!(
            kept.label("levee.dev/policy"),
            Some("p"),
            "levee's own label is always kept"
        );
        assert_eq!(
            kept.label("pod-template-hash"),
            Some("5f"),
            "so is the one that names the owner"
        );
        assert_eq!(kept.label("app"), Some("api"), "then the others in key order");
        assert_eq!(kept.label("zone"), None, "past the bound");
        assert_eq!(kept.meta.labels_left_out as usize, 10_004 - count);
        assert!(kept.labels_truncated());
    }

    #[test]
    fn labels_within_both_bounds_are_all_kept() {
        let labels = |count: usize, value: &str| -> serde_json::Map<String, serde_json::Value> {
            (0..count).map(|i| (format!("l{i:02}"), json!(value))).collect()
        };
        let at_the_bound = KeptPod::from(labelled_pod("p", labels(LABELS_BOUND, "v")));
        assert_eq!(
            (
                at_the_bound.meta.labels.iter().count(),
                at_the_bound.meta.labels_left_out
            ),
            (LABELS_BOUND, 0)
        );
        assert!(!at_the_bound.labels_truncated());
        let one_more = KeptPod::from(labelled_pod("p", labels(LABELS_BOUND + 1, "v")));
        assert_eq!(
            (one_more.meta.labels.iter().count(), one_more.meta.labels_left_out),
            (LABELS_BOUND, 1)
        );
        assert_eq!(
            one_more.label(&format!("l{LABELS_BOUND}")),
            None,
            "the last in key order"
        );
        // 21 labels of the longest Kubernetes allows (317 + 63 bytes) fit 8 KiB; 22 do not.
        let longest = |count: usize| -> serde_json::Map<String, serde_json::Value> {
            (0..count)
                .map(|i| (format!("{}/{i:0>63}", "d".repeat(253)), json!("v".repeat(63))))
                .collect()
        };
        assert_eq!(
            KeptPod::from(labelled_pod("p", longest(21))).meta.labels_left_out,
            0
        );
        let past = KeptPod::from(labelled_pod("p", longest(22)));
        assert_eq!(
            (past.meta.labels.iter().count(), past.meta.labels_left_out),
            (21, 1)
        );
    }

    /// Selection over a pod whose labels were not all kept: a requirement over a label it kept is
    /// exact; one over a label it did not keep may match (the actuator then goes by the owner).
    #[test]
    fn a_selector_over_a_label_not_kept_may_match_and_one_over_kept_labels_is_exact() {
        let small = labelled_pod(
            "small",
            [("app", "api"), ("pod-template-hash", "5f"), ("zone", "b")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        );
        let big = KeptPod::from(labelled_pod("big", ten_thousand_labels()));
        assert_eq!(big.label("zone"), None, "zone is past the bound");
        let store = IndexedStore::from_objects([big, KeptPod::from(small)]);
        let names = |value| {
            let selector = selector(value).unwrap();
            store
                .selected("jobs", &selector)
                .iter()
                .map(|pod| pod.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(json!({"matchLabels": {"app": "api"}})), ["big", "small"]);
        assert_eq!(
            names(json!({"matchLabels": {"app": "api", "zone": "a"}})),
            ["big"]
        );
        assert_eq!(
            names(json!({"matchLabels": {"zone": "a"}})),
            ["big"],
            "not in the index, still a candidate"
        );
        assert!(
            names(json!({"matchLabels": {"app": "web"}})).is_empty(),
            "app is kept: exact"
        );
        assert!(names(json!({"matchLabels": {"levee.dev/policy": "q"}})).is_empty());
        assert_eq!(
            names(json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})),
            ["big"]
        );
        assert_eq!(
            names(json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]})),
            ["big"]
        );
        assert!(
            names(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["api"]}]}))
                .is_empty()
        );
        let labelled: Vec<_> = store.labelled("jobs", "levee.dev/policy", "p");
        assert_eq!(labelled.len(), 1, "levee's label is indexed");
    }
}
