//! Reads queue depths, each policy from the one backend its spec names (`BackendEndpoint`): Redis
//! (`redis`), NATS JetStream (`nats`) and Kafka consumer groups (`kafka`), one module each. What a
//! backend takes is a policy's prepared queues and its endpoint; what it returns is a `Sample`.
//! The circuit, controller, metrics API and scaler see only that. Shared here: the sample, the
//! dispatch (an exhaustive match over the backends), a node's address and the TLS client settings.

pub mod kafka;
pub mod nats;
mod node_addr;
pub mod redis;
mod tls;

pub use self::redis::slot;
pub use self::redis::{
    Credentials, DEFAULT_MAX_REPLY_BYTES, Discovered, Endpoint, KeyRead, LatencyProbe, Memory, QueueError,
    QueueProbe, ReadKind, UrlError,
};
pub use node_addr::NodeAddr;

use self::redis::EndpointConnections;
use self::redis::latency_refresh::{LatencyRefresh, LatencySchedule};
use crate::api::{BackpressurePolicySpec, QueueSpec};
use crate::circuit::{CircuitRules, Measure, MemoryUse, Observation};
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        self.queues.iter().any(|q| q.depth.is_err())
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

/// A policy's queues with the reads each takes, built once per policy generation, and when each
/// Redis queue's latency is read again (its state is shared by clones).
#[derive(Clone, Debug)]
pub struct PreparedQueues {
    queues: Vec<self::redis::PreparedQueue>,
    latency_schedule: Arc<Mutex<LatencySchedule>>,
    consumers: Vec<nats::PreparedConsumer>,
    kafka: Vec<kafka::PreparedKafkaQueue>,
}

impl PreparedQueues {
    /// The queues' depth reads and, with `read_latency`, the latency read of each queue whose
    /// layout keeps an enqueue time (every tick); and the JetStream consumers. Entries with a
    /// `keyPattern` are left out: discovery turns them into queues of their own.
    pub fn new(queues: &[QueueSpec], read_latency: bool) -> Self {
        Self::with_latency_refresh(queues, read_latency, LatencyRefresh::EVERY_TICK)
    }

    /// `queues` (the spec's, or with the discovered ones) as `spec` reads them: its
    /// `readLatency`, and its Redis queues' latency read every `spec.redis.latencyRefresh`.
    pub fn for_policy(spec: &BackpressurePolicySpec, queues: &[QueueSpec]) -> Self {
        let refresh = spec
            .redis
            .as_ref()
            .map_or(Duration::ZERO, |redis| redis.latency_refresh.into());
        let confirm_at = spec.thresholds.latency().map(|bands| bands.recovery);
        let refresh = LatencyRefresh::new(refresh, spec.sample_interval.into(), confirm_at);
        Self::with_latency_refresh(queues, spec.read_latency, refresh)
    }

    fn with_latency_refresh(queues: &[QueueSpec], read_latency: bool, refresh: LatencyRefresh) -> Self {
        let queues_redis = self::redis::prepare(queues, read_latency);
        Self {
            latency_schedule: Arc::new(Mutex::new(LatencySchedule::new(refresh, queues_redis.len()))),
            consumers: nats::prepare(queues, read_latency),
            kafka: kafka::prepare(queues, read_latency),
            queues: queues_redis,
        }
    }

    /// These queues, keeping `previous`'s latency reads when the Redis queues are the same (a
    /// discovery that found nothing new does not make the next tick read every latency).
    pub fn continuing(mut self, previous: &PreparedQueues) -> Self {
        if self.queues == previous.queues {
            self.latency_schedule = Arc::clone(&previous.latency_schedule);
        }
        self
    }
}

/// An endpoint no policy sampled for this long is dropped with its connections (a rotated
/// password or a changed URL leaves the old one behind).
pub const IDLE_EVICTION: Duration = Duration::from_secs(300);

/// An endpoint's state and when a policy last sampled it.
type Entry = (Arc<EndpointConnections>, Instant);

/// Samples queues; cheap to clone, shared by every policy.
#[derive(Clone)]
pub struct Sampler {
    endpoints: Arc<Mutex<HashMap<Endpoint, Entry>>>,
    nats: nats::NatsSampler,
    kafka: kafka::KafkaSampler,
    idle_eviction: Duration,
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
            endpoints: Arc::default(),
            nats: nats::NatsSampler::new(idle_eviction),
            kafka: kafka::KafkaSampler::new(idle_eviction),
            idle_eviction,
        }
    }

    /// Number of endpoints with live state (for tests and metrics).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.lock().expect("endpoint map lock").len()
    }

    /// Reads every queue of one policy (depths and latencies): one pipeline per Redis node, all
    /// nodes at once.
    pub async fn sample(&self, endpoint: &Endpoint, queues: &[QueueSpec]) -> Sample {
        self.sample_prepared(endpoint, &PreparedQueues::new(queues, true))
            .await
    }

    /// Reads every queue of one policy from its backend, the reads prepared once per generation.
    pub async fn sample_backend(&self, endpoint: &BackendEndpoint, prepared: &PreparedQueues) -> Sample {
        match endpoint {
            BackendEndpoint::Redis(endpoint) => self.sample_prepared(endpoint, prepared).await,
            BackendEndpoint::Nats(endpoint) => self.nats.sample(endpoint, &prepared.consumers).await,
            BackendEndpoint::Kafka(endpoint) => self.kafka.sample(endpoint, &prepared.kafka).await,
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
