//! `levee check`'s rules, one bad input at a time, against the example policy.

use super::*;
use crate::fixtures::{self, set};

const VALID: &str = include_str!("../../../examples/policy.yaml");
const VALID_NATS: &str = include_str!("../../../examples/nats-policy.yaml");
const VALID_KAFKA: &str = include_str!("../../../examples/kafka-policy.yaml");

fn problems_of(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    problems_in(VALID, edit)
}

/// The problems of the example `valid` once `edit`ed.
fn problems_in(valid: &str, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut object: Value = serde_yaml::from_str(valid).unwrap();
    edit(&mut object);
    match check_object(&object) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

fn assert_one(problems: &[String], expected: &str) {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0], expected);
}

#[test]
fn the_example_policy_is_valid_and_gets_defaults() {
    let policy = check_object(&serde_yaml::from_str(VALID).unwrap()).expect("valid");
    assert_eq!(policy.spec.queues[0].weight, 1);
    assert_eq!(
        policy.spec.redis.as_ref().unwrap().mode,
        crate::api::RedisMode::Standalone
    );
    assert_eq!(policy.spec.targets[0].priority, 5);
    assert!(!policy.spec.dry_run);
}

#[test]
fn defaults_fill_a_minimal_policy() {
    let policy = check_object(&fixtures::policy_json()).expect("valid");
    let spec = policy.spec;
    assert_eq!(
        std::time::Duration::from(spec.sample_interval),
        std::time::Duration::from_secs(1)
    );
    assert_eq!(
        std::time::Duration::from(spec.redis.as_ref().unwrap().timeout),
        std::time::Duration::from_millis(500)
    );
    assert_eq!(
        std::time::Duration::from(spec.circuit.min_open_duration),
        std::time::Duration::from_secs(30)
    );
    assert_eq!(spec.circuit.half_open_max_priority, 5);
    assert_eq!(spec.circuit.open_max_priority, 0);
    assert_eq!(spec.on_sample_failure.after, 3);
    assert_eq!(spec.targets[0].priority, 10);
}

#[test]
fn threshold_order_is_enforced() {
    let problems = problems_of(|o| set(o, "/spec/thresholds/recovery", 20000.into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.thresholds: Invalid value: thresholds must satisfy recovery < warning < critical: lower recovery or raise critical",
    );
    let problems = problems_of(|o| set(o, "/spec/thresholds/warning", 50000.into()));
    assert_eq!(problems.len(), 1, "warning == critical is refused too");
}

#[test]
fn latency_thresholds_stand_alone_or_beside_depth_in_order() {
    let latency = serde_json::json!({"warning": "30s", "critical": "2m", "recovery": "10s"});
    let both = problems_of(|o| set(o, "/spec/thresholds/latency", latency.clone()));
    assert_eq!(both, Vec::<String>::new());
    let alone = problems_of(|o| set(o, "/spec/thresholds", serde_json::json!({"latency": latency})));
    assert_eq!(alone, Vec::<String>::new());
    let policy: Value = {
        let mut object: Value = serde_yaml::from_str(VALID).unwrap();
        set(
            &mut object,
            "/spec/thresholds",
            serde_json::json!({"latency": latency}),
        );
        object
    };
    let rules = check_object(&policy).unwrap().spec.circuit_rules();
    assert_eq!(rules.depth, None);
    assert_eq!(
        rules.latency.map(|l| l.critical),
        Some(std::time::Duration::from_secs(120))
    );
    let disordered = serde_json::json!({"warning": "30s", "critical": "20s", "recovery": "10s"});
    assert_one(
        &problems_of(|o| set(o, "/spec/thresholds/latency", disordered)),
        "jobs/rule-engine: spec.thresholds.latency: Invalid value: latency thresholds must satisfy recovery < warning < critical: lower recovery or raise critical",
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/thresholds", serde_json::json!({}))),
        "jobs/rule-engine: spec.thresholds: Invalid value: set the depth thresholds (warning, critical, recovery), latency or memory thresholds, or several of them",
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/thresholds", serde_json::json!({"critical": 10}))),
        "jobs/rule-engine: spec.thresholds: Invalid value: warning, critical and recovery go together: set all three or none",
    );
}

#[test]
fn memory_thresholds_in_one_unit_in_order_and_only_on_redis() {
    let memory = |w: &str, c: &str, r: &str| serde_json::json!({"warning": w, "critical": c, "recovery": r});
    for (w, c, r) in [
        ("70%", "85%", "60%"),
        ("9%", "10%", "0%"),
        ("1536Mi", "2048Mi", "1Mi"),
        ("2Gi", "3Gi", "1Gi"),
    ] {
        let alone = problems_of(|o| {
            set(
                o,
                "/spec/thresholds",
                serde_json::json!({"memory": memory(w, c, r)}),
            )
        });
        assert_eq!(alone, Vec::<String>::new(), "{w} {c} {r}");
    }
    let beside = problems_of(|o| set(o, "/spec/thresholds/memory", memory("70%", "85%", "60%")));
    assert_eq!(beside, Vec::<String>::new());
    let mut object: Value = serde_yaml::from_str(VALID).unwrap();
    set(
        &mut object,
        "/spec/thresholds",
        serde_json::json!({"memory": memory("70%", "100%", "60%")}),
    );
    let rules = check_object(&object).unwrap().spec.circuit_rules();
    assert_eq!(rules.depth, None);
    assert_eq!(
        rules.memory.map(|m| m.critical),
        Some(crate::circuit::MemoryAmount::Percent(100))
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/thresholds/memory", memory("85%", "70%", "60%"))),
        "jobs/rule-engine: spec.thresholds.memory: Invalid value: memory thresholds must satisfy recovery < warning < critical: lower recovery or raise critical",
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/thresholds/memory", memory("9%", "100%", "10%"))),
        "jobs/rule-engine: spec.thresholds.memory: Invalid value: memory thresholds must satisfy recovery < warning < critical: lower recovery or raise critical",
    );
    let mixed = problems_of(|o| set(o, "/spec/thresholds/memory", memory("1536Mi", "2Gi", "1Gi")));
    assert!(
        mixed
            .iter()
            .any(|p| p.contains("write the three memory thresholds in one unit")),
        "{mixed:#?}"
    );
    let percent_and_bytes = problems_of(|o| set(o, "/spec/thresholds/memory", memory("70%", "2Gi", "60%")));
    assert!(
        percent_and_bytes.iter().any(|p| p.contains("in one unit")),
        "{percent_and_bytes:#?}"
    );
    let bad = problems_of(|o| set(o, "/spec/thresholds/memory", memory("70%", "1.5Gi", "60%")));
    assert!(
        bad.iter()
            .any(|p| p.starts_with("jobs/rule-engine: spec.thresholds.memory.critical:")),
        "{bad:#?}"
    );
    let on_nats = problems_in(VALID_NATS, |o| {
        set(o, "/spec/thresholds/memory", memory("70%", "85%", "60%"))
    });
    assert_one(
        &on_nats,
        &format!(
            "{}: spec: Invalid value: thresholds.memory read Redis memory (INFO memory): they need spec.redis, not a NATS or Kafka backend",
            name_of(VALID_NATS)
        ),
    );
}

/// `namespace/name` of an example policy.
fn name_of(example: &str) -> String {
    let object: Value = serde_yaml::from_str(example).unwrap();
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or("default"),
        object["metadata"]["name"].as_str().unwrap()
    )
}

#[test]
fn latency_needs_a_queue_that_keeps_an_enqueue_time_and_its_reads() {
    let latency = serde_json::json!({"warning": "30s", "critical": "2m", "recovery": "10s"});
    let problems = problems_of(|o| {
        set(o, "/spec/thresholds/latency", latency.clone());
        set(
            o,
            "/spec/queues",
            serde_json::json!([{"name": "l", "type": "list", "key": "jobs"}]),
        );
    });
    assert_one(
        &problems,
        "jobs/rule-engine: spec: Invalid value: latency thresholds need a queue that keeps an enqueue time (sidekiq, rq, bullmq, stream, jetstream or kafka): list, zset and celery queues have no latency",
    );
    let problems = problems_of(|o| {
        set(o, "/spec/thresholds/latency", latency);
        set(o, "/spec/readLatency", false.into());
    });
    assert_one(
        &problems,
        "jobs/rule-engine: spec: Invalid value: latency thresholds need readLatency: true",
    );
}

#[test]
fn open_ahead_needs_depth_thresholds_and_a_sane_window() {
    assert!(problems_of(|o| set(o, "/spec/circuit/openAhead", "30s".into())).is_empty());
    let latency = serde_json::json!({"latency": {"warning": "30s", "critical": "2m", "recovery": "10s"}});
    let problems = problems_of(|o| {
        set(o, "/spec/circuit/openAhead", "30s".into());
        set(o, "/spec/thresholds", latency);
    });
    assert_one(
        &problems,
        "jobs/rule-engine: spec: Invalid value: circuit.openAhead forecasts when the backlog reaches thresholds.critical: set the depth thresholds too",
    );
    let problems = problems_of(|o| set(o, "/spec/circuit/forecastWindow", "2s".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.circuit.forecastWindow: Invalid value: \"2s\": must be between 5s and 1h, such as 1m",
    );
}

#[test]
fn a_queue_names_a_key_or_a_pattern_and_celery_only_a_key() {
    let problems = problems_of(|o| set(o, "/spec/queues/1/keyPattern", "jobs:*".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.queues[1]: Invalid value: set key (one queue) or keyPattern (every queue it matches), not both",
    );
    let pattern = serde_json::json!({"name": "all", "type": "sidekiq", "keyPattern": "*"});
    assert!(problems_of(|o| set(o, "/spec/queues/1", pattern)).is_empty());
    let celery = serde_json::json!({"name": "c", "type": "celery", "keyPattern": "*"});
    assert_one(
        &problems_of(|o| set(o, "/spec/queues/1", celery)),
        "jobs/rule-engine: spec.queues[1]: Invalid value: keyPattern does not apply to type celery: kombu keeps no registry of its queues; list each queue with key",
    );
    let neither = serde_json::json!({"name": "n", "type": "list"});
    assert_eq!(problems_of(|o| set(o, "/spec/queues/1", neither)).len(), 1);
}

#[test]
fn duplicate_queue_names_are_refused() {
    let problems = problems_of(|o| set(o, "/spec/queues/1/name", "events".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.queues: Invalid value: queue names must be unique: give every queue its own name",
    );
}

#[test]
fn a_sample_interval_under_100ms_is_refused() {
    for short in ["1ns", "0s", "99ms"] {
        let problems = problems_of(|o| set(o, "/spec/sampleInterval", short.into()));
        assert_one(
            &problems,
            &format!(
                "jobs/rule-engine: spec.sampleInterval: Invalid value: \"{short}\": must be at least 100ms, such as 1s or 500ms: shorter intervals busy-loop Redis and the API server"
            ),
        );
    }
    assert!(problems_of(|o| set(o, "/spec/sampleInterval", "100ms".into())).is_empty());
}

#[test]
fn max_replicas_is_bounded_and_policy_names_fit_a_label() {
    let problems = problems_of(|o| {
        set(
            o,
            "/spec/scaleTarget",
            serde_json::json!({"kind": "Deployment", "name": "w", "maxReplicas": 1001, "pendingPerReplica": 10}),
        )
    });
    assert_one(
        &problems,
        "jobs/rule-engine: spec.scaleTarget.maxReplicas: Invalid value: 1001: must be at most 1000: levee refuses to let one policy scale a workload further",
    );
    let long = "p".repeat(64);
    let problems = problems_of(|o| set(o, "/metadata/name", long.clone().into()));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("metadata.name must be at most 63 characters"),
        "{problems:?}"
    );
}

#[test]
fn non_positive_durations_are_refused() {
    for (pointer, field) in [
        ("/spec/redis/timeout", "spec.redis.timeout"),
        ("/spec/circuit/minOpenDuration", "spec.circuit.minOpenDuration"),
        ("/spec/circuit/alertAfter", "spec.circuit.alertAfter"),
    ] {
        let problems = problems_of(|o| set(o, pointer, "0s".into()));
        assert_eq!(problems.len(), 1, "{pointer}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!(
                "jobs/rule-engine: {field}: Invalid value: \"0s\": must be a positive duration"
            )),
            "{problems:?}"
        );
    }
}

#[test]
fn min_replicas_above_max_is_refused() {
    let problems = problems_of(|o| set(o, "/spec/scaleTarget/minReplicas", 21.into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.scaleTarget: Invalid value: minReplicas must not exceed maxReplicas",
    );
}

#[test]
fn priorities_start_at_one() {
    let problems = problems_of(|o| set(o, "/spec/targets/0/priority", 0.into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.targets[0].priority: Invalid value: 0: spec.targets[0].priority in body should be greater than or equal to 1",
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_named() {
    let problems = problems_of(|o| {
        set(
            o,
            "/spec/thresholds",
            serde_json::json!({"warning": "many", "critical": 5, "recovery": 1, "extra": 1}),
        )
    });
    assert_eq!(
        problems,
        vec![
            "jobs/rule-engine: spec.thresholds.extra: unknown field: remove it or check its spelling against `levee crd`",
            "jobs/rule-engine: spec.thresholds.warning: Invalid value: \"string\": spec.thresholds.warning in body must be of type integer: \"string\"",
        ]
    );
}

#[test]
fn missing_required_fields_are_named() {
    let problems = problems_of(|o| {
        o["spec"].as_object_mut().unwrap().remove("thresholds");
    });
    assert_one(&problems, "jobs/rule-engine: spec.thresholds: Required value");
}

#[test]
fn unsupported_queue_type_lists_the_supported_ones() {
    let problems = problems_of(|o| set(o, "/spec/queues/0/type", "bull".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.queues[0].type: Unsupported value: \"bull\": supported values: \"list\", \"zset\", \"stream\", \"bullmq\", \"celery\", \"rq\", \"sidekiq\", \"jetstream\", \"kafka\"",
    );
}

#[test]
fn type_specific_fields_need_their_type() {
    let problems = problems_of(|o| set(o, "/spec/queues/1/consumerGroup", "g".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.queues[1]: Invalid value: consumerGroup applies only to types stream and kafka: remove it or change the type",
    );
}

#[test]
fn passwords_in_the_url_are_refused() {
    let problems = problems_of(|o| set(o, "/spec/redis/url", "redis://user:hunter2@redis:6379".into()));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0],
        "jobs/rule-engine: spec.redis.url: Invalid value: \"redis://user:***@redis:6379\": must not contain a password: put it in a Secret and reference it with credentialsSecretRef",
        "the password itself is never echoed"
    );
}

#[test]
fn url_typos_are_refused() {
    let problems = problems_of(|o| set(o, "/spec/redis/url", "redis//redis:6379".into()));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "jobs/rule-engine: spec.redis.url: Invalid value: \"redis//redis:6379\": spec.redis.url in body should match"
        ),
        "{problems:?}"
    );
}

#[test]
fn sentinel_mode_needs_a_master_name() {
    let problems = problems_of(|o| set(o, "/spec/redis/mode", "Sentinel".into()));
    assert_one(
        &problems,
        "jobs/rule-engine: spec.redis: Invalid value: sentinelMaster is required when mode is Sentinel: name the master the sentinels monitor",
    );
}

#[test]
fn documents_mix_policies_with_other_kinds_and_report_yaml_errors() {
    let text = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{VALID}\n---\n");
    let checked = check_documents("f.yaml", &text);
    assert_eq!(checked.policies.len(), 1);
    assert!(checked.problems.is_empty());
    let broken = check_documents("f.yaml", &format!("{VALID}\n---\nkind: [unclosed\n"));
    assert_eq!(broken.policies.len(), 1);
    assert_eq!(broken.problems.len(), 1);
    assert!(
        broken.problems[0]
            .to_string()
            .starts_with("f.yaml document 2: (yaml): invalid YAML:"),
        "{:?}",
        broken.problems
    );
}

#[test]
fn wrong_api_version_and_missing_name_are_reported() {
    let problems = problems_of(|o| {
        set(o, "/apiVersion", "levee.dev/v1".into());
        o["metadata"].as_object_mut().unwrap().remove("name");
    });
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("apiVersion: Unsupported value: \"levee.dev/v1\""));
    assert!(problems[1].contains("metadata.name: Required value"));
}

#[test]
fn crd_names_and_columns() {
    let crd: Value = serde_yaml::from_str(&crate::api::crd_yaml()).unwrap();
    assert_eq!(crd["metadata"]["name"], "backpressurepolicies.levee.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "bpp");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["State", "Level", "Pending", "Critical", "Age"]);
}

#[test]
fn the_committed_crd_is_up_to_date() {
    let committed = include_str!("../../../crds/levee.dev_backpressurepolicies.yaml");
    assert!(
        committed == crate::api::crd_yaml(),
        "crds/levee.dev_backpressurepolicies.yaml is stale: run `make crds` (cargo run -- crd > crds/...)"
    );
}

fn nats_problems_of(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    problems_in(VALID_NATS, edit)
}

#[test]
fn a_policy_names_exactly_one_backend_and_its_queues_fit_it() {
    let policy = check_object(&serde_yaml::from_str(VALID_NATS).unwrap()).expect("the NATS example is valid");
    assert!(policy.spec.redis.is_none());
    assert_eq!(policy.spec.queues[0].queue_type, crate::api::QueueType::Jetstream);
    let one_backend = "jobs/event-writer: spec: Invalid value: name exactly one backend: spec.redis (Redis queues), spec.nats (JetStream consumers) or spec.kafka (Kafka consumer groups)";
    let both = nats_problems_of(|o| set(o, "/spec/redis", serde_json::json!({"url": "redis://r:6379"})));
    assert!(both.iter().any(|p| p == one_backend), "{both:#?}");
    let neither = nats_problems_of(|o| {
        o["spec"].as_object_mut().unwrap().remove("nats");
    });
    assert_one(&neither, one_backend);
    assert_one(
        &nats_problems_of(|o| {
            set(
                o,
                "/spec/queues/0",
                serde_json::json!({"name": "jobs", "type": "list", "key": "jobs"}),
            )
        }),
        "jobs/event-writer: spec: Invalid value: under spec.nats every queue is type jetstream: move Redis queues to a policy with spec.redis",
    );
    assert_one(
        &problems_of(|o| {
            set(
                o,
                "/spec/queues/0",
                serde_json::json!({"name": "e", "type": "jetstream", "stream": "S", "consumer": "c"}),
            )
        }),
        "jobs/rule-engine: spec: Invalid value: type jetstream reads a NATS JetStream consumer: it needs spec.nats, not spec.redis",
    );
    assert_one(
        &nats_problems_of(|o| {
            o["spec"]["queues"][0].as_object_mut().unwrap().remove("consumer");
        }),
        "jobs/event-writer: spec.queues[0]: Invalid value: type jetstream names a stream and a consumer (stream: EVENTS, consumer: writer), and no key or keyPattern",
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/queues/1/stream", "S".into())),
        "jobs/rule-engine: spec.queues[1]: Invalid value: stream and consumer apply only to type jetstream: remove them or change the type",
    );
    let dotted = nats_problems_of(|o| set(o, "/spec/queues/0/stream", "EVENTS.x".into()));
    assert!(
        dotted.iter().any(|p| p.contains("spec.queues[0].stream")),
        "{dotted:#?}"
    );
    let secret_in_url = nats_problems_of(|o| set(o, "/spec/nats/url", "nats://u:p@nats:4222".into()));
    assert!(
        secret_in_url
            .iter()
            .any(|p| p.contains("must not contain credentials")),
        "{secret_in_url:#?}"
    );
}

fn kafka_problems_of(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    problems_in(VALID_KAFKA, edit)
}

#[test]
fn a_kafka_policy_names_brokers_and_groups_and_only_kafka_queues() {
    let policy =
        check_object(&serde_yaml::from_str(VALID_KAFKA).unwrap()).expect("the Kafka example is valid");
    let kafka = policy.spec.kafka.as_ref().expect("spec.kafka");
    assert_eq!(kafka.bootstrap_servers.len(), 2);
    assert_eq!(
        policy.spec.queues[1].offset_reset,
        Some(crate::api::OffsetReset::Earliest)
    );
    let both = kafka_problems_of(|o| set(o, "/spec/redis", serde_json::json!({"url": "redis://r:6379"})));
    assert!(
        both.iter().any(|p| p == "jobs/billing-pipeline: spec: Invalid value: name exactly one backend: spec.redis (Redis queues), spec.nats (JetStream consumers) or spec.kafka (Kafka consumer groups)"),
        "{both:#?}"
    );
    assert_one(
        &kafka_problems_of(|o| {
            set(
                o,
                "/spec/queues/0",
                serde_json::json!({"name": "jobs", "type": "bullmq", "key": "jobs"}),
            )
        }),
        "jobs/billing-pipeline: spec: Invalid value: under spec.kafka every queue is type kafka: move the other queues to a policy with their own backend",
    );
    assert_one(
        &problems_of(|o| {
            set(
                o,
                "/spec/queues/0",
                serde_json::json!({"name": "k", "type": "kafka", "topic": "t", "consumerGroup": "g"}),
            )
        }),
        "jobs/rule-engine: spec: Invalid value: type kafka reads a Kafka consumer group's lag: it needs spec.kafka, not spec.redis",
    );
    assert_one(
        &kafka_problems_of(|o| {
            o["spec"]["queues"][0]
                .as_object_mut()
                .unwrap()
                .remove("consumerGroup");
        }),
        "jobs/billing-pipeline: spec.queues[0]: Invalid value: type kafka names a consumerGroup (and a topic, or every topic the group commits to), and no key or keyPattern",
    );
    assert_one(
        &problems_of(|o| set(o, "/spec/queues/1/topic", "t".into())),
        "jobs/rule-engine: spec.queues[1]: Invalid value: topic and offsetReset apply only to type kafka: remove them or change the type",
    );
    for bad in ["kafka://k:9092", "k", "user:pw@k:9092", "k:port"] {
        assert_one(
            &kafka_problems_of(|o| set(o, "/spec/kafka/bootstrapServers/0", bad.into())),
            "jobs/billing-pipeline: spec.kafka.bootstrapServers: Invalid value: each bootstrap server is host:port, such as kafka-0.kafka.jobs.svc:9092 (no scheme, no credentials)",
        );
    }
    let mechanism = kafka_problems_of(|o| set(o, "/spec/kafka/sasl/mechanism", "GSSAPI".into()));
    assert!(
        mechanism
            .iter()
            .any(|p| p.contains("spec.kafka.sasl.mechanism") && p.contains("SCRAM-SHA-512")),
        "{mechanism:#?}"
    );
}
