//! The policy settings the circuit obeys: thresholds, what a failed sample does, dwell and
//! priorities. The API embeds the first two in the policy's spec (with their schema rules); the
//! circuit reads them in the units it computes with.

use super::{Level, State};
use jiff::SignedDuration;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Backlog sizes (weighted pending jobs) that drive the circuit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.recovery < self.warning && self.warning < self.critical").message("thresholds must satisfy recovery < warning < critical: lower recovery or raise critical"))]
pub struct Thresholds {
    /// From here the level is Warning, and an Open circuit must fall below it to half-open.
    #[schemars(range(min = 0))]
    pub warning: u64,
    /// From here the circuit opens and the level is Critical.
    #[schemars(range(min = 1))]
    pub critical: u64,
    /// At or below this a HalfOpen circuit closes.
    #[schemars(range(min = 0))]
    pub recovery: u64,
}

/// What to do after some sampling ticks in a row failed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OnSampleFailure {
    /// Hold keeps the state, Open stops producers, Close lets them through.
    #[serde(default)]
    pub action: SampleFailureAction,
    /// How many failed ticks in a row trigger the action.
    #[serde(default = "default_failure_after")]
    #[schemars(range(min = 1, max = 10000))]
    pub after: u32,
}

impl Default for OnSampleFailure {
    fn default() -> Self {
        Self {
            action: SampleFailureAction::default(),
            after: default_failure_after(),
        }
    }
}

/// The circuit's answer to a Redis it cannot read.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleFailureAction {
    /// Keep the current state.
    #[default]
    Hold,
    /// Open: fail safe for the queue.
    Open,
    /// Close: fail safe for traffic.
    Close,
}

fn default_failure_after() -> u32 {
    3
}

/// The policy settings the circuit obeys, in the units it computes with.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitRules {
    pub thresholds: Thresholds,
    /// An Open circuit stays Open at least this long.
    pub min_open: SignedDuration,
    /// Not Closed for this long makes the circuit Prolonged.
    pub alert_after: SignedDuration,
    pub half_open_max_priority: u32,
    pub open_max_priority: u32,
    pub on_failure: OnSampleFailure,
}

impl CircuitRules {
    /// The level a backlog of `pending` is at.
    pub fn level_of(&self, pending: u64) -> Level {
        if pending >= self.thresholds.critical {
            Level::Critical
        } else if pending >= self.thresholds.warning {
            Level::Warning
        } else {
            Level::Normal
        }
    }

    /// Whether a target of `priority` accepts traffic while the circuit is in `state`.
    pub fn accepts(&self, state: State, priority: u32) -> bool {
        match state {
            State::Closed => true,
            State::HalfOpen => priority <= self.half_open_max_priority,
            State::Open => priority <= self.open_max_priority,
        }
    }
}
