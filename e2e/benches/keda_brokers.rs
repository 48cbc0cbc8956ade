//! levee and KEDA side by side on a real Kafka broker and a real nats-server, on one local
//! control plane (`make bench-keda` runs it after the Redis rows). For each N of
//! `LEVEE_KEDA_BROKER_SIZES` (default 1 10 100):
//! - **Kafka**: N topics `t-i` of 4 partitions, 10 records on each, group `g-i` committed at 0
//!   (a lag of 40 a topic). KEDA: one ScaledObject with one `kafka` trigger per topic, each on
//!   its own Deployment (`lagThreshold: 100`); levee: the N queues in ceil(N / 64) policies,
//!   1 s sample interval, `readLatency: false` (KEDA reads no latency), the first scaling one
//!   Deployment.
//! - **NATS**: one stream `events`, N durable pull consumers `c-i` filtered on `events.i`, 10
//!   messages each. KEDA: one ScaledObject with one `nats-jetstream` trigger per consumer (it
//!   reads the server's monitoring endpoint); levee: the N consumers in ceil(N / 64) policies.
//!
//! Measured for each: what the broker or the server itself counts it was asked over 30 s (Kafka:
//! its `RequestMetrics` by request type, over JMX with Kafka's JmxTool; NATS: its `/varz`
//! counters, HTTP GETs of `/jsz` and JetStream API requests), per second and per look at every
//! queue; the HPA's metric through the aggregator (p50/p99 of 200 GETs); resident memory (KEDA:
//! operator + adapter). `LEVEE_KEDA_BROKER_ROWS` (default `kafka nats`) picks the backends.
//! Prints Markdown rows for docs/benchmarks.md.

mod common;

use common::{deployment, latency};
use levee_e2e::fixture::PolicyYaml;
use levee_e2e::keda::Keda;
use levee_e2e::redis::kafka::KafkaBroker;
use levee_e2e::redis::nats::NatsServer;
use levee_e2e::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(30);
const PARTITIONS: u32 = 4;
const PER_QUEUE: u32 = 10;
/// Requests between a broker and its KRaft controller, not from clients.
const KRAFT_REQUESTS: [&str; 8] = [
    "BrokerHeartbeat",
    "BrokerRegistration",
    "Vote",
    "BeginQuorumEpoch",
    "EndQuorumEpoch",
    "DescribeQuorum",
    "FetchSnapshot",
    "UpdateRaftVoter",
];
/// The most queues one policy may name (the CRD's `maxItems`).
const MAX_QUEUES: usize = 64;

fn sizes() -> Vec<usize> {
    std::env::var("LEVEE_KEDA_BROKER_SIZES")
        .unwrap_or_else(|_| "1 10 100".into())
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// One backend under test: its counters, and what KEDA and levee are told to read.
trait Backend {
    fn name(&self) -> &'static str;
    /// What the broker or server has counted so far, by kind.
    fn counters(&self) -> BTreeMap<String, f64>;
    /// The counter that KEDA's scaler bumps exactly once per query of one ScaledObject.
    fn keda_query(&self) -> &'static str;
    fn keda_trigger(&self, i: usize) -> Value;
    /// KEDA's metric name for trigger 0 of `w-0`.
    fn keda_metric(&self) -> &'static str;
    /// `spec.<backend>` for levee's policies, and one queue.
    fn levee_backend(&self) -> (&'static str, String);
    fn levee_queue(&self, i: usize) -> String;
    /// Anything worth printing beside the rows.
    fn note(&self) -> Option<String> {
        None
    }
}

struct Kafka {
    broker: KafkaBroker,
}

impl Backend for Kafka {
    fn name(&self) -> &'static str {
        "Kafka"
    }
    fn counters(&self) -> BTreeMap<String, f64> {
        self.broker
            .requests_handled()
            .into_iter()
            // The node's own KRaft traffic (its broker heartbeating to its controller) is no
            // client's.
            .filter(|(request, _)| !KRAFT_REQUESTS.contains(&request.as_str()))
            .map(|(request, count)| (request, count as f64))
            .collect()
    }
    fn keda_query(&self) -> &'static str {
        "OffsetFetch"
    }
    fn keda_trigger(&self, i: usize) -> Value {
        json!({"type": "kafka", "metadata": {"bootstrapServers": self.broker.bootstrap(),
            "consumerGroup": format!("g-{i}"), "topic": format!("t-{i}"), "lagThreshold": "100"}})
    }
    fn keda_metric(&self) -> &'static str {
        "s0-kafka-t-0"
    }
    fn levee_backend(&self) -> (&'static str, String) {
        (
            "kafka",
            format!("{{bootstrapServers: ['{}']}}", self.broker.bootstrap()),
        )
    }
    fn levee_queue(&self, i: usize) -> String {
        format!("{{name: t-{i}, type: kafka, topic: t-{i}, consumerGroup: g-{i}}}")
    }
}

struct Nats {
    server: NatsServer,
}

impl Nats {
    fn monitor_port(&self) -> u16 {
        self.server.monitor_port.expect("monitored")
    }
}

impl Backend for Nats {
    fn name(&self) -> &'static str {
        "NATS"
    }
    fn counters(&self) -> BTreeMap<String, f64> {
        let varz = self.server.varz();
        let http = |path: &str| varz["http_req_stats"][path].as_f64().unwrap_or(0.0);
        let api = varz["jetstream"]["stats"]["api"]["total"]
            .as_f64()
            .expect("/varz counts JetStream API requests");
        BTreeMap::from([
            ("GET /jsz".to_string(), http("/jsz")),
            ("JetStream API".to_string(), api),
        ])
    }
    fn keda_query(&self) -> &'static str {
        "GET /jsz"
    }
    fn keda_trigger(&self, i: usize) -> Value {
        json!({"type": "nats-jetstream", "metadata": {
            "natsServerMonitoringEndpoint": format!("127.0.0.1:{}", self.monitor_port()),
            "account": "$G", "stream": "events", "consumer": format!("c-{i}"), "lagThreshold": "100"}})
    }
    fn keda_metric(&self) -> &'static str {
        "s0-nats-jetstream-events"
    }
    fn levee_backend(&self) -> (&'static str, String) {
        ("nats", format!("{{url: '{}'}}", self.server.url()))
    }
    fn levee_queue(&self, i: usize) -> String {
        format!("{{name: c-{i}, type: jetstream, stream: events, consumer: c-{i}}}")
    }
    fn note(&self) -> Option<String> {
        let jsz = self.server.monitoring("/jsz?acc=%24G&config=true&consumers=true");
        Some(format!(
            "one /jsz reply (what each KEDA query reads): {} bytes",
            jsz.len()
        ))
    }
}

struct Row {
    who: String,
    /// What the broker or server counted, per second, by kind.
    asked: BTreeMap<String, f64>,
    /// Looks at every queue per second.
    cycles_per_second: f64,
    latency: (f64, f64),
    rss_mib: f64,
}

/// The counters' growth per second over `WINDOW`.
fn rates(backend: &dyn Backend) -> BTreeMap<String, f64> {
    let before = backend.counters();
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let after = backend.counters();
    let seconds = started.elapsed().as_secs_f64();
    after
        .into_iter()
        .map(|(kind, count)| {
            let grown = count - before.get(&kind).copied().unwrap_or(0.0);
            (kind, grown / seconds)
        })
        .filter(|(_, per_second)| *per_second > 0.0)
        .collect()
}

fn keda_row(
    n: usize,
    backend: &dyn Backend,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
) -> Row {
    let namespace = TestNamespace::create("levee-bench-keda");
    let ns = namespace.name.clone();
    let keda = Keda::start();
    let _guard = ApiServiceGuard;
    keda.serve_external_metrics();
    let mut objects = Vec::new();
    for i in 0..n {
        let name = format!("w-{i}");
        objects.push(deployment(&name));
        objects.push(json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name},
            "spec": {"scaleTargetRef": {"name": name}, "pollingInterval": 10,
                "minReplicaCount": 1, "maxReplicaCount": 10, "triggers": [backend.keda_trigger(i)]}}));
    }
    for chunk in objects.chunks(200) {
        apply_objects(chunk, &["--server-side", "-n", &ns]);
    }
    wait_until(
        "KEDA made an HPA for every ScaledObject",
        Duration::from_secs(900),
        || {
            let hpas = kubectl_json(&["get", "hpa", "-n", &ns]);
            (hpas["items"].as_array().map_or(0, Vec::len) == n).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(20));
    let asked = rates(backend);
    let queries = asked.get(backend.keda_query()).copied().unwrap_or(0.0);
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{}?labelSelector=scaledobject.keda.sh%2Fname%3Dw-0",
        backend.keda_metric()
    );
    let latency = latency(runtime, client, &path);
    let (operator, adapter) = keda.rss_kib();
    let rss_mib = (operator.unwrap_or(0) + adapter.unwrap_or(0)) as f64 / 1024.0;
    kubectl_ok(
        &["delete", "scaledobject", "--all", "-n", &ns, "--timeout=600s"],
        None,
    );
    Row {
        who: format!("KEDA v2.21.0, {n} ScaledObject{}", if n == 1 { "" } else { "s" }),
        asked,
        cycles_per_second: queries / n as f64,
        latency,
        rss_mib,
    }
}

fn levee_row(
    n: usize,
    backend: &dyn Backend,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
) -> Row {
    install_crd();
    let namespace = TestNamespace::create("levee-bench-levee");
    let ns = namespace.name.clone();
    let served = ServedMetricsApi::start(&ns, &[], &[]);
    let levee = &served.levee;
    apply_objects(&[deployment("worker")], &["-n", &ns]);
    let (field, spec) = backend.levee_backend();
    let queues: Vec<String> = (0..n).map(|i| backend.levee_queue(i)).collect();
    for (index, chunk) in queues.chunks(MAX_QUEUES).enumerate() {
        let policy = PolicyYaml::new(&format!("all-{index}"), &ns, "")
            .without("redis")
            .set(field, spec.clone())
            .set("queues", format!("[{}]", chunk.join(", ")))
            .set("sampleInterval", "1s")
            .set("readLatency", "false")
            .set(
                "thresholds",
                "{warning: 100000000, critical: 200000000, recovery: 1}",
            )
            .without("targets");
        let policy = if index == 0 {
            policy.set(
                "scaleTarget",
                "{kind: Deployment, name: worker, minReplicas: 1, maxReplicas: 10, pendingPerReplica: 100}",
            )
        } else {
            policy
        };
        policy.apply();
    }
    let policies = n.div_ceil(MAX_QUEUES);
    let sampled = || {
        levee
            .metric_sum("levee_sample_duration_seconds_count")
            .expect("/metrics answers")
    };
    wait_until("every policy sampled", Duration::from_secs(300), || {
        (sampled() >= 3.0 * policies as f64).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let before = sampled();
    let started = Instant::now();
    let asked = rates(backend);
    let ticks = (sampled() - before) / started.elapsed().as_secs_f64();
    wait_until("levee's HPA exists", Duration::from_secs(60), || {
        kubectl(&["get", "hpa", "levee-all-0", "-n", &ns], None)
            .status
            .success()
            .then_some(())
    });
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dall-0"
    );
    let latency = latency(runtime, client, &path);
    let rss_mib = levee.rss_kib().unwrap_or(0) as f64 / 1024.0;
    kubectl_ok(&["delete", "bpp", "--all", "-n", &ns, "--timeout=600s"], None);
    Row {
        who: if n == 1 {
            "levee, 1 policy of 1 queue".to_string()
        } else if policies == 1 {
            format!("levee, 1 policy of {n} queues")
        } else {
            format!("levee, {policies} policies of up to {MAX_QUEUES} queues")
        },
        asked,
        cycles_per_second: ticks / policies as f64,
        latency,
        rss_mib,
    }
}

fn kafka(n: usize) -> Kafka {
    let broker = KafkaBroker::start();
    let (topics, partitions, records) = (n.to_string(), PARTITIONS.to_string(), PER_QUEUE.to_string());
    broker.jobs("fill-many", &["t", &topics, &partitions, &records, "g", "0"]);
    assert_eq!(
        broker.tool_lag("g-0", "t-0"),
        u64::from(PARTITIONS * PER_QUEUE),
        "the lag Kafka's tool reports"
    );
    Kafka { broker }
}

fn nats(n: usize) -> Nats {
    let server = NatsServer::start_monitored(&["-js"]);
    let consumers = n.to_string();
    let published = PER_QUEUE.to_string();
    server.jetstream(&["fill-many", "events", "events", &consumers, &published]);
    assert_eq!(
        server.unprocessed_and_outstanding("events", "c-0", &[]),
        u64::from(PER_QUEUE),
        "the work nats-py reads on c-0"
    );
    Nats { server }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(kube::Client::try_default()).unwrap();
    levee_e2e::keda::install_keda_crds();
    let only = std::env::var("LEVEE_KEDA_BROKER_ROWS").unwrap_or_else(|_| "kafka nats".into());
    println!(
        "| backend | N | who | asked of the broker / server, per second | per look at every queue | metric GET p50 / p99 | RSS |"
    );
    println!("|---|---:|---|---|---:|---:|---:|");
    for n in sizes() {
        let mut backends: Vec<Box<dyn Backend>> = Vec::new();
        if only.contains("kafka") {
            backends.push(Box::new(kafka(n)));
        }
        if only.contains("nats") {
            backends.push(Box::new(nats(n)));
        }
        for backend in &backends {
            let rows = [
                keda_row(n, backend.as_ref(), &runtime, &client),
                levee_row(n, backend.as_ref(), &runtime, &client),
            ];
            for row in rows {
                let total: f64 = row.asked.values().sum();
                let by_kind: Vec<String> = row
                    .asked
                    .iter()
                    .map(|(kind, per_second)| format!("{kind} {per_second:.1}"))
                    .collect();
                let cycles = row.cycles_per_second.max(f64::MIN_POSITIVE);
                let per_cycle: Vec<String> = row
                    .asked
                    .iter()
                    .map(|(kind, per_second)| format!("{kind} {:.1}", per_second / cycles))
                    .collect();
                println!(
                    "| {} | {n} | {} | {total:.1} ({}) | {} | {:.1} / {:.1} ms | {:.1} MiB |",
                    backend.name(),
                    row.who,
                    by_kind.join(", "),
                    per_cycle.join(", "),
                    row.latency.0,
                    row.latency.1,
                    row.rss_mib,
                );
            }
            if let Some(note) = backend.note() {
                println!("\n{} at N = {n}: {note}\n", backend.name());
            }
        }
    }
    println!(
        "\n(counted by the broker / server over {} s; KEDA pollingInterval 10 s, its HPAs read the metric every HPA sync, 2 s on the local control plane; levee 1 s sample interval)",
        WINDOW.as_secs()
    );
}
