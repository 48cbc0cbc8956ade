//! Shared helpers for levee's end-to-end tests: `kubectl` against the cluster `KUBECONFIG` names
//! (the local control plane under `make e2e`), and namespaces that clean up after themselves.

use std::io::Write;
use std::process::{Command, Output, Stdio};

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
    kubectl_ok(
        &[
            "wait",
            "--for",
            "condition=Established",
            "crd/backpressurepolicies.levee.dev",
            "--timeout=60s",
        ],
        None,
    );
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
