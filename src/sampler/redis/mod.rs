//! //! Reads Redis queues: lists, sorted sets, streams, BullMQ, Celery, RQ and Sidekiq.
//!
//! ```text
//!  policy queues ──QueueProbe──▶ reads ──group by node──▶ one pipeline per node ──▶ depths
//!          └─────LatencyProbe──▶ script ─┘  (hash slot in Cluster mode)    (concurrently)  latencies
//! ```
//! A queue whose layout keeps an enqueue time also gets levee's latency script (EVALSHA) in the
//! same pipeline: one run for all of a node's latency queues (in Cluster mode, one per hash slot),
//! at most 1,000 queues a run (`latency_batch.rs`). The script is loaded when a connection to a node is made; a node that answers
//! `NOSCRIPT` anyway (its scripts flushed) gets the script's source once (EVAL loads it again).
//! Connections are kept per endpoint (mode, URL, credentials, TLS), so every policy that names
//! the same Redis shares them, and no lock is held while one is dialled (`connections.rs`). A
//! broken connection is dropped and re-dialled on the next tick; in Cluster and Sentinel mode the
//! topology is re-discovered too.

mod bounded_reply;
mod connections;
pub mod credentials;
mod dial;
mod discover;
mod endpoint;
mod key_read;
mod latency;
mod latency_batch;
pub(super) mod latency_refresh;
mod memory;
mod probe;
mod redirect;
mod registry;
pub mod slot;
mod topology;

pub use bounded_reply::DEFAULT_MAX_REPLY_BYTES;
pub use discover::Discovered;
pub use endpoint::{Credentials, Endpoint, UrlError};
pub use latency::LatencyProbe;
pub use memory::Memory;
use memory::fullest;
pub use probe::{KeyRead, QueueError, QueueProbe, ReadKind};

use super::{NodeAddr, QueueReading, Sample};
use crate::api::{BackendKind, QueueSpec};
use connections::EndpointConnections;
use futures::future::join_all;
use jiff::Timestamp;
use latency_refresh::{LatencyRefresh, LatencySchedule};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PreparedQueue {
    name: String,
    weight: u32,
    probe: QueueProbe,
    latency: Option<LatencyProbe>,
}

impl PreparedQueue {
    /// The reads this queue sends, depth first, its latency read only when `read_latency`.
    fn reads(&self, read_latency: bool) -> impl Iterator<Item = &KeyRead> {
        self.probe.reads.iter().chain(
            self.latency
                .as_ref()
                .filter(|_| read_latency)
                .map(|latency| &latency.read),
        )
    }
}

/// A Redis policy's queues with their reads, and when each queue's latency is read again (its
/// state is shared by clones).
#[derive(Clone, Debug)]
pub struct PreparedRedis {
    queues: Vec<PreparedQueue>,
    latency_schedule: Arc<Mutex<LatencySchedule>>,
}

impl PreparedRedis {
    /// `queues`' reads, each latency read on `refresh`'s schedule.
    pub(super) fn new(queues: &[QueueSpec], read_latency: bool, refresh: LatencyRefresh) -> Self {
        let queues = prepare(queues, read_latency);
        Self {
            latency_schedule: Arc::new(Mutex::new(LatencySchedule::new(refresh, queues.len()))),
            queues,
        }
    }

    /// `queues` as `spec` reads them: its `readLatency`, and each latency read every
    /// `spec.redis.latencyRefresh`.
    pub(super) fn for_policy(spec: &crate::api::BackpressurePolicySpec, queues: &[QueueSpec]) -> Self {
        let refresh = spec
            .redis
            .as_ref()
            .map_or(Duration::ZERO, |redis| redis.latency_refresh.into());
        let confirm_at = spec.thresholds.latency().map(|bands| bands.recovery);
        let refresh = LatencyRefresh::new(refresh, spec.sample_interval.into(), confirm_at);
        Self::new(queues, spec.read_latency, refresh)
    }

    /// These queues, keeping `previous`'s latency schedule when the queues are the same.
    pub(super) fn continuing(mut self, previous: &PreparedRedis) -> Self {
        if self.queues == previous.queues {
            self.latency_schedule = Arc::clone(&previous.latency_schedule);
        }
        self
    }
}

/// The policy's Redis queues with their depth reads and, with `read_latency`, the latency read of
/// each queue whose layout keeps an enqueue time. Entries with a `keyPattern` are left out:
/// discovery turns them into queues of their own.
fn prepare(queues: &[QueueSpec], read_latency: bool) -> Vec<PreparedQueue> {
    queues
        .iter()
        .filter(|queue| queue.key_pattern.is_none())
        .filter(|queue| queue.queue_type.backend() == BackendKind::Redis)
        .map(|queue| PreparedQueue {
            name: queue.name.clone(),
            weight: queue.weight,
            probe: QueueProbe::for_queue(queue),
            latency: read_latency.then(|| LatencyProbe::for_queue(queue)).flatten(),
        })
        .collect()
}

/// Each queue's reading from its replies (in the order of the reads): its depth, and its latency
/// read where `latency_due` says so, else estimated from its last read (`latency_refresh`).
fn readings(
    prepared: &PreparedRedis,
    latency_due: &[bool],
    replies: Vec<Result<RedisResult<Value>, String>>,
    started: Instant,
) -> Vec<QueueReading> {
    let mut replies = replies.into_iter();
    let mut schedule = prepared.latency_schedule.lock().expect("latency schedule lock");
    let queues = prepared
        .queues
        .iter()
        .zip(latency_due)
        .enumerate()
        .map(|(slot, (queue, &due))| {
            let own: Vec<Result<RedisResult<Value>, String>> =
                replies.by_ref().take(queue.probe.reads.len()).collect();
            let depth = match own.iter().find_map(|r| r.as_ref().err()) {
                Some(endpoint_error) => Err(endpoint_error.clone()),
                None => {
                    let own: Vec<RedisResult<Value>> =
                        own.into_iter().map(|r| r.expect("checked above")).collect();
                    queue.probe.depth(&own).map_err(|e| e.to_string())
                }
            };
            let latency = queue.latency.as_ref().map(|probe| {
                if !due {
                    return schedule.estimate(slot, &depth, started);
                }
                let read = match replies.next().expect("one reply per read") {
                    Ok(reply) => probe.age(&reply).map_err(|e| e.to_string()),
                    Err(endpoint_error) => Err(endpoint_error),
                };
                schedule.record(slot, &read, started);
                read
            });
            QueueReading {
                name: queue.name.clone(),
                weight: queue.weight,
                depth,
                latency,
                partitions: None,
            }
        })
        .collect();
    schedule.end_tick();
    queues
}

/// What one round of pipelines read.
struct ReadOutcome {
    /// In the order of the reads: the server's reply, or an endpoint-level error message.
    replies: Vec<Result<RedisResult<Value>, String>>,
    round_trips: usize,
    /// Whether a reply was a cluster redirection.
    redirected: bool,
    /// Every master's memory (when asked), or why one could not be read.
    memory: Result<Vec<Memory>, String>,
}

/// An endpoint's connections and when a policy last sampled it.
type Entry = (Arc<EndpointConnections>, Instant);

/// Reads Redis queues, keeping connections per endpoint; cheap to clone, shared by every policy.
#[derive(Clone)]
pub struct RedisSampler {
    endpoints: Arc<Mutex<HashMap<Endpoint, Entry>>>,
    /// An endpoint no policy sampled for this long is dropped with its connections.
    idle_eviction: Duration,
}

impl RedisSampler {
    pub fn new(idle_eviction: Duration) -> Self {
        Self {
            endpoints: Arc::default(),
            idle_eviction,
        }
    }

    /// Number of endpoints with live state.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.lock().expect("endpoint map lock").len()
    }

    /// Reads every queue of one policy (depths and latencies) with the reads prepared once per
    /// policy generation: one pipeline per Redis node, all nodes at once.
    pub async fn sample_prepared(&self, endpoint: &Endpoint, prepared: &PreparedRedis) -> Sample {
        let started = Instant::now();
        let at = Timestamp::now();
        let latency_due: Vec<bool> = {
            let schedule = prepared.latency_schedule.lock().expect("latency schedule lock");
            (0..prepared.queues.len())
                .map(|slot| schedule.due(slot, started))
                .collect()
        };
        let reads: Vec<&KeyRead> = prepared
            .queues
            .iter()
            .zip(&latency_due)
            .flat_map(|(queue, &due)| queue.reads(due))
            .collect();
        let state = self.state_of(endpoint);
        let mut read = self.read_all(endpoint, &state, &reads, false, true).await;
        if read.redirected {
            // The cluster moved slots: learn the new layout and read once more.
            state.forget_topology();
            let trips = read.round_trips;
            read = self.read_all(endpoint, &state, &reads, false, true).await;
            read.round_trips += trips;
        }
        let ReadOutcome {
            mut replies,
            mut round_trips,
            memory,
            ..
        } = read;
        round_trips += redirect::follow_asks(endpoint, &state, &reads, &mut replies).await;
        round_trips += self.load_scripts(endpoint, &state, &reads, &mut replies).await;
        let unreachable = replies.iter().find_map(|r| r.as_ref().err()).cloned();
        let queues = readings(prepared, &latency_due, replies, started);
        let mut memory = memory
            .and_then(|nodes| fullest(nodes).ok_or_else(|| "no Redis node answered INFO memory".to_string()));
        if let Ok(fullest) = &mut memory
            && fullest.max_bytes.is_some()
            && fullest.eviction_policy.starts_with("volatile-")
        {
            let (keys, trips) = self.keys_with_ttl(endpoint, &state, &reads).await;
            fullest.queue_keys_with_ttl = keys;
            round_trips += trips;
        }
        Sample {
            at,
            queues,
            round_trips,
            unreachable,
            memory: Some(memory),
            duration: started.elapsed(),
        }
    }

    /// The keys of `reads` that carry a TTL (`PTTL` of each, one pipeline per node): what a
    /// `volatile-*` Redis may evict. `None` when one could not be read. Asked only of a Redis
    /// with such a policy, so other ticks pay nothing.
    async fn keys_with_ttl(
        &self,
        endpoint: &Endpoint,
        state: &EndpointConnections,
        reads: &[&KeyRead],
    ) -> (Option<Vec<String>>, usize) {
        let mut keys: Vec<&str> = reads
            .iter()
            .filter(|read| read.kind != ReadKind::Latency)
            .map(|read| read.key.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let ttl_reads: Vec<KeyRead> = keys
            .iter()
            .map(|key| KeyRead::new(ReadKind::Pttl, *key))
            .collect();
        let refs: Vec<&KeyRead> = ttl_reads.iter().collect();
        let read = self.read_all(endpoint, state, &refs, false, false).await;
        let mut with_ttl = Vec::new();
        for (key, reply) in keys.iter().zip(read.replies) {
            match reply {
                Ok(Ok(Value::Int(ttl))) if ttl >= 0 => with_ttl.push(key.to_string()),
                Ok(Ok(Value::Int(_))) => {}
                _ => return (None, read.round_trips),
            }
        }
        with_ttl.truncate(memory::MAX_TTL_KEYS);
        (Some(with_ttl), read.round_trips)
    }

    fn state_of(&self, endpoint: &Endpoint) -> Arc<EndpointConnections> {
        let now = Instant::now();
        let mut endpoints = self.endpoints.lock().expect("endpoint map lock");
        endpoints.retain(|_, (_, used)| now.duration_since(*used) < self.idle_eviction);
        let entry = endpoints
            .entry(endpoint.clone())
            .or_insert_with(|| (Arc::default(), now));
        entry.1 = now;
        entry.0.clone()
    }

    /// Sends the latency script's source to the nodes that answered `NOSCRIPT` (restarted, or
    /// flushed): it runs and stays loaded. Returns the round trips made (none on most ticks).
    async fn load_scripts(
        &self,
        endpoint: &Endpoint,
        state: &EndpointConnections,
        reads: &[&KeyRead],
        replies: &mut [Result<RedisResult<Value>, String>],
    ) -> usize {
        let unloaded: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, reply)| matches!(reply, Ok(Err(error)) if latency::is_unloaded(error)))
            .map(|(index, _)| index)
            .collect();
        if unloaded.is_empty() {
            return 0;
        }
        let again: Vec<&KeyRead> = unloaded.iter().map(|&index| reads[index]).collect();
        let read = self.read_all(endpoint, state, &again, true, false).await;
        for (index, answer) in unloaded.into_iter().zip(read.replies) {
            replies[index] = answer;
        }
        read.round_trips
    }

    /// Replies in the order of `reads`: the server's reply, or an endpoint-level error message;
    /// the round trips made and whether any reply was a cluster redirection; with `memory`, every
    /// master's `INFO memory` in the same pipelines. `load` sends scripts by their source rather
    /// than their SHA1.
    async fn read_all(
        &self,
        endpoint: &Endpoint,
        state: &EndpointConnections,
        reads: &[&KeyRead],
        load: bool,
        memory: bool,
    ) -> ReadOutcome {
        let (plan, recent) = match self.plan(endpoint, state, reads, memory).await {
            Ok(plan) => plan,
            Err(message) => {
                return ReadOutcome {
                    replies: reads.iter().map(|_| Err(message.clone())).collect(),
                    round_trips: 0,
                    redirected: false,
                    memory: Err(message),
                };
            }
        };
        let round_trips = plan.len();
        // A script's keys must share a hash slot in Cluster mode; elsewhere one run a node.
        let cluster = endpoint.mode == crate::api::RedisMode::Cluster;
        let group_of = |read: &KeyRead| {
            if cluster {
                slot::slot_of(read.key.as_bytes())
            } else {
                0
            }
        };
        let results = join_all(plan.into_iter().map(|plan| async move {
            let commands = latency_batch::commands(reads, &plan.indices, group_of);
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            for command in &commands {
                pipeline.add_command(latency_batch::build(command, reads, load));
            }
            // The node's memory, in the same round trip.
            if plan.info {
                pipeline.add_command(memory::command());
            }
            let mut connection = plan.connection;
            let outcome = tokio::time::timeout(
                endpoint.timeout,
                pipeline.query_async::<Vec<RedisResult<Value>>>(&mut connection),
            )
            .await;
            (plan.node, plan.info, commands, outcome)
        }))
        .await;
        let mut replies: Vec<Result<RedisResult<Value>, String>> =
            reads.iter().map(|_| Err(String::new())).collect();
        let mut redirected = false;
        let mut broken = Vec::new();
        let mut silent = Vec::new();
        let mut memories: Result<Vec<Memory>, String> = Ok(recent);
        let expected = |commands: &[latency_batch::Command], info: bool| commands.len() + usize::from(info);
        for (node, info, commands, outcome) in results {
            if matches!(outcome, Ok(Ok(_))) {
                state.answered(&node);
            }
            match outcome {
                Ok(Ok(mut values)) if values.len() == expected(&commands, info) => {
                    if info {
                        let read = match values.pop().expect("the INFO reply") {
                            Ok(reply) => Memory::parse(&node, &reply),
                            Err(error) => Err(node_message(
                                endpoint,
                                &node,
                                &format!("INFO memory: {}", describe(&error, endpoint)),
                            )),
                        };
                        if let Ok(memory) = &read {
                            state.remember_memory(&node, memory);
                        }
                        memories = memories.and_then(|mut all| {
                            all.push(read?);
                            Ok(all)
                        });
                    }
                    for (command, value) in commands.iter().zip(values) {
                        for (&index, value) in
                            command.reads().iter().zip(latency_batch::split(command, value))
                        {
                            redirected |= value.as_ref().err().is_some_and(is_redirect);
                            replies[index] = match value {
                                // A latency read the ACL forbids fails the latency alone.
                                Err(error)
                                    if is_access_error(&error) && reads[index].kind != ReadKind::Latency =>
                                {
                                    Err(node_message(endpoint, &node, &describe(&error, endpoint)))
                                }
                                value => Ok(value),
                            };
                        }
                    }
                }
                failure => {
                    // Late (ours or the client's own response timeout), not broken.
                    let timed_out = match &failure {
                        Err(_) => true,
                        Ok(Err(error)) => error.is_timeout(),
                        Ok(Ok(_)) => false,
                    };
                    let message = match failure {
                        Ok(Ok(values)) => {
                            format!(
                                "{} replies for {} commands",
                                values.len(),
                                expected(&commands, info)
                            )
                        }
                        Ok(Err(error)) => describe(&error, endpoint),
                        Err(_) => format!("no answer within {:?}", endpoint.timeout),
                    };
                    let message = node_message(endpoint, &node, &message);
                    for &index in commands.iter().flat_map(latency_batch::Command::reads) {
                        replies[index] = Err(message.clone());
                    }
                    if info && memories.is_ok() {
                        memories = Err(message);
                    }
                    if timed_out {
                        silent.push(node);
                    } else {
                        broken.push(node);
                    }
                }
            }
        }
        state.forget_connections(&broken);
        let dropped_silent = state.forget_silent(&silent, super::silence(endpoint.timeout));
        if (!broken.is_empty() || dropped_silent) && endpoint.mode != crate::api::RedisMode::Standalone {
            state.forget_topology();
        }
        ReadOutcome {
            replies,
            round_trips,
            redirected,
            memory: memories,
        }
    }

    /// Which node gets which reads, with a connection to each, and (with `memory`) whether it
    /// is asked for `INFO memory`; the memories another tick read recently enough.
    async fn plan(
        &self,
        endpoint: &Endpoint,
        state: &EndpointConnections,
        reads: &[&KeyRead],
        memory: bool,
    ) -> Result<(Vec<NodePlan>, Vec<Memory>), String> {
        let topology = state.topology(endpoint).await?;
        let mut by_node: BTreeMap<NodeAddr, (Vec<usize>, bool)> = BTreeMap::new();
        let mut recent = Vec::new();
        if memory {
            // Every master, the ones without this policy's keys too: any of them can fill up.
            // A reading another policy's tick took within MEMORY_MAX_AGE is used as it is.
            for node in topology.nodes() {
                match state.recent_memory(&node, MEMORY_MAX_AGE) {
                    Some(memory) => recent.push(memory),
                    None => by_node.entry(node).or_default().1 = true,
                }
            }
        }
        for (index, read) in reads.iter().enumerate() {
            by_node
                .entry(topology.node_for(read.key.as_bytes()).clone())
                .or_default()
                .0
                .push(index);
        }
        // Every node's connection at once; the dials are shared with the other policies.
        let connected = join_all(by_node.into_iter().map(|(node, (indices, info))| async move {
            let connection = state.connection(endpoint, &node).await?;
            // Once per node, and only when a read needs it, so the first tick of a latency read
            // needs no second round trip.
            if indices.iter().any(|&i| reads[i].kind == ReadKind::Latency) && state.first_script_use(&node) {
                latency::preload(&mut connection.clone(), endpoint.timeout).await;
            }
            Ok::<_, String>(NodePlan {
                node,
                connection,
                indices,
                info,
            })
        }))
        .await;
        let plan: Result<Vec<_>, String> = connected.into_iter().collect();
        if plan.is_err() && endpoint.mode != crate::api::RedisMode::Standalone {
            // The node may be a master that died and is being replaced (a failover): ask the
            // sentinel or the cluster again next tick rather than dial the dead one for ever.
            state.forget_topology();
        }
        Ok((plan?, recent))
    }
}

/// What one node of a tick is sent.
struct NodePlan {
    node: NodeAddr,
    connection: MultiplexedConnection,
    /// The reads it answers, by index.
    indices: Vec<usize>,
    /// Whether its `INFO memory` is asked for (none recent enough from another tick).
    info: bool,
}

/// How old a node's `INFO memory` may be and still serve another policy's tick on the same
/// endpoint: 1,000 policies ticking every second on one Redis then ask it about 4 times a second,
/// not 1,000.
pub const MEMORY_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(250);

/// A multiplexed connection to `node` with the endpoint's deadline on connecting and replies.
async fn connect(
    endpoint: &Endpoint,
    node: &NodeAddr,
    db: i64,
    authenticate: bool,
) -> Result<MultiplexedConnection, String> {
    match tokio::time::timeout(endpoint.timeout * 2, dial::dial(endpoint, node, db, authenticate)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(node_message(endpoint, node, &describe_dial(&error, endpoint))),
        Err(_) => Err(node_message(
            endpoint,
            node,
            &format!("no connection within {:?}", endpoint.timeout * 2),
        )),
    }
}

fn node_message(endpoint: &Endpoint, node: &NodeAddr, message: &str) -> String {
    if endpoint.seed() == *node {
        format!("{endpoint}: {message}")
    } else {
        format!("{endpoint} (node {node}): {message}")
    }
}

/// Errors about who levee is, not about the queue: reported as the endpoint's.
fn is_access_error(error: &RedisError) -> bool {
    matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// The slot has a new owner: re-discover the topology. (An `ASK`, a slot half-way through a
/// migration, is followed by `redirect`: the topology has not changed yet.)
fn is_redirect(error: &RedisError) -> bool {
    error.code() == Some("MOVED")
}

/// A failed dial in words a person can act on.
fn describe_dial(error: &dial::DialError, endpoint: &Endpoint) -> String {
    match error {
        dial::DialError::Io(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused: is Redis listening at {}?", endpoint.seed())
        }
        dial::DialError::Io(error) => error.to_string(),
        dial::DialError::Tls(message) => message.clone(),
        dial::DialError::Redis(error) => describe(error, endpoint),
    }
}

/// A connection-level error in words a person can act on.
fn describe(error: &RedisError, endpoint: &Endpoint) -> String {
    match error.code() {
        Some("NOAUTH") => "Redis requires a password: set credentialsSecretRef".into(),
        Some("WRONGPASS") => {
            "authentication failed: check the username and password in credentialsSecretRef".into()
        }
        Some("NOPERM") => format!("the ACL user may not read queues ({error}): grant it +@read"),
        _ if error.is_connection_refusal() => {
            format!("connection refused: is Redis listening at {}?", endpoint.seed())
        }
        _ if error.is_timeout() => format!("no answer within {:?}", endpoint.timeout),
        _ => error.to_string(),
    }
}
