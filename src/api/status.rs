//! The circuit's memory in `status`: written after every decision and read back on start, so a
//! restarted operator resumes where it was (no flap, the dwell and `Prolonged` keep counting).
//!
//! Where each piece lives: state, level, `openedSince`, `lastTransitionTime`, `transitions`,
//! `lastReset` in their own fields; "not Closed since" in the `Throttling` condition's
//! `lastTransitionTime`, and an opening on the forecast in its reason (`CriticalForecast`);
//! `Prolonged` in its condition. The failed-sample count is not persisted: a
//! restart starts counting failed ticks from zero.

use super::BackpressurePolicyStatus;
use crate::circuit::{Circuit, State};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Reasons shared by conditions and events.
/// A latency in seconds as status and `levee sample` show it: millisecond precision.
pub fn latency_seconds(age: std::time::Duration) -> f64 {
    (age.as_secs_f64() * 1000.0).round() / 1000.0
}

pub mod reason {
    /// The circuit opened on the forecast (`circuit.openAhead`), before the backlog reached
    /// critical.
    pub const CRITICAL_FORECAST: &str = "CriticalForecast";
}

/// Condition types levee sets.
pub mod condition {
    pub const READY: &str = "Ready";
    /// Whether the policy's backend (Redis, NATS or Kafka) answered the last sample.
    pub const BACKEND_REACHABLE: &str = "BackendReachable";
    /// `BackendReachable`'s name from before there were other backends: still written, the same,
    /// on Redis policies, for the alerts and `kubectl wait`s that name it.
    pub const REDIS_REACHABLE: &str = "RedisReachable";
    pub const THROTTLING: &str = "Throttling";
    pub const PROLONGED: &str = "Prolonged";
    /// Under spec.kafka with a scaleTarget: whether the HPA's maxReplicas is capped at the
    /// partition count.
    pub const SCALE_CAPPED: &str = "ScaleCapped";
    /// Redis policies: whether a full Redis would refuse writes (`noeviction`, or no
    /// `maxmemory`) rather than delete keys, queued jobs among them.
    pub const JOBS_SAFE: &str = "JobsSafe";
    /// Whether another policy names one of this policy's targets too (one of them writes the
    /// marks, the strictest decision holding).
    pub const TARGETS_SHARED: &str = "TargetsShared";
}

impl BackpressurePolicyStatus {
    /// The circuit this status describes (a new, Closed circuit for an empty status).
    pub fn circuit(&self) -> Circuit {
        let throttling_since = self
            .condition(condition::THROTTLING)
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.0);
        let prolonged = self
            .condition(condition::PROLONGED)
            .is_some_and(|c| c.status == "True");
        let opened_on_forecast = self.state == Some(State::Open)
            && self
                .condition(condition::THROTTLING)
                .is_some_and(|c| c.reason == reason::CRITICAL_FORECAST);
        Circuit {
            state: self.state.unwrap_or_default(),
            level: self.level.unwrap_or_default(),
            opened_since: self.opened_since.as_ref().map(|t| t.0),
            throttling_since,
            last_transition: self.last_transition_time.as_ref().map(|t| t.0),
            transitions: self.transitions,
            failed_in_a_row: 0,
            prolonged,
            last_reset: self.last_reset.clone(),
            opened_on_forecast,
        }
    }

    /// Keeps only what [`Self::circuit`] reads and when the status was sampled (the heartbeat of a
    /// status taken over counts from it): the queues, the other conditions, memory and discovery
    /// are what most of a status weighs.
    pub fn keep_circuit_only(&mut self) {
        self.queues = Vec::new();
        self.queues_omitted = None;
        self.memory = None;
        self.discovery = None;
        self.forecast = None;
        self.conditions
            .retain(|c| c.type_ == condition::THROTTLING || c.type_ == condition::PROLONGED);
        self.conditions.shrink_to_fit();
    }

    /// Writes the circuit's memory, with the `Throttling` and `Prolonged` conditions, as of `now`.
    pub fn record(&mut self, circuit: &Circuit, now: Timestamp) {
        self.state = Some(circuit.state);
        self.level = Some(circuit.level);
        self.opened_since = circuit.opened_since.map(Time);
        self.last_transition_time = circuit.last_transition.map(Time);
        self.transitions = circuit.transitions;
        self.last_reset.clone_from(&circuit.last_reset);
        let throttling = match (circuit.state, circuit.throttling_since) {
            (State::Closed, _) | (_, None) => {
                let since = circuit.last_transition.unwrap_or(now);
                ConditionValue::new(false, "Closed", "every target accepts traffic", since)
            }
            (State::Open, Some(since)) if circuit.opened_on_forecast => ConditionValue::new(
                true,
                reason::CRITICAL_FORECAST,
                "the circuit is Open: the backlog is forecast to reach critical within circuit.openAhead; targets above the state's priority limit are held back",
                since,
            ),
            (state, Some(since)) => ConditionValue::new(
                true,
                &state.to_string(),
                &format!("the circuit is {state}: targets above the state's priority limit are held back"),
                since,
            ),
        };
        self.set_condition(condition::THROTTLING, throttling);
        let prolonged = if circuit.prolonged {
            ConditionValue::new(
                true,
                "NotClosedForAlertAfter",
                "the circuit has not been Closed for circuit.alertAfter",
                now,
            )
        } else {
            ConditionValue::new(
                false,
                "WithinAlertAfter",
                "the circuit is Closed or has not been throttling for long",
                now,
            )
        };
        self.set_condition(condition::PROLONGED, prolonged);
    }

    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition; its `lastTransitionTime` changes only when its status does.
    pub fn set_condition(&mut self, type_: &str, value: ConditionValue) {
        let status = if value.status { "True" } else { "False" };
        let new = Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: value.reason,
            message: value.message,
            last_transition_time: Time(value.since),
            observed_generation: self.observed_generation,
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(old) if old.status == new.status => {
                old.reason = new.reason;
                old.message = new.message;
                old.observed_generation = new.observed_generation;
            }
            Some(old) => *old = new,
            None => self.conditions.push(new),
        }
    }
}

/// A condition's value, and when it took it (used only when its status changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionValue {
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub since: Timestamp,
}

impl ConditionValue {
    pub fn new(status: bool, reason: &str, message: &str, since: Timestamp) -> Self {
        Self {
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{OnSampleFailure, SampleFailureAction};
    use crate::circuit::{CircuitRules, Observation};
    use crate::fixtures;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    fn rules() -> CircuitRules {
        CircuitRules {
            min_open: SignedDuration::from_secs(30),
            alert_after: SignedDuration::from_secs(120),
            on_failure: OnSampleFailure {
                action: SampleFailureAction::Open,
                after: 3,
            },
            ..fixtures::rules(100, 200, 50)
        }
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// Writes the status, sends it through JSON as the API server stores it, and reads it back.
    fn through_the_api(
        circuit: &Circuit,
        now: Timestamp,
        previous: &BackpressurePolicyStatus,
    ) -> BackpressurePolicyStatus {
        let mut status = previous.clone();
        status.record(circuit, now);
        serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap()
    }

    #[test]
    fn an_empty_status_is_a_closed_circuit() {
        assert_eq!(BackpressurePolicyStatus::default().circuit(), Circuit::default());
    }

    #[test]
    fn throttling_keeps_its_time_while_true_and_shows_the_state() {
        let mut circuit = Circuit::default();
        circuit.step(&rules(), t(0), Observation::pending(250), None);
        let status = through_the_api(&circuit, t(0), &BackpressurePolicyStatus::default());
        let throttling = status.condition(condition::THROTTLING).unwrap();
        assert_eq!(
            (throttling.status.as_str(), throttling.reason.as_str()),
            ("True", "Open")
        );
        circuit.step(&rules(), t(40), Observation::pending(10), None);
        let status = through_the_api(&circuit, t(40), &status);
        let throttling = status.condition(condition::THROTTLING).unwrap();
        assert_eq!(
            (throttling.reason.as_str(), throttling.last_transition_time.0),
            ("HalfOpen", t(0))
        );
        circuit.step(&rules(), t(41), Observation::pending(10), None);
        let status = through_the_api(&circuit, t(41), &status);
        let throttling = status.condition(condition::THROTTLING).unwrap();
        assert_eq!(
            (throttling.status.as_str(), throttling.last_transition_time.0),
            ("False", t(41))
        );
    }

    fn tick() -> impl Strategy<Value = (i64, Option<u64>)> {
        (
            1i64..40,
            prop_oneof![9 => (0u64..300).prop_map(Some), 1 => Just(None)],
        )
    }

    fn observation(value: Option<u64>) -> Observation {
        value.map_or(Observation::SampleFailed, Observation::pending)
    }

    proptest! {
        /// A restart at any point after a good sample continues exactly like no restart.
        #[test]
        fn a_circuit_restored_from_status_continues_exactly(
            before in prop::collection::vec(tick(), 0..60),
            cut in (1i64..40, 0u64..300),
            after in prop::collection::vec(tick(), 1..60),
        ) {
            let rules = rules();
            let mut uninterrupted = Circuit::default();
            let mut status = BackpressurePolicyStatus::default();
            let mut now = 0;
            for (gap, value) in before.iter().copied().chain(std::iter::once((cut.0, Some(cut.1)))) {
                now += gap;
                uninterrupted.step(&rules, t(now), observation(value), None);
                status = through_the_api(&uninterrupted, t(now), &status);
            }
            let mut restored = status.circuit();
            prop_assert_eq!(&restored, &uninterrupted);
            for (gap, value) in after {
                now += gap;
                let expected = uninterrupted.step(&rules, t(now), observation(value), None);
                let actual = restored.step(&rules, t(now), observation(value), None);
                prop_assert_eq!(actual, expected, "no extra transition or event after a restart");
            }
            prop_assert_eq!(restored, uninterrupted);
        }
    }
}
