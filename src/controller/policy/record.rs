//! What a tick leaves behind for observers: Prometheus series and the published values (served
//! by the external metrics API and rendered into `/metrics`).

use crate::api::BackpressurePolicy;
use crate::circuit::{Circuit, Transition};
use crate::controller::cache::secrets::EndpointProblem;
use crate::controller::{Context, Published};
use crate::forecast::Forecast;
use crate::sampler::Sample;
use crate::telemetry::Change;
use crate::values::{CircuitValues, MemoryValues, PolicyValues, QueueValues, Source};
use jiff::Timestamp;
use kube::ResourceExt;
use std::time::Instant;

/// The sample's series: its duration, and a failure (`levee_pending` and `levee_queue_depth`
/// are rendered from the published values, see `publish_values`).
pub fn record_sample(
    published: &Published,
    namespace: &str,
    name: &str,
    sample: &Result<Sample, EndpointProblem>,
) {
    // Exported from the first tick on, at 0 until a sample fails: "no sample failed" is then a
    // series that reads 0, not one that is missing.
    let change = match sample {
        Ok(sample) => Change::Sample {
            took: Some(sample.duration.as_secs_f64()),
            failed: sample.failed(),
        },
        Err(_) => Change::Sample {
            took: None,
            failed: true,
        },
    };
    published.metrics.policies.record(namespace, name, change);
}

/// Publishes the sample's values (every replica serves them): the external metrics API answers
/// with them, `/metrics` shows them. A queue that could not be read keeps its last depth, and a
/// Redis that cannot be reached keeps the last backlog; `failed` says the values are not fresh.
pub fn publish_values(
    context: &Context,
    policy: &BackpressurePolicy,
    sample: &Result<Sample, EndpointProblem>,
    forecast: Option<Forecast>,
) {
    let (namespace, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    let (pending, queues, latency, sampled_at) = match sample {
        Ok(sample) => (
            sample.pending(),
            sample
                .queues
                .iter()
                .map(|q| {
                    let latency = q.latency.as_ref().and_then(|l| l.as_ref().ok().copied());
                    QueueValues::new(&q.name, q.depth.as_ref().ok().copied(), latency)
                })
                .collect(),
            sample.latency(),
            sample.at,
        ),
        Err(_) => (0, Vec::new(), None, Timestamp::now()),
    };
    let mut values = PolicyValues {
        failed: sample.as_ref().map_or(true, Sample::failed),
        namespace,
        policy: name,
        pending,
        queues,
        latency,
        forecast,
        sampled_at,
        sampled: Instant::now(),
        interval: policy.spec.sample_interval.into(),
        circuit: None,
        memory: sample
            .as_ref()
            .ok()
            .and_then(|s| s.memory.as_ref())
            .and_then(|m| m.as_ref().ok())
            .map(|m| MemoryValues {
                used: m.used_bytes,
                max: m.max_bytes,
                warning: policy
                    .spec
                    .thresholds
                    .memory()
                    .and_then(|bands| bands.warning.bytes(m.max_bytes)),
            }),
        source: if context.owners.owns(policy) {
            Source::Owner
        } else {
            Source::Follower
        },
        published: 0,
        changed: 0,
    };
    if let Some(previous) = context.published.values.get(&values.namespace, &values.policy) {
        values.keep_last_known(&previous, sample.is_err());
    }
    context.published.values.publish(values);
}

/// The circuit's series (state, level, Prolonged) and its published values (the external
/// scaler pushes a change of them).
pub fn record_circuit(published: &Published, namespace: &str, name: &str, circuit: &Circuit) {
    published.values.publish_circuit(
        namespace,
        name,
        CircuitValues {
            state: circuit.state,
            level: circuit.level,
        },
    );
    record_circuit_series(published, namespace, name, circuit);
}

/// The circuit's series alone.
pub fn record_circuit_series(published: &Published, namespace: &str, name: &str, circuit: &Circuit) {
    let change = Change::Circuit {
        state: circuit.state,
        level: circuit.level,
        prolonged: circuit.prolonged,
    };
    published.metrics.policies.record(namespace, name, change);
}

/// Counts a transition.
pub fn record_transition(published: &Published, namespace: &str, name: &str, transition: &Transition) {
    let change = Change::Transition {
        from: transition.from,
        to: transition.to,
    };
    published.metrics.policies.record(namespace, name, change);
}
