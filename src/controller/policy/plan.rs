//! What a tick does, decided without I/O. The tick gathers (the sample, whether this replica acts
//! on the policy, the status read afresh on a takeover, what the stores show) and hands the
//! facts to [`plan`], which answers: follow the owner, hold (acting paused), read the status
//! afresh first, nothing (the policy is being deleted), or act: the circuit stepped, and the
//! [`Job`] the fenced pass writes (the status, the decided state, every event, the HPA to apply).
//! Nothing here awaits, reads a clock or a store, or writes: the table tests below are the
//! tick's rules.

use crate::api::{BackpressurePolicy, BackpressurePolicyStatus, DiscoveryStatus};
use crate::circuit::{Circuit, CircuitRules, Decision, State};
use crate::controller::act::actuator::Outcome;
use crate::controller::cache::secrets::EndpointProblem;
use crate::controller::cache::sharing::Sharing;
use crate::controller::ownership::shards::Acting;
use crate::controller::policy::events::{self, PendingEvent};
use crate::controller::policy::judgement;
use crate::controller::policy::status::{TickReport, next_status};
use crate::forecast::Forecast;
use crate::sampler::Sample;
use std::sync::Arc;

/// What one tick hands over to be written.
pub struct Job {
    pub policy: Arc<BackpressurePolicy>,
    pub rules: CircuitRules,
    /// The status the tick computed.
    pub next: BackpressurePolicyStatus,
    /// The state the circuit decided (status may not hold it yet).
    pub decided: State,
    pub events: Vec<PendingEvent>,
    /// The managed HPA is not as the policy says: apply it, capped at this partition count.
    pub autoscaler: Option<AutoscalerSync>,
}

/// An apply of the policy's managed HPA (`autoscaler::sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoscalerSync {
    pub partitions: Option<u32>,
}

/// What the last pass failed to write, reported in the next tick's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// Failed writes over the targets, in words.
    pub targets: Vec<String>,
    /// Why the managed HPA could not be applied, until it is.
    pub autoscaler: Option<String>,
}

/// What a tick gathered.
pub struct Facts<'a> {
    pub policy: &'a Arc<BackpressurePolicy>,
    pub rules: &'a CircuitRules,
    /// Whether this replica acts on the policy now.
    pub acting: Acting,
    /// The run of holding its Lease in which it acted at its last tick (`None`: it did not).
    pub acted_in: Option<u64>,
    /// The status read afresh past the watch, when gathered for a takeover.
    pub fresh: Option<&'a BackpressurePolicyStatus>,
    /// The task's circuit as its last tick left it.
    pub circuit: &'a Circuit,
    /// The status last written (or taken over).
    pub written: &'a BackpressurePolicyStatus,
    pub sample: Result<&'a Sample, &'a EndpointProblem>,
    pub forecast: Option<Forecast>,
    pub failures: &'a Failures,
    /// The targets that do not exist (`Kind namespace/name`).
    pub missing: Vec<String>,
    /// The targets other policies name too.
    pub shared: &'a [Sharing],
    /// The managed HPA differs from what the policy asks.
    pub autoscaler: Option<AutoscalerSync>,
    pub partition_cap: Option<u32>,
    pub discovery: Option<&'a DiscoveryStatus>,
    /// Events of what happened since the last tick (an endpoint problem, a discovery).
    pub pending_events: Vec<PendingEvent>,
    pub now: jiff::Timestamp,
}

/// What the tick does.
pub enum Plan {
    /// Another replica acts on the policy, or this one's acting paused in a run it did not act
    /// in: mirror the watch's status as the circuit, write nothing, drop what was pending.
    Follow,
    /// Acting paused within the run in which it acted: its own circuit stands (nobody else can
    /// have acted meanwhile); write nothing.
    Hold,
    /// It acts in a run it did not act in before (a handover, a start, a new run): the status
    /// must first be read afresh, past the watch.
    ReadFreshStatus,
    /// The policy is being deleted: the finalizer releases its producers; nothing to decide.
    Deleting,
    /// Act in `run`: the circuit stepped, and what the pass writes.
    Act(Box<Act>),
}

/// The acting part of a [`Plan`].
pub struct Act {
    pub run: u64,
    /// The status taken over (the fresh one), which the writes take as written.
    pub taken_over: Option<BackpressurePolicyStatus>,
    pub circuit: Circuit,
    pub decision: Decision,
    pub job: Job,
}

/// The tick's plan from what it gathered.
pub fn plan(facts: Facts<'_>) -> Plan {
    let run = match facts.acting {
        Acting::Yes(run) => run,
        Acting::Paused(run) if facts.acted_in == Some(run) => return Plan::Hold,
        Acting::Paused(_) | Acting::No => return Plan::Follow,
    };
    if facts.policy.metadata.deletion_timestamp.is_some() {
        return Plan::Deleting;
    }
    let taken_over = if facts.acted_in == Some(run) {
        None
    } else {
        match facts.fresh {
            Some(fresh) => Some(fresh.clone()),
            None => return Plan::ReadFreshStatus,
        }
    };
    let (mut circuit, written) = match &taken_over {
        Some(status) => (status.circuit(), status),
        None => (facts.circuit.clone(), facts.written),
    };
    let policy = facts.policy;
    let decision = judgement::step(
        &mut circuit,
        facts.rules,
        policy,
        facts.now,
        facts.sample.ok(),
        facts.forecast,
    );
    let targets = Outcome {
        missing: facts.missing,
        errors: facts.failures.targets.clone(),
        ..Outcome::default()
    };
    let report = TickReport {
        circuit: &circuit,
        sample: facts.sample,
        targets: &targets,
        autoscaler_error: facts.failures.autoscaler.as_deref(),
        partition_cap: facts.partition_cap,
        forecast: facts.forecast,
        discovery: facts.discovery,
        dry_run: policy.spec.dry_run,
        shared: facts.shared,
        now: facts.now,
    };
    let next = next_status(policy, written, &report);
    let mut events = events::decision_events(
        policy,
        &decision,
        facts.rules,
        &circuit,
        &targets,
        facts.sample.ok(),
    );
    events.extend(events::condition_events(written, &next));
    events.extend(facts.pending_events);
    let job = Job {
        policy: policy.clone(),
        rules: facts.rules.clone(),
        next,
        decided: circuit.state,
        events,
        autoscaler: facts.autoscaler,
    };
    Plan::Act(Box::new(Act {
        run,
        taken_over,
        circuit,
        decision,
        job,
    }))
}
