//! One task per policy: every `sampleInterval` it samples the queues, steps the circuit and, on
//! the leader, saves the decision in status and only then acts on the targets: producers are
//! never held on a decision that status lacks, so whoever leads next resumes exactly what
//! producers see. A spec change re-reads Secrets and the interval; the circuit carries over.
//! Followers mirror the circuit from status instead of stepping it.

use crate::controller::act::writes;
use crate::controller::policy::timing::{phase_of, task_key, ticker};
use crate::controller::policy::{plan, record};

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus, DiscoveryStatus, QueueSpec};
use crate::circuit::{Circuit, CircuitRules};
use crate::controller::Context;
use crate::controller::act::actuator;
use crate::controller::act::autoscaler;
use crate::controller::cache::secrets::{self, EndpointProblem, resolve_endpoint};
use crate::controller::cache::sharing;
use crate::controller::ownership::shards::Acting;
use crate::controller::policy::backoff::Backoff;
use crate::controller::policy::events::PendingEvent;
use crate::controller::policy::judgement;
use crate::forecast::{Forecast, Forecaster};
use crate::sampler::{BackendEndpoint, Discovered, PreparedQueues, Sample};
use kube::ResourceExt;
use kube::runtime::events::EventType;
use plan::{AutoscalerSync, Facts, Failures, Plan, plan};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use writes::Writes;

/// A policy this replica knows of, and its task when it runs one.
struct Entry {
    /// Its UID: a policy recreated under the same name gets a new task.
    uid: String,
    latest: watch::Sender<Arc<BackpressurePolicy>>,
    /// `None` while the replica stands by: it does not own the policy and serves what the owner
    /// publishes (`peers.rs`).
    task: Option<JoinHandle<()>>,
    /// Since when it has stood by (or was first known), for the grace before it samples the
    /// policy itself because the owner's values do not arrive.
    idle_since: Instant,
}

impl Entry {
    fn start(&mut self, context: &Arc<Context>) {
        self.task = Some(tokio::spawn(run(context.clone(), self.latest.subscribe())));
    }

    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }
}

/// How often a replica with peers looks for policies it stands by whose owner's values stopped
/// arriving.
pub const STANDBY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The policies this replica knows of, by namespace and name, and their tasks. A replica runs a
/// task for each policy it owns, and, without peers, for every policy. With peers it keeps no
/// task for a policy it does not own while the owner's values arrive (they are served as they
/// come, `peers.rs`): one replica's tasks are its share of the policies, not all of them.
#[derive(Default)]
pub struct PolicyTasks {
    known: Mutex<HashMap<String, Entry>>,
}

impl PolicyTasks {
    /// Starts the policy's task, or hands the running one the latest object.
    pub fn ensure(&self, context: &Arc<Context>, policy: Arc<BackpressurePolicy>) {
        self.keep(context, policy, true);
    }

    /// Keeps the latest object of a policy this replica does not own: a running task gets it
    /// (it stops once the owner's values arrive); none is started while peers serve it, else
    /// (no `--peer-url`) one is, as every replica then samples every policy.
    pub fn stand_by(&self, context: &Arc<Context>, policy: Arc<BackpressurePolicy>) {
        self.keep(context, policy, context.settings.peer.is_none());
    }

    /// Keeps the latest object of a policy, starting its task when `run_it`.
    pub(in crate::controller) fn keep(
        &self,
        context: &Arc<Context>,
        policy: Arc<BackpressurePolicy>,
        run_it: bool,
    ) {
        let key = policy_key(&policy);
        let uid = task_key(&policy);
        let mut known = self.known.lock().expect("task map lock");
        if let Some(entry) = known.get_mut(&key).filter(|entry| entry.uid == uid) {
            entry.latest.send_replace(policy);
            if run_it && !entry.running() {
                entry.start(context);
            }
            return;
        }
        let mut entry = Entry {
            uid,
            latest: watch::Sender::new(policy),
            task: None,
            idle_since: Instant::now(),
        };
        if run_it {
            entry.start(context);
        }
        if let Some(previous) = known.insert(key, entry) {
            previous.task.inspect(JoinHandle::abort);
        }
    }

    /// Forgets the policy, stopping its task.
    pub fn stop(&self, policy: &BackpressurePolicy) {
        let removed = self
            .known
            .lock()
            .expect("task map lock")
            .remove(&policy_key(policy));
        if let Some(task) = removed.and_then(|entry| entry.task) {
            task.abort();
        }
    }

    /// Takes what a peer sent for the policies this replica knows of and does not own (under
    /// the map's lock: a policy deleted meanwhile is not brought back): its values, and its
    /// confirmations that values it sent before were sampled again. False when a confirmation
    /// named values this replica does not hold (it took another's, or its own sample since):
    /// the peer is then asked for everything.
    pub fn take_from_peers(&self, context: &Context, received: crate::values::peer_wire::Received) -> bool {
        let known = self.known.lock().expect("task map lock");
        let takes = |namespace: &str, policy: &str| {
            known.contains_key(&crate::controller::ring_key(namespace, policy))
                && !context.owners.owns_key(namespace, policy)
        };
        for values in received.values {
            if takes(&values.namespace, &values.policy) {
                context.published.values.take_from_peer(values);
            }
        }
        let unheld = received
            .confirmed
            .iter()
            .filter(|confirmed| takes(&confirmed.namespace, &confirmed.policy))
            .filter(|confirmed| !context.published.values.confirm_from_peer(confirmed))
            .count();
        unheld == 0
    }

    /// Starts a task for each policy stood by that needs one: this replica owns it now, or the
    /// owner's values have not been fresh for three sample intervals and the owner has not
    /// answered its peers for as long (away or unreachable): the metrics never stop, at the cost
    /// of sampling it here meanwhile. An owner that answers but is late (a busy start) is left
    /// to it: at 10,000 policies every replica stood in for every late one, on top of its own. A task
    /// that ended otherwise (a panic) is started again. Counts the tasks (`levee_policy_tasks`).
    pub fn check_standbys(&self, context: &Arc<Context>) {
        let now = Instant::now();
        let mut known = self.known.lock().expect("task map lock");
        let mut running = 0;
        for (key, entry) in known.iter_mut() {
            if entry.running() {
                running += 1;
                continue;
            }
            if entry.task.take().is_some() {
                entry.idle_since = now;
            }
            // The key is the ring's (`namespace/name`): nothing to allocate for each policy every
            // second.
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            let grace = std::time::Duration::from(entry.latest.borrow().spec.sample_interval) * 3;
            let owner_away = now.saturating_duration_since(entry.idle_since) >= grace
                && !context
                    .published
                    .values
                    .get(namespace, name)
                    .is_some_and(|values| values.fresh_from_peer(now))
                && !context
                    .owners
                    .owner_answered_since(key, now.checked_sub(grace).unwrap_or(now));
            if context.owners.owns_ring_key(key) || owner_away {
                tracing::debug!(policy = %key, owner_away, "starting the task of a policy stood by");
                entry.start(context);
                running += 1;
            }
        }
        context.published.metrics.policy_tasks.set(running);
    }

    /// Stops every task (shutdown): a task between ticks stops at once, one in a tick finishes
    /// it (its status, producers and events stay consistent) unless `grace` runs out first.
    pub async fn stop_all(&self, grace: std::time::Duration) {
        let handles: Vec<JoinHandle<()>> = self
            .known
            .lock()
            .expect("task map lock")
            .drain()
            // Dropping the sender ends the task's loop once its current tick is done.
            .filter_map(|(_, entry)| entry.task)
            .collect();
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(grace, futures::future::join_all(handles))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "policy tasks did not finish their tick in time; stopping them"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// Checks the policies stood by every [`STANDBY_CHECK`], until dropped.
pub async fn check_standbys(context: Arc<Context>) {
    let mut ticker = tokio::time::interval(STANDBY_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        context.policies.tasks.check_standbys(&context);
    }
}

/// What a task keeps between ticks, by concern.
struct PolicyState {
    policy: Arc<BackpressurePolicy>,
    /// What the spec makes: rebuilt whole on a new generation.
    spec: SpecState,
    /// The backend's endpoint and the Secrets it was built from.
    endpoint: EndpointState,
    circuit: Circuit,
    /// What this replica hands over to be written.
    hand: HandState,
    /// The managed HPA's bookkeeping.
    scale: ScaleState,
}

/// What a policy's spec makes, for one generation.
struct SpecState {
    rules: CircuitRules,
    /// The policy's queues and the reads they take.
    queues: PreparedQueues,
    discovery: DiscoveryState,
    /// The backlog's recent history and what it forecasts.
    forecaster: Forecaster,
    forecast: Option<Forecast>,
}

impl SpecState {
    fn new(policy: &BackpressurePolicy) -> Self {
        Self {
            rules: policy.spec.circuit_rules(),
            queues: PreparedQueues::for_policy(&policy.spec, &policy.spec.queues),
            discovery: DiscoveryState::default(),
            forecaster: Forecaster::new(policy.spec.circuit.forecast_window.into()),
            forecast: None,
        }
    }
}

/// What the last discovery of `keyPattern` entries found, and the same for status, with when.
#[derive(Default)]
struct DiscoveryState {
    found: Option<Discovered>,
    status: Option<DiscoveryStatus>,
}

/// The backend's endpoint, and when to build it again.
#[derive(Default)]
struct EndpointState {
    resolved: Option<Result<BackendEndpoint, EndpointProblem>>,
    /// The backend refused the endpoint (a rotated password?): rebuild it from the Secrets when
    /// the backoff allows.
    suspect: bool,
    /// Paces re-reads of the Secrets while they are missing or the backend refuses them.
    backoff: Backoff,
    /// The endpoint problem last reported with an event, so each is reported once.
    reported_problem: Option<&'static str>,
    /// The versions of the Secrets the endpoint was built from (a change rebuilds it).
    secret_versions: Vec<Option<String>>,
}

impl EndpointState {
    /// A new generation: the endpoint is built again at once.
    fn respecified(&mut self) {
        self.resolved = None;
        self.suspect = false;
        self.backoff.succeeded();
    }
}

/// What this replica hands over to be written, and in which run it last acted.
struct HandState {
    /// What was written, and the pass writing what the ticks decided.
    writes: Writes,
    /// Events of what happened between passes (an endpoint problem, an incomplete discovery),
    /// published by the next pass behind its fence.
    events: Vec<PendingEvent>,
    /// The run of this replica's ring Lease in which it acted on the policy at its last tick
    /// (`shards::Acting`; 0 under a leader). One that starts to (a handover, the task's start, a
    /// new run) first resumes the circuit from the API server; one whose acting only paused
    /// within the run goes on from its own circuit, which nobody else can have moved.
    acted_in: Option<u64>,
}

/// The managed HPA's bookkeeping.
#[derive(Default)]
struct ScaleState {
    /// The policy generation, HPA resource version and partition cap last found in place
    /// (nothing to compare again until one of them changes).
    checked: Option<(Option<i64>, Option<String>, Option<u32>)>,
    /// A Kafka policy's partition count, from its last full read: caps the HPA's maxReplicas.
    partition_cap: Option<u32>,
}

impl PolicyState {
    fn new(policy: Arc<BackpressurePolicy>) -> Self {
        let status = policy.status.clone().unwrap_or_default();
        Self {
            spec: SpecState::new(&policy),
            endpoint: EndpointState::default(),
            circuit: status.circuit(),
            hand: HandState {
                writes: Writes::new(status),
                events: Vec::new(),
                acted_in: None,
            },
            scale: ScaleState::default(),
            policy,
        }
    }

    /// Takes a newer object; a new generation means new rules and a new endpoint.
    fn update(&mut self, policy: Arc<BackpressurePolicy>) -> bool {
        let respecified = policy.metadata.generation != self.policy.metadata.generation;
        if respecified {
            self.spec = SpecState::new(&policy);
            self.endpoint.respecified();
        }
        self.policy = policy;
        respecified
    }

    /// The entries with a `keyPattern`, which discovery expands.
    fn patterns(&self) -> Vec<QueueSpec> {
        let queues = &self.policy.spec.queues;
        queues
            .iter()
            .filter(|q| q.key_pattern.is_some())
            .cloned()
            .collect()
    }

    /// Takes what a discovery found: the policy's queues become its own plus the discovered
    /// ones (a failed discovery keeps the queues found before).
    fn take_discovered(&mut self, context: &Context, found: Discovered) {
        let message = found.problem(self.policy.spec.discovery.max_queues as usize);
        let previous_message = self
            .spec
            .discovery
            .status
            .as_ref()
            .and_then(|d| d.message.clone());
        if message.is_some() && message != previous_message && context.owners.owns(&self.policy) {
            self.hand.events.push((
                EventType::Warning,
                "DiscoveryIncomplete",
                message.clone().unwrap_or_default(),
            ));
        }
        let kept = match (&found.error, &self.spec.discovery.found) {
            (Some(_), Some(previous)) => previous.clone(),
            _ => found.clone(),
        };
        self.spec.discovery.status = Some(DiscoveryStatus {
            matched: kept.matched as u64,
            sampled: kept.queues.len() as u64,
            last_discovery_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                context.policies.clock.now(),
            )),
            message,
        });
        self.spec.queues = PreparedQueues::for_policy(
            &self.policy.spec,
            &kept.with_spec_queues(&self.policy.spec.queues),
        )
        .continuing(&self.spec.queues);
        self.spec.discovery.found = Some(kept);
    }

    /// Builds the endpoint from the Secrets when there is none, or when the last one failed and
    /// the backoff allows another read. A problem new to the owner becomes an event of its next
    /// pass.
    async fn refresh_endpoint(&mut self, context: &Context) {
        let now = Instant::now();
        let versions = secrets::versions(&context.stores.secrets, &self.policy);
        // A Secret created, labelled, rotated or deleted: rebuild at once.
        let rotated = versions != self.endpoint.secret_versions;
        let due = rotated
            || match &self.endpoint.resolved {
                None => true,
                Some(Err(_)) => self.endpoint.backoff.ready(now),
                Some(Ok(_)) => self.endpoint.suspect && self.endpoint.backoff.ready(now),
            };
        if !due {
            return;
        }
        if rotated {
            self.endpoint.backoff.succeeded();
            self.endpoint.secret_versions = versions;
        }
        let resolved = resolve_endpoint(
            &context.kube.client,
            &context.stores.secrets,
            &self.policy,
            context.settings.max_reply_bytes,
        )
        .await;
        if resolved.is_err() || self.endpoint.suspect {
            self.endpoint.backoff.failed(now);
        }
        self.endpoint.suspect = false;
        match &resolved {
            Ok(_) => self.endpoint.reported_problem = None,
            Err(problem)
                if context.owners.owns(&self.policy)
                    && self.endpoint.reported_problem != Some(problem.reason) =>
            {
                self.endpoint.reported_problem = Some(problem.reason);
                self.hand
                    .events
                    .push((EventType::Warning, problem.reason, problem.message.clone()));
            }
            Err(_) => {}
        }
        self.endpoint.resolved = Some(resolved);
    }
}

/// Where the task map keeps a policy: its namespace and name, as peers name it.
fn policy_key(policy: &BackpressurePolicy) -> String {
    crate::controller::ring_key(&policy.namespace().unwrap_or_default(), &policy.name_any())
}

async fn run(context: Arc<Context>, mut latest: watch::Receiver<Arc<BackpressurePolicy>>) {
    let mut state = PolicyState::new(latest.borrow_and_update().clone());
    // A tick's future is boxed for its duration only: the thousand tasks of a thousand policies
    // then hold their state between ticks, not the largest future a tick ever awaits.
    if !Box::pin(tick(&context, &mut state)).await {
        return state.stand_by(&context).await;
    }
    let mut interval = ticker(&state.policy);
    let mut discovery = discovery_ticker(&state.policy);
    // Discoveries run in their own task, one at a time; its result comes back through its handle.
    let mut discovering: Option<JoinHandle<(Option<i64>, Option<Discovered>)>> = None;
    loop {
        // A stop (the sender dropped) or a newer object goes before a due tick.
        tokio::select! {
            biased;
            changed = latest.changed() => {
                if changed.is_err() {
                    discovering.take().inspect(JoinHandle::abort);
                    state.hand.writes.finish().await;
                    return;
                }
                let policy = latest.borrow_and_update().clone();
                if state.update(policy) {
                    interval = ticker(&state.policy);
                    discovery = discovery_ticker(&state.policy);
                    discovering.take().inspect(JoinHandle::abort);
                }
            }
            finished = discovered(&mut discovering), if discovering.is_some() => {
                discovering = None;
                // A backend without discovery found nothing to take.
                let Ok((generation, Some(found))) = finished else {
                    continue;
                };
                if generation == state.policy.metadata.generation {
                    state.take_discovered(&context, found);
                }
            }
            () = next_discovery(&mut discovery), if discovering.is_none() => {
                discovering = state.start_discovery(&context);
            }
            _ = interval.tick() => {
                if !Box::pin(tick(&context, &mut state)).await {
                    discovering.take().inspect(JoinHandle::abort);
                    return state.stand_by(&context).await;
                }
            }
        }
    }
}

/// Discovery's interval: `discovery.interval`, the first at once; none for a policy without a
/// `keyPattern` entry.
fn discovery_ticker(policy: &BackpressurePolicy) -> Option<tokio::time::Interval> {
    if !policy.spec.queues.iter().any(|q| q.key_pattern.is_some()) {
        return None;
    }
    let period: std::time::Duration = policy.spec.discovery.interval.into();
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(interval)
}

/// What the running discovery found (an error when it panicked); never without one.
async fn discovered(
    running: &mut Option<JoinHandle<(Option<i64>, Option<Discovered>)>>,
) -> Result<(Option<i64>, Option<Discovered>), tokio::task::JoinError> {
    match running {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// When the next discovery is due; never without a ticker.
async fn next_discovery(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One tick, in phases: a replica that does not own the policy and has fresh values from its
/// owner (`peers.rs`) stops the task there (false), leaving Redis to the owner; else sample; a
/// replica that does not own the policy mirrors status and stops there; the owner keeps the
/// HPA in place, decides, and hands what to write to the policy's writes (status, then the
/// targets brought to what status holds, then events: `writes.rs`), which never hold up the
/// next tick. True while the task goes on.
async fn tick(context: &Arc<Context>, state: &mut PolicyState) -> bool {
    if state.owner_publishes(context) {
        return false;
    }
    let sample = state.sample(context).await;
    if let Ok(sample) = &sample {
        state.follow_partitions(sample);
    }
    let acting = context.owners.acting_on(&state.policy);
    let gathered = state.gather(context, acting);
    let mut fresh = None;
    loop {
        let planned = state.hand.writes.with_written(|written| {
            plan(Facts {
                policy: &state.policy,
                rules: &state.spec.rules,
                acting,
                acted_in: state.hand.acted_in,
                fresh: fresh.as_ref(),
                circuit: &state.circuit,
                written,
                sample: sample.as_ref(),
                forecast: state.spec.forecast,
                failures: &gathered.failures,
                missing: gathered.missing.clone(),
                shared: &gathered.shared,
                autoscaler: gathered.autoscaler,
                partition_cap: state.scale.partition_cap,
                discovery: state.spec.discovery.status.as_ref(),
                pending_events: state.hand.events.clone(),
                now: gathered.now,
            })
        });
        match planned {
            Plan::Follow => {
                state.hand.acted_in = None;
                // Not this replica's to report: the owner reports what it sees.
                state.hand.events.clear();
                let status = state.policy.status.clone().unwrap_or_default();
                state.follow_status(context, status, true);
            }
            Plan::Hold | Plan::Deleting => {}
            Plan::ReadFreshStatus => {
                if let Some(status) = Box::pin(state.read_fresh_status(context)).await {
                    fresh = Some(status);
                    continue;
                }
            }
            Plan::Act(act) => state.hand_over(context, *act),
        }
        return true;
    }
}

/// What a tick gathers from the stores for its plan, when this replica acts on the policy.
struct Gathered {
    failures: Failures,
    missing: Vec<String>,
    shared: Vec<sharing::Sharing>,
    autoscaler: Option<AutoscalerSync>,
    now: jiff::Timestamp,
}

impl PolicyState {
    /// Starts a discovery of the `keyPattern` entries in its own task, when there are some and
    /// the endpoint is known.
    fn start_discovery(&self, context: &Context) -> Option<JoinHandle<(Option<i64>, Option<Discovered>)>> {
        let patterns = self.patterns();
        if patterns.is_empty() || self.owner_publishes(context) {
            return None;
        }
        let endpoint = self.endpoint.resolved.as_ref()?.as_ref().ok()?.clone();
        let sampler = context.sampler.clone();
        let cap = self.policy.spec.discovery.max_queues as usize;
        let generation = self.policy.metadata.generation;
        Some(tokio::spawn(async move {
            (
                generation,
                sampler.discover_backend(&endpoint, &patterns, cap).await,
            )
        }))
    }

    /// The namespace and name of the policy.
    fn names(&self) -> (String, String) {
        (
            self.policy.namespace().unwrap_or_default(),
            self.policy.name_any(),
        )
    }

    /// Reads the queues (or says why the endpoint cannot be built), records the sample and
    /// hands it to the external metrics API.
    async fn sample(&mut self, context: &Context) -> Result<Sample, EndpointProblem> {
        self.refresh_endpoint(context).await;
        let sample = match self.endpoint.resolved.as_ref().expect("refreshed above") {
            Ok(endpoint) => Ok(context.sampler.sample_backend(endpoint, &self.spec.queues).await),
            Err(problem) => Err(problem.clone()),
        };
        if let Ok(sample) = &sample {
            self.spec.forecast = judgement::forecast(&mut self.spec.forecaster, &self.spec.rules, sample);
        }
        let (namespace, name) = self.names();
        record::record_sample(&context.published, &namespace, &name, &sample);
        record::publish_values(context, &self.policy, &sample, self.spec.forecast);
        match &sample {
            // A rotated password shows up as an authentication error: re-read the Secrets (paced).
            Ok(sample) if sample.unreachable.is_some() => self.endpoint.suspect = true,
            Ok(_) => self.endpoint.backoff.succeeded(),
            Err(_) => {}
        }
        sample
    }

    /// A follower takes the owner's status (the watch's copy, or one read afresh) as the
    /// circuit, so taking over resumes it exactly; it publishes that circuit with its values
    /// unless they came from the owner (`publish` false), whose circuit is newer than the status
    /// it wrote.
    fn follow_status(&mut self, context: &Context, status: BackpressurePolicyStatus, publish: bool) {
        self.circuit = status.circuit();
        let heartbeat = writes::heartbeat_of(context, &self.policy);
        self.hand
            .writes
            .follow(status, heartbeat, phase_of(&task_key(&self.policy)));
        let (namespace, name) = self.names();
        if publish {
            record::record_circuit(&context.published, &namespace, &name, &self.circuit);
        } else {
            record::record_circuit_series(&context.published, &namespace, &name, &self.circuit);
        }
    }

    /// What the stores show for the plan: only while this replica acts on the policy (a
    /// follower plans nothing from them).
    fn gather(&mut self, context: &Context, acting: Acting) -> Gathered {
        let acts = matches!(acting, Acting::Yes(_));
        Gathered {
            failures: self.hand.writes.failures(),
            missing: if acts {
                actuator::missing_targets(&context.stores, &self.policy)
            } else {
                Vec::new()
            },
            shared: if acts {
                sharing::shared_targets(&context.stores.policies, &self.policy)
            } else {
                Vec::new()
            },
            autoscaler: if acts { self.autoscaler_sync(context) } else { None },
            now: context.policies.clock.now(),
        }
    }

    /// Takes the plan's decision and hands what to write to the policy's writes (`act/writes.rs`).
    fn hand_over(&mut self, context: &Arc<Context>, act: plan::Act) {
        if let Some(status) = act.taken_over {
            self.follow_status(context, status, false);
        }
        self.hand.acted_in = Some(act.run);
        self.circuit = act.circuit;
        self.hand.events.clear();
        let (namespace, name) = self.names();
        record::record_circuit(&context.published, &namespace, &name, &self.circuit);
        if let Some(transition) = &act.decision.transition {
            record::record_transition(&context.published, &namespace, &name, transition);
        }
        self.hand.writes.submit(context, act.job);
    }

    /// The status the API server holds now (a consistent read past the watch, shared with every
    /// other policy taken over at once: `fresh_status.rs`), read before this replica starts to
    /// act on the policy. What the last tick mirrored, or the watch's copy, can be a tick older
    /// than the previous owner's last write: a circuit it opened a moment before the handover
    /// would be taken as Closed and opened again, a second transition with a new `openedSince`.
    /// `None`, and nothing acted on, when the read fails or the policy is gone.
    async fn read_fresh_status(&self, context: &Context) -> Option<BackpressurePolicyStatus> {
        let (namespace, name) = self.names();
        let api: kube::Api<BackpressurePolicy> = context.settings.api(context.kube.client.clone());
        match context.policies.fresh_status.read(&api, &namespace, &name).await {
            // Only the status is taken: the policy stays the watch's copy, shared with the
            // store (a copy of each policy taken over was 5-6 MiB after a restart at 5,000).
            Ok(Some(status)) => Some(status.unwrap_or_default()),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%namespace, policy = %name, %error, "reading the policies' status to take this one over failed; retrying next tick");
                None
            }
        }
    }

    /// Ends the task of a policy whose owner publishes its values: what it was writing is
    /// finished, and the series only the policy's owner publishes (the circuit's, the
    /// sampling's) leave this replica's `/metrics`; its values stay, as the owner sends them.
    async fn stand_by(mut self, context: &Context) {
        self.hand.writes.finish().await;
        let (namespace, name) = self.names();
        context.published.metrics.forget_policy(&namespace, &name);
        tracing::debug!(%namespace, policy = %name, "the owner publishes the policy's values; standing by");
    }

    /// Whether this replica leaves the policy to its owner this tick: it does not act on it, and
    /// holds values the owner sampled within three intervals (`peers.rs`).
    fn owner_publishes(&self, context: &Context) -> bool {
        let (namespace, name) = self.names();
        !context.owners.owns(&self.policy)
            && context
                .published
                .values
                .get(&namespace, &name)
                .is_some_and(|values| values.fresh_from_peer(Instant::now()))
    }

    /// The partition count of a Kafka policy's queues, once every one of them has been read
    /// (kept from the last full read otherwise): the cap on its workers' replicas.
    fn follow_partitions(&mut self, sample: &Sample) {
        let counts: Option<Vec<u32>> = sample
            .queues
            .iter()
            .map(|q| q.partitions.map(|p| p.count))
            .collect();
        if let Some(counts) = counts.filter(|c| !c.is_empty()) {
            self.scale.partition_cap = Some(counts.into_iter().fold(0, u32::saturating_add));
        }
    }

    /// Whether the pass must put the managed HPA back in place; compared again only when the
    /// policy or its HPA changed since it was last found in place.
    fn autoscaler_sync(&mut self, context: &Context) -> Option<AutoscalerSync> {
        let (namespace, _) = self.names();
        let hpa = context
            .stores
            .autoscalers
            .get(&namespace, &autoscaler::hpa_name(&self.policy));
        let partitions = self.scale.partition_cap;
        let seen = (
            self.policy.metadata.generation,
            hpa.as_ref().and_then(|hpa| hpa.resource_version()),
            partitions,
        );
        if self.scale.checked.as_ref() == Some(&seen) {
            return None;
        }
        if autoscaler::in_place(&self.policy, hpa.as_deref(), partitions) {
            self.scale.checked = Some(seen);
            return None;
        }
        Some(AutoscalerSync { partitions })
    }
}
