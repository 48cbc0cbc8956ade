//! Every rule of the circuit, one test each, then the invariants as properties.

use super::*;
use crate::fixtures;
use jiff::SignedDuration;
use proptest::prelude::*;

const WARNING: u64 = 100;
const CRITICAL: u64 = 200;
const RECOVERY: u64 = 50;

fn rules(action: SampleFailureAction, after: u32) -> CircuitRules {
    CircuitRules {
        min_open: SignedDuration::from_secs(30),
        alert_after: SignedDuration::from_secs(600),
        half_open_max_priority: 5,
        open_max_priority: 1,
        on_failure: OnSampleFailure { action, after },
        ..fixtures::rules(WARNING, CRITICAL, RECOVERY)
    }
}

fn hold() -> CircuitRules {
    rules(SampleFailureAction::Hold, 3)
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn pending(circuit: &mut Circuit, rules: &CircuitRules, at: i64, value: u64) -> Decision {
    circuit.step(rules, t(at), Observation::pending(value), None)
}

fn measure(pending: u64) -> Measure {
    Measure {
        pending,
        ..Measure::default()
    }
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// Latency levels 10 s / 60 s / 5 s, beside the depth levels or alone.
fn with_latency(depth: bool) -> CircuitRules {
    CircuitRules {
        depth: depth.then_some(hold().depth).flatten(),
        latency: Some(Bands {
            warning: secs(10),
            critical: secs(60),
            recovery: secs(5),
        }),
        ..hold()
    }
}

/// Memory levels 70 % / 85 % / 60 % of maxmemory, beside the depth levels or alone.
fn with_memory(depth: bool) -> CircuitRules {
    CircuitRules {
        depth: depth.then_some(hold().depth).flatten(),
        memory: Some(Bands {
            warning: MemoryAmount::Percent(70),
            critical: MemoryAmount::Percent(85),
            recovery: MemoryAmount::Percent(60),
        }),
        ..hold()
    }
}

/// `pending` jobs with `used` bytes of a Redis whose maxmemory is `max`.
fn filled(pending: u64, used: u64, max: Option<u64>) -> Measure {
    Measure {
        pending,
        memory: Some(MemoryUse { used, max }),
        ..Measure::default()
    }
}

fn step(circuit: &mut Circuit, rules: &CircuitRules, at: i64, measure: Measure) -> Decision {
    circuit.step(rules, t(at), Observation::Sampled(measure), None)
}

fn aged(pending: u64, latency: u64) -> Measure {
    Measure {
        pending,
        latency: Some(secs(latency)),
        ..Measure::default()
    }
}

fn forecast(pending: u64, critical_in: u64) -> Measure {
    Measure {
        pending,
        critical_in: Some(secs(critical_in)),
        ..Measure::default()
    }
}

fn open_at(at: i64) -> Circuit {
    let mut circuit = Circuit::default();
    pending(&mut circuit, &hold(), at, CRITICAL);
    assert_eq!(circuit.state, State::Open);
    circuit
}

#[test]
fn latency_alone_opens_half_opens_and_closes_on_its_own_levels() {
    let rules = with_latency(false);
    let mut circuit = Circuit::default();
    assert_eq!(
        step(&mut circuit, &rules, 0, aged(1_000_000, 59)).transition,
        None,
        "depth has no levels"
    );
    assert_eq!(circuit.level, Level::Warning);
    let opened = step(&mut circuit, &rules, 1, aged(0, 60)).transition.unwrap();
    assert_eq!(
        opened.cause,
        Cause::LatencyCritical {
            latency: secs(60),
            critical: secs(60)
        }
    );
    assert_eq!(opened.cause.to_string(), "latency 60.0s >= critical 60s");
    assert_eq!(
        step(&mut circuit, &rules, 40, aged(0, 10)).transition,
        None,
        "not below warning"
    );
    let half = step(&mut circuit, &rules, 41, aged(0, 9)).transition.unwrap();
    assert_eq!(half.to, State::HalfOpen);
    assert_eq!(step(&mut circuit, &rules, 42, aged(0, 6)).transition, None);
    assert_eq!(
        step(&mut circuit, &rules, 43, aged(0, 5)).transition.unwrap().to,
        State::Closed
    );
}

#[test]
fn with_both_the_worse_signal_counts() {
    let rules = with_latency(true);
    let mut circuit = Circuit::default();
    step(&mut circuit, &rules, 0, aged(WARNING, 1));
    assert_eq!(circuit.level, Level::Warning, "depth at warning");
    step(&mut circuit, &rules, 1, aged(0, 60));
    assert_eq!(
        (circuit.state, circuit.level),
        (State::Open, Level::Critical),
        "latency at critical"
    );
    // Half-opening needs both below warning; closing needs both at recovery.
    assert_eq!(step(&mut circuit, &rules, 40, aged(WARNING, 1)).transition, None);
    assert_eq!(step(&mut circuit, &rules, 41, aged(0, 10)).transition, None);
    assert_eq!(
        step(&mut circuit, &rules, 42, aged(WARNING - 1, 9))
            .transition
            .unwrap()
            .to,
        State::HalfOpen
    );
    assert_eq!(step(&mut circuit, &rules, 43, aged(RECOVERY, 6)).transition, None);
    assert_eq!(
        step(&mut circuit, &rules, 44, aged(RECOVERY + 1, 5)).transition,
        None
    );
    assert_eq!(
        step(&mut circuit, &rules, 45, aged(RECOVERY, 5))
            .transition
            .unwrap()
            .to,
        State::Closed
    );
    // A sample with no latency (no queue keeps one) is judged on its depth.
    step(&mut circuit, &rules, 46, measure(CRITICAL - 1));
    assert_eq!(circuit.level, Level::Warning);
}

#[test]
fn a_forecast_of_critical_within_open_ahead_opens_and_keeps_open() {
    let rules = CircuitRules {
        open_ahead: Some(secs(30)),
        ..hold()
    };
    let mut circuit = Circuit::default();
    assert_eq!(step(&mut circuit, &rules, 0, forecast(150, 31)).transition, None);
    let opened = step(&mut circuit, &rules, 1, forecast(150, 30))
        .transition
        .unwrap();
    assert_eq!(
        opened.cause,
        Cause::CriticalForecast {
            pending: 150,
            critical: CRITICAL,
            critical_in: secs(30)
        }
    );
    assert!(circuit.opened_on_forecast);
    assert_eq!(
        circuit.level,
        Level::Warning,
        "the forecast does not change the level"
    );
    // Below warning after the dwell, but still forecast to reach critical: stays Open.
    assert_eq!(step(&mut circuit, &rules, 40, forecast(10, 20)).transition, None);
    let half = step(&mut circuit, &rules, 41, measure(10)).transition.unwrap();
    assert_eq!(half.to, State::HalfOpen);
    assert!(!circuit.opened_on_forecast);
    assert_eq!(
        step(&mut circuit, &rules, 42, forecast(10, 5))
            .transition
            .unwrap()
            .to,
        State::Open,
        "HalfOpen re-opens on the forecast"
    );
    // Without openAhead a forecast changes nothing.
    let mut plain = Circuit::default();
    assert_eq!(step(&mut plain, &hold(), 0, forecast(150, 0)).transition, None);
}

#[test]
fn reaching_critical_is_the_cause_even_when_it_was_forecast() {
    let rules = CircuitRules {
        open_ahead: Some(secs(30)),
        ..hold()
    };
    let mut circuit = Circuit::default();
    let opened = step(&mut circuit, &rules, 0, forecast(CRITICAL, 0))
        .transition
        .unwrap();
    assert!(matches!(opened.cause, Cause::ReachedCritical { .. }));
    assert!(!circuit.opened_on_forecast);
}

#[test]
fn closed_opens_at_critical_not_below() {
    let mut circuit = Circuit::default();
    assert_eq!(pending(&mut circuit, &hold(), 0, CRITICAL - 1).transition, None);
    assert_eq!(circuit.state, State::Closed);
    let decision = pending(&mut circuit, &hold(), 1, CRITICAL);
    let transition = decision.transition.expect("opens");
    assert_eq!((transition.from, transition.to), (State::Closed, State::Open));
    assert_eq!(transition.cause.to_string(), "pending 200 >= critical 200");
    assert_eq!(circuit.opened_since, Some(t(1)));
    assert_eq!(circuit.throttling_since, Some(t(1)));
    assert_eq!(circuit.transitions, 1);
}

#[test]
fn open_waits_for_min_open_duration_before_half_open() {
    let mut circuit = open_at(0);
    assert_eq!(pending(&mut circuit, &hold(), 29, 0).transition, None);
    assert_eq!(circuit.state, State::Open);
    let transition = pending(&mut circuit, &hold(), 30, 0)
        .transition
        .expect("half-opens");
    assert_eq!((transition.from, transition.to), (State::Open, State::HalfOpen));
}

#[test]
fn open_needs_pending_below_warning_to_half_open() {
    let mut circuit = open_at(0);
    assert_eq!(pending(&mut circuit, &hold(), 60, WARNING).transition, None);
    assert_eq!(circuit.state, State::Open);
    pending(&mut circuit, &hold(), 61, WARNING - 1);
    assert_eq!(circuit.state, State::HalfOpen);
}

#[test]
fn half_open_reopens_at_critical_and_restarts_the_dwell() {
    let mut circuit = open_at(0);
    pending(&mut circuit, &hold(), 30, 0);
    let transition = pending(&mut circuit, &hold(), 31, CRITICAL)
        .transition
        .expect("reopens");
    assert_eq!((transition.from, transition.to), (State::HalfOpen, State::Open));
    assert_eq!(circuit.opened_since, Some(t(31)));
    assert_eq!(
        circuit.throttling_since,
        Some(t(0)),
        "still throttling since the first opening"
    );
    pending(&mut circuit, &hold(), 60, 0);
    assert_eq!(circuit.state, State::Open, "dwell counts from the reopening");
}

#[test]
fn half_open_closes_at_recovery_and_holds_above_it() {
    let mut circuit = open_at(0);
    pending(&mut circuit, &hold(), 30, 0);
    assert_eq!(circuit.state, State::HalfOpen);
    assert_eq!(pending(&mut circuit, &hold(), 31, RECOVERY + 1).transition, None);
    let transition = pending(&mut circuit, &hold(), 32, RECOVERY)
        .transition
        .expect("closes");
    assert_eq!((transition.from, transition.to), (State::HalfOpen, State::Closed));
    assert_eq!(circuit.opened_since, None);
    assert_eq!(circuit.throttling_since, None);
    assert_eq!(circuit.transitions, 3);
}

#[test]
fn one_tick_makes_one_transition() {
    let mut circuit = open_at(0);
    pending(&mut circuit, &hold(), 100, 0);
    assert_eq!(
        circuit.state,
        State::HalfOpen,
        "Open goes to HalfOpen, not straight to Closed"
    );
}

#[test]
fn level_follows_the_thresholds() {
    let r = hold();
    assert_eq!(r.level_of(&measure(WARNING - 1)), Level::Normal);
    assert_eq!(r.level_of(&measure(WARNING)), Level::Warning);
    assert_eq!(r.level_of(&measure(CRITICAL - 1)), Level::Warning);
    assert_eq!(r.level_of(&measure(CRITICAL)), Level::Critical);
    let mut circuit = Circuit::default();
    let decision = pending(&mut circuit, &r, 0, WARNING);
    assert_eq!(decision.level_change, Some((Level::Normal, Level::Warning)));
    assert_eq!(pending(&mut circuit, &r, 1, WARNING + 1).level_change, None);
}

#[test]
fn prolonged_after_alert_after_not_closed_once() {
    let mut circuit = open_at(0);
    assert!(!pending(&mut circuit, &hold(), 599, CRITICAL).prolonged_started);
    assert!(pending(&mut circuit, &hold(), 600, CRITICAL).prolonged_started);
    assert!(circuit.prolonged);
    assert!(
        !pending(&mut circuit, &hold(), 601, CRITICAL).prolonged_started,
        "reported once"
    );
}

#[test]
fn prolonged_counts_across_half_open_and_clears_when_closed() {
    let mut circuit = open_at(0);
    pending(&mut circuit, &hold(), 30, 0);
    assert_eq!(circuit.state, State::HalfOpen);
    assert!(pending(&mut circuit, &hold(), 600, RECOVERY + 1).prolonged_started);
    pending(&mut circuit, &hold(), 601, 0);
    assert_eq!(circuit.state, State::Closed);
    assert!(!circuit.prolonged);
}

#[test]
fn reset_forces_closed_once_per_value() {
    let mut circuit = open_at(0);
    let decision = circuit.step(&hold(), t(1), Observation::pending(CRITICAL), Some("a"));
    assert!(decision.reset_applied);
    let transition = decision.transition.expect("reset closes");
    assert_eq!(transition.to, State::Closed);
    assert_eq!(transition.cause, Cause::Reset { value: "a".into() });
    assert_eq!(circuit.last_reset.as_deref(), Some("a"));
    let again = circuit.step(&hold(), t(2), Observation::pending(CRITICAL), Some("a"));
    assert!(!again.reset_applied, "the same value is not applied twice");
    assert_eq!(
        again.transition.map(|t| t.to),
        Some(State::Open),
        "rules apply again"
    );
    let next = circuit.step(&hold(), t(3), Observation::pending(CRITICAL), Some("b"));
    assert!(next.reset_applied);
    assert_eq!(circuit.state, State::Closed);
}

#[test]
fn reset_while_closed_is_recorded_without_transition() {
    let mut circuit = Circuit::default();
    let decision = circuit.step(&hold(), t(0), Observation::pending(0), Some("x"));
    assert!(decision.reset_applied);
    assert_eq!(decision.transition, None);
    assert_eq!(circuit.transitions, 0);
}

#[test]
fn failed_samples_hold_keeps_the_state() {
    let mut circuit = open_at(0);
    for second in 1..=10 {
        let decision = circuit.step(&hold(), t(second), Observation::SampleFailed, None);
        assert_eq!(decision.transition, None);
    }
    assert_eq!(circuit.state, State::Open);
    assert_eq!(circuit.failed_in_a_row, 10);
    assert_eq!(
        circuit.level,
        Level::Critical,
        "a failed sample keeps the last level"
    );
}

#[test]
fn failed_samples_open_after_n_in_a_row() {
    let r = rules(SampleFailureAction::Open, 3);
    let mut circuit = Circuit::default();
    circuit.step(&r, t(0), Observation::SampleFailed, None);
    circuit.step(&r, t(1), Observation::SampleFailed, None);
    assert_eq!(circuit.state, State::Closed);
    let transition = circuit
        .step(&r, t(2), Observation::SampleFailed, None)
        .transition
        .expect("opens");
    assert_eq!(transition.to, State::Open);
    assert_eq!(
        transition.cause.to_string(),
        "3 failed samples in a row, onSampleFailure Open"
    );
}

#[test]
fn a_good_sample_resets_the_failure_count() {
    let r = rules(SampleFailureAction::Open, 3);
    let mut circuit = Circuit::default();
    circuit.step(&r, t(0), Observation::SampleFailed, None);
    circuit.step(&r, t(1), Observation::SampleFailed, None);
    pending(&mut circuit, &r, 2, 0);
    circuit.step(&r, t(3), Observation::SampleFailed, None);
    circuit.step(&r, t(4), Observation::SampleFailed, None);
    assert_eq!(circuit.state, State::Closed);
}

#[test]
fn failed_samples_close_lets_traffic_through() {
    let r = rules(SampleFailureAction::Close, 2);
    let mut circuit = open_at(0);
    circuit.step(&r, t(1), Observation::SampleFailed, None);
    assert_eq!(circuit.state, State::Open);
    let transition = circuit
        .step(&r, t(2), Observation::SampleFailed, None)
        .transition
        .expect("closes");
    assert_eq!(transition.to, State::Closed);
}

#[test]
fn accepts_by_state_and_priority() {
    let r = hold();
    assert!(r.accepts(State::Closed, 1000));
    assert!(r.accepts(State::HalfOpen, 5));
    assert!(!r.accepts(State::HalfOpen, 6));
    assert!(r.accepts(State::Open, 1));
    assert!(!r.accepts(State::Open, 2));
}

fn tick() -> impl Strategy<Value = (i64, Option<u64>)> {
    (
        1i64..20,
        prop_oneof![9 => (0u64..300).prop_map(Some), 1 => Just(None)],
    )
}

fn run(r: &CircuitRules, ticks: &[(i64, Option<u64>)]) -> Vec<(Circuit, Decision, i64, Option<u64>)> {
    let mut circuit = Circuit::default();
    let mut now = 0;
    let mut trace = Vec::new();
    for &(gap, value) in ticks {
        now += gap;
        let observation = value.map_or(Observation::SampleFailed, Observation::pending);
        let decision = circuit.step(r, t(now), observation, None);
        trace.push((circuit.clone(), decision, now, value));
    }
    trace
}

fn any_rules() -> impl Strategy<Value = CircuitRules> {
    prop_oneof![
        Just(SampleFailureAction::Hold),
        Just(SampleFailureAction::Open),
        Just(SampleFailureAction::Close)
    ]
    .prop_flat_map(|action| (1u32..5).prop_map(move |after| rules(action, after)))
}

proptest! {
    #[test]
    fn never_leaves_open_before_min_open(r in any_rules(), ticks in prop::collection::vec(tick(), 1..200)) {
        let mut previous = Circuit::default();
        for (circuit, decision, now, _) in run(&r, &ticks) {
            if let Some(transition) = &decision.transition
                && transition.from == State::Open
                && !matches!(transition.cause, Cause::SampleFailures { .. })
            {
                let since = previous.opened_since.expect("an open circuit knows since when");
                prop_assert!(t(now).duration_since(since) >= r.min_open);
            }
            previous = circuit;
        }
    }

    #[test]
    fn open_after_any_tick_at_or_above_critical(r in any_rules(), ticks in prop::collection::vec(tick(), 1..200)) {
        for (circuit, _, _, value) in run(&r, &ticks) {
            if value.is_some_and(|v| v >= CRITICAL) {
                prop_assert_eq!(circuit.state, State::Open);
            }
        }
    }

    #[test]
    fn no_transition_inside_the_hysteresis_band(
        start in prop::collection::vec(tick(), 0..50),
        band in prop::collection::vec((1i64..100, WARNING..CRITICAL), 1..100),
    ) {
        let r = hold();
        let mut circuit = Circuit::default();
        let mut now = 0;
        for (gap, value) in start {
            now += gap;
            circuit.step(&r, t(now), value.map_or(Observation::SampleFailed, Observation::pending), None);
        }
        let state = circuit.state;
        for (gap, value) in band {
            now += gap;
            let decision = circuit.step(&r, t(now), Observation::pending(value), None);
            prop_assert_eq!(decision.transition, None);
            prop_assert_eq!(circuit.state, state);
        }
    }

    #[test]
    fn closed_and_half_open_hold_between_recovery_and_critical(
        r in any_rules(),
        ticks in prop::collection::vec((1i64..20, (RECOVERY + 1)..CRITICAL), 1..100),
    ) {
        let mut circuit = Circuit::default();
        let mut now = 0;
        for (gap, value) in ticks {
            now += gap;
            prop_assert!(circuit.step(&r, t(now), Observation::pending(value), None).transition.is_none());
        }
    }

    #[test]
    fn level_is_the_level_of_the_last_good_sample(r in any_rules(), ticks in prop::collection::vec(tick(), 1..200)) {
        let mut last = None;
        for (circuit, _, _, value) in run(&r, &ticks) {
            last = value.or(last);
            prop_assert_eq!(circuit.level, last.map_or(Level::Normal, |v| r.level_of(&measure(v))));
        }
    }

    #[test]
    fn transitions_count_every_change(r in any_rules(), ticks in prop::collection::vec(tick(), 1..200)) {
        let trace = run(&r, &ticks);
        let changes = trace.iter().filter(|(_, d, _, _)| d.transition.is_some()).count() as u64;
        prop_assert_eq!(trace.last().map_or(0, |(c, _, _, _)| c.transitions), changes);
        for (circuit, decision, now, _) in &trace {
            if let Some(transition) = &decision.transition {
                prop_assert_eq!(circuit.state, transition.to);
                prop_assert_eq!(circuit.last_transition, Some(t(*now)));
            }
        }
    }

    #[test]
    fn open_lets_through_no_more_than_half_open(priority in 1u32..1000, r in any_rules()) {
        if r.accepts(State::Open, priority) {
            prop_assert!(r.accepts(State::HalfOpen, priority));
        }
        prop_assert!(r.accepts(State::Closed, priority));
    }
}

#[test]
fn memory_alone_opens_at_critical_and_closes_at_recovery() {
    let rules = with_memory(false);
    let mut circuit = Circuit::default();
    assert_eq!(
        step(&mut circuit, &rules, 0, filled(0, 700, Some(1000))).transition,
        None
    );
    assert_eq!(circuit.level, Level::Warning);
    let opened = step(&mut circuit, &rules, 1, filled(0, 850, Some(1000)))
        .transition
        .unwrap();
    assert_eq!(
        opened.cause,
        Cause::MemoryCritical {
            used: 850,
            critical: MemoryAmount::Percent(85),
            critical_bytes: 850,
        }
    );
    assert_eq!(circuit.level, Level::Critical);
    // Below warning only after the dwell; then at or below recovery to close.
    assert_eq!(
        step(&mut circuit, &rules, 10, filled(0, 650, Some(1000))).transition,
        None
    );
    let half = step(&mut circuit, &rules, 31, filled(0, 650, Some(1000)))
        .transition
        .unwrap();
    assert_eq!(half.to, State::HalfOpen);
    assert_eq!(
        step(&mut circuit, &rules, 32, filled(0, 601, Some(1000))).transition,
        None
    );
    let closed = step(&mut circuit, &rules, 33, filled(0, 600, Some(1000)))
        .transition
        .unwrap();
    assert_eq!(closed.to, State::Closed);
}

#[test]
fn the_worst_signal_sets_the_level_and_memory_keeps_an_open_circuit_open() {
    let rules = with_memory(true);
    let mut circuit = Circuit::default();
    // Few jobs, but big ones: memory alone opens.
    let opened = step(&mut circuit, &rules, 0, filled(10, 900, Some(1000)));
    assert_eq!(opened.transition.unwrap().to, State::Open);
    // The backlog drained, memory still above warning: no half-open after the dwell.
    assert_eq!(
        step(&mut circuit, &rules, 40, filled(0, 750, Some(1000))).transition,
        None
    );
    assert_eq!(circuit.level, Level::Warning);
}

#[test]
fn percentages_of_no_limit_and_unread_memory_drive_nothing() {
    let rules = with_memory(false);
    let unlimited = filled(0, u64::MAX, None);
    assert!(!rules.memory_readable(&unlimited));
    assert!(!rules.memory_readable(&measure(0)));
    assert_eq!(rules.level_of(&unlimited), Level::Normal);
    let quantities = CircuitRules {
        memory: Some(Bands {
            warning: MemoryAmount::Bytes(70),
            critical: MemoryAmount::Bytes(85),
            recovery: MemoryAmount::Bytes(60),
        }),
        ..hold()
    };
    assert!(quantities.memory_readable(&filled(0, 90, None)));
    assert_eq!(quantities.level_of(&filled(0, 90, None)), Level::Critical);
    assert!(hold().memory_readable(&measure(0)));
}
