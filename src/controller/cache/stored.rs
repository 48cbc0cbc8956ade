//! A pod and a workload as levee parses them from the API server's JSON (a watch event, what a
//! patch returns): the metadata, a pod's conditions and a workload's selector. The rest is
//! skipped as it is parsed. k8s-openapi's `Pod` is 2,176 bytes before any of its heap (its spec
//! is inline even when absent) and a `Deployment` 2,400; these are about 400. The stores keep
//! less still (`kept.rs`).
//!
//! They are Kubernetes resources of their kinds to kube (watch and patch take them like the full
//! types), with the full types' group, version, kind and path.

use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// A pod: its metadata and its conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct StoredPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub status: Option<PodConditions>,
}

/// The part of a pod's status levee reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PodConditions {
    pub conditions: Option<Vec<PodCondition>>,
}

/// A workload of kind `K` (a Deployment, StatefulSet or DaemonSet): its metadata and selector.
#[derive(Deserialize, Serialize)]
pub struct StoredWorkload<K> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<SelectorSpec>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

pub type StoredDeployment = StoredWorkload<Deployment>;
pub type StoredStatefulSet = StoredWorkload<StatefulSet>;
pub type StoredDaemonSet = StoredWorkload<DaemonSet>;

/// The part of a workload's spec levee reads.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SelectorSpec {
    pub selector: LabelSelector,
}

// By hand: derived, they would ask the kind itself to be Clone and Debug.
impl<K> Clone for StoredWorkload<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for StoredWorkload<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredWorkload")
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .finish()
    }
}

impl k8s_openapi::Resource for StoredPod {
    const API_VERSION: &'static str = Pod::API_VERSION;
    const GROUP: &'static str = Pod::GROUP;
    const KIND: &'static str = Pod::KIND;
    const VERSION: &'static str = Pod::VERSION;
    const URL_PATH_SEGMENT: &'static str = Pod::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl Metadata for StoredPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for StoredWorkload<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Resource> Metadata for StoredWorkload<K> {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_its_metadata_and_conditions_and_skips_the_rest() {
        let pod: StoredPod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-1", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"containers": [{"name": "c", "image": "pause"}], "nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "levee.dev/accepting", "status": "False"}]},
        }))
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("api-1"));
        let conditions = pod.status.unwrap().conditions.unwrap();
        assert_eq!(conditions[0].type_, "levee.dev/accepting");
        assert_eq!(StoredPod::kind(&()), "Pod");
        assert_eq!(StoredPod::plural(&()), "pods");
        assert_eq!(StoredPod::api_version(&()), "v1");
        assert!(std::mem::size_of::<StoredPod>() < std::mem::size_of::<Pod>() / 4);
    }

    #[test]
    fn a_workload_keeps_its_selector_under_its_own_kind_and_path() {
        let deployment: StoredWorkload<Deployment> = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "pause"}]}}},
            "status": {"replicas": 3},
        }))
        .unwrap();
        let labels = deployment.spec.unwrap().selector.match_labels.unwrap();
        assert_eq!(labels["app"], "api");
        assert_eq!(StoredWorkload::<Deployment>::kind(&()), "Deployment");
        assert_eq!(StoredWorkload::<Deployment>::plural(&()), "deployments");
        assert_eq!(StoredWorkload::<Deployment>::api_version(&()), "apps/v1");
        assert!(std::mem::size_of::<StoredWorkload<Deployment>>() < std::mem::size_of::<Deployment>() / 4);
    }
}
