//! The policies the integration tests hand to the `levee` binary, and where they put them.

/// `ns1/small`: two list queues (`jobs`, `other`) on a Redis nobody listens on (tests pass
/// `--redis-url`), 300 ms timeout, thresholds 3/5/1 (warning/critical/recovery). Tests derive
/// broken or faster variants from it by replacing text.
pub const SMALL_POLICY: &str = "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {name: small, namespace: ns1}
spec:
  redis: {url: 'redis://127.0.0.1:1/0', timeout: 300ms}
  queues:
    - {name: jobs, type: list, key: jobs}
    - {name: other, type: list, key: other}
  thresholds: {warning: 3, critical: 5, recovery: 1}
";

/// Writes `body` to `policy.yaml` in `dir` and returns its path.
pub fn write_policy(dir: &tempfile::TempDir, body: &str) -> String {
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}
