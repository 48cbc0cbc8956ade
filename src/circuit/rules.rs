//! The policy settings the circuit obeys: thresholds, what a failed sample does, dwell and
//! priorities. The API embeds the first two in the policy's spec (with their schema rules); the
//! circuit reads them in the units it computes with.

use super::memory::{MemoryAmount, MemoryThresholds};
use super::{Level, Measure, State};
use jiff::SignedDuration;
use kube::KubeSchema;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The levels that drive the circuit: backlog sizes (weighted pending jobs), queue latency,
/// Redis memory, or any of them together (the worst counts).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.critical) || has(self.latency) || has(self.memory)").message("set the depth thresholds (warning, critical, recovery), latency or memory thresholds, or several of them"))]
#[x_kube(validation = Rule::new("has(self.warning) == has(self.critical) && has(self.critical) == has(self.recovery)").message("warning, critical and recovery go together: set all three or none"))]
#[x_kube(validation = Rule::new("!has(self.critical) || !has(self.warning) || !has(self.recovery) || (self.recovery < self.warning && self.warning < self.critical)").message("thresholds must satisfy recovery < warning < critical: lower recovery or raise critical"))]
pub struct Thresholds {
    /// From here the level is Warning, and an Open circuit must fall below it to half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub warning: Option<u64>,
    /// From here the circuit opens and the level is Critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub critical: Option<u64>,
    /// At or below this a HalfOpen circuit closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub recovery: Option<u64>,
    /// The same levels for the age of the oldest waiting job (the largest over the queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyThresholds>,
    /// The same levels for Redis memory: percentages of `maxmemory` (`"85%"`) or quantities
    /// (`"2Gi"`, for a Redis without a limit), of its fullest master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryThresholds>,
}

/// Queue latencies (Go durations) that drive the circuit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.recovery) < duration(self.warning) && duration(self.warning) < duration(self.critical)").message("latency thresholds must satisfy recovery < warning < critical: lower recovery or raise critical"))]
pub struct LatencyThresholds {
    /// From here the level is Warning, and an Open circuit must fall below it to half-open.
    pub warning: Duration,
    /// From here the circuit opens and the level is Critical.
    pub critical: Duration,
    /// At or below this a HalfOpen circuit closes.
    pub recovery: Duration,
}

impl Thresholds {
    /// The depth levels, when set (the schema sets all three or none).
    pub fn depth(&self) -> Option<Bands<u64>> {
        Some(Bands {
            warning: self.warning?,
            critical: self.critical?,
            recovery: self.recovery?,
        })
    }

    /// The latency levels, when set.
    pub fn latency(&self) -> Option<Bands<std::time::Duration>> {
        self.latency.map(|latency| Bands {
            warning: latency.warning.into(),
            critical: latency.critical.into(),
            recovery: latency.recovery.into(),
        })
    }

    /// The memory levels, when set.
    pub fn memory(&self) -> Option<Bands<MemoryAmount>> {
        self.memory.as_ref()?.bands()
    }
}

/// Warning, critical and recovery of one signal, in the unit the circuit compares it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bands<T> {
    pub warning: T,
    pub critical: T,
    pub recovery: T,
}

impl<T: PartialOrd> Bands<T> {
    /// The level `value` is at.
    pub fn level_of(&self, value: &T) -> Level {
        if *value >= self.critical {
            Level::Critical
        } else if *value >= self.warning {
            Level::Warning
        } else {
            Level::Normal
        }
    }
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
    /// Backlog sizes; `None` when only latency drives the circuit.
    pub depth: Option<Bands<u64>>,
    /// Queue latencies; `None` when only the backlog drives the circuit.
    pub latency: Option<Bands<std::time::Duration>>,
    /// Redis memory; `None` when memory does not drive the circuit.
    pub memory: Option<Bands<MemoryAmount>>,
    /// Open when the backlog is forecast to reach critical within this time.
    pub open_ahead: Option<std::time::Duration>,
    /// An Open circuit stays Open at least this long.
    pub min_open: SignedDuration,
    /// Not Closed for this long makes the circuit Prolonged.
    pub alert_after: SignedDuration,
    pub half_open_max_priority: u32,
    pub open_max_priority: u32,
    pub on_failure: OnSampleFailure,
}

impl CircuitRules {
    /// The level of a measure: the worst of its backlog's, its latency's and its memory's. A
    /// latency or a memory that is unknown counts as none.
    pub fn level_of(&self, measure: &Measure) -> Level {
        let depth = self.depth.map(|bands| bands.level_of(&measure.pending));
        let latency = self
            .latency
            .zip(measure.latency)
            .map(|(bands, latency)| bands.level_of(&latency));
        let memory = self
            .memory_bands(measure)
            .map(|(bands, used)| bands.level_of(&used));
        depth.max(latency).max(memory).unwrap_or_default()
    }

    /// Whether every signal is below its warning level (an Open circuit may half-open).
    pub fn below_warning(&self, measure: &Measure) -> bool {
        self.depth.is_none_or(|bands| measure.pending < bands.warning)
            && self
                .latency
                .zip(measure.latency)
                .is_none_or(|(bands, latency)| latency < bands.warning)
            && self
                .memory_bands(measure)
                .is_none_or(|(bands, used)| used < bands.warning)
    }

    /// Whether every signal is at or below its recovery level (a HalfOpen circuit may close).
    pub fn recovered(&self, measure: &Measure) -> bool {
        self.depth.is_none_or(|bands| measure.pending <= bands.recovery)
            && self
                .latency
                .zip(measure.latency)
                .is_none_or(|(bands, latency)| latency <= bands.recovery)
            && self
                .memory_bands(measure)
                .is_none_or(|(bands, used)| used <= bands.recovery)
    }

    /// The memory levels in bytes against the measure's limit, with the memory used; `None`
    /// when memory does not drive the circuit or the measure cannot say (no reading, or
    /// percentages of a Redis without `maxmemory`).
    pub fn memory_bands(&self, measure: &Measure) -> Option<(Bands<u64>, u64)> {
        let memory = measure.memory?;
        Some((self.memory?.in_bytes(memory.max)?, memory.used))
    }

    /// Whether the measure carries what the memory thresholds need (always, without them).
    pub fn memory_readable(&self, measure: &Measure) -> bool {
        self.memory.is_none() || self.memory_bands(measure).is_some()
    }

    /// Whether the backlog is forecast to reach critical within `openAhead`.
    pub fn forecast_critical(&self, measure: &Measure) -> bool {
        self.open_ahead
            .zip(measure.critical_in)
            .is_some_and(|(ahead, critical_in)| critical_in <= ahead)
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
