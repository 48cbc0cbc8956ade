//! The plain-HTTP port (`--metrics-addr`, 8080 in the chart): the kubelet's probes `/healthz` and
//! `/readyz`, and `/metrics` to callers on loopback with `--metrics-plain-loopback`. Behind the
//! same accept loop as the TLS servers (`crate::serving::listener`): at most `max_connections`
//! open (a new one past the cap closes the oldest, so a flood of idle connections cannot keep a
//! probe out), request headers within `header_read_timeout` and `max_header_bytes`.

use super::Metrics;
use crate::serving::listener::{Accepted, ConnectionLimits, ConnectionMetrics, PlainTcp, accept_loop};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The plain port's limits: probes and a loopback scraper need few connections and small heads.
pub const PLAIN_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 256,
    handshake_timeout: Duration::from_secs(5),
    header_read_timeout: Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
    max_anonymous: 256,
    handshakes_at_once: 256,
};

const REFUSAL: &str = "/metrics is served over HTTPS on the metrics API port to a bearer token allowed to get the non-resource URL /metrics (or here to loopback callers with --metrics-plain-loopback)\n";

/// Serves the plain port on `listener` until `shutdown` resolves.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    plain_loopback: bool,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let counted = ConnectionMetrics {
        open: metrics.plain_connections.clone(),
        closed: metrics.plain_connections_closed.clone(),
    };
    accept_loop(
        "plain port",
        listener,
        PlainTcp,
        limits,
        counted,
        shutdown,
        move |accepted| connection(metrics.clone(), accepted, plain_loopback, limits),
    )
    .await
}

async fn connection(
    metrics: Arc<Metrics>,
    accepted: Accepted<TcpStream>,
    plain_loopback: bool,
    limits: ConnectionLimits,
) -> Result<(), String> {
    let peer = accepted.peer;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let reply = answer(
            &metrics,
            request.method(),
            request.uri().path(),
            peer,
            plain_loopback,
        );
        async move { Ok::<_, std::convert::Infallible>(reply) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .serve_connection(TokioIo::new(accepted.stream), service)
        .await
        .map_err(|e| e.to_string())
}

/// The answer to `method path` from `peer`.
fn answer(
    metrics: &Metrics,
    method: &hyper::Method,
    path: &str,
    peer: SocketAddr,
    plain_loopback: bool,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| (status, "text/plain; charset=utf-8", body);
    let (status, content_type, body) = if method != hyper::Method::GET {
        text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into())
    } else {
        match path {
            "/healthz" => text(StatusCode::OK, "ok".into()),
            "/readyz" if metrics.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ok".into()),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready".into()),
            "/metrics" if plain_loopback && peer.ip().is_loopback() => {
                (StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
            }
            "/metrics" => text(StatusCode::FORBIDDEN, REFUSAL.into()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /healthz, /readyz, /metrics\n".into(),
            ),
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(metrics: &Metrics, path: &str, peer: &str, plain_loopback: bool) -> u16 {
        answer(
            metrics,
            &hyper::Method::GET,
            path,
            peer.parse().unwrap(),
            plain_loopback,
        )
        .status()
        .as_u16()
    }

    #[test]
    fn probes_answer_anyone_and_metrics_only_loopback_when_allowed() {
        let metrics = Metrics::new();
        assert_eq!(status(&metrics, "/healthz", "10.0.0.7:5000", false), 200);
        assert_eq!(
            status(&metrics, "/readyz", "10.0.0.7:5000", false),
            503,
            "not ready yet"
        );
        metrics.set_ready(true);
        assert_eq!(status(&metrics, "/readyz", "10.0.0.7:5000", false), 200);
        assert_eq!(status(&metrics, "/metrics", "127.0.0.1:5000", true), 200);
        assert_eq!(status(&metrics, "/metrics", "127.0.0.1:5000", false), 403);
        assert_eq!(status(&metrics, "/metrics", "10.0.0.7:5000", true), 403);
        assert_eq!(status(&metrics, "/other", "127.0.0.1:5000", true), 404);
        let post = answer(
            &metrics,
            &hyper::Method::POST,
            "/healthz",
            "127.0.0.1:1".parse().unwrap(),
            true,
        );
        assert_eq!(post.status().as_u16(), 405);
    }
}
