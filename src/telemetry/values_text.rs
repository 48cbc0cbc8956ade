//! The series read from the published values at each scrape (`levee_pending`,
//! `levee_queue_depth`, the latencies, the forecast and Redis memory), written straight into the text
//! exposition. Going through the Prometheus client's `MetricFamily` structures instead built a
//! label pair, a string per label and a metric per series on every scrape: at 1,000 policies of
//! 10 queues that was most of the 17.5 MB one scrape held at once (docs/benchmarks.md#metrics).

use crate::values::{MetricValues, PolicyValues, QueueValues};
use std::fmt::Write as _;
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
    let mut header = false;
    let mut series = |out: &mut String, policy: &PolicyValues, queue: Option<&str>, value: f64| {
        if !header {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} gauge", family.name);
            header = true;
        }
        out.push_str(family.name);
        out.push_str("{namespace=\"");
        escape_into(&policy.namespace, out);
        out.push_str("\",policy=\"");
        escape_into(&policy.policy, out);
        if let Some(queue) = queue {
            out.push_str("\",queue=\"");
            escape_into(queue, out);
        }
        out.push_str("\"} ");
        write_number(value, out);
        out.push('\n');
    };
    for policy in policies {
        match family.value {
            Value::Policy(value) => {
                if let Some(v) = value(policy) {
                    series(out, policy, None, v);
                }
            }
            Value::Queue(value) => {
                for queue in &policy.queues {
                    if let Some(v) = value(queue) {
                        series(out, policy, Some(&queue.name), v);
                    }
                }
            }
        }
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the text format requires (a
/// discovered queue's name comes from Redis and may hold any of them).
pub(super) fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as the format does.
pub(super) fn write_number(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_spelled_as_the_format_does() {
        let mut out = String::new();
        escape_into("a\\b\"c\nd", &mut out);
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        for (value, text) in [
            (7.0, "7"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut out = String::new();
            write_number(value, &mut out);
            assert_eq!(out, text);
        }
    }
}
