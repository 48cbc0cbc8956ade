//! The HorizontalPodAutoscaler levee creates and owns for `spec.scaleTarget`: `autoscaling/v2`
//! on the external metric `levee_pending` of the policy, with `AverageValue =
//! pendingPerReplica`, applied server-side and owned by the policy (garbage-collected with it),
//! and deleted when `scaleTarget` is removed. Level-triggered: every tick compares the HPA in the
//! store (a watch on HPAs labelled `app.kubernetes.io/managed-by: levee`) with the policy, so one
//! deleted or edited by hand is put back within a tick. levee never takes over an HPA it does not
//! own: one of the same name that another owner made is reported, not overwritten.

use crate::api::{BackpressurePolicy, ScaleKind, ScaleTarget};
use crate::controller::{FIELD_MANAGER, Kube};
use crate::metrics_api::routes::PENDING;
use crate::telemetry::Metrics;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};

/// The managed HPA's name for a policy.
pub fn hpa_name(policy: &BackpressurePolicy) -> String {
    format!("levee-{}", policy.name_any())
}

/// The HPA's upper bound: `maxReplicas`, capped at `partitions` (a Kafka policy's partition
/// count: consumers beyond it sit idle) unless `allowIdleConsumers`, and never below
/// `minReplicas`.
pub fn max_replicas(target: &ScaleTarget, partitions: Option<u32>) -> i32 {
    match partitions.filter(|_| !target.allow_idle_consumers) {
        Some(cap) => target
            .max_replicas
            .min(i32::try_from(cap).unwrap_or(i32::MAX))
            .max(target.min_replicas),
        None => target.max_replicas,
    }
}

/// The HPA for `target`, as applied (pure); `partitions` as for `max_replicas`.
pub fn desired_hpa(policy: &BackpressurePolicy, target: &ScaleTarget, partitions: Option<u32>) -> Value {
    let kind = match target.kind {
        ScaleKind::Deployment => "Deployment",
        ScaleKind::StatefulSet => "StatefulSet",
    };
    let owner = policy
        .controller_owner_ref(&())
        .expect("a stored policy has a name and uid");
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": hpa_name(policy),
            "namespace": policy.namespace(),
            "labels": {"app.kubernetes.io/managed-by": "levee", "levee.dev/policy": policy.name_any()},
            "ownerReferences": [owner],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target.name},
            "minReplicas": target.min_replicas,
            "maxReplicas": max_replicas(target, partitions),
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": {"name": PENDING, "selector": {"matchLabels": {"policy": policy.name_any()}}},
                    "target": {"type": "AverageValue", "averageValue": target.pending_per_replica.to_string()},
                },
            }],
        },
    })
}

/// Why the managed HPA could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "HorizontalPodAutoscaler {0} exists and is not owned by this policy: levee does not take it over; delete or rename it, or remove spec.scaleTarget"
    )]
    NotOwned(String),
    #[error(
        "HorizontalPodAutoscaler {name} was changed by another field manager ({message}): levee does not overwrite it; undo the change or delete the HPA so levee recreates it"
    )]
    Conflict { name: String, message: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn owned_by(hpa: &HorizontalPodAutoscaler, policy: &BackpressurePolicy) -> bool {
    hpa.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == policy.meta().uid.as_ref())
}

/// Whether the HPA in the store matches the policy (pure): the one the policy wants is there
/// with the wanted bounds, target and metric, or none is there when it wants none.
pub fn in_place(
    policy: &BackpressurePolicy,
    existing: Option<&HorizontalPodAutoscaler>,
    partitions: Option<u32>,
) -> bool {
    let Some(target) = &policy.spec.scale_target else {
        return existing.is_none_or(|hpa| !owned_by(hpa, policy));
    };
    let Some(hpa) = existing.filter(|hpa| owned_by(hpa, policy)) else {
        return false;
    };
    let Ok(desired) =
        serde_json::from_value::<HorizontalPodAutoscaler>(desired_hpa(policy, target, partitions))
    else {
        return false;
    };
    let (Some(want), Some(have)) = (desired.spec, hpa.spec.as_ref()) else {
        return false;
    };
    want.min_replicas == have.min_replicas
        && want.max_replicas == have.max_replicas
        && want.scale_target_ref == have.scale_target_ref
        && want.metrics == have.metrics
}

/// Applies or removes the managed HPA to match the policy.
pub async fn sync(
    kube: &Kube,
    metrics: &Metrics,
    policy: &BackpressurePolicy,
    partitions: Option<u32>,
) -> Result<(), SyncError> {
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(kube.client.clone(), &namespace);
    let name = hpa_name(policy);
    let existing = api.get_opt(&name).await?;
    match &policy.spec.scale_target {
        Some(target) => {
            let ours = match &existing {
                Some(hpa) if !owned_by(hpa, policy) => {
                    return Err(SyncError::NotOwned(format!("{namespace}/{name}")));
                }
                Some(_) => true,
                None => false,
            };
            // Our own HPA edited by hand is put back; a new one never overwrites anything.
            let params = if ours {
                PatchParams::apply(FIELD_MANAGER).force()
            } else {
                PatchParams::apply(FIELD_MANAGER)
            };
            match api
                .patch(
                    &name,
                    &params,
                    &Patch::Apply(desired_hpa(policy, target, partitions)),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Err(SyncError::Conflict {
                        name: format!("{namespace}/{name}"),
                        message: status.message,
                    });
                }
                Err(error) => return Err(error.into()),
            }
            metrics.api_writes.with_label_values(&["hpa"]).inc();
        }
        None => {
            let owned = existing.is_some_and(|hpa| owned_by(&hpa, policy));
            if owned {
                api.delete(&name, &DeleteParams::default()).await?;
                metrics.api_writes.with_label_values(&["hpa"]).inc();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_hpa_targets_average_pending_per_replica_of_this_policy() {
        let policy = fixtures::policy_with(json!({
            "metadata": {"name": "rule-engine", "uid": "u-1"},
            "spec": {
                "scaleTarget": {"kind": "Deployment", "name": "worker", "minReplicas": 2, "maxReplicas": 20, "pendingPerReplica": 500}
            }
        }));
        let hpa = desired_hpa(&policy, policy.spec.scale_target.as_ref().unwrap(), None);
        let typed: HorizontalPodAutoscaler =
            serde_json::from_value(hpa.clone()).expect("a valid autoscaling/v2 HPA");
        let spec = typed.spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 20));
        assert_eq!(spec.scale_target_ref.name, "worker");
        let metric = &spec.metrics.unwrap()[0];
        let external = metric.external.as_ref().unwrap();
        assert_eq!(external.metric.name, "levee_pending");
        assert_eq!(external.target.type_, "AverageValue");
        assert_eq!(external.target.average_value.as_ref().unwrap().0, "500");
        let owner = &hpa["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["uid"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("BackpressurePolicy"), Some("u-1"), Some(true))
        );
    }

    #[test]
    fn a_kafka_policy_caps_replicas_at_its_partitions_unless_idle_consumers_are_allowed() {
        let target: ScaleTarget = serde_json::from_value(json!(
            {"kind": "Deployment", "name": "w", "minReplicas": 2, "maxReplicas": 20, "pendingPerReplica": 100}
        ))
        .unwrap();
        assert_eq!(max_replicas(&target, None), 20);
        assert_eq!(max_replicas(&target, Some(6)), 6);
        assert_eq!(max_replicas(&target, Some(50)), 20);
        assert_eq!(max_replicas(&target, Some(1)), 2, "never below minReplicas");
        let idle = ScaleTarget {
            allow_idle_consumers: true,
            ..target
        };
        assert_eq!(max_replicas(&idle, Some(6)), 20);
    }

    #[test]
    fn only_the_hpa_the_policy_wants_counts_as_in_place() {
        let mut policy = fixtures::policy_with(json!({
            "metadata": {"uid": "u-1"},
            "spec": {
                "scaleTarget": {"kind": "Deployment", "name": "worker", "maxReplicas": 9, "pendingPerReplica": 50}
            }
        }));
        let target = policy.spec.scale_target.clone().unwrap();
        let applied: HorizontalPodAutoscaler =
            serde_json::from_value(desired_hpa(&policy, &target, None)).unwrap();
        assert!(in_place(&policy, Some(&applied), None));
        assert!(!in_place(&policy, None, None), "deleted by hand: put back");
        let mut edited = applied.clone();
        edited.spec.as_mut().unwrap().max_replicas = 90;
        assert!(
            !in_place(&policy, Some(&edited), None),
            "edited by hand: put back"
        );
        let mut foreign = applied.clone();
        foreign.metadata.owner_references = None;
        assert!(
            !in_place(&policy, Some(&foreign), None),
            "not ours: reported by sync"
        );
        policy.spec.scale_target = None;
        assert!(
            !in_place(&policy, Some(&applied), None),
            "ours but no longer wanted: deleted"
        );
        assert!(
            in_place(&policy, Some(&foreign), None),
            "someone else's is left alone"
        );
        assert!(in_place(&policy, None, None));
    }
}
