//! Publishing a policy's events (`events.k8s.io`), counted as API writes.

use crate::api::BackpressurePolicy;
use crate::controller::Kube;
use crate::telemetry::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

/// Publishes one event about the policy.
pub async fn publish(
    kube: &Kube,
    metrics: &Metrics,
    policy: &BackpressurePolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let reference: ObjectReference = policy.object_ref(&());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Decide".into(),
        secondary: None,
    };
    if let Err(error) = kube.recorder.publish(&event, &reference).await {
        tracing::warn!(%error, reason, "publishing an event failed");
    } else {
        metrics.api_writes.with_label_values(&["event"]).inc();
    }
}
