//! levee as users run it: its own image as three pods sharing the policies in a kind cluster
//! (`e2e/scripts/kind.sh` installs the chart with `leaderElection.ownership=shards` first),
//! producers that are real containers with a real readiness probe and the `levee.dev/accepting`
//! gate, workers scaled by the HPA through the aggregator and the real Service in front of levee's
//! pods. One test in phases, since it drives one cluster-wide install: a burst holds the producers
//! back (they leave their Service's EndpointSlice) and scales the workers; the pod that owns the
//! policy is deleted and the others take it over without releasing anyone;
//! `helm upgrade` keeps the certificate and the circuit; the drain lets everything go; a tenant's
//! hostile "Redis" restarts no levee pod; deleting
//! the policies and `helm uninstall` leave every producer accepting and nothing of levee behind.
//!
//! Ignored unless asked for: `e2e/scripts/kind.sh` runs it with `--ignored` against its cluster.

use levee_e2e::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NS: &str = "smoke";
const PATIENCE: Duration = Duration::from_secs(120);
const RELEASE_NS: &str = "levee-system";

/// The test images `kind.sh up` loaded into the node (`.cache/kind/images`: role=image).
fn images() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join(".cache/kind/images"))
        .expect(".cache/kind/images: run this through e2e/scripts/kind.sh");
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(role, image)| (role.to_string(), image.to_string()))
        .collect()
}

/// Redis, the producer `api` (2 pods), the worker (consuming nothing: the test drains) and the
/// policy, from e2e/kind/smoke.yaml with the loaded images.
fn apply_workloads() {
    let images = images();
    let text = std::fs::read_to_string(repo_root().join("e2e/kind/smoke.yaml"))
        .unwrap()
        .replace("REDIS_IMAGE", &images["redis"])
        .replace("PRODUCER_IMAGE", &images["producer"])
        .replace("WORKER_IMAGE", &images["worker"])
        .replace("{name: RATE, value: \"5\"}", "{name: RATE, value: \"0\"}");
    kubectl_ok(&["apply", "-f", "-"], Some(&text));
}

fn redis(args: &[&str]) -> String {
    let mut all = vec!["-n", NS, "exec", "deploy/redis", "--", "redis-cli"];
    all.extend(args);
    kubectl_ok(&all, None)
}

fn burst() {
    redis(&[
        "eval",
        "for i=1,300 do redis.call('rpush','jobs','x') end return 1",
        "0",
    ]);
}

fn drain() {
    redis(&["del", "jobs"]);
}

fn status() -> Value {
    kubectl_json(&["get", "bpp", "smoke", "-n", NS])["status"].clone()
}

fn wait_state(state: &str) -> Value {
    wait_until(&format!("the circuit is {state}"), PATIENCE, || {
        let status = status();
        (status["state"] == state).then_some(status)
    })
}

/// `(pod, levee.dev/accepting condition)` of the live producer pods.
fn producers() -> Vec<(String, String)> {
    let pods = kubectl_json(&["get", "pods", "-n", NS, "-l", "app=api"]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            (
                pod["metadata"]["name"].as_str().unwrap().to_string(),
                pod_condition(pod, "levee.dev/accepting"),
            )
        })
        .collect()
}

/// The ready flags of the producers' Service endpoints.
fn endpoints_ready() -> Vec<bool> {
    let slices = kubectl_json(&[
        "get",
        "endpointslices",
        "-n",
        NS,
        "-l",
        "kubernetes.io/service-name=api",
    ]);
    slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|endpoint| endpoint["conditions"]["ready"] == true)
        .collect()
}

fn wait_producers(accepting: bool) {
    let want = if accepting { "True" } else { "False" };
    wait_until(&format!("2 producers accepting={accepting}"), PATIENCE, || {
        let pods = producers();
        (pods.len() == 2 && pods.iter().all(|(_, a)| a == want)).then_some(())
    });
    wait_until(
        &format!("the Service's endpoints ready={accepting}"),
        PATIENCE,
        || {
            let ready = endpoints_ready();
            let expected = if accepting {
                ready.len() == 2 && ready.iter().all(|r| *r)
            } else {
                ready.iter().all(|r| !r)
            };
            expected.then_some(())
        },
    );
}

/// Polls `while_running` until it returns, asserting every 200 ms that the producers stay held.
fn producers_stay_held_while<T>(what: &str, while_running: impl FnOnce() -> T + Send) -> T
where
    T: Send,
{
    std::thread::scope(|scope| {
        let running = scope.spawn(while_running);
        while !running.is_finished() {
            let pods = producers();
            assert!(
                pods.iter().all(|(_, accepting)| accepting == "False"),
                "a producer was released during {what}: {pods:?}"
            );
            assert!(
                endpoints_ready().iter().all(|ready| !ready),
                "a producer rejoined its Service during {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        running.join().unwrap()
    })
}

fn worker_replicas() -> i64 {
    kubectl_json(&["get", "deployment", "worker", "-n", NS])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(0)
}

/// The levee pods that reported `reason` about the smoke policy (events.k8s.io
/// `reportingInstance`, the pod name).
fn reporters(reason: &str) -> Vec<String> {
    let events = kubectl_json(&["get", "events.events.k8s.io", "-n", NS]);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| {
            event["reason"] == reason
                && event["regarding"]["kind"] == "BackpressurePolicy"
                && event["regarding"]["name"] == "smoke"
        })
        .filter_map(|event| event["reportingInstance"].as_str().map(str::to_string))
        .collect()
}

fn tls_secret_ca() -> String {
    kubectl_json(&["get", "secret", "levee-tls", "-n", RELEASE_NS])["data"]["ca.crt"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_api_service_available() {
    kubectl_ok(
        &[
            "wait",
            "--for",
            "condition=Available",
            "apiservice/v1beta1.external.metrics.k8s.io",
            "--timeout=120s",
        ],
        None,
    );
}

/// Each levee pod's name, restart count and last termination reason.
fn levee_restarts() -> Vec<(String, i64, String)> {
    let pods = kubectl_json(&[
        "get",
        "pods",
        "-n",
        RELEASE_NS,
        "-l",
        "app.kubernetes.io/name=levee",
    ]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            let status = &pod["status"]["containerStatuses"][0];
            (
                pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                status["restartCount"].as_i64().unwrap_or(-1),
                status["lastState"]["terminated"]["reason"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            )
        })
        .collect()
}

/// The namespace `hostile`: a busybox pod (the producer image) whose `nc` answers every
/// connection on 6379 with `$4000000000` and then zeros without end, its Service, and a policy
/// naming it with the longest timeout a policy may have.
fn hostile_redis(busybox_image: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: hostile}}
---
apiVersion: v1
kind: Pod
metadata: {{name: fake-redis, namespace: hostile, labels: {{app: fake-redis}}}}
spec:
  containers:
    - name: fake
      image: {busybox_image}
      command: ["/bin/sh", "-c", "while true; do (printf '$4000000000\r\n'; cat /dev/zero) | nc -l -p 6379; done"]
      resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: fake-redis, namespace: hostile}}
spec:
  selector: {{app: fake-redis}}
  ports: [{{port: 6379}}]
---
apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: hostile, namespace: hostile}}
spec:
  redis: {{url: "redis://fake-redis.hostile.svc:6379/0", timeout: 10s}}
  queues: [{{name: q, type: list, key: q}}]
  sampleInterval: 1s
  thresholds: {{warning: 50, critical: 100, recovery: 20}}
"#
    )
}

fn api_service() -> Value {
    kubectl_json(&["get", "apiservice", "v1beta1.external.metrics.k8s.io"])
}

#[test]
#[ignore = "needs the kind cluster of e2e/scripts/kind.sh, which runs it"]
fn levee_as_pods_in_kind() {
    wait_api_service_available();
    apply_workloads();
    wait_until("redis is ready", PATIENCE, || {
        kubectl(
            &["-n", NS, "exec", "deploy/redis", "--", "redis-cli", "ping"],
            None,
        )
        .status
        .success()
        .then_some(())
    });
    wait_state("Closed");
    wait_producers(true);

    // A burst: the circuit opens, the producers leave their Service, the HPA scales the workers
    // on levee_pending through the aggregator and levee's Service.
    burst();
    let opened = wait_state("Open");
    wait_producers(false);
    wait_until("the HPA scales the workers up", PATIENCE, || {
        (worker_replicas() > 1).then_some(())
    });
    eprintln!(
        "kind: Open, producers out of their Service, workers at {}",
        worker_replicas()
    );

    // The pod that owns the policy deleted: it gives up its ring Lease as it stops, the other two
    // take the policy over, the Deployment's new pod joins the ring, and nobody is released.
    let opened_by = wait_until("the CircuitOpened event", PATIENCE, || {
        let by = reporters("CircuitOpened");
        (!by.is_empty()).then_some(by)
    });
    assert_eq!(opened_by.len(), 1, "opened by one pod: {opened_by:?}");
    let owner = opened_by[0].clone();
    assert!(
        ring_holders(RELEASE_NS, "levee").contains(&owner),
        "{owner} holds a ring Lease"
    );
    let started = Instant::now();
    let (gone, rejoined) = producers_stay_held_while("the owner's handover", || {
        kubectl_ok(&["delete", "pod", &owner, "-n", RELEASE_NS, "--wait=false"], None);
        let gone = wait_until("the owner's ring Lease gone", PATIENCE, || {
            (!ring_holders(RELEASE_NS, "levee").contains(&owner)).then(|| started.elapsed())
        });
        let rejoined = wait_until("three ring Leases again", PATIENCE, || {
            (ring_holders(RELEASE_NS, "levee").len() == 3).then(|| started.elapsed())
        });
        // Watch the producers a little longer: the new owner must not release them either.
        std::thread::sleep(Duration::from_secs(3));
        (gone, rejoined)
    });
    eprintln!(
        "figure: the owner pod deleted -> its ring Lease gone after {gone:?}, the new pod in the ring after {rejoined:?}"
    );
    assert!(
        gone < Duration::from_secs(15),
        "the owner gives its Lease up as it stops, within the 15 s lease"
    );

    // helm upgrade: the certificate and the circuit survive; producers are not flapped.
    let ca = tls_secret_ca();
    let ca_bundle = api_service()["spec"]["caBundle"].clone();
    producers_stay_held_while("helm upgrade", || {
        let output = helm(&[
            "upgrade",
            "levee",
            "charts/levee",
            "-n",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            "statusHeartbeat=20s",
            "--wait",
            "--timeout",
            "3m",
        ]);
        assert!(
            output.status.success(),
            "helm upgrade: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        kubectl_ok(
            &[
                "-n",
                RELEASE_NS,
                "rollout",
                "status",
                "deployment/levee",
                "--timeout=180s",
            ],
            None,
        );
    });
    assert_eq!(tls_secret_ca(), ca, "helm upgrade keeps the CA");
    assert_eq!(
        api_service()["spec"]["caBundle"],
        ca_bundle,
        "and the APIService's caBundle"
    );
    wait_api_service_available();
    let after = status();
    assert_eq!(after["state"], "Open");
    assert_eq!(
        after["openedSince"], opened["openedSince"],
        "the circuit resumed, not reopened"
    );
    assert_eq!(
        after["transitions"], opened["transitions"],
        "no transition across the upgrade"
    );

    // The drain: everything comes back, the workers scale down; the policy closed by a replica
    // other than the deleted owner.
    drain();
    wait_state("Closed");
    wait_producers(true);
    let closed_by = reporters("CircuitClosed");
    assert!(
        !closed_by.is_empty() && !closed_by.contains(&owner),
        "closed by {closed_by:?}, not by a pod that took over from {owner}"
    );
    wait_until("the HPA scales the workers down", PATIENCE, || {
        (worker_replicas() == 1).then_some(())
    });

    // A tenant's hostile "Redis": a pod in another namespace answering every connection with a
    // bulk string of 4 GB that never ends, and a policy there naming it with the longest timeout.
    // Before replies were bounded both replicas were OOMKilled within 10 s; now they never
    // restart, the APIService stays Available, and the smoke policy keeps sampling.
    let restarts_before = levee_restarts();
    kubectl_ok(&["apply", "-f", "-"], Some(&hostile_redis(&images()["producer"])));
    let hostile_status = || kubectl_json(&["get", "bpp", "hostile", "-n", "hostile"])["status"].clone();
    let started = Instant::now();
    let refused = loop {
        let seen = hostile_status();
        let error = seen["queues"][0]["error"].as_str().unwrap_or_default();
        if error.contains("larger than") {
            break error.to_string();
        }
        let pod = kubectl(&["get", "pod", "fake-redis", "-n", "hostile", "-o", "json"], None);
        assert!(
            started.elapsed() < PATIENCE,
            "the hostile Redis's reply was never refused: status {seen}; pod {}",
            String::from_utf8_lossy(&pod.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let sampled_before = status()["lastSampleTime"].clone();
    std::thread::sleep(Duration::from_secs(45));
    let restarts_after = levee_restarts();
    eprintln!(
        "figure: kind, 45 s against a hostile Redis: {refused:?}; levee pods {restarts_before:?} -> {restarts_after:?}"
    );
    assert_eq!(
        restarts_after, restarts_before,
        "no levee pod restarted (nor was OOMKilled)"
    );
    wait_api_service_available();
    assert_ne!(
        status()["lastSampleTime"],
        sampled_before,
        "the smoke policy kept sampling"
    );
    wait_state("Closed");
    kubectl_ok(&["delete", "namespace", "hostile", "--wait=false"], None);

    // Deleting the policies while Open, then helm uninstall: every producer accepting, nothing
    // of levee left.
    burst();
    wait_state("Open");
    wait_producers(false);
    kubectl_ok(
        &[
            "delete",
            "bpp",
            "--all",
            "-n",
            NS,
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    );
    wait_producers(true);
    let output = helm(&[
        "uninstall",
        "levee",
        "-n",
        RELEASE_NS,
        "--wait",
        "--timeout",
        "3m",
    ]);
    assert!(
        output.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let labelled = kubectl_json(&["get", "pods", "-n", NS, "-l", "levee.dev/policy"]);
    assert_eq!(
        labelled["items"],
        serde_json::json!([]),
        "no producer keeps levee's label"
    );
    wait_until("levee's pods are gone", PATIENCE, || {
        let pods = kubectl_json(&["get", "pods", "-n", RELEASE_NS]);
        (pods["items"] == serde_json::json!([])).then_some(())
    });
    // The ring Leases go with their Pods (owner references), the garbage collector deleting
    // whatever a stopping pod could no longer delete itself once its Role was gone.
    let mut left = Vec::new();
    let emptied = Instant::now();
    while emptied.elapsed() < PATIENCE {
        left = kubectl_ok(
            &[
                "get",
                "all,lease,secret,configmap,serviceaccount,role,rolebinding,networkpolicy,poddisruptionbudget",
                "-n",
                RELEASE_NS,
                "-o",
                "name",
            ],
            None,
        )
        .lines()
        .filter(|name| !name.ends_with("/kube-root-ca.crt") && !name.ends_with("/default"))
        .map(str::to_string)
        .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(left.is_empty(), "left in {RELEASE_NS}: {left:?}");
    eprintln!(
        "figure: helm uninstall -> nothing of levee left in {RELEASE_NS} {:?} after its pods were gone",
        emptied.elapsed()
    );
    let cluster_wide = kubectl_ok(
        &[
            "get",
            "apiservice,clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            "app.kubernetes.io/instance=levee",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(
        cluster_wide.trim(),
        "",
        "cluster-wide objects left: {cluster_wide}"
    );
    let in_kube_system = kubectl_ok(
        &[
            "get",
            "rolebinding",
            "-n",
            "kube-system",
            "-l",
            "app.kubernetes.io/instance=levee",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(in_kube_system.trim(), "", "left in kube-system: {in_kube_system}");
    assert!(
        !kubectl(&["get", "apiservice", "v1beta1.external.metrics.k8s.io"], None)
            .status
            .success(),
        "the APIService is gone"
    );
    wait_producers(true);
}
