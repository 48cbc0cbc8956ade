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
mod reconcile;

pub use cache::Stores;
use cache::{kept_from, start_reflectors};
use cache::{sharing, trim, watch_problem};
pub use ownership::advert::PeerSettings;
use ownership::{Ownership, ring_key};
use ownership::{leader, peers, shards};
use policy::task as policy_task;
pub use reconcile::FINALIZER;
use reconcile::{error_policy, reconcile, reconcile_result_label};

use crate::api::BackpressurePolicy;
use crate::sampler::Sampler;
use crate::telemetry::Metrics;
use crate::values::MetricValues;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use std::sync::Arc;
use std::time::Duration;

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
    pub peer: Option<PeerSettings>,
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

/// What every reconcile and every policy task shares, by room: each field is one room's
/// handle (the API server, the backends, the caches, what levee publishes, its settings, who
/// acts on what, the policies' tasks).
pub struct Context {
    pub kube: Kube,
    pub sampler: Sampler,
    pub stores: Stores,
    pub published: Published,
    pub settings: Settings,
    /// Who acts on which policy (`ownership/`).
    pub owners: ownership::Owners,
    /// The policies' tasks and what they share (`policy/`).
    pub policies: policy::Policies,
}

/// The API server, as the controller writes to it.
pub struct Kube {
    pub client: Client,
    pub recorder: Recorder,
    /// `settings.concurrent_writers` permits: a cold start of 1,000 policies would otherwise
    /// queue 1,000 ticks' worth of requests behind the client's concurrency limit at once, and
    /// the allocator kept what they took (docs/benchmarks.md#scale).
    pub writers: tokio::sync::Semaphore,
}

/// What levee publishes of every policy.
pub struct Published {
    pub metrics: Arc<Metrics>,
    /// The latest sample of every policy, served by the external metrics API.
    pub values: MetricValues,
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
    let (stores, reflectors) = start_reflectors(watch_client.clone(), &settings);
    let reporter = Reporter {
        controller: "levee".into(),
        instance: Some(settings.identity.clone()),
    };
    let context = Arc::new(Context {
        kube: Kube {
            recorder: Recorder::new(client.clone(), reporter),
            writers: tokio::sync::Semaphore::new(settings.concurrent_writers.max(1)),
            client: client.clone(),
        },
        sampler: Sampler::new(),
        stores,
        published: Published {
            metrics: metrics.clone(),
            values,
        },
        owners: ownership::Owners::new(ownership, settings.identity.clone()),
        policies: policy::Policies::default(),
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
        .reconcile_all_on(context.owners.gains())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| {
            // Counted here only, once per outcome (error_policy does not count).
            context
                .published
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
    context.policies.tasks.stop_all(SHUTDOWN_GRACE).await;
    reflector_task.abort();
    peer_task.inspect(tokio::task::JoinHandle::abort);
    standby_task.abort();
    if let Some(task) = ownership_task {
        task.stop().await;
    }
    tracing::info!("levee controller stopped");
    Ok(())
}

#[cfg(test)]
impl Context {
    /// A leading context over the given client and stores, for tests against a mock API server.
    pub(crate) fn for_tests(client: Client, stores: Stores) -> Arc<Self> {
        Self::for_tests_leading(client, stores, true)
    }

    /// `for_tests`, leading or following.
    pub(crate) fn for_tests_leading(client: Client, stores: Stores, leading: bool) -> Arc<Self> {
        // A receiver keeps the last value after its sender is gone.
        let (_, leader) = tokio::sync::watch::channel(leading);
        Self::for_tests_led_by(client, stores, leader)
    }

    /// `for_tests`, leading while `leader` says so.
    pub(crate) fn for_tests_led_by(
        client: Client,
        stores: Stores,
        leader: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kube: Kube {
                recorder: Recorder::new(
                    client.clone(),
                    Reporter {
                        controller: "levee".into(),
                        instance: None,
                    },
                ),
                writers: tokio::sync::Semaphore::new(64),
                client,
            },
            sampler: Sampler::new(),
            stores,
            published: Published {
                metrics: Metrics::new(),
                values: MetricValues::default(),
            },
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
            owners: ownership::Owners::new(Ownership::Leader(leader), "test".into()),
            policies: policy::Policies::default(),
        })
    }
}

#[cfg(test)]
mod tests;
