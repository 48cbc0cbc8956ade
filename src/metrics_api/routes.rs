//! The external metrics API's answers, as a pure function of the request path, the query and
//! the in-memory values: the shapes kube-apiserver's aggregator and the HPA read
//! (`APIResourceList` for discovery, `ExternalMetricValueList` for values; docs/integration.md
//! shows them). Errors are Kubernetes `Status` objects.

use super::selector;
use crate::values::{MetricValues, PolicyValues};
use jiff::Timestamp;
use kube::core::{Expression, SelectorExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub const GROUP: &str = "external.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// The weighted backlog of a policy (label `policy`).
pub const PENDING: &str = "levee_pending";
/// One queue's depth (labels `policy`, `queue`).
pub const QUEUE_DEPTH: &str = "levee_queue_depth";
/// The age of a policy's oldest waiting job, in seconds (label `policy`).
pub const LATENCY: &str = "levee_latency_seconds";
/// The age of one queue's oldest waiting job, in seconds (labels `policy`, `queue`).
pub const QUEUE_LATENCY: &str = "levee_queue_latency_seconds";
/// `used_memory / maxmemory` of a Redis policy's fullest master (label `policy`).
pub const MEMORY_RATIO: &str = "levee_redis_memory_ratio";
/// Every metric levee serves, in discovery order.
pub const SERVED: [&str; 5] = [PENDING, QUEUE_DEPTH, LATENCY, QUEUE_LATENCY, MEMORY_RATIO];

/// An HTTP status and a JSON (or plain text) body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Json(Value),
    /// Prometheus text exposition.
    Prometheus(String),
    /// What a delegate answered, passed on as it came.
    Raw {
        content_type: String,
        bytes: bytes::Bytes,
    },
}

/// Which paths need only authentication (discovery, OpenAPI, health), and which need a
/// SubjectAccessReview for `(namespace, metric)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// `/healthz`, `/readyz`, `/livez`: a 404 that points at the plain port, to anyone.
    Public,
    /// Discovery and OpenAPI: any authenticated caller.
    Authenticated,
    /// A metric read: `list` on `external.metrics.k8s.io/<metric>` in `<namespace>`.
    Metric { namespace: String, metric: String },
    /// levee's own Prometheus metrics: `get` on the non-resource path `/metrics`.
    Telemetry,
    /// Another replica asking for the values of the policies this one owns: `get` on the
    /// non-resource path `/peer/values`, with a token made for the audience `PEER_AUDIENCE`.
    Peer,
}

/// The path where a replica serves its peers (`crate::values::peer_wire`).
pub const PEER_PATH: &str = "/peer/values";
/// The audience of the tokens peers present: the API server itself takes none of them.
pub const PEER_AUDIENCE: &str = "levee-peers";

/// What a path needs before it is answered.
pub fn access(path: &str) -> Access {
    match path {
        "/healthz" | "/readyz" | "/livez" => Access::Public,
        "/metrics" => Access::Telemetry,
        PEER_PATH => Access::Peer,
        _ => match metric_path(path) {
            Some((namespace, metric)) => Access::Metric {
                namespace,
                metric: metric.to_lowercase(),
            },
            None => Access::Authenticated,
        },
    }
}

/// `(namespace, metric)` of `/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}`,
/// percent-decoded.
fn metric_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(&format!("/apis/{GROUP}/{VERSION}/namespaces/"))?;
    let (namespace, metric) = rest.split_once('/')?;
    if metric.contains('/') || namespace.is_empty() || metric.is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((decode(namespace)?, decode(metric)?))
}

/// The `labelSelector` of a request's query (undecoded), decoded.
fn label_selector(query: Option<&str>) -> Option<String> {
    query
        .into_iter()
        .flat_map(|q| url::form_urlencoded::parse(q.as_bytes()))
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value.into_owned())
}

/// What levee asks a delegate for a metric read: the path rebuilt from the namespace and metric
/// that were checked and authorized (the metric in lower case, as reviewed), and of the query
/// only its `labelSelector`, encoded again. Nothing else of the caller's path or query reaches
/// the delegate (no `..`, no encoded slash, no parameter levee did not look at).
pub fn delegated_path(namespace: &str, metric: &str, query: Option<&str>) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encode = |part: &str| percent_encoding::utf8_percent_encode(part, UNRESERVED).to_string();
    let mut path = format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{}/{}",
        encode(namespace),
        encode(&metric.to_lowercase())
    );
    if let Some(selector) = label_selector(query) {
        path.push('?');
        path.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("labelSelector", &selector)
                .finish(),
        );
    }
    path
}

/// Whether levee serves the metric named in a request path (any case, as the HPA lower-cases).
pub fn serves(metric: &str) -> bool {
    SERVED.iter().any(|served| metric.eq_ignore_ascii_case(served))
}

/// The answer for a metric levee does not serve, given before any authorization is asked for.
pub fn unknown_metric(metric: &str) -> Reply {
    status(
        404,
        "NotFound",
        &format!(
            "levee serves {}, not {}",
            SERVED.join(", "),
            metric.to_lowercase()
        ),
    )
}

/// Probes are answered on the plain port only: an anonymous connection to the metrics API has
/// no other business here than a bearer-token read of `/metrics`.
pub const PROBES_ARE_ELSEWHERE: &str =
    "the probes are served on the plain port (--metrics-addr, 8080 in the chart): /healthz, /readyz";

/// Answers a GET of `path` with query `query` (undecoded), at `now` (monotonic).
pub fn respond(path: &str, query: Option<&str>, values: &MetricValues, now: Instant) -> Reply {
    match path {
        "/healthz" | "/readyz" | "/livez" => status(404, "NotFound", PROBES_ARE_ELSEWHERE),
        "/openapi/v2" | "/openapi/v3" => status(404, "NotFound", "levee publishes no OpenAPI document"),
        "/apis" => ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})),
        _ if path == format!("/apis/{GROUP}") => ok(group()),
        _ if path == format!("/apis/{GROUP}/{VERSION}") => ok(resource_list()),
        _ => match metric_path(path) {
            Some((namespace, metric)) => metric_list(&namespace, &metric, query, values, now),
            None => status(
                404,
                "NotFound",
                &format!("the path {path} is not served by levee"),
            ),
        },
    }
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body: Body::Json(body),
    }
}

/// A Kubernetes `Status` error.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply {
        status: code,
        body: Body::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        })),
    }
}

/// A 429 `Status` that says when to try again (`details.retryAfterSeconds`, as kube-apiserver's).
pub fn too_many_requests(message: &str, retry_after_seconds: u64) -> Reply {
    let mut reply = status(429, "TooManyRequests", message);
    if let Body::Json(body) = &mut reply.body {
        body["details"] = json!({"retryAfterSeconds": retry_after_seconds});
    }
    reply
}

fn group() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version], "preferredVersion": version})
}

fn resource_list() -> Value {
    resource_list_with(Vec::new())
}

/// Whether `path` is the discovery document of `external.metrics.k8s.io/v1beta1`.
pub fn is_discovery(path: &str) -> bool {
    path == format!("/apis/{GROUP}/{VERSION}")
}

/// levee's discovery document with a delegate's resources after levee's own (a name levee
/// serves is listed once).
pub fn resource_list_with(delegated: Vec<Value>) -> Value {
    let resource = |name: &str| json!({"name": name, "singularName": "", "namespaced": true, "kind": "ExternalMetricValueList", "verbs": ["get"]});
    let mut resources: Vec<Value> = SERVED.iter().map(|name| resource(name)).collect();
    resources.extend(
        delegated
            .into_iter()
            .filter(|r| !r["name"].as_str().is_some_and(serves)),
    );
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": resources,
    })
}

/// One metric item: name, labels, sample time, window and value (a Kubernetes quantity).
struct Item {
    labels: BTreeMap<String, String>,
    value: String,
}

fn metric_list(
    namespace: &str,
    metric: &str,
    query: Option<&str>,
    values: &MetricValues,
    now: Instant,
) -> Reply {
    if !serves(metric) {
        return unknown_metric(metric);
    }
    let metric = metric.to_lowercase();
    let selector_text = label_selector(query).unwrap_or_default();
    let selector = match selector::parse(&selector_text) {
        Ok(selector) => selector,
        Err(error) => return status(400, "BadRequest", &error.to_string()),
    };
    let mut items = Vec::new();
    let mut stale = Vec::new();
    for policy in values.in_namespace(namespace, named_policies(&selector).as_ref()) {
        let matched: Vec<Item> = items_of(&policy, &metric)
            .into_iter()
            .filter(|i| selector.matches(&i.labels))
            .collect();
        if matched.is_empty() {
            continue;
        }
        if policy.stale(now) {
            stale.push(policy.policy.clone());
            continue;
        }
        let timestamp = Timestamp::from_second(policy.sampled_at.as_second()).unwrap_or(policy.sampled_at);
        let window = policy.interval.as_secs().max(1);
        items.extend(matched.into_iter().map(|item| {
            json!({
                "metricName": metric,
                "metricLabels": item.labels,
                "timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "window": window,
                "value": item.value,
            })
        }));
    }
    if !stale.is_empty() {
        // Acting on an old or partial number would scale the wrong way: the HPA holds instead.
        let message = format!(
            "the last sample of {} in {namespace} failed or is older than 3 sample intervals: see the policy's BackendReachable condition",
            stale.join(", ")
        );
        return status(503, "ServiceUnavailable", &message);
    }
    if items.is_empty() {
        let message =
            format!("no {metric} in namespace {namespace} matches the label selector {selector_text:?}");
        return status(404, "NotFound", &message);
    }
    ok(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    }))
}

/// The policies a selector can only match, when it pins the `policy` label (`policy=x`,
/// `policy in (x,y)`); `None` when any policy may match.
fn named_policies(selector: &kube::core::Selector) -> Option<BTreeSet<String>> {
    selector
        .clone()
        .into_iter()
        .find_map(|expression| match expression {
            Expression::Equal(key, value) if key == "policy" => Some(BTreeSet::from([value])),
            Expression::In(key, values) if key == "policy" => Some(values),
            _ => None,
        })
}

fn items_of(policy: &PolicyValues, metric: &str) -> Vec<Item> {
    let labels = |queue: Option<&str>| {
        let mut labels = BTreeMap::from([("policy".to_string(), policy.policy.clone())]);
        if let Some(queue) = queue {
            labels.insert("queue".into(), queue.to_string());
        }
        labels
    };
    let count = |n: u64| n.to_string();
    // Seconds as a quantity in milli-units, the precision latency is read with.
    let seconds = |age: Duration| format!("{}m", age.as_millis());
    match metric {
        PENDING => vec![Item {
            labels: labels(None),
            value: count(policy.pending),
        }],
        LATENCY => policy
            .latency
            .map(|age| Item {
                labels: labels(None),
                value: seconds(age),
            })
            .into_iter()
            .collect(),
        // A ratio as a quantity in milli-units (0.725 is 725m).
        MEMORY_RATIO => policy
            .memory_ratio()
            .map(|ratio| Item {
                labels: labels(None),
                value: format!("{}m", (ratio * 1000.0).round() as u64),
            })
            .into_iter()
            .collect(),
        _ => policy
            .queues
            .iter()
            .filter_map(|queue| {
                let value = if metric == QUEUE_LATENCY {
                    seconds(queue.latency?)
                } else {
                    count(queue.depth?)
                };
                Some(Item {
                    labels: labels(Some(&queue.name)),
                    value,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
