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
#[derive(Debug)]
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
#[derive(Debug)]
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
#[derive(Debug)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::condition;
    use crate::controller::cache::indexed_store::IndexedStore;
    use crate::controller::cache::sharing::{self, KeptPolicy};
    use crate::sampler::QueueReading;
    use jiff::{SignedDuration, Timestamp};
    use kube::runtime::events::EventType;
    use serde_json::{Value, json};

    /// 2030-01-01T00:00:00Z, the table's now.
    fn now() -> Timestamp {
        Timestamp::from_second(1_893_456_000).unwrap()
    }

    /// A sample of one list queue holding `depth` jobs, taken now.
    fn sample(depth: u64) -> Sample {
        Sample {
            at: now(),
            queues: vec![QueueReading {
                name: "q".into(),
                weight: 1,
                depth: Ok(depth),
                latency: None,
                partitions: None,
            }],
            round_trips: 1,
            unreachable: None,
            memory: None,
            duration: std::time::Duration::from_millis(1),
        }
    }

    /// Everything a tick gathers, owned, starting from the fixture policy (thresholds 20/50/5,
    /// Open at least 30 s) with `patch`: this replica acting in run 1 as it did at its last
    /// tick, a Closed circuit, nothing written, an empty queue.
    struct Case {
        policy: Arc<BackpressurePolicy>,
        rules: CircuitRules,
        acting: Acting,
        acted_in: Option<u64>,
        fresh: Option<BackpressurePolicyStatus>,
        circuit: Circuit,
        written: BackpressurePolicyStatus,
        sample: Result<Sample, EndpointProblem>,
        failures: Failures,
        missing: Vec<String>,
        shared: Vec<Sharing>,
        autoscaler: Option<AutoscalerSync>,
        pending: Vec<PendingEvent>,
    }

    impl Case {
        fn new(patch: Value) -> Self {
            let policy = crate::fixtures::policy_with(patch);
            Self {
                rules: policy.spec.circuit_rules(),
                policy: Arc::new(policy),
                acting: Acting::Yes(1),
                acted_in: Some(1),
                fresh: None,
                circuit: Circuit::default(),
                written: BackpressurePolicyStatus::default(),
                sample: Ok(sample(0)),
                failures: Failures::default(),
                missing: Vec::new(),
                shared: Vec::new(),
                autoscaler: None,
                pending: Vec::new(),
            }
        }

        fn plan(&self) -> Plan {
            plan(Facts {
                policy: &self.policy,
                rules: &self.rules,
                acting: self.acting,
                acted_in: self.acted_in,
                fresh: self.fresh.as_ref(),
                circuit: &self.circuit,
                written: &self.written,
                sample: self.sample.as_ref(),
                forecast: None,
                failures: &self.failures,
                missing: self.missing.clone(),
                shared: &self.shared,
                autoscaler: self.autoscaler,
                partition_cap: None,
                discovery: None,
                pending_events: self.pending.clone(),
                now: now(),
            })
        }

        fn act(&self) -> Act {
            match self.plan() {
                Plan::Act(act) => *act,
                other => panic!("expected to act, planned {other:?}"),
            }
        }
    }

    fn reasons(job: &Job) -> Vec<&'static str> {
        job.events.iter().map(|(_, reason, _)| *reason).collect()
    }

    fn condition_of<'a>(job: &'a Job, type_: &str) -> (&'a str, &'a str, &'a str) {
        let found = job
            .next
            .condition(type_)
            .unwrap_or_else(|| panic!("no {type_} condition"));
        (&found.status, &found.reason, &found.message)
    }

    /// A status saying the circuit opened `ago` before now, after one transition.
    fn opened(ago: SignedDuration) -> BackpressurePolicyStatus {
        let mut circuit = Circuit::default();
        let rules = crate::fixtures::rules(20, 50, 5);
        let observation = sample(60).observation(&rules);
        circuit.step(&rules, now() - ago, observation, None);
        assert_eq!(circuit.state, State::Open);
        let mut status = BackpressurePolicyStatus::default();
        status.record(&circuit, now() - ago);
        status
    }

    #[test]
    fn a_policy_another_replica_acts_on_is_followed() {
        let mut case = Case::new(json!({}));
        case.acting = Acting::No;
        assert!(matches!(case.plan(), Plan::Follow));
    }

    #[test]
    fn acting_paused_within_the_run_that_acted_holds_its_own_circuit() {
        let mut case = Case::new(json!({}));
        (case.acting, case.acted_in) = (Acting::Paused(3), Some(3));
        assert!(matches!(case.plan(), Plan::Hold));
        // Paused in a run it never acted in: someone else may have acted meanwhile.
        (case.acting, case.acted_in) = (Acting::Paused(4), Some(3));
        assert!(matches!(case.plan(), Plan::Follow));
    }

    #[test]
    fn taking_a_policy_over_first_reads_its_status_afresh() {
        let mut case = Case::new(json!({}));
        (case.acting, case.acted_in) = (Acting::Yes(2), Some(1));
        assert!(matches!(case.plan(), Plan::ReadFreshStatus));
        case.acted_in = None;
        assert!(matches!(case.plan(), Plan::ReadFreshStatus));
    }

    /// The task's own circuit is a tick behind the previous owner's last write (Closed): taken
    /// over, the circuit is the fresh status's (Open 5 s ago), not opened a second time.
    #[test]
    fn a_takeover_resumes_from_the_fresh_status_not_the_tasks_circuit() {
        let mut case = Case::new(json!({}));
        (case.acting, case.acted_in) = (Acting::Yes(2), Some(1));
        case.fresh = Some(opened(SignedDuration::from_secs(5)));
        case.sample = Ok(sample(60));
        let act = case.act();
        assert_eq!((act.run, act.circuit.state), (2, State::Open));
        assert_eq!(act.circuit.transitions, 1, "no second transition");
        assert_eq!(
            act.circuit.opened_since,
            Some(now() - SignedDuration::from_secs(5))
        );
        assert!(act.decision.transition.is_none());
        assert!(
            !reasons(&act.job).contains(&"CircuitOpened"),
            "{:?}",
            reasons(&act.job)
        );
        assert!(act.taken_over.is_some());
    }

    #[test]
    fn a_backlog_over_critical_opens_the_circuit_and_says_so_after_acting() {
        let mut case = Case::new(json!({}));
        case.sample = Ok(sample(60));
        let act = case.act();
        assert_eq!(
            (act.job.decided, act.job.next.state),
            (State::Open, Some(State::Open))
        );
        assert!(act.taken_over.is_none());
        let opened = act
            .job
            .events
            .iter()
            .find(|(_, reason, _)| *reason == "CircuitOpened")
            .expect("a CircuitOpened event");
        assert_eq!(opened.0, EventType::Warning);
        assert!(opened.2.contains("holding back"), "{}", opened.2);
    }

    #[test]
    fn dry_run_decides_and_reports_but_holds_nothing_back() {
        let mut case = Case::new(json!({"spec": {"dryRun": true}}));
        case.sample = Ok(sample(60));
        let act = case.act();
        assert_eq!(act.job.decided, State::Open);
        assert_eq!(condition_of(&act.job, condition::READY).1, "DryRun");
        let opened = act
            .job
            .events
            .iter()
            .find(|(_, r, _)| *r == "CircuitOpened")
            .unwrap();
        assert!(opened.2.contains("would hold back"), "{}", opened.2);
    }

    #[test]
    fn a_sample_that_failed_keeps_the_state_and_says_what_failed() {
        let mut case = Case::new(json!({}));
        case.circuit = opened(SignedDuration::from_secs(5)).circuit();
        case.written = opened(SignedDuration::from_secs(5));
        case.sample = Err(EndpointProblem {
            reason: "SecretNotFound",
            message: "Secret jobs/redis not found: create it".into(),
        });
        let act = case.act();
        assert_eq!(act.job.decided, State::Open, "one failed sample holds the state");
        let (status, reason, message) = condition_of(&act.job, condition::BACKEND_REACHABLE);
        assert_eq!((status, reason), ("False", "SecretNotFound"));
        assert!(message.contains("create it"), "{message}");
    }

    #[test]
    fn a_missing_target_makes_the_policy_not_ready_naming_it() {
        let mut case = Case::new(json!({}));
        case.missing = vec!["Deployment jobs/api".into()];
        let act = case.act();
        let (status, reason, message) = condition_of(&act.job, condition::READY);
        assert_eq!((status, reason), ("False", "TargetNotFound"));
        assert!(message.contains("Deployment jobs/api"), "{message}");
    }

    /// The HPA is applied by the fenced pass after the decision, never awaited before it.
    #[test]
    fn hpa_drift_is_handed_to_the_pass_and_a_failed_apply_shows_in_ready() {
        let mut case = Case::new(json!({}));
        assert_eq!(case.act().job.autoscaler, None);
        case.autoscaler = Some(AutoscalerSync { partitions: Some(6) });
        assert_eq!(
            case.act().job.autoscaler,
            Some(AutoscalerSync { partitions: Some(6) })
        );
        case.failures.autoscaler = Some("horizontalpodautoscalers.autoscaling is forbidden".into());
        let act = case.act();
        let (status, reason, _) = condition_of(&act.job, condition::READY);
        assert_eq!((status, reason), ("False", "ScaleTargetFailed"));
    }

    #[test]
    fn a_failed_target_write_of_the_last_pass_makes_the_policy_not_ready() {
        let mut case = Case::new(json!({}));
        case.failures.targets = vec!["pod jobs/api-1 condition: forbidden".into()];
        let act = case.act();
        assert_eq!(condition_of(&act.job, condition::READY).1, "TargetUpdateFailed");
    }

    #[test]
    fn a_shared_target_is_reported_with_one_event_when_it_starts() {
        let mut case = Case::new(json!({"metadata": {"name": "b"}}));
        let other = crate::fixtures::policy_with(json!({"metadata": {"name": "a"}}));
        let store = IndexedStore::from_objects([KeptPolicy::from(&other), KeptPolicy::from(&*case.policy)]);
        case.shared = sharing::shared_targets(&store, &case.policy);
        let act = case.act();
        let (status, _, message) = condition_of(&act.job, condition::TARGETS_SHARED);
        assert_eq!(status, "True");
        assert!(message.contains("policy a writes its marks"), "{message}");
        assert!(reasons(&act.job).contains(&"TargetShared"));
        // Already reported: no second event.
        case.written = act.job.next.clone();
        assert!(!reasons(&case.act().job).contains(&"TargetShared"));
    }

    #[test]
    fn events_from_between_ticks_ride_with_the_job() {
        let mut case = Case::new(json!({}));
        case.pending = vec![(EventType::Warning, "DiscoveryIncomplete", "capped at 100".into())];
        assert!(reasons(&case.act().job).contains(&"DiscoveryIncomplete"));
    }

    #[test]
    fn a_policy_being_deleted_is_left_to_the_finalizer() {
        let case = Case::new(
            json!({"metadata": {"deletionTimestamp": "2030-01-01T00:00:00Z", "finalizers": ["levee.dev/release-targets"]}}),
        );
        assert!(matches!(case.plan(), Plan::Deleting));
    }

    /// A sample of 2,000 queues each with a 10 KB error would be a status etcd refuses; the plan
    /// bounds it (500 queues, errors cut to 256 characters) before the pass sends it.
    #[test]
    fn a_status_too_large_is_bounded_before_it_is_handed_over() {
        let mut case = Case::new(json!({}));
        let mut huge = sample(0);
        huge.queues = (0..2000)
            .map(|i| QueueReading {
                name: format!("queue-{i}"),
                weight: 1,
                depth: Err("x".repeat(10_000)),
                latency: None,
                partitions: None,
            })
            .collect();
        case.sample = Ok(huge);
        let act = case.act();
        assert_eq!(act.job.next.queues.len(), 500);
        assert_eq!(act.job.next.queues_omitted, Some(1500));
        let bytes = serde_json::to_vec(&act.job.next).unwrap().len();
        assert!(bytes < 512 * 1024, "{bytes} bytes");
    }
}
