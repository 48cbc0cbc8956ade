//! What levee keeps of the cluster: the watched objects in indexed stores (pods, workloads,
//! HPAs, opted-in Secrets, policies) and the matching over them (selectors, shared targets).

pub mod indexed_store;
pub mod kept;
pub mod kept_secret;
pub mod secrets;
pub mod selector;
pub mod sharing;
pub mod stored;
pub mod trim;
pub mod watch_problem;

use crate::api::labels::{LABEL_SECRET_CONSENT, LABEL_SECRET_CONSENT_LEGACY};
use crate::controller::Settings;
use futures::{FutureExt, StreamExt};
use indexed_store::IndexedStore;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kept::{KeptPod, KeptWorkload};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

/// In-memory copies of the objects the actuator reads, kept current by watches.
#[derive(Clone)]
pub struct Stores {
    pub pods: IndexedStore<KeptPod>,
    pub deployments: IndexedStore<KeptWorkload>,
    pub stateful_sets: IndexedStore<KeptWorkload>,
    pub daemon_sets: IndexedStore<KeptWorkload>,
    /// The HPAs levee manages (labelled `app.kubernetes.io/managed-by: levee`).
    pub autoscalers: IndexedStore<HorizontalPodAutoscaler>,
    /// What levee keeps of every policy it watches, indexed by target: the policies that name
    /// one workload (`sharing.rs`).
    pub policies: IndexedStore<sharing::KeptPolicy>,
    /// The Secrets that let levee read them (labelled `levee.dev/secret: "true"`, or the older
    /// `levee.dev/redis-secret: "true"`); no other.
    pub secrets: secrets::OptedInSecrets,
}

/// Keeps `store` current from a watch on `api`, each object kept as `keep` makes it (only what
/// levee reads), re-watching with backoff.
pub(super) fn reflect<W, K>(
    store: IndexedStore<K>,
    api: Api<W>,
    config: watcher::Config,
    keep: fn(W) -> K,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    W: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    W::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    K: indexed_store::Indexed + Send + Sync + 'static,
{
    watcher(api, config.any_semantic())
        .default_backoff()
        .for_each(move |event| {
            if let Ok(event) = event {
                store.apply(kept(event, keep));
            }
            futures::future::ready(())
        })
}

/// A watch event with its object kept as `keep` makes it.
fn kept<W, K>(event: watcher::Event<W>, keep: fn(W) -> K) -> watcher::Event<K> {
    use watcher::Event;
    match event {
        Event::Apply(object) => Event::Apply(keep(object)),
        Event::Delete(object) => Event::Delete(keep(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(keep(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// A watch event with its object kept as `keep` makes it from a reference (the event goes on).
pub(super) fn kept_from<W, K>(event: &watcher::Event<W>, keep: fn(&W) -> K) -> watcher::Event<K> {
    use watcher::Event;
    match event {
        Event::Apply(object) => Event::Apply(keep(object)),
        Event::Delete(object) => Event::Delete(keep(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(keep(object)),
        Event::InitDone => Event::InitDone,
    }
}

pub(super) fn start_reflectors(
    client: Client,
    settings: &Settings,
) -> (Stores, impl std::future::Future<Output = ()> + Send + 'static) {
    let stores = Stores {
        pods: IndexedStore::default(),
        deployments: IndexedStore::default(),
        stateful_sets: IndexedStore::default(),
        daemon_sets: IndexedStore::default(),
        autoscalers: IndexedStore::default(),
        policies: IndexedStore::default(),
        secrets: secrets::OptedInSecrets::default(),
    };
    let all_of = watcher::Config::default;
    let managed = all_of().labels("app.kubernetes.io/managed-by=levee");
    let opted_in = secrets::watch_config(LABEL_SECRET_CONSENT);
    let opted_in_legacy = secrets::watch_config(LABEL_SECRET_CONSENT_LEGACY);
    let streams = futures::future::join_all([
        reflect(
            stores.pods.clone(),
            settings.api::<stored::StoredPod>(client.clone()),
            all_of(),
            KeptPod::from,
        )
        .boxed(),
        reflect(
            stores.deployments.clone(),
            settings.api::<stored::StoredDeployment>(client.clone()),
            all_of(),
            KeptWorkload::from,
        )
        .boxed(),
        reflect(
            stores.stateful_sets.clone(),
            settings.api::<stored::StoredStatefulSet>(client.clone()),
            all_of(),
            KeptWorkload::from,
        )
        .boxed(),
        reflect(
            stores.daemon_sets.clone(),
            settings.api::<stored::StoredDaemonSet>(client.clone()),
            all_of(),
            KeptWorkload::from,
        )
        .boxed(),
        reflect(
            stores.autoscalers.clone(),
            settings.api(client.clone()),
            managed,
            trim::autoscaler,
        )
        .boxed(),
        reflect(
            stores.secrets.labelled.clone(),
            settings.api::<kept_secret::StoredSecret>(client.clone()),
            opted_in,
            trim::secret,
        )
        .boxed(),
        reflect(
            stores.secrets.legacy.clone(),
            settings.api::<kept_secret::StoredSecret>(client),
            opted_in_legacy,
            trim::secret,
        )
        .boxed(),
    ]);
    (stores, async move {
        streams.await;
    })
}
