//! Holds producers back: puts each target's marks (see `marks`) on the workload and on every pod
//! its selector matches that is its own (by the pod's controller owner reference: another
//! workload's pod with the same labels is left alone), writing only what differs from the
//! in-memory stores, so a steady state costs no API writes and a new pod is marked on the next
//! tick. The stores take what these writes return ahead of the watch: a watch that lags does not
//! make the next pass write the same marks again. Producers carrying the policy's label that it
//! no longer selects are released on the same pass: what levee marked is found in the cluster,
//! never remembered, so a restart, a failover or a deletion while levee was down strands nobody.
//! Every write passes the policy's fence (`fence.rs`): none starts, and none in flight goes on,
//! once this replica stops acting on the policy.

use crate::api::labels::{LABEL_POD_TEMPLATE_HASH, LABEL_POLICY};
use crate::api::{BackpressurePolicy, TargetKind};
use crate::circuit::CircuitRules;
use crate::controller::act::marks::{Intent, Marks, Release};
use crate::controller::cache::indexed_store::{Indexed, IndexedStore};
use crate::controller::cache::kept::{KeptPod, KeptWorkload};
use crate::controller::cache::sharing;
use crate::controller::cache::stored::{StoredDaemonSet, StoredDeployment, StoredPod, StoredStatefulSet};
use crate::controller::ownership::fence::Fence;
use crate::controller::{Context, FIELD_MANAGER, Result, Stores};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashSet;
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
    /// Writes not made, or ended, because this replica stopped acting on the policy.
    pub fenced: usize,
    /// Targets another policy also names and writes the marks of (`sharing.rs`).
    pub deferred: usize,
}

/// A kind of workload a policy can hold back (as the API server sends it: what a patch
/// returns): where levee keeps its copies, and which pods are its own.
trait Workload:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Into<KeptWorkload>
    + Send
    + Sync
    + 'static
{
    const KIND: TargetKind;
    fn store(stores: &Stores) -> &IndexedStore<KeptWorkload>;
    /// Whether `pod` is `workload`'s own by its controller owner reference: a pod of another
    /// workload that carries the same labels is not.
    fn owns(workload: &KeptWorkload, pod: &KeptPod) -> bool;
}

/// Whether `workload` itself (kind `K` and UID) controls `pod`: a StatefulSet's, a DaemonSet's
/// pods.
fn directly_owned<K: Resource<DynamicType = ()>>(workload: &KeptWorkload, pod: &KeptPod) -> bool {
    pod.controller
        .as_ref()
        .is_some_and(|owner| *owner.kind == *K::kind(&()) && owner.uid == workload.meta.uid)
}

impl Workload for StoredDeployment {
    const KIND: TargetKind = TargetKind::Deployment;
    fn store(stores: &Stores) -> &IndexedStore<KeptWorkload> {
        &stores.deployments
    }
    /// A Deployment's pods belong to its ReplicaSets, which the Deployment controller names
    /// `<deployment>-<pod-template-hash>` (the hash is also the pod's label), so a pod is the
    /// Deployment's when its controller is the ReplicaSet of that name: no ReplicaSet is watched.
    fn owns(workload: &KeptWorkload, pod: &KeptPod) -> bool {
        let hash = pod.label(LABEL_POD_TEMPLATE_HASH);
        pod.controller.as_ref().is_some_and(|owner| {
            &*owner.kind == "ReplicaSet"
                && hash.is_some_and(|hash| {
                    owner
                        .name
                        .strip_prefix(&*workload.meta.name)
                        .and_then(|rest| rest.strip_prefix('-'))
                        == Some(hash)
                })
        })
    }
}

impl Workload for StoredStatefulSet {
    const KIND: TargetKind = TargetKind::StatefulSet;
    fn store(stores: &Stores) -> &IndexedStore<KeptWorkload> {
        &stores.stateful_sets
    }
    fn owns(workload: &KeptWorkload, pod: &KeptPod) -> bool {
        directly_owned::<Self>(workload, pod)
    }
}

impl Workload for StoredDaemonSet {
    const KIND: TargetKind = TargetKind::DaemonSet;
    fn store(stores: &Stores) -> &IndexedStore<KeptWorkload> {
        &stores.daemon_sets
    }
    fn owns(workload: &KeptWorkload, pod: &KeptPod) -> bool {
        directly_owned::<Self>(workload, pod)
    }
}

/// One pass over a policy's producers.
struct Pass<'a> {
    context: &'a Context,
    fence: &'a Fence,
    namespace: String,
    policy: String,
    outcome: Outcome,
    /// The pods the targets select: the others carrying the policy label are strays.
    selected_pods: HashSet<String>,
}

impl Pass<'_> {
    /// Marks the workload `name` of kind `K` and the pods it selects.
    async fn mark_target<K: Workload>(&mut self, name: &str, marks: &Marks) {
        let Some((workload, pods)) = self.select::<K>(name) else {
            return;
        };
        // The pods first: their condition is what takes them out of their Services' endpoints.
        mark_pods(self.context, self.fence, pods, marks, &mut self.outcome).await;
        self.mark_workload::<K>(&workload, marks).await;
    }

    /// The workload `name` of kind `K` and its own pods, which this pass selects (so none of
    /// them is released as a stray); `None`, reported missing, when there is no such workload.
    fn select<K: Workload>(&mut self, name: &str) -> Option<(Arc<KeptWorkload>, Vec<Arc<KeptPod>>)> {
        let Some(workload) = K::store(&self.context.stores).get(&self.namespace, name) else {
            self.outcome
                .missing
                .push(format!("{:?} {}/{name}", K::KIND, self.namespace));
            return None;
        };
        let pods: Vec<Arc<KeptPod>> = workload
            .selector
            .as_ref()
            .map(|selector| self.context.stores.pods.selected(&self.namespace, selector))
            .unwrap_or_default()
            .into_iter()
            .filter(|pod| !pod.meta.deleting && K::owns(&workload, pod))
            .collect();
        self.selected_pods
            .extend(pods.iter().map(|pod| pod.name().to_string()));
        Some((workload, pods))
    }

    /// Releases the workloads of kind `K` labelled with the policy that it no longer targets.
    async fn release_strays<K: Workload>(&mut self, targeted: &[&str], stray: &Marks) {
        let labelled = K::store(&self.context.stores).labelled(&self.namespace, LABEL_POLICY, &self.policy);
        for workload in labelled {
            if !targeted.contains(&workload.name()) {
                self.mark_workload::<K>(&workload, stray).await;
            }
        }
    }

    async fn mark_workload<K: Workload>(&mut self, workload: &KeptWorkload, marks: &Marks) {
        if !marks.metadata_differs(&workload.meta.annotations, &workload.meta.labels) {
            return;
        }
        let name = workload.name();
        let api: Api<K> = Api::namespaced(self.context.kube.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patch = Patch::Merge(marks.metadata_patch());
        match self.fence.write(api.patch(name, &params, &patch)).await {
            Err(crate::controller::ownership::fence::Fenced) => self.outcome.fenced += 1,
            Ok(Ok(written)) => {
                K::store(&self.context.stores).wrote(written.into());
                self.outcome.writes += 1;
                self.context
                    .published
                    .metrics
                    .api_writes
                    .with_label_values(&["workload"])
                    .inc();
            }
            Ok(Err(error)) => {
                self.outcome
                    .errors
                    .push(format!("{:?} {}/{name}: {error}", K::KIND, self.namespace))
            }
        }
    }
}

/// Brings every target of `policy` to the marks `intent` gives it, then releases every producer
/// still labelled with the policy that it no longer selects: a target removed from the spec, or
/// a pod that left its workload's selector, whether levee saw it happen or not. Found through
/// the stores' indexes: no scan over every pod.
pub async fn act(
    context: &Context,
    fence: &Fence,
    policy: &BackpressurePolicy,
    intent: Intent,
    rules: &CircuitRules,
) -> Outcome {
    let mut pass = Pass {
        context,
        fence,
        namespace: policy.namespace().unwrap_or_default(),
        policy: policy.name_any(),
        outcome: Outcome::default(),
        selected_pods: HashSet::new(),
    };
    let shared = sharing::shared_targets(&context.stores.policies, policy);
    for target in &policy.spec.targets {
        let mut marks = Marks::new(&pass.policy, intent, target.priority, rules);
        let sharing = shared
            .iter()
            .find(|s| s.kind == target.kind && s.name == target.name);
        match sharing {
            // Another policy writes this target's marks: its pods are left to it, not released.
            Some(sharing) if !sharing.claimed_by(&pass.policy) => {
                match target.kind {
                    TargetKind::Deployment => pass.select::<StoredDeployment>(&target.name),
                    TargetKind::StatefulSet => pass.select::<StoredStatefulSet>(&target.name),
                    TargetKind::DaemonSet => pass.select::<StoredDaemonSet>(&target.name),
                };
                pass.outcome.deferred += 1;
                continue;
            }
            Some(sharing) => marks = sharing.strictest(marks),
            None => {}
        }
        if !marks.accepting {
            pass.outcome.throttled += 1;
        }
        match target.kind {
            TargetKind::Deployment => pass.mark_target::<StoredDeployment>(&target.name, &marks).await,
            TargetKind::StatefulSet => pass.mark_target::<StoredStatefulSet>(&target.name, &marks).await,
            TargetKind::DaemonSet => pass.mark_target::<StoredDaemonSet>(&target.name, &marks).await,
        }
    }
    let release = match intent {
        Intent::Release(release) => release,
        Intent::Follow(_) => Release::TargetRemoved,
    };
    let stray = Marks::new(&pass.policy, Intent::Release(release), 0, rules);
    let targeted = |kind: TargetKind| -> Vec<&str> {
        policy
            .spec
            .targets
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.name.as_str())
            .collect()
    };
    pass.release_strays::<StoredDeployment>(&targeted(TargetKind::Deployment), &stray)
        .await;
    pass.release_strays::<StoredStatefulSet>(&targeted(TargetKind::StatefulSet), &stray)
        .await;
    pass.release_strays::<StoredDaemonSet>(&targeted(TargetKind::DaemonSet), &stray)
        .await;
    let stray_pods: Vec<Arc<KeptPod>> = context
        .stores
        .pods
        .labelled(&pass.namespace, LABEL_POLICY, &pass.policy)
        .into_iter()
        .filter(|pod| !pass.selected_pods.contains(pod.name()))
        .collect();
    mark_pods(context, fence, stray_pods, &stray, &mut pass.outcome).await;
    pass.outcome
}

/// The targets of `policy` that do not exist (`Kind namespace/name`), from the stores.
pub fn missing_targets(stores: &Stores, policy: &BackpressurePolicy) -> Vec<String> {
    let namespace = policy.namespace().unwrap_or_default();
    policy
        .spec
        .targets
        .iter()
        .filter(|t| match t.kind {
            TargetKind::Deployment => stores.deployments.get(&namespace, &t.name).is_none(),
            TargetKind::StatefulSet => stores.stateful_sets.get(&namespace, &t.name).is_none(),
            TargetKind::DaemonSet => stores.daemon_sets.get(&namespace, &t.name).is_none(),
        })
        .map(|t| format!("{:?} {namespace}/{}", t.kind, t.name))
        .collect()
}

/// Puts every producer the policy marked back to accepting and takes its label off (policy
/// deleted). Fails when a write fails, so the finalizer keeps the policy until producers are
/// released. Only while this replica acts on the policy: else its owner releases them.
pub async fn release(context: &Context, policy: &BackpressurePolicy) -> Result<()> {
    let not_acting =
        || crate::controller::Error::Release(crate::controller::ownership::fence::Fenced.to_string());
    let fence = context.owners.fence(policy).ok_or_else(not_acting)?;
    let rules = policy.spec.circuit_rules();
    let outcome = act(
        context,
        &fence,
        policy,
        Intent::Release(Release::PolicyDeleted),
        &rules,
    )
    .await;
    match outcome.errors.first() {
        Some(error) => Err(crate::controller::Error::Release(error.clone())),
        None if outcome.fenced > 0 => Err(not_acting()),
        None => Ok(()),
    }
}

/// Marks `pods`: the conditions of every pod first (they take pods out of their Services'
/// endpoints), then the metadata.
async fn mark_pods(
    context: &Context,
    fence: &Fence,
    pods: Vec<Arc<KeptPod>>,
    marks: &Marks,
    outcome: &mut Outcome,
) {
    if pods.is_empty() {
        return;
    }
    for part in [PodPart::Condition, PodPart::Metadata] {
        let results: Vec<_> = futures::stream::iter(pods.iter().cloned())
            .map(|pod| fence.write(mark_pod(context, pod, marks, part)))
            .buffer_unordered(POD_WRITE_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(Ok(wrote)) => outcome.writes += usize::from(wrote),
                Ok(Err(error)) => outcome.errors.push(error),
                Err(crate::controller::ownership::fence::Fenced) => outcome.fenced += 1,
            }
        }
    }
}

/// The two writes a pod takes: its status condition and its labels and annotations.
#[derive(Clone, Copy)]
enum PodPart {
    Condition,
    Metadata,
}

/// Writes one part of a pod's marks if it differs; `Ok(true)` when it wrote.
async fn mark_pod(
    context: &Context,
    pod: Arc<KeptPod>,
    marks: &Marks,
    part: PodPart,
) -> Result<bool, String> {
    let (namespace, name) = (pod.namespace(), pod.name());
    let api: Api<StoredPod> = Api::namespaced(context.kube.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match part {
        PodPart::Condition => {
            if !marks.condition_differs(pod.accepting.as_ref()) {
                return Ok(false);
            }
            let patch = Patch::Strategic(marks.condition_patch(Timestamp::now()));
            let written = api
                .patch_status(name, &params, &patch)
                .await
                .map_err(|error| format!("pod {namespace}/{name} condition: {error}"))?;
            context.stores.pods.wrote(written.into());
            context
                .published
                .metrics
                .api_writes
                .with_label_values(&["pod_condition"])
                .inc();
        }
        PodPart::Metadata => {
            if !marks.metadata_differs(&pod.meta.annotations, &pod.meta.labels) {
                return Ok(false);
            }
            let written = api
                .patch(name, &params, &Patch::Merge(marks.metadata_patch()))
                .await
                .map_err(|error| format!("pod {namespace}/{name} labels and annotations: {error}"))?;
            context.stores.pods.wrote(written.into());
            context
                .published
                .metrics
                .api_writes
                .with_label_values(&["pod_annotations"])
                .inc();
        }
    }
    Ok(true)
}
