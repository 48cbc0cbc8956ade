//! Metrics API benchmark: requests per second and p50/p99 latency of `levee_pending` reads over
//! TLS with 1,000 policies in memory, through levee's whole request path (TLS with the
//! front-proxy client certificate, header authentication, a cached authorization decision,
//! selector parsing, the answer), next to a minimal hyper TLS server answering a constant on the
//! same machine, with the same client. Run with `cargo bench --bench metrics_api`.

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use levee::metrics_api::auth::{Authenticator, Authorizer, RequestHeaderTrust};
use levee::metrics_api::server::{MetricsApi, serve};
use levee::serving::cert::ServingCert;
use levee::values::{MetricValues, PolicyValues, QueueValues};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const POLICIES: usize = 1000;
const CONNECTIONS: usize = 8;
const REQUESTS_PER_CONNECTION: usize = 2500;

fn pem_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A kube client whose API server allows every SubjectAccessReview (no cluster needed).
fn allowing_client() -> kube::Client {
    let service = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": true}
        });
        Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
            serde_json::to_vec(&body).unwrap(),
        )))
    });
    kube::Client::new(service, "default")
}

fn client_config(tls: &support::TlsFiles) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem_file(&tls.path("ca.crt"))[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &pem_file(&tls.path("client.crt"))[..])
            .map(Result::unwrap)
            .collect();
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut &pem_file(&tls.path("client.key"))[..])
            .unwrap()
            .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// Sends requests on one keep-alive TLS connection; returns each request's latency.
async fn load(port: u16, config: Arc<rustls::ClientConfig>, path: String) -> Vec<Duration> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut latencies = Vec::with_capacity(REQUESTS_PER_CONNECTION);
    for _ in 0..REQUESTS_PER_CONNECTION {
        let request = http::Request::get(&path)
            .header("host", "localhost")
            .header(
                "x-remote-user",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            )
            .header("x-remote-group", "system:serviceaccounts")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let started = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        latencies.push(started.elapsed());
        assert!(!body.is_empty());
    }
    latencies
}

async fn measure(name: &str, port: u16, config: Arc<rustls::ClientConfig>, path: &str) {
    let started = Instant::now();
    let runs = (0..CONNECTIONS).map(|_| tokio::spawn(load(port, config.clone(), path.to_string())));
    let mut latencies: Vec<Duration> = Vec::new();
    for run in runs {
        latencies.extend(run.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "| {name} | {} | {:.0} | {:.3} ms | {:.3} ms |",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99)
    );
}

/// The reference: hyper over the same TLS, answering a constant body.
async fn constant_server(listener: TcpListener, cert: Arc<ServingCert>) {
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(cert);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let body = Bytes::from_static(br#"{"kind":"ExternalMetricValueList","items":[{"value":"1500"}]}"#);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (acceptor, body) = (acceptor.clone(), body.clone());
        tokio::spawn(async move {
            let tls = acceptor.accept(stream).await.unwrap();
            let service = hyper::service::service_fn(move |_| {
                let body = body.clone();
                async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let tls = support::TlsFiles::generate();
    tls.client_cert("front-proxy-client");
    let cert = Arc::new(
        ServingCert::from_files(tls.path("server.crt").into(), tls.path("server.key").into()).unwrap(),
    );
    let values = MetricValues::default();
    for i in 0..POLICIES {
        values.publish(PolicyValues {
            namespace: "jobs".into(),
            policy: format!("policy-{i}"),
            pending: 1000 + i as u64,
            queues: vec![QueueValues::new("events", Some(1000 + i as u64), None)],
            latency: None,
            forecast: None,
            sampled_at: jiff::Timestamp::now(),
            sampled: std::time::Instant::now() + Duration::from_secs(3600),
            failed: false,
            interval: Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Default::default(),
            published: 0,
            changed: 0,
        });
    }
    let trust = Arc::new(RequestHeaderTrust::default());
    let data = [
        (
            "requestheader-client-ca-file",
            String::from_utf8(pem_file(&tls.path("ca.crt"))).unwrap(),
        ),
        (
            "requestheader-allowed-names",
            r#"["front-proxy-client"]"#.to_string(),
        ),
        (
            "requestheader-username-headers",
            r#"["X-Remote-User"]"#.to_string(),
        ),
        ("requestheader-group-headers", r#"["X-Remote-Group"]"#.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    trust.apply(&data);
    let metrics = levee::telemetry::Metrics::new();
    let api = Arc::new(MetricsApi {
        values,
        trust,
        authorizer: Authorizer::new(allowing_client()),
        authenticator: Authenticator::new(
            allowing_client(),
            Default::default(),
            metrics.token_reviews.clone(),
        ),
        metrics,
        delegate: None,
        peers: None,
    });
    let levee_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let levee_port = levee_listener.local_addr().unwrap().port();
    tokio::spawn(serve(
        api,
        levee_listener,
        cert.clone(),
        Default::default(),
        std::future::pending(),
    ));
    let reference_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reference_port = reference_listener.local_addr().unwrap().port();
    tokio::spawn(constant_server(reference_listener, cert));

    let config = client_config(&tls);
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/levee_pending?labelSelector=policy%3Dpolicy-500";
    // Warm both (TLS sessions, the authorization cache).
    load(levee_port, config.clone(), path.to_string()).await;
    load(reference_port, config.clone(), path.to_string()).await;
    println!("| server ({CONNECTIONS} keep-alive TLS connections) | requests | requests/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    measure(
        &format!("levee, {POLICIES} policies, levee_pending for one"),
        levee_port,
        config.clone(),
        path,
    )
    .await;
    measure(
        "minimal hyper TLS server, constant body",
        reference_port,
        config,
        path,
    )
    .await;
}
