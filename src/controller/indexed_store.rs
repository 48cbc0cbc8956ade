//! An in-memory copy of one kind of object, kept current by a watch and indexed by namespace and
//! by label, so that a target's pods and the producers a policy labelled are found by lookup
//! instead of a scan over every object each tick (which cost O(policies × pods) a second).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::watcher::Event;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// `(namespace, name)`.
type Key = (String, String);

/// The objects and their indexes.
struct Entries<K> {
    objects: HashMap<Key, Arc<K>>,
    /// Names by namespace.
    by_namespace: HashMap<String, BTreeSet<String>>,
    /// Names by `(namespace, label key, label value)`.
    by_label: HashMap<(String, String, String), BTreeSet<String>>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_namespace: HashMap::new(),
            by_label: HashMap::new(),
        }
    }
}

impl<K: ResourceExt> Entries<K> {
    fn insert(&mut self, object: Arc<K>) {
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        self.remove(&key);
        let (namespace, name) = &key;
        self.by_namespace
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone());
        for (label, value) in object.labels() {
            self.by_label
                .entry((namespace.clone(), label.clone(), value.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.objects.remove(key) else {
            return;
        };
        let (namespace, name) = key;
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
        for (label, value) in old.labels() {
            let index = (namespace.clone(), label.clone(), value.clone());
            if let Some(names) = self.by_label.get_mut(&index) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&index);
                }
            }
        }
    }

    fn named(&self, namespace: &str, names: Option<&BTreeSet<String>>) -> Vec<Arc<K>> {
        names
            .into_iter()
            .flatten()
            .filter_map(|name| self.objects.get(&(namespace.to_string(), name.clone())).cloned())
            .collect()
    }
}

struct Inner<K> {
    live: Entries<K>,
    /// A relist in progress: it replaces `live` once complete, so objects deleted while the
    /// watch was down disappear.
    relisting: Option<Entries<K>>,
}

/// Objects of one kind, by namespace and label. Cheap to clone; every clone sees the same data.
pub struct IndexedStore<K> {
    inner: Arc<RwLock<Inner<K>>>,
    ready: watch::Receiver<bool>,
    ready_sender: Arc<watch::Sender<bool>>,
}

impl<K> Clone for IndexedStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
            ready_sender: self.ready_sender.clone(),
        }
    }
}

impl<K: ResourceExt> Default for IndexedStore<K> {
    fn default() -> Self {
        let (ready_sender, ready) = watch::channel(false);
        Self {
            inner: Arc::new(RwLock::new(Inner {
                live: Entries::default(),
                relisting: None,
            })),
            ready,
            ready_sender: Arc::new(ready_sender),
        }
    }
}

impl<K: ResourceExt> IndexedStore<K> {
    /// A store holding `objects`, ready (for tests).
    pub fn from_objects(objects: impl IntoIterator<Item = K>) -> Self {
        let store = Self::default();
        store.apply(Event::Init);
        for object in objects {
            store.apply(Event::InitApply(object));
        }
        store.apply(Event::InitDone);
        store
    }

    /// Follows one watch event: a relist (`Init`, `InitApply`..., `InitDone`) replaces the
    /// contents when it completes; `Apply` and `Delete` change one object.
    pub fn apply(&self, event: Event<K>) {
        let mut inner = self.inner.write().expect("store lock");
        match event {
            Event::Init => inner.relisting = Some(Entries::default()),
            Event::InitApply(object) => inner
                .relisting
                .get_or_insert_with(Entries::default)
                .insert(Arc::new(object)),
            Event::InitDone => {
                if let Some(relisted) = inner.relisting.take() {
                    inner.live = relisted;
                }
                drop(inner);
                self.ready_sender.send_replace(true);
            }
            Event::Apply(object) => inner.live.insert(Arc::new(object)),
            Event::Delete(object) => {
                let key = (object.namespace().unwrap_or_default(), object.name_any());
                inner.live.remove(&key);
            }
        }
    }

    /// Waits until the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The object `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let inner = self.inner.read().expect("store lock");
        inner
            .live
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The objects of `namespace` labelled `label=value`.
    pub fn labelled(&self, namespace: &str, label: &str, value: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("store lock");
        let index = (namespace.to_string(), label.to_string(), value.to_string());
        inner.live.named(namespace, inner.live.by_label.get(&index))
    }

    /// The objects of `namespace` that `selector` matches; none for a selector that matches
    /// everything (apps/v1 workloads always have one, and selecting every pod would be a
    /// mistake) or that is not valid.
    pub fn selected(&self, namespace: &str, selector: &LabelSelector) -> Vec<Arc<K>> {
        let Ok(parsed) = Selector::try_from(selector.clone()) else {
            return Vec::new();
        };
        if parsed.selects_all() {
            return Vec::new();
        }
        let inner = self.inner.read().expect("store lock");
        let live = &inner.live;
        // Start from the smallest set one `matchLabels` pair picks; without any, the namespace.
        let candidates = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(label, value)| {
                live.by_label
                    .get(&(namespace.to_string(), label.clone(), value.clone()))
            })
            .min_by_key(|names| names.map_or(0, BTreeSet::len))
            .unwrap_or_else(|| live.by_namespace.get(namespace));
        let empty = BTreeMap::new();
        live.named(namespace, candidates)
            .into_iter()
            .filter(|object| parsed.matches(object.meta().labels.as_ref().unwrap_or(&empty)))
            .collect()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.inner.read().expect("store lock").live.objects.len()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        names.sort();
        names
    }

    fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..LabelSelector::default()
        }
    }

    #[test]
    fn a_selector_finds_the_pods_it_matches_in_its_namespace_only() {
        let store = IndexedStore::from_objects([
            pod("a", "api-1", &[("app", "api"), ("tier", "web")]),
            pod("a", "api-2", &[("app", "api")]),
            pod("a", "worker", &[("app", "worker")]),
            pod("b", "api-1", &[("app", "api"), ("tier", "web")]),
        ]);
        assert_eq!(
            names(store.selected("a", &match_labels(&[("app", "api")]))),
            ["api-1", "api-2"]
        );
        assert_eq!(
            names(store.selected("a", &match_labels(&[("app", "api"), ("tier", "web")]))),
            ["api-1"]
        );
        assert!(
            store
                .selected("a", &match_labels(&[("app", "nothing")]))
                .is_empty()
        );
        let expressions = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: Some(vec!["worker".into(), "api".into()]),
            }]),
            ..LabelSelector::default()
        };
        assert_eq!(
            names(store.selected("a", &expressions)),
            ["api-1", "api-2", "worker"]
        );
        assert!(
            store.selected("a", &LabelSelector::default()).is_empty(),
            "an empty selector selects nothing"
        );
        assert_eq!(names(store.labelled("b", "tier", "web")), ["api-1"]);
    }

    #[test]
    fn changed_labels_move_a_pod_between_index_entries() {
        let store = IndexedStore::from_objects([pod("a", "p", &[("app", "api"), ("levee.dev/policy", "x")])]);
        store.apply(Event::Apply(pod("a", "p", &[("app", "api")])));
        assert!(store.labelled("a", "levee.dev/policy", "x").is_empty());
        assert_eq!(names(store.labelled("a", "app", "api")), ["p"]);
        store.apply(Event::Delete(pod("a", "p", &[])));
        assert!(store.labelled("a", "app", "api").is_empty());
        assert!(store.get("a", "p").is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn a_relist_drops_what_was_deleted_while_the_watch_was_down() {
        let store = IndexedStore::from_objects([
            pod("a", "gone", &[("app", "api")]),
            pod("a", "kept", &[("app", "api")]),
        ]);
        store.apply(Event::Init);
        store.apply(Event::InitApply(pod("a", "kept", &[("app", "api")])));
        assert_eq!(
            store.len(),
            2,
            "the old contents serve until the relist completes"
        );
        store.apply(Event::InitDone);
        assert_eq!(names(store.labelled("a", "app", "api")), ["kept"]);
    }

    #[tokio::test]
    async fn ready_after_the_first_complete_list() {
        let store = IndexedStore::<Pod>::default();
        store.apply(Event::Init);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), store.wait_until_ready());
        assert!(waiting.await.is_err(), "not ready before InitDone");
        store.apply(Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready())
            .await
            .expect("ready after InitDone");
    }
}
