//! The metrics API under abuse, on loopback and bounded in count and time: connections that never
//! handshake, never send a request, stay idle after one, or send oversized headers are closed by
//! the server's limits, and a real request is still answered meanwhile.

mod support;

use levee::metrics_api::auth::{Authenticator, Authorizer, RequestHeaderTrust};
use levee::metrics_api::server::{ConnectionLimits, MetricsApi, serve};
use levee::metrics_api::tls::ServingCert;
use levee::metrics_api::values::MetricValues;
use levee::telemetry::Metrics;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    // Long enough for the idle connections to still hold every slot when the real request comes.
    handshake_timeout: Duration::from_secs(3),
    header_read_timeout: Duration::from_secs(1),
    max_header_bytes: 16 * 1024,
};

struct Server {
    port: u16,
    metrics: Arc<Metrics>,
    tls: support::TlsFiles,
}

async fn start() -> Server {
    let tls = support::TlsFiles::generate();
    let cert = Arc::new(
        ServingCert::from_files(tls.path("server.crt").into(), tls.path("server.key").into()).unwrap(),
    );
    // No request here reaches Kubernetes: /healthz needs no authorization.
    let (service, _server) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = Metrics::new();
    let api = Arc::new(MetricsApi {
        values: MetricValues::default(),
        trust: Arc::new(RequestHeaderTrust::default()),
        authorizer: Authorizer::new(client.clone()),
        authenticator: Authenticator::new(client),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(api, listener, cert, LIMITS, std::future::pending()));
    Server { port, metrics, tls }
}

impl Server {
    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(self.tls.path("ca.crt")).unwrap();
        for cert in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// `GET path` with an extra header of `padding` bytes on a new TLS connection: the status
    /// line (None when the server closed instead), the time it took and the open stream.
    async fn get(
        &self,
        path: &str,
        padding: usize,
    ) -> (
        Option<String>,
        Duration,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ) {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = self.connector().connect(name, tcp).await.expect("TLS handshake");
        let pad = "a".repeat(padding);
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Padding: {pad}\r\n\r\n");
        let _ = tls.write_all(request.as_bytes()).await;
        let mut buffer = vec![0u8; 4096];
        let read = tls.read(&mut buffer).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buffer[..read])
            .lines()
            .next()
            .map(str::to_string);
        (head, started.elapsed(), tls)
    }

    fn open(&self) -> i64 {
        self.metrics.metrics_api_connections.clone().get()
    }

    fn closed(&self, reason: &str) -> u64 {
        self.metrics
            .metrics_api_connections_closed
            .with_label_values(&[reason])
            .get()
    }
}

/// Whether the server has closed `stream` (a read gets EOF or an error within `wait`).
fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed_and_requests_still_answered() {
    let server = start().await;
    let (baseline, baseline_took, _) = server.get("/healthz", 0).await;
    assert_eq!(baseline.as_deref(), Some("HTTP/1.1 200 OK"));

    // 300 connections that never start TLS, some sending half a ClientHello.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            if i % 3 == 0 {
                let _ = stream.write_all(&[0x16, 0x03, 0x01, 0x02]);
            }
            stream
        })
        .collect();
    // Beyond the cap each new one evicts the oldest still in its handshake (or, in the instant
    // before an evicted one is gone, is closed itself): the server never holds more than the
    // cap, and a real client, which handshakes at once, gets through.
    let shed = || server.closed("evicted") + server.closed("limit");
    let deadline = Instant::now() + Duration::from_secs(2);
    while shed() < 300 - 64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shed() >= 300 - 64, "closed at the cap: {}", shed());
    assert!(
        server.open() <= LIMITS.max_connections as i64 + 1,
        "open: {}",
        server.open()
    );
    let (answer, took, _) = server.get("/healthz", 0).await;
    assert_eq!(
        answer.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "answered while 300 idle connections were made"
    );
    eprintln!(
        "figure: /healthz answered in {took:?} with 300 idle connections opened ({baseline_took:?} before)"
    );
    // Those holding a slot are closed by the handshake timeout.
    let all_closed = tokio::task::spawn_blocking(move || {
        idle.iter_mut()
            .all(|stream| closed_by_server(stream, Duration::from_secs(5)))
    })
    .await
    .unwrap();
    assert!(all_closed, "every idle connection was closed by the server");
    assert!(server.closed("handshake_timeout") >= 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.open(), 0, "nothing is left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_with_no_request_is_closed() {
    let server = start().await;
    let (answer, _, mut tls) = server.get("/healthz", 0).await;
    assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"));
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buffer)).await;
    let closed_after = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the idle connection: {read:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(700) && closed_after < Duration::from_secs(3),
        "closed after the header read timeout (1 s): {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let server = start().await;
    let (answer, _, _) = server.get("/healthz", 64 * 1024).await;
    assert!(
        answer
            .as_deref()
            .is_none_or(|line| line.starts_with("HTTP/1.1 431")),
        "refused or closed: {answer:?}"
    );
    let (answer, _, _) = server.get("/healthz", 4 * 1024).await;
    assert_eq!(
        answer.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "a normal header size is fine"
    );
}
