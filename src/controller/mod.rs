//! `levee run`: the controller.
//!
//! ```text
//!  BackpressurePolicy watch ──reconcile──▶ finalizer + one PolicyTask per policy
//!                                                   │ every sampleInterval
//!                 Redis ◀──sample── PolicyTask ──step──▶ Circuit
//!                                                   │ on a change (leader only)
//!            status (SSA) · events · actuator ──▶ workload + pod annotations, pod condition
//!  Pods / Deployments / StatefulSets / DaemonSets ──reflectors──▶ in-memory stores
//! ```
//! Only a policy's owner (the leader, or its replica in the ring) samples, decides and writes
//! for it; with peers the others keep no task for it and serve the owner's values. A replica
//! that takes a policy over resumes the circuit from its status.

mod act;
mod cache;
mod ownership;
pub mod policy;

use act::{actuator, fence};
use cache::{indexed_store, kept, kept_secret, secrets, sharing, stored, trim, watch_problem};
pub use ownership::peers::PeerSettings;
use ownership::{leader, peers, ring, shards};
use policy::{clock, fresh_status, task as policy_task};

use crate::api::BackpressurePolicy;
use crate::sampler::Sampler;
use crate::telemetry::Metrics;
use crate::values::MetricValues;
use futures::{FutureExt, StreamExt, TryStreamExt};
use indexed_store::IndexedStore;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kept::{KeptPod, KeptWorkload};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use policy_task::PolicyTasks;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The finalizer that lets levee release a policy's producers before the policy goes away.
pub const FINALIZER: &str = "levee.dev/release-targets";
/// How long the controller may take to stop after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The field manager of every write levee makes.
pub const FIELD_MANAGER: &str = "levee";

/// Errors of the controller layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("releasing targets: {0}")]
    Release(String),
}

impl Error {
    /// A short label for metrics naming the cause: a failure inside the finalizer's arms is
    /// labelled by what failed there, not by the finalizer that wrapped it.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(error) => match error.as_ref() {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.metric_label(),
                Finalizer::AddFinalizer(_) | Finalizer::RemoveFinalizer(_) => "finalizer_write",
                Finalizer::UnnamedObject | Finalizer::InvalidFinalizer => "finalizer",
            },
            Error::Release(_) => "release",
        }
    }
}

/// The `result` label of `levee_reconciliations_total` for one reconcile's outcome: `ok`, the
/// cause of a failed reconcile ([`Error::metric_label`]), or what kept the controller from
/// reconciling at all.
fn reconcile_result_label<T, Q: std::error::Error + 'static>(
    result: &std::result::Result<T, kube::runtime::controller::Error<Error, Q>>,
) -> &'static str {
    use kube::runtime::controller::Error as Run;
    match result {
        Ok(_) => "ok",
        Err(Run::ReconcilerFailed(error, _)) => error.metric_label(),
        Err(Run::QueueError(_)) => "watch",
        Err(Run::ObjectNotFound(_)) => "not_found",
        Err(Run::RunnerError(_)) => "runner",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Status is rewritten at least this often, even when nothing changed.
    pub status_heartbeat: Duration,
    /// Who this replica is (Lease holder identity, event reporter instance).
    pub identity: String,
    /// `None` turns leader election off (this replica always writes).
    pub lease: Option<leader::LeaseSettings>,
    /// With a lease: who acts on a policy, the holder of the one Lease or the replica that wins
    /// it in the ring of replica Leases (`shards.rs`).
    pub ownership: OwnershipMode,
    /// Watch only this namespace (policies, workloads, pods); `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// Ticks that may be past sampling (writing status, marks, events) at once.
    pub concurrent_writers: usize,
    /// The bound on one reply from a policy's Redis, whatever it sends.
    pub max_reply_bytes: usize,
    /// This replica as a peer, so that only a policy's owner (the leader, or its replica in the
    /// ring) samples it (`peers.rs`); `None`: every replica samples every policy.
    pub peer: Option<peers::PeerSettings>,
}

impl Settings {
    fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match &self.watch_namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

pub use leader::LeaseSettings;

/// Who acts on a policy when there are Leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OwnershipMode {
    /// The holder of the leader Lease acts on every policy.
    Leader,
    /// Each replica holds a Lease of its own and acts on the policies it wins in their ring.
    Shards,
}

/// How this replica learns which policies it acts on.
#[derive(Clone)]
enum Ownership {
    /// Every policy while this replica holds the leader Lease (always, without one).
    Leader(watch::Receiver<bool>),
    /// The policies it wins in the ring of the live replicas.
    Shards(watch::Receiver<shards::ShardView>),
}

impl Ownership {
    /// Whether `identity` acts on the policy at `key` now, may again without a handover, or
    /// does not own it. Under a leader there is no pause: acting or not.
    fn acting(&self, identity: &str, key: &str) -> shards::Acting {
        match self {
            Self::Leader(leader) if *leader.borrow() => shards::Acting::Yes(0),
            Self::Leader(_) => shards::Acting::No,
            Self::Shards(view) => view.borrow().acting(identity, key),
        }
    }

    /// Fires whenever this replica may have gained policies: becoming leader, or the ring's
    /// members or this replica's acting changing.
    fn gains(&self) -> futures::stream::BoxStream<'static, ()> {
        match self {
            Self::Leader(leader) => tokio_stream::wrappers::WatchStream::from_changes(leader.clone())
                .filter(|leading| futures::future::ready(*leading))
                .map(|_| ())
                .boxed(),
            // Only a change after which this replica acts can gain it a policy: acting lapsing
            // (an API server too slow to renew against) reconciles nothing.
            Self::Shards(view) => tokio_stream::wrappers::WatchStream::from_changes(view.clone())
                .filter(|view| futures::future::ready(view.acting_until.is_some()))
                .map(|_| ())
                .boxed(),
        }
    }
}

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

/// What every reconcile and every policy task shares.
pub struct Context {
    pub client: Client,
    pub sampler: Sampler,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    /// The latest sample of every policy, served by the external metrics API.
    pub values: MetricValues,
    pub recorder: Recorder,
    pub settings: Settings,
    /// The circuit's time: wall time at start, advanced monotonically.
    pub clock: clock::CircuitClock,
    ownership: Ownership,
    tasks: PolicyTasks,
    /// Status read afresh for the policies about to be taken over, one LIST for all of them.
    fresh_status: fresh_status::FreshStatus,
    /// When each peer last answered (the standby rule leaves an answering owner alone).
    peer_answers: peers::PeerAnswers,
    /// The policies this replica put the finalizer on, by UID, and the resourceVersion of the
    /// watch's copy then (`with_finalizer`).
    finalized: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// `settings.concurrent_writers` permits: a cold start of 1,000 policies would otherwise
    /// queue 1,000 ticks' worth of requests behind the client's concurrency limit at once, and
    /// the allocator kept what they took (docs/benchmarks.md#scale).
    writers: tokio::sync::Semaphore,
}

impl Context {
    /// Whether this replica acts on `policy`: decides, writes its status and events, marks its
    /// producers and honours its finalizer (every replica samples and serves it). Every call
    /// site that acts asks this per policy: with `--ownership=leader` the holder of the leader
    /// Lease owns every policy, with `--ownership=shards` the replica that wins the policy in the
    /// ring of live replicas, while its own Lease is held.
    pub fn owns(&self, policy: &BackpressurePolicy) -> bool {
        self.owns_key(&policy.namespace().unwrap_or_default(), &policy.name_any())
    }

    /// `owns` for the policy `name` in `namespace`.
    pub fn owns_key(&self, namespace: &str, name: &str) -> bool {
        self.owns_ring_key(&ring_key(namespace, name))
    }

    /// Whether the owner of the policy at `key` (another replica) answered its peers at `since`
    /// or later: alive and reachable, so its values will come. Under a leader, whether the
    /// leader (a follower's one peer) did.
    fn owner_answered_since(&self, key: &str, since: Instant) -> bool {
        match &self.ownership {
            Ownership::Leader(_) => self.peer_answers.any_answered_since(since),
            Ownership::Shards(view) => {
                let view = view.borrow();
                ring::owner(key, &view.members).is_some_and(|owner| {
                    owner != self.settings.identity && self.peer_answers.answered_since(owner, since)
                })
            }
        }
    }

    /// `owns` for the policy at `key` in the ring ([`ring_key`]).
    fn owns_ring_key(&self, key: &str) -> bool {
        matches!(self.acting_on_ring_key(key), shards::Acting::Yes(_))
    }

    /// Whether this replica acts on `policy` now, may again without a handover (its acting
    /// paused within one run of its ring Lease: nobody else acted meanwhile), or does not own
    /// it. Under a leader there is no pause: acting or not.
    pub fn acting_on(&self, policy: &BackpressurePolicy) -> shards::Acting {
        self.acting_on_ring_key(&ring_key(
            &policy.namespace().unwrap_or_default(),
            &policy.name_any(),
        ))
    }

    fn acting_on_ring_key(&self, key: &str) -> shards::Acting {
        self.ownership.acting(&self.settings.identity, key)
    }

    /// The fence every write for `policy` passes (`fence.rs`); `None` when this replica does
    /// not act on it now.
    pub fn fence(&self, policy: &BackpressurePolicy) -> Option<fence::Fence> {
        let key = ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any());
        fence::Fence::take(&self.ownership, &self.settings.identity, key)
    }
}

/// What places a policy in the ring: the same on every replica, and stable over its life.
fn ring_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The clients the controller uses.
#[derive(Clone)]
pub struct ApiClients {
    /// Requests: with a timeout, a bounded number in flight.
    pub requests: Client,
    /// Watches, which may stay quiet for minutes.
    pub watches: Client,
    /// The Lease's renewals alone, on connections of their own: with a timeout, never queued
    /// behind policy writes or the metrics API's reviews, whatever their callers send.
    pub lease: Client,
    /// Requests that must not wait behind policy writes (the metrics API's token and access
    /// reviews, forwarding to a delegate): with a timeout, not queued.
    pub unqueued: Client,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    clients: ApiClients,
    settings: Settings,
    metrics: Arc<Metrics>,
    values: MetricValues,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let ApiClients {
        requests: client,
        watches: watch_client,
        lease: lease_client,
        unqueued: _,
    } = clients;
    let (ownership, ownership_task, peer_source) = match (&settings.lease, settings.ownership) {
        (Some(lease), OwnershipMode::Shards) => {
            let (view, membership) =
                shards::join(lease_client, watch_client.clone(), &settings, lease.clone()).await?;
            let source = peers::PeerSource::Shards(view.clone());
            (Ownership::Shards(view), Some(membership), source)
        }
        _ => {
            let (leader, election, leaders) =
                leader::elect(lease_client, watch_client.clone(), &settings).await?;
            (
                Ownership::Leader(leader),
                election,
                peers::PeerSource::Leader(leaders),
            )
        }
    };
    let gains = ownership.gains();
    let (stores, reflectors) = start_reflectors(watch_client.clone(), &settings);
    let reporter = Reporter {
        controller: "levee".into(),
        instance: Some(settings.identity.clone()),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        sampler: Sampler::new(),
        stores,
        metrics: metrics.clone(),
        values,
        clock: clock::CircuitClock::start(),
        ownership,
        tasks: PolicyTasks::default(),
        fresh_status: fresh_status::FreshStatus::default(),
        peer_answers: peers::PeerAnswers::default(),
        finalized: Default::default(),
        writers: tokio::sync::Semaphore::new(settings.concurrent_writers.max(1)),
        client: client.clone(),
        settings,
    });
    let reflector_task = tokio::spawn(reflectors);
    let peer_task = context
        .settings
        .peer
        .clone()
        .map(|peer| tokio::spawn(peers::sync(context.clone(), peer_source, peer)));
    let standby_task = tokio::spawn(policy_task::check_standbys(context.clone()));
    let stores = &context.stores;
    futures::join!(
        stores.pods.wait_until_ready(),
        stores.deployments.wait_until_ready(),
        stores.stateful_sets.wait_until_ready(),
        stores.daemon_sets.wait_until_ready(),
        stores.autoscalers.wait_until_ready(),
        stores.secrets.wait_until_ready(),
    );
    metrics.set_ready(true);
    tracing::info!(identity = %context.settings.identity, "levee controller started");

    // The controller needs a Sync shutdown future; hand the signal over through a oneshot, and
    // SHUTDOWN_GRACE later through another: a controller stuck retrying its watch (a missing CRD)
    // does not stop on the graceful signal, and must not keep the Lease past SIGTERM.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (grace_over, grace_ended) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(());
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        let _ = grace_over.send(());
    });
    let shutdown = async move {
        let _ = stopped.await;
    };
    // Gaining policies (becoming leader, the ring changing) re-reconciles every policy, so
    // finalizers and status catch up at once.
    let policies: Api<BackpressurePolicy> = context.settings.api(watch_client);
    let (policy_store, policy_writer) = reflector::store();
    let kept_policies = context.stores.policies.clone();
    let policy_watch = reflector::reflector(
        policy_writer,
        watcher(policies, watcher::Config::default().any_semantic())
            .modify(trim::policy)
            .inspect_ok(move |event| {
                kept_policies.apply(kept_from(event, |policy| sharing::KeptPolicy::from(policy)))
            }),
    )
    .applied_objects();
    let controller = Controller::for_stream(policy_watch, policy_store)
        .reconcile_all_on(gains)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| {
            // Counted here only, once per outcome (error_policy does not count).
            context
                .metrics
                .reconciliations
                .with_label_values(&[reconcile_result_label(&result)])
                .inc();
            match result {
                Err(kube::runtime::controller::Error::QueueError(error)) => tracing::error!(
                    problem = %watch_problem::describe(&error),
                    "cannot watch BackpressurePolicies; retrying"
                ),
                Err(error) => tracing::debug!(%error, "reconcile failed"),
                Ok(_) => {}
            }
            futures::future::ready(())
        });
    tokio::select! {
        _ = controller => {}
        Ok(()) = grace_ended => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "the controller did not stop within the grace period; stopping it"
        ),
    }
    context.tasks.stop_all(SHUTDOWN_GRACE).await;
    reflector_task.abort();
    peer_task.inspect(tokio::task::JoinHandle::abort);
    standby_task.abort();
    if let Some(task) = ownership_task {
        task.stop().await;
    }
    tracing::info!("levee controller stopped");
    Ok(())
}

/// Keeps `store` current from a watch on `api`, each object kept as `keep` makes it (only what
/// levee reads), re-watching with backoff.
fn reflect<W, K>(
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
fn kept_from<W, K>(event: &watcher::Event<W>, keep: fn(&W) -> K) -> watcher::Event<K> {
    use watcher::Event;
    match event {
        Event::Apply(object) => Event::Apply(keep(object)),
        Event::Delete(object) => Event::Delete(keep(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(keep(object)),
        Event::InitDone => Event::InitDone,
    }
}

fn start_reflectors(
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
    let opted_in = secrets::watch_config(secrets::LABEL_SECRET_CONSENT);
    let opted_in_legacy = secrets::watch_config(secrets::LABEL_SECRET_CONSENT_LEGACY);
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

/// Keeps a task for each policy this replica owns (for every policy without peers) and the
/// others on standby; only the owner adds and honours the finalizer.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any(), namespace = policy.namespace().unwrap_or_default()))]
async fn reconcile(policy: Arc<BackpressurePolicy>, context: Arc<Context>) -> Result<Action> {
    if !context.owns(&policy) {
        if policy.meta().deletion_timestamp.is_none() {
            context.tasks.stand_by(&context, policy);
        } else {
            // The owner releases the targets; another replica stops serving the policy.
            context.tasks.stop(&policy);
            forget(&context, &policy);
        }
        return Ok(Action::await_change());
    }
    let namespace = policy.namespace().unwrap_or_default();
    let api: Api<BackpressurePolicy> = Api::namespaced(context.client.clone(), &namespace);
    let policy = with_finalizer(&context, &api, policy).await?;
    let for_event = context.clone();
    finalizer(&api, FINALIZER, policy, |event| async move {
        match event {
            FinalizerEvent::Apply(policy) => {
                for_event.tasks.ensure(&for_event, policy);
                Ok(Action::await_change())
            }
            FinalizerEvent::Cleanup(policy) => {
                for_event.tasks.stop(&policy);
                actuator::release(&for_event, &policy).await?;
                forget(&for_event, &policy);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// The policy with levee's finalizer: put on by a server-side apply of that one entry (the API
/// server keeps finalizers as a set, so the apply adds it beside any other and changes nothing
/// when it is there) when the watch's copy lacks it, and the object the API server returns
/// taken from then on. kube's own add is a JSON patch that tests the list first, which a copy
/// behind the API server fails for as long as it lags: at 5,000 policies on three replicas the
/// watch fell minutes behind and every policy a replica took over was refused (422) and retried,
/// none of it acted on.
/// A copy the watch still shows as it was when this replica put the finalizer on (the same
/// resourceVersion) is taken as having it: no second apply each time the policy is reconciled
/// before the watch catches up.
async fn with_finalizer(
    context: &Context,
    api: &Api<BackpressurePolicy>,
    policy: Arc<BackpressurePolicy>,
) -> Result<Arc<BackpressurePolicy>> {
    let has_it = policy.finalizers().iter().any(|f| f == FINALIZER);
    if has_it || policy.meta().deletion_timestamp.is_some() {
        return Ok(policy);
    }
    let uid = policy.uid().unwrap_or_default();
    let applied_to = context
        .finalized
        .lock()
        .expect("finalized lock")
        .get(&uid)
        .cloned();
    if applied_to.is_some() && applied_to == policy.resource_version() {
        let mut known = (*policy).clone();
        known.finalizers_mut().push(FINALIZER.to_string());
        return Ok(Arc::new(known));
    }
    let entry = serde_json::json!({
        "apiVersion": BackpressurePolicy::api_version(&()),
        "kind": BackpressurePolicy::kind(&()),
        // The uid makes the apply fail rather than create a policy deleted meanwhile.
        "metadata": {"name": policy.name_any(), "uid": policy.uid(), "finalizers": [FINALIZER]},
    });
    let params = kube::api::PatchParams::apply(FINALIZER_MANAGER);
    let mut patched = api
        .patch(&policy.name_any(), &params, &kube::api::Patch::Apply(entry))
        .await?;
    trim::policy(&mut patched);
    if let Some(version) = policy.resource_version() {
        context
            .finalized
            .lock()
            .expect("finalized lock")
            .insert(uid, version);
    }
    Ok(Arc::new(patched))
}

/// The field manager that owns levee's finalizer entry (its own, so that no other apply of levee's
/// takes the entry away by leaving it out).
const FINALIZER_MANAGER: &str = "levee-finalizer";

#[cfg(test)]
impl Context {
    /// A leading context over the given client and stores, for tests against a mock API server.
    pub(crate) fn for_tests(client: Client, stores: Stores) -> Arc<Self> {
        Self::for_tests_leading(client, stores, true)
    }

    /// `for_tests`, leading or following.
    pub(crate) fn for_tests_leading(client: Client, stores: Stores, leading: bool) -> Arc<Self> {
        // A receiver keeps the last value after its sender is gone.
        let (_, leader) = watch::channel(leading);
        Self::for_tests_led_by(client, stores, leader)
    }

    /// `for_tests`, leading while `leader` says so.
    pub(crate) fn for_tests_led_by(
        client: Client,
        stores: Stores,
        leader: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "levee".into(),
                    instance: None,
                },
            ),
            sampler: Sampler::new(),
            stores,
            metrics: Metrics::new(),
            values: MetricValues::default(),
            settings: Settings {
                status_heartbeat: Duration::from_secs(30),
                identity: "test".into(),
                lease: None,
                ownership: OwnershipMode::Leader,
                watch_namespace: None,
                concurrent_writers: 64,
                max_reply_bytes: crate::sampler::DEFAULT_MAX_REPLY_BYTES,
                peer: None,
            },
            clock: clock::CircuitClock::start(),
            ownership: Ownership::Leader(leader),
            tasks: PolicyTasks::default(),
            fresh_status: fresh_status::FreshStatus::default(),
            peer_answers: peers::PeerAnswers::default(),
            finalized: Default::default(),
            writers: tokio::sync::Semaphore::new(64),
            client,
        })
    }
}

#[cfg(test)]
mod tests;

/// Drops a deleted policy's metric series and served values.
fn forget(context: &Context, policy: &BackpressurePolicy) {
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    context.metrics.forget_policy(&namespace, &name);
    context.values.forget(&namespace, &name);
    if let Some(uid) = policy.uid() {
        context.finalized.lock().expect("finalized lock").remove(&uid);
    }
}

/// Retries a failed reconcile; the failure is counted where every outcome is, in `run`.
fn error_policy(_policy: Arc<BackpressurePolicy>, error: &Error, _context: Arc<Context>) -> Action {
    tracing::warn!(%error, cause = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
