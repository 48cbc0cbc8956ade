//! The local control plane's audit log (`logs/audit.jsonl` beside the KUBECONFIG, see
//! e2e/controlplane/README.md): every write to the objects levee acts on, with the caller's
//! User-Agent, which names the levee replica that made it (`levee/<version> (<identity>)`).

use jiff::Timestamp;
use serde_json::Value;
use std::path::PathBuf;

/// One write the API server answered.
#[derive(Clone, Debug)]
pub struct Write {
    /// When the answer was sent (the API server's clock, as for every other write).
    pub at: Timestamp,
    /// The levee replica that made it; `None` for any other caller.
    pub replica: Option<String>,
    pub verb: String,
    /// `pods`, `leases`, `backpressurepolicies`, ...
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: String,
    pub name: String,
    /// The answer's HTTP status.
    pub code: u16,
}

impl Write {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn parse(event: &Value) -> Option<Self> {
        let object = &event["objectRef"];
        let text = |value: &Value| value.as_str().map(str::to_string);
        Some(Self {
            at: event["stageTimestamp"].as_str()?.parse().ok()?,
            replica: event["userAgent"].as_str().and_then(replica_of),
            verb: text(&event["verb"])?,
            resource: text(&object["resource"])?,
            subresource: text(&object["subresource"]),
            namespace: text(&object["namespace"]).unwrap_or_default(),
            name: text(&object["name"]).unwrap_or_default(),
            code: u16::try_from(event["responseStatus"]["code"].as_u64()?).ok()?,
        })
    }
}

/// `shard-a` of `levee/0.1.0 (shard-a)`.
fn replica_of(user_agent: &str) -> Option<String> {
    let rest = user_agent.strip_prefix("levee/")?;
    let (_, identity) = rest.split_once(" (")?;
    identity.strip_suffix(')').map(str::to_string)
}

/// Where the cluster of `KUBECONFIG` keeps its audit log.
pub fn log_path() -> PathBuf {
    let kubeconfig = std::env::var_os("KUBECONFIG").expect("KUBECONFIG names the local control plane");
    PathBuf::from(kubeconfig)
        .parent()
        .expect("the KUBECONFIG's directory")
        .join("logs/audit.jsonl")
}

/// Every write logged so far, in the log's order. Panics when there is no log: a check that read
/// nothing would hold for anything.
pub fn writes() -> Vec<Write> {
    let path = log_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("the control plane's audit log {}: {error}", path.display()));
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["stage"] == "ResponseComplete")
        .filter_map(|event| Write::parse(&event))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_levee_user_agent_names_the_replica() {
        assert_eq!(replica_of("levee/0.1.0 (shard-a)").as_deref(), Some("shard-a"));
        assert_eq!(replica_of("levee/0.1.0"), None);
        assert_eq!(replica_of("kubectl/v1.35.0 (linux/amd64)"), None);
    }

    #[test]
    fn an_audit_event_reads_as_a_write() {
        let event = serde_json::json!({
            "stage": "ResponseComplete", "verb": "patch", "userAgent": "levee/0.1.0 (shard-b)",
            "objectRef": {"resource": "pods", "subresource": "status", "namespace": "t", "name": "p-1"},
            "responseStatus": {"code": 200}, "stageTimestamp": "2026-12-04T08:01:02.123456Z",
        });
        let write = Write::parse(&event).unwrap();
        assert_eq!(write.replica.as_deref(), Some("shard-b"));
        assert_eq!(
            (write.resource.as_str(), write.subresource.as_deref()),
            ("pods", Some("status"))
        );
        assert!(write.succeeded());
        assert_eq!(write.at.to_string(), "2026-12-04T08:01:02.123456Z");
    }
}
