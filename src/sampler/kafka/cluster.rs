//! What levee knows of one Kafka cluster, shared by every policy that names it: a connection per
//! broker (dialled when first needed, one dial at a time, a failed dial not tried again for a
//! back-off that doubles up to `DIAL_BACKOFF_MAX`, so that the policies of a tick do not each
//! wait on a dead broker), who leads which partition (Metadata: at first use, when a reply says
//! the layout moved, and every `LAYOUT_MAX_AGE`) and which broker coordinates which group
//! (FindCoordinator, batched).
//!
//! Tenants share a cluster, so Metadata asks for exactly the topics the tick needs, never a
//! window of every topic known (another namespace's names could fill it and push a policy's topic
//! out: its lag read as 0); a topic the broker does not describe is an error on its queues.
//! Metadata never lets the broker create a topic (`allow_auto_topic_creation` false): levee
//! never writes to a broker it reads. What a Metadata reply may name is bounded (`MAX_BROKERS`,
//! `MAX_PARTITIONS`) and the connections kept are those of the brokers it names.

use super::KafkaEndpoint;
use super::connection::reply_budget;
use super::connection::{BrokerConnection, Call};
use crate::sampler::NodeAddr;
use kafka_protocol::messages::{
    FindCoordinatorRequest, MetadataRequest, MetadataResponse, TopicName,
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The layout is asked again at least this often, moved or not.
pub const LAYOUT_MAX_AGE: Duration = Duration::from_secs(300);
/// A topic Metadata said does not exist is asked about again after this long (it may be created).
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(10);
/// The most topics one queue without `topic` covers (the topics its group commits to, which the
/// cluster decides), and partitions per topic; more is an error on that queue, never a silent
/// undercount. Kafka's own default cap is 200,000 partitions a cluster; 10,000 in one topic is
/// well past any job queue.
pub const MAX_TOPICS: usize = 1_000;
pub const MAX_PARTITIONS: usize = 10_000;
/// The most topics one Metadata request names: a tick needing more asks in several.
const TOPICS_PER_METADATA: usize = 500;
/// The most brokers a Metadata reply may name: the largest clusters run a few hundred.
pub const MAX_BROKERS: usize = 1_000;
/// A failed dial waits this long before the next (the endpoint's timeout at first, doubling).
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One topic's partitions and their leaders, or why it has none.
#[derive(Clone, Debug)]
pub enum TopicLayout {
    Partitions(Vec<(i32, i32)>),
    Missing(String, Instant),
}

/// A topic's layout, when Metadata last described it (each topic is asked again after
/// `LAYOUT_MAX_AGE`, whichever tick needs it: ticks ask for their own topics) and when a tick last
/// needed it (a topic no tick needed for `LAYOUT_MAX_AGE` is forgotten).
struct KnownTopic {
    layout: TopicLayout,
    asked: Instant,
    needed: Instant,
}

#[derive(Default)]
struct Layout {
    brokers: HashMap<i32, NodeAddr>,
    /// Each topic asked about.
    topics: HashMap<String, KnownTopic>,
    coordinators: HashMap<String, i32>,
    asked: Option<Instant>,
}

/// A broker's connection, or the last dial's failure and how long to wait before the next.
#[derive(Default)]
struct Slot {
    connection: Option<BrokerConnection>,
    failed: Option<DialFailure>,
}

struct DialFailure {
    at: Instant,
    why: String,
    backoff: Duration,
}

/// One cluster's shared state.
pub struct Cluster {
    endpoint: KafkaEndpoint,
    layout: tokio::sync::Mutex<Layout>,
    slots: Mutex<HashMap<NodeAddr, Arc<tokio::sync::Mutex<Slot>>>>,
    /// The reply bytes its connections may hold at once (`connection::REPLIES_IN_FLIGHT_BYTES`).
    budget: Arc<Semaphore>,
}

impl Cluster {
    pub fn new(endpoint: KafkaEndpoint) -> Self {
        Self {
            endpoint,
            layout: tokio::sync::Mutex::default(),
            slots: Mutex::default(),
            budget: reply_budget(),
        }
    }

    /// Sends `request` to `broker` on its shared connection (dialled if need be). A failure
    /// drops the connection.
    pub async fn call<R: Call>(&self, broker: &NodeAddr, request: &R) -> Result<R::Reply, String> {
        let slot = self
            .slots
            .lock()
            .expect("kafka slots lock")
            .entry(broker.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let timeout = self.endpoint.timeout;
        // Taken out while in use: a call dropped half way (the tick's deadline) leaves no
        // half-read connection behind.
        let mut connection = match slot.connection.take() {
            Some(connection) => connection,
            None => {
                if let Some(failed) = &slot.failed
                    && failed.at.elapsed() < failed.backoff
                {
                    return Err(failed.why.clone());
                }
                match BrokerConnection::connect(broker, &self.endpoint, self.budget.clone()).await {
                    Ok(connection) => {
                        slot.failed = None;
                        connection
                    }
                    Err(why) => {
                        let backoff = slot
                            .failed
                            .as_ref()
                            .map_or(timeout, |f| f.backoff.saturating_mul(2))
                            .min(DIAL_BACKOFF_MAX);
                        slot.failed = Some(DialFailure {
                            at: Instant::now(),
                            why: why.clone(),
                            backoff,
                        });
                        return Err(why);
                    }
                }
            }
        };
        let outcome = connection.call(request, timeout).await;
        if outcome.is_ok() {
            slot.connection = Some(connection);
        }
        outcome
    }

    /// Drops the connections of brokers the cluster no longer names.
    fn prune_slots(&self, layout: &Layout) {
        let keep: HashSet<&NodeAddr> = layout
            .brokers
            .values()
            .chain(self.endpoint.bootstrap.iter())
            .collect();
        self.slots
            .lock()
            .expect("kafka slots lock")
            .retain(|address, _| keep.contains(address));
    }

    /// The address of a broker by id.
    pub async fn broker(&self, id: i32) -> Option<NodeAddr> {
        self.layout.lock().await.brokers.get(&id).cloned()
    }

    /// The layouts of `topics` (what one tick needs), asking Metadata for exactly them when one
    /// is unknown, a missing one is due to be asked again, the layout is older than
    /// `LAYOUT_MAX_AGE`, or `moved` says it changed. A topic asked about and not described by
    /// the broker is `Missing`. Returns the layouts, the requests made and the connection
    /// failure if no broker answered.
    pub async fn topics(
        &self,
        topics: &BTreeSet<String>,
        moved: bool,
    ) -> (HashMap<String, TopicLayout>, usize, Option<String>) {
        let mut layout = self.layout.lock().await;
        let now = Instant::now();
        let due = moved
            || layout.asked.is_none_or(|asked| asked.elapsed() > LAYOUT_MAX_AGE)
            || topics.iter().any(|topic| match layout.topics.get(topic) {
                None => true,
                Some(known) => match known.layout {
                    TopicLayout::Missing(_, when) => when.elapsed() > MISSING_TOPIC_RETRY,
                    TopicLayout::Partitions(_) => known.asked.elapsed() > LAYOUT_MAX_AGE,
                },
            });
        let mut requests = 0;
        let mut failure = None;
        if due {
            let wanted: Vec<String> = topics.iter().cloned().collect();
            let (outcome, sent) = self.ask_metadata(&layout, &wanted).await;
            requests += sent;
            match outcome {
                Ok(fresh) => {
                    // The cluster's own list: a broker that left it is no longer asked.
                    layout.brokers = fresh.brokers;
                    layout
                        .topics
                        .retain(|_, known| known.needed.elapsed() < LAYOUT_MAX_AGE);
                    for topic in topics {
                        let found = fresh.topics.get(topic).map_or_else(
                            || {
                                TopicLayout::Missing(
                                    format!(
                                        "topic {topic:?}: the broker's Metadata reply does not describe it"
                                    ),
                                    now,
                                )
                            },
                            |known| known.layout.clone(),
                        );
                        let known = KnownTopic {
                            layout: found,
                            asked: now,
                            needed: now,
                        };
                        layout.topics.insert(topic.clone(), known);
                    }
                    layout.asked = Some(now);
                    self.prune_slots(&layout);
                }
                Err(why) => {
                    failure = Some(why.clone());
                    for topic in topics {
                        let known = layout.topics.get(topic);
                        if !known.is_some_and(|k| matches!(k.layout, TopicLayout::Partitions(_))) {
                            let missing = KnownTopic {
                                layout: TopicLayout::Missing(why.clone(), now),
                                asked: now,
                                needed: now,
                            };
                            layout.topics.insert(topic.clone(), missing);
                        }
                    }
                }
            }
        }
        let found = topics
            .iter()
            .filter_map(|topic| {
                let known = layout.topics.get_mut(topic)?;
                known.needed = now;
                Some((topic.clone(), known.layout.clone()))
            })
            .collect();
        (found, requests, failure)
    }

    /// Metadata for `topics` (in requests of at most `TOPICS_PER_METADATA`), each from the first
    /// broker that answers: the known brokers, then the bootstrap servers.
    async fn ask_metadata(&self, layout: &Layout, topics: &[String]) -> (Result<Layout, String>, usize) {
        let mut fresh = Layout::default();
        let mut sent = 0;
        let chunks: Vec<&[String]> = if topics.is_empty() {
            vec![&[]]
        } else {
            topics.chunks(TOPICS_PER_METADATA).collect()
        };
        for chunk in chunks {
            let (outcome, asked) = self.ask_metadata_once(layout, chunk).await;
            sent += asked;
            match outcome {
                Ok(part) => {
                    fresh.brokers = part.brokers;
                    fresh.topics.extend(part.topics);
                }
                Err(why) => return (Err(why), sent),
            }
        }
        (Ok(fresh), sent)
    }

    async fn ask_metadata_once(&self, layout: &Layout, topics: &[String]) -> (Result<Layout, String>, usize) {
        let mut request = MetadataRequest::default();
        request.allow_auto_topic_creation = false;
        request.topics = Some(
            topics
                .iter()
                .map(|topic| {
                    let mut entry = MetadataRequestTopic::default();
                    entry.name = Some(TopicName(StrBytes::from_string(topic.clone())));
                    entry
                })
                .collect(),
        );
        let candidates = self.candidates(layout);
        let mut last = String::from("no bootstrap server");
        for (asked, broker) in candidates.iter().enumerate() {
            match self.call(broker, &request).await {
                Ok(reply) => return (read_metadata(reply, broker), asked + 1),
                Err(why) => last = why,
            }
        }
        (Err(last), candidates.len())
    }

    /// The coordinators of `groups`, asking FindCoordinator (one request for all of them) for
    /// those not known or `forget`-ten. Returns each group's coordinator or why it has none, and
    /// the requests made, and the connection failure if the broker asked did not answer.
    pub async fn coordinators(
        &self,
        groups: &BTreeSet<String>,
        forget: &BTreeSet<String>,
    ) -> (HashMap<String, Result<NodeAddr, String>>, usize, Option<String>) {
        let mut layout = self.layout.lock().await;
        for group in forget {
            layout.coordinators.remove(group);
        }
        let unknown: Vec<String> = groups
            .iter()
            .filter(|g| !layout.coordinators.contains_key(*g))
            .cloned()
            .collect();
        let mut failed: HashMap<String, String> = HashMap::new();
        let mut requests = 0;
        let mut failure = None;
        if !unknown.is_empty() {
            let mut request = FindCoordinatorRequest::default();
            request.key_type = 0;
            request.coordinator_keys = unknown.iter().map(|g| StrBytes::from_string(g.clone())).collect();
            let mut answered = None;
            let mut last = String::from("no bootstrap server");
            for broker in self.candidates(&layout) {
                requests += 1;
                match self.call(&broker, &request).await {
                    Ok(reply) => {
                        answered = Some(reply);
                        break;
                    }
                    Err(why) => last = why,
                }
            }
            match answered.ok_or(last) {
                Ok(reply) => {
                    for found in reply.coordinators {
                        let group = found.key.as_str().to_string();
                        match u16::try_from(found.port) {
                            Ok(port) if found.error_code == 0 => {
                                let host = found.host.as_str().to_string();
                                layout.brokers.insert(found.node_id.0, NodeAddr { host, port });
                                layout.coordinators.insert(group, found.node_id.0);
                            }
                            _ => {
                                let message = found.error_message.as_ref().map_or("", |m| m.as_str());
                                failed.insert(
                                    group.clone(),
                                    format!(
                                        "no coordinator for consumer group {group:?} ({}{message})",
                                        error_name(found.error_code)
                                    ),
                                );
                            }
                        }
                    }
                }
                Err(why) => {
                    failure = Some(why.clone());
                    for group in &unknown {
                        failed.insert(group.clone(), why.clone());
                    }
                }
            }
        }
        let answer = groups
            .iter()
            .map(|group| {
                let found = layout
                    .coordinators
                    .get(group)
                    .and_then(|id| layout.brokers.get(id).cloned())
                    .ok_or_else(|| {
                        failed
                            .get(group)
                            .cloned()
                            .unwrap_or_else(|| format!("no coordinator for consumer group {group:?}"))
                    });
                (group.clone(), found)
            })
            .collect();
        (answer, requests, failure)
    }

    /// The brokers to ask for the cluster's layout, in turn until one answers: those the last
    /// Metadata named, then the bootstrap servers, each once.
    fn candidates(&self, layout: &Layout) -> Vec<NodeAddr> {
        let mut known: Vec<NodeAddr> = layout.brokers.values().cloned().collect();
        known.sort();
        let mut seen = std::collections::HashSet::new();
        known
            .into_iter()
            .chain(self.endpoint.bootstrap.iter().cloned())
            .filter(|broker| seen.insert(broker.clone()))
            .collect()
    }
}

/// The layout a Metadata reply describes, bounded: at most `MAX_BROKERS` brokers and
/// `MAX_PARTITIONS` partitions a topic, or an error that says which bound it passed.
fn read_metadata(reply: MetadataResponse, broker: &NodeAddr) -> Result<Layout, String> {
    if reply.brokers.len() > MAX_BROKERS {
        return Err(format!(
            "the broker at {broker} names {} brokers in its cluster, over levee's bound of {MAX_BROKERS}",
            reply.brokers.len()
        ));
    }
    let now = Instant::now();
    let mut fresh = Layout::default();
    for broker in reply.brokers {
        if let Ok(port) = u16::try_from(broker.port) {
            let host = broker.host.as_str().to_string();
            fresh.brokers.insert(broker.node_id.0, NodeAddr { host, port });
        }
    }
    for topic in reply.topics {
        let Some(name) = topic.name else { continue };
        let name = name.0.as_str().to_string();
        let entry = if topic.error_code != 0 {
            TopicLayout::Missing(describe_topic_error(&name, topic.error_code), now)
        } else if topic.partitions.len() > MAX_PARTITIONS {
            TopicLayout::Missing(
                format!(
                    "topic {name:?} has {} partitions, over levee's bound of {MAX_PARTITIONS}",
                    topic.partitions.len()
                ),
                now,
            )
        } else {
            let mut partitions: Vec<(i32, i32)> = topic
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect();
            partitions.sort();
            partitions.dedup_by_key(|(index, _)| *index);
            TopicLayout::Partitions(partitions)
        };
        let known = KnownTopic {
            layout: entry,
            asked: now,
            needed: now,
        };
        fresh.topics.insert(name, known);
    }
    Ok(fresh)
}

/// Whether a Metadata reply describes a layout within levee's bounds (for the fuzz targets).
pub(super) fn read_metadata_checked(reply: MetadataResponse, broker: &NodeAddr) -> Result<(), String> {
    read_metadata(reply, broker).map(|_| ())
}

/// An error code's name (`NOT_COORDINATOR (16)`).
pub fn error_name(code: i16) -> String {
    use kafka_protocol::error::ParseResponseErrorCode;
    match code.err() {
        Some(error) => format!("{error:?} ({code})"),
        None => "no error".into(),
    }
}

fn describe_topic_error(topic: &str, code: i16) -> String {
    if code == 3 {
        format!("topic {topic:?} does not exist on the cluster: check the queue's topic")
    } else if code == 29 {
        format!("levee may not describe topic {topic:?}: grant its user Describe on the topic")
    } else {
        format!("topic {topic:?}: {}", error_name(code))
    }
}
