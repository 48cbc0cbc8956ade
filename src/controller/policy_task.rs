//! One task per policy: every `sampleInterval` it samples the queues, steps the circuit and, on
//! the leader, saves the decision in status and only then acts on the targets: producers are
//! never held on a decision that status lacks, so whoever leads next resumes exactly what
//! producers see. A spec change re-reads Secrets and the interval; the circuit carries over.
//! Followers mirror the circuit from status instead of stepping it.

use super::Context;
use super::actuator::{self, Outcome};
use super::autoscaler;
use super::backoff::Backoff;
use super::marks::ANNOTATION_RESET;
use super::secrets::{self, EndpointProblem, resolve_endpoint};
use super::status_writer::{TickReport, next_status, worth_writing, write};
use crate::api::{BackpressurePolicy, BackpressurePolicyStatus};
use crate::circuit::{Circuit, CircuitRules, Decision, Level, Observation, State};
use crate::metrics_api::values::PolicyValues;
use crate::sampler::{Endpoint, Sample};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Running {
    latest: watch::Sender<Arc<BackpressurePolicy>>,
    handle: JoinHandle<()>,
}

/// The running policy tasks, by policy UID.
#[derive(Default)]
pub struct PolicyTasks {
    running: Mutex<HashMap<String, Running>>,
}

impl PolicyTasks {
    /// Starts the policy's task, or hands the running one the latest object.
    pub fn ensure(&self, context: &Arc<Context>, policy: Arc<BackpressurePolicy>) {
        let uid = policy.uid().unwrap_or_else(|| policy.name_any());
        let mut running = self.running.lock().expect("task map lock");
        if let Some(task) = running.get(&uid).filter(|task| !task.handle.is_finished()) {
            task.latest.send_replace(policy);
            return;
        }
        let (latest, receiver) = watch::channel(policy);
        let handle = tokio::spawn(run(context.clone(), receiver));
        running.insert(uid, Running { latest, handle });
    }

    /// Stops the policy's task.
    pub fn stop(&self, policy: &BackpressurePolicy) {
        let uid = policy.uid().unwrap_or_else(|| policy.name_any());
        if let Some(task) = self.running.lock().expect("task map lock").remove(&uid) {
            task.handle.abort();
        }
    }

    /// Stops every task (shutdown).
    pub fn stop_all(&self) {
        for (_, task) in self.running.lock().expect("task map lock").drain() {
            task.handle.abort();
        }
    }
}

/// What a task keeps between ticks.
struct PolicyState {
    policy: Arc<BackpressurePolicy>,
    rules: CircuitRules,
    circuit: Circuit,
    endpoint: Option<Result<Endpoint, EndpointProblem>>,
    /// Redis refused the endpoint (a rotated password?): rebuild it from the Secrets when the
    /// backoff allows.
    endpoint_suspect: bool,
    /// Paces re-reads of the Secrets while they are missing or Redis refuses them.
    secret_backoff: Backoff,
    /// The endpoint problem last reported with an event, so each is reported once.
    reported_problem: Option<&'static str>,
    /// The versions of the Secrets the endpoint was built from (a change rebuilds it).
    secret_versions: Vec<Option<String>>,
    written: BackpressurePolicyStatus,
    last_write: Option<Instant>,
    /// Failed writes of the last pass over the targets, reported in the next status.
    target_errors: Vec<String>,
    /// The policy generation and HPA resource version last found in place (nothing to compare
    /// again until one of them changes).
    autoscaler_checked: Option<(Option<i64>, Option<String>)>,
    /// The last failure to apply the managed HPA, shown in the Ready condition until it works.
    autoscaler_error: Option<String>,
}

impl PolicyState {
    fn new(policy: Arc<BackpressurePolicy>) -> Self {
        let status = policy.status.clone().unwrap_or_default();
        Self {
            rules: rules_of(&policy),
            circuit: status.circuit(),
            endpoint: None,
            endpoint_suspect: false,
            secret_backoff: Backoff::default(),
            reported_problem: None,
            secret_versions: Vec::new(),
            written: status,
            last_write: None,
            target_errors: Vec::new(),
            autoscaler_checked: None,
            autoscaler_error: None,
            policy,
        }
    }

    /// Takes a newer object; a new generation means new rules and a new endpoint.
    fn update(&mut self, policy: Arc<BackpressurePolicy>) -> bool {
        let respecified = policy.metadata.generation != self.policy.metadata.generation;
        if respecified {
            self.rules = rules_of(&policy);
            self.endpoint = None;
            self.endpoint_suspect = false;
            self.secret_backoff.succeeded();
        }
        self.policy = policy;
        respecified
    }

    /// Builds the endpoint from the Secrets when there is none, or when the last one failed and
    /// the backoff allows another read.
    async fn refresh_endpoint(&mut self, context: &Context) {
        let now = Instant::now();
        let versions = secrets::versions(&context.stores.secrets, &self.policy);
        // A Secret created, labelled, rotated or deleted: rebuild at once.
        let rotated = versions != self.secret_versions;
        let due = rotated
            || match &self.endpoint {
                None => true,
                Some(Err(_)) => self.secret_backoff.ready(now),
                Some(Ok(_)) => self.endpoint_suspect && self.secret_backoff.ready(now),
            };
        if !due {
            return;
        }
        if rotated {
            self.secret_backoff.succeeded();
            self.secret_versions = versions;
        }
        let resolved = resolve_endpoint(&context.client, &context.stores.secrets, &self.policy).await;
        if resolved.is_err() || self.endpoint_suspect {
            self.secret_backoff.failed(now);
        }
        self.endpoint_suspect = false;
        match &resolved {
            Ok(_) => self.reported_problem = None,
            Err(problem) if context.is_leader() && self.reported_problem != Some(problem.reason) => {
                self.reported_problem = Some(problem.reason);
                publish(
                    context,
                    &self.policy,
                    EventType::Warning,
                    problem.reason,
                    problem.message.clone(),
                )
                .await;
            }
            Err(_) => {}
        }
        self.endpoint = Some(resolved);
    }
}

fn rules_of(policy: &BackpressurePolicy) -> CircuitRules {
    CircuitRules::new(
        policy.spec.thresholds,
        &policy.spec.circuit,
        policy.spec.on_sample_failure,
    )
}

fn ticker(policy: &BackpressurePolicy) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(policy.spec.sample_interval.into());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

async fn run(context: Arc<Context>, mut latest: watch::Receiver<Arc<BackpressurePolicy>>) {
    let mut state = PolicyState::new(latest.borrow_and_update().clone());
    let mut interval = ticker(&state.policy);
    loop {
        tokio::select! {
            _ = interval.tick() => tick(&context, &mut state).await,
            changed = latest.changed() => {
                if changed.is_err() {
                    return;
                }
                let policy = latest.borrow_and_update().clone();
                if state.update(policy) {
                    interval = ticker(&state.policy);
                }
            }
        }
    }
}

async fn tick(context: &Context, state: &mut PolicyState) {
    let policy = state.policy.clone();
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    state.refresh_endpoint(context).await;
    let sample = match state.endpoint.as_ref().expect("refreshed above") {
        Ok(endpoint) => Ok(context.sampler.sample(endpoint, &policy.spec.queues).await),
        Err(problem) => Err(problem.clone()),
    };
    record_sample(context, &namespace, &name, &sample);
    publish_values(context, &policy, &sample);
    match &sample {
        // A rotated password shows up as an authentication error: re-read the Secrets (paced).
        Ok(sample) if sample.unreachable.is_some() => state.endpoint_suspect = true,
        Ok(_) => state.secret_backoff.succeeded(),
        Err(_) => {}
    }
    if !context.is_leader() {
        // Follow the leader: its status is the circuit, so taking over resumes it exactly.
        let status = policy.status.clone().unwrap_or_default();
        state.circuit = status.circuit();
        state.written = status;
        state.last_write = None;
        record_circuit(context, &namespace, &name, &state.circuit);
        return;
    }
    if policy.meta().deletion_timestamp.is_some() {
        return;
    }
    let hpa = context
        .stores
        .autoscalers
        .get(&ObjectRef::new(&autoscaler::hpa_name(&policy)).within(&namespace));
    let seen = (
        policy.metadata.generation,
        hpa.as_ref().and_then(|hpa| hpa.resource_version()),
    );
    // Compared again only when the policy or its HPA changed since it was last found in place.
    if state.autoscaler_checked.as_ref() != Some(&seen) {
        if autoscaler::in_place(&policy, hpa.as_deref()) {
            state.autoscaler_checked = Some(seen);
        } else {
            match autoscaler::sync(context, &policy).await {
                Ok(()) => state.autoscaler_error = None,
                Err(error) => {
                    tracing::warn!(%namespace, policy = %name, %error, "managing the HPA failed; retrying");
                    state.autoscaler_error = Some(error.to_string());
                }
            }
        }
    }
    let now = context.clock.now();
    let observation = sample
        .as_ref()
        .map_or(Observation::SampleFailed, Sample::observation);
    let reset = policy.annotations().get(ANNOTATION_RESET).map(String::as_str);
    let decision = state.circuit.step(&state.rules, now, observation, reset);
    record_circuit(context, &namespace, &name, &state.circuit);
    if let Some(transition) = &decision.transition {
        let labels = [
            namespace.as_str(),
            name.as_str(),
            &transition.from.to_string(),
            &transition.to.to_string(),
        ];
        context.metrics.transitions.with_label_values(&labels).inc();
    }
    let targets = Outcome {
        missing: actuator::missing_targets(context, &policy),
        errors: state.target_errors.clone(),
        ..Outcome::default()
    };
    publish_events(
        context,
        &policy,
        &decision,
        &state.rules,
        &state.circuit,
        &targets,
        sample.as_ref().ok(),
    )
    .await;
    let report = TickReport {
        circuit: &state.circuit,
        sample: sample.as_ref(),
        targets: &targets,
        autoscaler_error: state.autoscaler_error.as_deref(),
        dry_run: policy.spec.dry_run,
        now,
    };
    let next = next_status(&policy, &state.written, &report);
    let heartbeat_due = state
        .last_write
        .is_none_or(|at| at.elapsed() >= context.settings.status_heartbeat);
    if heartbeat_due || worth_writing(&state.written, &next) {
        match write(context, &policy, &next).await {
            Ok(()) => {
                state.written = next;
                state.last_write = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(%namespace, policy = %name, %error, "writing status failed; retrying next tick")
            }
        }
    }
    // Producers follow the decision status holds: one that could not be saved waits for the
    // next tick rather than holding pods back on a state the next leader would not know.
    let saved = state.written.state.unwrap_or_default();
    if saved != state.circuit.state {
        tracing::warn!(%namespace, policy = %name, decided = %state.circuit.state, %saved, "the decision is not saved in status yet; producers keep the saved one");
    }
    let released = policy.spec.dry_run.then_some("DryRun");
    let acted = actuator::act(context, &policy, saved, &state.rules, released).await;
    state.target_errors = acted.errors;
    context
        .metrics
        .throttled_targets
        .with_label_values(&[&namespace, &name])
        .set(acted.throttled as i64);
}

fn record_sample(context: &Context, namespace: &str, name: &str, sample: &Result<Sample, EndpointProblem>) {
    let metrics = &context.metrics;
    match sample {
        Ok(sample) => {
            metrics
                .sample_duration
                .with_label_values(&[namespace, name])
                .observe(sample.duration.as_secs_f64());
            metrics
                .pending
                .with_label_values(&[namespace, name])
                .set(sample.pending() as i64);
            for queue in &sample.queues {
                if let Ok(depth) = queue.depth {
                    metrics
                        .queue_depth
                        .with_label_values(&[namespace, name, &queue.name])
                        .set(depth as i64);
                }
            }
            if sample.failed() {
                metrics
                    .sample_failures
                    .with_label_values(&[namespace, name])
                    .inc();
            }
        }
        Err(_) => metrics
            .sample_failures
            .with_label_values(&[namespace, name])
            .inc(),
    }
}

/// Hands the sample to the external metrics API (every replica serves metrics).
fn publish_values(context: &Context, policy: &BackpressurePolicy, sample: &Result<Sample, EndpointProblem>) {
    let (pending, queues, sampled_at, failed) = match sample {
        Ok(sample) => (
            sample.pending(),
            sample
                .queues
                .iter()
                .map(|q| (q.name.clone(), q.depth.as_ref().ok().copied()))
                .collect(),
            sample.at,
            sample.failed(),
        ),
        Err(_) => (0, Vec::new(), Timestamp::now(), true),
    };
    context.values.publish(PolicyValues {
        namespace: policy.namespace().unwrap_or_default(),
        policy: policy.name_any(),
        pending,
        queues,
        sampled_at,
        sampled: Instant::now(),
        failed,
        interval: policy.spec.sample_interval.into(),
    });
}

fn record_circuit(context: &Context, namespace: &str, name: &str, circuit: &Circuit) {
    let state = match circuit.state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    };
    let level = match circuit.level {
        Level::Normal => 0,
        Level::Warning => 1,
        Level::Critical => 2,
    };
    context
        .metrics
        .circuit_state
        .with_label_values(&[namespace, name])
        .set(state);
    context
        .metrics
        .level
        .with_label_values(&[namespace, name])
        .set(level);
    context
        .metrics
        .prolonged
        .with_label_values(&[namespace, name])
        .set(i64::from(circuit.prolonged));
}

/// Events for a transition, a worse level, Prolonged and a reset, with the numbers behind them.
async fn publish_events(
    context: &Context,
    policy: &BackpressurePolicy,
    decision: &Decision,
    rules: &CircuitRules,
    circuit: &Circuit,
    targets: &Outcome,
    sample: Option<&Sample>,
) {
    let mut events = Vec::new();
    let dry = if policy.spec.dry_run { "dryRun: " } else { "" };
    if let Some(transition) = &decision.transition {
        let held = policy
            .spec
            .targets
            .iter()
            .filter(|t| !rules.accepts(transition.to, t.priority))
            .count();
        let verb = if policy.spec.dry_run {
            "would hold back"
        } else {
            "holding back"
        };
        let (type_, reason) = match transition.to {
            State::Open => (EventType::Warning, "CircuitOpened"),
            State::HalfOpen => (EventType::Normal, "CircuitHalfOpened"),
            State::Closed => (EventType::Normal, "CircuitClosed"),
        };
        let note = format!(
            "{dry}{} -> {}: {}; {verb} {held} of {} targets",
            transition.from,
            transition.to,
            transition.cause,
            policy.spec.targets.len()
        );
        events.push((type_, reason, note));
    }
    if let (Some((_, to)), Some(sample)) = (decision.level_change, sample) {
        let pending = sample.pending();
        let thresholds = rules.thresholds;
        match to {
            Level::Warning => events.push((
                EventType::Warning,
                "BacklogWarning",
                format!("pending {pending} >= warning {}", thresholds.warning),
            )),
            Level::Critical => events.push((
                EventType::Warning,
                "BacklogCritical",
                format!("pending {pending} >= critical {}", thresholds.critical),
            )),
            Level::Normal => {}
        }
    }
    if decision.prolonged_started {
        let since = circuit
            .throttling_since
            .map(|t| t.to_string())
            .unwrap_or_default();
        events.push((
            EventType::Warning,
            "CircuitProlonged",
            format!("the circuit has not been Closed since {since} (circuit.alertAfter)"),
        ));
    }
    if decision.reset_applied {
        let value = circuit.last_reset.clone().unwrap_or_default();
        events.push((
            EventType::Normal,
            "CircuitReset",
            format!("levee.dev/reset={value}: the circuit is Closed"),
        ));
    }
    if !targets.missing.is_empty() && decision.transition.is_some() {
        events.push((
            EventType::Warning,
            "TargetNotFound",
            format!("{} not found", targets.missing.join(", ")),
        ));
    }
    for (type_, reason, note) in events {
        publish(context, policy, type_, reason, note).await;
    }
}

/// Publishes one event about the policy.
async fn publish(
    context: &Context,
    policy: &BackpressurePolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let reference: ObjectReference = policy.object_ref(&());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Decide".into(),
        secondary: None,
    };
    if let Err(error) = context.recorder.publish(&event, &reference).await {
        tracing::warn!(%error, reason, "publishing an event failed");
    } else {
        context.metrics.api_writes.with_label_values(&["event"]).inc();
    }
}
