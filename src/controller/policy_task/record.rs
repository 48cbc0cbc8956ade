//! What a tick leaves behind for observers: Prometheus series and the values the external
//! metrics API serves.

use super::super::Context;
use super::super::secrets::EndpointProblem;
use crate::api::BackpressurePolicy;
use crate::circuit::{Circuit, Level, State, Transition};
use crate::metrics_api::values::PolicyValues;
use crate::sampler::Sample;
use jiff::Timestamp;
use kube::ResourceExt;
use std::time::Instant;

/// The sample's series: duration, pending, depth per queue, failures.
pub fn record_sample(
    context: &Context,
    namespace: &str,
    name: &str,
    sample: &Result<Sample, EndpointProblem>,
) {
    let metrics = &context.metrics;
    match sample {
        Ok(sample) => {
            metrics
                .sample_duration
                .with_label_values(&[namespace, name])
                .observe(sample.duration.as_secs_f64());
            metrics
                .pending
                .with_label_values(&[namespace, name])
                .set(sample.pending() as i64);
            for queue in &sample.queues {
                if let Ok(depth) = queue.depth {
                    metrics
                        .queue_depth
                        .with_label_values(&[namespace, name, &queue.name])
                        .set(depth as i64);
                }
            }
            if sample.failed() {
                metrics
                    .sample_failures
                    .with_label_values(&[namespace, name])
                    .inc();
            }
        }
        Err(_) => metrics
            .sample_failures
            .with_label_values(&[namespace, name])
            .inc(),
    }
}

/// Hands the sample to the external metrics API (every replica serves metrics).
pub fn publish_values(
    context: &Context,
    policy: &BackpressurePolicy,
    sample: &Result<Sample, EndpointProblem>,
) {
    let (pending, queues, sampled_at, failed) = match sample {
        Ok(sample) => (
            sample.pending(),
            sample
                .queues
                .iter()
                .map(|q| (q.name.clone(), q.depth.as_ref().ok().copied()))
                .collect(),
            sample.at,
            sample.failed(),
        ),
        Err(_) => (0, Vec::new(), Timestamp::now(), true),
    };
    context.values.publish(PolicyValues {
        namespace: policy.namespace().unwrap_or_default(),
        policy: policy.name_any(),
        pending,
        queues,
        sampled_at,
        sampled: Instant::now(),
        failed,
        interval: policy.spec.sample_interval.into(),
    });
}

/// The circuit's series: state, level, Prolonged.
pub fn record_circuit(context: &Context, namespace: &str, name: &str, circuit: &Circuit) {
    let state = match circuit.state {
        State::Closed => 0,
        State::HalfOpen => 1,
        State::Open => 2,
    };
    let level = match circuit.level {
        Level::Normal => 0,
        Level::Warning => 1,
        Level::Critical => 2,
    };
    context
        .metrics
        .circuit_state
        .with_label_values(&[namespace, name])
        .set(state);
    context
        .metrics
        .level
        .with_label_values(&[namespace, name])
        .set(level);
    context
        .metrics
        .prolonged
        .with_label_values(&[namespace, name])
        .set(i64::from(circuit.prolonged));
}

/// Counts a transition.
pub fn record_transition(context: &Context, namespace: &str, name: &str, transition: &Transition) {
    let labels = [
        namespace,
        name,
        &transition.from.to_string(),
        &transition.to.to_string(),
    ];
    context.metrics.transitions.with_label_values(&labels).inc();
}
