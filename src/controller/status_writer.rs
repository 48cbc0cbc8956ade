//! Builds a policy's status from a tick and writes it with server-side apply (field manager
//! `levee`) when something a person would notice changed, or on the heartbeat: never on every
//! tick just because the pending count moved.

use super::actuator::Outcome;
use super::secrets::EndpointProblem;
use super::{Context, FIELD_MANAGER};
use crate::api::status::{ConditionValue, condition};
use crate::api::{BackpressurePolicy, BackpressurePolicyStatus, QueueStatus};
use crate::circuit::Circuit;
use crate::sampler::Sample;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

/// What one tick found.
pub struct TickReport<'a> {
    pub circuit: &'a Circuit,
    pub sample: Result<&'a Sample, &'a EndpointProblem>,
    pub targets: &'a Outcome,
    pub dry_run: bool,
    pub now: Timestamp,
}

/// The status after a tick, starting from the previous one (conditions keep their times).
pub fn next_status(
    policy: &BackpressurePolicy,
    previous: &BackpressurePolicyStatus,
    report: &TickReport,
) -> BackpressurePolicyStatus {
    let mut status = previous.clone();
    status.observed_generation = policy.metadata.generation;
    let now = report.now;
    match report.sample {
        Ok(sample) => {
            status.last_sample_time = Some(Time(sample.at));
            status.pending = Some(sample.pending());
            status.queues = sample
                .queues
                .iter()
                .map(|q| QueueStatus {
                    name: q.name.clone(),
                    depth: q.depth.as_ref().ok().copied(),
                    error: q.depth.as_ref().err().cloned(),
                })
                .collect();
            let reachable = match &sample.unreachable {
                None => ConditionValue::new(true, "Sampled", "Redis answered the last sample", now),
                Some(error) => ConditionValue::new(false, "SampleFailed", error, now),
            };
            status.set_condition(condition::REDIS_REACHABLE, reachable);
        }
        Err(problem) => {
            let value = ConditionValue::new(false, problem.reason, &problem.message, now);
            status.set_condition(condition::REDIS_REACHABLE, value);
        }
    }
    status.record(report.circuit, now);
    status.set_condition(condition::READY, readiness(report, now));
    status
}

fn readiness(report: &TickReport, now: Timestamp) -> ConditionValue {
    let not_ready = |reason: &str, message: &str| ConditionValue::new(false, reason, message, now);
    match report.sample {
        Err(problem) => return not_ready(problem.reason, &problem.message),
        Ok(sample) => {
            if let Some(error) = &sample.unreachable {
                return not_ready("RedisUnreachable", error);
            }
            if let Some(queue) = sample.queues.iter().find(|q| q.depth.is_err()) {
                let message = format!(
                    "queue {}: {}",
                    queue.name,
                    queue.depth.as_ref().err().map_or("", String::as_str)
                );
                return not_ready("QueueUnreadable", &message);
            }
        }
    }
    if !report.targets.missing.is_empty() {
        let message = format!(
            "{} not found: create it or fix spec.targets",
            report.targets.missing.join(", ")
        );
        return not_ready("TargetNotFound", &message);
    }
    if let Some(error) = report.targets.errors.first() {
        return not_ready("TargetUpdateFailed", error);
    }
    if report.dry_run {
        return ConditionValue::new(
            true,
            "DryRun",
            "sampling and deciding; dryRun: targets are left accepting",
            now,
        );
    }
    ConditionValue::new(
        true,
        "Active",
        "sampling queues and holding back producers as the circuit decides",
        now,
    )
}

/// Whether `new` differs from `old` in something other than the live numbers (pending, depths,
/// sample time), which are written on the heartbeat only.
pub fn worth_writing(old: &BackpressurePolicyStatus, new: &BackpressurePolicyStatus) -> bool {
    let conditions = |s: &BackpressurePolicyStatus| -> Vec<(String, String, String, String)> {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    let queue_errors = |s: &BackpressurePolicyStatus| -> Vec<(String, Option<String>)> {
        s.queues
            .iter()
            .map(|q| (q.name.clone(), q.error.clone()))
            .collect()
    };
    old.state != new.state
        || old.level != new.level
        || old.transitions != new.transitions
        || old.last_reset != new.last_reset
        || old.observed_generation != new.observed_generation
        || conditions(old) != conditions(new)
        || queue_errors(old) != queue_errors(new)
}

/// Server-side applies `status` to the policy's status subresource.
pub async fn write(
    context: &Context,
    policy: &BackpressurePolicy,
    status: &BackpressurePolicyStatus,
) -> kube::Result<()> {
    let api: Api<BackpressurePolicy> =
        Api::namespaced(context.client.clone(), &policy.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "levee.dev/v1alpha1",
        "kind": "BackpressurePolicy",
        "status": status,
    });
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    context.metrics.api_writes.with_label_values(&["status"]).inc();
    Ok(())
}
