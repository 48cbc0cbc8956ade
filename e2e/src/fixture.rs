//! A namespace with the example producer (2 pods behind a readiness gate) and worker, a Redis,
//! and the helpers the controller suites share: bursts, waits on state and on pods. Also the
//! objects the suites and benches apply and patch: policies ([`PolicyYaml`]), producer
//! Deployments and merge patches, built here only.

use crate::redis::RedisServer;
use crate::*;
use serde_json::{Value, json};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

    /// The policy `name` on this namespace's Redis: queues `events` (BullMQ) and `retries`
    /// (list), Open at least 2 s, and the rest of [`PolicyYaml::new`].
    pub fn policy(&self, name: &str) -> PolicyYaml {
        PolicyYaml::new(
            name,
            self.ns(),
            format!("{{url: '{}', timeout: 300ms}}", self.redis.url()),
        )
        .set(
            "queues",
            "[{name: events, type: bullmq, key: events}, {name: retries, type: list, key: retries}]",
        )
        .set("circuit", "{minOpenDuration: 2s}")
    }

    /// Applies [`Self::policy`] as it is.
    pub fn apply_policy(&self, name: &str) {
        self.policy(name).apply();
    }

    /// Merge-patches the policy `name` in this namespace.
    pub fn patch_policy(&self, name: &str, patch: &Value) {
        merge_patch_ok("bpp", name, self.ns(), patch);
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

    /// Starts recording what the producers of `policy` see, until the timeline is stopped.
    pub fn timeline(&self, policy: &str) -> Timeline {
        let stop = Arc::new(AtomicBool::new(false));
        let (namespace, policy) = (self.ns().to_string(), policy.to_string());
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                seen.extend(look(&namespace, &policy, started));
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        Timeline {
            stop,
            handle: Some(handle),
        }
    }

    pub fn condition(&self, policy: &str, type_: &str) -> Value {
        let status = self.status(policy);
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_default()
    }
}

/// One look at the producers and the policy, `at` after the timeline started.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Duration,
    /// `status.state` of the policy.
    pub state: String,
    /// `status.pending` of the policy (refreshed on the heartbeat).
    pub pending: Option<u64>,
    /// `(pod, condition levee.dev/accepting, its lastTransitionTime, annotation levee.dev/accepting)`
    /// per api pod.
    pub pods: Vec<(String, String, String, String)>,
}

impl Seen {
    /// Whether every api pod (at least one) says `accepting` in its condition and annotation.
    pub fn all_accepting(&self, accepting: bool) -> bool {
        let (condition, annotation) = if accepting {
            ("True", "true")
        } else {
            ("False", "false")
        };
        !self.pods.is_empty()
            && self
                .pods
                .iter()
                .all(|(_, c, _, a)| c == condition && a == annotation)
    }
}

/// What the producers saw, tick by tick: the api pods and the policy's status, read together
/// (one `kubectl get pods,bpp`) in a loop on a thread of its own until `stop`.
pub struct Timeline {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Seen>>>,
}

impl Timeline {
    pub fn stop(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One look at `policy` and the api pods in `namespace`; `None` when the API did not answer
/// (e.g. while it restarts).
pub fn look(namespace: &str, policy: &str, started: Instant) -> Option<Seen> {
    let output = kubectl(
        &[
            "get",
            "pods,bpp",
            "-n",
            namespace,
            "-o",
            "json",
            "--request-timeout=2s",
        ],
        None,
    );
    if !output.status.success() {
        return None;
    }
    let list: Value = serde_json::from_slice(&output.stdout).ok()?;
    let items = list["items"].as_array()?;
    let status = &items
        .iter()
        .find(|item| item["kind"] == "BackpressurePolicy" && item["metadata"]["name"] == policy)?["status"];
    let pods = items
        .iter()
        .filter(|item| item["kind"] == "Pod" && item["metadata"]["labels"]["app"] == "api")
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            let condition = pod["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "levee.dev/accepting"));
            let field = |name: &str| {
                condition
                    .and_then(|c| c[name].as_str())
                    .unwrap_or("-")
                    .to_string()
            };
            (
                pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                field("status"),
                field("lastTransitionTime"),
                pod["metadata"]["annotations"]["levee.dev/accepting"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            )
        })
        .collect();
    Some(Seen {
        at: started.elapsed(),
        state: status["state"].as_str().unwrap_or("-").to_string(),
        pending: status["pending"].as_u64(),
        pods,
    })
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
    }
}

/// A `BackpressurePolicy` manifest for `kubectl apply`: each spec field one line of flow YAML,
/// set or replaced by name, so a test shows only what it changes.
#[derive(Clone, Debug)]
pub struct PolicyYaml {
    name: String,
    namespace: String,
    spec: Vec<(&'static str, String)>,
}

impl PolicyYaml {
    /// `namespace/name` reading `redis` (a flow mapping such as `{url: '...', timeout: 300ms}`):
    /// one list queue `q` every 200 ms, thresholds 20/50/5 (warning/critical/recovery), holding
    /// back the Deployment `api`.
    pub fn new(name: &str, namespace: &str, redis: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            spec: Vec::new(),
        }
        .set("redis", redis)
        .set("queues", "[{name: q, type: list, key: q}]")
        .set("sampleInterval", "200ms")
        .set("thresholds", "{warning: 20, critical: 50, recovery: 5}")
        .set("targets", "[{kind: Deployment, name: api}]")
    }

    /// Sets `spec.<field>` to `value` (flow YAML), in place if it is there.
    pub fn set(mut self, field: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        match self.spec.iter_mut().find(|(f, _)| *f == field) {
            Some(entry) => entry.1 = value,
            None => self.spec.push((field, value)),
        }
        self
    }

    /// Leaves `spec.<field>` out, to its default (or absent).
    pub fn without(mut self, field: &str) -> Self {
        self.spec.retain(|(f, _)| *f != field);
        self
    }

    /// The manifest, one YAML document without a separator.
    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "apiVersion: levee.dev/v1alpha1\nkind: BackpressurePolicy\nmetadata: {{name: {}, namespace: {}}}\nspec:\n",
            self.name, self.namespace
        );
        for (field, value) in &self.spec {
            yaml += &format!("  {field}: {value}\n");
        }
        yaml
    }

    /// `kubectl apply`s it, failing the test if that fails.
    pub fn apply(&self) {
        kubectl_ok(&["apply", "-f", "-"], Some(&self.yaml()));
    }
}

/// `replicas` pause pods labelled `app: <name>` behind the `levee.dev/accepting` readiness gate:
/// a producer that does nothing but be held back. One YAML document, `---` after it.
pub fn producer_deployment(namespace: &str, name: &str, replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      readinessGates: [{{conditionType: levee.dev/accepting}}]
      containers: [{{name: c, image: registry.k8s.io/pause:3.10}}]
---
"
    )
}

/// The merge patch that makes `targets` (kind, name) a policy's only targets.
pub fn targets_patch(targets: &[(&str, &str)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(kind, name)| json!({"kind": kind, "name": name}))
        .collect();
    json!({"spec": {"targets": targets}})
}

fn merge_patch_args<'a>(
    resource: &'a str,
    name: &'a str,
    namespace: &'a str,
    patch: &'a str,
) -> [&'a str; 8] {
    [
        "patch",
        resource,
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        patch,
    ]
}

/// `kubectl patch <resource> <name> -n <namespace> --type=merge -p <patch>`, refused or not.
pub fn merge_patch(resource: &str, name: &str, namespace: &str, patch: &Value) -> Output {
    let patch = patch.to_string();
    kubectl(&merge_patch_args(resource, name, namespace, &patch), None)
}

/// [`merge_patch`], failing the test if it is refused.
pub fn merge_patch_ok(resource: &str, name: &str, namespace: &str, patch: &Value) -> String {
    let patch = patch.to_string();
    kubectl_ok(&merge_patch_args(resource, name, namespace, &patch), None)
}

/// [`merge_patch`] of the object's status subresource, refused or not.
pub fn merge_patch_status(resource: &str, name: &str, namespace: &str, patch: &Value) -> Output {
    let patch = patch.to_string();
    let mut args = merge_patch_args(resource, name, namespace, &patch).to_vec();
    args.insert(5, "--subresource=status");
    kubectl(&args, None)
}
