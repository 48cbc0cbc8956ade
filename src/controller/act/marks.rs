//! What levee writes on a producer: the annotations apps read through the downward API, the
//! pod condition a `readinessGates` entry waits for, and the label naming the policy, by which
//! levee finds every producer it ever marked (no memory needed to release them). Pure: computing
//! the marks and telling whether an object already carries them (so nothing is written while
//! nothing changes).

use crate::api::labels::{
    ANNOTATION_ACCEPTING, ANNOTATION_POLICY, ANNOTATION_STATE, CONDITION_ACCEPTING, LABEL_POLICY,
};
use crate::circuit::{CircuitRules, State};
use crate::controller::cache::kept::AcceptingCondition;
use crate::controller::cache::selector::Pairs;
use jiff::Timestamp;
use serde_json::{Value, json};

/// Why levee lets a producer go for good (it also loses the policy label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The policy is in dry run: decisions are reported, producers are not touched.
    DryRun,
    /// The policy no longer selects the producer.
    TargetRemoved,
    /// The policy is being deleted.
    PolicyDeleted,
}

impl Release {
    /// The reason written in the pod condition.
    pub fn reason(self) -> &'static str {
        match self {
            Release::DryRun => "DryRun",
            Release::TargetRemoved => "TargetRemoved",
            Release::PolicyDeleted => "PolicyDeleted",
        }
    }
}

/// What levee does with the producers of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Hold back or let through as the circuit's state and each target's priority say.
    Follow(State),
    /// Let every producer go.
    Release(Release),
}

/// The marks one target (and its pods) should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marks {
    pub state: State,
    pub accepting: bool,
    pub policy: String,
    pub reason: &'static str,
    pub message: String,
    /// Whether the producer keeps the policy label (false once released).
    pub labelled: bool,
}

impl Marks {
    /// The marks of a target of `priority` under `intent`: following the circuit, or released
    /// (accepting, without the policy label).
    pub fn new(policy: &str, intent: Intent, priority: u32, rules: &CircuitRules) -> Self {
        let (state, accepting, reason, message) = match intent {
            Intent::Release(release) => (
                State::Closed,
                true,
                release.reason(),
                "levee does not hold this producer back".to_string(),
            ),
            Intent::Follow(state) => {
                let accepting = rules.accepts(state, priority);
                let (reason, message) = match (state, accepting) {
                    (State::Closed, _) => (
                        "CircuitClosed",
                        "the backlog is within its thresholds".to_string(),
                    ),
                    (_, true) => (
                        "PriorityAllowed",
                        format!("the circuit is {state}, and priority {priority} may still send work"),
                    ),
                    (State::HalfOpen, false) => (
                        "CircuitHalfOpen",
                        format!(
                            "the circuit is HalfOpen: only priority <= {} may send work",
                            rules.half_open_max_priority
                        ),
                    ),
                    (_, false) => (
                        "CircuitOpen",
                        format!(
                            "the circuit is Open: only priority <= {} may send work",
                            rules.open_max_priority
                        ),
                    ),
                };
                (state, accepting, reason, message)
            }
        };
        Self {
            state,
            accepting,
            policy: policy.to_string(),
            reason,
            message,
            labelled: matches!(intent, Intent::Follow(_)),
        }
    }

    fn annotation_values(&self) -> [(&'static str, String); 3] {
        [
            (ANNOTATION_STATE, self.state.to_string()),
            (ANNOTATION_ACCEPTING, self.accepting.to_string()),
            (ANNOTATION_POLICY, self.policy.clone()),
        ]
    }

    /// Whether `annotations` lack any of the marks, or `labels` the policy label (or still carry
    /// it once released).
    pub fn metadata_differs(&self, annotations: &Pairs, labels: &Pairs) -> bool {
        let label = labels.get(LABEL_POLICY);
        let label_differs = if self.labelled {
            label != Some(self.policy.as_str())
        } else {
            label.is_some()
        };
        label_differs
            || self
                .annotation_values()
                .iter()
                .any(|(key, value)| annotations.get(key) != Some(value.as_str()))
    }

    /// A JSON merge patch setting the annotations and setting (or removing) the policy label.
    pub fn metadata_patch(&self) -> Value {
        let annotations: serde_json::Map<String, Value> = self
            .annotation_values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        let label = if self.labelled {
            Value::String(self.policy.clone())
        } else {
            Value::Null
        };
        json!({ "metadata": { "annotations": annotations, "labels": { LABEL_POLICY: label } } })
    }

    fn condition_status(&self) -> &'static str {
        if self.accepting { "True" } else { "False" }
    }

    /// Whether the pod's `levee.dev/accepting` condition is missing or says something else.
    pub fn condition_differs(&self, current: Option<&AcceptingCondition>) -> bool {
        current
            .is_none_or(|c| *c.status != *self.condition_status() || c.reason.as_deref() != Some(self.reason))
    }

    /// A strategic merge patch of `pods/status` setting the condition (merged by `type`).
    pub fn condition_patch(&self, now: Timestamp) -> Value {
        json!({ "status": { "conditions": [{
            "type": CONDITION_ACCEPTING,
            "status": self.condition_status(),
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use k8s_openapi::api::core::v1::PodCondition;
    use std::collections::BTreeMap;

    fn rules() -> CircuitRules {
        CircuitRules {
            half_open_max_priority: 5,
            open_max_priority: 1,
            ..fixtures::rules(2, 3, 1)
        }
    }

    #[test]
    fn priority_decides_who_accepts() {
        let r = rules();
        assert!(Marks::new("p", Intent::Follow(State::Closed), 10, &r).accepting);
        let held = Marks::new("p", Intent::Follow(State::HalfOpen), 6, &r);
        assert_eq!((held.accepting, held.reason), (false, "CircuitHalfOpen"));
        let allowed = Marks::new("p", Intent::Follow(State::Open), 1, &r);
        assert_eq!((allowed.accepting, allowed.reason), (true, "PriorityAllowed"));
        let released = Marks::new("p", Intent::Release(Release::PolicyDeleted), 10, &r);
        assert_eq!(
            (released.accepting, released.state, released.reason),
            (true, State::Closed, "PolicyDeleted")
        );
    }

    #[test]
    fn nothing_differs_once_the_marks_are_there() {
        let marks = Marks::new("p", Intent::Follow(State::Open), 10, &rules());
        let patch = marks.metadata_patch();
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(patch["metadata"]["annotations"].clone()).unwrap();
        let labels: BTreeMap<String, String> =
            serde_json::from_value(patch["metadata"]["labels"].clone()).unwrap();
        assert_eq!(labels.get(LABEL_POLICY).map(String::as_str), Some("p"));
        let (none, labels): (Pairs, Pairs) = (Pairs::default(), labels.into_iter().collect());
        assert!(!marks.metadata_differs(&annotations.clone().into_iter().collect(), &labels));
        assert!(marks.metadata_differs(&none, &labels));
        assert!(
            marks.metadata_differs(&annotations.clone().into_iter().collect(), &none),
            "a pod without the label is relabelled"
        );
        let mut other = annotations;
        other.insert(ANNOTATION_ACCEPTING.into(), "true".into());
        assert!(marks.metadata_differs(&other.into_iter().collect(), &labels));

        let condition: PodCondition = serde_json::from_value(
            marks.condition_patch(Timestamp::UNIX_EPOCH)["status"]["conditions"][0].clone(),
        )
        .unwrap();
        let kept = AcceptingCondition::from(condition);
        assert!(!marks.condition_differs(Some(&kept)));
        assert!(marks.condition_differs(None));
        let closed = Marks::new("p", Intent::Follow(State::Closed), 10, &rules());
        assert!(closed.condition_differs(Some(&kept)));
    }

    #[test]
    fn a_released_producer_loses_the_label() {
        let released = Marks::new("p", Intent::Release(Release::TargetRemoved), 10, &rules());
        let patch = released.metadata_patch();
        assert_eq!(patch["metadata"]["labels"][LABEL_POLICY], Value::Null);
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(patch["metadata"]["annotations"].clone()).unwrap();
        let annotations: Pairs = annotations.into_iter().collect();
        let labelled: Pairs = [(LABEL_POLICY, "p")].into_iter().collect();
        assert!(released.metadata_differs(&annotations, &labelled));
        assert!(!released.metadata_differs(&annotations, &Pairs::default()));
    }
}
