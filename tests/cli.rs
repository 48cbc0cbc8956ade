//! The `levee` binary as a user runs it: exit codes, messages, and JSON ticks against real Redis.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use support::fixtures::{SMALL_POLICY, write_policy};
use support::*;

fn levee(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `levee sample -f FILE --redis-url URL --once -o json`.
fn sample_once_json(file: &str, url: &str) -> Output {
    levee(&["sample", "-f", file, "--redis-url", url, "--once", "-o", "json"])
}

fn ticks(output: &Output) -> Vec<Value> {
    text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The tick's entry for `queue`.
fn queue_entry<'a>(tick: &'a Value, queue: &str) -> &'a Value {
    tick["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap()
}

fn depth(tick: &Value, queue: &str) -> Value {
    let entry = queue_entry(tick, queue);
    entry
        .get("depth")
        .cloned()
        .unwrap_or_else(|| entry["error"].clone())
}

#[test]
fn sample_once_json_reads_every_queue_type_of_the_example_policy() {
    let server = RedisServer::start();
    let port = server.port.to_string();
    let bullmq = run_producer(
        "node",
        "bullmq_fill.mjs",
        &[port.clone(), "rule-engine-events".into(), "bull".into()],
    );
    let kombu = run_producer("python", "celery_fill.py", &[port.clone(), "emails".into()]);
    let rq = run_producer(
        "python",
        "rq_fill.py",
        &[port.clone(), "reports".into(), "3".into()],
    );
    server.cli(&["RPUSH", "jobs:retry", "a", "b"]);
    server.cli(&["ZADD", "jobs:scheduled", "1", "a"]);
    server.fill_stream("audit", "writers", 5, 2);
    server.cli(&["LPUSH", "queue:billing", "{}", "{}", "{}", "{}"]);

    let url = format!("redis://127.0.0.1:{port}/0");
    let output = levee(&[
        "sample",
        "-f",
        "examples/policy.yaml",
        "--redis-url",
        &url,
        "--once",
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ticks = ticks(&output);
    assert_eq!(ticks.len(), 1);
    let tick = &ticks[0];
    assert_eq!(tick["policy"], "rule-engine");
    assert_eq!(tick["namespace"], "jobs");
    let bull: u64 = ["wait", "paused", "prioritized", "active"]
        .iter()
        .map(|s| bullmq[*s].as_u64().unwrap())
        .sum();
    let expected = [
        ("events", bull),
        ("retries", 2),
        ("scheduled", 1),
        ("audit", 5),
        ("emails", kombu["size"].as_u64().unwrap()),
        ("reports", rq["count"].as_u64().unwrap()),
        ("billing", 4),
    ];
    for (queue, value) in expected {
        assert_eq!(depth(tick, queue), Value::from(value), "{queue}");
    }
    let pending: u64 = expected
        .iter()
        .map(|(q, v)| if *q == "billing" { v * 2 } else { *v })
        .sum();
    assert_eq!(tick["pending"], pending, "billing has weight 2");
    assert_eq!(tick["state"], "Closed");
    assert_eq!(tick["level"], "Normal");
    // Latency: a number for the layouts that keep an enqueue time (Sidekiq jobs without
    // `enqueued_at` count as not waiting, as in Sidekiq), null for the others, never a guess.
    let latency = |queue: &str| queue_entry(tick, queue)["latencySeconds"].clone();
    for queue in ["retries", "scheduled", "emails"] {
        assert_eq!(latency(queue), Value::Null, "{queue}");
    }
    for queue in ["events", "audit", "reports"] {
        assert!(
            latency(queue).as_f64().is_some_and(|s| s >= 0.0),
            "{queue}: {tick}"
        );
    }
    assert_eq!(latency("billing"), Value::from(0.0));
    assert!(tick["latencySeconds"].is_number(), "{tick}");
}

/// `levee sample` discovers `keyPattern` entries as `levee run` does: a policy of patterns only
/// reports the queues Sidekiq itself lists, with their depths, not a pending of 0.
#[test]
fn sample_once_discovers_key_pattern_queues_as_levee_run_does() {
    let server = RedisServer::start();
    let port = server.port.to_string();
    let sidekiq = run_producer(
        "ruby",
        "sidekiq_queues.rb",
        &[port.clone(), "billing".into(), "mailers".into(), "billing".into()],
    );
    assert_eq!(sidekiq["queues"], serde_json::json!(["billing", "mailers"]));
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(
        &dir,
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {name: patterns, namespace: ns1}
spec:
  redis: {url: 'redis://127.0.0.1:1/0'}
  queues:
    - {name: sk, type: sidekiq, keyPattern: '*'}
  thresholds: {warning: 3, critical: 5, recovery: 1}
",
    );
    let output = sample_once_json(&file, &format!("redis://127.0.0.1:{port}/0"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let tick = &ticks(&output)[0];
    assert_eq!(depth(tick, "sk.billing"), 2, "{tick}");
    assert_eq!(depth(tick, "sk.mailers"), 1, "{tick}");
    assert_eq!(tick["pending"], 3, "{tick}");
    assert_eq!(tick["queues"].as_array().unwrap().len(), 2, "{tick}");
}

#[test]
fn sample_once_opens_the_circuit_at_critical() {
    let server = RedisServer::start();
    server.cli(&["RPUSH", "jobs", "1", "2", "3", "4", "5", "6"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(&dir, SMALL_POLICY);
    let output = sample_once_json(&file, &server.url());
    assert!(output.status.success());
    let tick = &ticks(&output)[0];
    assert_eq!(
        (
            tick["pending"].as_u64(),
            tick["state"].as_str(),
            tick["level"].as_str()
        ),
        (Some(6), Some("Open"), Some("Critical"))
    );
    let text_output = levee(&["sample", "-f", &file, "--redis-url", &server.url(), "--once"]);
    let shown = text(&text_output.stdout);
    assert!(
        shown.contains("ns1/small state=Open level=Critical pending=6 [jobs=6 other=0]"),
        "{shown}"
    );
    assert!(
        shown.contains("Closed -> Open: pending 6 >= critical 5"),
        "{shown}"
    );
}

#[test]
fn sample_once_reports_a_wrong_type_for_that_queue_and_exits_1() {
    let server = RedisServer::start();
    server.cli(&["SET", "other", "text"]);
    server.cli(&["RPUSH", "jobs", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(&dir, SMALL_POLICY);
    let output = sample_once_json(&file, &server.url());
    assert_eq!(output.status.code(), Some(1));
    let tick = &ticks(&output)[0];
    assert_eq!(depth(tick, "jobs"), 1);
    assert!(
        depth(tick, "other").as_str().unwrap().contains("is not a list"),
        "{tick}"
    );
}

#[test]
fn sample_once_against_no_redis_names_the_endpoint_not_the_password() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(&dir, SMALL_POLICY);
    let url = format!("redis://admin:topsecret@127.0.0.1:{port}/0");
    let output = sample_once_json(&file, &url);
    assert_eq!(output.status.code(), Some(1));
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!all.contains("topsecret"), "{all}");
    let tick = &ticks(&output)[0];
    let error = depth(tick, "jobs");
    assert!(
        error
            .as_str()
            .unwrap()
            .starts_with(&format!("redis://127.0.0.1:{port}/0: connection refused")),
        "{error}"
    );
    assert_eq!(tick["state"], "Closed", "one failed tick holds the state");
}

#[test]
fn sample_with_a_bad_url_or_policy_exits_1_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(&dir, SMALL_POLICY);
    let output = levee(&[
        "sample",
        "-f",
        &file,
        "--redis-url",
        "redis://127.0.0.1:99999",
        "--once",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr)
            .contains("ns1/small: --redis-url: redis url redis://127.0.0.1:99999: invalid port number"),
        "{}",
        text(&output.stderr)
    );
    let bad = write_policy(&dir, &SMALL_POLICY.replace("warning: 3", "warning: 9"));
    let output = levee(&["sample", "-f", &bad, "--once"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains(
        "ns1/small: spec.thresholds: Invalid value: thresholds must satisfy recovery < warning < critical"
    ));
}

#[test]
fn sample_without_once_ticks_until_sigterm() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(
        &dir,
        &SMALL_POLICY.replace("thresholds:", "sampleInterval: 100ms\n  thresholds:"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["sample", "-f", &file, "--redis-url", &server.url(), "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["pending"], 0);
    server.cli(&["RPUSH", "jobs", "1", "2", "3", "4", "5"]);
    let opened = lines
        .by_ref()
        .take(50)
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .find(|t| t["state"] == "Open");
    assert!(opened.is_some(), "a later tick sees the burst and opens");
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success(), "SIGTERM ends it cleanly");
}

#[test]
fn check_accepts_the_examples() {
    let output = levee(&["check", "-f", "examples/policy.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stdout));
    assert_eq!(text(&output.stdout), "examples/policy.yaml: 1 policies valid\n");
    let output = levee(&["check", "-f", "examples/nats-policy.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stdout));
    assert_eq!(
        text(&output.stdout),
        "examples/nats-policy.yaml: 1 policies valid\n"
    );
}

#[test]
fn check_prints_one_line_per_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let body = SMALL_POLICY
        .replace("recovery: 1", "recovery: 4")
        .replace("name: other", "name: jobs")
        .replace("redis://127.0.0.1:1/0", "redis://u:p@127.0.0.1:1/0")
        + "---\n"
        + &SMALL_POLICY
            .replace("name: small", "name: typo")
            .replace("type: list, key: other", "type: lst, key: other")
        + "  targets: [{kind: Deployment, name: api, priorty: 1}]\n";
    let file = write_policy(&dir, &body);
    let output = levee(&["check", "-f", &file]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stdout),
        "ns1/small: spec.queues: Invalid value: queue names must be unique: give every queue its own name
ns1/small: spec.redis.url: Invalid value: \"redis://u:***@127.0.0.1:1/0\": must not contain a password: put it in a Secret and reference it with credentialsSecretRef
ns1/small: spec.thresholds: Invalid value: thresholds must satisfy recovery < warning < critical: lower recovery or raise critical
ns1/typo: spec.queues[1].type: Unsupported value: \"lst\": supported values: \"list\", \"zset\", \"stream\", \"bullmq\", \"celery\", \"rq\", \"sidekiq\", \"jetstream\", \"kafka\"
ns1/typo: spec.targets[0].priorty: unknown field: remove it or check its spelling against `levee crd`
"
    );
}

#[test]
fn check_reports_invalid_yaml_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_policy(
        &dir,
        "apiVersion: levee.dev/v1alpha1\nkind: BackpressurePolicy\nspec: {queues: [\n",
    );
    let output = levee(&["check", "-f", &file]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stdout).contains("document 1: (yaml): invalid YAML:"),
        "{}",
        text(&output.stdout)
    );
    let missing = levee(&["check", "-f", "/nonexistent/policy.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stdout).contains("cannot read /nonexistent/policy.yaml"));
    let empty = write_policy(&dir, "apiVersion: v1\nkind: ConfigMap\n");
    let output = levee(&["check", "-f", &empty]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("no BackpressurePolicy"));
}

#[test]
fn crd_prints_the_committed_crd_and_version_prints_the_version() {
    let output = levee(&["crd"]);
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(repo_root().join("crds/levee.dev_backpressurepolicies.yaml")).unwrap();
    assert_eq!(text(&output.stdout), committed, "crds/ is stale: run `make crds`");
    let in_chart =
        std::fs::read_to_string(repo_root().join("charts/levee/crds/levee.dev_backpressurepolicies.yaml"))
            .unwrap();
    assert_eq!(in_chart, committed, "the chart's CRD is stale: run `make crds`");
    let version = levee(&["version"]);
    assert_eq!(
        text(&version.stdout),
        format!("levee {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// An external scaler without a client CA would serve every policy's figures to anyone who
/// reaches it: `levee run` refuses to start one unless told to, saying what to set.
#[test]
fn run_refuses_an_external_scaler_without_a_client_ca_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["run", "--tls-san", "localhost"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--external-metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--external-scaler-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let said = text(&output.stderr);
    assert!(
        said.contains("--external-scaler-client-ca-file")
            && said.contains("--external-scaler-allow-unauthenticated"),
        "names the flag to set and the one to run without: {said}"
    );
    let both = levee(&[
        "run",
        "--external-scaler-addr",
        "127.0.0.1:9443",
        "--external-scaler-client-ca-file",
        "/dev/null",
        "--external-scaler-allow-unauthenticated",
    ]);
    assert_eq!(both.status.code(), Some(2), "clap refuses the contradiction");
}

#[test]
fn sample_once_json_reads_a_jetstream_consumer_as_nats_own_client_does() {
    let server = support::nats::NatsServer::start();
    // 30 published, 12 delivered of which 2 acknowledged.
    server.jetstream(&["fill", "EVENTS", "events", "writer", "30", "12", "2"]);
    let expected = server.unprocessed_and_outstanding("EVENTS", "writer", &[]);
    assert_eq!(expected, 28, "nats-py's own figure");
    assert_eq!(
        server.consumer_info_tool("EVENTS", "writer"),
        expected,
        "nats consumer info's"
    );
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: events, namespace: ns1}}
spec:
  nats: {{url: '{}'}}
  queues:
    - {{name: events, type: jetstream, stream: EVENTS, consumer: writer}}
    - {{name: missing, type: jetstream, stream: EVENTS, consumer: nobody}}
  thresholds: {{warning: 10, critical: 20, recovery: 5}}
",
        server.url()
    );
    let file = write_policy(&dir, &body);
    let output = levee(&["sample", "-f", &file, "--once", "-o", "json"]);
    let tick = &ticks(&output)[0];
    assert_eq!(depth(tick, "events"), expected, "{tick}");
    let missing = depth(tick, "missing");
    assert!(
        missing
            .as_str()
            .is_some_and(|m| m.contains("consumer nobody") && m.contains("not found")),
        "{missing}"
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a queue that cannot be read fails the run"
    );
}

/// levee sample reads a NATS server that only lets JWT users in, with the .creds file the
/// policy's Secret would hold (made with NATS's own libraries), over TLS with --ca-file; without
/// them it says what to pass.
#[test]
fn sample_reads_a_jetstream_consumer_with_a_creds_file_over_tls() {
    let nats = support::nats::JwtTlsNats::start();
    let server = &nats.server;
    let access = nats.access();
    let access: Vec<&str> = access.iter().map(String::as_str).collect();
    let mut fill = vec!["fill", "EVENTS", "events", "writer", "9", "3", "1"];
    fill.extend(&access);
    server.jetstream(&fill);
    let expected = server.unprocessed_and_outstanding("EVENTS", "writer", &access);
    assert_eq!(expected, 8, "nats-py's own figure");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: events, namespace: ns1}}
spec:
  nats: {{url: '{}', credentialsSecretRef: {{name: nats-auth}}, tls: {{caSecretRef: {{name: nats-ca}}}}}}
  queues:
    - {{name: events, type: jetstream, stream: EVENTS, consumer: writer}}
  thresholds: {{warning: 10, critical: 20, recovery: 5}}
",
        server.url()
    );
    let file = write_policy(&dir, &body);
    let (ca, creds) = (nats.ca(), nats.creds());
    let output = levee(&[
        "sample",
        "-f",
        &file,
        "--once",
        "-o",
        "json",
        "--nats-creds",
        &creds,
        "--ca-file",
        &ca,
    ]);
    assert_eq!(depth(&ticks(&output)[0], "events"), expected);
    assert_eq!(output.status.code(), Some(0));

    let without = levee(&["sample", "-f", &file, "--once", "-o", "json", "--ca-file", &ca]);
    let said = String::from_utf8_lossy(&without.stderr);
    assert!(said.contains("pass --nats-creds"), "{said}");
    assert_eq!(without.status.code(), Some(1), "the server refuses levee");
}
