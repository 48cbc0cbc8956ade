//! Builds a policy's status from a tick and writes it with server-side apply (field manager
//! `levee`) when something a person would notice changed, or on the heartbeat: never on every
//! tick just because the pending count moved.

use crate::api::MemoryStatus;
use crate::api::status::{ConditionValue, condition, latency_seconds};
use crate::api::{
    BackendKind, BackpressurePolicy, BackpressurePolicyStatus, DiscoveryStatus, ForecastStatus, QueueStatus,
};
use crate::circuit::{Circuit, Thresholds};
use crate::controller::act::actuator::Outcome;
use crate::controller::cache::secrets::EndpointProblem;
use crate::controller::cache::sharing::Sharing;
use crate::forecast::Forecast;
use crate::sampler::{Memory, Sample};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

/// What one tick found.
pub struct TickReport<'a> {
    pub circuit: &'a Circuit,
    pub sample: Result<&'a Sample, &'a EndpointProblem>,
    pub targets: &'a Outcome,
    /// Why the HPA for `spec.scaleTarget` could not be applied, until it can.
    pub autoscaler_error: Option<&'a str>,
    /// A Kafka policy's partition count (the cap on its scaleTarget), once read.
    pub partition_cap: Option<u32>,
    /// The backlog's forecast, once there are enough samples.
    pub forecast: Option<Forecast>,
    /// What the last discovery of `keyPattern` entries found.
    pub discovery: Option<&'a DiscoveryStatus>,
    pub dry_run: bool,
    /// The targets other policies name too (`sharing.rs`).
    pub shared: &'a [Sharing],
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
    let kind = policy.spec.backend().map(|backend| backend.kind());
    let backend = kind.map_or("the backend", BackendKind::name);
    match report.sample {
        Ok(sample) => {
            status.last_sample_time = Some(Time(sample.at));
            status.pending = Some(sample.pending());
            status.latency_seconds = sample.latency().map(latency_seconds);
            status.queues = sample
                .queues
                .iter()
                .map(|q| QueueStatus {
                    name: q.name.clone(),
                    depth: q.depth.as_ref().ok().copied(),
                    error: q.depth.as_ref().err().cloned(),
                    latency_seconds: q
                        .latency
                        .as_ref()
                        .and_then(|l| l.as_ref().ok().copied())
                        .map(latency_seconds),
                    latency_error: q.latency.as_ref().and_then(|l| l.as_ref().err().cloned()),
                    partitions: q.partitions.map(|p| p.count),
                    max_partition_lag: q.partitions.map(|p| p.max_lag),
                })
                .collect();
            let reachable = match &sample.unreachable {
                None => ConditionValue::new(
                    true,
                    "Sampled",
                    &format!("{backend} answered the last sample"),
                    now,
                ),
                Some(error) => ConditionValue::new(false, "SampleFailed", error, now),
            };
            set_reachable(&mut status, kind, reachable);
            if let Some(memory) = &sample.memory {
                status.memory = Some(memory_status(memory));
                if let Ok(memory) = memory {
                    status.set_condition(condition::JOBS_SAFE, jobs_safe(memory, now));
                }
            }
        }
        Err(problem) => {
            let value = ConditionValue::new(false, problem.reason, &problem.message, now);
            set_reachable(&mut status, kind, value);
        }
    }
    if let (Some(target), Some(partitions)) = (&policy.spec.scale_target, report.partition_cap) {
        status.set_condition(condition::SCALE_CAPPED, scale_cap(target, partitions, now));
    }
    status.discovery = report.discovery.cloned();
    status.forecast = report.forecast.map(|forecast| ForecastStatus {
        growth_per_second: round(forecast.growth_per_second, 1000.0),
        critical_in_seconds: forecast.critical_in.map(|eta| round(eta.as_secs_f64(), 10.0)),
    });
    set_shared(&mut status, &policy.name_any(), report.shared, now);
    status.record(report.circuit, now);
    let thresholds = &policy.spec.thresholds;
    status.set_condition(condition::READY, readiness(report, kind, thresholds, now));
    status.bounded()
}

/// Shared targets described in the `TargetsShared` condition, at most; the rest are counted.
const SHARED_TARGETS_DESCRIBED: usize = 3;

/// `TargetsShared`: `True` naming the other policies while some share a target, `False` once
/// none does (absent on a policy that never shared one).
fn set_shared(status: &mut BackpressurePolicyStatus, policy: &str, shared: &[Sharing], now: Timestamp) {
    if shared.is_empty() {
        if status.condition(condition::TARGETS_SHARED).is_some() {
            let value = ConditionValue::new(
                false,
                "NotShared",
                "no other policy names this policy's targets",
                now,
            );
            status.set_condition(condition::TARGETS_SHARED, value);
        }
        return;
    }
    let mut message: Vec<String> = shared
        .iter()
        .take(SHARED_TARGETS_DESCRIBED)
        .map(|sharing| sharing.describe(policy))
        .collect();
    if shared.len() > SHARED_TARGETS_DESCRIBED {
        message.push(format!(
            "{} more targets are shared",
            shared.len() - SHARED_TARGETS_DESCRIBED
        ));
    }
    let value = ConditionValue::new(true, "SharedWithPolicy", &message.join("; "), now);
    status.set_condition(condition::TARGETS_SHARED, value);
}

/// A Redis sample's memory reading as status shows it.
fn memory_status(memory: &Result<Memory, String>) -> MemoryStatus {
    match memory {
        Ok(memory) => MemoryStatus {
            used_bytes: Some(memory.used_bytes),
            max_bytes: memory.max_bytes,
            eviction_policy: Some(memory.eviction_policy.clone()),
            node: Some(memory.node.clone()),
            error: None,
        },
        Err(error) => MemoryStatus {
            error: Some(error.clone()),
            ..MemoryStatus::default()
        },
    }
}

/// Why the tick could not judge a policy with memory thresholds by memory, if it could not.
fn memory_unreadable(thresholds: &Thresholds, sample: &Sample) -> Option<String> {
    let bands = thresholds.memory()?;
    match sample.memory.as_ref() {
        None => Some("thresholds.memory read Redis memory, and this backend has none: remove them".into()),
        Some(Err(error)) => Some(format!(
            "thresholds.memory need INFO memory: {error} (grant the ACL user +info)"
        )),
        Some(Ok(memory)) if bands.in_bytes(memory.max_bytes).is_none() => Some(format!(
            "thresholds.memory are percentages of maxmemory, and {} has none: set maxmemory (with maxmemory-policy noeviction), or write the thresholds as quantities such as 2Gi",
            memory.node
        )),
        Some(Ok(_)) => None,
    }
}

/// Whether a full Redis would refuse writes rather than delete keys (queued jobs among them), and
/// what to set when it would not.
fn jobs_safe(memory: &Memory, now: Timestamp) -> ConditionValue {
    let node = &memory.node;
    match (memory.eviction_warning(), memory.max_bytes) {
        (Some(warning), _) => ConditionValue::new(false, "EvictionPolicy", &warning, now),
        (None, None) => ConditionValue::new(
            true,
            "NoMemoryLimit",
            &format!(
                "{node} has no maxmemory: Redis evicts nothing (it grows until its machine runs out; set maxmemory, with maxmemory-policy noeviction, to have it refuse writes instead)"
            ),
            now,
        ),
        (None, Some(_)) if memory.eviction_policy.starts_with("volatile-") => ConditionValue::new(
            true,
            "NoQueueKeyWithTtl",
            &format!(
                "{node}: maxmemory-policy {} evicts only keys that carry a TTL, and none of this policy's queue keys does",
                memory.eviction_policy
            ),
            now,
        ),
        (None, Some(_)) => ConditionValue::new(
            true,
            "NoEviction",
            &format!(
                "{node}: maxmemory-policy noeviction: a full Redis refuses writes rather than delete jobs"
            ),
            now,
        ),
    }
}

/// `BackendReachable`, and on a Redis policy the same under its older name `RedisReachable`.
fn set_reachable(status: &mut BackpressurePolicyStatus, kind: Option<BackendKind>, value: ConditionValue) {
    if kind == Some(BackendKind::Redis) {
        status.set_condition(condition::REDIS_REACHABLE, value.clone());
    }
    status.set_condition(condition::BACKEND_REACHABLE, value);
}

/// Whether the HPA's maxReplicas is capped at a Kafka policy's partition count, in words.
fn scale_cap(target: &crate::api::ScaleTarget, partitions: u32, now: Timestamp) -> ConditionValue {
    let max = crate::controller::act::autoscaler::max_replicas(target, Some(partitions));
    if max < target.max_replicas {
        let message = format!(
            "maxReplicas {} capped at {max}: the policy's topics have {partitions} partitions and a consumer beyond them gets none (set scaleTarget.allowIdleConsumers: true to lift the cap)",
            target.max_replicas
        );
        ConditionValue::new(true, "PartitionCount", &message, now)
    } else {
        let why = if target.allow_idle_consumers {
            format!(
                "allowIdleConsumers: maxReplicas {} kept over {partitions} partitions",
                target.max_replicas
            )
        } else {
            format!(
                "maxReplicas {} is within the {partitions} partitions",
                target.max_replicas
            )
        };
        ConditionValue::new(false, "NotCapped", &why, now)
    }
}

fn round(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}

/// Ready, or why not. A latency that cannot be read makes the policy not ready only when latency
/// thresholds drive its circuit; otherwise it shows in the queue's `latencyError` alone.
fn readiness(
    report: &TickReport,
    kind: Option<BackendKind>,
    thresholds: &Thresholds,
    now: Timestamp,
) -> ConditionValue {
    let not_ready = |reason: &str, message: &str| ConditionValue::new(false, reason, message, now);
    match report.sample {
        Err(problem) => return not_ready(problem.reason, &problem.message),
        Ok(sample) => {
            if let Some(error) = &sample.unreachable {
                return not_ready(kind.unwrap_or(BackendKind::Redis).unreachable_reason(), error);
            }
            if let Some(queue) = sample.queues.iter().find(|q| q.depth.is_err()) {
                let message = format!(
                    "queue {}: {}",
                    queue.name,
                    queue.depth.as_ref().err().map_or("", String::as_str)
                );
                return not_ready("QueueUnreadable", &message);
            }
            let latency_error = sample
                .queues
                .iter()
                .find_map(|q| Some((&q.name, q.latency.as_ref()?.as_ref().err()?)));
            if let (true, Some((queue, error))) = (thresholds.latency.is_some(), latency_error) {
                let message = format!("queue {queue}: {error}");
                return not_ready("LatencyUnreadable", &message);
            }
            if let Some(message) = memory_unreadable(thresholds, sample) {
                return not_ready("MemoryUnreadable", &message);
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
    if let Some(error) = report.autoscaler_error {
        let message = format!("applying the HPA for spec.scaleTarget failed (retrying every tick): {error}");
        return not_ready("ScaleTargetFailed", &message);
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
    // Compared in place, every tick of every policy: nothing copied.
    fn condition_key(c: &Condition) -> (&str, &str, &str, &str) {
        (&c.type_, &c.status, &c.reason, &c.message)
    }
    fn queue_error_key(q: &QueueStatus) -> (&str, Option<&str>, Option<&str>) {
        (&q.name, q.error.as_deref(), q.latency_error.as_deref())
    }
    old.state != new.state
        || old.level != new.level
        || old.transitions != new.transitions
        || old.last_reset != new.last_reset
        || old.observed_generation != new.observed_generation
        || !old
            .conditions
            .iter()
            .map(condition_key)
            .eq(new.conditions.iter().map(condition_key))
        || !old
            .queues
            .iter()
            .map(queue_error_key)
            .eq(new.queues.iter().map(queue_error_key))
        || discovered(old) != discovered(new)
        || old.queues_omitted != new.queues_omitted
}

/// How far a live number must move from what status shows before it is written ahead of the
/// heartbeat: a tenth of the value written (and at least 1, so a small backlog is shown exactly).
const MEANINGFUL_SHARE: f64 = 0.1;

/// Whether `new` has moved far from `old` in a live number a person reads in `kubectl get bpp`:
/// the pending backlog, the latency, the time to critical (by a tenth of the value written, at
/// least one job or one second; appearing or going counts) and Redis memory (by a tenth of what
/// was used and at least a MiB, or any change of its limit, policy or error). Per-queue depths, the growth rate and
/// the sample time are left to the heartbeat.
pub fn moved(old: &BackpressurePolicyStatus, new: &BackpressurePolicyStatus) -> bool {
    fn far(old: Option<f64>, new: Option<f64>, at_least: f64) -> bool {
        match (old, new) {
            (Some(old), Some(new)) => (new - old).abs() >= (old.abs() * MEANINGFUL_SHARE).max(at_least),
            (None, None) => false,
            _ => true,
        }
    }
    let critical_in = |s: &BackpressurePolicyStatus| s.forecast.as_ref().and_then(|f| f.critical_in_seconds);
    fn memory(s: &BackpressurePolicyStatus) -> Option<(Option<u64>, Option<&str>, Option<&str>)> {
        s.memory
            .as_ref()
            .map(|m| (m.max_bytes, m.eviction_policy.as_deref(), m.error.as_deref()))
    }
    let used = |s: &BackpressurePolicyStatus| s.memory.as_ref().and_then(|m| m.used_bytes).map(|u| u as f64);
    far(old.pending.map(|p| p as f64), new.pending.map(|p| p as f64), 1.0)
        || far(old.latency_seconds, new.latency_seconds, 1.0)
        || far(critical_in(old), critical_in(new), 1.0)
        || far(used(old), used(new), MEMORY_AT_LEAST)
        || memory(old) != memory(new)
}

/// The least change of Redis's used memory written ahead of the heartbeat: on a nearly empty
/// Redis a tenth is a few hundred KiB, which its client buffers alone come and go by from one
/// tick to the next (5,000 policies on one such Redis wrote status three times as often as the
/// heartbeats called for).
const MEMORY_AT_LEAST: f64 = (1 << 20) as f64;

/// What a discovery found, without when: a new set of queues or a new problem is worth a write.
fn discovered(status: &BackpressurePolicyStatus) -> Option<(u64, u64, Option<&str>)> {
    let discovery = status.discovery.as_ref()?;
    Some((discovery.matched, discovery.sampled, discovery.message.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::QueueReading;

    fn sample() -> Sample {
        Sample {
            at: Timestamp::from_second(1_800_000_000).unwrap(),
            queues: vec![QueueReading {
                name: "events".into(),
                weight: 1,
                depth: Ok(7),
                latency: None,
                partitions: None,
            }],
            round_trips: 1,
            unreachable: None,
            memory: None,
            duration: std::time::Duration::from_millis(1),
        }
    }

    fn ready_condition(autoscaler_error: Option<&str>, targets: &Outcome) -> (String, String, String) {
        let sample = sample();
        let report = TickReport {
            circuit: &Circuit::default(),
            sample: Ok(&sample),
            targets,
            autoscaler_error,
            partition_cap: None,
            forecast: None,
            discovery: None,
            dry_run: false,
            shared: &[],
            now: sample.at,
        };
        let status = next_status(
            &crate::fixtures::policy(),
            &BackpressurePolicyStatus::default(),
            &report,
        );
        let ready = status.condition(condition::READY).unwrap();
        (ready.status.clone(), ready.reason.clone(), ready.message.clone())
    }

    #[test]
    fn a_failing_hpa_makes_the_policy_not_ready_saying_why() {
        let (status, reason, message) = ready_condition(
            Some("horizontalpodautoscalers.autoscaling is forbidden"),
            &Outcome::default(),
        );
        assert_eq!((status.as_str(), reason.as_str()), ("False", "ScaleTargetFailed"));
        assert!(
            message.contains("horizontalpodautoscalers.autoscaling is forbidden"),
            "{message}"
        );
        let (status, reason, _) = ready_condition(None, &Outcome::default());
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Active"));
    }

    #[test]
    fn a_missing_target_is_reported_before_the_hpa() {
        let targets = Outcome {
            missing: vec!["Deployment jobs/api".into()],
            ..Outcome::default()
        };
        let (_, reason, message) = ready_condition(Some("forbidden"), &targets);
        assert_eq!(reason, "TargetNotFound");
        assert!(message.contains("Deployment jobs/api not found"), "{message}");
    }

    fn with(pending: u64, latency: Option<f64>, used: Option<u64>) -> BackpressurePolicyStatus {
        BackpressurePolicyStatus {
            pending: Some(pending),
            latency_seconds: latency,
            memory: used.map(|used| MemoryStatus {
                used_bytes: Some(used),
                max_bytes: Some(1 << 30),
                ..MemoryStatus::default()
            }),
            ..BackpressurePolicyStatus::default()
        }
    }

    #[test]
    fn live_numbers_are_written_when_they_move_by_a_tenth_and_small_backlogs_exactly() {
        let written = with(1_000, Some(30.0), Some(100 << 20));
        assert!(
            !moved(&written, &with(1_099, Some(32.9), Some(109 << 20))),
            "under a tenth"
        );
        assert!(
            moved(&written, &with(1_100, Some(30.0), Some(100 << 20))),
            "pending"
        );
        assert!(
            moved(&written, &with(900, Some(30.0), Some(100 << 20))),
            "pending down"
        );
        assert!(
            moved(&written, &with(1_000, Some(33.0), Some(100 << 20))),
            "latency"
        );
        assert!(
            moved(&written, &with(1_000, None, Some(100 << 20))),
            "latency gone"
        );
        assert!(
            moved(&written, &with(1_000, Some(30.0), Some(110 << 20))),
            "memory"
        );
        assert!(moved(&written, &with(1_000, Some(30.0), None)), "memory gone");
        assert!(
            !moved(
                &with(1_000, None, Some(1 << 20)),
                &with(1_000, None, Some(3 << 19))
            ),
            "half a MiB of a nearly empty Redis: its client buffers"
        );
        assert!(moved(
            &with(1_000, None, Some(1 << 20)),
            &with(1_000, None, Some(2 << 20))
        ));
        assert!(
            moved(&with(3, None, None), &with(4, None, None)),
            "one job of a small backlog"
        );
        assert!(!moved(&with(3, None, None), &with(3, None, None)));
        let forecast = |eta: Option<f64>| BackpressurePolicyStatus {
            forecast: Some(ForecastStatus {
                growth_per_second: 1.0,
                critical_in_seconds: eta,
            }),
            ..with(1_000, None, None)
        };
        assert!(
            moved(&forecast(None), &forecast(Some(120.0))),
            "critical forecast appears"
        );
        assert!(!moved(&forecast(Some(120.0)), &forecast(Some(115.0))));
        assert!(moved(&forecast(Some(120.0)), &forecast(Some(100.0))));
        let mut noisy = forecast(None);
        noisy.forecast.as_mut().unwrap().growth_per_second = -3.0;
        assert!(
            !moved(&forecast(None), &noisy),
            "the growth rate waits for the heartbeat"
        );
    }
}
