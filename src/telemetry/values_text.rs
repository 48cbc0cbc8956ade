//! The series read from the published values at each scrape (`levee_pending`,
//! `levee_queue_depth`, the latencies, the forecast and Redis memory), written straight into the text
//! exposition. Going through the Prometheus client's `MetricFamily` structures instead built a
//! label pair, a string per label and a metric per series on every scrape: at 1,000 policies of
//! 10 queues that was most of the 17.5 MB one scrape held at once (docs/benchmarks.md#metrics).

use super::text::FamilyText;
use crate::values::{MetricValues, PolicyValues, QueueValues};
use std::sync::Arc;

/// A gauge family: its name, help, and the value of a policy or of one of its queues.
struct Family {
    name: &'static str,
    help: &'static str,
    value: Value,
}

/// Where a family's values come from.
enum Value {
    Policy(fn(&PolicyValues) -> Option<f64>),
    Queue(fn(&QueueValues) -> Option<f64>),
}

const FAMILIES: [Family; 10] = [
    Family {
        name: "levee_pending",
        help: "Weighted backlog of a policy",
        value: Value::Policy(|p| Some(p.pending as f64)),
    },
    Family {
        name: "levee_queue_depth",
        help: "Depth of one queue (unweighted)",
        value: Value::Queue(|q| q.depth.map(|d| d as f64)),
    },
    Family {
        name: "levee_latency_seconds",
        help: "Age of the oldest waiting job over a policy's queues",
        value: Value::Policy(|p| p.latency.map(|age| age.as_secs_f64())),
    },
    Family {
        name: "levee_queue_latency_seconds",
        help: "Age of the oldest waiting job of one queue",
        value: Value::Queue(|q| q.latency.map(|age| age.as_secs_f64())),
    },
    Family {
        name: "levee_growth_per_second",
        help: "Jobs per second the backlog grows by (negative: drains), fitted over circuit.forecastWindow",
        value: Value::Policy(|p| p.forecast.map(|f| f.growth_per_second)),
    },
    Family {
        name: "levee_redis_memory_used_bytes",
        help: "used_memory of a Redis policy's fullest master (INFO memory)",
        value: Value::Policy(|p| p.memory.map(|m| m.used as f64)),
    },
    Family {
        name: "levee_redis_memory_max_bytes",
        help: "maxmemory of a Redis policy's fullest master (absent: no limit)",
        value: Value::Policy(|p| p.memory.and_then(|m| m.max).map(|max| max as f64)),
    },
    Family {
        name: "levee_redis_memory_warning_bytes",
        help: "thresholds.memory.warning of a Redis policy, in bytes (absent: no memory thresholds, or a percentage of no maxmemory)",
        value: Value::Policy(|p| p.memory.and_then(|m| m.warning).map(|w| w as f64)),
    },
    Family {
        name: "levee_redis_memory_ratio",
        help: "used_memory / maxmemory of a Redis policy's fullest master (absent: no limit)",
        value: Value::Policy(PolicyValues::memory_ratio),
    },
    Family {
        name: "levee_critical_in_seconds",
        help: "Seconds until the backlog reaches critical at its steady growth (absent: not forecast)",
        value: Value::Policy(|p| {
            p.forecast
                .and_then(|f| f.critical_in)
                .map(|eta| eta.as_secs_f64())
        }),
    },
];

/// Appends every family that has at least one series to `out`, policies sorted by namespace
/// and name, as the Prometheus text format (0.0.4) has them.
pub fn write(values: &MetricValues, out: &mut String) {
    let policies = values.all();
    for family in &FAMILIES {
        write_family(family, &policies, out);
    }
}

fn write_family(family: &Family, policies: &[Arc<PolicyValues>], out: &mut String) {
    let mut text = FamilyText::new(family.name, family.help, "gauge");
    for policy in policies {
        let at = [("namespace", &*policy.namespace), ("policy", &*policy.policy)];
        match family.value {
            Value::Policy(value) => {
                if let Some(v) = value(policy) {
                    text.series(out, family.name, &at, v);
                }
            }
            Value::Queue(value) => {
                for queue in &policy.queues {
                    if let Some(v) = value(queue) {
                        let labels = [at[0], at[1], ("queue", &*queue.name)];
                        text.series(out, family.name, &labels, v);
                    }
                }
            }
        }
    }
}
