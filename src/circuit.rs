//! The circuit breaker: a pure, deterministic state machine (time is an input, no I/O).
//!
//! ```text
//!            pending >= critical                 pending < warning and open >= minOpenDuration
//!  Closed ───────────────────────▶ Open ──────────────────────────────────────────▶ HalfOpen
//!    ▲                              ▲                pending >= critical               │
//!    │                              └──────────────────────────────────────────────────┤
//!    └──────────────────────────────────── pending <= recovery ────────────────────────┘
//! ```
//! A new `levee.dev/reset` value forces Closed; failed samples apply `onSampleFailure` after N in
//! a row. One tick makes at most one transition.

mod rules;

pub use rules::{CircuitRules, OnSampleFailure, SampleFailureAction, Thresholds};

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

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
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
    /// The weighted backlog total.
    Pending(u64),
    /// The sample could not be taken.
    SampleFailed,
}

/// Why the state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// `pending >= critical`.
    ReachedCritical { pending: u64, critical: u64 },
    /// `pending < warning` after the dwell.
    BelowWarning { pending: u64, warning: u64 },
    /// `pending <= recovery`.
    Recovered { pending: u64, recovery: u64 },
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
            Cause::BelowWarning { pending, warning } => {
                write!(
                    f,
                    "pending {pending} < warning {warning} after the minimum open time"
                )
            }
            Cause::Recovered { pending, recovery } => {
                write!(f, "pending {pending} <= recovery {recovery}")
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
        if let Observation::Pending(pending) = observation {
            let level = rules.level_of(pending);
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
        let Thresholds {
            warning,
            critical,
            recovery,
        } = rules.thresholds;
        let pending = match observation {
            Observation::Pending(pending) => {
                self.failed_in_a_row = 0;
                pending
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
            State::Closed | State::HalfOpen if pending >= critical => {
                self.move_to(State::Open, at, Cause::ReachedCritical { pending, critical })
            }
            State::Open if pending < warning && self.dwelled(rules, at) => {
                self.move_to(State::HalfOpen, at, Cause::BelowWarning { pending, warning })
            }
            State::HalfOpen if pending <= recovery => {
                self.move_to(State::Closed, at, Cause::Recovered { pending, recovery })
            }
            _ => None,
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

#[cfg(test)]
mod tests;
