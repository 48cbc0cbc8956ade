//! Shared helpers for levee's end-to-end tests: `kubectl` against the cluster `KUBECONFIG` names
//! (the local control plane under `make e2e`), and namespaces that clean up after themselves.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod audit;
pub mod fixture;
pub mod keda;
pub mod partition;

/// Real `redis-server` processes (shared with the levee crate's tests).
#[path = "../../tests/support/mod.rs"]
pub mod redis;

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs kubectl with `stdin`; panics with a hint when no cluster is configured.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: run the end-to-end tests with `make e2e`, which starts the local control plane"
    );
    let mut child = Command::new("kubectl")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is on PATH (make e2e installs it into .cache/bin)");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs helm (from `.cache/bin`, on PATH under `make e2e`) in the repository root.
pub fn helm(args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("helm is on PATH (make e2e installs it into .cache/bin)")
}

/// `helm template` of `charts/levee` as `release` in `namespace` with `--set` values; the
/// rendered objects, parsed.
pub fn render_chart(release: &str, namespace: &str, sets: &[&str], show_only: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, "charts/levee", "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    for template in show_only {
        args.extend(["--show-only", template]);
    }
    let output = helm(&args);
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&output.stdout))
}

/// The first rendered object of `kind`; panics when the chart rendered none.
pub fn rendered<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// A new directory holding a TLS Secret's `ca.crt`, `tls.crt` and `tls.key` (decoded), as a pod
/// that mounts the Secret sees them.
pub fn secret_files(secret: &Value) -> tempfile::TempDir {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        let encoded = secret["data"][name]
            .as_str()
            .unwrap_or_else(|| panic!("the Secret has no {name}"));
        let pem = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    dir
}

/// The non-empty documents of a multi-document YAML text.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).expect("valid YAML"))
        .filter(|document: &Value| !document.is_null())
        .collect()
}

/// Applies objects (a `List` of them) with kubectl; returns stdout.
pub fn apply_objects(objects: &[Value], extra: &[&str]) -> String {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut args = vec!["apply", "-f", "-"];
    args.extend(extra);
    kubectl_ok(&args, Some(&list.to_string()))
}

/// Runs kubectl and returns stdout, panicking with stderr on failure.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl(args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Installs (or updates) the CRD from `crds/` and waits until it is served.
pub fn install_crd() {
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "crds/levee.dev_backpressurepolicies.yaml",
        ],
        None,
    );
    wait_crd_established("backpressurepolicies.levee.dev");
}

/// Waits until the CRD `name` is served. `kubectl wait` fails at once while a CRD just created
/// has no status conditions yet ("accessor error: <nil>"), so it is asked again.
pub fn wait_crd_established(name: &str) {
    let crd = format!("crd/{name}");
    let args = [
        "wait",
        "--for",
        "condition=Established",
        crd.as_str(),
        "--timeout=10s",
    ];
    wait_until(&format!("{crd} Established"), Duration::from_secs(60), || {
        kubectl(&args, None).status.success().then_some(())
    });
}

/// Deletes the APIService `v1beta1.external.metrics.k8s.io` when dropped, however the test ends
/// (one server owns it at a time: levee's, or KEDA's adapter).
pub struct ApiServiceGuard;

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

/// Whether an APIService is `Available=True`.
pub fn available(apiservice: &Value) -> bool {
    apiservice["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True")
}

/// `kubectl get --raw path`, parsed; the error is what kubectl printed (the server's refusal).
pub fn raw_get(path: &str) -> Result<Value, String> {
    let output = kubectl(&["get", "--raw", path], None);
    if output.status.success() {
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The replica count a Deployment asks for (`spec.replicas`).
pub fn deployment_replicas(namespace: &str, name: &str) -> i64 {
    kubectl_json(&["get", "deployment", name, "-n", namespace])["spec"]["replicas"]
        .as_i64()
        .unwrap_or(0)
}

/// A namespace of its own for one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn create(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{}-{nanos:x}", std::process::id());
        kubectl_ok(&["create", "namespace", &name], None);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// Runs kubectl and parses its JSON output.
pub fn kubectl_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(&all, None)).expect("kubectl printed JSON")
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address at which the cluster reaches this machine, when that is not localhost: set by
/// `make e2e-kind` (the kind network's gateway). levee's metrics API then listens on every
/// interface and the APIService's ExternalName Service names this address.
pub fn host_address() -> Option<String> {
    std::env::var("LEVEE_E2E_HOST_ADDRESS")
        .ok()
        .filter(|address| !address.is_empty())
}

/// The namespace levee's ServiceAccount and Lease live in during the tests.
pub const LEVEE_NAMESPACE: &str = "levee-system";

/// Creates levee's namespace unless it exists.
pub fn create_levee_namespace() {
    let namespace =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LEVEE_NAMESPACE}});
    apply_objects(&[namespace], &[]);
}

/// A kubeconfig for levee's own ServiceAccount, bound to exactly the RBAC the Helm chart installs,
/// so every test also proves that RBAC is enough.
pub fn levee_kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        create_levee_namespace();
        let rbac = render_chart(
            "levee",
            LEVEE_NAMESPACE,
            &[],
            &["templates/serviceaccount.yaml", "templates/rbac.yaml"],
        );
        apply_objects(&rbac, &[]);
        let token = kubectl_ok(
            &["create", "token", "levee", "-n", LEVEE_NAMESPACE, "--duration=2h"],
            None,
        );
        let admin = kubectl_json(&["config", "view", "--raw", "--minify"]);
        let cluster = &admin["clusters"][0]["cluster"];
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": "levee", "user": {"token": token.trim()}}],
            "contexts": [{"name": "levee", "context": {"cluster": "e2e", "user": "levee"}}],
            "current-context": "levee",
        });
        let path = repo_root().join("target/e2e-levee.kubeconfig");
        std::fs::write(&path, serde_json::to_string_pretty(&kubeconfig).unwrap()).unwrap();
        path
    })
    .clone()
}

/// The Leases of levee's replicas in the ring `ring` (`--ownership=shards`) in `namespace`.
pub fn ring_leases(namespace: &str, ring: &str) -> Vec<Value> {
    let leases = kubectl_json(&[
        "get",
        "leases",
        "-n",
        namespace,
        "-l",
        &format!("levee.dev/shards={ring}"),
    ]);
    leases["items"].as_array().cloned().unwrap_or_default()
}

/// The holders of those Leases.
pub fn ring_holders(namespace: &str, ring: &str) -> std::collections::BTreeSet<String> {
    ring_leases(namespace, ring)
        .iter()
        .filter_map(|lease| lease["spec"]["holderIdentity"].as_str().map(str::to_string))
        .collect()
}

/// A file holding a token of levee's ServiceAccount for the audience `levee-peers`, as the chart
/// projects into each pod (`--peer-token-file`).
pub fn peer_token_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        levee_kubeconfig();
        let token = kubectl_ok(
            &[
                "create",
                "token",
                "levee",
                "-n",
                LEVEE_NAMESPACE,
                "--audience",
                levee::metrics_api::routes::PEER_AUDIENCE,
                "--duration=2h",
            ],
            None,
        );
        let path = repo_root().join("target/e2e-peer.token");
        std::fs::write(&path, token.trim()).unwrap();
        path
    })
    .clone()
}

/// The flags that make a replica share what it samples with its peers, as the chart sets them:
/// `--peer-url` on its metrics API port `api_port`, and the token it shows them.
pub fn peer_args(api_port: u16) -> [String; 2] {
    [
        format!("--peer-url=https://127.0.0.1:{api_port}"),
        format!("--peer-token-file={}", peer_token_file().display()),
    ]
}

/// levee as the cluster's external metrics API: the chart's own metrics API objects (its generated
/// CA and serving certificate, the Service, ExternalName `localhost` or `host_address()` since
/// there is no kube-proxy here, and the APIService with the CA as caBundle) rendered with `sets`,
/// and levee watching `namespace` with `flags`, serving the chart's certificate on the chart's
/// port. The APIService is deleted when this is dropped.
pub struct ServedMetricsApi {
    pub levee: Levee,
    _apiservice: ApiServiceGuard,
    _certificate: tempfile::TempDir,
}

impl ServedMetricsApi {
    /// Starts levee and registers it; returns once the APIService is Available.
    pub fn start(namespace: &str, sets: &[&str], flags: &[&str]) -> Self {
        let api_port = redis::free_port();
        let mut all_sets = vec![
            format!("metricsApi.service.port={api_port}"),
            format!(
                "metricsApi.service.externalName={}",
                host_address().unwrap_or_else(|| "localhost".into())
            ),
        ];
        all_sets.extend(sets.iter().map(|set| set.to_string()));
        let all_sets: Vec<&str> = all_sets.iter().map(String::as_str).collect();
        let objects = render_chart(
            "levee",
            LEVEE_NAMESPACE,
            &all_sets,
            &["templates/metrics-api.yaml"],
        );
        let certificate = secret_files(rendered(&objects, "Secret"));
        let (cert, key) = (
            certificate.path().join("tls.crt"),
            certificate.path().join("tls.key"),
        );
        let mut args = vec![
            "--leader-elect=false",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ];
        args.extend(flags);
        let levee = Levee::start_with_api_port(namespace, &args, api_port);
        let apiservice = ApiServiceGuard;
        create_levee_namespace();
        apply_objects(&objects, &[]);
        wait_until("levee's APIService Available", Duration::from_secs(90), || {
            available(&kubectl_json(&[
                "get",
                "apiservice",
                "v1beta1.external.metrics.k8s.io",
            ]))
            .then_some(())
        });
        Self {
            levee,
            _apiservice: apiservice,
            _certificate: certificate,
        }
    }
}

/// A field in KiB of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, `VmHWM:`).
pub fn process_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `levee run` process, logging to a file that is printed when a test fails.
pub struct Levee {
    child: Child,
    pub metrics_port: u16,
    /// The port of its HTTPS external metrics API.
    pub api_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Levee {
    /// Starts levee watching `namespace`, as the levee ServiceAccount, with extra flags.
    pub fn start(namespace: &str, extra: &[&str]) -> Self {
        Self::start_with_api_port(namespace, extra, redis::free_port())
    }

    /// Two replicas electing a leader on the Lease `lease` (with `lease_flags`, e.g. a duration):
    /// `first`, started and holding the Lease, then `second`.
    pub fn leader_and_follower(namespace: &str, lease: &str, lease_flags: &[&str]) -> (Self, Self) {
        let replica = |identity: &str| {
            let mut args = vec!["--leader-election-name", lease, "--identity", identity];
            args.extend(lease_flags);
            Self::start(namespace, &args)
        };
        let first = replica("first");
        wait_until("first holds the lease", Duration::from_secs(30), || {
            (lease_holder(lease).as_deref() == Some("first")).then_some(())
        });
        (first, replica("second"))
    }

    /// Like `start`, its metrics API listening on 127.0.0.1:`api_port`.
    pub fn start_with_api_port(namespace: &str, extra: &[&str], api_port: u16) -> Self {
        let metrics_port = redis::free_port();
        let args = Self::run_args(namespace, extra, metrics_port, api_port);
        Self::launch(&args, &[], metrics_port, api_port)
    }

    /// Like `start_with_api_port`, with `env` added (a kubeconfig of its own, say).
    pub fn start_with_env(namespace: &str, extra: &[&str], env: &[(String, String)], api_port: u16) -> Self {
        let metrics_port = redis::free_port();
        let args = Self::run_args(namespace, extra, metrics_port, api_port);
        Self::launch(&args, env, metrics_port, api_port)
    }

    /// Like `start`, running `binary` (not LEVEE_BIN's) with `env` added: the scale benchmark
    /// compares builds on the same cluster.
    pub fn start_binary(binary: &Path, namespace: &str, extra: &[&str], env: &[(String, String)]) -> Self {
        Self::start_binary_with_api_port(binary, namespace, extra, env, redis::free_port())
    }

    /// Like `start_binary`, its metrics API listening on `api_port` (a replica's `--peer-url`).
    pub fn start_binary_with_api_port(
        binary: &Path,
        namespace: &str,
        extra: &[&str],
        env: &[(String, String)],
        api_port: u16,
    ) -> Self {
        let metrics_port = redis::free_port();
        let args = Self::run_args(namespace, extra, metrics_port, api_port);
        Self::launch_binary(binary, &args, env, metrics_port, api_port)
    }

    fn run_args(namespace: &str, extra: &[&str], metrics_port: u16, api_port: u16) -> Vec<String> {
        let listen = if host_address().is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut args: Vec<String> = [
            "run",
            "--watch-namespace",
            namespace,
            "--leader-election-namespace",
            LEVEE_NAMESPACE,
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--external-metrics-addr",
            &format!("{listen}:{api_port}"),
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        // The suites read /metrics on the plain port, from loopback, unless a test says otherwise.
        if !extra
            .iter()
            .any(|arg| arg.starts_with("--metrics-plain-loopback"))
        {
            args.push("--metrics-plain-loopback=true".into());
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    /// Runs levee with exactly `args` and `env` (plus its ServiceAccount's KUBECONFIG and
    /// RUST_LOG), its metrics server on `metrics_port`, and waits until it is ready.
    pub fn launch(args: &[String], env: &[(String, String)], metrics_port: u16, api_port: u16) -> Self {
        // LEVEE_BIN picks another build (the controller benchmark uses the release one).
        let binary = std::env::var_os("LEVEE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/levee"));
        Self::launch_binary(&binary, args, env, metrics_port, api_port)
    }

    fn launch_binary(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        metrics_port: u16,
        api_port: u16,
    ) -> Self {
        assert!(
            binary.is_file(),
            "{} is missing: run `cargo build` (make e2e does)",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("levee.log");
        let child = Command::new(binary)
            .args(args)
            .env("KUBECONFIG", levee_kubeconfig())
            .env("RUST_LOG", "info,levee=debug")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let levee = Self {
            child,
            metrics_port,
            api_port,
            log,
            _dir: dir,
        };
        wait_until("levee /readyz", Duration::from_secs(30), || {
            levee.get("/readyz").filter(|body| body == "ok").map(|_| ())
        });
        levee
    }

    /// GETs a path of the metrics server; `None` when it does not answer 200.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
    }

    /// The value of a metric series (`name{labels}` exactly as exposed); `None` when `/metrics`
    /// cannot be read or holds no such series, so a check on it cannot pass on nothing.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// The sum of every series of a metric; `None` when `/metrics` cannot be read. A labelled
    /// counter has no series until it is first counted, so a family without any sums to 0.
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        Some(
            text.lines()
                .filter(|line| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Its resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// Its resident anonymous memory (RssAnon: heap, stacks; not the mapped binary) in KiB.
    pub fn anon_rss_kib(&self) -> Option<u64> {
        self.status_kib("RssAnon:")
    }

    /// The most resident memory it has had (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        process_status_kib(self.child.id(), field)
    }

    /// The CPU time it has used so far (user + system), from /proc.
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which may hold spaces) start at "state" (field 3).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Linux reports CPU time in USER_HZ, 100 per second on every architecture it supports.
        Some(Duration::from_millis(ticks * 10))
    }

    /// Sends it SIGTERM without waiting (several replicas stopped together).
    pub fn signal_stop(&self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
    }

    /// Stops it like Kubernetes does (SIGTERM) and waits.
    pub fn stop(&mut self) {
        self.signal_stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Kills it without warning (a crash or a lost node).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Levee {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- levee log (last 60 lines) ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The status of a pod's condition of `type_` ("-" when it has none), from its JSON.
pub fn pod_condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// The holder of a Lease in levee's namespace, if any.
pub fn lease_holder(name: &str) -> Option<String> {
    let lease = kubectl(&["get", "lease", name, "-n", LEVEE_NAMESPACE, "-o", "json"], None);
    let lease: Value = serde_json::from_slice(&lease.stdout).ok()?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// A ValidatingAdmissionPolicy (and its binding) denying the requests `match_constraints`
/// selects unless `expression` holds: an API server that refuses some of levee's writes.
/// Removed when dropped.
pub struct AdmissionRefusal {
    name: String,
}

impl AdmissionRefusal {
    /// Refuses UPDATEs of `resources` (of `api_group`) in `namespace` unless `expression` holds.
    pub fn updates_in_namespace(
        namespace: &str,
        api_group: &str,
        resources: &[&str],
        expression: &str,
    ) -> Self {
        let name = format!("refuse-{}-{namespace}", resources[0].replace('/', "-"));
        let match_constraints = serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceRules": [{
                "apiGroups": [api_group], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": resources,
            }],
        });
        Self::install(&name, match_constraints, expression)
    }

    pub fn install(name: &str, match_constraints: Value, expression: &str) -> Self {
        let objects = serde_json::json!([
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": match_constraints,
                    "validations": [{"expression": expression, "message": "refused by the test"}],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Deny"]},
            },
        ]);
        apply_objects(objects.as_array().unwrap(), &[]);
        Self {
            name: name.to_string(),
        }
    }
}

impl Drop for AdmissionRefusal {
    fn drop(&mut self) {
        for kind in ["validatingadmissionpolicybinding", "validatingadmissionpolicy"] {
            let _ = kubectl(&["delete", kind, &self.name, "--ignore-not-found"], None);
        }
    }
}

/// A ServiceAccount allowed to `get` the non-resource URL `/metrics` (a ClusterRole and its
/// binding, deleted when this is dropped), and a token of it.
pub struct MetricsReader {
    pub token: String,
    rbac: String,
}

impl MetricsReader {
    /// The ServiceAccount `account` in `namespace`, created here.
    pub fn create(namespace: &str, account: &str) -> Self {
        kubectl_ok(&["create", "serviceaccount", account, "-n", namespace], None);
        let rbac = format!("levee-metrics-{namespace}-{account}");
        kubectl_ok(
            &[
                "create",
                "clusterrole",
                &rbac,
                "--verb=get",
                "--non-resource-url=/metrics",
            ],
            None,
        );
        kubectl_ok(
            &[
                "create",
                "clusterrolebinding",
                &rbac,
                "--clusterrole",
                &rbac,
                &format!("--serviceaccount={namespace}:{account}"),
            ],
            None,
        );
        Self {
            token: service_account_token(namespace, account),
            rbac,
        }
    }
}

impl Drop for MetricsReader {
    fn drop(&mut self) {
        for kind in ["clusterrolebinding", "clusterrole"] {
            let _ = kubectl(&["delete", kind, &self.rbac, "--ignore-not-found"], None);
        }
    }
}

/// A token of the ServiceAccount `account` in `namespace` (`kubectl create token`).
pub fn service_account_token(namespace: &str, account: &str) -> String {
    kubectl_ok(&["create", "token", account, "-n", namespace], None)
        .trim()
        .to_string()
}
