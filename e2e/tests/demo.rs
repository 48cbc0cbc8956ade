//! `make demo` works: the script brings up its own control plane and Redis, installs the chart,
//! and must see the circuit open, the producers held back, the workers scale out and back in, and
//! everything recover; then it stops what it started. (CI runs it with the debug build.)

use levee_e2e::repo_root;
use std::process::Command;

#[test]
fn make_demo_shows_the_circuit_the_producers_and_the_workers_and_recovers() {
    let binary = std::env::var_os("LEVEE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/levee"));
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .env("LEVEE_BIN", &binary)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "levee is running; the external metrics API is Available through the aggregator",
        "Open Critical",
        "producers accepting=0/3 in-service=0/3",
        "HalfOpen",
        "Closed -> Open: pending",
        "HalfOpen -> Closed: pending",
        "done: the burst opened the circuit",
    ] {
        assert!(stdout.contains(line), "demo output lacks {line:?}:\n{stdout}");
    }
    let peak_workers: u32 = stdout
        .split("workers scaled 1 -> ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no scaling summary in:\n{stdout}"));
    assert!(
        peak_workers > 1,
        "the HPA did not scale the workers out:\n{stdout}"
    );
    let work = stdout
        .lines()
        .find_map(|line| line.split("work dir ").nth(1))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the demo did not name its work dir:\n{stdout}"));
    assert!(
        !std::path::Path::new(work).exists(),
        "the demo left {work} behind"
    );
}
