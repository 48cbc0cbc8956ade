//! A policy on a Kafka consumer group, end to end on the local control plane: a real Kafka 4.4
//! broker (KRaft) with a SASL listener, the jobs and commits made with Kafka's own Java client,
//! `levee run` reading the group with the SCRAM credentials of an opted-in Secret. Its status and
//! `levee_queue_depth` equal the LAG `kafka-consumer-groups.sh --describe` prints, the latency
//! the records' own timestamps, the circuit opens on it; a wrong password is reported with what
//! to check while the other policy keeps working; the API server refuses a Redis queue under
//! spec.kafka with the CRD's own message.

use levee_e2e::fixture::PolicyYaml;
use levee_e2e::redis::kafka::{KafkaBroker, SASL_PASSWORD, SASL_USER};
use levee_e2e::*;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

fn secret(namespace: &str, name: &str, password: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{levee.dev/secret: 'true'}}}}\nstringData: {{username: {SASL_USER}, password: '{password}'}}\n"
    );
    let applied = kubectl(&["apply", "-f", "-"], Some(&yaml));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(now.as_millis()).unwrap()
}

#[test]
fn a_consumer_group_lag_opens_the_circuit_with_kafkas_own_figure() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-kafka");
    let ns = namespace.name.clone();
    let broker = KafkaBroker::start_sasl();
    broker.create_topic("orders", 3);
    let an_hour_ago = now_ms() - 3_600_000;
    broker.produce("orders", 0, 40, Some(an_hour_ago));
    broker.produce("orders", 1, 25, None);
    broker.commit("billing", "orders", 0, 10);
    broker.commit("billing", "orders", 1, 5);
    let expected = broker.tool_lag("billing", "orders");
    assert_eq!(expected, 50, "kafka-consumer-groups' own figure");
    secret(&ns, "kafka-auth", SASL_PASSWORD);
    secret(&ns, "kafka-wrong", "not-the-password");

    let levee = Levee::start(&ns, &[]);
    let sasl_server = format!("127.0.0.1:{}", broker.sasl_port.unwrap());
    let policy = |name: &str, secret: &str| {
        PolicyYaml::new(name, &ns, "")
            .without("redis")
            .set(
                "kafka",
                format!(
                    "{{bootstrapServers: ['{sasl_server}'], sasl: {{mechanism: SCRAM-SHA-512, credentialsSecretRef: {{name: {secret}}}}}}}"
                ),
            )
            .set("queues", "[{name: orders, type: kafka, topic: orders, consumerGroup: billing}]")
            .set("thresholds", "{warning: 20, critical: 40, recovery: 5}")
            .without("targets")
    };
    policy("billing", "kafka-auth")
        .set(
            "scaleTarget",
            "{kind: Deployment, name: billing-worker, maxReplicas: 20, pendingPerReplica: 10}",
        )
        .apply();
    policy("locked-out", "kafka-wrong").apply();
    let status = wait_until("the policy reports the group's lag", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "billing", "-n", &ns]);
        (policy["status"]["pending"] == expected && policy["status"]["state"] == "Open")
            .then(|| policy["status"].clone())
    });
    assert_eq!(status["queues"][0]["depth"], expected, "{status}");
    let latency = status["queues"][0]["latencySeconds"]
        .as_f64()
        .expect("latencySeconds");
    // As old as the records' own timestamps when status was written: between an hour and their
    // age now.
    let age_now = (now_ms() - an_hour_ago) as f64 / 1000.0;
    assert!(
        (3600.0..=age_now + 1.0).contains(&latency),
        "{latency} s, the records being {age_now} s old"
    );
    assert_eq!(status["queues"][0]["partitions"], 3, "{status}");
    assert_eq!(status["queues"][0]["maxPartitionLag"], 30, "partition 0: 40 − 10");
    // Three partitions: a fourth consumer would sit idle, so the HPA stops at three.
    let capped = wait_until("the HPA is capped at the partitions", PATIENCE, || {
        let hpa = kubectl_json(&["get", "hpa", "levee-billing", "-n", &ns]);
        (hpa["spec"]["maxReplicas"] == 3).then_some(hpa)
    });
    assert_eq!(capped["spec"]["minReplicas"], 1);
    let condition = wait_until("status says the HPA is capped", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "billing", "-n", &ns]);
        policy["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "ScaleCapped").cloned())
    });
    assert_eq!(condition["status"], "True", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("maxReplicas 20 capped at 3"),
        "{condition}"
    );
    let series = format!("levee_queue_depth{{namespace=\"{ns}\",policy=\"billing\",queue=\"orders\"}}");
    assert_eq!(levee.metric(&series), Some(expected as f64));

    // Work done moves the figure as Kafka's tool sees it.
    broker.commit("billing", "orders", 0, 40);
    let after = broker.tool_lag("billing", "orders");
    wait_until("the policy follows the commit", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "billing", "-n", &ns]);
        (policy["status"]["pending"] == after).then_some(())
    });

    let refused = wait_until("the wrong password is reported", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "locked-out", "-n", &ns]);
        policy["status"]["conditions"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == "BackendReachable" && c["status"] == "False")
            })
            .cloned()
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("check the username and password in spec.kafka.sasl.credentialsSecretRef"),
        "{refused}"
    );

    let mixed = PolicyYaml::new("mixed", &ns, "")
        .without("redis")
        .set(
            "kafka",
            format!("{{bootstrapServers: ['{}']}}", broker.bootstrap()),
        )
        .set("queues", "[{name: jobs, type: bullmq, key: jobs}]");
    let refused = kubectl(&["apply", "-f", "-"], Some(&mixed.yaml()));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a bullmq queue under spec.kafka is refused"
    );
    assert!(
        said.contains("under spec.kafka every queue is type kafka"),
        "{said}"
    );
}
