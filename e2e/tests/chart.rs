//! The Helm chart: `helm lint`, the values schema's refusals, the hardening of the Deployment,
//! `manifests/` being current, the alerts (promtool) and the dashboard's queries, every
//! combination of options accepted by the API server (`kubectl apply --dry-run=server`, with the
//! real Prometheus Operator and cert-manager CRDs), and a real install whose generated CA
//! survives `helm upgrade`.

use levee_e2e::*;
use serde_json::Value;
use std::process::Command;

/// Option sets a user may pick; each must render and be accepted by the API server.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    &["tls.selfSigned=true"],
    &["certManager.enabled=true"],
    &[
        "certManager.enabled=true",
        "certManager.issuerRef.name=corp-ca",
        "certManager.issuerRef.kind=ClusterIssuer",
    ],
    &[
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
        "networkPolicy.enabled=true",
        "watchNamespace=jobs",
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
            "set certManager.enabled or tls.selfSigned, not both",
        ),
        (
            "serviceAccount.create=false",
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
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
fn levee_runs_with_the_deployments_arguments_environment_and_certificate() {
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
    // The metrics API serves the chart's certificate for the Service's name.
    let service = format!("levee.{LEVEE_NAMESPACE}.svc");
    let health = Command::new("curl")
        .args(["-s", "--cacert", files.path().join("ca.crt").to_str().unwrap()])
        .args(["--resolve", &format!("{service}:{api_port}:127.0.0.1")])
        .arg(format!("https://{service}:{api_port}/healthz"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        "ok",
        "{}",
        String::from_utf8_lossy(&health.stderr)
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

/// The metric names levee registers: the quoted `"levee_..."` names in src/telemetry.rs.
fn levee_metric_names() -> std::collections::BTreeSet<String> {
    let source = std::fs::read_to_string(repo_root().join("src/telemetry.rs")).unwrap();
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| literal.starts_with("levee_"))
        .map(str::to_string)
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
            kubectl_ok(
                &[
                    "wait",
                    "--for",
                    "condition=Established",
                    &format!("crd/{plural}.{group}"),
                    "--timeout=60s",
                ],
                None,
            );
        }
    }
}

#[test]
fn every_option_set_and_the_manifests_are_accepted_by_the_api_server() {
    install_crd();
    install_integration_crds();
    create_levee_namespace();
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
