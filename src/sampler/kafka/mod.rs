//! Reads Kafka consumer groups' lags, as `kafka-consumer-groups.sh --describe` counts them (see
//! `lag`). One tick of one policy, whatever its partition count:
//!
//! ```text
//!  OffsetFetch ──▶ each group coordinator, all its groups in one request ─┐
//!  ListOffsets ──▶ each partition leader, all its partitions (latest)      ├─▶ lag per partition
//!   (earliest, only for partitions never committed under offsetReset: earliest)
//!  Fetch ───────▶ each leader of a lagging partition, one batch at the      ──▶ latency
//!                 committed offset per partition (with latency on)
//! ```
//! The requests of a round go to their brokers at once; Metadata and FindCoordinator only when
//! the layout is not known, has moved (a reply says so: the round is retried once on the fresh
//! layout) or is old (`cluster::LAYOUT_MAX_AGE`). The cluster's state, connections included, is
//! shared by every policy that names the same bootstrap servers and credentials.

mod batch;
mod cluster;
mod connection;
pub mod credentials;
mod inflate;
mod lag;
mod records;
mod sasl;

use batch::Batch;
pub use cluster::{MAX_BROKERS, MAX_PARTITIONS, MAX_TOPICS};
use connection::{Call, OVERSIZED};
pub use connection::{MAX_FRAME_BYTES, REPLIES_IN_FLIGHT_BYTES};
pub use sasl::SaslAuth;

use super::tls::TlsSettings;
use super::{NodeAddr, PartitionSpread, QueueReading, Sample};
use crate::api::{KafkaSpec, OffsetReset, QueueSpec, QueueType};
use cluster::{Cluster, TopicLayout, error_name};
use futures::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, FetchRequest, GroupId, ListOffsetsRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use lag::PartitionOffsets;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A Kafka cluster (its bootstrap servers) with the credentials to present.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KafkaEndpoint {
    pub bootstrap: Vec<NodeAddr>,
    pub tls: Option<TlsSettings>,
    pub sasl: Option<SaslAuth>,
    pub timeout: Duration,
}

impl KafkaEndpoint {
    /// The endpoint of a policy's `spec.kafka`, with its SASL credentials and CA bundle resolved
    /// by the caller (`with_tls`).
    pub fn from_spec(spec: &KafkaSpec, sasl: Option<SaslAuth>) -> Result<Self, String> {
        let bootstrap = spec
            .bootstrap_servers
            .iter()
            .map(|server| parse_server(server))
            .collect::<Result<Vec<_>, _>>()?;
        if bootstrap.is_empty() {
            return Err("name at least one bootstrap server (host:port)".into());
        }
        Ok(Self {
            bootstrap,
            tls: spec.tls.as_ref().map(|tls| TlsSettings {
                ca_pem: None,
                insecure_skip_verify: tls.insecure_skip_verify,
            }),
            sasl,
            timeout: spec.timeout.into(),
        })
    }

    /// The endpoint with the CA bundle of `spec.kafka.tls.caSecretRef`.
    pub fn with_ca(mut self, ca_pem: Vec<u8>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.ca_pem = Some(ca_pem);
        }
        self
    }
}

fn parse_server(server: &str) -> Result<NodeAddr, String> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{server:?}: the port is not a number from 1 to 65535"))?;
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(format!("{server:?} names no host"));
    }
    Ok(NodeAddr {
        host: host.to_string(),
        port,
    })
}

/// One Kafka queue to read: a group's lag on a topic (or on every topic it commits to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedKafkaQueue {
    pub name: String,
    pub weight: u32,
    topic: Option<String>,
    group: String,
    reset: OffsetReset,
    latency: bool,
}

/// The policy's Kafka queues, prepared once per generation; with `read_latency`, their latencies
/// too.
pub fn prepare(queues: &[QueueSpec], read_latency: bool) -> Vec<PreparedKafkaQueue> {
    queues
        .iter()
        .filter(|q| q.queue_type == QueueType::Kafka)
        .filter_map(|q| {
            Some(PreparedKafkaQueue {
                name: q.name.clone(),
                weight: q.weight,
                topic: q.topic.as_deref().map(String::from),
                group: q.consumer_group.as_deref()?.to_string(),
                reset: q.offset_reset.unwrap_or_default(),
                latency: read_latency,
            })
        })
        .collect()
}

type Partition = (String, i32);

/// A queue's partitions with their offsets, or why they could not be read.
type QueueOffsets = Result<Vec<(Partition, PartitionOffsets)>, String>;

/// Each cluster's state and when a policy last sampled it.
type Clusters = HashMap<KafkaEndpoint, (Arc<Cluster>, Instant)>;

/// One tick's requests and the first connection-level failure among them.
#[derive(Default)]
struct Tally {
    requests: usize,
    unreachable: Option<String>,
}

impl Tally {
    fn failed(&mut self, why: &str) {
        self.unreachable.get_or_insert_with(|| why.to_string());
    }
}

/// A partition's reading, or why it failed; `moved` when the layout changed under it (the
/// partition's leader or its group's coordinator is elsewhere now).
#[derive(Clone, Debug)]
struct Failure {
    message: String,
    moved: bool,
}

fn moved_code(code: i16) -> bool {
    // NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
    // FENCED/UNKNOWN_LEADER_EPOCH, and the coordinator codes.
    matches!(code, 3 | 5 | 6 | 74 | 75 | 14 | 15 | 16)
}

/// Kafka clusters' state; cheap to clone, shared by every policy.
#[derive(Clone)]
pub struct KafkaSampler {
    clusters: Arc<Mutex<Clusters>>,
    /// Each cluster's open batch (`batch.rs`).
    batches: Arc<Mutex<HashMap<KafkaEndpoint, Batch>>>,
    idle_eviction: Duration,
}

impl KafkaSampler {
    pub fn new(idle_eviction: Duration) -> Self {
        Self {
            clusters: Arc::default(),
            batches: Arc::default(),
            idle_eviction,
        }
    }

    fn cluster(&self, endpoint: &KafkaEndpoint) -> Arc<Cluster> {
        let mut clusters = self.clusters.lock().expect("kafka clusters lock");
        clusters.retain(|_, (_, used)| used.elapsed() < self.idle_eviction);
        let entry = clusters
            .entry(endpoint.clone())
            .or_insert_with(|| (Arc::new(Cluster::new(endpoint.clone())), Instant::now()));
        entry.1 = Instant::now();
        entry.0.clone()
    }

    /// Reads every queue of one policy, in one cluster tick with the other policies of its
    /// cluster that ask within `batch::WINDOW`.
    pub async fn sample(&self, endpoint: &KafkaEndpoint, queues: &[PreparedKafkaQueue]) -> Sample {
        let receiver = {
            let mut batches = self.batches.lock().expect("kafka batches lock");
            match batches.get_mut(endpoint) {
                Some(batch) => batch.join(queues),
                None => {
                    let mut batch = Batch::default();
                    let receiver = batch.join(queues);
                    batches.insert(endpoint.clone(), batch);
                    // Its own task: a policy dropping its tick never strands the others.
                    let (sampler, endpoint) = (self.clone(), endpoint.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(batch::WINDOW).await;
                        let batch = sampler
                            .batches
                            .lock()
                            .expect("kafka batches lock")
                            .remove(&endpoint)
                            .expect("the batch this task opened");
                        let sample = sampler.tick(&endpoint, &batch.queues).await;
                        batch.deliver(sample);
                    });
                    receiver
                }
            }
        };
        receiver.await.unwrap_or_else(|_| batch::lost(queues))
    }

    /// One tick of the cluster over `queues` (every policy's of the batch).
    async fn tick(&self, endpoint: &KafkaEndpoint, queues: &[PreparedKafkaQueue]) -> Sample {
        let started = Instant::now();
        let at = jiff::Timestamp::now();
        let cluster = self.cluster(endpoint);
        let tick = Tick {
            cluster: &cluster,
            queues,
            tally: Mutex::default(),
        };
        let deadline = endpoint.timeout.saturating_mul(TICK_DEADLINE_TIMEOUTS);
        let readings = match tokio::time::timeout(deadline, tick.run(at)).await {
            Ok(readings) => readings,
            Err(_) => {
                let why = format!(
                    "the Kafka cluster tick did not end within {deadline:?} ({TICK_DEADLINE_TIMEOUTS} × spec.kafka.timeout): its brokers answer too slowly"
                );
                tick.failed(&why);
                queues.iter().map(|queue| failed_reading(queue, &why)).collect()
            }
        };
        let tally = tick.tally.into_inner().expect("tally lock");
        Sample {
            at,
            queues: readings,
            round_trips: tally.requests,
            unreachable: tally.unreachable,
            memory: None,
            duration: started.elapsed(),
        }
    }
}

/// A cluster tick ends within this many request timeouts, whatever its brokers do: its rounds
/// (Metadata, FindCoordinator, OffsetFetch with ListOffsets, a retry on a moved layout, the
/// starts, DescribeGroups, two Fetch rounds for latency) each take at most one when brokers
/// answer; a broker that trickles its replies, or a Metadata that sends levee from one dead
/// broker to the next, meets this bound instead.
pub const TICK_DEADLINE_TIMEOUTS: u32 = 8;

fn failed_reading(queue: &PreparedKafkaQueue, why: &str) -> QueueReading {
    QueueReading {
        name: queue.name.clone(),
        weight: queue.weight,
        depth: Err(why.to_string()),
        latency: queue.latency.then(|| Err(why.to_string())),
        partitions: None,
    }
}

/// One cluster tick (the queues of every policy in its batch).
struct Tick<'a> {
    cluster: &'a Cluster,
    queues: &'a [PreparedKafkaQueue],
    /// Never held across an await.
    tally: Mutex<Tally>,
}

/// What a group has committed: per partition of the topics asked (or of every topic it commits
/// to), `None` where it has committed nothing.
type Commits = HashMap<Partition, Option<i64>>;

impl Tick<'_> {
    fn count(&self, requests: usize) {
        self.tally.lock().expect("tally lock").requests += requests;
    }

    fn failed(&self, why: &str) {
        self.tally.lock().expect("tally lock").failed(why);
    }

    fn failed_opt(&self, why: Option<String>) {
        if let Some(why) = why {
            self.failed(&why);
        }
    }

    async fn run(&self, at: jiff::Timestamp) -> Vec<QueueReading> {
        let named: BTreeSet<String> = self.queues.iter().filter_map(|q| q.topic.clone()).collect();
        let (mut layouts, sent, failure) = self.cluster.topics(&named, false).await;
        self.count(sent);
        self.failed_opt(failure);

        // The groups' commits and the partitions' ends, at once.
        let groups = self.group_requests(&layouts);
        let known: Vec<Partition> = partitions_of(&layouts, named.iter());
        let none_moved = BTreeSet::new();
        let (mut commits, mut ends) = futures::join!(
            self.offset_fetch(&groups, &none_moved),
            self.list_offsets(&layouts, &known, -1)
        );

        // Topics learned from a topic-less queue's commits, and anything the layout moved under.
        let mut discovered: BTreeSet<String> = BTreeSet::new();
        for queue in self.queues.iter().filter(|q| q.topic.is_none()) {
            if let Some(Ok(group)) = commits.get(&queue.group) {
                discovered.extend(group.keys().map(|(topic, _)| topic.clone()));
            }
        }
        let moved = ends.values().any(|e| e.as_ref().is_err_and(|f| f.moved));
        let new_topics: BTreeSet<String> = discovered.difference(&named).cloned().collect();
        if moved || !new_topics.is_empty() {
            let all: BTreeSet<String> = named.union(&discovered).cloned().collect();
            let (fresh, sent, failure) = self.cluster.topics(&all, moved).await;
            self.count(sent);
            self.failed_opt(failure);
            layouts = fresh;
            let again: Vec<Partition> = partitions_of(&layouts, all.iter())
                .into_iter()
                .filter(|p| !matches!(ends.get(p), Some(Ok(_))))
                .collect();
            ends.extend(self.list_offsets(&layouts, &again, -1).await);
        }
        let moved_groups: BTreeSet<String> = commits
            .iter()
            .filter(|(_, c)| c.as_ref().is_err_and(|f| f.moved))
            .map(|(g, _)| g.clone())
            .collect();
        if !moved_groups.is_empty() {
            let retry: BTreeMap<String, Option<Vec<Partition>>> = groups
                .into_iter()
                .filter(|(g, _)| moved_groups.contains(g))
                .collect();
            commits.extend(self.offset_fetch(&retry, &moved_groups).await);
        }

        // Offsets of each queue's partitions; the starts of those that need them.
        let mut offsets: BTreeMap<&str, QueueOffsets> = BTreeMap::new();
        let mut starts_needed: Vec<Partition> = Vec::new();
        for queue in self.queues {
            let read = self.queue_offsets(queue, &layouts, &commits, &ends);
            if let Ok(partitions) = &read
                && queue.reset == OffsetReset::Earliest
            {
                starts_needed.extend(
                    partitions
                        .iter()
                        .filter(|(_, o)| o.committed.is_none())
                        .map(|(p, _)| p.clone()),
                );
            }
            offsets.insert(&queue.name, read);
        }
        let starts = if starts_needed.is_empty() {
            HashMap::new()
        } else {
            starts_needed.sort();
            starts_needed.dedup();
            self.list_offsets(&layouts, &starts_needed, -2).await
        };
        for partitions in offsets.values_mut().flatten() {
            for (partition, offsets) in partitions.iter_mut() {
                if let Some(Ok(start)) = starts.get(partition) {
                    offsets.start = Some(*start);
                }
            }
        }
        let unknown_groups = self.unknown_groups(&offsets).await;

        // The oldest owed record of each lagging partition, for latency.
        let mut owed: BTreeMap<Partition, i64> = BTreeMap::new();
        for queue in self.queues.iter().filter(|q| q.latency) {
            if let Some(Ok(partitions)) = offsets.get(queue.name.as_str()) {
                for (partition, o) in partitions {
                    if let Some(first) = o.first_owed(queue.reset) {
                        let entry = owed.entry(partition.clone()).or_insert(first);
                        *entry = (*entry).min(first);
                    }
                }
            }
        }
        let stamps = if owed.is_empty() {
            HashMap::new()
        } else {
            self.timestamps(&layouts, &owed).await
        };

        self.queues
            .iter()
            .map(|queue| {
                let read = offsets.remove(queue.name.as_str()).expect("one per queue");
                let read = match unknown_groups.get(&queue.group) {
                    Some(why) => Err(why.clone()),
                    None => read,
                };
                reading(queue, read, &stamps, at)
            })
            .collect()
    }

    /// Per group, the partitions to ask about: those of its queues' topics, or `None` (every
    /// topic it commits to) when one of its queues names no topic.
    fn group_requests(
        &self,
        layouts: &HashMap<String, TopicLayout>,
    ) -> BTreeMap<String, Option<Vec<Partition>>> {
        let mut groups: BTreeMap<String, Option<Vec<Partition>>> = BTreeMap::new();
        for queue in self.queues {
            let entry = groups
                .entry(queue.group.clone())
                .or_insert_with(|| Some(Vec::new()));
            match (&queue.topic, entry.as_mut()) {
                (None, _) => *entry = None,
                (Some(topic), Some(partitions)) => {
                    partitions.extend(partitions_of(layouts, std::iter::once(topic)))
                }
                (Some(_), None) => {}
            }
        }
        for partitions in groups.values_mut().flatten() {
            partitions.sort();
            partitions.dedup();
        }
        groups
    }

    /// One request to each broker at once, made by `request` from that broker's share: counted,
    /// the first connection failure noted, each reply beside the share it answers.
    async fn per_broker<K, R: Call>(
        &self,
        shares: BTreeMap<NodeAddr, Vec<K>>,
        request: impl Fn(&[K]) -> R,
    ) -> Vec<(Vec<K>, Result<R::Reply, String>)> {
        self.count(shares.len());
        let cluster = self.cluster;
        let request = &request;
        let replies = join_all(shares.into_iter().map(|(broker, share)| async move {
            let reply = cluster.call(&broker, &request(&share)).await;
            (share, reply)
        }))
        .await;
        for (_, reply) in &replies {
            // A reply refused for its size came from a broker that answers: not unreachable.
            if let Err(why) = reply
                && !why.contains(OVERSIZED)
            {
                self.failed(why);
            }
        }
        replies
    }

    /// One OffsetFetch per coordinator, all its groups in it; the coordinators of the groups in
    /// `forget` are looked up afresh (they moved).
    async fn offset_fetch(
        &self,
        groups: &BTreeMap<String, Option<Vec<Partition>>>,
        forget: &BTreeSet<String>,
    ) -> HashMap<String, Result<Commits, Failure>> {
        let names: BTreeSet<String> = groups.keys().cloned().collect();
        let (coordinators, sent, failure) = self.cluster.coordinators(&names, forget).await;
        self.count(sent);
        self.failed_opt(failure);
        let mut answer: HashMap<String, Result<Commits, Failure>> = HashMap::new();
        let mut by_coordinator: BTreeMap<NodeAddr, Vec<String>> = BTreeMap::new();
        for (group, coordinator) in coordinators {
            match coordinator {
                Ok(coordinator) => by_coordinator.entry(coordinator).or_default().push(group),
                Err(why) => {
                    answer.insert(
                        group,
                        Err(Failure {
                            message: why,
                            moved: false,
                        }),
                    );
                }
            }
        }
        let request = |names: &[String]| {
            let mut request = OffsetFetchRequest::default();
            request.groups = names
                .iter()
                .map(|group| {
                    let mut entry = OffsetFetchRequestGroup::default();
                    entry.group_id = GroupId(StrBytes::from_string(group.clone()));
                    entry.topics = groups[group]
                        .as_ref()
                        .map(|partitions| topic_requests(partitions));
                    entry
                })
                .collect();
            request
        };
        let coordinator_of: HashMap<String, NodeAddr> = by_coordinator
            .iter()
            .flat_map(|(coordinator, names)| names.iter().map(|g| (g.clone(), coordinator.clone())))
            .collect();
        let mut replies = self.per_broker(by_coordinator, request).await;
        // A reply too large for the bound: one group's commits (another tenant's, perhaps, with
        // kilobytes of metadata a partition) must not fail the others asked with it. Each group
        // is asked again alone, one after the other, and only the one too large fails.
        let oversized: Vec<String> = replies
            .iter()
            .filter(|(names, reply)| {
                names.len() > 1 && reply.as_ref().is_err_and(|why| why.contains(OVERSIZED))
            })
            .flat_map(|(names, _)| names.clone())
            .collect();
        replies.retain(|(names, reply)| {
            !(names.len() > 1 && reply.as_ref().is_err_and(|why| why.contains(OVERSIZED)))
        });
        for group in oversized {
            let alone = BTreeMap::from([(coordinator_of[&group].clone(), vec![group])]);
            replies.extend(self.per_broker(alone, request).await);
        }
        for (names, reply) in replies {
            match reply {
                Ok(reply) => {
                    for group in reply.groups {
                        let name = group.group_id.0.as_str().to_string();
                        if !groups.contains_key(&name) {
                            continue;
                        }
                        let outcome = if group.error_code != 0 {
                            Err(Failure {
                                message: format!("consumer group {name:?}: {}", error_name(group.error_code)),
                                moved: moved_code(group.error_code),
                            })
                        } else {
                            group_commits(&name, &group.topics)
                        };
                        answer.insert(name, outcome);
                    }
                }
                Err(why) => {
                    let moved = !why.contains(OVERSIZED);
                    for group in names {
                        answer.insert(
                            group,
                            Err(Failure {
                                message: why.clone(),
                                moved,
                            }),
                        );
                    }
                }
            }
        }
        answer
    }

    /// One ListOffsets per leader for `partitions` at `timestamp` (-1 latest, -2 earliest).
    async fn list_offsets(
        &self,
        layouts: &HashMap<String, TopicLayout>,
        partitions: &[Partition],
        timestamp: i64,
    ) -> HashMap<Partition, Result<i64, Failure>> {
        let (by_leader, mut answer) = self.by_leader(layouts, partitions).await;
        let replies = self
            .per_broker(by_leader, |partitions| {
                let mut request = ListOffsetsRequest::default();
                request.replica_id = BrokerId(-1);
                request.isolation_level = 0;
                request.topics = group_by_topic(partitions)
                    .into_iter()
                    .map(|(topic, indexes)| {
                        let mut entry = ListOffsetsTopic::default();
                        entry.name = TopicName(StrBytes::from_string(topic));
                        entry.partitions = indexes
                            .into_iter()
                            .map(|index| {
                                let mut p = ListOffsetsPartition::default();
                                p.partition_index = index;
                                p.current_leader_epoch = -1;
                                p.timestamp = timestamp;
                                p
                            })
                            .collect();
                        entry
                    })
                    .collect();
                request
            })
            .await;
        for (asked, reply) in replies {
            match reply {
                Ok(reply) => {
                    for topic in reply.topics {
                        let name = topic.name.0.as_str().to_string();
                        for p in topic.partitions {
                            let outcome = if p.error_code == 0 {
                                Ok(p.offset)
                            } else {
                                Err(Failure {
                                    message: format!(
                                        "{name}/{}: ListOffsets: {}",
                                        p.partition_index,
                                        error_name(p.error_code)
                                    ),
                                    moved: moved_code(p.error_code),
                                })
                            };
                            answer.insert((name.clone(), p.partition_index), outcome);
                        }
                    }
                }
                Err(why) => {
                    for partition in asked {
                        answer.insert(
                            partition,
                            Err(Failure {
                                message: why.clone(),
                                moved: true,
                            }),
                        );
                    }
                }
            }
        }
        answer
    }

    /// `partitions` by their leaders' addresses; those whose leader is unknown, as failures.
    async fn by_leader(
        &self,
        layouts: &HashMap<String, TopicLayout>,
        partitions: &[Partition],
    ) -> (
        BTreeMap<NodeAddr, Vec<Partition>>,
        HashMap<Partition, Result<i64, Failure>>,
    ) {
        let mut by_leader: BTreeMap<NodeAddr, Vec<Partition>> = BTreeMap::new();
        let mut failed = HashMap::new();
        for partition in partitions {
            let leader = match layouts.get(&partition.0) {
                Some(TopicLayout::Partitions(list)) => list
                    .iter()
                    .find(|(index, _)| *index == partition.1)
                    .map(|(_, leader)| *leader),
                _ => None,
            };
            match leader.filter(|id| *id >= 0) {
                Some(id) => match self.cluster.broker(id).await {
                    Some(address) => by_leader.entry(address).or_default().push(partition.clone()),
                    None => {
                        failed.insert(partition.clone(), Err(leaderless(partition)));
                    }
                },
                None => {
                    failed.insert(partition.clone(), Err(leaderless(partition)));
                }
            }
        }
        (by_leader, failed)
    }

    /// A queue's partitions with their offsets, or the first reason one could not be read.
    fn queue_offsets(
        &self,
        queue: &PreparedKafkaQueue,
        layouts: &HashMap<String, TopicLayout>,
        commits: &HashMap<String, Result<Commits, Failure>>,
        ends: &HashMap<Partition, Result<i64, Failure>>,
    ) -> QueueOffsets {
        let group = match commits.get(&queue.group) {
            Some(Ok(group)) => group,
            Some(Err(failure)) => return Err(failure.message.clone()),
            None => {
                return Err(format!(
                    "consumer group {:?}: no coordinator answered",
                    queue.group
                ));
            }
        };
        let topics: Vec<String> = match &queue.topic {
            Some(topic) => match layouts.get(topic) {
                Some(TopicLayout::Partitions(_)) => vec![topic.clone()],
                Some(TopicLayout::Missing(why, _)) => return Err(why.clone()),
                None => return Err(no_layout(topic)),
            },
            None => {
                let set: BTreeSet<String> = group.keys().map(|(t, _)| t.clone()).collect();
                // A topic the group once committed to and that was deleted since is no backlog
                // (as kafka-consumer-groups.sh leaves it out); one never asked about is unknown.
                if let Some(unknown) = set.iter().find(|t| !layouts.contains_key(*t)) {
                    return Err(no_layout(unknown));
                }
                set.into_iter().collect()
            }
        };
        let mut partitions = Vec::new();
        for partition in partitions_of(layouts, topics.iter()) {
            let end = match ends.get(&partition) {
                Some(Ok(end)) => *end,
                Some(Err(failure)) => return Err(failure.message.clone()),
                None => return Err(format!("{}/{}: no end offset read", partition.0, partition.1)),
            };
            let committed = group.get(&partition).copied().flatten();
            partitions.push((
                partition,
                PartitionOffsets {
                    end,
                    committed,
                    start: None,
                },
            ));
        }
        Ok(partitions)
    }

    /// Groups of `latest` queues that committed nothing on any partition of their queues and
    /// that the coordinator says do not exist (state Dead), which would otherwise read as a
    /// silent 0: asked only then, one DescribeGroups per coordinator.
    async fn unknown_groups(&self, offsets: &BTreeMap<&str, QueueOffsets>) -> HashMap<String, String> {
        let suspects: BTreeSet<String> = self
            .queues
            .iter()
            // Under earliest, a group not yet made is a backlog waiting for its first consumer.
            .filter(|q| q.reset == OffsetReset::Latest)
            .filter(|q| match offsets.get(q.name.as_str()) {
                Some(Ok(partitions)) => partitions.iter().all(|(_, o)| o.committed.is_none()),
                _ => false,
            })
            .map(|q| q.group.clone())
            .collect();
        if suspects.is_empty() {
            return HashMap::new();
        }
        let (coordinators, sent, failure) = self.cluster.coordinators(&suspects, &BTreeSet::new()).await;
        self.failed_opt(failure);
        self.count(sent);
        let mut by_coordinator: BTreeMap<NodeAddr, Vec<String>> = BTreeMap::new();
        for (group, coordinator) in coordinators {
            if let Ok(coordinator) = coordinator {
                by_coordinator.entry(coordinator).or_default().push(group);
            }
        }
        let replies = self
            .per_broker(by_coordinator, |groups| {
                let mut request = DescribeGroupsRequest::default();
                request.groups = groups
                    .iter()
                    .map(|g| GroupId(StrBytes::from_string(g.clone())))
                    .collect();
                request
            })
            .await;
        let mut unknown = HashMap::new();
        for (_, reply) in replies {
            let Ok(reply) = reply else { continue };
            for group in reply.groups {
                let name = group.group_id.0.as_str().to_string();
                let dead = group.group_state.as_str() == "Dead" || group.error_code == 69;
                if dead {
                    unknown.insert(
                        name.clone(),
                        format!(
                            "consumer group {name:?} does not exist on the cluster (no member, no committed offset): check the queue's consumerGroup"
                        ),
                    );
                }
            }
        }
        unknown
    }

    /// The timestamp of the record at each partition's offset: one Fetch per leader (one batch
    /// per partition); a partition whose records retention deleted is asked again at its log
    /// start. Values: the record's time in ms, `None` when no record is there.
    async fn timestamps(
        &self,
        layouts: &HashMap<String, TopicLayout>,
        owed: &BTreeMap<Partition, i64>,
    ) -> HashMap<Partition, Result<Option<i64>, String>> {
        let (mut found, retry) = self.fetch_round(layouts, owed).await;
        if !retry.is_empty() {
            let (again, _) = self.fetch_round(layouts, &retry).await;
            found.extend(again);
        }
        found
    }

    async fn fetch_round(
        &self,
        layouts: &HashMap<String, TopicLayout>,
        owed: &BTreeMap<Partition, i64>,
    ) -> (
        HashMap<Partition, Result<Option<i64>, String>>,
        BTreeMap<Partition, i64>,
    ) {
        let wanted: Vec<Partition> = owed.keys().cloned().collect();
        let (by_leader, unled) = self.by_leader(layouts, &wanted).await;
        let mut found: HashMap<Partition, Result<Option<i64>, String>> = unled
            .into_iter()
            .map(|(p, f)| (p, Err(f.expect_err("unled").message)))
            .collect();
        let mut retry = BTreeMap::new();
        let replies = self
            .per_broker(by_leader, |partitions| {
                let mut request = FetchRequest::default();
                request.replica_id = BrokerId(-1);
                request.max_wait_ms = 0;
                request.min_bytes = 1;
                request.max_bytes = i32::try_from(MAX_FRAME_BYTES / 2).unwrap_or(i32::MAX);
                request.isolation_level = 0;
                request.session_id = 0;
                request.session_epoch = -1;
                request.topics = group_by_topic(partitions)
                    .into_iter()
                    .map(|(topic, indexes)| {
                        let mut entry = FetchTopic::default();
                        entry.partitions = indexes
                            .into_iter()
                            .map(|index| {
                                let mut p = FetchPartition::default();
                                p.partition = index;
                                p.current_leader_epoch = -1;
                                p.fetch_offset = owed[&(topic.clone(), index)];
                                p.last_fetched_epoch = -1;
                                p.log_start_offset = -1;
                                p.partition_max_bytes = FETCH_PARTITION_BYTES;
                                p
                            })
                            .collect();
                        entry.topic = TopicName(StrBytes::from_string(topic));
                        entry
                    })
                    .collect();
                request
            })
            .await;
        for (asked, reply) in replies {
            match reply {
                Ok(reply) => {
                    for topic in reply.responses {
                        let name = topic.topic.0.as_str().to_string();
                        for p in topic.partitions {
                            let partition = (name.clone(), p.partition_index);
                            let Some(&offset) = owed.get(&partition) else {
                                continue;
                            };
                            let outcome = match p.error_code {
                                0 => Ok(p.records.as_ref().and_then(|r| records::timestamp_at(r, offset))),
                                // OFFSET_OUT_OF_RANGE: retention deleted the owed records; the
                                // oldest still kept is at the log start.
                                1 if p.log_start_offset > offset => {
                                    retry.insert(partition.clone(), p.log_start_offset);
                                    continue;
                                }
                                code => Err(format!(
                                    "{name}/{}: Fetch for latency: {}",
                                    p.partition_index,
                                    error_name(code)
                                )),
                            };
                            found.insert(partition, outcome);
                        }
                    }
                }
                Err(why) => {
                    for partition in asked {
                        found.insert(partition, Err(why.clone()));
                    }
                }
            }
        }
        (found, retry)
    }
}

/// The bytes asked of each partition in a latency fetch: one batch of small records, and at
/// least the batch header of a larger one (the broker returns a whole first batch regardless).
const FETCH_PARTITION_BYTES: i32 = 64 * 1024;

fn no_layout(topic: &str) -> String {
    format!("topic {topic:?}: its partitions are not known (no broker described it this tick)")
}

fn leaderless(partition: &Partition) -> Failure {
    Failure {
        message: format!(
            "{}/{}: no leader known (the partition is offline or being moved)",
            partition.0, partition.1
        ),
        moved: true,
    }
}

/// Every partition of `topics` that the layout knows.
fn partitions_of<'t>(
    layouts: &HashMap<String, TopicLayout>,
    topics: impl Iterator<Item = &'t String>,
) -> Vec<Partition> {
    topics
        .filter_map(|topic| match layouts.get(topic) {
            Some(TopicLayout::Partitions(list)) => Some(
                list.iter()
                    .map(|(index, _)| (topic.clone(), *index))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

fn group_by_topic(partitions: &[Partition]) -> BTreeMap<String, Vec<i32>> {
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, index) in partitions {
        topics.entry(topic.clone()).or_default().push(*index);
    }
    topics
}

fn topic_requests(partitions: &[Partition]) -> Vec<OffsetFetchRequestTopics> {
    group_by_topic(partitions)
        .into_iter()
        .map(|(topic, indexes)| {
            let mut entry = OffsetFetchRequestTopics::default();
            entry.name = TopicName(StrBytes::from_string(topic));
            entry.partition_indexes = indexes;
            entry
        })
        .collect()
}

fn group_commits(
    group: &str,
    topics: &[kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseTopics],
) -> Result<Commits, Failure> {
    if topics.len() > MAX_TOPICS {
        return Err(Failure {
            message: format!(
                "consumer group {group:?} commits to {} topics, over levee's bound of {MAX_TOPICS}: name the queue's topic",
                topics.len()
            ),
            moved: false,
        });
    }
    let mut commits = Commits::new();
    for topic in topics {
        let name = topic.name.0.as_str().to_string();
        if topic.partitions.len() > MAX_PARTITIONS {
            return Err(Failure {
                message: format!(
                    "consumer group {group:?} on {name}: {} partitions, over levee's bound of {MAX_PARTITIONS}",
                    topic.partitions.len()
                ),
                moved: false,
            });
        }
        for p in &topic.partitions {
            if p.error_code != 0 {
                return Err(Failure {
                    message: format!(
                        "consumer group {group:?} on {name}/{}: {}",
                        p.partition_index,
                        error_name(p.error_code)
                    ),
                    moved: moved_code(p.error_code),
                });
            }
            commits.insert(
                (name.clone(), p.partition_index),
                lag::committed(p.committed_offset),
            );
        }
    }
    Ok(commits)
}

fn reading(
    queue: &PreparedKafkaQueue,
    read: QueueOffsets,
    stamps: &HashMap<Partition, Result<Option<i64>, String>>,
    at: jiff::Timestamp,
) -> QueueReading {
    let depth = read
        .as_ref()
        .map(|partitions| {
            partitions
                .iter()
                .map(|(_, o)| o.lag(queue.reset))
                .fold(0, u64::saturating_add)
        })
        .map_err(Clone::clone);
    let latency = queue.latency.then(|| {
        let partitions = read.as_ref().map_err(Clone::clone)?;
        let mut oldest = Duration::ZERO;
        for (partition, offsets) in partitions {
            if offsets.first_owed(queue.reset).is_none() {
                continue;
            }
            match stamps.get(partition) {
                Some(Ok(Some(millis))) => {
                    let now = at.as_millisecond();
                    let age = Duration::from_millis(u64::try_from(now.saturating_sub(*millis)).unwrap_or(0));
                    oldest = oldest.max(age);
                }
                Some(Ok(None)) => {}
                Some(Err(why)) => return Err(why.clone()),
                None => {
                    return Err(format!(
                        "{}/{}: no record read for latency",
                        partition.0, partition.1
                    ));
                }
            }
        }
        Ok(oldest)
    });
    let partitions = read.as_ref().ok().map(|partitions| PartitionSpread {
        count: u32::try_from(partitions.len()).unwrap_or(u32::MAX),
        max_lag: partitions
            .iter()
            .map(|(_, o)| o.lag(queue.reset))
            .max()
            .unwrap_or(0),
    });
    QueueReading {
        name: queue.name.clone(),
        weight: queue.weight,
        depth,
        latency,
        partitions,
    }
}

/// What a broker sends, parsed as levee parses it, for the fuzz targets
/// (`fuzz/fuzz_targets/kafka_records.rs`, `kafka_reply.rs`): any bytes give an answer or an
/// error, never a panic, and never more memory than their bounds.
#[doc(hidden)]
pub mod untrusted {
    use super::connection::Call;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, HeaderVersion};

    /// The timestamp of the record at or after `offset` in a Fetch's records.
    pub fn record_timestamp(records: &[u8], offset: i64) -> Option<i64> {
        super::records::timestamp_at(&bytes::Bytes::copy_from_slice(records), offset)
    }

    /// Decodes `frame` (a reply header and body) as the reply to levee's request `kind` (any
    /// byte: it picks one of the eight replies levee reads), then reads it as the sampler does.
    /// Whether it decoded.
    pub fn reply(kind: u8, frame: &[u8]) -> bool {
        match kind % 8 {
            0 => decode::<ApiVersionsRequest>(frame).is_some(),
            1 => decode::<MetadataRequest>(frame).is_some_and(|reply| {
                let broker = crate::sampler::NodeAddr {
                    host: "fuzz".into(),
                    port: 9092,
                };
                super::cluster::read_metadata_checked(reply, &broker).is_ok()
            }),
            2 => decode::<FindCoordinatorRequest>(frame).is_some(),
            3 => decode::<OffsetFetchRequest>(frame).is_some_and(|reply| {
                reply
                    .groups
                    .iter()
                    .all(|group| super::group_commits("fuzz", &group.topics).is_ok())
            }),
            4 => decode::<ListOffsetsRequest>(frame).is_some(),
            5 => decode::<FetchRequest>(frame).is_some_and(|reply| {
                for topic in reply.responses {
                    for partition in topic.partitions {
                        if let Some(records) = partition.records {
                            let _ = super::records::timestamp_at(&records, 0);
                        }
                    }
                }
                true
            }),
            6 => decode::<DescribeGroupsRequest>(frame).is_some(),
            _ => decode::<SaslAuthenticateRequest>(frame).is_some(),
        }
    }

    fn decode<R: Call>(frame: &[u8]) -> Option<R::Reply> {
        let mut bytes = bytes::Bytes::copy_from_slice(frame);
        ResponseHeader::decode(&mut bytes, R::Reply::header_version(R::VERSION)).ok()?;
        R::Reply::decode(&mut bytes, R::VERSION).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What the fuzz targets run for minutes (`make fuzz`), briefly in every `make test`.
        #[test]
        fn any_reply_is_read_without_a_panic(kind: u8, frame in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = untrusted::reply(kind, &frame);
        }

        #[test]
        fn any_records_are_walked_without_a_panic(offset: i64, records in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = untrusted::record_timestamp(&records, offset);
        }
    }

    #[test]
    fn bootstrap_servers_are_host_and_port() {
        assert_eq!(
            parse_server("kafka-0.kafka.jobs.svc:9092").unwrap().authority(),
            "kafka-0.kafka.jobs.svc:9092"
        );
        assert_eq!(
            parse_server("[fd00::1]:9093").unwrap().authority(),
            "[fd00::1]:9093"
        );
        assert!(parse_server("kafka").is_err());
        assert!(parse_server("kafka:http").is_err());
        assert!(parse_server(":9092").is_err());
    }
}
