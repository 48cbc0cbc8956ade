//! The gRPC server KEDA calls (`externalscaler.ExternalScaler`, over HTTP/2 and TLS): every answer
//! comes from the published values (`crate::values`), never from Redis. `StreamIsActive` follows
//! the policy's values and pushes the moment its verdict flips, so a burst wakes a workload scaled
//! to zero within the tick that saw it, not at KEDA's next poll.

use super::proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use super::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue,
    ScaledObjectRef,
};
use super::query::{Refusal, ScalerQuery};
use crate::serving::cert::ServingCert;
use crate::serving::listener::{Accepted, ConnectionLimits, ConnectionMetrics, accept_loop};
use crate::telemetry::Metrics;
use crate::values::MetricValues;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::crypto::ring;
use rustls::server::WebPkiClientVerifier;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Response, Status};

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go unanswered before
/// the connection is closed: a half-open connection (a peer that vanished) does not stay.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams (calls) open at once on one connection. KEDA multiplexes every trigger that names
/// one scaler address over one connection, so this is as high as the total below; the caps per
/// namespace are what keep one tenant from taking them all.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// The largest request the scaler decodes: a trigger's metadata is a handful of short strings.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// A stream for a policy that has no values this long after it opened (there is no such policy,
/// or levee has not sampled it since it started) ends with `NOT_FOUND`; KEDA opens it again.
pub const MISSING_POLICY_GRACE: Duration = Duration::from_secs(30);

/// How many `StreamIsActive` streams may be open at once, in all and per namespace (a
/// ScaledObject's namespace): past either, a new one is refused with `RESOURCE_EXHAUSTED`, so
/// one tenant's triggers cannot hold the streams every other tenant's need.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub total: usize,
    pub per_namespace: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            total: 1024,
            per_namespace: 64,
        }
    }
}

/// The streams open now, in all and by namespace.
#[derive(Default)]
struct OpenStreams {
    total: usize,
    by_namespace: std::collections::HashMap<String, usize>,
}

/// The external scaler: the values it answers from and where it counts its work.
#[derive(Clone)]
pub struct Scaler {
    pub values: MetricValues,
    pub metrics: Arc<Metrics>,
    pub stream_limits: StreamLimits,
    streams: Arc<std::sync::Mutex<OpenStreams>>,
}

/// A stream's place in the counts, given back when the stream ends.
struct StreamSlot {
    streams: Arc<std::sync::Mutex<OpenStreams>>,
    namespace: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().expect("stream counts");
        open.total -= 1;
        if let Some(count) = open.by_namespace.get_mut(&self.namespace) {
            *count -= 1;
            if *count == 0 {
                open.by_namespace.remove(&self.namespace);
            }
        }
    }
}

impl Scaler {
    pub fn new(values: MetricValues, metrics: Arc<Metrics>, stream_limits: StreamLimits) -> Self {
        Self {
            values,
            metrics,
            stream_limits,
            streams: Arc::default(),
        }
    }

    /// A place for one more stream in `namespace`, or why there is none.
    fn stream_slot(&self, namespace: &str) -> Result<StreamSlot, Status> {
        let mut open = self.streams.lock().expect("stream counts");
        let in_namespace = open.by_namespace.get(namespace).copied().unwrap_or(0);
        if in_namespace >= self.stream_limits.per_namespace {
            return Err(Status::resource_exhausted(format!(
                "namespace {namespace} already has {in_namespace} StreamIsActive streams open, the most one namespace may (--external-scaler-streams-per-namespace): use the external scaler (polls) for some triggers"
            )));
        }
        if open.total >= self.stream_limits.total {
            return Err(Status::resource_exhausted(format!(
                "{} StreamIsActive streams are open, the most levee holds (--external-scaler-streams): use the external scaler (polls) for some triggers",
                open.total
            )));
        }
        open.total += 1;
        *open.by_namespace.entry(namespace.to_string()).or_default() += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            namespace: namespace.to_string(),
        })
    }

    fn query(&self, rpc: &str, object: Option<&ScaledObjectRef>) -> Result<ScalerQuery, Status> {
        let object = object.ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        ScalerQuery::parse(&object.namespace, &object.scaler_metadata).map_err(|refusal| {
            let status = status(refusal);
            self.count(rpc, status.code());
            tracing::debug!(rpc, namespace = %object.namespace, name = %object.name, message = %status.message(), "external scaler request refused");
            status
        })
    }

    fn reading(&self, rpc: &str, query: &ScalerQuery) -> Result<f64, Status> {
        let values = self.values.get(&query.namespace, &query.policy);
        query
            .reading(values.as_deref(), Instant::now())
            .map_err(|refusal| {
                let status = status(refusal);
                self.count(rpc, status.code());
                status
            })
    }

    fn count(&self, rpc: &str, code: tonic::Code) {
        self.metrics
            .external_scaler_requests
            .with_label_values(&[rpc, code_name(code)])
            .inc();
    }
}

fn status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::InvalidArgument(message) => Status::invalid_argument(message),
        Refusal::NotFound(message) => Status::not_found(message),
        Refusal::Unavailable(message) => Status::unavailable(message),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        _ => "Other",
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let query = self.query("IsActive", Some(request.get_ref()))?;
        let reading = self.reading("IsActive", &query)?;
        self.count("IsActive", tonic::Code::Ok);
        Ok(Response::new(IsActiveResponse {
            result: query.active(reading),
        }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let query = self.query("StreamIsActive", Some(request.get_ref()))?;
        let slot = self.stream_slot(&query.namespace).inspect_err(|status| {
            self.count("StreamIsActive", status.code());
        })?;
        self.count("StreamIsActive", tonic::Code::Ok);
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(push_verdicts(self.clone(), query, sender, slot));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let query = self.query("GetMetricSpec", Some(request.get_ref()))?;
        self.count("GetMetricSpec", tonic::Code::Ok);
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: query.metric_name(),
                target_size: query.target.ceil() as i64,
                target_size_float: query.target,
            }],
        }))
    }

    type StreamMetricSpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

    /// A trigger's target comes from its own metadata and never changes while it lives, so there
    /// is nothing to push: KEDA falls back to GetMetricSpec, as its proto says it does.
    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        self.count("StreamMetricSpec", tonic::Code::Unimplemented);
        Err(Status::unimplemented(
            "levee's metric specs come from the trigger's metadata and never change: use GetMetricSpec",
        ))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let query = self.query("GetMetrics", request.scaled_object_ref.as_ref())?;
        let reading = self.reading("GetMetrics", &query)?;
        self.count("GetMetrics", tonic::Code::Ok);
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: if request.metric_name.is_empty() {
                    query.metric_name()
                } else {
                    request.metric_name
                },
                metric_value: reading.round() as i64,
                metric_value_float: reading,
            }],
        }))
    }
}

/// Sends the verdict when the stream opens (once the policy has values) and every time it flips,
/// until the caller goes away. Values that cannot be read (stale, a failed sample, a policy not
/// there yet) change nothing: the last verdict stands, as it does for KEDA's polls.
async fn push_verdicts(
    scaler: Scaler,
    query: ScalerQuery,
    sender: mpsc::Sender<Result<IsActiveResponse, Status>>,
    slot: StreamSlot,
) {
    scaler.metrics.external_scaler_streams.inc();
    let mut values = scaler.values.subscribe(&query.namespace, &query.policy);
    let mut last = None;
    // Until the policy has values: a stream for a policy that does not exist does not stay.
    let mut give_up = Some(tokio::time::Instant::now() + MISSING_POLICY_GRACE);
    loop {
        let reading = {
            let current = values.borrow_and_update();
            if current.is_some() {
                give_up = None;
            }
            query.reading(current.as_deref(), Instant::now())
        };
        if let Ok(reading) = reading {
            let active = query.active(reading);
            if last != Some(active) {
                if sender
                    .send(Ok(IsActiveResponse { result: active }))
                    .await
                    .is_err()
                {
                    break;
                }
                last = Some(active);
            }
        }
        tokio::select! {
            changed = values.changed() => if changed.is_err() { break },
            _ = sender.closed() => break,
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                if let Err(refusal) = query.reading(None, Instant::now()) {
                    let _ = sender.send(Err(status(refusal))).await;
                }
                break;
            }
        }
    }
    drop(values);
    scaler.values.unsubscribed(&query.namespace, &query.policy);
    scaler.metrics.external_scaler_streams.dec();
    drop(slot);
}

/// The TLS configuration: levee's serving certificate, HTTP/2 only, and, with `client_ca`, only
/// clients whose certificate that CA signed (KEDA's operator with `tlsClientCert`).
pub fn server_config(
    cert: Arc<ServingCert>,
    client_ca: Option<&[u8]>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match client_ca {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| format!("--external-scaler-client-ca-file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--external-scaler-client-ca-file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("--external-scaler-client-ca-file holds no CERTIFICATE block".into());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--external-scaler-client-ca-file: {e}"))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(cert)
        }
        None => builder.with_no_client_auth().with_cert_resolver(cert),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Who may call: with a client CA, the common names its certificates must carry (KEDA's
/// `keda-operator`); empty, any certificate the CA signed.
#[derive(Clone, Debug, Default)]
pub struct ClientNames(pub Arc<[String]>);

impl ClientNames {
    /// Why a client whose verified certificate has common name `cn` (None: no certificate, or a
    /// server without a client CA) may not call; `None` when it may.
    pub fn refusal(&self, cn: Option<&str>) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        match cn {
            Some(cn) if self.0.iter().any(|name| name == cn) => None,
            Some(cn) => Some(format!(
                "the client certificate's CN {cn:?} is not one of --external-scaler-client-names ({})",
                self.0.join(", ")
            )),
            None => Some("no client certificate: the external scaler needs KEDA's (tlsClientCert)".into()),
        }
    }
}

/// Serves the external scaler on `listener` until `shutdown` resolves; a client whose certificate
/// `names` refuses gets UNAUTHENTICATED for every call, saying why.
pub async fn serve(
    scaler: Scaler,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    names: ClientNames,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let metrics = ConnectionMetrics {
        open: scaler.metrics.external_scaler_connections.clone(),
        closed: scaler.metrics.external_scaler_connections_closed.clone(),
    };
    let service = ExternalScalerServer::new(scaler)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    accept_loop(
        "external scaler",
        listener,
        acceptor,
        limits,
        metrics,
        shutdown,
        move |accepted| connection(service.clone(), names.clone(), accepted, limits),
    )
    .await
}

async fn connection(
    service: ExternalScalerServer<Scaler>,
    names: ClientNames,
    accepted: Accepted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    limits: ConnectionLimits,
) -> Result<(), String> {
    let client = accepted.client_common_name();
    tracing::debug!(peer = %accepted.peer, client = client.as_deref().unwrap_or("-"), "external scaler connection");
    match names.refusal(client.as_deref()) {
        None => serve_http2(accepted, TowerToHyperService::new(service), limits).await,
        Some(refusal) => {
            tracing::warn!(peer = %accepted.peer, %refusal, "external scaler client refused");
            let refuse = tower::service_fn(move |_: http::Request<hyper::body::Incoming>| {
                let status = Status::unauthenticated(refusal.clone());
                async move { Ok::<_, std::convert::Infallible>(status.into_http::<tonic::body::Body>()) }
            });
            serve_http2(accepted, TowerToHyperService::new(refuse), limits).await
        }
    }
}

/// HTTP/2 over one TLS connection, with the keep-alive and stream limits above.
async fn serve_http2<S>(
    accepted: Accepted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    service: S,
    limits: ConnectionLimits,
) -> Result<(), String>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(accepted.stream), service)
        .await
        .map_err(|e| e.to_string())
}
