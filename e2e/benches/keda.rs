//! levee and KEDA side by side on one local control plane and one Redis (`make bench-keda`).
//! For each N of `LEVEE_KEDA_BENCH_SIZES` (default 10 100 1000) list queues `q-0..q-N`:
//! - **KEDA**: one ScaledObject with one `redis` trigger per list (its own Deployment each),
//!   `pollingInterval: 10`, `minReplicaCount: 1`, `listLength: 100`;
//! - **levee, one policy**: one BackpressurePolicy over the N lists (over 64 lists, the CRD's
//!   limit per policy: ceil(N / 64) policies), 1 s sample interval, the first with
//!   `spec.scaleTarget` (one HPA on `levee_pending`);
//! - **levee, N policies**: one policy per list, no HPA.
//!
//! `LEVEE_KEDA_BENCH_ROWS` (default `keda levee policies`) picks the rows. Measured for each:
//! Redis commands and round trips per second and per polling cycle (from
//! `INFO commandstats` over a window), the HPA-visible metric latency through the aggregator
//! (p50/p99 of sequential GETs with kube-rs), the time from a burst on `q-0` to the first
//! scale-up of its Deployment, and resident memory (KEDA: operator + adapter). Prints Markdown
//! rows for docs/benchmarks.md.

mod common;

use common::{deployment, latency};
use levee_e2e::fixture::PolicyYaml;
use levee_e2e::keda::Keda;
use levee_e2e::redis::RedisServer;
use levee_e2e::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(30);
const POLLING_SECONDS: u64 = 10;
/// Above this many ScaledObjects KEDA's operator runs with the settings KEDA documents for many
/// of them: with its defaults (20 requests/s to the API server, 5 concurrent reconciles) it had
/// not made every HPA for 1,000 ScaledObjects after 15 minutes here.
const TUNED_ABOVE: usize = 100;
const TUNED_FLAGS: [&str; 2] = ["--kube-api-qps=200", "--kube-api-burst=400"];
const TUNED_ENV: [(&str, &str); 1] = [("KEDA_SCALEDOBJECT_CTRL_MAX_RECONCILES", "20")];
/// The most queues one policy may name (the CRD's `maxItems`).
const MAX_QUEUES: usize = 64;

fn sizes() -> Vec<usize> {
    std::env::var("LEVEE_KEDA_BENCH_SIZES")
        .unwrap_or_else(|_| "10 100 1000".into())
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `INFO commandstats`: calls by command.
fn commandstats(redis: &RedisServer) -> BTreeMap<String, u64> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Redis calls by command over `WINDOW`, per second.
fn calls_per_second(redis: &RedisServer) -> BTreeMap<String, f64> {
    redis.cli(&["CONFIG", "RESETSTAT"]);
    std::thread::sleep(WINDOW);
    commandstats(redis)
        .into_iter()
        .filter(|(name, _)| !matches!(name.as_str(), "config" | "info"))
        .map(|(name, calls)| (name, calls as f64 / WINDOW.as_secs_f64()))
        .collect()
}

/// The replica count of `deployment` once it has not changed for three HPA syncs (the HPA may
/// still be scaling to the backlog that was there before the burst).
fn settled_replicas(namespace: &str, deployment: &str) -> i64 {
    let mut last = (deployment_replicas(namespace, deployment), Instant::now());
    wait_until(
        "the workers settle before the burst",
        Duration::from_secs(300),
        || {
            let now = deployment_replicas(namespace, deployment);
            if now != last.0 {
                last = (now, Instant::now());
            }
            (last.1.elapsed() >= Duration::from_secs(6)).then_some(now)
        },
    )
}

/// Pushes 2,000 jobs on `q-0` and waits until `deployment` has more replicas than it had settled
/// at before (fewer than its 10: every other list holds 10 jobs, a replica is for 100).
fn burst_to_scale_up(redis: &RedisServer, namespace: &str, deployment: &str) -> Duration {
    let before = settled_replicas(namespace, deployment);
    assert!(before < 10, "{deployment} is at its maximum already ({before})");
    let started = Instant::now();
    redis.push_jobs("q-0", 2000);
    wait_until(
        "the burst scales its workers up",
        Duration::from_secs(300),
        || (deployment_replicas(namespace, deployment) > before).then_some(()),
    );
    let took = started.elapsed();
    redis.cli(&["LTRIM", "q-0", "0", "9"]);
    took
}

struct Row {
    who: String,
    calls: BTreeMap<String, f64>,
    round_trips_per_second: f64,
    cycles_per_second: f64,
    latency: Option<(f64, f64)>,
    burst: Option<Duration>,
    rss_mib: f64,
}

fn keda_row(n: usize, redis: &RedisServer, runtime: &tokio::runtime::Runtime, client: &kube::Client) -> Row {
    let namespace = TestNamespace::create("levee-bench-keda");
    let ns = namespace.name.clone();
    let keda = if n > TUNED_ABOVE {
        Keda::start_tuned(&TUNED_FLAGS, &TUNED_ENV)
    } else {
        Keda::start()
    };
    let _guard = ApiServiceGuard;
    keda.serve_external_metrics();
    let mut objects = Vec::new();
    for i in 0..n {
        let name = format!("w-{i}");
        objects.push(deployment(&name));
        objects.push(json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"scaleTargetRef": {"name": name}, "pollingInterval": POLLING_SECONDS,
                "minReplicaCount": 1, "maxReplicaCount": 10,
                "triggers": [{"type": "redis", "metadata": {"address": format!("127.0.0.1:{}", redis.port),
                    "listName": format!("q-{i}"), "listLength": "100"}}]}}));
    }
    for chunk in objects.chunks(200) {
        let items: Vec<Value> = chunk
            .iter()
            .cloned()
            .map(|mut object| {
                object["metadata"]["namespace"] = ns.clone().into();
                object
            })
            .collect();
        apply_objects(&items, &["--server-side"]);
    }
    wait_until(
        "KEDA made an HPA for every ScaledObject",
        Duration::from_secs(900),
        || {
            let hpas = kubectl_json(&["get", "hpa", "-n", &ns]);
            (hpas["items"].as_array().map_or(0, Vec::len) == n).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(POLLING_SECONDS * 2));
    let calls = calls_per_second(redis);
    // Each trigger's query is one EVAL (TYPE, then LLEN, inside the script): one round trip.
    let evals = calls.get("eval").copied().unwrap_or(0.0);
    let round_trips: f64 = calls
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "type" | "llen" | "zcard" | "scard" | "hlen"))
        .map(|(_, per_second)| per_second)
        .sum();
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-redis-q-0?labelSelector=scaledobject.keda.sh%2Fname%3Dw-0"
    );
    let latency = latency(runtime, client, &path);
    let burst = burst_to_scale_up(redis, &ns, "w-0");
    let (operator, adapter) = keda.rss_kib();
    let rss_mib = (operator.unwrap_or(0) + adapter.unwrap_or(0)) as f64 / 1024.0;
    eprintln!("keda n={n}: operator {operator:?} KiB, adapter {adapter:?} KiB");
    // While KEDA runs: it removes its finalizers and HPAs, so nothing of it keeps the next rows'
    // HPA controller busy.
    kubectl_ok(
        &["delete", "scaledobject", "--all", "-n", &ns, "--timeout=600s"],
        None,
    );
    Row {
        who: format!("KEDA v2.21.0, {n} ScaledObjects"),
        cycles_per_second: evals / n as f64,
        round_trips_per_second: round_trips,
        calls,
        latency: Some(latency),
        burst: Some(burst),
        rss_mib,
    }
}

fn levee_row(
    n: usize,
    per_queue_policies: bool,
    redis: &RedisServer,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
) -> Row {
    install_crd();
    let namespace = TestNamespace::create("levee-bench-levee");
    let ns = namespace.name.clone();
    let served = ServedMetricsApi::start(&ns, &[], &[]);
    let levee = &served.levee;
    let url = format!("{{url: '{}'}}", redis.url());
    let thresholds = "{warning: 100000000, critical: 200000000, recovery: 1}";
    if per_queue_policies {
        let policies: Vec<String> = (0..n)
            .map(|i| {
                PolicyYaml::new(&format!("p-{i}"), &ns, url.clone())
                    .set("queues", format!("[{{name: q, type: list, key: q-{i}}}]"))
                    .set("sampleInterval", "1s")
                    .set("thresholds", thresholds)
                    .without("targets")
                    .yaml()
            })
            .collect();
        for chunk in policies.chunks(200) {
            kubectl_ok(&["apply", "-f", "-"], Some(&chunk.join("\n---\n")));
        }
    } else {
        apply_objects(&[deployment("worker")], &["-n", &ns]);
        // A policy holds at most MAX_QUEUES queues (the CRD's limit): N lists take ceil(N / 64)
        // policies; the first (with q-0) scales the workers.
        let queues: Vec<String> = (0..n)
            .map(|i| format!("{{name: q-{i}, type: list, key: q-{i}}}"))
            .collect();
        for (index, chunk) in queues.chunks(MAX_QUEUES).enumerate() {
            let policy = PolicyYaml::new(&format!("all-{index}"), &ns, url.clone())
                .set("queues", format!("[{}]", chunk.join(", ")))
                .set("sampleInterval", "1s")
                .set("thresholds", thresholds)
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
    }
    let sampled = |levee: &Levee| {
        levee
            .metric_sum("levee_sample_duration_seconds_count")
            .expect("/metrics answers")
    };
    let policies = if per_queue_policies {
        n
    } else {
        n.div_ceil(MAX_QUEUES)
    };
    wait_until("every policy sampled", Duration::from_secs(300), || {
        (sampled(levee) >= 3.0 * policies as f64).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let before = sampled(levee);
    let calls = calls_per_second(redis);
    // Each policy's tick is one pipeline: one round trip per policy per tick.
    let round_trips = (sampled(levee) - before) / WINDOW.as_secs_f64();
    let (latency, burst) = if per_queue_policies {
        (None, None)
    } else {
        let path = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dall-0"
        );
        wait_until("levee's HPA exists", Duration::from_secs(60), || {
            kubectl(&["get", "hpa", "levee-all-0", "-n", &ns], None)
                .status
                .success()
                .then_some(())
        });
        (
            Some(latency(runtime, client, &path)),
            Some(burst_to_scale_up(redis, &ns, "worker")),
        )
    };
    let rss_mib = levee.rss_kib().unwrap_or(0) as f64 / 1024.0;
    // While levee runs: it releases its finalizers.
    kubectl_ok(&["delete", "bpp", "--all", "-n", &ns, "--timeout=600s"], None);
    Row {
        who: if per_queue_policies {
            format!("levee, {n} policies of 1 queue")
        } else if policies == 1 {
            format!("levee, 1 policy of {n} queues")
        } else {
            format!("levee, {policies} policies of up to {MAX_QUEUES} queues")
        },
        cycles_per_second: round_trips / policies as f64,
        round_trips_per_second: round_trips,
        calls,
        latency,
        burst,
        rss_mib,
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(kube::Client::try_default()).unwrap();
    levee_e2e::keda::install_keda_crds();
    println!(
        "| N | who | Redis commands/s (by command) | round trips/s | per cycle: commands / round trips | metric GET p50 / p99 | burst -> first scale-up | RSS |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for n in sizes() {
        let redis = RedisServer::start();
        for i in 0..n {
            redis.push_jobs(&format!("q-{i}"), 10);
        }
        let only = std::env::var("LEVEE_KEDA_BENCH_ROWS").unwrap_or_else(|_| "keda levee policies".into());
        let mut rows = Vec::new();
        if only.contains("keda") {
            rows.push(keda_row(n, &redis, &runtime, &client));
        }
        if only.contains("levee") {
            rows.push(levee_row(n, false, &redis, &runtime, &client));
        }
        if only.contains("policies") {
            rows.push(levee_row(n, true, &redis, &runtime, &client));
        }
        for row in rows {
            let total: f64 = row.calls.values().sum();
            let by_command: Vec<String> = row
                .calls
                .iter()
                .filter(|(_, per_second)| **per_second >= 0.05)
                .map(|(name, per_second)| format!("{name} {per_second:.1}"))
                .collect();
            let cycles = row.cycles_per_second.max(f64::MIN_POSITIVE);
            println!(
                "| {n} | {} | {total:.1} ({}) | {:.1} | {:.0} / {:.0} | {} | {} | {:.1} MiB |",
                row.who,
                by_command.join(", "),
                row.round_trips_per_second,
                total / cycles,
                row.round_trips_per_second / cycles,
                row.latency
                    .map_or("-".into(), |(p50, p99)| format!("{p50:.1} / {p99:.1} ms")),
                row.burst
                    .map_or("-".into(), |took| format!("{:.1} s", took.as_secs_f64())),
                row.rss_mib,
            );
        }
    }
    println!(
        "\n(commandstats over {} s; KEDA pollingInterval {POLLING_SECONDS} s, its HPAs read the metric every HPA sync, 2 s on the local control plane; levee 1 s sample interval)",
        WINDOW.as_secs()
    );
}
