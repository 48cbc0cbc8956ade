//! levee beside real KEDA (built from its Go module by `e2e/scripts/keda.sh`), on the local
//! control plane. A ScaledObject whose `external-push` trigger names levee's external scaler
//! scales a Deployment 0 -> N on a burst and back to 0 after the drain; the push wakes it long
//! before KEDA's next poll could have. KEDA's operator calls levee over mutual TLS.
//!
//! One test at a time: KEDA's adapter owns the cluster's one external metrics APIService while
//! it runs.

use levee_e2e::fixture::PolicyYaml;
use levee_e2e::keda::{Keda, external_scaler_protos};
use levee_e2e::redis::{RedisServer, free_port};
use levee_e2e::*;
use std::time::{Duration, Instant};

fn replicas(namespace: &str) -> i64 {
    kubectl_json(&["get", "deployment", "worker", "-n", namespace])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(0)
}

fn scaled_object(namespace: &str, scaler_port: u16, polling_seconds: u32) -> String {
    format!(
        r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: worker, namespace: {namespace}}}
spec:
  scaleTargetRef: {{name: worker}}
  pollingInterval: {polling_seconds}
  cooldownPeriod: 5
  minReplicaCount: 0
  maxReplicaCount: 5
  triggers:
    - type: external-push
      metadata:
        scalerAddress: "127.0.0.1:{scaler_port}"
        policy: scale
        targetValue: "100"
      authenticationRef: {{name: levee-scaler}}
"#
    )
}

#[test]
fn the_vendored_proto_is_the_one_in_kedas_module() {
    let (ours, theirs) = external_scaler_protos();
    assert_eq!(
        ours, theirs,
        "proto/externalscaler.proto differs from KEDA's: copy it again"
    );
}

#[test]
fn a_scaled_object_on_levees_scaler_wakes_on_the_push_scales_out_and_back_to_zero() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-keda");
    let ns = namespace.name.clone();
    let keda = Keda::start();
    let _guard = ApiServiceGuard;
    keda.serve_external_metrics();
    let redis = RedisServer::start();
    let worker = std::fs::read_to_string(repo_root().join("examples/worker.yaml")).unwrap();
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&worker.replace("namespace: jobs", &format!("namespace: {ns}"))),
    );
    PolicyYaml::new("scale", &ns, format!("{{url: '{}'}}", redis.url()))
        .set("queues", "[{name: jobs, type: list, key: jobs}]")
        .set("sampleInterval", "500ms")
        .set("thresholds", "{warning: 5000, critical: 9000, recovery: 100}")
        .without("targets")
        .apply();
    let scaler_port = free_port();
    let flags = keda.levee_flags(scaler_port);
    let levee = Levee::start(&ns, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    keda.trigger_authentication(&ns);

    // KEDA polls every 10 minutes: only a push can wake the workload before that.
    kubectl_ok(&["apply", "-f", "-"], Some(&scaled_object(&ns, scaler_port, 600)));
    wait_until(
        "KEDA scales the idle workers to zero",
        Duration::from_secs(90),
        || (replicas(&ns) == 0).then_some(()),
    );
    wait_until("levee serves KEDA's push stream", Duration::from_secs(60), || {
        (levee.metric("levee_external_scaler_streams") >= 1.0).then_some(())
    });
    let pushed_at = Instant::now();
    let jobs: Vec<String> = (0..450).map(|i| i.to_string()).collect();
    let mut rpush = vec!["RPUSH", "jobs"];
    rpush.extend(jobs.iter().map(String::as_str));
    redis.cli(&rpush);
    wait_until("the push wakes the workers", Duration::from_secs(60), || {
        (replicas(&ns) >= 1).then_some(())
    });
    let woke = pushed_at.elapsed();
    eprintln!("keda: burst -> first worker in {woke:?} (KEDA's next poll was 10 minutes away)");
    // KEDA's HPA reads levee's figure through KEDA's adapter: 450 pending / 100 a worker.
    wait_until("KEDA's HPA scales out to 5", Duration::from_secs(120), || {
        (replicas(&ns) == 5).then_some(())
    });
    let gets = levee.metric("levee_external_scaler_requests_total{code=\"OK\",rpc=\"GetMetrics\"}");
    assert!(gets >= 1.0, "KEDA asked levee for the figure ({gets} GetMetrics)");
    assert_eq!(
        levee.metric("levee_external_scaler_connections_closed_total{reason=\"limit\"}"),
        0.0
    );

    // Drained: a pushed "inactive" is ignored by KEDA, its polls scale to zero after the
    // cooldown, so poll often now.
    redis.cli(&["DEL", "jobs"]);
    kubectl_ok(&["apply", "-f", "-"], Some(&scaled_object(&ns, scaler_port, 2)));
    wait_until("back to zero after the drain", Duration::from_secs(120), || {
        (replicas(&ns) == 0).then_some(())
    });
    let active = kubectl_json(&["get", "scaledobject", "worker", "-n", &ns]);
    let condition = active["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Active").cloned())
        .unwrap_or_default();
    assert_eq!(condition["status"], "False", "{condition}");
    assert!(
        !keda.logs().contains("error running StreamIsActive"),
        "the push stream never failed: {}",
        keda.logs()
    );
}
