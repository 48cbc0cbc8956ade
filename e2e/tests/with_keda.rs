//! levee beside real KEDA (built from its Go module by `e2e/scripts/keda.sh`), on the local
//! control plane. A ScaledObject whose `external-push` trigger names levee's external scaler
//! scales a Deployment 0 -> N on a burst and back to 0 after the drain; the push wakes it long
//! before KEDA's next poll could have. KEDA's operator calls levee over mutual TLS.
//!
//! With forwarding on, levee owns the APIService and hands KEDA's metrics to KEDA's adapter: the
//! HPA KEDA made for its own `redis` trigger keeps scaling through levee, beside an HPA on
//! `levee_pending`; with KEDA's adapter down, levee's metrics still answer and KEDA's requests
//! get an error naming the delegate. Forwarding as the caller (levee presenting the cluster's
//! front-proxy client certificate), KEDA's adapter sees and authorizes the user who asked, never
//! levee, which then holds no read access of its own.
//!
//! The tests take turns (one APIService per cluster). Named `with_keda` so that cargo runs it
//! after the other suites: a cold KEDA build runs in the background meanwhile.

use levee_e2e::fixture::PolicyYaml;
use levee_e2e::keda::{Keda, external_scaler_protos};
use levee_e2e::redis::{RedisServer, free_port};
use levee_e2e::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time owns the APIService.
static APISERVICE: Mutex<()> = Mutex::new(());

fn replicas(namespace: &str) -> i64 {
    deployment_replicas(namespace, "worker")
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

/// The Deployment `keda-worker` (examples/worker.yaml) and KEDA's own ScaledObject for it: a
/// `redis` trigger on the list `emails` of the Redis on `port`, whose HPA asks for
/// `s0-redis-emails`.
fn keda_worker_on_emails(ns: &str, port: u16) {
    let worker = std::fs::read_to_string(repo_root().join("examples/worker.yaml")).unwrap();
    let manifest = worker
        .replace("namespace: jobs", &format!("namespace: {ns}"))
        .replace("name: worker", "name: keda-worker")
        .replace("app: worker", "app: keda-worker");
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    let scaled_object = format!(
        r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: keda-worker, namespace: {ns}}}
spec:
  scaleTargetRef: {{name: keda-worker}}
  pollingInterval: 2
  minReplicaCount: 1
  maxReplicaCount: 8
  triggers:
    - type: redis
      metadata: {{address: "127.0.0.1:{port}", listName: emails, listLength: "50"}}
"#
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&scaled_object));
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
    let _turn = APISERVICE.lock().unwrap_or_else(|e| e.into_inner());
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
        (levee.metric("levee_external_scaler_streams")? >= 1.0).then_some(())
    });
    let pushed_at = Instant::now();
    redis.push_jobs("jobs", 450);
    wait_until("the push wakes the workers", Duration::from_secs(60), || {
        (replicas(&ns) >= 1).then_some(())
    });
    let woke = pushed_at.elapsed();
    eprintln!("keda: burst -> first worker in {woke:?} (KEDA's next poll was 10 minutes away)");
    // KEDA's HPA reads levee's figure through KEDA's adapter: 450 pending / 100 a worker.
    wait_until("KEDA's HPA scales out to 5", Duration::from_secs(120), || {
        (replicas(&ns) == 5).then_some(())
    });
    let gets = levee
        .metric("levee_external_scaler_requests_total{code=\"OK\",rpc=\"GetMetrics\"}")
        .expect("/metrics answers and exports the series");
    assert!(gets >= 1.0, "KEDA asked levee for the figure ({gets} GetMetrics)");
    assert_eq!(
        levee
            .metric_sum("levee_external_scaler_connections_closed_total{reason=\"limit\"}")
            .expect("/metrics answers"),
        0.0
    );

    // Drained: a pushed "inactive" is ignored by KEDA, its polls scale to zero after the
    // cooldown, so poll often now.
    redis.cli(&["DEL", "jobs"]);
    kubectl_ok(&["apply", "-f", "-"], Some(&scaled_object(&ns, scaler_port, 2)));
    wait_until("back to zero after the drain", Duration::from_secs(120), || {
        (replicas(&ns) == 0).then_some(())
    });
    // KEDA scales the Deployment before it writes the ScaledObject's status: the Active
    // condition follows within a reconcile or two.
    let active_condition = || {
        kubectl_json(&["get", "scaledobject", "worker", "-n", &ns])["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Active").cloned())
            .unwrap_or_default()
    };
    wait_until(
        "the ScaledObject's Active condition False after the scale to zero",
        Duration::from_secs(30),
        || (active_condition()["status"] == "False").then_some(()),
    );
    let streams = levee
        .metric("levee_external_scaler_requests_total{code=\"OK\",rpc=\"StreamIsActive\"}")
        .expect("/metrics answers and exports the series");
    assert!(
        streams >= 2.0,
        "KEDA opened the push stream again after the change ({streams})"
    );
}

#[test]
fn with_forwarding_kedas_hpa_and_levees_hpa_both_scale_through_levees_apiservice() {
    let _turn = APISERVICE.lock().unwrap_or_else(|e| e.into_inner());
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-delegate");
    let ns = namespace.name.clone();
    let mut keda = Keda::start();
    let redis = RedisServer::start();
    let worker = std::fs::read_to_string(repo_root().join("examples/worker.yaml")).unwrap();
    kubectl_ok(
        &["apply", "-f", "-"],
        Some(&worker.replace("namespace: jobs", &format!("namespace: {ns}"))),
    );
    // levee's HPA on levee_pending for `worker` (queue `jobs`).
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
    keda_worker_on_emails(&ns, redis.port);

    // levee owns the APIService (the chart's objects, as in the metrics API suite) and forwards
    // what it does not serve to KEDA's adapter, asking as its own ServiceAccount (the chart's
    // delegated-metrics-reader role).
    let delegate = format!("https://127.0.0.1:{}", keda.adapter_port);
    let delegate_set = format!("metricsApi.delegate.url={delegate}");
    let rbac = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[&delegate_set],
        &["templates/rbac.yaml"],
    );
    create_levee_namespace();
    apply_objects(&rbac, &[]);
    let flags = [
        format!("--delegate-external-metrics={delegate}"),
        format!("--delegate-ca-file={}", keda.tls.path("ca.crt")),
    ];
    let served = ServedMetricsApi::start(
        &ns,
        &[&delegate_set],
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let levee = &served.levee;
    let discovery = raw_get("/apis/external.metrics.k8s.io/v1beta1").unwrap();
    let names: Vec<&str> = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"levee_pending"), "{discovery}");
    assert!(names.len() > 2, "KEDA's resources are listed too: {discovery}");

    redis.push_jobs("jobs", 1000);
    redis.push_jobs("emails", 300);
    wait_until(
        "levee's HPA scales worker to 1000 / 200 = 5",
        Duration::from_secs(120),
        || (deployment_replicas(&ns, "worker") == 5).then_some(()),
    );
    wait_until(
        "KEDA's HPA scales keda-worker to 300 / 50 = 6, through levee",
        Duration::from_secs(120),
        || (deployment_replicas(&ns, "keda-worker") == 6).then_some(()),
    );
    let forwarded = levee.log();
    assert!(
        forwarded.contains("s0-redis-emails"),
        "KEDA's metric went through levee"
    );

    // KEDA's adapter goes away: levee's metrics still answer; KEDA's get the delegate's absence.
    keda.stop_adapter();
    let ours = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dscale"
    );
    let theirs = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-redis-emails?labelSelector=scaledobject.keda.sh%2Fname%3Dkeda-worker"
    );
    let error = wait_until(
        "KEDA's metric fails without its adapter",
        Duration::from_secs(30),
        || raw_get(&theirs).err(),
    );
    assert!(
        error.contains("cannot be reached"),
        "the error names the delegate: {error}"
    );
    let list = raw_get(&ours).expect("levee's own metric still answers");
    assert_eq!(list["items"][0]["value"], "1000");
    let service = kubectl_json(&["get", "apiservice", "v1beta1.external.metrics.k8s.io"]);
    assert!(available(&service), "discovery still answers: {service}");
    redis.cli(&["DEL", "jobs"]);
    wait_until(
        "levee's HPA still scales worker down",
        Duration::from_secs(120),
        || (deployment_replicas(&ns, "worker") == 1).then_some(()),
    );
}

#[test]
fn forwarding_as_the_caller_the_delegate_sees_the_user_who_asked_and_not_levee() {
    let _turn = APISERVICE.lock().unwrap_or_else(|e| e.into_inner());
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-as-caller");
    let ns = namespace.name.clone();
    let keda = Keda::start();
    let redis = RedisServer::start();
    keda_worker_on_emails(&ns, redis.port);
    redis.push_jobs("emails", 120);

    // levee's RBAC as the chart renders it when it asks as the caller: no read access to
    // external metrics of its own (a role left by another test is taken away).
    let delegate = format!("https://127.0.0.1:{}", keda.adapter_port);
    let sets = [
        format!("metricsApi.delegate.url={delegate}"),
        "metricsApi.delegate.clientCertSecret=levee-front-proxy".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    create_levee_namespace();
    apply_objects(
        &render_chart("levee", LEVEE_NAMESPACE, &sets, &["templates/rbac.yaml"]),
        &[],
    );
    kubectl_ok(
        &[
            "delete",
            "clusterrolebinding",
            "levee-delegated-metrics-reader",
            "--ignore-not-found",
        ],
        None,
    );
    // A client certificate from a CA of levee's own, which KEDA's adapter was started trusting
    // (--requestheader-client-ca-file, beside the cluster's front-proxy CA), as a user would
    // mount it from a Secret. The cluster's own front-proxy certificate is refused: see below.
    let flags = [
        format!("--delegate-external-metrics={delegate}"),
        format!("--delegate-ca-file={}", keda.tls.path("ca.crt")),
        format!(
            "--delegate-client-cert-file={}",
            keda.tls.path("levee-delegate.crt")
        ),
        format!(
            "--delegate-client-key-file={}",
            keda.tls.path("levee-delegate.key")
        ),
    ];
    let _served = ServedMetricsApi::start(&ns, &sets, &flags.iter().map(String::as_str).collect::<Vec<_>>());

    // A user who may read external metrics in this namespace, and nothing else.
    let user = "levee-e2e-alice";
    apply_objects(
        &[
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "external-metrics-reader", "namespace": ns},
                "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}]}),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "external-metrics-reader", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "external-metrics-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
        ],
        &[],
    );
    let theirs = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/s0-redis-emails?labelSelector=scaledobject.keda.sh%2Fname%3Dkeda-worker"
    );
    let list = wait_until(
        "KEDA's metric answers the user through levee",
        Duration::from_secs(60),
        || {
            let output = kubectl(&["get", "--raw", &theirs, &format!("--as={user}")], None);
            output
                .status
                .success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap())
        },
    );
    assert_eq!(list["items"][0]["value"], "120", "{list}");
    let users = keda.audited_users("s0-redis-emails");
    assert!(
        users.iter().any(|u| u == user),
        "KEDA's adapter saw {user}: {users:?}"
    );
    assert!(
        !users.iter().any(|u| u.contains(":levee")),
        "levee never asked as itself: {users:?}"
    );
}

/// `count` `StreamIsActive` streams to levee's scaler on `port` naming policies that do not
/// exist, spread over `namespaces` made-up namespaces, with KEDA's own client certificate (what
/// 1,000 tenants' ScaledObjects naming missing policies would have KEDA open): each re-opened
/// as soon as levee ends it, until `stop`. Returns how many were opened and how many refused.
fn flood_streams(
    keda: &Keda,
    port: u16,
    count: usize,
    namespaces: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    use levee::external_scaler::proto::ScaledObjectRef;
    use levee::external_scaler::proto::external_scaler_client::ExternalScalerClient;
    use std::sync::atomic::{AtomicU64, Ordering};
    let read = |name: &str| std::fs::read(keda.tls.path(name)).unwrap();
    let (ca, cert, key) = (read("ca.crt"), read("client.crt"), read("client.key"));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &ca[..]) {
                roots.add(cert.unwrap()).unwrap();
            }
            let chain = rustls_pemfile::certs(&mut &cert[..])
                .map(Result::unwrap)
                .collect();
            let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_| {
                    let connector = connector.clone();
                    async move {
                        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                }))
                .await
                .expect("the flood connects as KEDA");
            let (opened, refused) = (
                std::sync::Arc::new(AtomicU64::new(0)),
                std::sync::Arc::new(AtomicU64::new(0)),
            );
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let mut client = ExternalScalerClient::new(channel.clone());
                    let (stop, opened, refused) = (stop.clone(), opened.clone(), refused.clone());
                    tokio::spawn(async move {
                        let trigger = ScaledObjectRef {
                            name: format!("so-{i}"),
                            namespace: format!("tenant-{}", i % namespaces),
                            scaler_metadata: [("policy".to_string(), format!("missing-{i}"))].into(),
                        };
                        while !stop.load(Ordering::Relaxed) {
                            match client.stream_is_active(trigger.clone()).await {
                                Ok(stream) => {
                                    opened.fetch_add(1, Ordering::Relaxed);
                                    let mut stream = stream.into_inner();
                                    while let Ok(Some(_)) = stream.message().await {}
                                }
                                Err(_) => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            (opened.load(Ordering::Relaxed), refused.load(Ordering::Relaxed))
        })
    })
}

/// 1,000 `StreamIsActive` streams for policies that do not exist (20 namespaces of 50) do not
/// keep a real ScaledObject from its own: KEDA's stream is opened beside them, a burst is pushed
/// to it and wakes the workers, and KEDA's GetMetrics calls are answered. Before the caps and the
/// missing-policy grace, ~256 such streams on KEDA's connection blocked every other call.
#[test]
fn a_thousand_streams_for_missing_policies_leave_a_real_scaled_object_its_own() {
    let _turn = APISERVICE.lock().unwrap_or_else(|e| e.into_inner());
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-kedaflood");
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

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = flood_streams(&keda, scaler_port, 1_000, 20, stop.clone());
    wait_until("the flood's 1,000 streams open", Duration::from_secs(60), || {
        (levee.metric("levee_external_scaler_streams")? >= 1_000.0).then_some(())
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&scaled_object(&ns, scaler_port, 600)));
    wait_until(
        "KEDA's own stream opens beside them",
        Duration::from_secs(90),
        || (levee.metric("levee_external_scaler_streams")? >= 1_001.0).then_some(()),
    );
    wait_until(
        "KEDA scales the idle workers to zero",
        Duration::from_secs(90),
        || (replicas(&ns) == 0).then_some(()),
    );
    let pushed_at = Instant::now();
    redis.push_jobs("jobs", 450);
    wait_until("the push wakes the workers", Duration::from_secs(60), || {
        (replicas(&ns) >= 1).then_some(())
    });
    let woke = pushed_at.elapsed();
    wait_until("KEDA's GetMetrics answered", Duration::from_secs(60), || {
        (levee.metric("levee_external_scaler_requests_total{code=\"OK\",rpc=\"GetMetrics\"}")? >= 1.0)
            .then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opened, refused) = flood.join().unwrap();
    let ended = levee
        .metric("levee_external_scaler_requests_total{code=\"NotFound\",rpc=\"StreamIsActive\"}")
        .unwrap_or(0.0);
    eprintln!(
        "figure: 1,000 streams for missing policies ({opened} opened, {refused} refused, {ended} ended as NotFound): KEDA's stream opened beside them, burst -> first worker in {woke:.1?}"
    );
    assert!(opened >= 1_000, "the flood held its 1,000 streams: {opened}");
}
