//! The series this replica keeps of each policy it acts on (`levee_circuit_state`,
//! `levee_level`, `levee_prolonged`, `levee_throttled_targets`, `levee_transitions_total`,
//! `levee_sample_failures_total`, `levee_sample_duration_seconds`), a few numbers a policy
//! written straight into the text exposition at each scrape. The Prometheus client kept each
//! series as a metric of its own holding a copy of its family's name, help and label names and
//! a label pair per label: 3,177 bytes a policy against 602 here (`cargo bench --bench
//! telemetry`, docs/benchmarks.md#metrics).

use super::text::{FamilyText, write_number};
use crate::circuit::{Level, State};
use std::collections::HashMap;
use std::sync::Mutex;

/// `levee_sample_duration_seconds`'s bucket bounds, in seconds.
const DURATION_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The circuit's states, in the order of `levee_circuit_state`'s values.
const STATES: [State; 3] = [State::Closed, State::HalfOpen, State::Open];

/// The series of one policy. A gauge never set, a histogram never observed, a transition never
/// counted has no series.
#[derive(Clone, Debug, Default, PartialEq)]
struct Series {
    circuit_state: Option<i64>,
    level: Option<i64>,
    prolonged: Option<i64>,
    throttled_targets: Option<i64>,
    /// `Some` from the first sample on: "no sample failed" is a series that reads 0.
    sample_failures: Option<u64>,
    sample_duration: Option<Durations>,
    /// By `from * 3 + to` (`STATES`' order).
    transitions: [u64; 9],
}

/// A histogram of sample durations: the count at or below each bound, not cumulated.
#[derive(Clone, Debug, Default, PartialEq)]
struct Durations {
    buckets: [u64; DURATION_BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Durations {
    fn observe(&mut self, seconds: f64) {
        if let Some(at) = DURATION_BOUNDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[at] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What a tick changes in a policy's series.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// The circuit: its state and level, and whether it is Prolonged.
    Circuit {
        state: State,
        level: Level,
        prolonged: bool,
    },
    /// A state change.
    Transition { from: State, to: State },
    /// A sample: how long it took (none when it could not be taken), and whether it failed.
    Sample { took: Option<f64>, failed: bool },
    /// How many of its targets are held back.
    ThrottledTargets(usize),
}

/// Series by namespace, then policy name.
type ByNamespace = HashMap<Box<str>, HashMap<Box<str>, Series>>;

/// Every policy's series.
#[derive(Default)]
pub struct PolicySeries {
    policies: Mutex<ByNamespace>,
}

/// A family with one series a policy: its name, help, type and value.
struct OneAPolicy {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: fn(&Series) -> Option<f64>,
}

const ONE_A_POLICY: [OneAPolicy; 5] = [
    OneAPolicy {
        name: "levee_circuit_state",
        help: "Circuit state: 0 Closed, 1 HalfOpen, 2 Open",
        kind: "gauge",
        value: |s| s.circuit_state.map(|v| v as f64),
    },
    OneAPolicy {
        name: "levee_level",
        help: "Backlog level: 0 Normal, 1 Warning, 2 Critical",
        kind: "gauge",
        value: |s| s.level.map(|v| v as f64),
    },
    OneAPolicy {
        name: "levee_prolonged",
        help: "1 while the Prolonged condition is True (not Closed for circuit.alertAfter)",
        kind: "gauge",
        value: |s| s.prolonged.map(|v| v as f64),
    },
    OneAPolicy {
        name: "levee_throttled_targets",
        help: "Targets currently held back",
        kind: "gauge",
        value: |s| s.throttled_targets.map(|v| v as f64),
    },
    OneAPolicy {
        name: "levee_sample_failures_total",
        help: "Ticks whose sample failed",
        kind: "counter",
        value: |s| s.sample_failures.map(|v| v as f64),
    },
];

impl PolicySeries {
    /// Applies `change` to the series of `namespace/policy`.
    pub fn record(&self, namespace: &str, policy: &str, change: Change) {
        let mut policies = self.policies.lock().expect("policy series lock");
        let in_namespace = match policies.get_mut(namespace) {
            Some(held) => held,
            None => policies.entry(namespace.into()).or_default(),
        };
        let series = match in_namespace.get_mut(policy) {
            Some(held) => held,
            None => in_namespace.entry(policy.into()).or_default(),
        };
        match change {
            Change::Circuit {
                state,
                level,
                prolonged,
            } => {
                series.circuit_state = Some(state_index(state) as i64);
                series.level = Some(match level {
                    Level::Normal => 0,
                    Level::Warning => 1,
                    Level::Critical => 2,
                });
                series.prolonged = Some(i64::from(prolonged));
            }
            Change::Transition { from, to } => {
                series.transitions[state_index(from) * STATES.len() + state_index(to)] += 1;
            }
            Change::Sample { took, failed } => {
                *series.sample_failures.get_or_insert(0) += u64::from(failed);
                if let Some(seconds) = took {
                    series.sample_duration.get_or_insert_default().observe(seconds);
                }
            }
            Change::ThrottledTargets(count) => {
                series.throttled_targets = Some(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    /// Drops every series of `namespace/policy` (deleted).
    pub fn forget(&self, namespace: &str, policy: &str) {
        let mut policies = self.policies.lock().expect("policy series lock");
        if let Some(in_namespace) = policies.get_mut(namespace) {
            in_namespace.remove(policy);
            if in_namespace.is_empty() {
                policies.remove(namespace);
            }
        }
    }

    /// Appends every family with at least one series to `out`, policies sorted by namespace and
    /// name, labels sorted by name (a histogram's `le` last), as the Prometheus client wrote them.
    pub fn write(&self, out: &mut String) {
        let policies = self.policies.lock().expect("policy series lock");
        let mut sorted: Vec<(&str, &str, &Series)> = policies
            .iter()
            .flat_map(|(namespace, in_namespace)| {
                in_namespace
                    .iter()
                    .map(move |(policy, series)| (&**namespace, &**policy, series))
            })
            .collect();
        sorted.sort_unstable_by_key(|(namespace, policy, _)| (*namespace, *policy));
        for family in &ONE_A_POLICY {
            let mut text = FamilyText::new(family.name, family.help, family.kind);
            for (namespace, policy, series) in &sorted {
                if let Some(value) = (family.value)(series) {
                    let labels = [("namespace", *namespace), ("policy", *policy)];
                    text.series(out, family.name, &labels, value);
                }
            }
        }
        write_durations(&sorted, out);
        write_transitions(&sorted, out);
    }
}

fn write_durations(sorted: &[(&str, &str, &Series)], out: &mut String) {
    const NAME: &str = "levee_sample_duration_seconds";
    let mut family = FamilyText::new(NAME, "Time to sample all queues of a policy", "histogram");
    let mut bound = String::new();
    for (namespace, policy, series) in sorted {
        let Some(durations) = &series.sample_duration else {
            continue;
        };
        let mut cumulated = 0;
        for (at, count) in durations.buckets.iter().enumerate() {
            cumulated += count;
            bound.clear();
            write_number(DURATION_BOUNDS[at], &mut bound);
            let labels = [
                ("namespace", *namespace),
                ("policy", *policy),
                ("le", bound.as_str()),
            ];
            family.series(
                out,
                "levee_sample_duration_seconds_bucket",
                &labels,
                cumulated as f64,
            );
        }
        let labels = [("namespace", *namespace), ("policy", *policy), ("le", "+Inf")];
        family.series(
            out,
            "levee_sample_duration_seconds_bucket",
            &labels,
            durations.count as f64,
        );
        let labels = [("namespace", *namespace), ("policy", *policy)];
        family.series(out, "levee_sample_duration_seconds_sum", &labels, durations.sum);
        family.series(
            out,
            "levee_sample_duration_seconds_count",
            &labels,
            durations.count as f64,
        );
    }
}

fn write_transitions(sorted: &[(&str, &str, &Series)], out: &mut String) {
    const NAME: &str = "levee_transitions_total";
    let mut family = FamilyText::new(NAME, "Circuit state changes", "counter");
    for (namespace, policy, series) in sorted {
        for (at, count) in series.transitions.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let (from, to) = (
                STATES[at / STATES.len()].to_string(),
                STATES[at % STATES.len()].to_string(),
            );
            let labels = [
                ("from", from.as_str()),
                ("namespace", *namespace),
                ("policy", *policy),
                ("to", to.as_str()),
            ];
            family.series(out, NAME, &labels, *count as f64);
        }
    }
}

fn state_index(state: State) -> usize {
    match state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policys_series_are_written_as_the_text_format_has_them() {
        let series = PolicySeries::default();
        series.record(
            "jobs",
            "p",
            Change::Sample {
                took: Some(0.003),
                failed: false,
            },
        );
        series.record(
            "jobs",
            "p",
            Change::Sample {
                took: None,
                failed: true,
            },
        );
        series.record(
            "jobs",
            "p",
            Change::Transition {
                from: State::Closed,
                to: State::Open,
            },
        );
        series.record(
            "jobs",
            "p",
            Change::Circuit {
                state: State::Open,
                level: Level::Critical,
                prolonged: false,
            },
        );
        series.record("jobs", "p", Change::ThrottledTargets(1));
        let mut out = String::new();
        series.write(&mut out);
        for line in [
            "# HELP levee_circuit_state Circuit state: 0 Closed, 1 HalfOpen, 2 Open\n# TYPE levee_circuit_state gauge\n",
            "levee_circuit_state{namespace=\"jobs\",policy=\"p\"} 2\n",
            "levee_level{namespace=\"jobs\",policy=\"p\"} 2\n",
            "levee_prolonged{namespace=\"jobs\",policy=\"p\"} 0\n",
            "levee_throttled_targets{namespace=\"jobs\",policy=\"p\"} 1\n",
            "# TYPE levee_sample_failures_total counter\nlevee_sample_failures_total{namespace=\"jobs\",policy=\"p\"} 1\n",
            "# TYPE levee_sample_duration_seconds histogram\n",
            "levee_sample_duration_seconds_bucket{namespace=\"jobs\",policy=\"p\",le=\"0.0025\"} 0\n",
            "levee_sample_duration_seconds_bucket{namespace=\"jobs\",policy=\"p\",le=\"0.005\"} 1\n",
            "levee_sample_duration_seconds_bucket{namespace=\"jobs\",policy=\"p\",le=\"2.5\"} 1\n",
            "levee_sample_duration_seconds_bucket{namespace=\"jobs\",policy=\"p\",le=\"+Inf\"} 1\n",
            "levee_sample_duration_seconds_sum{namespace=\"jobs\",policy=\"p\"} 0.003\n",
            "levee_sample_duration_seconds_count{namespace=\"jobs\",policy=\"p\"} 1\n",
            "levee_transitions_total{from=\"Closed\",namespace=\"jobs\",policy=\"p\",to=\"Open\"} 1\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        assert_eq!(
            out.matches("levee_transitions_total{").count(),
            1,
            "only counted pairs"
        );
    }

    /// The lines of the same series kept and encoded by the Prometheus client, as levee did
    /// before: every line `write` gives must be one of them, and the other way round.
    #[test]
    fn the_text_is_what_the_prometheus_client_wrote() {
        use prometheus::{
            HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
        };
        let registry = Registry::new();
        let labels = &["namespace", "policy"];
        let gauge = |name: &str, help: &str| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(gauge.clone())).unwrap();
            gauge
        };
        let state = gauge(
            "levee_circuit_state",
            "Circuit state: 0 Closed, 1 HalfOpen, 2 Open",
        );
        let level = gauge("levee_level", "Backlog level: 0 Normal, 1 Warning, 2 Critical");
        let prolonged = gauge(
            "levee_prolonged",
            "1 while the Prolonged condition is True (not Closed for circuit.alertAfter)",
        );
        let throttled = gauge("levee_throttled_targets", "Targets currently held back");
        let failures = IntCounterVec::new(
            Opts::new("levee_sample_failures_total", "Ticks whose sample failed"),
            labels,
        )
        .unwrap();
        let transitions = IntCounterVec::new(
            Opts::new("levee_transitions_total", "Circuit state changes"),
            &["namespace", "policy", "from", "to"],
        )
        .unwrap();
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "levee_sample_duration_seconds",
                "Time to sample all queues of a policy",
            )
            .buckets(DURATION_BOUNDS.to_vec()),
            labels,
        )
        .unwrap();
        registry.register(Box::new(failures.clone())).unwrap();
        registry.register(Box::new(transitions.clone())).unwrap();
        registry.register(Box::new(durations.clone())).unwrap();

        let series = PolicySeries::default();
        for (namespace, policy, took) in [("jobs", "p", 0.0007), ("jobs", "q\"x", 3.0), ("a", "r", 0.02)] {
            let at = [namespace, policy];
            series.record(
                namespace,
                policy,
                Change::Sample {
                    took: Some(took),
                    failed: false,
                },
            );
            durations.with_label_values(&at).observe(took);
            failures.with_label_values(&at);
            series.record(
                namespace,
                policy,
                Change::Sample {
                    took: None,
                    failed: true,
                },
            );
            failures.with_label_values(&at).inc();
            let circuit = Change::Circuit {
                state: State::HalfOpen,
                level: Level::Warning,
                prolonged: true,
            };
            series.record(namespace, policy, circuit);
            state.with_label_values(&at).set(1);
            level.with_label_values(&at).set(1);
            prolonged.with_label_values(&at).set(1);
            series.record(namespace, policy, Change::ThrottledTargets(2));
            throttled.with_label_values(&at).set(2);
            for (from, to) in [
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::Closed, State::Open),
            ] {
                series.record(namespace, policy, Change::Transition { from, to });
                transitions
                    .with_label_values(&[namespace, policy, &from.to_string(), &to.to_string()])
                    .inc();
            }
        }
        let mut written = String::new();
        series.write(&mut written);
        let encoded = TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(
            sorted(&written),
            sorted(&encoded),
            "levee:\n{written}\nthe client:\n{encoded}"
        );
    }

    #[test]
    fn a_forgotten_policy_has_no_series_and_a_sample_counts_failures_from_zero() {
        let series = PolicySeries::default();
        series.record(
            "jobs",
            "p",
            Change::Sample {
                took: Some(0.001),
                failed: false,
            },
        );
        series.record("jobs", "q", Change::ThrottledTargets(0));
        let mut out = String::new();
        series.write(&mut out);
        assert!(out.contains("levee_sample_failures_total{namespace=\"jobs\",policy=\"p\"} 0\n"));
        assert!(
            !out.contains("levee_circuit_state"),
            "never set, no family:\n{out}"
        );
        series.forget("jobs", "p");
        series.forget("jobs", "q");
        let mut out = String::new();
        series.write(&mut out);
        assert_eq!(out, "");
    }

    #[test]
    fn policies_come_sorted_by_namespace_then_name() {
        let series = PolicySeries::default();
        for (namespace, policy) in [("b", "a"), ("a", "z"), ("a", "b")] {
            series.record(namespace, policy, Change::ThrottledTargets(0));
        }
        let mut out = String::new();
        series.write(&mut out);
        let order: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            order,
            [
                "levee_throttled_targets{namespace=\"a\",policy=\"b\"} 0",
                "levee_throttled_targets{namespace=\"a\",policy=\"z\"} 0",
                "levee_throttled_targets{namespace=\"b\",policy=\"a\"} 0",
            ]
        );
    }
}
