//! What a ScaledObject asks levee's external scaler, and the answer, as pure functions of the
//! trigger's metadata and the published values. The metadata keys (docs/integration.md):
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `policy` | the BackpressurePolicy, in the ScaledObject's namespace | required |
//! | `queue` | one of its queues: that queue's depth instead of the backlog | none |
//! | `metric` | `pending` (the weighted backlog, or the queue's depth), `latency` (seconds the oldest job has waited, the policy's or the queue's), `level` (0 Normal, 1 Warning, 2 Critical) or `memory` (Redis policies: `used_memory / maxmemory` of the fullest master) | `pending` |
//! | `targetValue` | the figure one replica should handle (KEDA's AverageValue target) | 100 for `pending`, 30 for `latency`, 1 for `level`, 0.7 for `memory` |
//! | `activationValue` | the figure above which the workload is active (scaled up from zero) | 0 |

use crate::api::names::{check_dns_label, check_queue_name};
use crate::circuit::Level;
use crate::values::{PolicyValues, QueueValues};
use std::collections::HashMap;
use std::time::Instant;

/// Which figure of a policy is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Figure {
    /// The weighted backlog.
    Pending,
    /// One queue's depth.
    QueueDepth(String),
    /// The age of the oldest waiting job over the policy's queues, in seconds.
    Latency,
    /// The age of one queue's oldest waiting job, in seconds.
    QueueLatency(String),
    /// The backlog's level: 0 Normal, 1 Warning, 2 Critical.
    Level,
    /// Redis memory: `used_memory / maxmemory` of the fullest master.
    Memory,
}

/// One trigger's question, read from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerQuery {
    pub namespace: String,
    pub policy: String,
    pub figure: Figure,
    /// What one replica should handle.
    pub target: f64,
    /// Active (scaled up from zero) when the figure is above this.
    pub activation: f64,
}

/// Why a question cannot be answered: the gRPC status to answer with, and words a person can act
/// on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The trigger's metadata is wrong: fix the ScaledObject.
    InvalidArgument(String),
    /// levee runs no such policy (or queue).
    NotFound(String),
    /// The values are stale or the sample failed: KEDA should not act on them.
    Unavailable(String),
}

impl ScalerQuery {
    /// Reads a trigger's metadata for the ScaledObject in `namespace`.
    pub fn parse(namespace: &str, metadata: &HashMap<String, String>) -> Result<Self, Refusal> {
        const KNOWN: [&str; 5] = ["policy", "queue", "metric", "targetValue", "activationValue"];
        /// KEDA's own keys of the trigger, which it passes on too.
        const KEDA: [&str; 3] = ["scalerAddress", "enableTLS", "unsafeSsl"];
        let invalid = |message: String| Refusal::InvalidArgument(message);
        if let Some(unknown) = metadata
            .keys()
            .filter(|key| !KNOWN.contains(&key.as_str()) && !KEDA.contains(&key.as_str()))
            .min()
        {
            return Err(invalid(format!(
                "unknown metadata key {unknown:?}: levee's scaler reads {}",
                KNOWN.join(", ")
            )));
        }
        if namespace.is_empty() {
            return Err(invalid("the ScaledObject has no namespace".into()));
        }
        check_dns_label("the ScaledObject's namespace", namespace).map_err(invalid)?;
        let policy = metadata
            .get("policy")
            .filter(|policy| !policy.is_empty())
            .ok_or_else(|| invalid("metadata.policy is required: the name of a BackpressurePolicy in the ScaledObject's namespace".into()))?
            .clone();
        check_dns_label("metadata.policy", &policy).map_err(invalid)?;
        let queue = metadata.get("queue").filter(|queue| !queue.is_empty());
        if let Some(queue) = queue {
            check_queue_name(queue).map_err(|e| invalid(format!("metadata.queue: {e}")))?;
        }
        let figure = match (metadata.get("metric").map(String::as_str), queue) {
            (None | Some("pending"), None) => Figure::Pending,
            (None | Some("pending"), Some(queue)) => Figure::QueueDepth(queue.clone()),
            (Some("latency"), None) => Figure::Latency,
            (Some("latency"), Some(queue)) => Figure::QueueLatency(queue.clone()),
            (Some("level"), None) => Figure::Level,
            (Some("memory"), None) => Figure::Memory,
            (Some(metric @ ("level" | "memory")), Some(_)) => {
                return Err(invalid(format!(
                    "metadata.metric {metric} is the policy's, not a queue's: drop metadata.queue"
                )));
            }
            (Some(other), _) => {
                return Err(invalid(format!(
                    "metadata.metric {other:?} is not known: use pending, latency, level or memory"
                )));
            }
        };
        let default_target = match figure {
            Figure::Level => 1.0,
            Figure::Memory => 0.7,
            Figure::Latency | Figure::QueueLatency(_) => 30.0,
            Figure::Pending | Figure::QueueDepth(_) => 100.0,
        };
        let target = number(metadata, "targetValue")?.unwrap_or(default_target);
        if target <= 0.0 {
            return Err(invalid(format!(
                "metadata.targetValue must be above 0 (it divides the figure into replicas), not {target}"
            )));
        }
        let activation = number(metadata, "activationValue")?.unwrap_or(0.0);
        if activation < 0.0 {
            return Err(invalid(format!(
                "metadata.activationValue must be 0 or more, not {activation}"
            )));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            policy,
            figure,
            target,
            activation,
        })
    }

    /// The metric's name in GetMetricSpec and GetMetrics (KEDA prefixes it with the trigger's
    /// index).
    pub fn metric_name(&self) -> String {
        match &self.figure {
            Figure::Pending => format!("levee-{}-pending", self.policy),
            Figure::QueueDepth(queue) => format!("levee-{}-{queue}-depth", self.policy),
            Figure::Latency => format!("levee-{}-latency", self.policy),
            Figure::QueueLatency(queue) => format!("levee-{}-{queue}-latency", self.policy),
            Figure::Level => format!("levee-{}-level", self.policy),
            Figure::Memory => format!("levee-{}-memory", self.policy),
        }
    }

    /// The figure now, from the policy's published values (`None`: levee runs no such policy).
    pub fn reading(&self, values: Option<&PolicyValues>, now: Instant) -> Result<f64, Refusal> {
        let values = values.ok_or_else(|| {
            Refusal::NotFound(format!(
                "levee runs no BackpressurePolicy {}/{} (kubectl get bpp -n {})",
                self.namespace, self.policy, self.namespace
            ))
        })?;
        if values.stale(now) {
            return Err(Refusal::Unavailable(format!(
                "the last sample of {}/{} failed or is stale: see its BackendReachable condition",
                self.namespace, self.policy
            )));
        }
        match &self.figure {
            Figure::Pending => Ok(values.pending as f64),
            Figure::QueueDepth(queue) => match self.queue(values, queue)? {
                QueueValues {
                    depth: Some(depth), ..
                } => Ok(*depth as f64),
                _ => Err(Refusal::Unavailable(format!(
                    "queue {queue} of {}/{} has not been read yet",
                    self.namespace, self.policy
                ))),
            },
            Figure::Latency => values.latency.map(|age| age.as_secs_f64()).ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "{}/{} has no latency: none of its queues keeps an enqueue time (sidekiq, rq, bullmq, stream), or it has not been read",
                    self.namespace, self.policy
                ))
            }),
            Figure::QueueLatency(queue) => match self.queue(values, queue)?.latency {
                Some(age) => Ok(age.as_secs_f64()),
                None => Err(Refusal::Unavailable(format!(
                    "queue {queue} of {}/{} has no latency: its type keeps no enqueue time, or it has not been read",
                    self.namespace, self.policy
                ))),
            },
            Figure::Memory => values.memory_ratio().ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "{}/{} has no memory ratio: its Redis has no maxmemory, refuses INFO, or it is not a Redis policy",
                    self.namespace, self.policy
                ))
            }),
            Figure::Level => match values.circuit {
                Some(circuit) => Ok(match circuit.level {
                    Level::Normal => 0.0,
                    Level::Warning => 1.0,
                    Level::Critical => 2.0,
                }),
                None => Err(Refusal::Unavailable(format!(
                    "{}/{} has not decided a level yet",
                    self.namespace, self.policy
                ))),
            },
        }
    }

    /// The policy's queue named `queue`. The refusal lists nothing: whoever can reach the
    /// scaler is not told what a policy holds (its owner reads `status.queues`).
    fn queue<'a>(&self, values: &'a PolicyValues, queue: &str) -> Result<&'a QueueValues, Refusal> {
        values.queues.iter().find(|q| q.name == queue).ok_or_else(|| {
            Refusal::NotFound(format!(
                "{}/{} has no queue {queue} (its queues: kubectl get bpp -n {} {} -o jsonpath='{{.status.queues[*].name}}')",
                self.namespace, self.policy, self.namespace, self.policy
            ))
        })
    }

    /// Whether the workload should run at all (KEDA scales it from zero when it is).
    pub fn active(&self, reading: f64) -> bool {
        reading > self.activation
    }
}

/// An optional number under `key`.
fn number(metadata: &HashMap<String, String>, key: &str) -> Result<Option<f64>, Refusal> {
    match metadata.get(key) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Refusal::InvalidArgument(format!(
                    "metadata.{key} must be a number such as 100, not {text:?}"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::State;
    use crate::values::CircuitValues;
    use std::time::Duration;

    fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn values(pending: u64, failed: bool) -> PolicyValues {
        PolicyValues {
            namespace: "jobs".into(),
            policy: "p".into(),
            pending,
            queues: vec![
                QueueValues::new("events", Some(pending), None),
                QueueValues::new("audit", None, None),
            ],
            latency: None,
            forecast: None,
            sampled_at: jiff::Timestamp::now(),
            sampled: Instant::now(),
            failed,
            interval: Duration::from_secs(1),
            circuit: Some(CircuitValues {
                state: State::Open,
                level: Level::Critical,
            }),
            memory: None,
            source: Default::default(),
            published: 0,
            changed: 0,
        }
    }

    #[test]
    fn defaults_are_the_backlog_a_target_of_100_and_activation_above_zero() {
        let query =
            ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("scalerAddress", "x:1")])).unwrap();
        assert_eq!(
            query,
            ScalerQuery {
                namespace: "jobs".into(),
                policy: "p".into(),
                figure: Figure::Pending,
                target: 100.0,
                activation: 0.0
            }
        );
        assert_eq!(query.metric_name(), "levee-p-pending");
        assert_eq!(
            query.reading(Some(&values(250, false)), Instant::now()),
            Ok(250.0)
        );
        assert!(query.active(1.0) && !query.active(0.0));
    }

    #[test]
    fn a_queue_and_the_level_are_figures_too() {
        let queue = ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("queue", "events")])).unwrap();
        assert_eq!(queue.metric_name(), "levee-p-events-depth");
        assert_eq!(queue.reading(Some(&values(7, false)), Instant::now()), Ok(7.0));
        let level = ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("metric", "level")])).unwrap();
        assert_eq!(
            (level.target, level.metric_name().as_str()),
            (1.0, "levee-p-level")
        );
        assert_eq!(level.reading(Some(&values(7, false)), Instant::now()), Ok(2.0));
        let unread = ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("queue", "audit")])).unwrap();
        assert!(matches!(
            unread.reading(Some(&values(7, false)), Instant::now()),
            Err(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn latency_is_a_figure_in_seconds_and_refused_where_none_is_kept() {
        let mut with_latency = values(7, false);
        with_latency.latency = Some(Duration::from_millis(42_500));
        with_latency.queues[0].latency = Some(Duration::from_secs(3));
        let now = Instant::now();
        let policy =
            ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("metric", "latency")])).unwrap();
        assert_eq!(
            (policy.target, policy.metric_name().as_str()),
            (30.0, "levee-p-latency")
        );
        assert_eq!(policy.reading(Some(&with_latency), now), Ok(42.5));
        assert!(matches!(
            policy.reading(Some(&values(7, false)), now),
            Err(Refusal::Unavailable(m)) if m.contains("keeps an enqueue time")
        ));
        let queue = ScalerQuery::parse(
            "jobs",
            &metadata(&[("policy", "p"), ("metric", "latency"), ("queue", "events")]),
        )
        .unwrap();
        assert_eq!(queue.metric_name(), "levee-p-events-latency");
        assert_eq!(queue.reading(Some(&with_latency), now), Ok(3.0));
        let audit = ScalerQuery::parse(
            "jobs",
            &metadata(&[("policy", "p"), ("metric", "latency"), ("queue", "audit")]),
        )
        .unwrap();
        assert!(matches!(
            audit.reading(Some(&with_latency), now),
            Err(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn memory_is_the_ratio_to_maxmemory_and_refused_without_one() {
        let now = Instant::now();
        let query = ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("metric", "memory")])).unwrap();
        assert_eq!(
            (query.target, query.metric_name().as_str()),
            (0.7, "levee-p-memory")
        );
        let mut full = values(7, false);
        full.memory = Some(crate::values::MemoryValues {
            used: 600,
            max: Some(800),
            warning: None,
        });
        assert_eq!(query.reading(Some(&full), now), Ok(0.75));
        full.memory.as_mut().unwrap().max = None;
        assert!(matches!(
            query.reading(Some(&full), now),
            Err(Refusal::Unavailable(m)) if m.contains("no maxmemory")
        ));
    }

    #[test]
    fn wrong_metadata_names_the_key_to_change() {
        let refused = |pairs: &[(&str, &str)]| match ScalerQuery::parse("jobs", &metadata(pairs)) {
            Err(Refusal::InvalidArgument(message)) => message,
            other => panic!("{pairs:?} gave {other:?}"),
        };
        assert!(refused(&[]).contains("metadata.policy is required"));
        assert!(
            refused(&[("policy", "p"), ("metric", "age")]).contains("use pending, latency, level or memory")
        );
        assert!(
            refused(&[("policy", "p"), ("metric", "memory"), ("queue", "q")]).contains("drop metadata.queue")
        );
        assert!(
            refused(&[("policy", "p"), ("metric", "level"), ("queue", "q")]).contains("drop metadata.queue")
        );
        assert!(
            refused(&[("policy", "p"), ("targetValue", "lots")])
                .contains("metadata.targetValue must be a number")
        );
        assert!(refused(&[("policy", "p"), ("targetValue", "0")]).contains("above 0"));
        assert!(refused(&[("policy", "p"), ("activationValue", "-1")]).contains("0 or more"));
        assert!(
            refused(&[("policy", "p"), ("listLength", "5")]).contains("unknown metadata key \"listLength\"")
        );
        assert!(
            refused(&[("policy", &"p".repeat(64))]).contains("metadata.policy must be 1 to 63 characters")
        );
        assert!(refused(&[("policy", "../p")]).contains("is not a DNS label"));
        assert!(refused(&[("policy", "p"), ("queue", "a b")]).contains("metadata.queue: queue name"));
        assert!(matches!(
            ScalerQuery::parse("Jobs", &metadata(&[("policy", "p")])),
            Err(Refusal::InvalidArgument(m)) if m.contains("the ScaledObject's namespace \"Jobs\" is not a DNS label")
        ));
    }

    #[test]
    fn missing_policies_queues_and_stale_values_are_refused_with_their_status() {
        let now = Instant::now();
        let query = ScalerQuery::parse("jobs", &metadata(&[("policy", "p")])).unwrap();
        assert!(
            matches!(query.reading(None, now), Err(Refusal::NotFound(m)) if m.contains("kubectl get bpp -n jobs"))
        );
        assert!(matches!(
            query.reading(Some(&values(5, true)), now),
            Err(Refusal::Unavailable(m)) if m.contains("BackendReachable")
        ));
        assert!(matches!(
            query.reading(Some(&values(5, false)), now + Duration::from_secs(10)),
            Err(Refusal::Unavailable(_))
        ));
        let other = ScalerQuery::parse("jobs", &metadata(&[("policy", "p"), ("queue", "nope")])).unwrap();
        assert!(matches!(
            other.reading(Some(&values(5, false)), now),
            Err(Refusal::NotFound(m)) if m.contains("has no queue nope") && !m.contains("events") && !m.contains("audit")
        ));
    }
}
