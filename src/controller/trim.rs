//! What the in-memory stores keep of a policy, a managed HPA and an opted-in Secret: what levee
//! reads of them, without their managed fields and kubectl's copy of the last applied object.
//! Pods and workloads are kept in a form of their own (`kept.rs`).

use crate::api::BackpressurePolicy;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;

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
    // An empty map still holds its first node, room for eleven pairs.
    if policy.metadata.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        policy.metadata.annotations = None;
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
pub fn autoscaler(mut hpa: HorizontalPodAutoscaler) -> HorizontalPodAutoscaler {
    hpa.metadata.managed_fields = None;
    hpa.status = None;
    hpa
}

/// An opted-in Secret: its data.
pub fn secret(mut secret: Secret) -> Secret {
    secret.metadata.managed_fields = None;
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
