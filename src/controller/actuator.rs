//! Holds producers back: puts each target's marks (see `marks`) on the workload and on every pod
//! its selector matches, writing only what differs from the in-memory stores, so a steady state
//! costs no API writes and a new pod is marked on the next tick. Producers carrying the policy's
//! label that it no longer selects are released on the same pass: what levee marked is found in
//! the cluster, never remembered, so a restart, a failover or a deletion while levee was down
//! strands nobody.

use super::marks::{LABEL_POLICY, Marks};
use super::{Context, FIELD_MANAGER, Result};
use crate::api::{BackpressurePolicy, TargetKind};
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
use std::collections::{BTreeMap, HashSet};
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

/// Brings every target of `policy` to the marks of `state` (or releases them), then releases
/// every producer still labelled with the policy that it no longer selects: a target removed
/// from the spec, or a pod that left its workload's selector, whether levee saw it happen or not.
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
    let mut selected_pods = HashSet::new();
    for target in &policy.spec.targets {
        let marks = Marks::new(&name, state, target.priority, rules, released);
        if !marks.accepting {
            outcome.throttled += 1;
        }
        let Some(workload) = workload(context, target.kind, &target.name, &namespace) else {
            outcome
                .missing
                .push(format!("{:?} {namespace}/{}", target.kind, target.name));
            continue;
        };
        let pods = matching_pods(context, &namespace, workload.selector.as_ref());
        selected_pods.extend(pods.iter().map(|pod| pod.name_any()));
        mark_workload(
            context,
            target.kind,
            &target.name,
            &namespace,
            &workload,
            &marks,
            &mut outcome,
        )
        .await;
        mark_pods(context, pods, &marks, &mut outcome).await;
    }
    let stray = Marks::new(
        &name,
        State::Closed,
        0,
        rules,
        Some(released.unwrap_or("TargetRemoved")),
    );
    for kind in [
        TargetKind::Deployment,
        TargetKind::StatefulSet,
        TargetKind::DaemonSet,
    ] {
        for workload_name in labelled_workloads(context, kind, &namespace, &name) {
            let targeted = policy
                .spec
                .targets
                .iter()
                .any(|t| t.kind == kind && t.name == workload_name);
            if targeted {
                continue;
            }
            if let Some(workload) = workload(context, kind, &workload_name, &namespace) {
                mark_workload(
                    context,
                    kind,
                    &workload_name,
                    &namespace,
                    &workload,
                    &stray,
                    &mut outcome,
                )
                .await;
            }
        }
    }
    let stray_pods = context.stores.pods.state_filter(|pod| {
        pod.namespace().as_deref() == Some(namespace.as_str())
            && pod.labels().get(LABEL_POLICY) == Some(&name)
            && !selected_pods.contains(&pod.name_any())
    });
    mark_pods(context, stray_pods, &stray, &mut outcome).await;
    outcome
}

/// The targets of `policy` that do not exist (`Kind namespace/name`), from the stores.
pub fn missing_targets(context: &Context, policy: &BackpressurePolicy) -> Vec<String> {
    let namespace = policy.namespace().unwrap_or_default();
    policy
        .spec
        .targets
        .iter()
        .filter(|t| workload(context, t.kind, &t.name, &namespace).is_none())
        .map(|t| format!("{:?} {namespace}/{}", t.kind, t.name))
        .collect()
}

/// Puts every producer the policy marked back to accepting and takes its label off (policy
/// deleted). Fails when a write fails, so the finalizer keeps the policy until producers are
/// released.
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

/// What the actuator needs of a workload.
struct Workload {
    annotations: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    selector: Option<LabelSelector>,
}

fn workload_of<K: ResourceExt>(object: &K, selector: Option<LabelSelector>) -> Workload {
    Workload {
        annotations: object.meta().annotations.clone(),
        labels: object.meta().labels.clone(),
        selector,
    }
}

fn workload(context: &Context, kind: TargetKind, name: &str, namespace: &str) -> Option<Workload> {
    let stores = &context.stores;
    match kind {
        TargetKind::Deployment => stores
            .deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| workload_of(d.as_ref(), d.spec.as_ref().map(|s| s.selector.clone()))),
        TargetKind::StatefulSet => stores
            .stateful_sets
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| workload_of(s.as_ref(), s.spec.as_ref().map(|s| s.selector.clone()))),
        TargetKind::DaemonSet => stores
            .daemon_sets
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| workload_of(d.as_ref(), d.spec.as_ref().map(|s| s.selector.clone()))),
    }
}

/// Names of the workloads of `kind` in `namespace` that carry the label of `policy`.
fn labelled_workloads(context: &Context, kind: TargetKind, namespace: &str, policy: &str) -> Vec<String> {
    fn names<K: ResourceExt + Clone + 'static>(
        store: &kube::runtime::reflector::Store<K>,
        namespace: &str,
        policy: &str,
    ) -> Vec<String>
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        store
            .state_filter(|o| {
                o.namespace().as_deref() == Some(namespace)
                    && o.labels().get(LABEL_POLICY).map(String::as_str) == Some(policy)
            })
            .iter()
            .map(|o| o.name_any())
            .collect()
    }
    let stores = &context.stores;
    match kind {
        TargetKind::Deployment => names(&stores.deployments, namespace, policy),
        TargetKind::StatefulSet => names(&stores.stateful_sets, namespace, policy),
        TargetKind::DaemonSet => names(&stores.daemon_sets, namespace, policy),
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

async fn mark_workload(
    context: &Context,
    kind: TargetKind,
    name: &str,
    namespace: &str,
    workload: &Workload,
    marks: &Marks,
    outcome: &mut Outcome,
) {
    if !marks.metadata_differs(workload.annotations.as_ref(), workload.labels.as_ref()) {
        return;
    }
    match patch_workload(context, kind, name, namespace, marks).await {
        Ok(()) => outcome.writes += 1,
        Err(error) => outcome
            .errors
            .push(format!("{kind:?} {namespace}/{name}: {error}")),
    }
}

/// Marks `pods`: the conditions of every pod first (they take pods out of their Services'
/// endpoints), then the metadata.
async fn mark_pods(context: &Context, pods: Vec<Arc<Pod>>, marks: &Marks, outcome: &mut Outcome) {
    if pods.is_empty() {
        return;
    }
    for part in [PodPart::Condition, PodPart::Metadata] {
        let results: Vec<Result<bool, String>> = futures::stream::iter(pods.iter().cloned())
            .map(|pod| mark_pod(context, pod, marks, part))
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

async fn patch_workload(
    context: &Context,
    kind: TargetKind,
    name: &str,
    namespace: &str,
    marks: &Marks,
) -> kube::Result<()> {
    let patch = Patch::Merge(marks.metadata_patch());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let client = context.client.clone();
    match kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(client, namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, namespace)
                .patch(name, &params, &patch)
                .await?;
        }
        TargetKind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client, namespace)
                .patch(name, &params, &patch)
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
    Metadata,
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
        PodPart::Metadata => {
            if !marks.metadata_differs(pod.metadata.annotations.as_ref(), pod.metadata.labels.as_ref()) {
                return Ok(false);
            }
            api.patch(&name, &params, &Patch::Merge(marks.metadata_patch()))
                .await
                .map_err(|error| format!("pod {namespace}/{name} labels and annotations: {error}"))?;
            context
                .metrics
                .api_writes
                .with_label_values(&["pod_annotations"])
                .inc();
        }
    }
    Ok(true)
}
