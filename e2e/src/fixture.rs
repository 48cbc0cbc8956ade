//! A namespace with the example producer (2 pods behind a readiness gate) and worker, a Redis,
//! and the helpers the controller suites share: policies, bursts, waits on state and on pods.

use crate::redis::RedisServer;
use crate::*;
use serde_json::Value;
use std::time::Duration;

pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Fixture {
    pub namespace: TestNamespace,
    pub redis: RedisServer,
}

impl Fixture {
    /// A namespace with the example producer (2 pods, readiness gate) and worker, and a Redis.
    pub fn create() -> Self {
        install_crd();
        let namespace = TestNamespace::create("levee-e2e-ctl");
        for file in ["examples/producer.yaml", "examples/worker.yaml"] {
            let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
            let text = text.replace("namespace: jobs", &format!("namespace: {}", namespace.name));
            kubectl_ok(&["apply", "-f", "-"], Some(&text));
        }
        let fixture = Self {
            namespace,
            redis: RedisServer::start(),
        };
        wait_until("2 api pods", PATIENCE, || {
            (fixture.api_pods().len() == 2).then_some(())
        });
        fixture
    }

    pub fn ns(&self) -> &str {
        &self.namespace.name
    }

    pub fn apply_policy(&self, name: &str, extra: &str) {
        self.apply_policy_yaml(name, "2s", extra);
    }

    /// A policy whose circuit stays Open at least `dwell`.
    pub fn apply_policy_with_dwell(&self, name: &str, dwell: &str) {
        self.apply_policy_yaml(name, dwell, "");
    }

    pub fn apply_policy_yaml(&self, name: &str, dwell: &str, extra: &str) {
        let yaml = format!(
            "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  redis: {{url: '{url}', timeout: 300ms}}
  queues:
    - {{name: events, type: bullmq, key: events}}
    - {{name: retries, type: list, key: retries}}
  sampleInterval: 200ms
  thresholds: {{warning: 20, critical: 50, recovery: 5}}
  circuit: {{minOpenDuration: {dwell}}}
  targets: [{{kind: Deployment, name: api}}]
{extra}",
            ns = self.ns(),
            url = self.redis.url()
        );
        kubectl_ok(&["apply", "-f", "-"], Some(&yaml));
    }

    pub fn burst(&self) {
        let jobs: Vec<String> = (0..30).map(|i| format!("job-{i}")).collect();
        let mut args = vec!["RPUSH", "bull:events:wait"];
        args.extend(jobs.iter().map(String::as_str));
        self.redis.cli(&args);
        args[1] = "retries";
        self.redis.cli(&args);
    }

    pub fn drain(&self) {
        self.redis.cli(&["DEL", "bull:events:wait", "retries"]);
    }

    pub fn status(&self, name: &str) -> Value {
        kubectl_json(&["get", "bpp", name, "-n", self.ns()])["status"].clone()
    }

    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        wait_until(&format!("{name} state {state}"), PATIENCE, || {
            let status = self.status(name);
            (status["state"] == state).then_some(status)
        })
    }

    /// `(pod, condition levee.dev/accepting, annotation levee.dev/accepting, Ready)` per api pod.
    pub fn api_pods(&self) -> Vec<(String, String, String, String)> {
        let pods = kubectl_json(&["get", "pods", "-n", self.ns(), "-l", "app=api"]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
            .map(|pod| {
                let annotation = pod["metadata"]["annotations"]["levee.dev/accepting"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string();
                (
                    pod["metadata"]["name"].as_str().unwrap().to_string(),
                    pod_condition(pod, "levee.dev/accepting"),
                    annotation,
                    pod_condition(pod, "Ready"),
                )
            })
            .collect()
    }

    /// Waits until every api pod (at least `count`) says `accepting` everywhere.
    pub fn wait_pods_accepting(&self, accepting: bool, count: usize) {
        let (condition, annotation, ready) = if accepting {
            ("True", "true", "True")
        } else {
            ("False", "false", "False")
        };
        wait_until(
            &format!("{count} api pods with accepting={accepting}"),
            PATIENCE,
            || {
                let pods = self.api_pods();
                let all = pods
                    .iter()
                    .all(|(_, c, a, r)| c == condition && a == annotation && r == ready);
                (pods.len() >= count && all).then_some(())
            },
        );
    }

    pub fn events(&self, reason: &str) -> Vec<String> {
        let events = kubectl_json(&["get", "events.events.k8s.io", "-n", self.ns()]);
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["note"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// What a failing test saw: every policy's status and the namespace's events.
    pub fn report(&self) {
        let policies = kubectl(&["get", "bpp", "-n", self.ns(), "-o", "yaml"], None);
        eprintln!(
            "---- policies ----\n{}",
            String::from_utf8_lossy(&policies.stdout)
        );
        let events = kubectl(&["get", "events", "-n", self.ns()], None);
        eprintln!("---- events ----\n{}", String::from_utf8_lossy(&events.stdout));
    }

    pub fn condition(&self, policy: &str, type_: &str) -> Value {
        let status = self.status(policy);
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
    }
}
