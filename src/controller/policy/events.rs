//! The events a tick publishes about its policy: transitions, a worse level, Prolonged, a reset,
//! missing targets, endpoint problems and a Redis that would delete jobs when full.

use crate::api::BackpressurePolicy;
use crate::api::status::{condition, reason};
use crate::circuit::{Cause, Circuit, CircuitRules, Decision, Level, State};
use crate::controller::act::actuator::Outcome;
use crate::sampler::Sample;
use kube::runtime::events::EventType;

/// An event to publish about a policy: its type, reason and note.
pub type PendingEvent = (EventType, &'static str, String);

/// A Warning when `JobsSafe` turns False (a Redis that deletes keys when full), with what to
/// set, and when `TargetsShared` turns True (another policy names a target too), naming it.
pub fn condition_events(
    written: &crate::api::BackpressurePolicyStatus,
    next: &crate::api::BackpressurePolicyStatus,
) -> Vec<PendingEvent> {
    let turned = |type_: &str, to: &str| {
        next.condition(type_)
            .filter(|c| c.status == to)
            .filter(|_| written.condition(type_).is_none_or(|c| c.status != to))
    };
    [
        (condition::JOBS_SAFE, "False", "EvictionPolicy"),
        (condition::TARGETS_SHARED, "True", "TargetShared"),
    ]
    .into_iter()
    .filter_map(|(type_, to, reason)| {
        turned(type_, to).map(|now| (EventType::Warning, reason, now.message.clone()))
    })
    .collect()
}

/// The events of a decision: a transition, a worse level, Prolonged and a reset, with the
/// numbers behind them (made when the tick decides, published after its writes).
pub fn decision_events(
    policy: &BackpressurePolicy,
    decision: &Decision,
    rules: &CircuitRules,
    circuit: &Circuit,
    targets: &Outcome,
    sample: Option<&Sample>,
) -> Vec<PendingEvent> {
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
        let (type_, reason) = match (&transition.to, &transition.cause) {
            (State::Open, Cause::CriticalForecast { .. }) => (EventType::Warning, reason::CRITICAL_FORECAST),
            (State::Open, _) => (EventType::Warning, "CircuitOpened"),
            (State::HalfOpen, _) => (EventType::Normal, "CircuitHalfOpened"),
            (State::Closed, _) => (EventType::Normal, "CircuitClosed"),
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
    if let (Some((_, to)), Some(sample)) = (decision.level_change, sample)
        && to != Level::Normal
    {
        let reason = if to == Level::Critical {
            "BacklogCritical"
        } else {
            "BacklogWarning"
        };
        events.push((EventType::Warning, reason, level_note(rules, sample, to)));
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
    events
}

/// What puts the policy at `level`: each signal at or above it, with its threshold.
fn level_note(rules: &CircuitRules, sample: &Sample, level: Level) -> String {
    let name = if level == Level::Critical {
        "critical"
    } else {
        "warning"
    };
    let pending = sample.pending();
    let depth = rules.depth.and_then(|bands| {
        let threshold = if level == Level::Critical {
            bands.critical
        } else {
            bands.warning
        };
        (pending >= threshold).then(|| format!("pending {pending} >= {name} {threshold}"))
    });
    let latency = rules.latency.zip(sample.latency()).and_then(|(bands, latency)| {
        let threshold = if level == Level::Critical {
            bands.critical
        } else {
            bands.warning
        };
        (latency >= threshold).then(|| format!("latency {latency:.1?} >= {name} {threshold:?}"))
    });
    [depth, latency]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}
