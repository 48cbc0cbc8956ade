//! A hostile "Kafka cluster" on loopback for the abuse suite: listeners that speak just enough of
//! Kafka's protocol (ApiVersions, Metadata, FindCoordinator, OffsetFetch, ListOffsets, Fetch,
//! DescribeGroups) to be sampled, answering from a `Script` that can lie in every way issue 39
//! lists: compressed batches that inflate to gigabytes, replies padded to just under levee's frame
//! bound, a group with kilobytes of commit metadata on each partition, a thousand topics of
//! another tenant. The replies are encoded with kafka-protocol's own codec (its `broker`
//! feature), so everything but the lie is well formed. Each broker counts what it was asked.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One committed offset of a group: topic, partition, offset, and the bytes of commit metadata
/// stored beside it.
#[derive(Clone, Debug)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata_bytes: usize,
}

/// What the fake cluster answers.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Each topic and its partition count; a topic not here does not exist.
    pub topics: BTreeMap<String, i32>,
    /// Every partition's end offset.
    pub end_offset: i64,
    /// Each group's commits.
    pub commits: BTreeMap<String, Vec<Commit>>,
    /// What a Fetch returns as each partition's records.
    pub fetch_records: Option<Bytes>,
    /// SCRAM-SHA-512 asked of every connection, its challenge asking for this many iterations
    /// (and a server signature that never matches: levee's proof is never checked).
    pub scram_iterations: Option<u32>,
    /// A Metadata reply's body as these bytes, whatever they say.
    pub raw_metadata: Option<Vec<u8>>,
    /// Bytes nobody asked for (a tagged field), added to every ListOffsets reply.
    pub list_offsets_padding: usize,
}

/// What the brokers were asked.
#[derive(Debug, Default)]
pub struct Asked {
    /// Each Metadata request's topic names and its `allow_auto_topic_creation`.
    pub metadata: Vec<(Vec<String>, bool)>,
    pub fetches: usize,
    pub offset_fetches: usize,
    /// Each OffsetFetch's group count.
    pub offset_fetch_groups: Vec<usize>,
    pub list_offsets: usize,
}

/// A fake cluster of `brokers` listeners; partition `i` of every topic is led by broker
/// `i % brokers`, and every group is coordinated by broker 0.
pub struct FakeKafka {
    pub ports: Vec<u16>,
    pub asked: Arc<Mutex<Asked>>,
}

impl FakeKafka {
    pub fn start(script: Script, brokers: usize) -> Self {
        let listeners: Vec<TcpListener> = (0..brokers)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let asked = Arc::new(Mutex::new(Asked::default()));
        let script = Arc::new(script);
        for listener in listeners {
            let broker = Broker {
                ports: ports.clone(),
                script: script.clone(),
                asked: asked.clone(),
            };
            let broker = Arc::new(broker);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let broker = broker.clone();
                    std::thread::spawn(move || broker.serve(stream));
                }
            });
        }
        Self { ports, asked }
    }

    /// The bootstrap server, as a policy names it.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }
}

struct Broker {
    ports: Vec<u16>,
    script: Arc<Script>,
    asked: Arc<Mutex<Asked>>,
}

fn name(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

impl Broker {
    fn serve(&self, mut stream: TcpStream) {
        loop {
            let mut size = [0u8; 4];
            if stream.read_exact(&mut size).is_err() {
                return;
            }
            let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
            if stream.read_exact(&mut frame).is_err() {
                return;
            }
            let mut frame = Bytes::from(frame);
            let key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let header = RequestHeader::decode(&mut frame, key.request_header_version(version)).unwrap();
            let mut body = BytesMut::new();
            let mut reply_header = ResponseHeader::default();
            reply_header.correlation_id = header.correlation_id;
            reply_header
                .encode(&mut body, key.response_header_version(version))
                .unwrap();
            self.answer(key, version, &mut frame, &mut body);
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }

    fn answer(&self, key: ApiKey, version: i16, request: &mut Bytes, out: &mut BytesMut) {
        match key {
            ApiKey::ApiVersions => {
                let mut reply = ApiVersionsResponse::default();
                reply.api_keys = [0, 1, 2, 3, 8, 9, 10, 15, 17, 18, 36]
                    .into_iter()
                    .map(|key| {
                        let mut entry = ApiVersion::default();
                        entry.api_key = key;
                        entry.min_version = 0;
                        entry.max_version = 13;
                        entry
                    })
                    .collect();
                reply.encode(out, version).unwrap();
            }
            ApiKey::Metadata => {
                let asked = MetadataRequest::decode(request, version).unwrap();
                match &self.script.raw_metadata {
                    Some(raw) => out.extend_from_slice(raw),
                    None => self.metadata(asked, version, out),
                }
            }
            ApiKey::FindCoordinator => {
                let asked = FindCoordinatorRequest::decode(request, version).unwrap();
                let mut reply = FindCoordinatorResponse::default();
                reply.coordinators = asked
                    .coordinator_keys
                    .into_iter()
                    .map(|key| {
                        let mut found = Coordinator::default();
                        found.key = key;
                        found.node_id = BrokerId(0);
                        found.host = name("127.0.0.1");
                        found.port = i32::from(self.ports[0]);
                        found
                    })
                    .collect();
                reply.encode(out, version).unwrap();
            }
            ApiKey::OffsetFetch => {
                let asked = OffsetFetchRequest::decode(request, version).unwrap();
                {
                    let mut log = self.asked.lock().unwrap();
                    log.offset_fetches += 1;
                    log.offset_fetch_groups.push(asked.groups.len());
                }
                self.offset_fetch(asked, version, out);
            }
            ApiKey::ListOffsets => {
                let asked = ListOffsetsRequest::decode(request, version).unwrap();
                self.asked.lock().unwrap().list_offsets += 1;
                self.list_offsets(asked, version, out);
            }
            ApiKey::Fetch => {
                let asked = FetchRequest::decode(request, version).unwrap();
                self.asked.lock().unwrap().fetches += 1;
                let mut reply = FetchResponse::default();
                reply.responses = asked
                    .topics
                    .into_iter()
                    .map(|topic| {
                        let mut entry = FetchableTopicResponse::default();
                        entry.topic = topic.topic;
                        entry.partitions = topic
                            .partitions
                            .into_iter()
                            .map(|p| {
                                let mut data = PartitionData::default();
                                data.partition_index = p.partition;
                                data.high_watermark = self.script.end_offset;
                                data.records = self.script.fetch_records.clone();
                                data
                            })
                            .collect();
                        entry
                    })
                    .collect();
                reply.encode(out, version).unwrap();
            }
            ApiKey::DescribeGroups => {
                let asked = DescribeGroupsRequest::decode(request, version).unwrap();
                let mut reply = DescribeGroupsResponse::default();
                reply.groups = asked
                    .groups
                    .into_iter()
                    .map(|group| {
                        let mut described = DescribedGroup::default();
                        described.group_id = group;
                        described.group_state = name("Empty");
                        described
                    })
                    .collect();
                reply.encode(out, version).unwrap();
            }
            ApiKey::SaslHandshake => {
                let asked = SaslHandshakeRequest::decode(request, version).unwrap();
                let mut reply = SaslHandshakeResponse::default();
                reply.mechanisms = vec![asked.mechanism];
                reply.encode(out, version).unwrap();
            }
            ApiKey::SaslAuthenticate => {
                let asked = SaslAuthenticateRequest::decode(request, version).unwrap();
                let said = String::from_utf8_lossy(&asked.auth_bytes).to_string();
                let answer = match said.split(",r=").nth(1) {
                    // The client's first message: a challenge extending its nonce.
                    Some(nonce) if said.starts_with("n,,") => format!(
                        "r={nonce}fake,s=c2FsdHNhbHQ=,i={}",
                        self.script.scram_iterations.unwrap_or(4096)
                    ),
                    _ => "v=bm90IHRoZSBzaWduYXR1cmU=".to_string(),
                };
                let mut reply = SaslAuthenticateResponse::default();
                reply.auth_bytes = Bytes::from(answer);
                reply.encode(out, version).unwrap();
            }
            other => panic!("the fake broker does not answer {other:?}"),
        }
    }

    fn metadata(&self, asked: MetadataRequest, version: i16, out: &mut BytesMut) {
        let names: Vec<String> = asked
            .topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
            .collect();
        self.asked
            .lock()
            .unwrap()
            .metadata
            .push((names.clone(), asked.allow_auto_topic_creation));
        let mut reply = MetadataResponse::default();
        reply.brokers = self
            .ports
            .iter()
            .enumerate()
            .map(|(id, port)| {
                let mut broker = MetadataResponseBroker::default();
                broker.node_id = BrokerId(i32::try_from(id).unwrap());
                broker.host = name("127.0.0.1");
                broker.port = i32::from(*port);
                broker
            })
            .collect();
        let brokers = i32::try_from(self.ports.len()).unwrap();
        reply.topics = names
            .iter()
            .map(|topic| {
                let mut entry = MetadataResponseTopic::default();
                entry.name = Some(TopicName(name(topic)));
                match self.script.topics.get(topic) {
                    Some(partitions) => {
                        entry.partitions = (0..*partitions)
                            .map(|index| {
                                let mut p = MetadataResponsePartition::default();
                                p.partition_index = index;
                                p.leader_id = BrokerId(index % brokers);
                                p
                            })
                            .collect();
                    }
                    None => entry.error_code = 3,
                }
                entry
            })
            .collect();
        reply.encode(out, version).unwrap();
    }

    fn offset_fetch(&self, asked: OffsetFetchRequest, version: i16, out: &mut BytesMut) {
        let mut reply = OffsetFetchResponse::default();
        reply.groups = asked
            .groups
            .into_iter()
            .map(|group| {
                let id = group.group_id.0.as_str().to_string();
                let wanted: Option<Vec<(String, i32)>> = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .flat_map(|t| {
                            let topic = t.name.0.as_str().to_string();
                            t.partition_indexes.into_iter().map(move |p| (topic.clone(), p))
                        })
                        .collect()
                });
                let commits = self.script.commits.get(&id).cloned().unwrap_or_default();
                let mut by_topic: BTreeMap<String, Vec<OffsetFetchResponsePartitions>> = BTreeMap::new();
                for commit in commits {
                    if wanted
                        .as_ref()
                        .is_some_and(|w| !w.contains(&(commit.topic.clone(), commit.partition)))
                    {
                        continue;
                    }
                    let mut p = OffsetFetchResponsePartitions::default();
                    p.partition_index = commit.partition;
                    p.committed_offset = commit.offset;
                    p.committed_leader_epoch = -1;
                    p.metadata = Some(name(&"m".repeat(commit.metadata_bytes)));
                    by_topic.entry(commit.topic).or_default().push(p);
                }
                let mut entry = OffsetFetchResponseGroup::default();
                entry.group_id = GroupId(name(&id));
                entry.topics = by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let mut t = OffsetFetchResponseTopics::default();
                        t.name = TopicName(name(&topic));
                        t.partitions = partitions;
                        t
                    })
                    .collect();
                entry
            })
            .collect();
        reply.encode(out, version).unwrap();
    }

    fn list_offsets(&self, asked: ListOffsetsRequest, version: i16, out: &mut BytesMut) {
        let mut reply = ListOffsetsResponse::default();
        reply.topics = asked
            .topics
            .into_iter()
            .map(|topic| {
                let mut entry = ListOffsetsTopicResponse::default();
                entry.name = topic.name;
                entry.partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let mut answer = ListOffsetsPartitionResponse::default();
                        answer.partition_index = p.partition_index;
                        answer.offset = if p.timestamp == -2 {
                            0
                        } else {
                            self.script.end_offset
                        };
                        answer
                    })
                    .collect();
                entry
            })
            .collect();
        if self.script.list_offsets_padding > 0 {
            // A tagged field nobody asked for: a well-formed reply, as large as the script says.
            static PADDING: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
            let padding = PADDING.get_or_init(|| Bytes::from(vec![0u8; self.script.list_offsets_padding]));
            reply.unknown_tagged_fields.insert(1_000, padding.clone());
        }
        reply.encode(out, version).unwrap();
    }
}
