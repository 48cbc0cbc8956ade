//! What the in-memory stores keep of each object: only what the actuator and the autoscaler read.
//! A pod as the API server sends it is mostly its spec, status and managed fields, a workload
//! mostly its pod template and `last-applied-configuration`; a pod's spec and a workload's
//! template are not even parsed (`stored.rs`), and what is parsed but never read is dropped here
//! before it reaches a store: together most of levee's memory at scale.

use super::marks::CONDITION_ACCEPTING;
use super::stored::StoredPod;
use crate::api::BackpressurePolicy;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotations levee reads all start with this.
const LEVEE_ANNOTATIONS: &str = "levee.dev/";

/// Keeps what identifies the object, its labels and levee's own annotations.
fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.generate_name = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with(LEVEE_ANNOTATIONS));
    }
}

/// A pod: its metadata, its controller's owner reference (which workload it belongs to) and
/// levee's own condition (the only one the actuator compares).
pub fn pod(pod: &mut StoredPod) {
    let controller = pod
        .metadata
        .owner_references
        .take()
        .and_then(|owners| owners.into_iter().find(|owner| owner.controller == Some(true)));
    metadata(&mut pod.metadata);
    pod.metadata.owner_references = controller.map(|owner| vec![owner]);
    if let Some(conditions) = pod.status.as_mut().and_then(|status| status.conditions.as_mut()) {
        conditions.retain(|c| c.type_ == CONDITION_ACCEPTING);
    }
}

/// A workload (its selector is all its spec a stored one has): its metadata.
pub fn workload<K: kube::Resource>(workload: &mut K) {
    metadata(workload.meta_mut());
}

/// A policy: everything but its managed fields and kubectl's copy of the last applied object,
/// its lists without the room their parsing left over (a list of 10 queues grows to room for 16
/// as it is parsed, 1.5 KiB of 4 in the spec's), and of its status only the circuit: a replica
/// reads the rest of a status afresh from the API server when it takes a policy over
/// (`fresh_status.rs`), and writes what it computes, never the watch's copy. Every replica holds
/// every policy: at 10 queues the status's queues and conditions were about 2.5 KiB of each.
pub fn policy(policy: &mut BackpressurePolicy) {
    policy.metadata.managed_fields = None;
    if let Some(annotations) = policy.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    policy.spec.queues.shrink_to_fit();
    policy.spec.targets.shrink_to_fit();
    if let Some(status) = policy.status.as_mut() {
        status.keep_circuit_only();
    }
}

/// kubectl's copy of the last applied object, as large as the object itself.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A managed HPA: its metadata (owner) and spec, compared with the policy's.
pub fn autoscaler(hpa: &mut HorizontalPodAutoscaler) {
    hpa.metadata.managed_fields = None;
    hpa.status = None;
}

/// An opted-in Secret: its data.
pub fn secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::stored::StoredWorkload;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_what_the_actuator_reads_and_little_else() {
        let mut pod: StoredPod = serde_json::from_value(json!({
            "metadata": {
                "name": "api-1", "namespace": "jobs", "labels": {"app": "api", "levee.dev/policy": "p"},
                "annotations": {"levee.dev/accepting": "false", "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5f", "uid": "u", "controller": true},
                                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "c"}],
                "deletionTimestamp": "2026-11-28T00:00:00Z"
            },
            "spec": {"containers": [{"name": "api", "image": "api:1", "env": [{"name": "A", "value": "x".repeat(4000)}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "False"},
                                      {"type": "levee.dev/accepting", "status": "False", "reason": "CircuitOpen"}]}
        }))
        .unwrap();
        let before = serde_json::to_vec(&pod).unwrap().len();
        super::pod(&mut pod);
        let after = serde_json::to_vec(&pod).unwrap().len();
        assert!(after * 10 < before, "{before} -> {after} bytes");
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["levee.dev/policy"], "p");
        assert_eq!(pod.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(pod.metadata.deletion_timestamp.is_some());
        let owners = pod.metadata.owner_references.as_ref().unwrap();
        assert_eq!(
            owners.len(),
            1,
            "only the controller: which workload the pod belongs to"
        );
        assert_eq!(owners[0].name, "api-5f");
        let conditions = pod.status.unwrap().conditions.unwrap();
        assert_eq!(conditions.len(), 1, "only levee's own condition is kept");
        assert_eq!(conditions[0].reason.as_deref(), Some("CircuitOpen"));
    }

    #[test]
    fn a_policy_keeps_no_spare_room_in_its_lists_and_of_its_status_the_circuit() {
        let queues: Vec<_> = (0..10)
            .map(|q| json!({"name": format!("q{q}"), "type": "list", "key": format!("k{q}")}))
            .collect();
        let statuses: Vec<_> = (0..10)
            .map(|q| json!({"name": format!("q{q}"), "depth": 0}))
            .collect();
        let condition = |type_: &str, reason: &str| {
            json!({"type": type_, "status": "True", "reason": reason, "message": "m".repeat(200),
                   "lastTransitionTime": "2026-12-07T09:00:00Z"})
        };
        let parsed = crate::fixtures::policy_with(json!({
            "metadata": {"managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"queues": queues},
            "status": {
                "state": "Open", "level": "Critical", "openedSince": "2026-12-07T09:00:00Z",
                "lastTransitionTime": "2026-12-07T09:00:00Z", "transitions": 3,
                "lastSampleTime": "2026-12-07T09:01:00Z", "pending": 70,
                "queues": statuses,
                "memory": {"usedBytes": 1, "maxBytes": 2, "evictionPolicy": "noeviction"},
                "conditions": [condition("Ready", "Sampling"), condition("BackendReachable", "Answered"),
                               condition("Throttling", "CriticalForecast"), condition("Prolonged", "OpenTooLong")],
            },
        }));
        // From text, as the watch parses it (a parsed JSON value knows its lengths; text does not).
        let mut policy: BackpressurePolicy =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert!(
            policy.spec.queues.capacity() > 10,
            "parsing leaves room: nothing to check"
        );
        let circuit = policy.status.as_ref().unwrap().circuit();
        super::policy(&mut policy);
        assert_eq!(policy.spec.queues.capacity(), 10);
        assert!(policy.metadata.managed_fields.is_none());
        let status = policy.status.as_ref().unwrap();
        assert_eq!(status.circuit(), circuit, "the circuit reads the same");
        assert!(circuit.prolonged && circuit.opened_on_forecast && circuit.throttling_since.is_some());
        assert!(status.last_sample_time.is_some());
        assert!(status.queues.is_empty() && status.memory.is_none());
        assert_eq!(status.conditions.len(), 2);
    }

    #[test]
    fn a_workload_keeps_its_selector_and_levees_annotations() {
        let mut deployment: StoredWorkload<Deployment> = serde_json::from_value(json!({
            "metadata": {"name": "api", "annotations": {"levee.dev/accepting": "true", "other": "x"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api"}]}}}
        }))
        .unwrap();
        super::workload(&mut deployment);
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.selector.match_labels.unwrap()["app"], "api");
        assert!(deployment.metadata.managed_fields.is_none());
        assert_eq!(deployment.metadata.annotations.unwrap().len(), 1);
    }
}
