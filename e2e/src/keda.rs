//! KEDA's operator and metrics adapter, built from KEDA's Go module by `e2e/scripts/keda.sh`, run
//! as local processes against the test cluster the way the KEDA chart runs them in pods: its CRDs
//! applied server-side, the operator's gRPC metrics service and the adapter sharing one
//! certificate (mTLS between them), the adapter behind the APIService
//! `v1beta1.external.metrics.k8s.io` through an ExternalName Service (no kube-proxy here).
//!
//! The same CA signs levee's serving certificate and KEDA's client certificate for levee's
//! external scaler, so a ScaledObject's TriggerAuthentication verifies levee and levee verifies
//! KEDA.

use crate::redis::{TlsFiles, free_port};
use crate::{
    apply_objects, available, kubectl_json, kubectl_ok, repo_root, wait_crd_established, wait_until,
};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

/// KEDA's namespace: its Service in front of the adapter, and where it looks for the Secrets of
/// ClusterTriggerAuthentications.
pub const KEDA_NAMESPACE: &str = "keda";
/// The name the aggregator verifies in the adapter's certificate (`<service>.<namespace>.svc`).
const ADAPTER_SERVICE: &str = "keda-metrics-apiserver";

/// KEDA's module source (`e2e/scripts/keda.sh source`, run by `with-cluster.sh`).
pub fn keda_source() -> PathBuf {
    std::env::var_os("LEVEE_KEDA_SRC")
        .map(PathBuf::from)
        .expect("LEVEE_KEDA_SRC is not set: run the end-to-end tests with `make e2e`, which fetches KEDA")
}

/// Where `e2e/scripts/keda.sh build` put KEDA's binaries: waits for the build `with-cluster.sh`
/// started in the background, or builds.
pub fn keda_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let started = std::time::Instant::now();
        let output = Command::new(repo_root().join("e2e/scripts/keda.sh"))
            .arg("build")
            .output()
            .expect("e2e/scripts/keda.sh runs");
        assert!(
            output.status.success(),
            "building KEDA failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("keda: binaries ready after {:?}", started.elapsed());
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
    .clone()
}

/// Applies KEDA's CRDs (server-side: the ScaledJob CRD is too large for client-side apply) and
/// waits until they are served.
pub fn install_keda_crds() {
    let bases = keda_source().join("config/crd/bases");
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            bases.to_str().unwrap(),
        ],
        None,
    );
    for crd in [
        "scaledobjects.keda.sh",
        "scaledjobs.keda.sh",
        "triggerauthentications.keda.sh",
        "clustertriggerauthentications.keda.sh",
    ] {
        wait_crd_established(crd);
    }
}

/// KEDA's operator and adapter, running.
pub struct Keda {
    operator: Child,
    adapter: Child,
    /// The adapter's HTTPS port on loopback.
    pub adapter_port: u16,
    /// The CA behind every certificate here, with `levee.crt`/`levee.key` (levee's serving
    /// certificate, for 127.0.0.1) and `client.crt`/`client.key` (KEDA's, for levee's scaler).
    pub tls: TlsFiles,
    /// What both processes read their certificate from, for as long as they run.
    _certs: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl Keda {
    /// Starts the operator and the adapter; returns once the operator answers its health check
    /// and the adapter its own (the APIService is registered by `serve_external_metrics`).
    pub fn start() -> Self {
        Self::start_tuned(&[], &[])
    }

    /// `start` with extra operator flags and environment (KEDA's settings for many
    /// ScaledObjects: `--kube-api-qps`, `KEDA_SCALEDOBJECT_CTRL_MAX_RECONCILES`).
    pub fn start_tuned(operator_flags: &[&str], operator_env: &[(&str, &str)]) -> Self {
        install_keda_crds();
        apply_objects(
            &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}})],
            &[],
        );
        let tls = TlsFiles::generate();
        // KEDA's operator and adapter present the same certificate as server and as client.
        let both = "extendedKeyUsage=serverAuth,clientAuth";
        tls.signed(
            "keda",
            "/CN=localhost",
            &format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{ADAPTER_SERVICE}.{KEDA_NAMESPACE}.svc\n{both}"
            ),
        );
        tls.signed("levee", "/CN=levee", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        tls.client_cert("keda-operator");
        // levee's certificate for forwarding as the caller: from a CA of its own (this one), never
        // the cluster's front-proxy CA (levee refuses that one). The adapter trusts both: the
        // aggregator's front-proxy certificate and levee's.
        tls.signed(
            "levee-delegate",
            "/CN=levee-delegate",
            "extendedKeyUsage=clientAuth",
        );
        let kubeconfig_dir =
            std::path::PathBuf::from(std::env::var("KUBECONFIG").expect("KUBECONFIG is set under make e2e"));
        let cluster_front_proxy_ca = kubeconfig_dir.parent().unwrap().join("pki/front-proxy-ca.crt");
        let requestheader_ca = format!(
            "{}{}",
            std::fs::read_to_string(&cluster_front_proxy_ca).unwrap(),
            std::fs::read_to_string(tls.path("ca.crt")).unwrap()
        );
        std::fs::write(tls.path("requestheader-ca.crt"), requestheader_ca).unwrap();
        let certs = tempfile::tempdir().unwrap();
        for (from, to) in [
            ("ca.crt", "ca.crt"),
            ("keda.crt", "tls.crt"),
            ("keda.key", "tls.key"),
        ] {
            std::fs::copy(tls.path(from), certs.path().join(to)).unwrap();
        }
        let logs = tempfile::tempdir().unwrap();
        let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG is set under make e2e");
        let dir = keda_dir();
        let (grpc, health, operator_metrics) = (free_port(), free_port(), free_port());
        let certs_dir = certs.path().to_str().unwrap().to_string();
        let mut operator_args = vec![
            format!("--kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_string(),
            format!("--metrics-bind-address=127.0.0.1:{operator_metrics}"),
            format!("--health-probe-bind-address=127.0.0.1:{health}"),
            format!("--metrics-service-bind-address=127.0.0.1:{grpc}"),
            format!("--cert-dir={certs_dir}"),
            "--enable-cert-rotation=false".to_string(),
            "--zap-log-level=info".to_string(),
            "--zap-encoder=console".to_string(),
        ];
        operator_args.extend(operator_flags.iter().map(|flag| flag.to_string()));
        let operator = spawn_with(
            &dir.join("operator"),
            &operator_args.iter().map(String::as_str).collect::<Vec<_>>(),
            operator_env,
            &logs.path().join("operator.log"),
        );
        let adapter_port = free_port();
        // The adapter audits every request at Metadata level: who it saw asking, for the
        // forwarding tests.
        let audit_policy = logs.path().join("audit-policy.yaml");
        std::fs::write(
            &audit_policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
        )
        .unwrap();
        let audit_log = logs.path().join("audit.log");
        let adapter = spawn(
            &dir.join("adapter"),
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--lister-kubeconfig={kubeconfig}"),
                &format!("--authentication-kubeconfig={kubeconfig}"),
                &format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={adapter_port}"),
                &format!("--tls-cert-file={certs_dir}/tls.crt"),
                &format!("--tls-private-key-file={certs_dir}/tls.key"),
                &format!("--cert-dir={certs_dir}"),
                &format!("--metrics-service-address=localhost:{grpc}"),
                // Its plain /metrics port (it binds every interface; nothing here reads it).
                &format!("--port={}", free_port()),
                &format!(
                    "--requestheader-client-ca-file={}",
                    tls.path("requestheader-ca.crt")
                ),
                "--requestheader-allowed-names=front-proxy-client,levee-delegate",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                &format!("--audit-policy-file={}", audit_policy.display()),
                &format!("--audit-log-path={}", audit_log.display()),
                "--zap-log-level=info",
                "--zap-encoder=console",
            ],
            &logs.path().join("adapter.log"),
        );
        let keda = Self {
            operator,
            adapter,
            adapter_port,
            tls,
            _certs: certs,
            logs,
        };
        wait_until("KEDA's operator /readyz", Duration::from_secs(60), || {
            http_ok(health, "/readyz").then_some(())
        });
        keda
    }

    /// Registers the adapter as `v1beta1.external.metrics.k8s.io` (an ExternalName Service
    /// `keda/keda-metrics-apiserver` naming localhost) and waits until it is Available.
    pub fn serve_external_metrics(&self) {
        let ca = std::fs::read(self.tls.path("ca.crt")).unwrap();
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let port = self.adapter_port;
        apply_objects(
            &[
                json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": ADAPTER_SERVICE, "namespace": KEDA_NAMESPACE},
                    "spec": {"type": "ExternalName", "externalName": "localhost",
                             "ports": [{"name": "https", "port": port, "targetPort": port}]}}),
                json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                    "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
                    "spec": {"service": {"name": ADAPTER_SERVICE, "namespace": KEDA_NAMESPACE, "port": port},
                             "group": "external.metrics.k8s.io", "version": "v1beta1",
                             "groupPriorityMinimum": 100, "versionPriority": 100, "caBundle": ca}}),
            ],
            &[],
        );
        wait_until(
            "KEDA's adapter Available as v1beta1.external.metrics.k8s.io",
            Duration::from_secs(90),
            || {
                let service = kubectl_json(&["get", "apiservice", "v1beta1.external.metrics.k8s.io"]);
                available(&service).then_some(())
            },
        );
    }

    /// A Secret and a TriggerAuthentication `levee-scaler` in `namespace` with what KEDA needs to
    /// call levee's scaler: the CA to verify levee, and its client certificate.
    pub fn trigger_authentication(&self, namespace: &str) {
        let read = |name: &str| std::fs::read_to_string(self.tls.path(name)).unwrap();
        apply_objects(
            &[
                json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "levee-scaler", "namespace": namespace},
                    "stringData": {"ca.crt": read("ca.crt"), "tls.crt": read("client.crt"), "tls.key": read("client.key")}}),
                json!({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                    "metadata": {"name": "levee-scaler", "namespace": namespace},
                    "spec": {"secretTargetRef": [
                        {"parameter": "caCert", "name": "levee-scaler", "key": "ca.crt"},
                        {"parameter": "tlsClientCert", "name": "levee-scaler", "key": "tls.crt"},
                        {"parameter": "tlsClientKey", "name": "levee-scaler", "key": "tls.key"}]}}),
            ],
            &[],
        );
    }

    /// levee's flags for a serving certificate KEDA trusts and an external scaler on `port` that
    /// only KEDA's client certificate (CN `keda-operator`) may call.
    pub fn levee_flags(&self, port: u16) -> Vec<String> {
        vec![
            format!("--tls-cert-file={}", self.tls.path("levee.crt")),
            format!("--tls-key-file={}", self.tls.path("levee.key")),
            format!("--external-scaler-addr=127.0.0.1:{port}"),
            format!("--external-scaler-client-ca-file={}", self.tls.path("ca.crt")),
            "--external-scaler-client-names=keda-operator".to_string(),
        ]
    }

    /// The resident memory (VmRSS, KiB) of the operator and of the adapter.
    pub fn rss_kib(&self) -> (Option<u64>, Option<u64>) {
        (
            crate::process_status_kib(self.operator.id(), "VmRSS:"),
            crate::process_status_kib(self.adapter.id(), "VmRSS:"),
        )
    }

    /// Stops the metrics adapter (a crashed or uninstalled KEDA), leaving the operator.
    pub fn stop_adapter(&mut self) {
        let _ = self.adapter.kill();
        let _ = self.adapter.wait();
    }

    /// The users the adapter's audit log shows asking for a URI that contains `uri_part`.
    pub fn audited_users(&self, uri_part: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.logs.path().join("audit.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| {
                event["requestURI"]
                    .as_str()
                    .is_some_and(|uri| uri.contains(uri_part))
            })
            .filter_map(|event| event["user"]["username"].as_str().map(str::to_string))
            .collect()
    }

    /// The operator's and the adapter's logs.
    pub fn logs(&self) -> String {
        ["operator.log", "adapter.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.logs.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "---- KEDA {name} (last 40 lines) ----\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Keda {
    fn drop(&mut self) {
        for child in [&mut self.operator, &mut self.adapter] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The vendored `proto/externalscaler.proto` and the one in the KEDA module that was built.
pub fn external_scaler_protos() -> (String, String) {
    let ours = std::fs::read_to_string(repo_root().join("proto/externalscaler.proto")).unwrap();
    let theirs =
        std::fs::read_to_string(keda_source().join("pkg/scalers/externalscaler/externalscaler.proto"))
            .unwrap();
    (ours, theirs)
}

fn spawn(binary: &std::path::Path, args: &[&str], log: &std::path::Path) -> Child {
    spawn_with(binary, args, &[], log)
}

fn spawn_with(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)], log: &std::path::Path) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        // All namespaces; KEDA's own namespace (Secrets of ClusterTriggerAuthentications).
        .env("WATCH_NAMESPACE", "")
        .env("KEDA_CLUSTER_OBJECT_NAMESPACE", KEDA_NAMESPACE)
        .env("POD_NAMESPACE", KEDA_NAMESPACE)
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}

/// Whether a plain-HTTP GET of `path` on loopback `port` answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}
