//! A policy on a NATS JetStream consumer, end to end on the local control plane: a real
//! nats-server, the work made with nats-py, `levee run` reading the consumer. Its status and
//! `levee_queue_depth` equal what NATS's own client reads (unprocessed + outstanding acks), the
//! circuit opens on it, and the API server refuses a policy that mixes backends with the CRD's
//! own message.

use levee_e2e::fixture::PolicyYaml;
use levee_e2e::redis::nats::NatsServer;
use levee_e2e::*;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn a_jetstream_consumer_backlog_opens_the_circuit_with_the_brokers_own_figure() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-nats");
    let ns = namespace.name.clone();
    let nats = NatsServer::start();
    // 40 published, 15 delivered of which 6 acknowledged: 25 unprocessed, 9 outstanding acks.
    nats.jetstream(&["fill", "EVENTS", "events", "writer", "40", "15", "6"]);
    let expected = nats.unprocessed_and_outstanding("EVENTS", "writer", &[]);
    assert_eq!(expected, 34, "nats-py's own figure");

    let levee = Levee::start(&ns, &[]);
    PolicyYaml::new("events", &ns, "")
        .without("redis")
        .set("nats", format!("{{url: '{}'}}", nats.url()))
        .set(
            "queues",
            "[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]",
        )
        .set("thresholds", "{warning: 20, critical: 30, recovery: 5}")
        .without("targets")
        .apply();
    let status = wait_until("the policy reports the consumer's backlog", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "events", "-n", &ns]);
        (policy["status"]["pending"] == expected && policy["status"]["state"] == "Open")
            .then(|| policy["status"].clone())
    });
    assert_eq!(status["queues"][0]["name"], "events");
    assert_eq!(status["queues"][0]["depth"], expected, "{status}");
    let series = format!("levee_queue_depth{{namespace=\"{ns}\",policy=\"events\",queue=\"events\"}}");
    assert_eq!(
        levee.metric(&series),
        Some(expected as f64),
        "levee exports the consumer's depth"
    );

    let mixed = PolicyYaml::new("mixed", &ns, "")
        .without("redis")
        .set("nats", format!("{{url: '{}'}}", nats.url()))
        .set("queues", "[{name: jobs, type: list, key: jobs}]");
    let refused = kubectl(&["apply", "-f", "-"], Some(&mixed.yaml()));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a list queue under spec.nats is refused"
    );
    assert!(
        said.contains("under spec.nats every queue is type jetstream"),
        "{said}"
    );
}
