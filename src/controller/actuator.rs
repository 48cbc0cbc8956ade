//! Holds producers back: puts each target's marks (see `marks`) on the workload and on every pod
//! its selector matches, writing only what differs from the in-memory stores, so a steady state
//! costs no API writes and a new pod is marked on the next tick.

use super::marks::Marks;
use super::{Context, FIELD_MANAGER, Result};
use crate::api::{BackpressurePolicy, TargetKind, TargetRef};
use crate::circuit::{CircuitRules, State};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Pod writes in flight at once for one policy.
const POD_WRITE_CONCURRENCY: usize = 16;

/// What one pass over the targets did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Targets that are held back (not accepting).
    pub throttled: usize,
    /// Targets that do not exist (`Kind namespace/name`).
    pub missing: Vec<String>,
    /// API writes made.
    pub writes: usize,
    /// Writes that failed, in words.
    pub errors: Vec<String>,
}

/// Brings every target of `policy` to the marks of `state` (or releases them).
pub async fn act(
    context: &Context,
    policy: &BackpressurePolicy,
    state: State,
    rules: &CircuitRules,
    released: Option<&'static str>,
) -> Outcome {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let mut outcome = Outcome::default();
    for target in &policy.spec.targets {
        let marks = Marks::new(&name, state, target.priority, rules, released);
        if !marks.accepting {
            outcome.throttled += 1;
        }
        let Some((annotations, selector)) = workload(context, target, &namespace) else {
            outcome
                .missing
                .push(format!("{:?} {namespace}/{}", target.kind, target.name));
            continue;
        };
        if marks.annotations_differ(annotations.as_ref()) {
            match patch_workload(context, target, &namespace, &marks).await {
                Ok(()) => outcome.writes += 1,
                Err(error) => outcome
                    .errors
                    .push(format!("{:?} {namespace}/{}: {error}", target.kind, target.name)),
            }
        }
        let pods = matching_pods(context, &namespace, selector.as_ref());
        // Conditions of every pod first: they take pods out of their Services' endpoints.
        for part in [PodPart::Condition, PodPart::Annotations] {
            let results: Vec<Result<bool, String>> = futures::stream::iter(pods.iter().cloned())
                .map(|pod| mark_pod(context, pod, &marks, part))
                .buffer_unordered(POD_WRITE_CONCURRENCY)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(wrote) => outcome.writes += usize::from(wrote),
                    Err(error) => outcome.errors.push(error),
                }
            }
        }
    }
    outcome
}

/// Puts every target back to accepting (policy deleted or dry run). Fails when a write fails, so
/// the finalizer keeps the policy until producers are released.
pub async fn release(context: &Context, policy: &BackpressurePolicy, reason: &'static str) -> Result<()> {
    let rules = CircuitRules::new(
        policy.spec.thresholds,
        &policy.spec.circuit,
        policy.spec.on_sample_failure,
    );
    let outcome = act(context, policy, State::Closed, &rules, Some(reason)).await;
    match outcome.errors.first() {
        None => Ok(()),
        Some(error) => Err(super::Error::Release(error.clone())),
    }
}

type Workload = (Option<BTreeMap<String, String>>, Option<LabelSelector>);

fn workload(context: &Context, target: &TargetRef, namespace: &str) -> Option<Workload> {
    let stores = &context.stores;
    match target.kind {
        TargetKind::Deployment => stores
            .deployments
            .get(&ObjectRef::new(&target.name).within(namespace))
            .map(|d| {
                (
                    d.metadata.annotations.clone(),
                    d.spec.as_ref().map(|s| s.selector.clone()),
                )
            }),
        TargetKind::StatefulSet => stores
            .stateful_sets
            .get(&ObjectRef::new(&target.name).within(namespace))
            .map(|s| {
                (
                    s.metadata.annotations.clone(),
                    s.spec.as_ref().map(|s| s.selector.clone()),
                )
            }),
        TargetKind::DaemonSet => stores
            .daemon_sets
            .get(&ObjectRef::new(&target.name).within(namespace))
            .map(|d| {
                (
                    d.metadata.annotations.clone(),
                    d.spec.as_ref().map(|s| s.selector.clone()),
                )
            }),
    }
}

/// Live pods of the namespace that the workload's selector matches (none for an empty selector:
/// apps/v1 workloads always have one, and matching every pod would be a mistake).
fn matching_pods(context: &Context, namespace: &str, selector: Option<&LabelSelector>) -> Vec<Arc<Pod>> {
    let Some(selector) = selector.cloned().and_then(|s| Selector::try_from(s).ok()) else {
        return Vec::new();
    };
    if selector.selects_all() {
        return Vec::new();
    }
    context.stores.pods.state_filter(|pod| {
        pod.namespace().as_deref() == Some(namespace)
            && pod.metadata.deletion_timestamp.is_none()
            && selector.matches(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
    })
}

async fn patch_workload(
    context: &Context,
    target: &TargetRef,
    namespace: &str,
    marks: &Marks,
) -> kube::Result<()> {
    let patch = Patch::Merge(marks.annotation_patch());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let client = context.client.clone();
    match target.kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(client, namespace)
                .patch(&target.name, &params, &patch)
                .await?;
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, namespace)
                .patch(&target.name, &params, &patch)
                .await?;
        }
        TargetKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client, namespace)
                .patch(&target.name, &params, &patch)
                .await?;
        }
    }
    context.metrics.api_writes.with_label_values(&["workload"]).inc();
    Ok(())
}

/// The two things levee writes on a pod.
#[derive(Clone, Copy)]
enum PodPart {
    Condition,
    Annotations,
}

/// Writes one part of a pod's marks if it differs; `Ok(true)` when it wrote.
async fn mark_pod(context: &Context, pod: Arc<Pod>, marks: &Marks, part: PodPart) -> Result<bool, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match part {
        PodPart::Condition => {
            let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref());
            if !marks.condition_differs(conditions) {
                return Ok(false);
            }
            let patch = Patch::Strategic(marks.condition_patch(Timestamp::now()));
            api.patch_status(&name, &params, &patch)
                .await
                .map_err(|error| format!("pod {namespace}/{name} condition: {error}"))?;
            context
                .metrics
                .api_writes
                .with_label_values(&["pod_condition"])
                .inc();
        }
        PodPart::Annotations => {
            if !marks.annotations_differ(pod.metadata.annotations.as_ref()) {
                return Ok(false);
            }
            api.patch(&name, &params, &Patch::Merge(marks.annotation_patch()))
                .await
                .map_err(|error| format!("pod {namespace}/{name} annotations: {error}"))?;
            context
                .metrics
                .api_writes
                .with_label_values(&["pod_annotations"])
                .inc();
        }
    }
    Ok(true)
}
