//! Reads queue depths, each policy from the one backend its spec names (`BackendEndpoint`): Redis
//! (`redis`), NATS JetStream (`nats`) and Kafka consumer groups (`kafka`), one module each. What a
//! backend takes is a policy's prepared queues and its endpoint; what it returns is a `Sample`.
//! The circuit, controller, metrics API and scaler see only that. Shared here: the sample, the
//! dispatch (an exhaustive match over the backends), a node's address and the TLS client settings.

pub mod credentials;
pub mod kafka;
pub mod nats;
mod node_addr;
pub mod redis;
pub mod sqs;
mod tls;

pub use self::redis::slot;
pub use self::redis::{
    Credentials, DEFAULT_MAX_REPLY_BYTES, Discovered, Endpoint, KeyRead, LatencyProbe, Memory, QueueError,
    QueueProbe, ReadKind, UrlError,
};
pub use node_addr::NodeAddr;

use self::redis::latency_refresh::LatencyRefresh;
use crate::api::{BackendKind, BackendSpec, BackpressurePolicySpec, QueueSpec};
use crate::circuit::{CircuitRules, Measure, MemoryUse, Observation};
use jiff::Timestamp;
use std::time::Duration;

/// One queue's reading in a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReading {
    pub name: String,
    pub weight: u32,
    /// The depth, or a message saying why it could not be read.
    pub depth: Result<u64, String>,
    /// The age of the oldest waiting job (zero when none waits), or why it could not be read;
    /// `None` for a layout that keeps no enqueue time (or with latency reads off).
    pub latency: Option<Result<Duration, String>>,
    /// For a Kafka queue read: how many partitions it spans and the lag of the worst.
    pub partitions: Option<PartitionSpread>,
}

/// A Kafka queue's partitions: their count and the largest lag among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionSpread {
    pub count: u32,
    pub max_lag: u64,
}

/// One tick's readings of a policy's queues.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Timestamp,
    pub queues: Vec<QueueReading>,
    /// Pipelines sent (one per Redis node holding the queues, plus one per retry); for NATS,
    /// rounds of requests (the consumers' infos, then their latency reads).
    pub round_trips: usize,
    /// The first connection-level error (refused, timeout, authentication, topology), if any:
    /// Redis itself could not be reached, as opposed to a queue that could not be read.
    pub unreachable: Option<String>,
    /// Redis only: the fullest master's memory (`INFO memory`, in the tick's own pipelines), or
    /// why it could not be read (an ACL that refuses `INFO` costs this figure alone).
    pub memory: Option<Result<Memory, String>>,
    pub duration: Duration,
}

impl Sample {
    /// The weighted total of the queues that could be read.
    pub fn pending(&self) -> u64 {
        self.queues
            .iter()
            .filter_map(|q| {
                q.depth
                    .as_ref()
                    .ok()
                    .map(|d| d.saturating_mul(u64::from(q.weight)))
            })
            .fold(0, u64::saturating_add)
    }

    /// True when any queue's depth could not be read.
    pub fn failed(&self) -> bool {
        self.queues.iter().any(|q| q.depth.is_err()) || (self.queues.is_empty() && self.unreachable.is_some())
    }

    /// A sample in which nothing could be read, for `why`: a failed sample, never a depth of 0.
    pub fn unreachable(why: String) -> Self {
        Self {
            at: Timestamp::now(),
            queues: Vec::new(),
            round_trips: 0,
            unreachable: Some(why),
            memory: None,
            duration: Duration::ZERO,
        }
    }

    /// The policy's latency: the largest of the queues that count (weight above zero); `None`
    /// when none of them keeps an enqueue time or none could be read.
    pub fn latency(&self) -> Option<Duration> {
        self.queues
            .iter()
            .filter(|q| q.weight > 0)
            .filter_map(|q| q.latency.as_ref()?.as_ref().ok().copied())
            .max()
    }

    /// True when any queue's latency could not be read.
    pub fn latency_failed(&self) -> bool {
        self.queues.iter().any(|q| matches!(q.latency, Some(Err(_))))
    }

    /// The fullest master's memory, when it was read.
    pub fn memory_use(&self) -> Option<MemoryUse> {
        let memory = self.memory.as_ref()?.as_ref().ok()?;
        Some(MemoryUse {
            used: memory.used_bytes,
            max: memory.max_bytes,
        })
    }

    /// What the circuit sees: a partial total would understate the backlog, so any failed queue
    /// makes the whole tick a failed sample; so does a signal `rules` have thresholds for and the
    /// tick could not read (a latency, or the memory: INFO refused, or percentages of a Redis
    /// without `maxmemory`).
    pub fn observation(&self, rules: &CircuitRules) -> Observation {
        let measure = Measure {
            pending: self.pending(),
            latency: self.latency(),
            memory: self.memory_use(),
            critical_in: None,
        };
        if self.failed()
            || (rules.latency.is_some() && self.latency_failed())
            || !rules.memory_readable(&measure)
        {
            return Observation::SampleFailed;
        }
        Observation::Sampled(measure)
    }
}

/// Where a policy's queues are read, with what it takes to reach them: one variant per backend,
/// so a match on it shows every place a new backend must answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendEndpoint {
    Redis(Endpoint),
    Nats(nats::NatsEndpoint),
    Kafka(kafka::KafkaEndpoint),
}

impl BackendEndpoint {
    /// The endpoint of `spec`'s backend, with the credentials `source` gives: each backend
    /// resolves its own (`<backend>/credentials.rs`).
    pub async fn resolve(
        spec: &BackpressurePolicySpec,
        source: &impl credentials::EndpointSource,
    ) -> Result<Self, credentials::EndpointProblem> {
        match spec.backend() {
            Some(BackendSpec::Redis(redis)) => self::redis::credentials::resolve(redis, source)
                .await
                .map(Self::Redis),
            Some(BackendSpec::Nats(nats)) => nats::credentials::resolve(nats, source).await.map(Self::Nats),
            Some(BackendSpec::Kafka(kafka)) => {
                kafka::credentials::resolve(kafka, source).await.map(Self::Kafka)
            }
            None => Err(credentials::EndpointProblem {
                reason: "NoBackend",
                message: "the policy names no backend: set spec.redis, spec.nats or spec.kafka".into(),
            }),
        }
    }

    /// The Secrets `spec`'s backend reads (a change to one rebuilds the endpoint).
    pub fn secrets(spec: &BackpressurePolicySpec) -> Vec<&str> {
        match spec.backend() {
            Some(BackendSpec::Redis(redis)) => self::redis::credentials::secrets(redis),
            Some(BackendSpec::Nats(nats)) => nats::credentials::secrets(nats),
            Some(BackendSpec::Kafka(kafka)) => kafka::credentials::secrets(kafka),
            None => Vec::new(),
        }
    }

    /// What names the grid `spec`'s policies tick on together, for a backend whose policies are
    /// read together (Kafka's cluster); `None`: each policy ticks at its own phase.
    pub fn tick_grid(spec: &BackpressurePolicySpec) -> Option<String> {
        match spec.backend() {
            Some(BackendSpec::Kafka(kafka)) => Some(kafka::credentials::tick_grid(kafka)),
            Some(BackendSpec::Redis(_) | BackendSpec::Nats(_)) | None => None,
        }
    }

    /// The backend it reaches.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Redis(_) => BackendKind::Redis,
            Self::Nats(_) => BackendKind::Nats,
            Self::Kafka(_) => BackendKind::Kafka,
        }
    }
}

/// A policy's queues with the reads each takes, built once per policy generation: one variant
/// per backend, each holding what its own module prepared, so a match on it shows every place a
/// new backend must answer.
#[derive(Clone, Debug)]
pub enum PreparedQueues {
    Redis(self::redis::PreparedRedis),
    Nats(Vec<nats::PreparedConsumer>),
    Kafka(Vec<kafka::PreparedKafkaQueue>),
}

impl PreparedQueues {
    /// `queues` prepared for the backend their types are read from (a policy's queues are all
    /// of its backend; Redis when there are none), with `read_latency` the latency reads, each
    /// Redis latency read every tick. Entries with a `keyPattern` are left out: discovery turns
    /// them into queues of their own.
    pub fn new(queues: &[QueueSpec], read_latency: bool) -> Self {
        let backend = queues
            .first()
            .map_or(BackendKind::Redis, |q| q.queue_type.backend());
        match backend {
            BackendKind::Redis => Self::Redis(self::redis::PreparedRedis::new(
                queues,
                read_latency,
                LatencyRefresh::EVERY_TICK,
            )),
            BackendKind::Nats => Self::Nats(nats::prepare(queues, read_latency)),
            BackendKind::Kafka => Self::Kafka(kafka::prepare(queues, read_latency)),
        }
    }

    /// `queues` (the spec's, or with the discovered ones) as `spec`'s backend reads them, with
    /// its `readLatency`. A spec that names no backend is never sampled (its endpoint cannot be
    /// built): its queues are prepared as Redis's, the default.
    pub fn for_policy(spec: &BackpressurePolicySpec, queues: &[QueueSpec]) -> Self {
        match spec.backend() {
            Some(BackendSpec::Nats(_)) => Self::Nats(nats::prepare(queues, spec.read_latency)),
            Some(BackendSpec::Kafka(_)) => Self::Kafka(kafka::prepare(queues, spec.read_latency)),
            Some(BackendSpec::Redis(_)) | None => {
                Self::Redis(self::redis::PreparedRedis::for_policy(spec, queues))
            }
        }
    }

    /// These queues, keeping `previous`'s Redis latency schedule when the Redis queues are the
    /// same (a discovery that found nothing new does not make the next tick read every latency).
    pub fn continuing(self, previous: &PreparedQueues) -> Self {
        match (self, previous) {
            (Self::Redis(next), Self::Redis(previous)) => Self::Redis(next.continuing(previous)),
            (next, _) => next,
        }
    }
}

/// An endpoint no policy sampled for this long is dropped with its connections (a rotated
/// password or a changed URL leaves the old one behind).
pub const IDLE_EVICTION: Duration = Duration::from_secs(300);

/// Samples queues; cheap to clone, shared by every policy: one sampler per backend, each keeping
/// its own connections.
#[derive(Clone)]
pub struct Sampler {
    redis: self::redis::RedisSampler,
    nats: nats::NatsSampler,
    kafka: kafka::KafkaSampler,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::with_idle_eviction(IDLE_EVICTION)
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sampler that drops endpoints unused for `idle_eviction`.
    pub fn with_idle_eviction(idle_eviction: Duration) -> Self {
        Self {
            redis: self::redis::RedisSampler::new(idle_eviction),
            nats: nats::NatsSampler::new(idle_eviction),
            kafka: kafka::KafkaSampler::new(idle_eviction),
        }
    }

    /// Number of Redis endpoints with live state (for tests and metrics).
    pub fn endpoint_count(&self) -> usize {
        self.redis.endpoint_count()
    }

    /// Reads every queue of one Redis policy (depths and latencies): one pipeline per Redis
    /// node, all nodes at once.
    pub async fn sample(&self, endpoint: &Endpoint, queues: &[QueueSpec]) -> Sample {
        let prepared = self::redis::PreparedRedis::new(queues, true, LatencyRefresh::EVERY_TICK);
        self.redis.sample_prepared(endpoint, &prepared).await
    }

    /// The Redis queues that `entries` (those with a `keyPattern`) name, at most `cap` of them.
    pub async fn discover(&self, endpoint: &Endpoint, entries: &[QueueSpec], cap: usize) -> Discovered {
        self.redis.discover(endpoint, entries, cap).await
    }

    /// The queues `entries` (those with a `keyPattern`) name on `endpoint`, at most `cap` of
    /// them; `None` for a backend without discovery (the CRD allows `keyPattern` on Redis
    /// queue types only).
    pub async fn discover_backend(
        &self,
        endpoint: &BackendEndpoint,
        entries: &[QueueSpec],
        cap: usize,
    ) -> Option<Discovered> {
        match endpoint {
            BackendEndpoint::Redis(endpoint) => Some(self.redis.discover(endpoint, entries, cap).await),
            BackendEndpoint::Nats(_) | BackendEndpoint::Kafka(_) => None,
        }
    }

    /// Reads every queue of one policy from its backend, the reads prepared once per generation.
    pub async fn sample_backend(&self, endpoint: &BackendEndpoint, prepared: &PreparedQueues) -> Sample {
        // Both come from the same spec: a mismatch is levee's own mistake, said as such.
        let mismatch = || {
            Sample::unreachable(format!(
                "levee prepared this policy's queues for another backend than its endpoint's ({}): report this",
                endpoint.kind().name()
            ))
        };
        match endpoint {
            BackendEndpoint::Redis(endpoint) => match prepared {
                PreparedQueues::Redis(queues) => self.redis.sample_prepared(endpoint, queues).await,
                _ => mismatch(),
            },
            BackendEndpoint::Nats(endpoint) => match prepared {
                PreparedQueues::Nats(consumers) => self.nats.sample(endpoint, consumers).await,
                _ => mismatch(),
            },
            BackendEndpoint::Kafka(endpoint) => match prepared {
                PreparedQueues::Kafka(queues) => self.kafka.sample(endpoint, queues).await,
                _ => mismatch(),
            },
        }
    }
}

/// How long a connection that let a request time out must have answered nothing (nobody's
/// request) before it is dialled again: four timeouts, and at least a second. A late reply on a
/// connection every policy on that server shares, while it still answers others, is a busy
/// server or a busy levee; dialling again would only add to the load.
fn silence(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(name: &str, weight: u32, depth: Result<u64, String>) -> QueueReading {
        QueueReading {
            name: name.into(),
            weight,
            depth,
            latency: None,
            partitions: None,
        }
    }

    fn sample(queues: Vec<QueueReading>) -> Sample {
        Sample {
            at: Timestamp::UNIX_EPOCH,
            queues,
            round_trips: 1,
            unreachable: None,
            memory: None,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn pending_is_the_weighted_sum() {
        let s = sample(vec![
            reading("a", 1, Ok(10)),
            reading("b", 3, Ok(5)),
            reading("c", 0, Ok(99)),
        ]);
        assert_eq!(s.pending(), 25);
        assert_eq!(
            s.observation(&crate::fixtures::rules(10, 20, 5)),
            Observation::pending(25)
        );
    }

    #[test]
    fn any_failed_queue_fails_the_tick_but_keeps_the_others() {
        let s = sample(vec![
            reading("a", 1, Ok(10)),
            reading("b", 1, Err("WRONGTYPE".into())),
        ]);
        assert!(s.failed());
        assert_eq!(s.pending(), 10);
        assert_eq!(
            s.observation(&crate::fixtures::rules(10, 20, 5)),
            Observation::SampleFailed
        );
    }
}
