//! Scale benchmark on the local control plane (`make bench-scale`): `LEVEE_SCALE_POLICIES`
//! policies (default 1,000), each sampling 10 list queues on one Redis every second and holding
//! back its own one-pod Deployment. Measures, for each count in `LEVEE_SCALE_REPLICAS` (default
//! "1"; "3 1" measures 3 replicas, then 1, on the same objects) of levee processes, several
//! sharing the policies with `--ownership=shards` and peers as the chart runs them:
//! 1. resident memory and CPU per replica, API writes per minute by kind over all of them and
//!    Redis commands a second at steady state (nothing changing: the only writes due are the
//!    status heartbeats, one per policy per 5 min, the default), measured once status writes
//!    have fallen to that rate (a start writes once per policy; the table says how long it took);
//! 2. a burst: 20 policies pushed over critical at once (one atomic script in Redis), and the
//!    time until the last of their 20 pods shows `levee.dev/accepting=False`, seen by a watch.
//!
//! Prints Markdown rows for docs/benchmarks.md.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use levee::api::BackpressurePolicy;
use levee_e2e::redis::RedisServer;
use levee_e2e::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const QUEUES: usize = 10;
const BURST: usize = 20;
const CYCLES: usize = 3;
const SETTLE: Duration = Duration::from_secs(15);
/// The window settling is judged over, and how long it may take before the run is measured
/// anyway (and says so).
const SETTLE_WINDOW: Duration = Duration::from_secs(30);
const SETTLE_AT_MOST: Duration = Duration::from_secs(600);
/// Status writes at most this many times the heartbeats due count as settled: what a start or a
/// takeover writes once per policy is over.
const SETTLED_SHARE: f64 = 1.5;
const HEARTBEAT: Duration = Duration::from_secs(300);

fn policies() -> usize {
    std::env::var("LEVEE_SCALE_POLICIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// The replica counts to measure, one after the other: `LEVEE_SCALE_REPLICAS`, else 1.
fn replica_counts() -> Vec<usize> {
    let counts = std::env::var("LEVEE_SCALE_REPLICAS").unwrap_or_else(|_| "1".into());
    counts
        .split_whitespace()
        .map(|n| n.parse().expect("LEVEE_SCALE_REPLICAS: counts such as \"3 1\""))
        .collect()
}

fn measure_for() -> Duration {
    let seconds = std::env::var("LEVEE_SCALE_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "readinessGates": [{"conditionType": "levee.dev/accepting"}],
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]
                }
            }
        }
    }))
    .unwrap()
}

fn queue_key(policy: usize, queue: usize) -> String {
    format!("p{policy}:q{queue}")
}

fn policy(index: usize, url: &str) -> BackpressurePolicy {
    let queues: Vec<_> = (0..QUEUES)
        .map(|q| json!({"name": format!("q{q}"), "type": "list", "key": queue_key(index, q)}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "levee.dev/v1alpha1",
        "kind": "BackpressurePolicy",
        "metadata": {"name": format!("p{index}")},
        "spec": {
            "redis": {"url": url},
            "queues": queues,
            "sampleInterval": "1s",
            "thresholds": {"warning": 20, "critical": 50, "recovery": 5},
            "circuit": {"minOpenDuration": "1s"},
            "targets": [{"kind": "Deployment", "name": format!("api-{index}")}]
        }
    }))
    .unwrap()
}

/// Creates the objects with a few requests in flight (kubectl would send them one by one).
async fn create_all(client: &kube::Client, namespace: &str, count: usize, url: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let policies: Api<BackpressurePolicy> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(0..count)
        .map(|i| {
            let (deployments, policies) = (deployments.clone(), policies.clone());
            let url = url.to_string();
            async move {
                let params = PostParams::default();
                let (deployment, policy) = (deployment(&format!("api-{i}")), policy(i, &url));
                create_retrying(|| deployments.create(&params, &deployment)).await;
                create_retrying(|| policies.create(&params, &policy)).await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

async fn create_retrying<T, F, Fut>(create: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    for attempt in 0.. {
        match create().await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => return,
            Err(error) if attempt < 20 => {
                eprintln!("create failed ({error}); again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("creating an object failed 20 times: {error}"),
        }
    }
}

/// How many of the namespace's pods carry levee's `accepting` annotation with `value`.
async fn pods_marked(pods: &Api<Pod>, value: &str) -> Option<(usize, usize)> {
    // Metadata alone (the annotation is there): a full list of 5,000 pods every second was a
    // load of its own on the API server levee is measured against. In pages: at 10,000 pods one
    // LIST timed out on this machine for a whole run.
    let (mut total, mut marked) = (0, 0);
    let mut params = ListParams::default().limit(PODS_PAGE);
    loop {
        let page = pods.list_metadata(&params).await.ok()?;
        total += page.items.len();
        marked += page
            .items
            .iter()
            .filter(|pod| {
                pod.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("levee.dev/accepting"))
                    .is_some_and(|v| v == value)
            })
            .count();
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Some((total, marked)),
        }
    }
}

/// Pods listed a page at a time.
const PODS_PAGE: u32 = 1_000;

fn accepting(pod: &Pod) -> Option<&str> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "levee.dev/accepting")
        .map(|c| c.status.as_str())
}

/// How long a burst may take before it counts as not held back at all.
const BURST_PATIENCE: Duration = Duration::from_secs(60);

/// Pushes the burst policies over critical in one atomic script, then watches their pods until
/// every one shows `accepting` = `False`: the time from the push to the last pod (`None` when
/// `BURST_PATIENCE` passed first).
async fn burst(
    client: &kube::Client,
    namespace: &str,
    redis: &RedisServer,
    burst: &[usize],
) -> Option<Duration> {
    let apps: Vec<String> = burst.iter().map(|i| format!("api-{i}")).collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().labels(&format!("app in ({})", apps.join(",")));
    let mut events = watcher(pods, config).boxed();
    let mut held: HashMap<String, bool> = HashMap::new();
    // The initial list first: the push happens against a watch already open.
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            watcher::Event::InitApply(pod) => {
                held.insert(
                    pod.metadata.name.clone().unwrap(),
                    accepting(&pod) == Some("False"),
                );
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(held.len(), burst.len(), "one pod per burst policy");
    assert!(
        held.values().all(|h| !h),
        "the burst pods accept before the burst"
    );
    let keys: Vec<String> = burst.iter().map(|&i| queue_key(i, 0)).collect();
    let mut args = vec![
        "EVAL".to_string(),
        "for _, key in ipairs(KEYS) do for i = 1, 60 do redis.call('RPUSH', key, i) end end".into(),
        keys.len().to_string(),
    ];
    args.extend(keys);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pushed = Instant::now();
    redis.cli(&args);
    let deadline = pushed + BURST_PATIENCE;
    while held.values().any(|h| !h) {
        let Ok(event) = tokio::time::timeout_at(deadline.into(), events.try_next()).await else {
            return None;
        };
        let event = event.unwrap().expect("the watch goes on");
        if let watcher::Event::Apply(pod) = event {
            held.insert(
                pod.metadata.name.clone().unwrap(),
                accepting(&pod) == Some("False"),
            );
        }
    }
    Some(pushed.elapsed())
}

/// Empties the burst queues and waits until every pod accepts again.
async fn drain(pods: &Api<Pod>, redis: &RedisServer, burst: &[usize]) {
    let keys: Vec<String> = burst.iter().map(|&i| queue_key(i, 0)).collect();
    let mut args = vec!["DEL"];
    args.extend(keys.iter().map(String::as_str));
    redis.cli(&args);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods.list(&ListParams::default()).await.unwrap();
        if list.items.iter().all(|pod| accepting(pod) == Some("True")) {
            return;
        }
        assert!(Instant::now() < deadline, "the burst pods accept again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits `SETTLE`, then until the replicas write status at no more than `SETTLED_SHARE` times the
/// heartbeats due over a `SETTLE_WINDOW`, for at most `SETTLE_AT_MOST`: how long it took, `None`
/// when the writes never fell that far. A figure read while a start's writes go on is not a
/// steady state.
fn settle(replicas: &[Levee], count: usize) -> Option<Duration> {
    let due_per_minute = count as f64 * 60.0 / HEARTBEAT.as_secs_f64();
    let status_writes = || writes_by_kind(replicas)[0];
    let started = Instant::now();
    std::thread::sleep(SETTLE);
    loop {
        let before = status_writes();
        std::thread::sleep(SETTLE_WINDOW);
        let per_minute = (status_writes() - before) * 60.0 / SETTLE_WINDOW.as_secs_f64();
        eprintln!(
            "{:?} after every pod marked: {per_minute:.0} status writes/min ({due_per_minute:.0} due)",
            started.elapsed()
        );
        if per_minute <= due_per_minute * SETTLED_SHARE {
            return Some(started.elapsed());
        }
        if started.elapsed() >= SETTLE_AT_MOST {
            return None;
        }
    }
}

/// API writes by kind, summed over the replicas.
fn writes_by_kind(replicas: &[Levee]) -> Vec<f64> {
    WRITE_KINDS
        .iter()
        .map(|kind| {
            replicas
                .iter()
                .map(|levee| {
                    levee
                        .metric(&format!("levee_api_writes_total{{kind=\"{kind}\"}}"))
                        .expect("/metrics answers and exports the series")
                })
                .sum()
        })
        .collect()
}

/// A counter of Redis's `INFO stats` since it started.
fn redis_stat(redis: &RedisServer, name: &str) -> u64 {
    let info = redis.cli(&["INFO", "stats"]);
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has {name}"))
}

/// Every command Redis has processed since it started.
fn redis_commands(redis: &RedisServer) -> u64 {
    redis_stat(redis, "total_commands_processed")
}

/// Every connection Redis has accepted since it started.
fn redis_connections(redis: &RedisServer) -> u64 {
    redis_stat(redis, "total_connections_received")
}

/// `replicas` levee processes running `binary`: one alone without a Lease, or a ring sharing
/// the policies with peers (`--peer-url` on each one's metrics API port, as the chart sets it).
fn start_replicas(binary: &Path, ns: &str, replicas: usize) -> Vec<Levee> {
    // As in production: info logs.
    let env = [("RUST_LOG".to_string(), "info".to_string())];
    if replicas == 1 {
        return vec![Levee::start_binary(binary, ns, &["--leader-elect=false"], &env)];
    }
    let ring = format!("levee-scale-{ns}");
    (0..replicas)
        .map(|i| {
            let api_port = levee_e2e::redis::free_port();
            let [peer_url, token] = peer_args(api_port);
            let identity = format!("replica-{i}");
            let args = [
                "--ownership=shards",
                "--leader-election-name",
                &ring,
                "--identity",
                &identity,
                &peer_url,
                &token,
            ];
            Levee::start_binary_with_api_port(binary, ns, &args, &env, api_port)
        })
        .collect()
}

const WRITE_KINDS: [&str; 6] = [
    "status",
    "workload",
    "pod_condition",
    "pod_annotations",
    "hpa",
    "event",
];

/// The builds to measure, one after the other on the same cluster: `LEVEE_SCALE_BINS` (paths,
/// space-separated; a wrapper script that `exec`s levee works too), else `LEVEE_BIN`, else the
/// release build.
fn binaries() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("LEVEE_SCALE_BINS") {
        return list.split_whitespace().map(PathBuf::from).collect();
    }
    let binary = std::env::var_os("LEVEE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/levee"));
    vec![binary]
}

/// One replica's resident memory and CPU at steady state.
struct Usage {
    rss: f64,
    peak: f64,
    anon: f64,
    /// What its allocator counts as held by its allocations (`levee_heap_allocated_bytes`),
    /// MiB; `None` for a build without that metric.
    heap: Option<f64>,
    cpu: f64,
}

/// One row of the table.
struct Row {
    binary: String,
    replicas: Vec<Usage>,
    /// Until every pod was marked, when the run started on unmarked pods (the first).
    marked_after: Option<Duration>,
    /// From every pod marked until status writes fell to the heartbeats' rate (`None`: they did
    /// not within `SETTLE_AT_MOST`, measured anyway).
    settled_after: Option<Duration>,
    writes_per_minute: Vec<f64>,
    redis_per_second: f64,
    /// Connections Redis accepted while measured (each replica keeps one; more are redials).
    redis_connections: u64,
    bursts: Vec<Option<Duration>>,
}

fn measure(
    (binary, replica_count): (&Path, usize),
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    ns: &str,
    redis: &RedisServer,
    count: usize,
) -> Row {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let unmarked = runtime
        .block_on(pods_marked(&pods, "true"))
        .map(|(_, marked)| marked)
        == Some(0);
    let started = Instant::now();
    let mut replicas = start_replicas(binary, ns, replica_count);
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut progress = Instant::now();
        loop {
            let marked = pods_marked(&pods, "true").await.map(|(_, marked)| marked);
            if marked == Some(count) {
                break;
            }
            assert!(Instant::now() < deadline, "every pod marked accepting");
            // How the marking progresses: where a start spends its time.
            if progress.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "{:?} after the start: {marked:?} of {count} pods marked",
                    started.elapsed()
                );
                progress = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let marked_after = unmarked.then(|| started.elapsed());
    eprintln!(
        "{} x{}: every pod marked accepting {marked_after:?} after the start",
        binary.display(),
        replicas.len()
    );
    // What a start wrote to get there, and at what rate the API server took it.
    if let Some(after) = marked_after {
        let writes = writes_by_kind(&replicas);
        let total: f64 = writes.iter().sum();
        eprintln!(
            "writes until then by kind {WRITE_KINDS:?}: {writes:.0?}, {:.1} a policy, {:.0} a second",
            total / count as f64,
            total / after.as_secs_f64()
        );
    }
    let settled_after = settle(&replicas, count);

    let cpu_time = |replicas: &[Levee]| -> Vec<Duration> {
        replicas.iter().map(|levee| levee.cpu_time().unwrap()).collect()
    };
    let (writes_before, cpu_before) = (writes_by_kind(&replicas), cpu_time(&replicas));
    let (commands_before, connections_before) = (redis_commands(redis), redis_connections(redis));
    let measured = Instant::now();
    std::thread::sleep(measure_for());
    let (writes_after, cpu_after) = (writes_by_kind(&replicas), cpu_time(&replicas));
    let (commands_after, connections_after) = (redis_commands(redis), redis_connections(redis));
    let elapsed = measured.elapsed();
    let minutes = elapsed.as_secs_f64() / 60.0;
    let mib = |kib: Option<u64>| kib.unwrap_or_default() as f64 / 1024.0;
    let mut usage: Vec<Usage> = replicas
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|(levee, (before, after))| Usage {
            rss: mib(levee.rss_kib()),
            peak: 0.0,
            anon: mib(levee.anon_rss_kib()),
            heap: levee
                .metric("levee_heap_allocated_bytes")
                .map(|bytes| bytes / 1024.0 / 1024.0),
            cpu: (*after - *before).as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        })
        .collect();
    let writes_per_minute: Vec<f64> = writes_before
        .iter()
        .zip(&writes_after)
        .map(|(before, after)| (after - before) / minutes)
        .collect();
    let redis_per_second = (commands_after - commands_before) as f64 / elapsed.as_secs_f64();
    let redis_connections = connections_after - connections_before;
    for (i, replica) in usage.iter().enumerate() {
        eprintln!(
            "{} replica {i}: steady state: RSS {:.1} MiB (anonymous {:.1}, heap allocated {:.1?}), CPU {:.1} %",
            binary.display(),
            replica.rss,
            replica.anon,
            replica.heap,
            replica.cpu
        );
    }
    eprintln!(
        "writes/min over all replicas {writes_per_minute:.0?}, Redis {redis_per_second:.0} commands/s, {redis_connections} connections opened"
    );

    let burst_policies: Vec<usize> = (0..BURST).map(|i| i * count / BURST).collect();
    let mut bursts = Vec::new();
    for cycle in 0..CYCLES {
        let took = runtime.block_on(burst(client, ns, redis, &burst_policies));
        eprintln!("burst {cycle}: last pod held back {took:?} after the push");
        bursts.push(took);
        runtime.block_on(drain(&pods, redis, &burst_policies));
    }
    bursts.sort_by_key(|took| took.unwrap_or(Duration::MAX));
    for (replica, levee) in usage.iter_mut().zip(&replicas) {
        replica.peak = mib(levee.peak_rss_kib());
    }
    // Stopped together: one stopping alone would hand its policies to the others first.
    for levee in &mut replicas {
        levee.signal_stop();
    }
    for levee in &mut replicas {
        levee.stop();
    }
    Row {
        binary: binary
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        replicas: usage,
        marked_after,
        settled_after,
        writes_per_minute,
        redis_per_second,
        redis_connections,
        bursts,
    }
}

/// `min / median / max` of `values`, each formatted by `format`.
fn spread(values: &[f64], format: impl Fn(f64) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [one] => format(*one),
        _ => format!(
            "{} / {} / {}",
            format(sorted[0]),
            format(sorted[sorted.len() / 2]),
            format(sorted[sorted.len() - 1])
        ),
    }
}

fn main() {
    let count = policies();
    install_crd();
    let namespace = TestNamespace::create("levee-scale");
    let ns = namespace.name.clone();
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(kube::Client::try_default()).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let started = Instant::now();
    runtime.block_on(create_all(&client, &ns, count, &redis.url()));
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(1200);
        while pods_marked(&pods, "true").await.map(|(all, _)| all) != Some(count) {
            assert!(Instant::now() < deadline, "every Deployment has its pod");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    eprintln!(
        "{count} policies, Deployments and pods created in {:?}",
        started.elapsed()
    );

    let mut rows = Vec::new();
    for binary in binaries() {
        for replica_count in replica_counts() {
            rows.push(measure(
                (&binary, replica_count),
                &runtime,
                &client,
                &ns,
                &redis,
                count,
            ));
        }
    }
    println!(
        "| build | replicas | policies | queues | RSS steady a replica (peak; anonymous; heap allocated) | CPU of one core a replica | writes/min over all replicas: {} | heartbeats due/min | Redis commands/s (connections opened) | every pod marked after the start | then settled after | burst of {BURST} -> last pod held (min / median / max of {CYCLES}) |",
        WRITE_KINDS.join(" / ")
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|");
    for row in rows {
        let writes: Vec<String> = row.writes_per_minute.iter().map(|w| format!("{w:.0}")).collect();
        let ms = |took: Option<Duration>| match took {
            Some(took) => format!("{:.0}", took.as_secs_f64() * 1000.0),
            None => format!("> {}", BURST_PATIENCE.as_millis()),
        };
        let of = |field: fn(&Usage) -> f64| -> Vec<f64> { row.replicas.iter().map(field).collect() };
        let mib = |v: f64| format!("{v:.1}");
        let heap: Option<Vec<f64>> = row.replicas.iter().map(|u| u.heap).collect();
        println!(
            "| {} | {} | {count} | {} | {} MiB ({}; {}; {}) | {} % | {} | {:.0} | {:.0} ({}) | {} | {} | {} / {} / {} ms |",
            row.binary,
            row.replicas.len(),
            count * QUEUES,
            spread(&of(|u| u.rss), mib),
            spread(&of(|u| u.peak), mib),
            spread(&of(|u| u.anon), mib),
            heap.map_or("not exported".into(), |heap| spread(&heap, mib)),
            spread(&of(|u| u.cpu), mib),
            writes.join(" / "),
            count as f64 * 60.0 / HEARTBEAT.as_secs_f64(),
            row.redis_per_second,
            row.redis_connections,
            row.marked_after.map_or("marks in place".into(), |after| format!(
                "{:.0} s",
                after.as_secs_f64()
            )),
            row.settled_after.map_or(
                format!("not within {:.0} s", SETTLE_AT_MOST.as_secs_f64()),
                |after| format!("{:.0} s", after.as_secs_f64())
            ),
            ms(row.bursts[0]),
            ms(row.bursts[CYCLES / 2]),
            ms(row.bursts[CYCLES - 1]),
        );
    }
    println!(
        "\n(each build measured over {:.0} s once status writes fell to {SETTLED_SHARE} times the heartbeats due over {:.0} s, at least {:.0} s after every pod was marked; 1 s sample interval, {:.0} s status heartbeat unless the build says otherwise, info logs; several replicas: min / median / max over them)",
        measure_for().as_secs_f64(),
        SETTLE_WINDOW.as_secs_f64(),
        SETTLE.as_secs_f64(),
        HEARTBEAT.as_secs_f64()
    );
}
