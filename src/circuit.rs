//! The circuit breaker: a pure, deterministic state machine (time is an input, no I/O).
//!
//! ```text
//!            critical (or forecast)              below warning and open >= minOpenDuration
//!  Closed ───────────────────────▶ Open ──────────────────────────────────────────▶ HalfOpen
//!    ▲                              ▲              critical (or forecast)              │
//!    │                              └──────────────────────────────────────────────────┤
//!    └──────────────────────────────────── at or below recovery ───────────────────────┘
//! ```
//! "Critical" is the backlog (`pending`), the latency or Redis memory at its critical threshold; "below
//! warning" and "recovery" hold for every signal the policy sets. With `openAhead`, a backlog
//! forecast to reach critical within that time opens too, and keeps an Open circuit from
//! half-opening. A new `levee.dev/reset` value forces Closed; failed samples apply
//! `onSampleFailure` after N in a row. One tick makes at most one transition.

mod memory;
mod rules;

pub use memory::{Bytes, MemoryAmount, MemoryThresholds, MemoryUse};
pub use rules::{Bands, CircuitRules, LatencyThresholds, OnSampleFailure, SampleFailureAction, Thresholds};

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Where the circuit is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum State {
    /// Every target accepts.
    #[default]
    Closed,
    /// Targets up to `halfOpenMaxPriority` accept while the backlog drains.
    HalfOpen,
    /// Only targets up to `openMaxPriority` accept.
    Open,
}

/// How large the backlog is, relative to the thresholds.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Level {
    /// Below warning.
    #[default]
    Normal,
    /// From warning.
    Warning,
    /// From critical.
    Critical,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What one tick saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The queues were read.
    Sampled(Measure),
    /// The sample could not be taken.
    SampleFailed,
}

impl Observation {
    /// A sample of `pending` jobs, with no latency and no forecast.
    pub fn pending(pending: u64) -> Self {
        Observation::Sampled(Measure {
            pending,
            ..Measure::default()
        })
    }
}

/// What a sample measured, and what the forecast makes of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measure {
    /// The weighted backlog total.
    pub pending: u64,
    /// The age of the oldest waiting job over the queues; `None` when no queue keeps one.
    pub latency: Option<Duration>,
    /// When the backlog will reach critical at its current growth; `None` when it is not growing
    /// (or not forecast).
    pub critical_in: Option<Duration>,
    /// Redis memory (the fullest master's); `None` when not read.
    pub memory: Option<MemoryUse>,
}

/// Why the state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `pending >= critical`.
    ReachedCritical { pending: u64, critical: u64 },
    /// `latency >= latency.critical`.
    LatencyCritical { latency: Duration, critical: Duration },
    /// Redis memory at `memory.critical` (in bytes against `maxmemory`).
    MemoryCritical {
        used: u64,
        critical: MemoryAmount,
        critical_bytes: u64,
    },
    /// The backlog is forecast to reach critical within `openAhead`.
    CriticalForecast {
        pending: u64,
        critical: u64,
        critical_in: Duration,
    },
    /// Every signal below warning after the dwell.
    BelowWarning { measure: Measure },
    /// Every signal at or below recovery.
    Recovered { measure: Measure },
    /// A new `levee.dev/reset` value.
    Reset { value: String },
    /// `onSampleFailure` fired.
    SampleFailures {
        failed_in_a_row: u32,
        action: SampleFailureAction,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::ReachedCritical { pending, critical } => {
                write!(f, "pending {pending} >= critical {critical}")
            }
            Cause::LatencyCritical { latency, critical } => {
                write!(f, "latency {latency:.1?} >= critical {critical:?}")
            }
            Cause::MemoryCritical {
                used,
                critical,
                critical_bytes,
            } => match critical {
                MemoryAmount::Percent(_) => write!(
                    f,
                    "Redis memory {} >= critical {critical} ({})",
                    Bytes(*used),
                    Bytes(*critical_bytes)
                ),
                MemoryAmount::Bytes(_) => write!(f, "Redis memory {} >= critical {critical}", Bytes(*used)),
            },
            Cause::CriticalForecast {
                pending,
                critical,
                critical_in,
            } => write!(
                f,
                "pending {pending} is forecast to reach critical {critical} in {:.0?} (circuit.openAhead)",
                critical_in
            ),
            Cause::BelowWarning { measure } => {
                write!(
                    f,
                    "{} below warning after the minimum open time",
                    describe(measure)
                )
            }
            Cause::Recovered { measure } => {
                write!(f, "{} at or below recovery", describe(measure))
            }
            Cause::Reset { value } => write!(f, "reset requested (levee.dev/reset={value})"),
            Cause::SampleFailures {
                failed_in_a_row,
                action,
            } => {
                write!(
                    f,
                    "{failed_in_a_row} failed samples in a row, onSampleFailure {action:?}"
                )
            }
        }
    }
}

/// The numbers of a measure, as the events show them.
fn describe(measure: &Measure) -> String {
    let mut text = format!("pending {}", measure.pending);
    if let Some(latency) = measure.latency {
        text.push_str(&format!(", latency {latency:.1?}"));
    }
    if let Some(memory) = measure.memory {
        text.push_str(&format!(", Redis memory {}", Bytes(memory.used)));
    }
    text
}

/// A change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub cause: Cause,
}

/// Everything a tick changed, for the caller to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub transition: Option<Transition>,
    /// `(from, to)` when the level changed.
    pub level_change: Option<(Level, Level)>,
    /// The circuit just became Prolonged.
    pub prolonged_started: bool,
    /// A new reset value was consumed (with or without a transition).
    pub reset_applied: bool,
}

/// The circuit's whole memory; `status` holds it, so a restarted operator resumes here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Circuit {
    pub state: State,
    pub level: Level,
    /// When the circuit last entered Open.
    pub opened_since: Option<Timestamp>,
    /// When the circuit last left Closed (Prolonged counts from here).
    pub throttling_since: Option<Timestamp>,
    pub last_transition: Option<Timestamp>,
    pub transitions: u64,
    pub failed_in_a_row: u32,
    pub prolonged: bool,
    pub last_reset: Option<String>,
    /// The circuit is Open because critical was forecast (`openAhead`), not reached.
    pub opened_on_forecast: bool,
}

impl Circuit {
    /// Feeds one tick into the circuit. `reset` is the policy's current `levee.dev/reset` value.
    pub fn step(
        &mut self,
        rules: &CircuitRules,
        at: Timestamp,
        observation: Observation,
        reset: Option<&str>,
    ) -> Decision {
        let mut decision = Decision::default();
        if let Observation::Sampled(measure) = observation {
            let level = rules.level_of(&measure);
            if level != self.level {
                decision.level_change = Some((self.level, level));
                self.level = level;
            }
        }
        match reset.filter(|value| self.last_reset.as_deref() != Some(*value)) {
            Some(value) => {
                self.last_reset = Some(value.to_string());
                decision.reset_applied = true;
                let cause = Cause::Reset {
                    value: value.to_string(),
                };
                decision.transition = self.move_to(State::Closed, at, cause);
            }
            None => decision.transition = self.follow_rules(rules, at, observation),
        }
        let prolonged = self.state != State::Closed
            && self
                .throttling_since
                .is_some_and(|since| at.duration_since(since) >= rules.alert_after);
        decision.prolonged_started = prolonged && !self.prolonged;
        self.prolonged = prolonged;
        decision
    }

    fn follow_rules(
        &mut self,
        rules: &CircuitRules,
        at: Timestamp,
        observation: Observation,
    ) -> Option<Transition> {
        let measure = match observation {
            Observation::Sampled(measure) => {
                self.failed_in_a_row = 0;
                measure
            }
            Observation::SampleFailed => {
                self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
                if self.failed_in_a_row < rules.on_failure.after {
                    return None;
                }
                let cause = Cause::SampleFailures {
                    failed_in_a_row: self.failed_in_a_row,
                    action: rules.on_failure.action,
                };
                return match rules.on_failure.action {
                    SampleFailureAction::Hold => None,
                    SampleFailureAction::Open => self.move_to(State::Open, at, cause),
                    SampleFailureAction::Close => self.move_to(State::Closed, at, cause),
                };
            }
        };
        match self.state {
            State::Closed | State::HalfOpen => {
                if let Some(cause) = critical_cause(rules, &measure) {
                    self.move_to(State::Open, at, cause)
                } else if let Some(cause) = forecast_cause(rules, &measure) {
                    let transition = self.move_to(State::Open, at, cause);
                    self.opened_on_forecast = true;
                    transition
                } else if self.state == State::HalfOpen && rules.recovered(&measure) {
                    self.move_to(State::Closed, at, Cause::Recovered { measure })
                } else {
                    None
                }
            }
            State::Open
                if rules.below_warning(&measure)
                    && !rules.forecast_critical(&measure)
                    && self.dwelled(rules, at) =>
            {
                self.move_to(State::HalfOpen, at, Cause::BelowWarning { measure })
            }
            State::Open => None,
        }
    }

    fn dwelled(&self, rules: &CircuitRules, at: Timestamp) -> bool {
        self.opened_since
            .is_none_or(|since| at.duration_since(since) >= rules.min_open)
    }

    fn move_to(&mut self, to: State, at: Timestamp, cause: Cause) -> Option<Transition> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.opened_on_forecast = false;
        match to {
            State::Open => self.opened_since = Some(at),
            State::Closed => {
                self.opened_since = None;
                self.throttling_since = None;
            }
            State::HalfOpen => {}
        }
        if from == State::Closed {
            self.throttling_since = Some(at);
        }
        self.state = to;
        self.last_transition = Some(at);
        self.transitions += 1;
        Some(Transition { from, to, cause })
    }
}

/// The signal at its critical level, if any: the backlog first, then the latency, then memory.
fn critical_cause(rules: &CircuitRules, measure: &Measure) -> Option<Cause> {
    if let Some(bands) = rules.depth
        && measure.pending >= bands.critical
    {
        return Some(Cause::ReachedCritical {
            pending: measure.pending,
            critical: bands.critical,
        });
    }
    if let Some((bands, latency)) = rules.latency.zip(measure.latency)
        && latency >= bands.critical
    {
        return Some(Cause::LatencyCritical {
            latency,
            critical: bands.critical,
        });
    }
    let (bands, used) = rules.memory_bands(measure)?;
    (used >= bands.critical).then_some(Cause::MemoryCritical {
        used,
        critical: rules.memory?.critical,
        critical_bytes: bands.critical,
    })
}

/// The forecast of critical within `openAhead`, if so.
fn forecast_cause(rules: &CircuitRules, measure: &Measure) -> Option<Cause> {
    let bands = rules.depth?;
    let critical_in = measure.critical_in?;
    rules
        .forecast_critical(measure)
        .then_some(Cause::CriticalForecast {
            pending: measure.pending,
            critical: bands.critical,
            critical_in,
        })
}

#[cfg(test)]
mod tests;
