//! Faults made on purpose: Redis behind a network namespace whose packets are dropped (timeouts,
//! not refused connections), with what the producers saw tick by tick. Needs root (network
//! namespaces, iptables), as CI runs; elsewhere the test says it was skipped.

use levee_e2e::fixture::{Fixture, PATIENCE, PolicyYaml};
use levee_e2e::redis::netns::{self, Isolated};
use levee_e2e::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server in a network namespace of its own (`netns::Isolated`), its packets dropped at
/// will. Torn down when dropped.
struct IsolatedRedis {
    server: Child,
    port: u16,
    // Last: the namespace goes after the server in it.
    isolated: Isolated,
}

impl IsolatedRedis {
    fn start() -> Self {
        let isolated = Isolated::create("chaos", 213);
        let port = 6379;
        let dir = std::env::temp_dir().join(&isolated.netns);
        std::fs::create_dir_all(&dir).unwrap();
        let server = isolated
            .command("redis-server")
            .args(["--port", &port.to_string(), "--bind", &isolated.address])
            .args([
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Self {
            server,
            port,
            isolated,
        };
        wait_until("the isolated redis answers", PATIENCE, || {
            let output = Command::new("redis-cli")
                .args([
                    "-h",
                    &redis.isolated.address,
                    "-p",
                    &redis.port.to_string(),
                    "ping",
                ])
                .output()
                .ok()?;
            String::from_utf8_lossy(&output.stdout)
                .contains("PONG")
                .then_some(())
        });
        redis
    }

    fn url(&self) -> String {
        format!("redis://{}:{}/0", self.isolated.address, self.port)
    }

    /// Drops (or lets through again) every packet to Redis's port, inside its namespace.
    fn drop_packets(&self, dropping: bool) {
        self.isolated.drop_packets(self.port, dropping);
    }
}

impl Drop for IsolatedRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn dropped_packets_apply_on_sample_failure_and_the_circuit_resumes_when_they_flow() {
    if !netns::may_run() {
        return;
    }
    let fixture = Fixture::create();
    let redis = IsolatedRedis::start();
    let _levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    let endpoint = format!("{{url: '{}', timeout: 300ms}}", redis.url());
    PolicyYaml::new("partitioned", fixture.ns(), endpoint)
        .set("circuit", "{minOpenDuration: 2s}")
        .set("onSampleFailure", "{action: Open, after: 3}")
        .apply();
    fixture.wait_state("partitioned", "Closed");
    fixture.wait_pods_accepting(true, 2);

    // Packets vanish: every sample times out (no RST), and after 3 in a row the circuit opens.
    redis.drop_packets(true);
    let dropped = Instant::now();
    let status = fixture.wait_state("partitioned", "Open");
    let opened_after = dropped.elapsed();
    fixture.wait_pods_accepting(false, 2);
    let reachable = fixture.condition("partitioned", "RedisReachable");
    assert_eq!(reachable["status"], "False", "{status}");
    let message = reachable["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no answer within") || message.contains("no connection within"),
        "a timeout, not a refused connection: {message}"
    );
    eprintln!(
        "figure: packets dropped -> circuit Open after {opened_after:?} (3 failed 200 ms ticks, 300 ms timeout)"
    );

    // Packets flow again: the samples succeed, the circuit half-opens after its minimum open
    // time and closes on an empty queue; producers accept again.
    redis.drop_packets(false);
    let restored = Instant::now();
    fixture.wait_state("partitioned", "Closed");
    fixture.wait_pods_accepting(true, 2);
    eprintln!(
        "figure: packets flow again -> circuit Closed after {:?} (2 s minimum open time)",
        restored.elapsed()
    );
    assert_eq!(
        fixture.condition("partitioned", "RedisReachable")["status"],
        "True"
    );
    let opened = fixture.events("CircuitOpened");
    assert_eq!(opened.len(), 1, "opened once: {opened:?}");
    assert!(opened[0].contains("failed samples in a row"), "{opened:?}");
}

/// Each policy's value of `metric` in levee's `/metrics` (`None` when it cannot be read).
fn by_policy(levee: &Levee, metric: &str) -> Option<std::collections::HashMap<String, f64>> {
    let text = levee.get("/metrics")?;
    Some(
        text.lines()
            .filter_map(|line| {
                let labels = line.strip_prefix(metric)?.strip_prefix('{')?;
                let (labels, value) = labels.split_once("} ")?;
                let policy = labels.split("policy=\"").nth(1)?.split('"').next()?;
                Some((policy.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// 200 policies on one Redis whose packets are dropped all apply `onSampleFailure` within
/// `after` x interval + one timeout + 1 s of the drop: no policy's tick waits for another's dial
/// to the same dead server. Policies on a healthy Redis, beside them in the same levee, keep
/// their interval meanwhile.
#[test]
fn two_hundred_policies_on_a_partitioned_redis_apply_on_sample_failure_together() {
    if !netns::may_run() {
        return;
    }
    const DEAD: usize = 200;
    const HEALTHY: usize = 5;
    let fixture = Fixture::create();
    let redis = IsolatedRedis::start();
    let levee = Levee::start(fixture.ns(), &["--leader-elect=false"]);
    let (dead, healthy) = (
        format!("{{url: '{}', timeout: 300ms}}", redis.url()),
        format!("{{url: '{}', timeout: 300ms}}", fixture.redis.url()),
    );
    // Targets that do not exist: the test is about sampling and deciding, not marking pods.
    let policy = |name: String, redis: &str| {
        PolicyYaml::new(&name, fixture.ns(), redis)
            .set("sampleInterval", "1s")
            .set("onSampleFailure", "{action: Open, after: 3}")
            .set("targets", format!("[{{kind: Deployment, name: absent-{name}}}]"))
            .yaml()
    };
    let mut manifests = String::new();
    for i in 0..DEAD {
        manifests += &policy(format!("dead-{i}"), &dead);
        manifests += "---\n";
    }
    for i in 0..HEALTHY {
        manifests += &policy(format!("healthy-{i}"), &healthy);
        manifests += "---\n";
    }
    kubectl_ok(&["apply", "-f", "-"], Some(&manifests));
    wait_until("every policy sampled and Closed", PATIENCE, || {
        let states = by_policy(&levee, "levee_circuit_state")?;
        (states.len() == DEAD + HEALTHY && states.values().all(|state| *state == 0.0)).then_some(())
    });

    let samples_before = by_policy(&levee, "levee_sample_duration_seconds_count").expect("/metrics");
    redis.drop_packets(true);
    let dropped = Instant::now();
    let bound = 3 * Duration::from_secs(1) + Duration::from_millis(300) + Duration::from_secs(1);
    let mut opened_at = std::collections::HashMap::new();
    // Watched for the bound at least (the healthy policies' interval is judged over it), and
    // until every dead policy opened or well past the bound.
    while (opened_at.len() < DEAD || dropped.elapsed() < bound)
        && dropped.elapsed() < bound + Duration::from_secs(10)
    {
        let states = by_policy(&levee, "levee_circuit_state").expect("/metrics");
        let at = dropped.elapsed();
        for (policy, state) in states {
            if policy.starts_with("dead-") && state == 2.0 {
                opened_at.entry(policy).or_insert(at);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let watched = dropped.elapsed();
    let samples_after = by_policy(&levee, "levee_sample_duration_seconds_count").expect("/metrics");
    let states = by_policy(&levee, "levee_circuit_state").expect("/metrics");
    let (first, last) = (
        opened_at.values().min().copied(),
        opened_at.values().max().copied(),
    );
    let fewest_healthy_samples = (0..HEALTHY)
        .map(|i| {
            let name = format!("healthy-{i}");
            assert_eq!(states.get(&name), Some(&0.0), "{name} stays Closed");
            let count = |samples: &std::collections::HashMap<String, f64>| {
                *samples
                    .get(&name)
                    .unwrap_or_else(|| panic!("{name}'s sample count"))
            };
            count(&samples_after) - count(&samples_before)
        })
        .fold(f64::INFINITY, f64::min);
    eprintln!(
        "figure: packets dropped -> {} of {DEAD} policies Open (onSampleFailure after 3 of 1 s, 300 ms timeout), the first after {first:?}, the last after {last:?}; the healthy policies sampled at least {fewest_healthy_samples} times in {watched:?}",
        opened_at.len()
    );
    assert_eq!(opened_at.len(), DEAD, "every policy on the dead Redis opened");
    assert!(
        last.expect("200 opened") <= bound,
        "the last opened after {last:?}, past {bound:?}"
    );
    // An interval of 1 s: a sample a second, but for the tick in progress at either end.
    let due = watched.as_secs_f64().floor() - 1.0;
    assert!(
        fewest_healthy_samples >= due,
        "a healthy policy sampled {fewest_healthy_samples} times in {watched:?}"
    );
    redis.drop_packets(false);
}
