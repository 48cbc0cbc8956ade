//! The external metrics API through kube-apiserver's aggregation layer: discovery makes the
//! APIService Available, `kubectl get --raw` returns the live backlog, the HPA levee creates for
//! `spec.scaleTarget` scales the workers (and goes away with the field), a request that skips the aggregator is refused, and a vanished Redis
//! turns into 503 while the HPA keeps its replicas.
//!
//! One test: an APIService is cluster-wide, so it must not run twice at once.

use levee_e2e::fixture::PolicyYaml;
use levee_e2e::redis::RedisServer;
use levee_e2e::*;
use serde_json::Value;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

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
    PolicyYaml::new("scale", &ns, format!("{{url: '{}'}}", redis.url()))
        .set("queues", "[{name: jobs, type: list, key: jobs}]")
        .set("sampleInterval", "500ms")
        .set("thresholds", "{warning: 5000, critical: 9000, recovery: 100}")
        .set(
            "scaleTarget",
            "{kind: Deployment, name: worker, minReplicas: 1, maxReplicas: 10, pendingPerReplica: 200}",
        )
        .without("targets")
        .apply();

    // The chart's own metrics API objects, levee serving the chart's certificate.
    let served = ServedMetricsApi::start(&ns, &[], &[]);
    let levee = &served.levee;

    redis.push_jobs("jobs", 1200);
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dscale"
    );
    let list = wait_until("levee_pending = 1200 through the aggregator", PATIENCE, || {
        raw_get(&path)
            .ok()
            .filter(|list| list["items"][0]["value"] == "1200")
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
        (deployment_replicas(&ns, "worker") == 6).then_some(())
    });
    // The HPA controller asks as its own ServiceAccount, authorized by its bootstrap ClusterRole
    // through levee's SubjectAccessReview, as on a real cluster.
    let log = levee.log();
    assert!(
        log.contains("user=system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
        "no request from the HPA controller's ServiceAccount in levee's log"
    );

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
    assert!(
        levee
            .metric(r#"levee_metrics_api_requests_total{code="401"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        levee
            .metric(r#"levee_metrics_api_requests_total{code="200"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        levee
            .metric("levee_metrics_api_request_duration_seconds_count")
            .expect("/metrics answers and exports the series")
            >= 2.0
    );
    // The allocator's count of levee's heap, read at the start and every 10 s after: the gauge
    // is 0 until the first reading, and a running process's heap never is.
    let heap = levee
        .metric("levee_heap_allocated_bytes")
        .expect("/metrics exports the heap's size");
    assert!(heap > 0.0, "levee_heap_allocated_bytes {heap}");

    redis.stop();
    let refused = wait_until("503 once the samples fail", PATIENCE, || raw_get(&path).err());
    assert!(
        refused.contains("ServiceUnavailable") || refused.contains("503"),
        "{refused}"
    );
    assert!(
        levee
            .metric(r#"levee_metrics_api_requests_total{code="503"}"#)
            .unwrap_or(0.0)
            >= 1.0
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        deployment_replicas(&ns, "worker"),
        6,
        "the HPA keeps its replicas while the metric is unavailable"
    );
    redis.restart();
    redis.cli(&["RPUSH", "jobs", "a"]);
    wait_until("the metric comes back by itself", PATIENCE, || {
        raw_get(&path).ok().filter(|l| l["items"][0]["value"] == "1")
    });
    wait_until(
        "the HPA scales worker back down to 1 after the drain",
        PATIENCE,
        || (deployment_replicas(&ns, "worker") == 1).then_some(()),
    );
}
