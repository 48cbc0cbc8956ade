//! The `BackpressurePolicy` custom resource (`levee.dev/v1alpha1`): its spec, status and the
//! schema rules the API server enforces. The CRD YAML in `crds/` is generated from these types.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::circuit::CircuitRules;
/// The circuit owns the settings it obeys; the API names them in the spec.
pub use crate::circuit::{OnSampleFailure, SampleFailureAction, Thresholds};
use jiff::SignedDuration;

/// A backlog made of Redis queues, the producers to hold back when it grows, and the workers to
/// scale out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "levee.dev",
    version = "v1alpha1",
    kind = "BackpressurePolicy",
    plural = "backpressurepolicies",
    shortname = "bpp",
    namespaced,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters: levee labels the pods it holds back with it"),
    status = "BackpressurePolicyStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Level","type":"string","jsonPath":".status.level"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Critical","type":"integer","jsonPath":".spec.thresholds.critical"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.circuit.openAhead) || has(self.thresholds.critical)").message("circuit.openAhead forecasts when the backlog reaches thresholds.critical: set the depth thresholds too"))]
#[x_kube(validation = Rule::new("!has(self.thresholds.latency) || self.readLatency").message("latency thresholds need readLatency: true"))]
#[x_kube(validation = Rule::new("!has(self.thresholds.latency) || self.queues.exists(q, q.type in ['sidekiq', 'rq', 'bullmq', 'stream', 'jetstream', 'kafka'])").message("latency thresholds need a queue that keeps an enqueue time (sidekiq, rq, bullmq, stream, jetstream or kafka): list, zset and celery queues have no latency"))]
#[x_kube(validation = Rule::new("!has(self.thresholds.memory) || has(self.redis)").message("thresholds.memory read Redis memory (INFO memory): they need spec.redis, not a NATS or Kafka backend"))]
#[x_kube(validation = Rule::new("(has(self.redis) ? 1 : 0) + (has(self.nats) ? 1 : 0) + (has(self.kafka) ? 1 : 0) == 1").message("name exactly one backend: spec.redis (Redis queues), spec.nats (JetStream consumers) or spec.kafka (Kafka consumer groups)"))]
#[x_kube(validation = Rule::new("!has(self.nats) || self.queues.all(q, q.type == 'jetstream')").message("under spec.nats every queue is type jetstream: move Redis queues to a policy with spec.redis"))]
#[x_kube(validation = Rule::new("!has(self.kafka) || self.queues.all(q, q.type == 'kafka')").message("under spec.kafka every queue is type kafka: move the other queues to a policy with their own backend"))]
#[x_kube(validation = Rule::new("!has(self.redis) || self.queues.all(q, q.type != 'jetstream')").message("type jetstream reads a NATS JetStream consumer: it needs spec.nats, not spec.redis"))]
#[x_kube(validation = Rule::new("!has(self.redis) || self.queues.all(q, q.type != 'kafka')").message("type kafka reads a Kafka consumer group's lag: it needs spec.kafka, not spec.redis"))]
pub struct BackpressurePolicySpec {
    /// Where the queues live, when they are Redis queues (exactly one of `redis`, `nats` and `kafka`).
    // Each backend boxed: a policy names one, and every replica holds every policy (the three
    // inline were 592 of the spec's 1,080 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Box<RedisSpec>>,
    /// Where the queues live, when they are NATS JetStream consumers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<Box<NatsSpec>>,
    /// Where the queues live, when they are Kafka consumer groups' lags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Box<KafkaSpec>>,
    /// The queues whose weighted depths add up to the backlog.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(q, self.exists_one(r, r.name == q.name))").message("queue names must be unique: give every queue its own name"))]
    pub queues: Vec<QueueSpec>,
    /// How often the queues are sampled (Go duration, e.g. `1s`, `500ms`).
    #[serde(default = "defaults::sample_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms')").message("must be at least 100ms, such as 1s or 500ms: shorter intervals busy-loop Redis and the API server"))]
    pub sample_interval: Duration,
    /// Backlog sizes and queue latencies that drive the circuit.
    pub thresholds: Thresholds,
    /// Also read the age of each queue's oldest waiting job (sidekiq, rq, bullmq and stream
    /// queues), with a read-only script in the same round trip (the ACL user needs +evalsha).
    #[serde(default = "defaults::read_latency")]
    pub read_latency: bool,
    /// How the circuit dwells, whom it lets through, and when it alerts.
    #[serde(default)]
    pub circuit: CircuitSpec,
    /// What the circuit does when Redis cannot be sampled.
    #[serde(default)]
    pub on_sample_failure: OnSampleFailure,
    /// The producer workloads the circuit holds back.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(t, self.exists_one(u, u.kind == t.kind && u.name == t.name))").message("each target may appear only once: remove the duplicate kind/name pair"))]
    pub targets: Vec<TargetRef>,
    /// Workers that levee scales with a HorizontalPodAutoscaler it creates and owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<ScaleTarget>,
    /// Decide and report, but touch no workload or pod.
    #[serde(default)]
    pub dry_run: bool,
    /// How queues named by a `keyPattern` are found.
    #[serde(default)]
    pub discovery: DiscoverySpec,
    /// How often status is rewritten when nothing moved (default: levee's `--status-heartbeat`,
    /// 5m). A change of state, level or condition is written at once, and pending, latency, the
    /// time to critical and memory as soon as they move by a tenth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s, such as 5m"))]
    pub status_heartbeat: Option<Duration>,
}

/// How queues named by a `keyPattern` are found: in the background, never in a tick.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// How often the registries (or keys) are read again.
    #[serde(default = "defaults::discovery_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("must be at least 1s, such as 30s"))]
    pub interval: Duration,
    /// At most this many discovered queues per policy (the first ones by name); more are left
    /// out and the policy says so.
    #[serde(default = "defaults::max_discovered_queues")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_queues: u32,
}

impl Default for DiscoverySpec {
    fn default() -> Self {
        Self {
            interval: defaults::discovery_interval(),
            max_queues: defaults::max_discovered_queues(),
        }
    }
}

/// How to reach Redis. The URL never holds a password; credentials come from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Sentinel' || has(self.sentinelMaster)").message("sentinelMaster is required when mode is Sentinel: name the master the sentinels monitor"))]
#[x_kube(validation = Rule::new("self.mode == 'Sentinel' || !has(self.sentinelMaster)").message("sentinelMaster is only used when mode is Sentinel: remove it or set mode: Sentinel"))]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('rediss://')").message("tls settings need a rediss:// url: change the scheme to rediss://"))]
pub struct RedisSpec {
    /// `redis://host:port/db` or `rediss://` for TLS. In Sentinel mode, the address of a sentinel.
    #[schemars(length(max = 2048), regex(pattern = r"^rediss?://[^\s]+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^rediss?://[^/@]*:[^/@]*@')").message("must not contain a password: put it in a Secret and reference it with credentialsSecretRef"))]
    pub url: String,
    /// Standalone, Cluster or Sentinel.
    #[serde(default)]
    pub mode: RedisMode,
    /// Sentinel mode only: the name of the monitored master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub sentinel_master: Option<String>,
    /// A Secret in the policy's namespace holding the username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS settings for `rediss://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    /// Deadline for connecting and for one sampling round trip; at most 10s (a reply is bounded
    /// in bytes and in this time).
    #[serde(default)]
    pub timeout: RequestTimeout,
    /// How often each queue's oldest job is read again for its latency (with `readLatency`);
    /// in between, its latency is the age at the last read plus the time since (zero when its
    /// depth reads zero), and a figure that reaches the lowest latency threshold is read again
    /// in the same tick. `0s` reads it every tick.
    #[serde(default = "defaults::latency_refresh")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('10m')").message("must be between 0s (read every tick) and 10m, such as 10s"))]
    pub latency_refresh: Duration,
}

/// A backend's deadline for connecting and for one request: positive, at most 10s (500ms when
/// unset). Every backend's `timeout` is this one type, so its rules are written once.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(transparent)]
pub struct RequestTimeout(pub Duration);

impl JsonSchema for RequestTimeout {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RequestTimeout".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = Duration::json_schema(generator);
        schema.insert(
            "x-kubernetes-validations".into(),
            serde_json::json!([
                {"rule": "duration(self) > duration('0s')", "message": "must be a positive duration such as 500ms"},
                {"rule": "duration(self) <= duration('10s')", "message": "must be at most 10s, such as 500ms: a request that takes longer is a backend in trouble"},
            ]),
        );
        schema
    }
}

impl Default for RequestTimeout {
    fn default() -> Self {
        Self(defaults::request_timeout())
    }
}

impl From<RequestTimeout> for std::time::Duration {
    fn from(timeout: RequestTimeout) -> Self {
        timeout.0.into()
    }
}

/// How to reach NATS. The URL never holds a password; credentials come from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// `nats://host:port` of any server of the cluster (the request is routed to the
    /// consumer's leader, the one server that answers it).
    #[schemars(length(max = 2048), regex(pattern = r"^nats://[^\s]+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^nats://[^/@]*@')").message("must not contain credentials: put them in a Secret and reference it with credentialsSecretRef"))]
    pub url: String,
    /// A Secret in the policy's namespace. Its key `creds` (a .creds file) or else `nkey` (a user
    /// nkey seed) when present; otherwise with `usernameKey`, a user and password, and without
    /// it, the `passwordKey` value is the server's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// TLS to the servers (their `tls {}` block; the server's INFO says when it requires it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// Deadline for connecting and for one tick's requests; at most 10s.
    #[serde(default)]
    pub timeout: RequestTimeout,
}

/// How to reach a Kafka cluster. Credentials come from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// `host:port` of one or more brokers; levee learns the others (and who leads which
    /// partition) from them.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 261)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[^\\\\s/@:]+:[0-9]{1,5}$') || s.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$'))").message("each bootstrap server is host:port, such as kafka-0.kafka.jobs.svc:9092 (no scheme, no credentials)"))]
    pub bootstrap_servers: Vec<String>,
    /// TLS to the brokers (their SSL or SASL_SSL listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// SASL authentication (over TLS with `tls`, else plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Deadline for connecting and for each request of a tick; at most 10s.
    #[serde(default)]
    pub timeout: RequestTimeout,
}

/// TLS to Kafka brokers or NATS servers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    /// A Secret key holding the PEM CA bundle that signed the servers' certificates (without
    /// it, the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Skip verifying the servers' certificates (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// How levee authenticates to Kafka brokers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// The SASL mechanism the brokers' listener enables.
    pub mechanism: SaslMechanism,
    /// A Secret in the policy's namespace with the username (`usernameKey`, default
    /// `username`) and the password (`passwordKey`, default `password`).
    pub credentials_secret_ref: CredentialsSecretRef,
}

/// The SASL mechanisms levee speaks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Where a Kafka queue starts when its group has committed no offset for a partition, as the
/// group's consumers would (`auto.offset.reset`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The consumers start at the log's end: nothing is owed (Kafka's default).
    #[default]
    Latest,
    /// The consumers start at the log's start: every record still kept is owed (never those
    /// retention deleted).
    Earliest,
}

/// How levee finds the Redis node that holds a key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RedisMode {
    /// One node (or a primary behind a stable address).
    #[default]
    Standalone,
    /// Redis Cluster: keys are spread over masters by hash slot.
    Cluster,
    /// A primary found through Redis Sentinel.
    Sentinel,
}

/// Keys of a Secret in the policy's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the ACL username; without it levee authenticates with the password only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// The key holding the password.
    #[serde(default = "defaults::password_key")]
    pub password_key: String,
}

/// TLS settings for a `rediss://` endpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    /// A Secret key holding the PEM CA bundle that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Skip verifying the server certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One key of a Secret in the policy's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret.
    #[serde(default = "defaults::ca_key")]
    pub key: String,
}

/// One queue of the backlog and how to read its depth.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.consumerGroup) || self.type in ['stream', 'kafka']").message("consumerGroup applies only to types stream and kafka: remove it or change the type"))]
#[x_kube(validation = Rule::new("self.type != 'kafka' || (has(self.consumerGroup) && !has(self.key) && !has(self.keyPattern))").message("type kafka names a consumerGroup (and a topic, or every topic the group commits to), and no key or keyPattern"))]
#[x_kube(validation = Rule::new("(!has(self.topic) && !has(self.offsetReset)) || self.type == 'kafka'").message("topic and offsetReset apply only to type kafka: remove them or change the type"))]
#[x_kube(validation = Rule::new("!has(self.prefix) || self.type == 'bullmq'").message("prefix applies only to type bullmq: remove it or change the type"))]
#[x_kube(validation = Rule::new("!has(self.includeDelayed) || self.type == 'bullmq'").message("includeDelayed applies only to type bullmq: remove it or change the type"))]
#[x_kube(validation = Rule::new("!has(self.namespace) || self.type == 'sidekiq'").message("namespace applies only to type sidekiq: remove it or change the type"))]
#[x_kube(validation = Rule::new("!has(self.prioritySeparator) || self.type == 'celery'").message("prioritySeparator applies only to type celery: remove it or change the type"))]
#[x_kube(validation = Rule::new("self.type in ['jetstream', 'kafka'] || has(self.key) != has(self.keyPattern)").message("set key (one queue) or keyPattern (every queue it matches), not both"))]
#[x_kube(validation = Rule::new("self.type != 'jetstream' || (has(self.stream) && has(self.consumer) && !has(self.key) && !has(self.keyPattern))").message("type jetstream names a stream and a consumer (stream: EVENTS, consumer: writer), and no key or keyPattern"))]
#[x_kube(validation = Rule::new("(!has(self.stream) && !has(self.consumer)) || self.type == 'jetstream'").message("stream and consumer apply only to type jetstream: remove them or change the type"))]
#[x_kube(validation = Rule::new("!has(self.keyPattern) || self.type != 'celery'").message("keyPattern does not apply to type celery: kombu keeps no registry of its queues; list each queue with key"))]
pub struct QueueSpec {
    /// The queue's name in status and metrics (a DNS label: lower-case letters, digits, '-').
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which layout the key follows.
    #[serde(rename = "type")]
    pub queue_type: QueueType,
    /// The Redis key (for bullmq, celery, rq, sidekiq: the queue name those libraries use).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    #[schemars(length(min = 1, max = 1024))]
    pub key: Box<str>,
    /// Instead of `key`: a glob (`*`, `?`, `[...]`) over the library's own list of queues
    /// (sidekiq: the `queues` set; rq: `rq:queues`; bullmq: the queues with a `<prefix>:*:meta`
    /// key) or, for list, zset and stream, over the keys of that type. Every queue it matches is
    /// an entry of its own, named `<name>.<queue>`, found in the background every
    /// `discovery.interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub key_pattern: Option<Box<str>>,
    /// Multiplies this queue's depth in the backlog total.
    #[serde(default = "defaults::weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: u32,
    /// stream: count entries this consumer group has not acknowledged yet; kafka: the group
    /// whose lag is the depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub consumer_group: Option<Box<str>>,
    /// bullmq only: the key prefix (BullMQ's `prefix` option, default `bull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub prefix: Option<Box<str>>,
    /// bullmq only: also count delayed jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_delayed: Option<bool>,
    /// sidekiq only: the redis-namespace prefix, if the app uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub namespace: Option<Box<str>>,
    /// jetstream only: the stream's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^.*>\s/\\]+$"))]
    pub stream: Option<Box<str>>,
    /// jetstream only: the durable consumer whose work not done is the depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^.*>\s/\\]+$"))]
    pub consumer: Option<Box<str>>,
    /// kafka only: the topic; without it, every topic the group has committed offsets for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: Option<Box<str>>,
    /// kafka only: how a partition the group never committed to counts (default `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
    /// celery only: kombu's `sep` transport option between a queue and its priority (default "\x06\x16").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub priority_separator: Option<Box<str>>,
}

/// The layouts levee can read a depth from (Redis's, NATS JetStream consumers, Kafka groups).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// LLEN of a list.
    List,
    /// ZCARD of a sorted set.
    Zset,
    /// XLEN, or a consumer group's unacknowledged entries.
    Stream,
    /// BullMQ's waiting, paused, prioritized and active jobs (and delayed, on request).
    Bullmq,
    /// A Celery (kombu) Redis queue with its priority sub-queues.
    Celery,
    /// An RQ queue (`rq:queue:<key>`).
    Rq,
    /// A Sidekiq queue (`queue:<key>`).
    Sidekiq,
    /// A NATS JetStream consumer: messages not yet delivered plus delivered and not yet
    /// acknowledged (`num_pending + num_ack_pending`, as `nats consumer info` shows them).
    Jetstream,
    /// A Kafka consumer group's lag on a topic: the sum over its partitions of the high
    /// watermark − the committed offset (the LAG of `kafka-consumer-groups.sh --describe`).
    Kafka,
}

/// A policy's backend, as its spec names it.
#[derive(Clone, Copy, Debug)]
pub enum BackendSpec<'a> {
    Redis(&'a RedisSpec),
    Nats(&'a NatsSpec),
    Kafka(&'a KafkaSpec),
}

impl BackpressurePolicySpec {
    /// The backend the spec names; None when it names none (the CRD's rules refuse that, so only
    /// an object the API server did not validate gets here). Redis wins when both are there.
    /// Every field of the spec is named here, without `..`: a field added for a new backend does
    /// not compile until it is placed among the backends (or said not to be one).
    pub fn backend(&self) -> Option<BackendSpec<'_>> {
        let Self {
            redis,
            nats,
            kafka,
            queues: _,
            sample_interval: _,
            thresholds: _,
            read_latency: _,
            circuit: _,
            on_sample_failure: _,
            targets: _,
            scale_target: _,
            dry_run: _,
            discovery: _,
            status_heartbeat: _,
        } = self;
        match (redis, nats, kafka) {
            (Some(redis), _, _) => Some(BackendSpec::Redis(redis)),
            (None, Some(nats), _) => Some(BackendSpec::Nats(nats)),
            (None, None, Some(kafka)) => Some(BackendSpec::Kafka(kafka)),
            (None, None, None) => None,
        }
    }
}

/// Where a queue type's queues live: one per backend, so a match on it shows every place a new
/// backend must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Redis,
    Nats,
    Kafka,
}

impl BackendKind {
    /// Ready's reason when the backend did not answer: `RedisUnreachable` (as before there were
    /// other backends), `NatsUnreachable`, `KafkaUnreachable`.
    pub fn unreachable_reason(self) -> &'static str {
        match self {
            BackendKind::Redis => "RedisUnreachable",
            BackendKind::Nats => "NatsUnreachable",
            BackendKind::Kafka => "KafkaUnreachable",
        }
    }

    /// The backend's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Redis => "Redis",
            BackendKind::Nats => "NATS",
            BackendKind::Kafka => "Kafka",
        }
    }
}

impl<'a> BackendSpec<'a> {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendSpec::Redis(_) => BackendKind::Redis,
            BackendSpec::Nats(_) => BackendKind::Nats,
            BackendSpec::Kafka(_) => BackendKind::Kafka,
        }
    }
}

impl QueueType {
    /// The backend this type is read from.
    pub fn backend(self) -> BackendKind {
        match self {
            QueueType::List
            | QueueType::Zset
            | QueueType::Stream
            | QueueType::Bullmq
            | QueueType::Celery
            | QueueType::Rq
            | QueueType::Sidekiq => BackendKind::Redis,
            QueueType::Jetstream => BackendKind::Nats,
            QueueType::Kafka => BackendKind::Kafka,
        }
    }
}

/// Dwell, priorities and alerting of the circuit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.openMaxPriority <= self.halfOpenMaxPriority").message("openMaxPriority must not exceed halfOpenMaxPriority: HalfOpen lets through at least what Open does"))]
pub struct CircuitSpec {
    /// An Open circuit stays Open at least this long.
    #[serde(default = "defaults::min_open_duration")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be a positive duration such as 30s"))]
    pub min_open_duration: Duration,
    /// While HalfOpen, targets with a priority up to this keep accepting.
    #[serde(default = "defaults::half_open_max_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub half_open_max_priority: u32,
    /// While Open, targets with a priority up to this keep accepting (0: none).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub open_max_priority: u32,
    /// Not Closed for this long sets the condition Prolonged and raises a Warning event.
    #[serde(default = "defaults::alert_after")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be a positive duration such as 10m"))]
    pub alert_after: Duration,
    /// Open as soon as the backlog, growing as it does, is forecast to reach critical within
    /// this time (reason CriticalForecast); an Open circuit does not half-open while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("must be a positive duration such as 30s"))]
    pub open_ahead: Option<Duration>,
    /// How much history the growth rate is fitted over.
    #[serde(default = "defaults::forecast_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('5s') && duration(self) <= duration('1h')").message("must be between 5s and 1h, such as 1m"))]
    pub forecast_window: Duration,
}

impl Default for CircuitSpec {
    fn default() -> Self {
        Self {
            min_open_duration: defaults::min_open_duration(),
            half_open_max_priority: defaults::half_open_max_priority(),
            open_max_priority: 0,
            alert_after: defaults::alert_after(),
            open_ahead: None,
            forecast_window: defaults::forecast_window(),
        }
    }
}

impl QueueSpec {
    /// Sidekiq's key prefix: `<namespace>:` with a redis-namespace, else nothing.
    pub fn sidekiq_prefix(&self) -> String {
        self.namespace
            .as_deref()
            .map(|n| format!("{n}:"))
            .unwrap_or_default()
    }

    /// BullMQ's key prefix (the `prefix` option, `bull` by default).
    pub fn bullmq_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or(defaults::BULLMQ_PREFIX)
    }
}

impl BackpressurePolicySpec {
    /// The rules the circuit follows for this (validated) spec.
    pub fn circuit_rules(&self) -> CircuitRules {
        let signed = |duration: Duration| {
            SignedDuration::try_from(std::time::Duration::from(duration)).unwrap_or(SignedDuration::MAX)
        };
        CircuitRules {
            depth: self.thresholds.depth(),
            latency: self.thresholds.latency(),
            memory: self.thresholds.memory(),
            open_ahead: self.circuit.open_ahead.map(Into::into),
            min_open: signed(self.circuit.min_open_duration),
            alert_after: signed(self.circuit.alert_after),
            half_open_max_priority: self.circuit.half_open_max_priority,
            open_max_priority: self.circuit.open_max_priority,
            on_failure: self.on_sample_failure,
        }
    }
}

/// A producer workload the circuit holds back.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Deployment, StatefulSet or DaemonSet (apps/v1).
    pub kind: TargetKind,
    /// The workload's name in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// 1 is the most important; a target accepts while its priority is within the state's limit.
    #[serde(default = "defaults::target_priority")]
    #[schemars(range(min = 1, max = 1000))]
    pub priority: u32,
}

/// Workload kinds a target can be.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Workers scaled by a HorizontalPodAutoscaler on `levee_pending`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct ScaleTarget {
    /// Deployment or StatefulSet (apps/v1).
    pub kind: ScaleKind,
    /// The workload's name in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The HPA's lower bound.
    #[serde(default = "defaults::min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// The HPA's upper bound (at most 1000; the chart may set a lower limit).
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self <= 1000").message("must be at most 1000: levee refuses to let one policy scale a workload further"))]
    pub max_replicas: i32,
    /// Pending jobs one worker replica is expected to handle (the HPA's AverageValue target).
    #[schemars(range(min = 1))]
    pub pending_per_replica: u64,
    /// Under spec.kafka the HPA's upper bound is capped at the partitions of the policy's
    /// topics (a consumer beyond them gets none and sits idle); true lifts the cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_idle_consumers: bool,
}

/// Workload kinds an HPA can scale.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

/// What levee last observed and decided.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackpressurePolicyStatus {
    /// Closed, HalfOpen or Open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::circuit::State>,
    /// Normal, Warning or Critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<crate::circuit::Level>,
    /// The weighted backlog of the last sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// The age of the oldest waiting job over the queues, in seconds (absent when no queue keeps
    /// an enqueue time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_seconds: Option<f64>,
    /// The backlog's growth and when it reaches critical at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastStatus>,
    /// Redis policies: the memory of the fullest master at the last sample (`INFO memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
    /// Each queue's depth, or why it could not be read (discovered queues included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueStatus>,
    /// Queues sampled but not listed in `queues`, which shows the first 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues_omitted: Option<u64>,
    /// What the last discovery of `keyPattern` queues found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// When the queues were last sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_time: Option<Time>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// When the circuit last entered Open (the dwell counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_since: Option<Time>,
    /// How many state changes the circuit has made.
    #[serde(default)]
    pub transitions: u64,
    /// The `levee.dev/reset` annotation value already applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<String>,
    /// The generation of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, BackendReachable (and on Redis policies its older name RedisReachable), Throttling,
    /// Prolonged, ScaleCapped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What the last discovery found.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// How many queues the patterns matched (before the cap).
    pub matched: u64,
    /// How many of them are sampled (at most `discovery.maxQueues`).
    pub sampled: u64,
    /// When the registries were last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_discovery_time: Option<Time>,
    /// Why the last discovery failed, or that the cap left queues out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The forecast of the backlog.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForecastStatus {
    /// Jobs per second the backlog grows by (negative: it drains), fitted over
    /// `circuit.forecastWindow`.
    pub growth_per_second: f64,
    /// Seconds until the backlog reaches critical at that rate (absent: it does not grow, or
    /// grows too unsteadily to forecast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_in_seconds: Option<f64>,
}

/// A Redis policy's memory: the fullest master's `INFO memory`, or why it could not be read.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// `used_memory`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// `maxmemory`, in bytes (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// `maxmemory-policy`: what Redis does when it reaches `maxmemory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_policy: Option<String>,
    /// The master it was read from (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it could not be read (for instance an ACL that refuses `INFO`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One queue's depth and latency, or the errors reading them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The queue's name in the policy.
    pub name: String,
    /// Its depth (unweighted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Why it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The age of its oldest waiting job, in seconds (absent for list, zset and celery queues,
    /// which keep no enqueue time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_seconds: Option<f64>,
    /// Why its latency could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_error: Option<String>,
    /// kafka: the partitions the queue spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// kafka: the largest lag of one partition (a skewed backlog shows here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_partition_lag: Option<u64>,
}

/// Default values, shared by serde and the schema.
pub mod defaults {
    use kube::core::Duration;

    fn parse(text: &str) -> Duration {
        text.parse().expect("default durations are valid Go durations")
    }
    pub fn sample_interval() -> Duration {
        parse("1s")
    }
    pub fn request_timeout() -> Duration {
        parse("500ms")
    }
    pub fn min_open_duration() -> Duration {
        parse("30s")
    }
    pub fn alert_after() -> Duration {
        parse("10m")
    }
    pub fn forecast_window() -> Duration {
        parse("1m")
    }
    pub fn read_latency() -> bool {
        true
    }
    pub fn latency_refresh() -> Duration {
        parse("10s")
    }
    pub fn discovery_interval() -> Duration {
        parse("30s")
    }
    pub fn max_discovered_queues() -> u32 {
        1000
    }
    pub fn password_key() -> String {
        "password".into()
    }
    pub fn ca_key() -> String {
        "ca.crt".into()
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn half_open_max_priority() -> u32 {
        5
    }
    pub fn target_priority() -> u32 {
        10
    }
    pub fn min_replicas() -> i32 {
        1
    }
    /// BullMQ's default key prefix.
    pub const BULLMQ_PREFIX: &str = "bull";
    /// kombu's default separator between a queue name and its priority.
    pub const CELERY_PRIORITY_SEPARATOR: &str = "\x06\x16";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::SampleFailureAction;

    #[test]
    fn circuit_rules_come_from_the_spec_with_its_defaults() {
        let policy = crate::fixtures::policy_with(serde_json::json!({
            "spec": {"thresholds": {"warning": 20, "critical": 50, "recovery": 5}}
        }));
        let rules = policy.spec.circuit_rules();
        assert_eq!(rules.min_open, SignedDuration::from_secs(30));
        assert_eq!(rules.alert_after, SignedDuration::from_secs(600));
        assert_eq!((rules.half_open_max_priority, rules.open_max_priority), (5, 0));
        assert_eq!(rules.on_failure.action, SampleFailureAction::Hold);
        assert_eq!(rules.on_failure.after, 3);
        assert_eq!(rules.depth.map(|d| d.critical), Some(50));
        assert_eq!(rules.latency, None);
        assert_eq!(rules.open_ahead, None);
    }

    #[test]
    fn a_spec_holds_its_one_backend_on_the_heap() {
        // 1,080 bytes with the three backends inline.
        let inline = std::mem::size_of::<BackpressurePolicySpec>();
        assert!(inline <= 520, "{inline} bytes inline");
    }
}
