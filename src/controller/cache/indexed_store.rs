//! An in-memory copy of one kind of object, kept current by a watch and indexed by namespace and
//! by label, so that a target's pods and the producers a policy labelled are found by lookup
//! instead of a scan over every object each tick (which cost O(policies × pods) a second).

use crate::controller::cache::selector::KeptSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What a store reads of an object: where it is, its labels and its version.
pub trait Indexed {
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
    fn labels(&self) -> impl Iterator<Item = (&str, &str)>;
    fn label(&self, key: &str) -> Option<&str>;
    /// Whether some of its labels were not kept (`kept.rs`): a selector over a label it lacks
    /// may still match it.
    fn labels_truncated(&self) -> bool {
        false
    }
    fn resource_version(&self) -> Option<&str>;
}

/// Kinds stored as the API server sends them (opted-in Secrets, managed HPAs) are indexed by
/// their `ObjectMeta`.
impl<K: k8s_openapi::Metadata<Ty = ObjectMeta>> Indexed for K {
    fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata()
            .labels
            .iter()
            .flatten()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }
    fn label(&self, key: &str) -> Option<&str> {
        self.metadata().labels.as_ref()?.get(key).map(String::as_str)
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata().resource_version.as_deref()
    }
}

/// A namespace, name, label or value, allocated once and shared by the object's entry and every
/// index that names it.
type Name = Arc<str>;

/// The names of the objects one label pair is on, sorted: most pairs are on one object (a pod's
/// `pod-template-hash`, a producer's `app`), for which a set would allocate a node of room for
/// eleven.
type Names = Vec<Name>;

/// The objects and their indexes, looked up by `&str` (no key is allocated to find one).
struct Entries<K> {
    /// Objects by namespace, then name: a namespace's map is also its index.
    objects: HashMap<Name, HashMap<Name, Arc<K>>>,
    /// Names by namespace, label key and value.
    by_label: HashMap<Name, HashMap<Name, HashMap<Name, Names>>>,
    /// Names by namespace of the objects whose labels were not all kept: the index cannot rule
    /// them out of a selection.
    truncated: HashMap<Name, Names>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_label: HashMap::new(),
            truncated: HashMap::new(),
        }
    }
}

/// `name`, shared with the key `map` holds for it when there is one (a namespace, a label key:
/// the same few for many objects).
fn shared<V>(map: &HashMap<Name, V>, name: &str) -> Name {
    map.get_key_value(name)
        .map_or_else(|| Name::from(name), |(key, _)| key.clone())
}

impl<K: Indexed> Entries<K> {
    fn insert(&mut self, object: Arc<K>) {
        let (namespace, name) = (object.namespace(), object.name());
        self.remove(namespace, name);
        let namespace = shared(&self.objects, namespace);
        let name = Name::from(name);
        let by_key = self.by_label.entry(namespace.clone()).or_default();
        for (label, value) in object.labels() {
            let label = shared(by_key, label);
            let names = by_key
                .entry(label)
                .or_default()
                .entry(Name::from(value))
                .or_default();
            if let Err(at) = names.binary_search(&name) {
                names.insert(at, name.clone());
            }
        }
        if by_key.is_empty() {
            self.by_label.remove(&namespace);
        }
        if object.labels_truncated() {
            let names = self.truncated.entry(namespace.clone()).or_default();
            if let Err(at) = names.binary_search(&name) {
                names.insert(at, name.clone());
            }
        }
        self.objects.entry(namespace).or_default().insert(name, object);
    }

    /// The copy held of `object`, if any, and whether it is of a later version than `object`.
    /// Resource versions of one resource compare as decimal numbers (KEP-5504, stable in
    /// Kubernetes 1.35, for exactly this: a client's copy that writes run ahead of); one that is
    /// not such a number compares as not newer, so the object is taken as it always was.
    fn held_and_newer(&self, object: &K) -> Option<bool> {
        let held = self.get(object.namespace(), object.name())?;
        let version = |object: &K| object.resource_version()?.parse::<u64>().ok();
        Some(matches!((version(held), version(object)), (Some(held), Some(incoming)) if held > incoming))
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(in_namespace) = self.objects.get_mut(namespace) else {
            return;
        };
        let Some(old) = in_namespace.remove(name) else {
            return;
        };
        if in_namespace.is_empty() {
            self.objects.remove(namespace);
        }
        if old.labels_truncated()
            && let Some(names) = self.truncated.get_mut(namespace)
        {
            if let Ok(at) = names.binary_search_by(|held| (**held).cmp(name)) {
                names.remove(at);
            }
            if names.is_empty() {
                self.truncated.remove(namespace);
            }
        }
        let Some(by_key) = self.by_label.get_mut(namespace) else {
            return;
        };
        for (label, value) in old.labels() {
            let Some(by_value) = by_key.get_mut(label) else {
                continue;
            };
            if let Some(names) = by_value.get_mut(value) {
                if let Ok(at) = names.binary_search_by(|held| (**held).cmp(name)) {
                    names.remove(at);
                }
                if names.is_empty() {
                    by_value.remove(value);
                }
            }
            if by_value.is_empty() {
                by_key.remove(label);
            }
        }
        if by_key.is_empty() {
            self.by_label.remove(namespace);
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.objects.get(namespace)?.get(name)
    }

    /// The names `label=value` is on in `namespace`.
    fn labelled(&self, namespace: &str, label: &str, value: &str) -> Option<&Names> {
        self.by_label.get(namespace)?.get(label)?.get(value)
    }

    fn named<'a>(&self, namespace: &str, names: impl IntoIterator<Item = &'a Name>) -> Vec<Arc<K>> {
        names
            .into_iter()
            .filter_map(|name| self.get(namespace, name).cloned())
            .collect()
    }

    fn len(&self) -> usize {
        self.objects.values().map(HashMap::len).sum()
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

impl<K: Indexed> Default for IndexedStore<K> {
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

impl<K: Indexed> IndexedStore<K> {
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
            Event::Apply(object) => {
                if inner.live.held_and_newer(&object) != Some(true) {
                    inner.live.insert(Arc::new(object));
                }
            }
            Event::Delete(object) => {
                inner.live.remove(object.namespace(), object.name());
            }
        }
    }

    /// Takes `object` as a write of this replica's returned it, ahead of the watch: a watch that
    /// lags (an API server under load) would otherwise show the object as it was before the
    /// write, and the next pass would make the same write again, and again, adding to the load
    /// that made the watch lag. Only an object the store holds is replaced (one deleted since
    /// stays deleted), and never by an older one: the watch's events from before the write,
    /// arriving after it, are skipped the same way (`Apply`).
    pub fn wrote(&self, object: K) {
        let mut inner = self.inner.write().expect("store lock");
        if inner.live.held_and_newer(&object) == Some(false) {
            inner.live.insert(Arc::new(object));
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
        inner.live.get(namespace, name).cloned()
    }

    /// The objects of `namespace` labelled `label=value`.
    pub fn labelled(&self, namespace: &str, label: &str, value: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("store lock");
        let names = inner.live.labelled(namespace, label, value);
        inner.live.named(namespace, names.into_iter().flatten())
    }

    /// The objects of `namespace` that `selector` matches; none for a selector that matches
    /// everything (apps/v1 workloads always have one, and selecting every pod would be a
    /// mistake). An object whose labels were not all kept is matched as it may be: a requirement
    /// over a label it lacks is met (`KeptSelector::matches`).
    pub fn selected(&self, namespace: &str, selector: &KeptSelector) -> Vec<Arc<K>> {
        if selector.selects_all() {
            return Vec::new();
        }
        let inner = self.inner.read().expect("store lock");
        let live = &inner.live;
        // Start from the smallest set one `matchLabels` pair picks; without any, the namespace.
        let smallest = selector
            .equal
            .iter()
            .map(|(label, value)| live.labelled(namespace, label, value))
            .min_by_key(|names| names.map_or(0, Vec::len));
        let candidates = match smallest {
            Some(names) => match live.truncated.get(namespace) {
                None => live.named(namespace, names.into_iter().flatten()),
                Some(truncated) => {
                    let mut names: Vec<&Name> = names.into_iter().flatten().chain(truncated).collect();
                    names.sort_unstable();
                    names.dedup();
                    live.named(namespace, names)
                }
            },
            None => {
                let mut all: Vec<(&Name, &Arc<K>)> =
                    live.objects.get(namespace).into_iter().flatten().collect();
                all.sort_unstable_by_key(|(name, _)| *name);
                all.into_iter().map(|(_, object)| object.clone()).collect()
            }
        };
        candidates
            .into_iter()
            .filter(|object| selector.matches(|key| object.label(key), object.labels_truncated()))
            .collect()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.inner.read().expect("store lock").live.len()
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        let mut names: Vec<String> = pods.iter().map(|p| p.name().to_string()).collect();
        names.sort();
        names
    }

    fn match_labels(pairs: &[(&str, &str)]) -> KeptSelector {
        KeptSelector {
            equal: pairs.iter().copied().collect(),
            ..KeptSelector::default()
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
        let expressions = KeptSelector::parse(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: Some(vec!["worker".into(), "api".into()]),
            }]),
            ..LabelSelector::default()
        })
        .unwrap();
        assert_eq!(
            names(store.selected("a", &expressions)),
            ["api-1", "api-2", "worker"]
        );
        assert!(
            store.selected("a", &KeptSelector::default()).is_empty(),
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

    fn at_version(mut pod: Pod, version: &str) -> Pod {
        pod.metadata.resource_version = Some(version.into());
        pod
    }

    fn version(store: &IndexedStore<Pod>, name: &str) -> Option<String> {
        store
            .get("a", name)
            .and_then(|pod| pod.metadata.resource_version.clone())
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        let store = IndexedStore::from_objects([at_version(pod("a", "p", &[("app", "api")]), "12")]);
        store.apply(Event::Apply(at_version(pod("a", "p", &[("app", "old")]), "9")));
        assert_eq!(version(&store, "p").as_deref(), Some("12"));
        assert_eq!(
            names(store.labelled("a", "app", "api")),
            ["p"],
            "the index keeps the newer labels"
        );
        store.apply(Event::Apply(at_version(pod("a", "p", &[("app", "new")]), "13")));
        assert_eq!(version(&store, "p").as_deref(), Some("13"));
        // Versions that are not numbers cannot be compared: the latest event wins, as it always did.
        store.apply(Event::Apply(at_version(pod("a", "p", &[]), "x")));
        assert_eq!(version(&store, "p").as_deref(), Some("x"));
    }

    #[test]
    fn a_write_is_taken_for_an_object_held_and_newer_only() {
        let store = IndexedStore::from_objects([at_version(pod("a", "p", &[]), "12")]);
        store.wrote(at_version(pod("a", "p", &[("marked", "yes")]), "15"));
        assert_eq!(version(&store, "p").as_deref(), Some("15"));
        assert_eq!(names(store.labelled("a", "marked", "yes")), ["p"]);
        store.wrote(at_version(pod("a", "p", &[]), "14"));
        assert_eq!(
            version(&store, "p").as_deref(),
            Some("15"),
            "an older write's answer"
        );
        store.wrote(at_version(pod("a", "gone", &[]), "16"));
        assert!(
            store.get("a", "gone").is_none(),
            "a write never brings back a deleted object"
        );
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
