//! Controller benchmark on the local control plane (`make bench-controller`):
//! 1. API writes per minute with 100 policies at steady state (each with its own one-pod
//!    producer), by kind, from levee's own `levee_api_writes_total`;
//! 2. reaction time: from a burst landing in Redis to the last of 50 producer pods showing
//!    `levee.dev/accepting=False` through the API, over several open/close cycles.
//!
//! Prints Markdown for docs/benchmarks.md.

use levee_e2e::fixture::{PolicyYaml, producer_deployment};
use levee_e2e::redis::RedisServer;
use levee_e2e::*;
use std::time::{Duration, Instant};

/// Policies of one pod each; `LEVEE_BENCH_POLICIES` sets another number (e.g. 1000).
fn policies() -> usize {
    std::env::var("LEVEE_BENCH_POLICIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
}
const PODS: usize = 50;
const CYCLES: usize = 5;

fn policy(namespace: &str, name: &str, url: &str, target: &str, interval: &str) -> String {
    PolicyYaml::new(name, namespace, format!("{{url: '{url}'}}"))
        .set("queues", format!("[{{name: q, type: list, key: {name}}}]"))
        .set("sampleInterval", interval)
        .set("circuit", "{minOpenDuration: 1s}")
        .set("targets", format!("[{{kind: Deployment, name: {target}}}]"))
        .yaml()
        + "---\n"
}

/// How many of `app`'s pods have the condition `levee.dev/accepting` = `status`.
fn pods_with(namespace: &str, app: &str, status: &str) -> usize {
    let pods = kubectl_json(&["get", "pods", "-n", namespace, "-l", &format!("app={app}")]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| {
            pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "levee.dev/accepting" && c["status"] == status)
            })
        })
        .count()
}

fn writes_by_kind(levee: &Levee) -> Vec<(String, f64)> {
    ["status", "workload", "pod_condition", "pod_annotations", "event"]
        .iter()
        .map(|kind| {
            (
                kind.to_string(),
                levee
                    .metric(&format!("levee_api_writes_total{{kind=\"{kind}\"}}"))
                    .expect("/metrics answers and exports the series"),
            )
        })
        .collect()
}

fn main() {
    let policies = policies();
    install_crd();
    let namespace = TestNamespace::create("levee-bench");
    let ns = namespace.name.as_str();
    let redis = RedisServer::start();
    let mut objects = String::new();
    for i in 0..policies {
        objects += &producer_deployment(ns, &format!("api-{i}"), 1);
        objects += &policy(ns, &format!("p{i}"), &redis.url(), &format!("api-{i}"), "1s");
    }
    objects += &producer_deployment(ns, "fleet", PODS);
    objects += &policy(ns, "fleet", &redis.url(), "fleet", "100ms");
    kubectl_ok(&["apply", "-f", "-"], Some(&objects));
    // At a thousand policies the API server's list may time out for a moment: poll again.
    let pods = || {
        let output = kubectl(&["get", "pods", "-n", ns, "-o", "json"], None);
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        list["items"].as_array().cloned()
    };
    wait_until("every producer pod running", Duration::from_secs(600), || {
        (pods()?.len() == policies + PODS).then_some(())
    });
    let levee = Levee::start(ns, &["--leader-elect=false"]);
    wait_until("every pod marked accepting", Duration::from_secs(600), || {
        let marked = pods()?
            .iter()
            .filter(|p| p["metadata"]["annotations"]["levee.dev/accepting"] == "true")
            .count();
        (marked == policies + PODS).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));

    let before = writes_by_kind(&levee);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let after = writes_by_kind(&levee);
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let rss = levee.rss_kib().unwrap_or_default();
    println!(
        "### Steady state: {} policies (plus one of {PODS} pods), 1 s sample interval, 30 s status heartbeat\n",
        policies
    );
    println!("| writes per minute | status | workload | pod condition | pod annotations | event |");
    println!("|---|---:|---:|---:|---:|---:|");
    let cells: Vec<String> = before
        .iter()
        .zip(&after)
        .map(|((_, b), (_, a))| format!("{:.0}", (a - b) / minutes))
        .collect();
    println!(
        "| measured over {:.0} s | {} |\n",
        started.elapsed().as_secs_f64(),
        cells.join(" | ")
    );
    println!(
        "levee's resident memory at steady state: {:.1} MiB ({} pods and {} Deployments cached)\n",
        rss as f64 / 1024.0,
        policies + PODS,
        policies + 1
    );

    let mut reactions = Vec::new();
    for cycle in 0..CYCLES {
        let jobs: Vec<String> = (0..60).map(|i| format!("j{i}")).collect();
        let mut args = vec!["RPUSH", "fleet"];
        args.extend(jobs.iter().map(String::as_str));
        let pushed = Instant::now();
        redis.cli(&args);
        wait_until("every fleet pod held back", Duration::from_secs(60), || {
            (pods_with(ns, "fleet", "False") == PODS).then_some(())
        });
        reactions.push(pushed.elapsed());
        redis.cli(&["DEL", "fleet"]);
        wait_until("every fleet pod accepting again", Duration::from_secs(60), || {
            (pods_with(ns, "fleet", "True") == PODS).then_some(())
        });
        eprintln!("cycle {cycle}: {:?}", reactions.last().unwrap());
    }
    reactions.sort();
    println!(
        "### Reaction: burst in Redis -> last of {PODS} pods' condition False (100 ms sample interval)\n"
    );
    println!("| cycles | min | median | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {CYCLES} | {:.0} ms | {:.0} ms | {:.0} ms |",
        reactions[0].as_secs_f64() * 1000.0,
        reactions[CYCLES / 2].as_secs_f64() * 1000.0,
        reactions[CYCLES - 1].as_secs_f64() * 1000.0
    );
    println!(
        "\n(each includes up to one sample interval of waiting and this benchmark's polling through kubectl)"
    );
}
