//! The external metrics API through kube-apiserver's aggregation layer: discovery makes the
//! APIService Available, `kubectl get --raw` returns the live backlog, the HPA levee creates for
//! `spec.scaleTarget` scales the workers (and goes away with the field), a request that skips the aggregator is refused, and a vanished Redis
//! turns into 503 while the HPA keeps its replicas.
//!
//! One test: an APIService is cluster-wide, so it must not run twice at once.

use levee_e2e::redis::{RedisServer, TlsFiles};
use levee_e2e::*;
use serde_json::Value;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// Removes the APIService when the test ends, however it ends.
struct ApiServiceGuard;

impl Drop for ApiServiceGuard {
    fn drop(&mut self) {
        let _ = kubectl(
            &[
                "delete",
                "apiservice",
                "v1beta1.external.metrics.k8s.io",
                "--ignore-not-found",
            ],
            None,
        );
    }
}

fn raw(path: &str) -> Result<Value, String> {
    let output = kubectl(&["get", "--raw", path], None);
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn worker_replicas(namespace: &str) -> i64 {
    kubectl_json(&["get", "deployment", "worker", "-n", namespace])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn the_hpa_scales_workers_on_levee_pending_through_the_aggregator() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-metrics");
    let ns = namespace.name.clone();
    let mut redis = RedisServer::start();
    let worker = std::fs::read_to_string(repo_root().join("examples/worker.yaml")).unwrap();
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&worker.replace("namespace: jobs", &format!("namespace: {ns}"))),
    );
    let policy = format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: scale, namespace: {ns}}}
spec:
  redis: {{url: '{url}'}}
  queues: [{{name: jobs, type: list, key: jobs}}]
  sampleInterval: 500ms
  thresholds: {{warning: 5000, critical: 9000, recovery: 100}}
  scaleTarget: {{kind: Deployment, name: worker, minReplicas: 1, maxReplicas: 10, pendingPerReplica: 200}}
",
        url = redis.url()
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&policy));

    let service = "levee-metrics";
    let tls = TlsFiles::generate_for(&format!("DNS:{service}.{ns}.svc,DNS:localhost,IP:127.0.0.1"));
    let (cert, key) = (tls.path("server.crt"), tls.path("server.key"));
    let levee = Levee::start(
        &ns,
        &[
            "--leader-elect=false",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ],
    );
    let ca = std::fs::read(tls.path("ca.crt")).unwrap();
    let _guard = ApiServiceGuard;
    // The APIService users apply (deploy/), pointed at this test's Service and CA.
    let manifest = std::fs::read_to_string(repo_root().join("deploy/metrics-apiservice.yaml")).unwrap();
    let mut apiservice: Value = serde_yaml::Deserializer::from_str(&manifest)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .find(|document: &Value| document["kind"] == "APIService")
        .unwrap();
    apiservice["spec"]["service"] =
        serde_json::json!({"name": service, "namespace": ns, "port": levee.api_port});
    apiservice["spec"]["caBundle"] = base64(&ca).into();
    let objects = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service, "namespace": ns},
                // No kube-proxy here: the aggregator dials an ExternalName Service's name directly.
                "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": levee.api_port}]}
            },
            apiservice,
        ]
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&objects.to_string()));
    wait_until("APIService Available", PATIENCE, || {
        let apiservice = kubectl_json(&["get", "apiservice", "v1beta1.external.metrics.k8s.io"]);
        let available = apiservice["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Available"))
            .is_some_and(|c| c["status"] == "True");
        available.then_some(())
    });

    let jobs: Vec<String> = (0..1200).map(|i| i.to_string()).collect();
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(jobs.iter().map(String::as_str));
    redis.cli(&push);
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dscale"
    );
    let list = wait_until("levee_pending = 1200 through the aggregator", PATIENCE, || {
        raw(&path).ok().filter(|list| list["items"][0]["value"] == "1200")
    });
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["items"][0]["metricLabels"]["policy"], "scale");

    let hpa = wait_until("levee creates the HPA for spec.scaleTarget", PATIENCE, || {
        let output = kubectl(&["get", "hpa", "levee-scale", "-n", &ns, "-o", "json"], None);
        serde_json::from_slice::<Value>(&output.stdout).ok()
    });
    assert_eq!(
        hpa["metadata"]["ownerReferences"][0]["kind"],
        "BackpressurePolicy"
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"],
        "200"
    );
    wait_until("the HPA scales worker to ceil(1200 / 200) = 6", PATIENCE, || {
        (worker_replicas(&ns) == 6).then_some(())
    });

    // A request that skips the aggregator: no client certificate, a forged identity.
    let forged = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "X-Remote-User: system:admin",
        ])
        .args(["-H", "X-Remote-Group: system:masters"])
        .arg(format!(
            "https://127.0.0.1:{}{}",
            levee.api_port,
            path.replace('%', "%25").replace("%253D", "%3D")
        ))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "401");

    redis.stop();
    let refused = wait_until("503 once the samples fail", PATIENCE, || raw(&path).err());
    assert!(
        refused.contains("ServiceUnavailable") || refused.contains("503"),
        "{refused}"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        worker_replicas(&ns),
        6,
        "the HPA keeps its replicas while the metric is unavailable"
    );
    redis.restart();
    redis.cli(&["RPUSH", "jobs", "a"]);
    wait_until("the metric comes back by itself", PATIENCE, || {
        raw(&path).ok().filter(|l| l["items"][0]["value"] == "1")
    });
    wait_until(
        "the HPA scales worker back down to 1 after the drain",
        PATIENCE,
        || (worker_replicas(&ns) == 1).then_some(()),
    );
}

fn base64(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}
