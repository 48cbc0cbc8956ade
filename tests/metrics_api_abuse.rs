//! The metrics API under abuse, on loopback and bounded in count and time: connections that never
//! handshake, never send a request, stay idle after one, or send oversized headers are closed by
//! the server's limits, and a real request is still answered meanwhile; a client certificate from
//! another CA, one whose CN is not allowed, forged identity headers without a certificate and a
//! caller RBAC does not allow are each refused with the right status.

mod support;

use support::closed_by_server;

use levee::metrics_api::auth::{Authenticator, Authorizer, RequestHeaderTrust};
use levee::metrics_api::server::{MetricsApi, serve};
use levee::serving::cert::ServingCert;
use levee::serving::listener::ConnectionLimits;
use levee::telemetry::Metrics;
use levee::values::MetricValues;
use rustls::pki_types::ServerName;
use std::io::Write;
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
    max_anonymous: 8,
    handshakes_at_once: 64,
};

/// What anyone may ask without a certificate and be answered without a review: `/metrics` with no
/// bearer token, a 401 (the probes are on the plain port).
const ANONYMOUS_PATH: &str = "/metrics";
const ANONYMOUS_ANSWER: &str = "HTTP/1.1 401 Unauthorized";

struct Server {
    port: u16,
    metrics: Arc<Metrics>,
    tls: support::TlsFiles,
}

/// A Kubernetes client whose API server answers every SubjectAccessReview "not allowed".
fn denying_client() -> kube::Client {
    let service = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": false}
        });
        Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
            serde_json::to_vec(&body).unwrap(),
        )))
    });
    kube::Client::new(service, "default")
}

async fn start() -> Server {
    let tls = support::TlsFiles::generate();
    let cert = Arc::new(
        ServingCert::from_files(tls.path("server.crt").into(), tls.path("server.key").into()).unwrap(),
    );
    let client = denying_client();
    let metrics = Metrics::new();
    // The front proxy: certificates of this CA, CN front-proxy-client, naming users in X-Remote-User.
    let trust = Arc::new(RequestHeaderTrust::default());
    trust.apply(&std::collections::BTreeMap::from([
        (
            "requestheader-client-ca-file".to_string(),
            std::fs::read_to_string(tls.path("ca.crt")).unwrap(),
        ),
        (
            "requestheader-allowed-names".to_string(),
            r#"["front-proxy-client"]"#.to_string(),
        ),
        (
            "requestheader-username-headers".to_string(),
            r#"["X-Remote-User"]"#.to_string(),
        ),
    ]));
    let api = Arc::new(MetricsApi {
        values: MetricValues::default(),
        trust,
        authorizer: Authorizer::new(client.clone()),
        authenticator: Authenticator::new(client, Default::default(), metrics.token_reviews.clone()),
        metrics: metrics.clone(),
        delegate: None,
        peers: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(api, listener, cert, LIMITS, std::future::pending()));
    Server { port, metrics, tls }
}

impl Server {
    fn connector(&self) -> tokio_rustls::TlsConnector {
        self.connector_as(None)
    }

    /// A TLS client trusting the server, presenting `client.crt` of `identity` when given.
    fn connector_as(&self, identity: Option<&support::TlsFiles>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(self.tls.path("ca.crt")).unwrap();
        for cert in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain = rustls_pemfile::certs(&mut &std::fs::read(files.path("client.crt")).unwrap()[..])
                    .map(Result::unwrap)
                    .collect();
                let key =
                    rustls_pemfile::private_key(&mut &std::fs::read(files.path("client.key")).unwrap()[..])
                        .unwrap()
                        .unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// The status line of `GET path` as `identity` with `headers` (None: the handshake or the
    /// request was refused without an HTTP answer).
    async fn status_as(
        &self,
        path: &str,
        identity: Option<&support::TlsFiles>,
        headers: &str,
    ) -> Option<String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = self.connector_as(identity).connect(name, tcp).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut buffer = vec![0u8; 4096];
        let read = tls.read(&mut buffer).await.ok()?;
        String::from_utf8_lossy(&buffer[..read])
            .lines()
            .next()
            .map(str::to_string)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_are_closed_and_requests_still_answered() {
    let server = start().await;
    let (baseline, baseline_took, _) = server.get(ANONYMOUS_PATH, 0).await;
    assert_eq!(baseline.as_deref(), Some(ANONYMOUS_ANSWER));

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
    // Beyond the cap each new one evicts the oldest still in its handshake once that one is past
    // its grace (250 ms; before, the new one is closed itself): the server never holds more than
    // the cap, and a real client, which handshakes at once, gets through.
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answer, took, _) = server.get(ANONYMOUS_PATH, 0).await;
    assert_eq!(
        answer.as_deref(),
        Some(ANONYMOUS_ANSWER),
        "answered while 300 idle connections were made"
    );
    eprintln!(
        "figure: an anonymous request answered in {took:?} with 300 idle connections opened ({baseline_took:?} before)"
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
    // An anonymous connection is not kept alive at all: closed after its answer.
    let (answer, _, mut anonymous) = server.get(ANONYMOUS_PATH, 0).await;
    assert_eq!(answer.as_deref(), Some(ANONYMOUS_ANSWER));
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), anonymous.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {read:?}");
    // The front proxy's is, until it sends nothing for the header read timeout.
    server.tls.client_cert("front-proxy-client");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = server
        .connector_as(Some(&server.tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let request = "GET /apis HTTP/1.1\r\nHost: localhost\r\nX-Remote-User: system:kube-aggregator\r\n\r\n";
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).ends_with('}') {
        let read = tls.read(&mut buffer).await.unwrap();
        assert!(
            read > 0,
            "the answer came whole: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
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
    let (answer, _, _) = server.get(ANONYMOUS_PATH, 64 * 1024).await;
    assert!(
        answer
            .as_deref()
            .is_none_or(|line| line.starts_with("HTTP/1.1 431")),
        "refused or closed: {answer:?}"
    );
    let (answer, _, _) = server.get(ANONYMOUS_PATH, 4 * 1024).await;
    assert_eq!(
        answer.as_deref(),
        Some(ANONYMOUS_ANSWER),
        "a normal header size is fine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_the_front_proxy_did_not_vouch_for_or_rbac_does_not_allow_are_refused() {
    let server = start().await;
    let metric = "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/levee_pending";
    let forged = "X-Remote-User: system:admin\r\nX-Remote-Group: system:masters\r\n";
    // Forged identity headers without a certificate.
    let status = server.status_as(metric, None, forged).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    // A certificate of the right CA whose CN is not an allowed front proxy.
    server.tls.client_cert("intruder");
    let status = server.status_as(metric, Some(&server.tls), forged).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    // A certificate of another CA, even with the allowed CN: the handshake fails.
    let other = support::TlsFiles::generate();
    other.client_cert("front-proxy-client");
    let status = server.status_as(metric, Some(&other), forged).await;
    assert!(
        status.is_none() || status.as_deref() == Some("HTTP/1.1 401 Unauthorized"),
        "refused: {status:?}"
    );
    // The real front proxy, for a user RBAC does not allow.
    server.tls.client_cert("front-proxy-client");
    let status = server
        .status_as(
            metric,
            Some(&server.tls),
            "X-Remote-User: system:serviceaccount:jobs:nobody\r\n",
        )
        .await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 403 Forbidden"));
    // A namespace or metric name Kubernetes could not have is a 400 before any review (this
    // API server denies every review: a 403 would mean one was made).
    let long_metric = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/{}",
        "m".repeat(300)
    );
    for path in [
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/Not_A_Label/levee_pending",
        long_metric.as_str(),
    ] {
        let status = server
            .status_as(
                path,
                Some(&server.tls),
                "X-Remote-User: system:serviceaccount:jobs:nobody\r\n",
            )
            .await;
        assert_eq!(status.as_deref(), Some("HTTP/1.1 400 Bad Request"), "{path}");
    }
    // And discovery, which needs no review, goes through for it: the refusals above were about
    // who was asking.
    let status = server
        .status_as(
            "/apis/external.metrics.k8s.io/v1beta1",
            Some(&server.tls),
            "X-Remote-User: system:serviceaccount:jobs:nobody\r\n",
        )
        .await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
}

/// Twice the connection cap of anonymous TLS clients (no client certificate), each holding a
/// connection open without a request and opening another as soon as it is closed, cannot lock
/// the aggregator out: anonymous connections are capped low and closed oldest first (and never
/// kept alive after an answer), so the front proxy's requests keep getting answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_cannot_hold_the_slots_the_aggregator_needs() {
    let server = start().await;
    server.tls.client_cert("front-proxy-client");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = Vec::new();
    for _ in 0..LIMITS.max_connections * 2 {
        let (stop, connector, port) = (stop.clone(), server.connector(), server.port);
        busy.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let name = ServerName::try_from("localhost").unwrap();
                if let Ok(mut tls) = connector.connect(name, tcp).await {
                    let _ = tls.read(&mut buffer).await; // until the server closes it
                }
            }
        }));
    }
    let discovery = "/apis/external.metrics.k8s.io/v1beta1";
    let user = "X-Remote-User: system:kube-aggregator\r\n";
    // Ten requests, each retried as the aggregator retries (it cannot be told from the others
    // before its handshake, so it may be turned away at the door now and then).
    let mut attempts = Vec::new();
    for _ in 0..10 {
        let mut attempt = 1;
        while server
            .status_as(discovery, Some(&server.tls), user)
            .await
            .as_deref()
            != Some("HTTP/1.1 200 OK")
        {
            assert!(attempt < 20, "the aggregator got in within 20 attempts");
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        attempts.push(attempt);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("figure: the aggregator's 10 requests under the flood took {attempts:?} attempts each");
    assert!(
        server.closed("evicted_anonymous") >= LIMITS.max_connections as u64,
        "{} anonymous connections closed to make room",
        server.closed("evicted_anonymous")
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in busy {
        task.abort();
    }
}

/// The plain port (the kubelet's probes) behind the same accept loop: past its cap a new
/// connection closes the oldest, and one that sends no request head is closed after the header
/// timeout, so idle connections can neither pile up nor keep a probe out. (With warp before it,
/// all 300 stayed open and nothing was ever closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_port_caps_idle_connections_and_still_answers_its_probes() {
    use levee::telemetry::plain_port;
    let limits = ConnectionLimits {
        max_connections: 32,
        max_anonymous: 32,
        header_read_timeout: Duration::from_secs(1),
        ..plain_port::PLAIN_LIMITS
    };
    let metrics = Metrics::new();
    metrics.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(plain_port::serve(
        metrics.clone(),
        listener,
        false,
        limits,
        std::future::pending(),
    ));
    let probe = || async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        answer.lines().next().map(str::to_string)
    };
    assert_eq!(probe().await.as_deref(), Some("HTTP/1.1 200 OK"));

    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = metrics.plain_connections.get();
    assert!(open <= 32, "at most the cap is held: {open}");
    assert_eq!(
        probe().await.as_deref(),
        Some("HTTP/1.1 200 OK"),
        "the probe is answered with 300 idle connections made"
    );
    // Closed to make room (the oldest idle one), or at the door while all are brand new.
    let evicted = || {
        ["evicted_anonymous", "limit"]
            .iter()
            .map(|reason| {
                metrics
                    .plain_connections_closed
                    .with_label_values(&[reason])
                    .get()
            })
            .sum::<u64>()
    };
    // The accept loop takes the rest from the listen backlog in its own time.
    let deadline = Instant::now() + Duration::from_secs(2);
    // (Slots the header timeout frees take some of the 300 too, uncounted here.)
    while evicted() < 300 - 3 * 32 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let evicted = evicted();
    assert!(evicted >= 300 - 3 * 32, "closed at the cap: {evicted}");
    let all_closed = tokio::task::spawn_blocking(move || {
        idle.iter_mut()
            .all(|stream| closed_by_server(stream, Duration::from_secs(3)))
    })
    .await
    .unwrap();
    assert!(all_closed, "every idle connection was closed by the server");
    let took = opened.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "within the header timeout, not never: {took:?}"
    );
    eprintln!(
        "figure: plain port, 300 idle connections: at most {open} held, {evicted} closed at the cap, all closed after {took:?}"
    );
}
