//! The HTTPS server of the external metrics API: TLS (rustls, the accept loop and its limits in
//! `crate::serving`) with an optional front-proxy client certificate, then per request: authenticate (certificate + request headers, or a bearer token
//! for `/metrics`), authorize metric and `/metrics` reads (SubjectAccessReview), and answer from
//! memory with `routes::respond`. A metric levee does not serve is a 404 before any review, or,
//! with a delegate, reviewed and then forwarded to it (`delegate`). With peers, the other
//! replicas ask `/peer/values` for the values of the policies this one owns (a bearer token of
//! the audience `levee-peers`, and `get` on that path).

use super::auth::{
    Authenticator, Authorizer, Identity, RequestHeaderTrust, Resource, TokenRefusal, identify,
};
use super::delegate::Delegate;
use super::routes::{self, Access, Body as ReplyBody, Reply};
use super::tls::server_config;
use crate::serving::cert::ServingCert;
use crate::serving::listener::{Accepted, ConnectionLimits, ConnectionMetrics, accept_loop};
use crate::telemetry::Metrics;
use crate::values::{MetricValues, peer_wire};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Everything a request needs.
pub struct MetricsApi {
    pub values: MetricValues,
    pub trust: Arc<RequestHeaderTrust>,
    pub authorizer: Authorizer,
    /// Bearer tokens of `/metrics` scrapers.
    pub authenticator: Authenticator,
    /// Where request counts by status code and latencies are recorded.
    pub metrics: Arc<Metrics>,
    /// The server asked for the metrics levee does not serve (`--delegate-external-metrics`).
    pub delegate: Option<Delegate>,
    /// What the peers may ask for (`--peer-url`); `None`: `/peer/values` is a 404.
    pub peers: Option<PeerServing>,
}

/// This replica as its peers' source of values.
pub struct PeerServing {
    /// Its identity, named in each answer.
    pub replica: String,
    /// Reviews the peers' tokens (audience `routes::PEER_AUDIENCE`).
    pub authenticator: Authenticator,
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    api: Arc<MetricsApi>,
    listener: TcpListener,
    cert: Arc<ServingCert>,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, api.trust.ca.clone())?));
    let metrics = ConnectionMetrics {
        open: api.metrics.metrics_api_connections.clone(),
        closed: api.metrics.metrics_api_connections_closed.clone(),
    };
    accept_loop(
        "metrics API",
        listener,
        acceptor,
        limits,
        metrics,
        shutdown,
        move |accepted| connection(api.clone(), accepted, limits),
    )
    .await
}

/// HTTP/1.1 over one TLS connection: header deadlines and sizes from `limits`.
async fn connection(
    api: Arc<MetricsApi>,
    accepted: Accepted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    limits: ConnectionLimits,
) -> Result<(), String> {
    // The verifier only lets through certificates the requestheader CA signed.
    let client_cn = accepted.client_common_name();
    // Only a verified client (the aggregator) keeps its connection between requests: an
    // anonymous one (a probe, anyone else) holds a slot for one request at a time.
    let keep_alive = accepted.verified_client;
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        let client_cn = client_cn.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&api, client_cn.as_deref(), request).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(accepted.stream), service)
        .await
        .map_err(|e| e.to_string())
}

/// Authenticates, authorizes and answers one request.
pub async fn handle(
    api: &MetricsApi,
    client_cn: Option<&str>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let (parts, _) = request.into_parts();
    let reply = decide(api, client_cn, &parts).await;
    api.metrics
        .metrics_api_requests
        .with_label_values(&[&reply.status.to_string()])
        .inc();
    api.metrics
        .metrics_api_duration
        .observe(started.elapsed().as_secs_f64());
    let (content_type, body) = match reply.body {
        ReplyBody::Json(value) => ("application/json".to_string(), Bytes::from(value.to_string())),
        ReplyBody::Prometheus(text) => ("text/plain; version=0.0.4".to_string(), Bytes::from(text)),
        ReplyBody::Raw { content_type, bytes } => (content_type, bytes),
    };
    Response::builder()
        .status(reply.status)
        .header("content-type", content_type)
        .body(Full::new(body))
        .expect("a valid response")
}

async fn decide(api: &MetricsApi, client_cn: Option<&str>, parts: &http::request::Parts) -> Reply {
    let path = parts.uri.path();
    if parts.method != http::Method::GET {
        return routes::status(
            405,
            "MethodNotAllowed",
            "the external metrics API is read-only: use GET",
        );
    }
    let access = routes::access(path);
    // Names Kubernetes could not have: refused before any review is made or cached for them.
    if let Access::Metric { namespace, metric } = &access
        && let Err(reason) = crate::api::names::check_dns_label("the namespace", namespace)
            .and_then(|()| crate::api::names::check_metric_name(metric))
    {
        return routes::status(400, "BadRequest", &reason);
    }
    let resource = match &access {
        Access::Public => None,
        Access::Authenticated => None,
        Access::Metric { metric, .. } if !routes::serves(metric) && api.delegate.is_none() => {
            return routes::unknown_metric(metric);
        }
        Access::Metric { namespace, metric } => Some(Resource::Metric {
            namespace: namespace.clone(),
            metric: metric.clone(),
        }),
        Access::Telemetry => Some(Resource::Path("/metrics".into())),
        Access::Peer if api.peers.is_none() => {
            return routes::status(
                404,
                "NotFound",
                "this replica shares no values with peers (no --peer-url)",
            );
        }
        Access::Peer => Some(Resource::Path(routes::PEER_PATH.into())),
    };
    let mut caller = None;
    if access != Access::Public {
        let identity = match authenticate(api, client_cn, parts, &access).await {
            Ok(identity) => identity,
            Err(TokenRefusal::Unauthenticated(reason)) => {
                tracing::debug!(%path, %reason, "metrics API request refused: not authenticated");
                return routes::status(401, "Unauthorized", &reason);
            }
            Err(TokenRefusal::OverBudget(reason, retry_after_seconds)) => {
                tracing::debug!(%path, %reason, "metrics API request refused: TokenReview budget spent");
                return routes::too_many_requests(&reason, retry_after_seconds);
            }
        };
        tracing::debug!(%path, user = %identity.user, "metrics API request");
        if let Some(resource) = &resource {
            match api.authorizer.allowed(&identity, resource).await {
                Ok(true) => {}
                Ok(false) => {
                    let message = match resource {
                        Resource::Metric { namespace, metric } => format!(
                            "{} may not list {metric}.external.metrics.k8s.io in namespace {namespace}",
                            identity.user
                        ),
                        Resource::Path(path) => format!("{} may not get {path}", identity.user),
                    };
                    tracing::debug!(%path, user = %identity.user, "metrics API request refused: not authorized");
                    return routes::status(403, "Forbidden", &message);
                }
                Err(error) => return routes::status(503, "ServiceUnavailable", &error),
            }
        }
        caller = Some(identity);
    }
    if access == Access::Telemetry {
        return Reply {
            status: 200,
            body: ReplyBody::Prometheus(api.metrics.render()),
        };
    }
    if let (Access::Peer, Some(peers)) = (&access, &api.peers) {
        let epoch = peer_wire::process_epoch();
        let since = peer_wire::since(parts.uri.query(), epoch);
        let (owned, upto) = api.values.owned_since(since);
        let now = std::time::Instant::now();
        let answer = peer_wire::encode(&peers.replica, epoch, (since, upto), &owned, now);
        return Reply {
            status: 200,
            body: ReplyBody::Raw {
                content_type: "application/json".into(),
                bytes: Bytes::from(serde_json::to_vec(&answer).expect("values serialize")),
            },
        };
    }
    if let (Some(delegate), Some(caller)) = (&api.delegate, &caller) {
        let headers = api.trust.config.read().expect("config lock").clone();
        match &access {
            Access::Metric { namespace, metric } if !routes::serves(metric) => {
                let rebuilt = routes::delegated_path(namespace, metric, parts.uri.query());
                return delegate.forward(&rebuilt, caller, &headers).await;
            }
            _ if routes::is_discovery(path) => {
                let delegated = delegate.resources(caller, &headers).await.unwrap_or_default();
                return Reply {
                    status: 200,
                    body: ReplyBody::Json(routes::resource_list_with(delegated)),
                };
            }
            _ => {}
        }
    }
    routes::respond(path, parts.uri.query(), &api.values, std::time::Instant::now())
}

/// The caller: the front proxy's certificate and headers; for `/metrics` also a bearer token.
async fn authenticate(
    api: &MetricsApi,
    client_cn: Option<&str>,
    parts: &http::request::Parts,
    access: &Access,
) -> Result<Identity, TokenRefusal> {
    let config = api.trust.config.read().expect("config lock").clone();
    if *access == Access::Peer {
        let peers = api.peers.as_ref().expect("checked before");
        return peers.authenticator.identify(&parts.headers).await;
    }
    match identify(client_cn, &parts.headers, &config) {
        Ok(identity) => Ok(identity),
        Err(refused) if client_cn.is_none() && *access == Access::Telemetry => api
            .authenticator
            .identify(&parts.headers)
            .await
            .map_err(|token| match token {
                TokenRefusal::Unauthenticated(reason) => {
                    TokenRefusal::Unauthenticated(format!("{reason} ({})", refused.0))
                }
                TokenRefusal::OverBudget(reason, retry_after_seconds) => {
                    TokenRefusal::OverBudget(reason, retry_after_seconds)
                }
            }),
        Err(refused) => Err(TokenRefusal::Unauthenticated(refused.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::client::Body;
    use std::collections::BTreeMap;
    use std::time::Duration;

    type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A metrics API whose Kubernetes client reaches `server`, trusting `X-Remote-User`.
    fn api() -> (MetricsApi, ApiServer) {
        let (service, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let trust = Arc::new(RequestHeaderTrust::default());
        trust.apply(&BTreeMap::from([(
            "requestheader-username-headers".to_string(),
            r#"["X-Remote-User"]"#.to_string(),
        )]));
        let metrics = Metrics::new();
        let api = MetricsApi {
            values: MetricValues::default(),
            trust,
            authorizer: Authorizer::new(client.clone()),
            authenticator: Authenticator::new(client, Default::default(), metrics.token_reviews.clone()),
            metrics,
            delegate: None,
            peers: None,
        };
        (api, server)
    }

    fn parts(path: &str) -> http::request::Parts {
        let request = http::Request::get(path)
            .header("X-Remote-User", "system:serviceaccount:hpa")
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[tokio::test]
    async fn a_metric_levee_does_not_serve_is_404_without_asking_the_api_server() {
        let (api, mut server) = api();
        let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/someone_elses_metric";
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            decide(&api, Some("front-proxy-client"), &parts(path)),
        )
        .await
        .expect("answered without a SubjectAccessReview");
        assert_eq!(reply.status, 404);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), server.next_request())
                .await
                .is_err(),
            "no request reached the API server"
        );
    }

    #[tokio::test]
    async fn a_metric_levee_serves_is_reviewed_first() {
        let (api, mut server) = api();
        let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/levee_pending";
        let parts = parts(path);
        let answer = tokio::spawn(async move { decide(&api, Some("front-proxy-client"), &parts).await });
        let (request, respond) = server.next_request().await.expect("a SubjectAccessReview");
        assert_eq!(
            request.uri().path(),
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        );
        let denied = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": false}
        });
        respond.send_response(Response::new(Body::from(serde_json::to_vec(&denied).unwrap())));
        assert_eq!(answer.await.unwrap().status, 403);
    }
}
