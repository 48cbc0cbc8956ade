//! The real `levee run` process under a connection flood on its external metrics API (loopback,
//! bounded): 2,000 TCP connections opened and never used; and 2,000 anonymous TLS clients while
//! the API server's aggregator reads a metric through it. Before the connection limits, all
//! 2,000 were still open 90 s later and levee's memory went from 17 to 38 MiB; now the server
//! closes each one that has not finished its TLS handshake within 5 s, holds at most 1,024 at
//! once, and its memory stays bounded.

use levee_e2e::redis::closed_by_server;
use levee_e2e::*;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 2_000;

#[test]
fn a_flood_of_idle_connections_is_closed_and_memory_stays_bounded() {
    let namespace = TestNamespace::create("levee-flood");
    let levee = Levee::start(&namespace.name, &["--leader-elect=false"]);
    std::thread::sleep(Duration::from_secs(2));
    let rss = |levee: &Levee| levee.rss_kib().unwrap_or_default() as f64 / 1024.0;
    let before = rss(&levee);

    let opened = Instant::now();
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", levee.api_port))
                .unwrap_or_else(|error| panic!("connection {i} of {CONNECTIONS}: {error}"))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let flooded = rss(&levee);
    let open_gauge = levee
        .metric("levee_metrics_api_connections")
        .expect("/metrics answers and exports the series");
    assert!(
        open_gauge <= 1024.0,
        "at most 1,024 connections are held at once: {open_gauge}"
    );

    // The handshake timeout is 5 s: every connection is closed well within 15 s of opening.
    let all_closed = wait_until(
        "every idle connection closed by levee",
        Duration::from_secs(15),
        || {
            let open = streams
                .iter_mut()
                .filter_map(|s| (!closed_by_server(s, Duration::from_millis(1))).then_some(()))
                .count();
            (open == 0).then_some(opened.elapsed())
        },
    );
    wait_until(
        "the open-connections gauge back to 0",
        Duration::from_secs(10),
        || (levee.metric("levee_metrics_api_connections") == Some(0.0)).then_some(()),
    );
    drop(streams);
    // Freed pages are handed back to the system every 10 s (glibc builds).
    std::thread::sleep(Duration::from_secs(11));
    let after = rss(&levee);
    let refused = levee
        .metric_sum("levee_metrics_api_connections_closed_total")
        .expect("/metrics answers");
    eprintln!(
        "figure: {CONNECTIONS} idle connections: RSS {before:.1} MiB before, {flooded:.1} MiB with them open (gauge {open_gauge}), {after:.1} MiB after; all closed {all_closed:?} after opening; {refused} closed by a limit"
    );
    assert!(
        refused >= CONNECTIONS as f64,
        "each flood connection is counted as closed by a limit: {refused}"
    );
    assert!(
        flooded - before < 32.0,
        "the flood costs less than 32 MiB while it lasts: {before:.1} -> {flooded:.1} MiB"
    );
    assert!(
        after - before < 8.0,
        "memory comes back once the connections are gone: {before:.1} -> {after:.1} MiB"
    );
    assert_eq!(levee.get("/readyz").as_deref(), Some("ok"), "levee still serves");
}

/// Anonymous TLS clients (no client certificate) that accept no answer from the server in
/// return for holding a connection: `CLIENTS` of them, each reconnecting as soon as it is closed.
/// The flood's own address: the API server reaches levee from 127.0.0.1, and in a cluster an
/// attacker's pods are not the API server's host either.
const FLOOD_SOURCE: [u8; 4] = [127, 0, 0, 2];

async fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    socket.connect(([127, 0, 0, 1], port).into()).await
}

fn flood_with_anonymous_tls(
    port: u16,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer))
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let connections = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (connector, stop, connections) =
                        (connector.clone(), stop.clone(), connections.clone());
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut buffer = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(tcp) = connect_from(FLOOD_SOURCE, port).await else {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            };
                            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                            if let Ok(mut tls) = connector.connect(name, tcp).await {
                                connections.fetch_add(1, Ordering::Relaxed);
                                // Held until the server closes it (or the flood ends).
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buffer)).await;
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
            connections.load(Ordering::Relaxed)
        })
    })
}

/// Any server certificate: the flood does not care whom it floods.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The APIService's Available condition (the aggregator answers 503 while it is False).
fn api_service_available() -> String {
    let output = levee_e2e::kubectl(
        &[
            "get",
            "apiservice",
            "v1beta1.external.metrics.k8s.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")]}",
        ],
        None,
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// 2,000 anonymous TLS clients holding and re-opening connections to the real `levee run` while
/// the API server's aggregator asks for a metric through it: the aggregator's connection
/// presented the front-proxy certificate, so it is never the one closed to make room; its new
/// connections (the availability checks') take their handshake's turn ahead of the flood's
/// backlog; and every one of its requests is answered. (Before the anonymous cap, 1,024 such connections took every
/// slot and locked the aggregator out.)
#[test]
fn two_thousand_anonymous_tls_clients_do_not_lock_the_aggregator_out() {
    install_crd();
    let namespace = TestNamespace::create("levee-anon-flood");
    let ns = namespace.name.clone();
    let redis = levee_e2e::redis::RedisServer::start();
    levee_e2e::fixture::PolicyYaml::new("flooded", &ns, format!("{{url: '{}'}}", redis.url()))
        .set("queues", "[{name: jobs, type: list, key: jobs}]")
        .set("sampleInterval", "500ms")
        .without("targets")
        .apply();
    redis.push_jobs("jobs", 7);
    let served = ServedMetricsApi::start(&ns, &[], &[]);
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/levee_pending?labelSelector=policy%3Dflooded"
    );
    let read = || {
        raw_get(&path)
            .ok()
            .filter(|list| list["items"][0]["value"] == "7")
    };
    wait_until(
        "levee_pending through the aggregator",
        Duration::from_secs(60),
        read,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flood = flood_with_anonymous_tls(served.levee.api_port, 2_000, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    let mut answered = 0;
    let mut failures = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        match raw_get(&path) {
            Ok(list) if list["items"][0]["value"] == "7" => answered += 1,
            other => failures.push(format!(
                "{other:?} at {:.1?}, the APIService {}",
                started.elapsed(),
                api_service_available()
            )),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = started.elapsed();
    let evicted = served
        .levee
        .metric("levee_metrics_api_connections_closed_total{reason=\"evicted_anonymous\"}")
        .expect("levee exports the series");
    let closed = served
        .levee
        .metric_sum("levee_metrics_api_connections_closed_total")
        .expect("levee's /metrics answers");
    let open = served
        .levee
        .metric("levee_metrics_api_connections")
        .expect("levee exports the gauge");
    stop.store(true, Ordering::Relaxed);
    let connections = flood.join().unwrap();
    eprintln!(
        "figure: 2,000 anonymous TLS clients ({connections} connections made): the aggregator's 20 requests in {took:.1?}, {answered} answered; {closed} connections closed by a limit, {evicted} of them anonymous ones closed to make room; {open} open"
    );
    assert!(
        failures.is_empty(),
        "every request through the aggregator answered: {failures:?}"
    );
    assert!(
        closed >= 1_000.0 && evicted >= 1.0,
        "the flood was real and met the caps: {closed} closed, {evicted} of them anonymous"
    );
    assert!(open <= 1_024.0, "{open} open");
}
