//! The Helm chart: `helm lint`, the values schema's refusals, the hardening of the Deployment,
//! its exposure (NetworkPolicy, /metrics over HTTPS for the readers the chart binds, RBAC scoped
//! to the watched namespace, replicas spread over nodes, the admission bound on maxReplicas),
//! `manifests/` being current and verifying levee's certificate, the alerts (promtool) and the
//! dashboard's queries, every combination of options accepted by the API server
//! (`kubectl apply --dry-run=server`, with the real Prometheus Operator and cert-manager CRDs),
//! and a real install whose generated CA survives `helm upgrade`.

use levee_e2e::fixture::{PolicyYaml, merge_patch};
use levee_e2e::*;
use serde_json::Value;
use std::process::Command;

/// The namespace the option sets watch (the API server needs it to exist for their Role).
const WATCHED: &str = "levee-e2e-watched";

/// Option sets a user may pick; each must render and be accepted by the API server.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    &["tls.selfSigned=true", "serviceMonitor.enabled=true"],
    &["tls.userProvided=true"],
    &[
        "certManager.enabled=true",
        "replicas=3",
        "leaderElection.ownership=shards",
    ],
    &[
        "certManager.enabled=true",
        "certManager.issuerRef.name=corp-ca",
        "certManager.issuerRef.kind=ClusterIssuer",
    ],
    &[
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "networkPolicy.metricsFrom[0].ipBlock.cidr=10.0.0.0/8",
        "watchNamespace=levee-e2e-watched",
        "metrics.plainLoopback=true",
        "metrics.readers[0].name=prometheus-k8s",
        "metrics.readers[0].namespace=monitoring",
        "log.format=text",
    ],
    &[
        "replicas=0",
        "metricsApi.service.externalName=localhost",
        "metricsApi.service.port=6443",
    ],
    &[
        "metricsApi.enabled=false",
        "podDisruptionBudget.enabled=false",
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
        "networkPolicy.enabled=false",
        "scaleTarget.maxReplicasLimit=0",
        "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey=kubernetes.io/hostname",
    ],
    &[
        "externalScaler.enabled=true",
        "metricsApi.enabled=false",
        "networkPolicy.externalScalerFrom[0].podSelector.matchLabels.app=keda-operator",
    ],
    &[
        "externalScaler.enabled=true",
        "externalScaler.clusterTriggerAuthentication=false",
        "certManager.enabled=true",
        "externalScaler.clientCaSecret=keda-client-ca",
    ],
    &[
        "metricsApi.delegate.url=https://keda-metrics-apiserver.keda.svc:443",
        "metricsApi.delegate.caSecret=keda-ca",
    ],
    &[
        "metricsApi.delegate.url=https://keda-metrics-apiserver.keda.svc:443",
        "metricsApi.delegate.clientCertSecret=levee-front-proxy",
    ],
];

fn helm_ok(args: &[&str]) -> String {
    let output = helm(args);
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn helm_lint_passes_with_every_option_set() {
    helm_ok(&["lint", "--strict", "charts/levee"]);
    for sets in VALUE_SETS {
        let mut args = vec!["lint", "--strict", "charts/levee"];
        for set in *sets {
            args.extend(["--set", set]);
        }
        helm_ok(&args);
    }
}

#[test]
fn wrong_values_are_refused_with_a_message_naming_the_key() {
    let cases = [
        ("replicas=-1", "/replicas"),
        ("replicas=two", "/replicas"),
        ("log.format=xml", "value must be one of 'json', 'text'"),
        ("statusHeartbeat=soon", "/statusHeartbeat"),
        ("leaderElection.leaseDuration=15", "/leaderElection/leaseDuration"),
        ("leaderElection.ownership=sharded", "/leaderElection/ownership"),
        ("metricsApi.service.port=70000", "/metricsApi/service/port"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespace=Jobs_1", "/watchNamespace"),
        ("replica=3", "additional properties 'replica' not allowed"),
        (
            "certManager.issuerRef.kind=Issuers",
            "/certManager/issuerRef/kind",
        ),
        (
            "metrics.port=6443",
            "metrics.port must differ from 6443, the port of levee's external metrics API",
        ),
        (
            "certManager.enabled=true,tls.selfSigned=true",
            "set at most one of certManager.enabled, tls.selfSigned and tls.userProvided",
        ),
        (
            "tls.selfSigned=true,tls.userProvided=true",
            "set at most one of certManager.enabled, tls.selfSigned and tls.userProvided",
        ),
        (
            "scaleTarget.maxReplicasLimit=1001",
            "/scaleTarget/maxReplicasLimit",
        ),
        ("scaleTarget.maxReplicasLimit=-1", "/scaleTarget/maxReplicasLimit"),
        (
            "metrics.readers[0].name=prometheus",
            "at '/metrics/readers/0': missing property 'namespace'",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
        (
            "externalScaler.enabled=true,tls.userProvided=true",
            "externalScaler.clusterTriggerAuthentication needs the chart's own certificate",
        ),
        (
            "externalScaler.enabled=true,externalScaler.clusterTriggerAuthentication=false",
            "the external scaler needs a client CA",
        ),
        (
            "externalScaler.enabled=true,externalScaler.allowUnauthenticated=true",
            "externalScaler.allowUnauthenticated=true contradicts a client CA",
        ),
        (
            "externalScaler.enabled=true,metrics.port=9443",
            "metrics.port must differ from 9443",
        ),
        ("externalScaler.service.port=0", "/externalScaler/service/port"),
        ("metricsApi.delegate.url=http://keda", "/metricsApi/delegate/url"),
    ];
    for (set, expected) in cases {
        let output = helm(&["template", "levee", "charts/levee", "--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--set {set} was accepted");
        assert!(stderr.contains(expected), "--set {set}: {stderr}");
    }
}

#[test]
fn the_deployment_is_hardened_and_led_by_one_replica() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &[]);
    let deployment = rendered(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect=true"), "{args:?}");
    assert!(
        args.contains(&"--tls-cert-file=/etc/levee/tls/tls.crt"),
        "{args:?}"
    );
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|var| var["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"POD_NAMESPACE") && env.contains(&"POD_NAME"));
    assert_eq!(
        rendered(&objects, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    // The chart's version of levee is this crate's.
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("charts/levee/Chart.yaml")).unwrap())
            .unwrap();
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|line| line.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        chart["appVersion"], version,
        "Chart.yaml's appVersion is not levee's version"
    );
}

#[test]
fn levee_runs_with_the_deployments_arguments_environment_and_certificate_and_is_scraped_as_configured() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &[]);
    let deployment = rendered(&objects, "Deployment");
    let secret = rendered(&objects, "Secret");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let files = secret_files(secret);
    let (metrics_port, api_port) = (levee_e2e::redis::free_port(), levee_e2e::redis::free_port());
    // The pod's arguments, but listening on loopback, the Secret's files where it mounts them, and
    // a Lease of its own so no other test's levee competes for it.
    let lease = "levee-chart-args";
    let rewrites = [
        (
            "--metrics-addr=0.0.0.0:8080",
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        ),
        (
            "--external-metrics-addr=0.0.0.0:6443",
            format!("--external-metrics-addr=127.0.0.1:{api_port}"),
        ),
        (
            "--leader-election-name=levee",
            format!("--leader-election-name={lease}"),
        ),
        (
            "--peer-url=https://$(POD_IP):6443",
            format!("--peer-url=https://127.0.0.1:{api_port}"),
        ),
        (
            "--peer-token-file=/var/run/secrets/levee/peer/token",
            format!("--peer-token-file={}", peer_token_file().display()),
        ),
    ];
    let mut args: Vec<String> = Vec::new();
    for arg in container["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        let rewritten = rewrites
            .iter()
            .find(|(from, _)| *from == arg)
            .map(|(_, to)| to.clone())
            .unwrap_or_else(|| arg.replace(mount, files.path().to_str().unwrap()));
        args.push(rewritten);
    }
    for (from, _) in &rewrites {
        assert!(
            container["args"].as_array().unwrap().iter().any(|a| a == from),
            "no {from} in the Deployment"
        );
    }
    let pod_name = "levee-7d9f8-chart";
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|var| {
            let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => LEVEE_NAMESPACE.to_string(),
                Some("metadata.name") => pod_name.to_string(),
                // Only a ring Lease (ownership: shards, not the default) names its Pod as owner.
                Some("metadata.uid") => "7d9f8-chart-uid".to_string(),
                Some("status.podIP") => "127.0.0.1".to_string(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => var["value"].as_str().unwrap().to_string(),
            };
            (var["name"].as_str().unwrap().to_string(), value)
        })
        .collect();
    install_crd();
    create_levee_namespace();
    // Cluster-wide, as installed (no --watch-namespace): the chart's RBAC must be enough for it.
    let mut levee = Levee::launch(&args, &env, metrics_port, api_port);
    let holder = || {
        let output = kubectl(
            &["get", "lease", lease, "-n", LEVEE_NAMESPACE, "-o", "json"],
            None,
        );
        serde_json::from_slice::<Value>(&output.stdout).ok()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    };
    wait_until(
        "levee leads under its pod name",
        std::time::Duration::from_secs(30),
        || (holder().as_deref() == Some(pod_name)).then_some(()),
    );
    // The metrics API serves the chart's certificate for the Service's name (curl verifies it
    // against the chart's CA, or answers 000): an anonymous /metrics is then a 401.
    let service = format!("levee.{LEVEE_NAMESPACE}.svc");
    let anonymous = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--cacert", files.path().join("ca.crt").to_str().unwrap()])
        .args(["--resolve", &format!("{service}:{api_port}:127.0.0.1")])
        .arg(format!("https://{service}:{api_port}/metrics"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&anonymous.stdout),
        "401",
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    // Prometheus as the ServiceMonitor has it scrape: HTTPS to the name and CA it gives, with the
    // token of a ServiceAccount in metrics.readers. Anyone else is refused; so is the plain port.
    let monitor = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["serviceMonitor.enabled=true"],
        &["templates/monitoring.yaml"],
    );
    let endpoint = &rendered(&monitor, "ServiceMonitor")["spec"]["endpoints"][0];
    let server_name = endpoint["tlsConfig"]["serverName"].as_str().unwrap();
    let path = endpoint["path"].as_str().unwrap();
    let readers: Vec<Value> = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[
            "metrics.readers[0].name=levee-e2e-prometheus",
            &format!("metrics.readers[0].namespace={LEVEE_NAMESPACE}"),
        ],
        &["templates/rbac.yaml"],
    )
    .into_iter()
    .filter(|object| object["metadata"]["name"] == "levee-metrics-reader")
    .collect();
    assert_eq!(readers.len(), 2, "the metrics-reader ClusterRole and its binding");
    apply_objects(&readers, &[]);
    let token = |account: &str| {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": LEVEE_NAMESPACE}});
        apply_objects(&[object], &[]);
        kubectl_ok(&["create", "token", account, "-n", LEVEE_NAMESPACE], None)
            .trim()
            .to_string()
    };
    let scrape = |token: Option<&str>| -> (String, String) {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-w",
            "\n%{http_code}",
            "--cacert",
            files.path().join("ca.crt").to_str().unwrap(),
        ])
        .args(["--resolve", &format!("{server_name}:{api_port}:127.0.0.1")]);
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let output = curl
            .arg(format!("https://{server_name}:{api_port}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    };
    let prometheus = token("levee-e2e-prometheus");
    let (code, body) = wait_until(
        "the reader's token gets /metrics",
        std::time::Duration::from_secs(15),
        || Some(scrape(Some(&prometheus))).filter(|(code, _)| code == "200"),
    );
    assert!(body.contains("levee_"), "{code}: {body}");
    assert_eq!(scrape(Some(&token("levee-e2e-stranger"))).0, "403");
    assert_eq!(scrape(None).0, "401");
    assert!(
        levee.get("/metrics").is_none(),
        "the plain port serves /metrics without --metrics-plain-loopback"
    );
    // log.format json: every line is a JSON object.
    let log = levee.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<Value>(first).is_ok_and(|line| line.is_object()),
        "{first}"
    );
    assert!(!log.contains("\"level\":\"ERROR\""), "{log}");
    levee.stop();
    wait_until(
        "the Lease is let go on SIGTERM",
        std::time::Duration::from_secs(10),
        || (holder().as_deref() != Some(pod_name)).then_some(()),
    );
}

#[test]
fn the_apiservice_trusts_exactly_the_ca_that_signed_the_serving_certificate() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &[]);
    let secret = rendered(&objects, "Secret");
    let apiservice = rendered(&objects, "APIService");
    assert_eq!(apiservice["spec"]["caBundle"], secret["data"]["ca.crt"]);
    assert_eq!(apiservice["spec"]["service"]["name"], "levee");
    let dir = secret_files(secret);
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "ca.crt",
            "-verify_hostname",
            "levee.levee-system.svc",
            "tls.crt",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let self_signed = render_chart("levee", LEVEE_NAMESPACE, &["tls.selfSigned=true"], &[]);
    assert!(!self_signed.iter().any(|object| object["kind"] == "Secret"));
    assert_eq!(
        rendered(&self_signed, "APIService")["spec"]["insecureSkipTLSVerify"],
        true
    );
    let cert_manager = render_chart("levee", LEVEE_NAMESPACE, &["certManager.enabled=true"], &[]);
    assert_eq!(
        rendered(&cert_manager, "APIService")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "levee-system/levee"
    );
}

#[test]
fn with_a_user_provided_certificate_the_chart_generates_nothing_and_skips_no_verification() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &["tls.userProvided=true"], &[]);
    assert!(
        !objects.iter().any(|object| object["kind"] == "Secret"),
        "tls.userProvided: the chart must not generate a key"
    );
    let spec = &rendered(&objects, "APIService")["spec"];
    assert!(spec["insecureSkipTLSVerify"].is_null(), "{spec}");
    assert!(spec["caBundle"].is_null(), "{spec}");
    // The Deployment serves the Secret `levee serving-cert` writes, as in the chart's CA mode.
    let pod = &rendered(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "levee-tls");
    let args = container_args(&objects);
    assert!(
        args.iter()
            .any(|arg| arg == "--tls-cert-file=/etc/levee/tls/tls.crt"),
        "{args:?}"
    );
    assert!(!args.iter().any(|arg| arg.starts_with("--tls-san")), "{args:?}");
}

#[test]
fn forwarding_asks_as_levee_with_a_role_or_as_the_caller_with_a_front_proxy_certificate() {
    let url = "metricsApi.delegate.url=https://keda-metrics-apiserver.keda.svc:443";
    let as_levee = render_chart("levee", LEVEE_NAMESPACE, &[url], &[]);
    assert!(named(&as_levee, "ClusterRole", "levee-delegated-metrics-reader").is_some());
    let args = container_args(&as_levee);
    assert!(
        !args.iter().any(|arg| arg.starts_with("--delegate-client")),
        "{args:?}"
    );

    let as_caller = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[url, "metricsApi.delegate.clientCertSecret=levee-front-proxy"],
        &[],
    );
    assert!(
        named(&as_caller, "ClusterRole", "levee-delegated-metrics-reader").is_none(),
        "asking as the caller, levee needs no read access of its own"
    );
    let args = container_args(&as_caller);
    for flag in [
        "--delegate-client-cert-file=/etc/levee/delegate-client/tls.crt",
        "--delegate-client-key-file=/etc/levee/delegate-client/tls.key",
    ] {
        assert!(args.iter().any(|arg| arg == flag), "{flag} in {args:?}");
    }
    let pod = &rendered(&as_caller, "Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "delegate-client")
        .expect("the client certificate's volume");
    assert_eq!(volume["secret"]["secretName"], "levee-front-proxy");
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "delegate-client" && m["mountPath"] == "/etc/levee/delegate-client"),
        "{mounts:?}"
    );
}

/// Objects of `kind` named `name`.
fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
}

/// The arguments of the Deployment's levee container.
fn container_args(objects: &[Value]) -> Vec<String> {
    rendered(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_network_policy_is_on_by_default_and_lets_the_aggregator_and_the_probes_in() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &[]);
    let policy = rendered(&objects, "NetworkPolicy");
    let deployment = rendered(&objects, "Deployment");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    // Ingress only: egress (the API server, DNS, every policy's Redis) stays open.
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let rule_for = |policy: &Value, port: &str| -> Value {
        policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| {
                rule["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .unwrap_or_else(|| panic!("no ingress rule for port {port}: {policy}"))
            .clone()
    };
    // The aggregator has no fixed address: the HTTPS port is open to anyone.
    assert!(rule_for(policy, "https")["from"].is_null(), "{policy}");
    // The kubelet's probes (from the node) reach the port they use; by default anyone may.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = container[probe]["httpGet"]["port"].as_str().unwrap();
        assert!(
            rule_for(policy, port)["from"].is_null(),
            "{probe} on {port}: {policy}"
        );
    }
    // metricsFrom narrows the plain-HTTP port only, never the aggregator's.
    let narrowed = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["networkPolicy.metricsFrom[0].ipBlock.cidr=10.0.0.0/8"],
        &["templates/networkpolicy.yaml"],
    );
    let narrowed = rendered(&narrowed, "NetworkPolicy");
    assert_eq!(
        rule_for(narrowed, "metrics")["from"],
        serde_json::json!([{"ipBlock": {"cidr": "10.0.0.0/8"}}])
    );
    assert!(rule_for(narrowed, "https")["from"].is_null(), "{narrowed}");
    let off = render_chart("levee", LEVEE_NAMESPACE, &["networkPolicy.enabled=false"], &[]);
    assert!(!off.iter().any(|object| object["kind"] == "NetworkPolicy"));
}

#[test]
fn in_keda_mode_the_external_scaler_is_served_and_only_kedas_client_certificate_gets_in() {
    let objects = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["externalScaler.enabled=true", "metricsApi.enabled=false"],
        &[],
    );
    assert!(
        !objects.iter().any(|object| object["kind"] == "APIService"),
        "KEDA keeps the APIService"
    );
    let args = container_args(&objects);
    for flag in [
        "--external-scaler-addr=0.0.0.0:9443",
        "--external-scaler-client-ca-file=/etc/levee/tls/ca.crt",
        "--external-scaler-client-names=keda-operator",
    ] {
        assert!(args.iter().any(|arg| arg == flag), "{flag} not in {args:?}");
    }
    let service = named(&objects, "Service", "levee").unwrap();
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "grpc" && p["port"] == 9443 && p["targetPort"] == "grpc"),
        "{service}"
    );
    let policy = rendered(&objects, "NetworkPolicy");
    let grpc = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["ports"][0]["port"] == "grpc")
        .unwrap_or_else(|| panic!("no rule for the scaler's port: {policy}"));
    assert_eq!(
        grpc["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}])
    );
    // KEDA's Secret: the CA that signed levee's certificate, and a client certificate it signed.
    let ours = named(&objects, "Secret", "levee-tls").unwrap();
    let kedas = named(&objects, "Secret", "levee-keda-client").unwrap();
    assert_eq!(kedas["metadata"]["namespace"], "keda");
    assert_eq!(kedas["data"]["ca.crt"], ours["data"]["ca.crt"]);
    let files = secret_files(kedas);
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile", "ca.crt", "tls.crt"])
        .current_dir(files.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "KEDA's client certificate: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let authentication = named(&objects, "ClusterTriggerAuthentication", "levee").unwrap();
    let parameters: Vec<&str> = authentication["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["parameter"].as_str().unwrap())
        .collect();
    assert_eq!(parameters, ["caCert", "tlsClientCert", "tlsClientKey"]);
    // Off by default: no port, no certificate for KEDA.
    let default = render_chart("levee", LEVEE_NAMESPACE, &[], &[]);
    assert!(
        !container_args(&default)
            .iter()
            .any(|arg| arg.contains("external-scaler"))
    );
    assert!(named(&default, "Secret", "levee-keda-client").is_none());
    // With a certificate the chart does not make, the CA of KEDA's client certificate comes from
    // a Secret the operator names, mounted for levee alone.
    let own_ca = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[
            "externalScaler.enabled=true",
            "externalScaler.clusterTriggerAuthentication=false",
            "certManager.enabled=true",
            "externalScaler.clientCaSecret=keda-client-ca",
            "externalScaler.clientNames[0]=keda-operator",
        ],
        &[],
    );
    let args = container_args(&own_ca);
    for flag in [
        "--external-scaler-client-ca-file=/etc/levee/scaler-client-ca/ca.crt",
        "--external-scaler-client-names=keda-operator",
    ] {
        assert!(args.iter().any(|arg| arg == flag), "{flag} not in {args:?}");
    }
    let deployment = rendered(&own_ca, "Deployment");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "scaler-client-ca" && v["secret"]["secretName"] == "keda-client-ca"),
        "{volumes:?}"
    );
    assert!(named(&own_ca, "ClusterTriggerAuthentication", "levee").is_none());
    // Without any client CA only by saying so, and then levee is told too.
    let open = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[
            "externalScaler.enabled=true",
            "externalScaler.clusterTriggerAuthentication=false",
            "externalScaler.allowUnauthenticated=true",
        ],
        &[],
    );
    assert!(
        container_args(&open)
            .iter()
            .any(|arg| arg == "--external-scaler-allow-unauthenticated")
    );
}

#[test]
fn metrics_are_scraped_over_https_with_a_token_the_chart_lets_read_them() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &["serviceMonitor.enabled=true"], &[]);
    // The plain port answers /metrics to nobody unless asked (and then only on loopback).
    let args = container_args(&objects);
    assert!(
        !args.iter().any(|arg| arg.starts_with("--metrics-plain-loopback")),
        "{args:?}"
    );
    let loopback = render_chart("levee", LEVEE_NAMESPACE, &["metrics.plainLoopback=true"], &[]);
    assert!(
        container_args(&loopback).contains(&"--metrics-plain-loopback=true".to_string()),
        "{:?}",
        container_args(&loopback)
    );
    // The metrics Service leads to the HTTPS port; the ServiceMonitor scrapes it with Prometheus'
    // token and verifies the certificate against the chart's CA, for the name it carries.
    let service = named(&objects, "Service", "levee-metrics").expect("no levee-metrics Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let endpoint = &rendered(&objects, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    let tls = &endpoint["tlsConfig"];
    assert_eq!(tls["serverName"], "levee.levee-system.svc");
    assert_eq!(
        tls["ca"]["secret"],
        serde_json::json!({"name": "levee-tls", "key": "ca.crt"})
    );
    assert!(tls["insecureSkipVerify"].is_null(), "{tls}");
    let self_signed = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["serviceMonitor.enabled=true", "tls.selfSigned=true"],
        &["templates/monitoring.yaml"],
    );
    let tls = &rendered(&self_signed, "ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"];
    assert_eq!(tls["insecureSkipVerify"], true, "{tls}");
    assert!(tls["ca"].is_null(), "{tls}");
    // Who may read /metrics: the ClusterRole, bound to the ServiceAccounts in metrics.readers.
    let reader =
        named(&objects, "ClusterRole", "levee-metrics-reader").expect("no metrics-reader ClusterRole");
    assert_eq!(
        reader["rules"],
        serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    assert!(
        named(&objects, "ClusterRoleBinding", "levee-metrics-reader").is_none(),
        "no readers, no binding"
    );
    let bound = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[
            "metrics.readers[0].name=prometheus-k8s",
            "metrics.readers[0].namespace=monitoring",
            "metrics.readers[1].name=vmagent",
            "metrics.readers[1].namespace=victoria",
        ],
        &["templates/rbac.yaml"],
    );
    let binding = named(&bound, "ClusterRoleBinding", "levee-metrics-reader").expect("no binding");
    assert_eq!(binding["roleRef"]["name"], "levee-metrics-reader");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([
            {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"},
            {"kind": "ServiceAccount", "name": "vmagent", "namespace": "victoria"},
        ])
    );
}

/// The rules of a Role or ClusterRole as (resource, verbs) pairs.
fn resource_verbs(role: &Value) -> Vec<(String, Vec<String>)> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| item.as_str().unwrap().to_string())
            .collect()
    };
    let mut pairs = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for resource in strings(&rule["resources"]) {
            pairs.push((resource, strings(&rule["verbs"])));
        }
    }
    pairs
}

/// The resources levee reads and writes in the namespaces it watches.
const WATCHED_RESOURCES: &[&str] = &[
    "backpressurepolicies",
    "backpressurepolicies/status",
    "backpressurepolicies/finalizers",
    "deployments",
    "statefulsets",
    "daemonsets",
    "pods",
    "pods/status",
    "secrets",
    "events",
    "horizontalpodautoscalers",
];

#[test]
fn with_watch_namespace_levee_gets_a_role_in_that_namespace_and_nothing_cluster_wide_on_it() {
    let verbs_of = |role: &Value, resource: &str| -> Vec<String> {
        resource_verbs(role)
            .into_iter()
            .find(|(name, _)| name == resource)
            .unwrap_or_else(|| panic!("no rule for {resource}"))
            .1
    };
    let cluster = render_chart("levee", LEVEE_NAMESPACE, &[], &["templates/rbac.yaml"]);
    let role = named(&cluster, "ClusterRole", "levee").expect("no ClusterRole levee");
    for resource in WATCHED_RESOURCES {
        verbs_of(role, resource);
    }
    // Secrets are listed by name and opt-in label; the Lease is watched by the followers.
    assert_eq!(verbs_of(role, "secrets"), ["get", "list", "watch"]);
    let election = named(&cluster, "Role", "levee-leader-election").unwrap();
    assert_eq!(election["metadata"]["namespace"], LEVEE_NAMESPACE);
    let mut lease = verbs_of(election, "leases");
    lease.sort();
    // delete: with ownership shards a replica deletes its own Lease when it stops, and stale ones.
    assert_eq!(
        lease,
        ["create", "delete", "get", "list", "patch", "update", "watch"]
    );

    let scoped = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["watchNamespace=jobs"],
        &["templates/rbac.yaml"],
    );
    let role = named(&scoped, "Role", "levee").expect("no Role levee");
    assert_eq!(role["metadata"]["namespace"], "jobs");
    for resource in WATCHED_RESOURCES {
        verbs_of(role, resource);
    }
    let binding = named(&scoped, "RoleBinding", "levee").expect("no RoleBinding levee");
    assert_eq!(binding["metadata"]["namespace"], "jobs");
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "levee"})
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "levee", "namespace": LEVEE_NAMESPACE}])
    );
    // What stays cluster-wide grants nothing on the watched resources: reviews (auth-delegator),
    // the request-header CA in kube-system, the Lease, /metrics for its readers and /peer/values
    // for the replicas.
    for object in &scoped {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        match (kind, name) {
            ("Role", "levee") | ("RoleBinding", "levee") => {}
            ("ClusterRole", "levee-metrics-reader") => {
                assert_eq!(
                    object["rules"][0]["nonResourceURLs"],
                    serde_json::json!(["/metrics"])
                )
            }
            ("ClusterRoleBinding", "levee-auth-delegator") => {
                assert_eq!(object["roleRef"]["name"], "system:auth-delegator")
            }
            ("RoleBinding", "levee-extension-apiserver-authentication-reader") => {
                assert_eq!(object["metadata"]["namespace"], "kube-system")
            }
            ("Role", "levee-leader-election") => {
                assert_eq!(object["metadata"]["namespace"], LEVEE_NAMESPACE);
                let resources: Vec<String> = resource_verbs(object).into_iter().map(|(r, _)| r).collect();
                assert_eq!(resources, ["leases"]);
            }
            ("RoleBinding", "levee-leader-election") => {}
            ("ClusterRole", "levee-peer") => {
                assert_eq!(
                    object["rules"],
                    serde_json::json!([{"nonResourceURLs": ["/peer/values"], "verbs": ["get"]}])
                )
            }
            ("ClusterRoleBinding", "levee-peer") => {
                assert_eq!(object["roleRef"]["name"], "levee-peer")
            }
            other => panic!("with watchNamespace the chart also renders {other:?}"),
        }
    }
}

#[test]
fn the_replicas_prefer_different_nodes_unless_affinity_says_otherwise() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &["templates/deployment.yaml"]);
    let deployment = rendered(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let preferred = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(preferred.as_array().map(Vec::len), Some(1), "{}", pod["affinity"]);
    assert_eq!(preferred[0]["weight"], 100);
    let term = &preferred[0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let own = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &[
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        ],
        &["templates/deployment.yaml"],
    );
    let affinity = &rendered(&own, "Deployment")["spec"]["template"]["spec"]["affinity"];
    assert!(affinity["podAntiAffinity"].is_null(), "{affinity}");
    assert!(affinity["nodeAffinity"].is_object(), "{affinity}");
}

#[test]
fn an_admission_policy_bounds_max_replicas_as_configured() {
    let objects = render_chart("levee", LEVEE_NAMESPACE, &[], &["templates/admission.yaml"]);
    let policy = rendered(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["apiGroups"], serde_json::json!(["levee.dev"]));
    assert_eq!(rule["resources"], serde_json::json!(["backpressurepolicies"]));
    assert_eq!(rule["operations"], serde_json::json!(["CREATE", "UPDATE"]));
    let validation = &policy["spec"]["validations"][0];
    assert_eq!(
        validation["expression"],
        "!has(object.spec.scaleTarget) || object.spec.scaleTarget.maxReplicas <= 100"
    );
    assert_eq!(
        validation["message"],
        "spec.scaleTarget.maxReplicas must be at most 100 (the chart's scaleTarget.maxReplicasLimit): lower it or raise the limit"
    );
    let binding = rendered(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
    assert!(
        binding["spec"]["matchResources"].is_null(),
        "every namespace: {binding}"
    );
    // With watchNamespace, only that namespace's policies (another levee may have its own limit).
    let scoped = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["watchNamespace=jobs", "scaleTarget.maxReplicasLimit=40"],
        &["templates/admission.yaml"],
    );
    assert!(
        rendered(&scoped, "ValidatingAdmissionPolicy")["spec"]["validations"][0]["expression"]
            .as_str()
            .unwrap()
            .ends_with("maxReplicas <= 40")
    );
    assert_eq!(
        rendered(&scoped, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"]["namespaceSelector"],
        serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": "jobs"}})
    );
    let off = render_chart("levee", LEVEE_NAMESPACE, &["scaleTarget.maxReplicasLimit=0"], &[]);
    assert!(
        !off.iter()
            .any(|object| object["kind"] == "ValidatingAdmissionPolicy")
    );
    // A cluster without ValidatingAdmissionPolicy v1 is told what to do.
    let output = helm(&["template", "levee", "charts/levee", "--kube-version", "1.29.0"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("set it to 0 on this cluster"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Cluster-scoped objects applied for one test, deleted when dropped.
struct ClusterObjects(Vec<String>);

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for object in &self.0 {
            let _ = kubectl(&["delete", object, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

/// A policy in `namespace` whose HPA may reach `max_replicas`.
fn scaling_policy(name: &str, namespace: &str, max_replicas: u32) -> String {
    PolicyYaml::new(name, namespace, "{url: 'redis://redis.jobs.svc:6379/0'}")
        .set("queues", "[{name: events, type: list, key: events}]")
        .without("sampleInterval")
        .set("thresholds", "{warning: 100, critical: 200, recovery: 50}")
        .set(
            "scaleTarget",
            format!(
                "{{kind: Deployment, name: worker, maxReplicas: {max_replicas}, pendingPerReplica: 500}}"
            ),
        )
        .yaml()
}

#[test]
fn the_api_server_refuses_a_policy_above_the_max_replicas_limit() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-vap");
    let ns = namespace.name.as_str();
    // A policy written before the limit existed keeps working (and can be deleted).
    kubectl_ok(&["apply", "-f", "-"], Some(&scaling_policy("before", ns, 8)));
    // Scoped to this test's namespace (watchNamespace), so no other test meets this limit.
    let objects = render_chart(
        "vap-e2e",
        LEVEE_NAMESPACE,
        &[&format!("watchNamespace={ns}"), "scaleTarget.maxReplicasLimit=5"],
        &["templates/admission.yaml"],
    );
    let _cleanup = ClusterObjects(vec![
        "validatingadmissionpolicybinding/vap-e2e-levee-max-replicas".into(),
        "validatingadmissionpolicy/vap-e2e-levee-max-replicas".into(),
    ]);
    apply_objects(&objects, &[]);
    // The policy takes effect once the API server has loaded it.
    let refusal = wait_until(
        "a policy above the limit is refused",
        std::time::Duration::from_secs(30),
        || {
            let output = kubectl(
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&scaling_policy("above", ns, 6)),
            );
            (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
        },
    );
    assert!(
        refusal.contains(
            "spec.scaleTarget.maxReplicas must be at most 5 (the chart's scaleTarget.maxReplicasLimit): lower it or raise the limit"
        ),
        "{refusal}"
    );
    // Where a controller-manager type-checks admission policies against the CRD, no warnings.
    let policy = kubectl_json(&["get", "validatingadmissionpolicy", "vap-e2e-levee-max-replicas"]);
    assert!(
        policy["status"]["typeChecking"]["expressionWarnings"].is_null(),
        "{}",
        policy["status"]
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&scaling_policy("within", ns, 5)));
    let raise = kubectl(&["apply", "-f", "-"], Some(&scaling_policy("within", ns, 6)));
    assert!(
        !raise.status.success(),
        "raising maxReplicas above the limit was accepted"
    );
    // The older policy: changes that keep its maxReplicas pass, raising it does not, lowering does.
    kubectl_ok(&["label", "bpp", "before", "-n", ns, "team=jobs"], None);
    let patch = |max: u32| {
        merge_patch(
            "bpp",
            "before",
            ns,
            &serde_json::json!({"spec": {"scaleTarget": {"maxReplicas": max}}}),
        )
    };
    assert!(
        !patch(9).status.success(),
        "raising an old policy further was accepted"
    );
    assert!(patch(4).status.success(), "lowering an old policy was refused");
    // Other namespaces are not this levee's business.
    let other = TestNamespace::create("levee-e2e-vap-other");
    kubectl_ok(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&scaling_policy("elsewhere", &other.name, 50)),
    );
}

#[test]
fn the_alerts_and_the_dashboard_use_only_metrics_levee_exports() {
    let objects = render_chart(
        "levee",
        LEVEE_NAMESPACE,
        &["prometheusRule.enabled=true", "grafanaDashboard.enabled=true"],
        &["templates/monitoring.yaml"],
    );
    let exported = levee_metric_names();
    let rules = rendered(&objects, "PrometheusRule");
    let mut expressions: Vec<String> = Vec::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            expressions.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    let alerts: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    for alert in [
        "LeveeCircuitOpen",
        "LeveeBacklogWarning",
        "LeveeProlonged",
        "LeveeSamplingFailing",
        "LeveeMetricsApiErrors",
        "LeveeRedisMemoryWarning",
    ] {
        assert!(alerts.contains(&alert), "{alert} missing from {alerts:?}");
    }
    let dashboard = rendered(&objects, "ConfigMap");
    let dashboard: Value = serde_json::from_str(dashboard["data"]["levee.json"].as_str().unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel id {} twice",
            panel["id"]
        );
        let title = panel["title"].as_str().unwrap();
        if panel["type"] != "row" {
            assert!(
                panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{title}: no description"
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(
        panels.iter().any(|panel| panel["type"] == "state-timeline"),
        "no circuit state timeline in the dashboard"
    );
    assert!(expressions.len() > 10);
    for expression in &expressions {
        let names = metric_names_in(expression);
        assert!(!names.is_empty(), "no levee metric in {expression}");
        for name in names {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(base),
                "{name} (in {expression}) is not a levee metric"
            );
        }
    }
}

#[test]
fn the_alerts_are_valid_promql_and_fire_when_they_should() {
    let promtool = |args: &[&str]| {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("promtool is on PATH (make e2e builds it into .cache/bin)");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    promtool(&["check", "rules", "charts/levee/files/alerts.yaml"]);
    // Each alert: fires after its `for` on the series levee exports, with its annotations
    // rendered as expected, and not on a blip.
    promtool(&["test", "rules", "e2e/alerts/levee_test.yaml"]);
}

/// The metric names levee exports: the quoted `"levee_..."` names in src/telemetry.rs and its modules.
fn levee_metric_names() -> std::collections::BTreeSet<String> {
    let mut source = std::fs::read_to_string(repo_root().join("src/telemetry.rs")).unwrap();
    for entry in std::fs::read_dir(repo_root().join("src/telemetry")).unwrap() {
        source.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    source
        .split("\"levee_")
        .skip(1)
        .filter_map(|tail| {
            let end = tail.find('"')?;
            let name = &tail[..end];
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| format!("levee_{name}"))
        })
        .collect()
}

fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("levee_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn manifests_are_rendered_from_the_current_chart() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(repo_root().join("scripts/render-manifests.sh"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["00-namespace.yaml", "01-crd.yaml", "02-levee.yaml"] {
        let fresh = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(repo_root().join("manifests").join(name)).unwrap_or_default();
        assert!(
            fresh == committed,
            "manifests/{name} is stale: run `make manifests`"
        );
    }
    let committed = std::fs::read_dir(repo_root().join("manifests")).unwrap().count();
    assert_eq!(
        committed, 3,
        "manifests/ holds a file the renderer does not write"
    );
}

#[test]
fn the_manifests_verify_levees_certificate_and_hold_no_key() {
    let text = std::fs::read_to_string(repo_root().join("manifests/02-levee.yaml")).unwrap();
    let objects = yaml_documents(&text);
    // The APIService verifies levee: no insecureSkipTLSVerify; its caBundle comes with the Secret
    // from `levee serving-cert`, applied with its own field manager (docs/operations.md).
    let spec = &rendered(&objects, "APIService")["spec"];
    assert!(spec["insecureSkipTLSVerify"].is_null(), "{spec}");
    assert!(
        text.contains("kubectl apply --server-side --field-manager=levee-serving-cert"),
        "the manifests do not say how to fill the caBundle"
    );
    assert!(
        !objects.iter().any(|object| object["kind"] == "Secret"),
        "a key in manifests/"
    );
    let pod = &rendered(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "levee-tls");
    let args = container_args(&objects);
    assert!(
        args.iter()
            .any(|arg| arg == "--tls-cert-file=/etc/levee/tls/tls.crt"),
        "{args:?}"
    );
    // The rest of the exposure defaults hold for them too.
    for kind in [
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        rendered(&objects, kind);
    }
}

/// Where a Go module is unpacked (fetched through the Go module proxy once, then cached).
fn module_dir(module: &str) -> std::path::PathBuf {
    let output = Command::new("go")
        .args(["mod", "download", "-json", module])
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("go runs");
    let info: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let dir = info["Dir"].as_str().unwrap_or_else(|| {
        panic!(
            "go mod download {module}: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    dir.into()
}

/// The CRDs of the optional integrations, exactly as their projects publish them.
fn install_integration_crds() {
    let modules = [
        (
            "github.com/prometheus-operator/prometheus-operator@v0.85.0",
            "example/prometheus-operator-crd",
            [
                "monitoring.coreos.com_servicemonitors.yaml",
                "monitoring.coreos.com_prometheusrules.yaml",
            ],
        ),
        (
            "github.com/cert-manager/cert-manager@v1.21.2",
            "deploy/crds",
            [
                "cert-manager.io_certificates.yaml",
                "cert-manager.io_issuers.yaml",
            ],
        ),
    ];
    for (module, folder, files) in modules {
        let dir = module_dir(module).join(folder);
        for file in files {
            let crd = std::fs::read_to_string(dir.join(file)).unwrap();
            kubectl_ok(
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                Some(&crd),
            );
            // monitoring.coreos.com_servicemonitors.yaml holds servicemonitors.monitoring.coreos.com.
            let (group, plural) = file.trim_end_matches(".yaml").split_once('_').unwrap();
            wait_crd_established(&format!("{plural}.{group}"));
        }
    }
}

#[test]
fn every_option_set_and_the_manifests_are_accepted_by_the_api_server() {
    install_crd();
    install_integration_crds();
    levee_e2e::keda::install_keda_crds();
    create_levee_namespace();
    let keda = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": levee_e2e::keda::KEDA_NAMESPACE}});
    apply_objects(&[keda], &[]);
    let watched = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WATCHED}});
    apply_objects(&[watched], &[]);
    assert!(
        VALUE_SETS
            .iter()
            .any(|sets| sets.contains(&format!("watchNamespace={WATCHED}").as_str())),
        "no option set watches {WATCHED}"
    );
    for sets in VALUE_SETS {
        let objects = render_chart("levee", LEVEE_NAMESPACE, sets, &[]);
        let output = kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()),
        );
        assert!(
            output.status.success(),
            "--set {sets:?} refused: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = kubectl(&["apply", "--dry-run=server", "-f", "manifests/"], None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let applied = String::from_utf8_lossy(&output.stdout);
    for object in [
        "deployment.apps/levee",
        "apiservice.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io",
        "clusterrole.rbac.authorization.k8s.io/levee",
        "networkpolicy.networking.k8s.io/levee",
        "validatingadmissionpolicy.admissionregistration.k8s.io/levee-max-replicas",
    ] {
        assert!(applied.contains(object), "{object} not in: {applied}");
    }
}

#[test]
fn helm_upgrade_keeps_the_generated_ca_and_uninstall_removes_everything() {
    let namespace = TestNamespace::create("levee-e2e-chart");
    let ns = namespace.name.as_str();
    let install = [
        "upgrade",
        "--install",
        "chart-e2e",
        "charts/levee",
        "--namespace",
        ns,
        "--set",
        "metricsApi.enabled=false",
        "--wait=false",
    ];
    helm_ok(&install);
    let secret_name = "chart-e2e-levee-tls";
    let first = kubectl_json(&["get", "secret", secret_name, "-n", ns]);
    let deployment = kubectl_json(&["get", "deployment", "chart-e2e-levee", "-n", ns]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    // NOTES.txt tells the user what to do next, for this release.
    let notes = helm_ok(&["get", "notes", "chart-e2e", "--namespace", ns]);
    for next in [
        "kubectl -n {ns} get deploy,pods -l app.kubernetes.io/instance=chart-e2e",
        "conditionType: levee.dev/accepting",
        "kubectl get bpp -A",
        "kubectl delete bpp --all -A",
    ] {
        let next = next.replace("{ns}", ns);
        assert!(notes.contains(&next), "NOTES lack {next:?}:\n{notes}");
    }
    assert!(
        !notes.contains("external.metrics.k8s.io"),
        "metricsApi is off: {notes}"
    );
    let mut upgrade = install.to_vec();
    upgrade.extend(["--set", "log.level=debug"]);
    helm_ok(&upgrade);
    let second = kubectl_json(&["get", "secret", secret_name, "-n", ns]);
    assert_eq!(
        first["data"], second["data"],
        "helm upgrade must keep the CA and certificate"
    );
    let deployment = kubectl_json(&["get", "deployment", "chart-e2e-levee", "-n", ns]);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "debug"
    );
    helm_ok(&["uninstall", "chart-e2e", "--namespace", ns, "--wait"]);
    let left = kubectl(&["get", "clusterrole", "chart-e2e-levee"], None);
    assert!(!left.status.success(), "the ClusterRole outlived the release");
    let left = kubectl(&["get", "secret", secret_name, "-n", ns], None);
    assert!(!left.status.success(), "the Secret outlived the release");
}

/// With leader election (either ownership) each pod answers its peers: `--peer-url` on its pod
/// IP and the metrics API's port, a projected token of audience `levee-peers` for
/// `--peer-token-file`, and the ClusterRole that lets levee's account (only) get
/// `/peer/values`. Without leader election, none.
#[test]
fn each_pod_gets_a_peer_url_and_a_token_for_its_peers_only() {
    let peers = |sets: &[&str]| {
        let objects = render_chart("levee", LEVEE_NAMESPACE, sets, &[]);
        let deployment = rendered(&objects, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| arg.as_str().unwrap().to_string())
            .collect();
        let pod_ip = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|var| var["name"] == "POD_IP")
            .map(|var| var["valueFrom"]["fieldRef"]["fieldPath"].clone());
        let token = pod["volumes"].as_array().and_then(|volumes| {
            volumes
                .iter()
                .find(|volume| volume["name"] == "peer-token")
                .map(|volume| volume["projected"]["sources"][0]["serviceAccountToken"].clone())
        });
        let role = objects
            .iter()
            .find(|object| object["kind"] == "ClusterRole" && object["metadata"]["name"] == "levee-peer")
            .map(|role| role["rules"].clone());
        (args, pod_ip, token, role)
    };
    for sets in [&[][..], &["leaderElection.ownership=shards"][..]] {
        let (args, pod_ip, token, role) = peers(sets);
        assert!(
            args.contains(&"--peer-url=https://$(POD_IP):6443".to_string()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--peer-token-file=/var/run/secrets/levee/peer/token".to_string()),
            "{args:?}"
        );
        assert_eq!(pod_ip, Some(Value::from("status.podIP")));
        let token = token.expect("a projected token volume");
        assert_eq!(token["audience"], levee::metrics_api::routes::PEER_AUDIENCE);
        assert_eq!(token["path"], "token");
        assert_eq!(
            role.expect("the peers' ClusterRole"),
            serde_json::json!([{"nonResourceURLs": ["/peer/values"], "verbs": ["get"]}])
        );
    }

    let (args, pod_ip, token, role) = peers(&["leaderElection.enabled=false"]);
    assert!(!args.iter().any(|arg| arg.starts_with("--peer-")), "{args:?}");
    assert_eq!((pod_ip, token, role), (None, None, None));
}
