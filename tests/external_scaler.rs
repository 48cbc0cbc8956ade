//! levee's KEDA external scaler over real gRPC and TLS on loopback, called the way KEDA's operator
//! calls it (a gRPC channel, the trigger's metadata in `scalerMetadata`): the answers come from
//! the published values, `StreamIsActive` pushes when the verdict flips and only then, wrong
//! metadata and unknown policies get the gRPC status that says what to change, and clients
//! without a certificate of the configured CA are refused at the handshake.

mod support;

use levee::circuit::{Level, State};
use levee::external_scaler::proto::external_scaler_client::ExternalScalerClient;
use levee::external_scaler::proto::{GetMetricsRequest, IsActiveResponse, ScaledObjectRef};
use levee::external_scaler::server::{ClientNames, Scaler, StreamLimits, serve, server_config};
use levee::serving::cert::ServingCert;
use levee::serving::listener::ConnectionLimits;
use levee::telemetry::Metrics;
use levee::values::{CircuitValues, MetricValues, PolicyValues, QueueValues};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{TlsFiles, closed_by_server, free_port};
use tonic::transport::{Channel, Endpoint};

struct Server {
    port: u16,
    values: MetricValues,
    metrics: Arc<Metrics>,
    tls: TlsFiles,
}

/// Few streams, so the tests can reach both caps.
const STREAMS: StreamLimits = StreamLimits {
    total: 12,
    per_namespace: 8,
};

const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 16,
    handshake_timeout: Duration::from_secs(1),
    header_read_timeout: Duration::from_secs(1),
    max_header_bytes: 16 * 1024,
    max_anonymous: 8,
    handshakes_at_once: 16,
};

/// The scaler on a free loopback port; with `client_ca`, only clients the test CA signed.
async fn start(client_ca: bool) -> Server {
    start_with(client_ca, ClientNames::default()).await
}

/// Like `start`, the client's certificate also checked against `names`.
async fn start_with(client_ca: bool, names: ClientNames) -> Server {
    let tls = TlsFiles::generate();
    let cert = Arc::new(
        ServingCert::from_files(tls.path("server.crt").into(), tls.path("server.key").into()).unwrap(),
    );
    let ca = std::fs::read(tls.path("ca.crt")).unwrap();
    let config = server_config(cert, client_ca.then_some(&ca[..])).unwrap();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (values, metrics) = (MetricValues::default(), Metrics::new());
    let scaler = Scaler::new(values.clone(), metrics.clone(), STREAMS);
    tokio::spawn(serve(
        scaler,
        listener,
        config,
        names,
        LIMITS,
        std::future::pending(),
    ));
    Server {
        port,
        values,
        metrics,
        tls,
    }
}

fn pem_certs(path: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut &std::fs::read(path).unwrap()[..])
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A gRPC channel that trusts `ca` and presents `identity` (certificate, key files) if given.
async fn channel(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
                    .unwrap()
                    .unwrap();
            builder.with_client_auth_cert(pem_certs(cert), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

async fn client(server: &Server) -> ExternalScalerClient<Channel> {
    ExternalScalerClient::new(
        channel(server.port, &server.tls.path("ca.crt"), None)
            .await
            .unwrap(),
    )
}

fn trigger(pairs: &[(&str, &str)]) -> ScaledObjectRef {
    ScaledObjectRef {
        name: "workers".into(),
        namespace: "jobs".into(),
        scaler_metadata: pairs
            .iter()
            .chain(&[("scalerAddress", "levee.levee-system.svc:9443")])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn publish(values: &MetricValues, pending: u64, level: Level) {
    values.publish(PolicyValues {
        namespace: "jobs".into(),
        policy: "rule-engine".into(),
        pending,
        queues: vec![QueueValues::new("events", Some(pending), None)],
        latency: None,
        forecast: None,
        sampled_at: jiff::Timestamp::now(),
        sampled: Instant::now(),
        failed: false,
        // Long enough that the values stay fresh while a test makes its certificates with
        // openssl (seconds on a busy machine): staleness is not what these tests are about.
        interval: Duration::from_secs(60),
        circuit: None,
        memory: None,
        source: Default::default(),
        published: 0,
        changed: 0,
    });
    values.publish_circuit(
        "jobs",
        "rule-engine",
        CircuitValues {
            state: State::Closed,
            level,
        },
    );
}

fn requests(server: &Server, rpc: &str, code: &str) -> u64 {
    server
        .metrics
        .external_scaler_requests
        .with_label_values(&[rpc, code])
        .get()
}

#[tokio::test]
async fn answers_come_from_the_published_values() {
    let server = start(false).await;
    publish(&server.values, 250, Level::Warning);
    let mut client = client(&server).await;
    let spec = client
        .get_metric_spec(trigger(&[("policy", "rule-engine"), ("targetValue", "50")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].metric_name, "levee-rule-engine-pending");
    assert_eq!(spec.metric_specs[0].target_size_float, 50.0);
    let metrics = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(trigger(&[("policy", "rule-engine")])),
            metric_name: "levee-rule-engine-pending".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            metrics.metric_values[0].metric_value,
            metrics.metric_values[0].metric_value_float
        ),
        (250, 250.0)
    );
    let level = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(trigger(&[("policy", "rule-engine"), ("metric", "level")])),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(level.metric_values[0].metric_value_float, 1.0, "Warning is 1");
    let active = |pairs: &'static [(&'static str, &'static str)]| {
        let mut client = client.clone();
        async move {
            client
                .is_active(trigger(pairs))
                .await
                .unwrap()
                .into_inner()
                .result
        }
    };
    assert!(active(&[("policy", "rule-engine")]).await);
    assert!(!active(&[("policy", "rule-engine"), ("activationValue", "300")]).await);
    publish(&server.values, 0, Level::Normal);
    assert!(
        !active(&[("policy", "rule-engine")]).await,
        "an empty backlog is inactive"
    );
    assert_eq!(requests(&server, "IsActive", "OK"), 3);
    assert_eq!(requests(&server, "GetMetrics", "OK"), 2);
}

/// `status` has `code` and a message that says `fragment`.
fn assert_refused(status: &tonic::Status, code: tonic::Code, fragment: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(fragment), "{}", status.message());
}

#[tokio::test]
async fn wrong_metadata_and_unknown_policies_get_a_status_that_says_what_to_change() {
    let server = start(false).await;
    publish(&server.values, 5, Level::Normal);
    let mut client = client(&server).await;
    let refused = client
        .get_metric_spec(trigger(&[("policy", "rule-engine"), ("listLength", "5")]))
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        tonic::Code::InvalidArgument,
        "unknown metadata key \"listLength\"",
    );
    let missing = client
        .is_active(trigger(&[("policy", "no-such-policy")]))
        .await
        .unwrap_err();
    assert_refused(&missing, tonic::Code::NotFound, "kubectl get bpp -n jobs");
    let unimplemented = client
        .stream_metric_spec(trigger(&[("policy", "rule-engine")]))
        .await
        .unwrap_err();
    assert_eq!(
        unimplemented.code(),
        tonic::Code::Unimplemented,
        "KEDA falls back to GetMetricSpec"
    );
    assert_eq!(requests(&server, "GetMetricSpec", "InvalidArgument"), 1);
    assert_eq!(requests(&server, "IsActive", "NotFound"), 1);
    // The server keeps answering after refusals.
    assert!(
        client
            .is_active(trigger(&[("policy", "rule-engine")]))
            .await
            .unwrap()
            .into_inner()
            .result
    );
}

/// The next verdict on `stream`, if one comes within `wait` milliseconds.
async fn next(stream: &mut tonic::Streaming<IsActiveResponse>, wait: u64) -> Option<bool> {
    tokio::time::timeout(Duration::from_millis(wait), stream.message())
        .await
        .ok()
        .map(|message| message.unwrap().unwrap().result)
}

#[tokio::test]
async fn stream_is_active_pushes_when_the_verdict_flips_and_only_then() {
    let server = start(false).await;
    let mut client = client(&server).await;
    let mut stream = client
        .stream_is_active(trigger(&[("policy", "rule-engine"), ("activationValue", "10")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut stream, 300).await,
        None,
        "nothing before the policy has values"
    );
    publish(&server.values, 3, Level::Normal);
    assert_eq!(next(&mut stream, 5_000).await, Some(false), "the first verdict");
    publish(&server.values, 8, Level::Normal);
    assert_eq!(next(&mut stream, 300).await, None, "still inactive: nothing sent");
    publish(&server.values, 40, Level::Normal);
    assert_eq!(
        next(&mut stream, 5_000).await,
        Some(true),
        "pushed on the publish that flipped it"
    );
    publish(&server.values, 0, Level::Normal);
    assert_eq!(next(&mut stream, 5_000).await, Some(false));
    assert_eq!(server.metrics.external_scaler_streams.get(), 1);
    drop(stream);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.metrics.external_scaler_streams.get() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.metrics.external_scaler_streams.get(),
        0,
        "the stream ended with its caller"
    );
}

#[tokio::test]
async fn a_certificate_of_the_ca_with_another_common_name_is_unauthenticated() {
    let names = ClientNames(vec!["keda-operator".to_string()].into());
    let server = start_with(true, names).await;
    publish(&server.values, 5, Level::Normal);
    let call_as = |cn: &'static str| {
        let server = &server;
        async move {
            server.tls.client_cert(cn);
            let (ca, cert, key) = (
                server.tls.path("ca.crt"),
                server.tls.path("client.crt"),
                server.tls.path("client.key"),
            );
            let channel = channel(server.port, &ca, Some((&cert, &key))).await.unwrap();
            ExternalScalerClient::new(channel)
                .is_active(trigger(&[("policy", "rule-engine")]))
                .await
        }
    };
    let refused = call_as("intruder").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("\"intruder\"")
            && refused.message().contains("--external-scaler-client-names"),
        "says which name and what to change: {}",
        refused.message()
    );
    assert!(call_as("keda-operator").await.unwrap().into_inner().result);
}

#[tokio::test]
async fn with_a_client_ca_only_its_certificates_get_in() {
    let server = start(true).await;
    publish(&server.values, 5, Level::Normal);
    server.tls.client_cert("keda-operator");
    let (ca, cert, key) = (
        server.tls.path("ca.crt"),
        server.tls.path("client.crt"),
        server.tls.path("client.key"),
    );
    let signed = channel(server.port, &ca, Some((&cert, &key))).await.unwrap();
    assert!(
        ExternalScalerClient::new(signed)
            .is_active(trigger(&[("policy", "rule-engine")]))
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let refused = |channel: Result<Channel, tonic::transport::Error>| async move {
        match channel {
            Err(_) => true,
            Ok(channel) => ExternalScalerClient::new(channel)
                .is_active(trigger(&[("policy", "rule-engine")]))
                .await
                .is_err(),
        }
    };
    assert!(
        refused(channel(server.port, &ca, None).await).await,
        "no certificate"
    );
    let other = TlsFiles::generate();
    other.client_cert("keda-operator");
    assert!(
        refused(
            channel(
                server.port,
                &ca,
                Some((&other.path("client.crt"), &other.path("client.key")))
            )
            .await
        )
        .await,
        "a certificate of another CA"
    );
}

// Several threads: the test's blocking reads must not stall the server's handshake deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_are_closed_and_the_cap_holds() {
    let server = start(false).await;
    publish(&server.values, 5, Level::Normal);
    let mut idle: Vec<std::net::TcpStream> = (0..LIMITS.max_connections * 2)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    // A real client still gets in: it evicts one still in its handshake, once those are past
    // their grace (250 ms: until then a newcomer is turned away instead, so a flood cannot
    // evict a real client's handshake under way).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = client(&server).await;
    assert!(
        client
            .is_active(trigger(&[("policy", "rule-engine")]))
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let closed = idle
        .iter_mut()
        .map(|stream| closed_by_server(stream, LIMITS.handshake_timeout * 3))
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, idle.len(), "every silent connection was closed");
    assert!(server.metrics.external_scaler_connections.get() <= LIMITS.max_connections as i64);
    let by_reason = |reason: &str| {
        server
            .metrics
            .external_scaler_connections_closed
            .with_label_values(&[reason])
            .get()
    };
    assert!(by_reason("evicted") + by_reason("limit") >= LIMITS.max_connections as u64);
    assert!(by_reason("handshake_timeout") >= 1);
}

/// Streams for policies that do not exist are capped per namespace and in all
/// (`RESOURCE_EXHAUSTED`), while a real policy's calls, in another namespace, still answer; an
/// oversized request is refused without being read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_cannot_take_every_stream_and_requests_are_bounded() {
    let server = start(false).await;
    publish(&server.values, 5, Level::Normal);
    let mut client = client(&server).await;
    let in_namespace = |namespace: &str, policy: &str| ScaledObjectRef {
        namespace: namespace.into(),
        ..trigger(&[("policy", policy)])
    };
    let mut held = Vec::new();
    for i in 0..STREAMS.per_namespace {
        let stream = client
            .stream_is_active(in_namespace("tenant-a", &format!("missing-{i}")))
            .await
            .unwrap_or_else(|status| panic!("stream {i}: {status}"));
        held.push(stream.into_inner());
    }
    let refused = client
        .stream_is_active(in_namespace("tenant-a", "one-more"))
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        tonic::Code::ResourceExhausted,
        "namespace tenant-a already has 8",
    );
    for i in 0..STREAMS.total - STREAMS.per_namespace {
        let stream = client
            .stream_is_active(in_namespace("tenant-b", &format!("missing-{i}")))
            .await
            .unwrap();
        held.push(stream.into_inner());
    }
    let refused = client
        .stream_is_active(in_namespace("tenant-c", "p"))
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        tonic::Code::ResourceExhausted,
        "12 StreamIsActive streams are open",
    );
    assert_eq!(requests(&server, "StreamIsActive", "ResourceExhausted"), 2);
    // The real policy's calls are answered meanwhile, on the same connection.
    let reply = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(trigger(&[("policy", "rule-engine")])),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.metric_values[0].metric_value, 5);
    // A stream that ends gives its place back.
    held.truncate(held.len() - 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match client.stream_is_active(in_namespace("tenant-c", "p")).await {
            Ok(stream) => break stream,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("no place came back: {status}"),
        }
    };
    drop(reopened);
    let huge = trigger(&[("policy", "rule-engine"), ("queue", &"q".repeat(64 * 1024))]);
    let refused = client.is_active(huge).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
}
