//! Routes as the aggregator and the HPA call them, and every error as a `Status`.

use super::*;
use crate::values::{MemoryValues, QueueValues};

fn now() -> Instant {
    static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| Instant::now() + Duration::from_secs(3600))
}

fn values() -> MetricValues {
    let values = MetricValues::default();
    let policy = |name: &str, pending: u64, age: i64, failed: bool| PolicyValues {
        namespace: "jobs".into(),
        policy: name.into(),
        pending,
        queues: vec![
            QueueValues::new("events", Some(pending - 10), Some(Duration::from_millis(2500))),
            QueueValues::new("retries", Some(10), None),
            QueueValues::new("audit", None, None),
        ],
        latency: (name != "mailer").then_some(Duration::from_millis(2500)),
        forecast: None,
        sampled_at: Timestamp::from_second(1_800_000_000 - age).unwrap(),
        sampled: now() - Duration::from_secs(age as u64),
        failed,
        interval: Duration::from_secs(1),
        circuit: None,
        memory: match name {
            "rule-engine" => Some(MemoryValues {
                used: 725_000,
                max: Some(1_000_000),
                warning: None,
            }),
            "mailer" => Some(MemoryValues {
                used: 725_000,
                ..MemoryValues::default()
            }),
            _ => None,
        },
        source: Default::default(),
        published: 0,
        changed: 0,
    };
    values.publish(policy("rule-engine", 1500, 1, false));
    values.publish(policy("mailer", 40, 0, false));
    values.publish(policy("old", 70, 10, false));
    values.publish(policy("broken", 80, 0, true));
    values
}

fn get(path: &str, query: Option<&str>) -> Reply {
    respond(path, query, &values(), now())
}

fn json(reply: &Reply) -> &Value {
    match &reply.body {
        Body::Json(value) => value,
        Body::Prometheus(text) => panic!("not JSON: {text}"),
        Body::Raw { content_type, .. } => panic!("not levee's JSON: {content_type}"),
    }
}

#[test]
fn a_delegates_resources_follow_levees_own_once() {
    let delegated = vec![
        serde_json::json!({"name": "externalmetrics", "namespaced": true}),
        serde_json::json!({"name": "levee_pending", "namespaced": true}),
    ];
    let list = resource_list_with(delegated);
    let names: Vec<&str> = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "levee_pending",
            "levee_queue_depth",
            "levee_latency_seconds",
            "levee_queue_latency_seconds",
            "levee_redis_memory_ratio",
            "externalmetrics"
        ]
    );
    assert!(is_discovery(BASE) && !is_discovery("/apis"));
}

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";

#[test]
fn discovery_lists_every_metric() {
    let reply = get(BASE, None);
    assert_eq!(reply.status, 200);
    let body = json(&reply);
    assert_eq!(body["kind"], "APIResourceList");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["groupVersion"], "external.metrics.k8s.io/v1beta1");
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [PENDING, QUEUE_DEPTH, LATENCY, QUEUE_LATENCY, MEMORY_RATIO]
    );
    assert_eq!(body["resources"][0]["kind"], "ExternalMetricValueList");
    assert_eq!(json(&get("/apis", None))["groups"][0]["name"], GROUP);
    assert_eq!(
        json(&get("/apis/external.metrics.k8s.io", None))["preferredVersion"]["version"],
        "v1beta1"
    );
}

#[test]
fn openapi_is_a_quiet_404_and_health_is_plain_ok() {
    for path in ["/openapi/v2", "/openapi/v3"] {
        let reply = get(path, None);
        assert_eq!(
            (reply.status, json(&reply)["kind"].as_str()),
            (404, Some("Status"))
        );
    }
    for path in ["/healthz", "/readyz", "/livez"] {
        let reply = get(path, None);
        assert_eq!(reply.status, 404, "{path}: probes are on the plain port");
        assert_eq!(json(&reply)["message"], PROBES_ARE_ELSEWHERE);
    }
}

#[test]
fn latency_in_seconds_as_milli_quantities_and_only_where_a_queue_keeps_one() {
    let reply = get(
        &format!("{BASE}/namespaces/jobs/levee_latency_seconds"),
        Some("labelSelector=policy%3Drule-engine"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = json(&reply)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["value"], "2500m");
    assert_eq!(
        items[0]["metricLabels"],
        serde_json::json!({"policy": "rule-engine"})
    );
    let queues = get(
        &format!("{BASE}/namespaces/jobs/levee_queue_latency_seconds"),
        Some("labelSelector=policy%3Drule-engine"),
    );
    let items = json(&queues)["items"].as_array().unwrap().clone();
    assert_eq!(
        items.len(),
        1,
        "retries and audit keep no enqueue time: {items:?}"
    );
    assert_eq!(items[0]["metricLabels"]["queue"], "events");
    let none = get(
        &format!("{BASE}/namespaces/jobs/levee_latency_seconds"),
        Some("labelSelector=policy%3Dmailer"),
    );
    assert_eq!(none.status, 404, "no latency is never a guessed zero");
}

#[test]
fn memory_ratio_as_a_milli_quantity_and_absent_without_maxmemory() {
    let reply = get(
        &format!("{BASE}/namespaces/jobs/levee_redis_memory_ratio"),
        Some("labelSelector=policy%3Drule-engine"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = json(&reply)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["value"], "725m");
    let unlimited = get(
        &format!("{BASE}/namespaces/jobs/levee_redis_memory_ratio"),
        Some("labelSelector=policy%3Dmailer"),
    );
    assert_eq!(
        unlimited.status, 404,
        "no maxmemory is no ratio, never a guessed zero"
    );
}

#[test]
fn pending_of_one_policy_as_the_hpa_asks_for_it() {
    // The HPA lower-cases the metric name; Go re-encodes the query: `=` as %3D.
    let reply = get(
        &format!("{BASE}/namespaces/jobs/levee_pending"),
        Some("labelSelector=policy%3Drule-engine"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = json(&reply);
    assert_eq!(body["kind"], "ExternalMetricValueList");
    assert_eq!(body["apiVersion"], "external.metrics.k8s.io/v1beta1");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metricName"], "levee_pending");
    assert_eq!(
        items[0]["metricLabels"],
        serde_json::json!({"policy": "rule-engine"})
    );
    assert_eq!(items[0]["value"], "1500");
    assert_eq!(items[0]["timestamp"], "2027-01-15T07:59:59Z");
    assert_eq!(items[0]["window"], 1);
}

#[test]
fn names_are_case_insensitive_and_paths_and_queries_are_decoded() {
    let reply = get(
        &format!("{BASE}/namespaces/jobs/LEVEE%5FQUEUE%5Fdepth"),
        Some("labelSelector=policy+in+%28rule-engine%29,queue%3Devents"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let items = json(&reply)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["metricLabels"],
        serde_json::json!({"policy": "rule-engine", "queue": "events"})
    );
    assert_eq!(items[0]["value"], "1490");
}

#[test]
fn queue_depth_skips_unreadable_queues_and_never_answers_an_empty_list() {
    let reply = get(
        &format!("{BASE}/namespaces/jobs/levee_queue_depth"),
        Some("labelSelector=policy%3Dmailer"),
    );
    let labels: Vec<String> = json(&reply)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metricLabels"]["queue"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["events", "retries"]);
    let none = get(
        &format!("{BASE}/namespaces/jobs/levee_pending"),
        Some("labelSelector=policy%3Dnope"),
    );
    assert_eq!(
        (none.status, json(&none)["reason"].as_str()),
        (404, Some("NotFound"))
    );
    let other = get(
        &format!("{BASE}/namespaces/elsewhere/levee_pending"),
        Some("labelSelector=policy%3Drule-engine"),
    );
    assert_eq!(other.status, 404);
}

#[test]
fn unknown_metrics_and_bad_selectors_are_errors_with_reasons() {
    let unknown = get(&format!("{BASE}/namespaces/jobs/queue_length"), None);
    assert_eq!(unknown.status, 404);
    assert!(
        json(&unknown)["message"]
            .as_str()
            .unwrap()
            .contains("levee serves levee_pending")
    );
    let bad = get(
        &format!("{BASE}/namespaces/jobs/levee_pending"),
        Some("labelSelector=policy%3D%3D%3D"),
    );
    assert_eq!(
        (bad.status, json(&bad)["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    assert!(
        json(&bad)["message"]
            .as_str()
            .unwrap()
            .contains("invalid label selector at position")
    );
}

#[test]
fn stale_or_failed_samples_are_503_so_the_hpa_holds() {
    for policy in ["old", "broken"] {
        let reply = get(
            &format!("{BASE}/namespaces/jobs/levee_pending"),
            Some(&format!("labelSelector=policy%3D{policy}")),
        );
        assert_eq!(
            (reply.status, json(&reply)["reason"].as_str()),
            (503, Some("ServiceUnavailable")),
            "{policy}"
        );
        assert!(json(&reply)["message"].as_str().unwrap().contains(policy));
    }
    let mixed = get(&format!("{BASE}/namespaces/jobs/levee_pending"), None);
    assert_eq!(
        mixed.status, 503,
        "a selector that takes in a stale policy does not give a partial sum"
    );
}

#[test]
fn access_tells_which_paths_need_authorization() {
    assert_eq!(access("/healthz"), Access::Public);
    assert_eq!(access(BASE), Access::Authenticated);
    assert_eq!(access("/openapi/v2"), Access::Authenticated);
    assert_eq!(
        access(&format!("{BASE}/namespaces/jobs/Levee_Pending")),
        Access::Metric {
            namespace: "jobs".into(),
            metric: "levee_pending".into()
        }
    );
}

#[test]
fn a_delegated_read_is_rebuilt_from_the_checked_parts() {
    assert_eq!(
        delegated_path(
            "jobs",
            "S0-Redis-Emails",
            Some("labelSelector=scaledobject.keda.sh%2Fname%3Dworker&watch=true&x=..%2F..")
        ),
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/s0-redis-emails?labelSelector=scaledobject.keda.sh%2Fname%3Dworker"
    );
    assert_eq!(
        delegated_path("jobs", "s0-redis-emails:a b", None),
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/s0-redis-emails%3Aa%20b"
    );
    assert_eq!(
        delegated_path("jobs", "s0-redis-emails", None),
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/s0-redis-emails"
    );
}
