//! A policy on a NATS JetStream consumer, end to end on the local control plane: a real
//! nats-server, the work made with nats-py, `levee run` reading the consumer. Its status and
//! `levee_queue_depth` equal what NATS's own client reads (unprocessed + outstanding acks), the
//! circuit opens on it, and the API server refuses a policy that mixes backends with the CRD's
//! own message. A server that admits only JWT users over TLS is read with the `.creds` file and
//! the CA from Secrets; a wrong CA says which field to check.

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
    assert_eq!(
        nats.consumer_info_tool("EVENTS", "writer"),
        expected,
        "nats consumer info's"
    );

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

/// A Secret from `files` (key = path), opted in with levee's label.
fn secret_from_files(namespace: &str, name: &str, files: &[(&str, String)]) {
    let mut args = vec!["create", "secret", "generic", name, "-n", namespace];
    let pairs: Vec<String> = files
        .iter()
        .map(|(key, path)| format!("--from-file={key}={path}"))
        .collect();
    args.extend(pairs.iter().map(String::as_str));
    kubectl_ok(&args, None);
    kubectl_ok(
        &["label", "secret", name, "-n", namespace, "levee.dev/secret=true"],
        None,
    );
}

/// A server that lets only JWT users in, over TLS: levee reads it with the `.creds` file and the
/// CA from opted-in Secrets (its figure equal to nats-py's with the same file); a policy whose CA
/// Secret holds another CA is `BackendReachable=False` saying which field to check, Ready
/// `NatsUnreachable`, while the first keeps working.
#[test]
fn creds_and_a_tls_ca_come_from_secrets_and_a_wrong_ca_says_what_to_change() {
    install_crd();
    let namespace = TestNamespace::create("levee-e2e-nats-tls");
    let ns = namespace.name.clone();
    let jwt_tls = levee_e2e::redis::nats::JwtTlsNats::start();
    let nats = &jwt_tls.server;
    let other = levee_e2e::redis::TlsFiles::generate();
    let access = jwt_tls.access();
    let access: Vec<&str> = access.iter().map(String::as_str).collect();
    let mut fill = vec!["fill", "EVENTS", "events", "writer", "12", "5", "2"];
    fill.extend(&access);
    nats.jetstream(&fill);
    let expected = nats.unprocessed_and_outstanding("EVENTS", "writer", &access);
    assert_eq!(expected, 10, "nats-py's own figure");

    secret_from_files(&ns, "nats-auth", &[("creds", jwt_tls.creds())]);
    secret_from_files(&ns, "nats-ca", &[("ca.crt", jwt_tls.ca())]);
    secret_from_files(&ns, "other-ca", &[("ca.crt", other.path("ca.crt"))]);
    let _levee = Levee::start(&ns, &[]);
    for (name, ca) in [("events", "nats-ca"), ("mistrusted", "other-ca")] {
        PolicyYaml::new(name, &ns, "")
            .without("redis")
            .set(
                "nats",
                format!(
                    "{{url: '{}', credentialsSecretRef: {{name: nats-auth}}, tls: {{caSecretRef: {{name: {ca}}}}}}}",
                    nats.url()
                ),
            )
            .set("queues", "[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]")
            .set("thresholds", "{warning: 20, critical: 30, recovery: 5}")
            .without("targets")
            .apply();
    }
    wait_until(
        "the policy reads the consumer over TLS as a JWT user",
        PATIENCE,
        || {
            let policy = kubectl_json(&["get", "bpp", "events", "-n", &ns]);
            (policy["status"]["pending"] == expected).then_some(())
        },
    );
    let conditions = wait_until("the mistrusted policy says why", PATIENCE, || {
        let policy = kubectl_json(&["get", "bpp", "mistrusted", "-n", &ns]);
        let conditions = policy["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == "BackendReachable" && c["status"] == "False")
            .then_some(conditions)
    });
    let reachable = conditions
        .iter()
        .find(|c| c["type"] == "BackendReachable")
        .unwrap();
    let message = reachable["message"].as_str().unwrap_or_default();
    assert!(message.contains("check spec.nats.tls.caSecretRef"), "{reachable}");
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["reason"], "NatsUnreachable", "{ready}");
    assert!(
        conditions.iter().all(|c| c["type"] != "RedisReachable"),
        "a NATS policy carries no Redis-named condition: {conditions:?}"
    );
}
