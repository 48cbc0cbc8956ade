//! `levee run`: the controller, with its metrics and health endpoints, until SIGTERM or Ctrl-C.

use super::serving_runtime::ServingRuntime;
use crate::controller::PeerSettings;
use crate::controller::{self, LeaseSettings, OwnershipMode, Settings};
use crate::external_scaler::{
    self,
    server::{ClientNames, Scaler, StreamLimits},
};
use crate::metrics_api::auth::{Authenticator, Authorizer, RequestHeaderTrust};
use crate::metrics_api::delegate::{Delegate, FrontProxyCertificate};
use crate::metrics_api::routes;
use crate::metrics_api::server::{self, MetricsApi, PeerServing};
use crate::serving::cert::ServingCert;
use crate::serving::listener::ConnectionLimits;
use crate::telemetry::{self, LogFormat, Metrics};
use crate::values::MetricValues;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// The flags of `levee run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the plain-HTTP server for /healthz and /readyz (and /metrics to loopback
    /// callers with --metrics-plain-loopback). /metrics is otherwise served over HTTPS on
    /// --external-metrics-addr, to a bearer token allowed to get the non-resource URL /metrics.
    #[arg(long, env = "LEVEE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Answer /metrics on the plain-HTTP port to callers on loopback (a sidecar, port-forward).
    #[arg(long, env = "LEVEE_METRICS_PLAIN_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_plain_loopback: bool,
    /// How long a Kubernetes API request may take before it fails (watches excepted), so a hung
    /// call cannot stall a tick or the lease renewal.
    #[arg(long, env = "LEVEE_API_TIMEOUT", default_value = "5s")]
    pub api_timeout: kube::core::Duration,
    /// Kubernetes API requests in flight at once (status, events, producer marks); the others
    /// wait their turn, so a thousand policies changing at once do not open a thousand
    /// connections. The Lease has its own connection and never waits behind them.
    #[arg(long, env = "LEVEE_API_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub api_concurrency: u16,
    /// Address of the HTTPS external metrics API (the aggregated API server).
    #[arg(long, env = "LEVEE_EXTERNAL_METRICS_ADDR", default_value = "0.0.0.0:6443")]
    pub external_metrics_addr: SocketAddr,
    /// Address of the KEDA external scaler (gRPC over TLS, with the metrics API's certificate):
    /// a ScaledObject trigger of type `external` or `external-push` names it in `scalerAddress`.
    /// Off unless set (the chart sets it with `externalScaler.enabled`).
    #[arg(long, env = "LEVEE_EXTERNAL_SCALER_ADDR")]
    pub external_scaler_addr: Option<SocketAddr>,
    /// Only clients with a certificate this CA (PEM) signed may call the external scaler (KEDA's
    /// operator, given `tlsClientCert` and `tlsClientKey`). Without it any client that reaches the
    /// port may read the published figures.
    #[arg(
        long,
        env = "LEVEE_EXTERNAL_SCALER_CLIENT_CA_FILE",
        requires = "external_scaler_addr"
    )]
    pub external_scaler_client_ca_file: Option<std::path::PathBuf>,
    /// With a client CA: the common names the client's certificate must carry (comma-separated;
    /// the chart's certificate for KEDA has `keda-operator`). Empty: any certificate the CA signed.
    #[arg(
        long,
        env = "LEVEE_EXTERNAL_SCALER_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "external_scaler_client_ca_file"
    )]
    pub external_scaler_client_names: Vec<String>,
    /// Serve the external scaler to any client that reaches it, without a client CA: it then
    /// trusts the namespace each request names. Without this flag levee refuses to start an
    /// external scaler that has no --external-scaler-client-ca-file.
    #[arg(
        long,
        env = "LEVEE_EXTERNAL_SCALER_ALLOW_UNAUTHENTICATED",
        default_value_t = false,
        conflicts_with = "external_scaler_client_ca_file"
    )]
    pub external_scaler_allow_unauthenticated: bool,
    /// At most this many `StreamIsActive` streams (external-push triggers) open at once.
    #[arg(long, env = "LEVEE_EXTERNAL_SCALER_STREAMS", default_value_t = 1024)]
    pub external_scaler_streams: usize,
    /// At most this many `StreamIsActive` streams open at once for the ScaledObjects of one
    /// namespace: one tenant cannot take the streams every other one needs.
    #[arg(
        long,
        env = "LEVEE_EXTERNAL_SCALER_STREAMS_PER_NAMESPACE",
        default_value_t = 64
    )]
    pub external_scaler_streams_per_namespace: usize,
    /// Forward requests for the external metrics levee does not serve to this server (an https
    /// URL such as https://keda-metrics-apiserver.keda.svc:443: KEDA's metrics adapter,
    /// prometheus-adapter), so levee can own the APIService beside it. levee authorizes each
    /// caller first, then asks the delegate as the caller (with --delegate-client-cert-file) or
    /// with its own credentials.
    #[arg(long, env = "LEVEE_DELEGATE_EXTERNAL_METRICS")]
    pub delegate_external_metrics: Option<String>,
    /// CA bundle (PEM) that verifies the delegate's serving certificate.
    #[arg(long, env = "LEVEE_DELEGATE_CA_FILE", requires = "delegate_external_metrics")]
    pub delegate_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) levee presents to the delegate as a front proxy, naming each
    /// caller in X-Remote-User/-Group/-Extra-* headers: the delegate must trust its CA as its
    /// requestheader client CA and its CN as an allowed name.
    #[arg(
        long,
        env = "LEVEE_DELEGATE_CLIENT_CERT_FILE",
        requires_all = ["delegate_external_metrics", "delegate_client_key_file"]
    )]
    pub delegate_client_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of --delegate-client-cert-file.
    #[arg(
        long,
        env = "LEVEE_DELEGATE_CLIENT_KEY_FILE",
        requires = "delegate_client_cert_file"
    )]
    pub delegate_client_key_file: Option<std::path::PathBuf>,
    /// Serving certificate (PEM) of the metrics API; re-read when it changes. Without it levee
    /// generates a self-signed one for --tls-san.
    #[arg(long, env = "LEVEE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "LEVEE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Names of the self-signed certificate (default: the `levee` Service's DNS names in
    /// --leader-election-namespace, localhost and 127.0.0.1).
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Rewrite each policy's status at least this often when nothing moved (a policy's
    /// `statusHeartbeat` overrides it).
    #[arg(long, env = "LEVEE_STATUS_HEARTBEAT", default_value = "5m")]
    pub status_heartbeat: kube::core::Duration,
    /// Log line format.
    #[arg(long, env = "LEVEE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Elect a leader with a Lease; only the leader writes. Off: this replica always writes.
    #[arg(long, env = "LEVEE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "levee")]
    pub leader_election_name: String,
    /// How long a leader keeps the Lease without renewing it; a follower takes over after this.
    #[arg(long, default_value = "15s")]
    pub lease_duration: kube::core::Duration,
    /// Who acts on a policy: `leader`, the holder of the Lease --leader-election-name, acts on
    /// every policy; `shards`, each replica holds a Lease of its own
    /// (`<leader-election-name>-<identity>`) and acts on the policies it wins in the ring of the
    /// live ones (docs/architecture.md#policies-spread-over-the-replicas).
    #[arg(long, env = "LEVEE_OWNERSHIP", value_enum, default_value = "leader")]
    pub ownership: OwnershipMode,
    /// Watch only this namespace (policies, their workloads and pods); default: all namespaces.
    #[arg(long, env = "LEVEE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// This replica's identity in the Lease and in events (default: the pod name, else host-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The uid of this replica's Pod (the chart sets it from the downward API), --identity being
    /// the Pod's name: with --ownership=shards the replica's Lease names the Pod as its owner, so
    /// it goes with the Pod even when levee could not delete it (as after `helm uninstall`).
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// The most bytes one reply from a policy's Redis may hold (or the server may send between
    /// two requests); past it the connection is dropped and the queue reports "reply larger
    /// than N bytes". A bound per tenant: a policy naming a hostile server costs levee at most
    /// this per request in flight.
    #[arg(long, env = "LEVEE_MAX_REPLY_BYTES", default_value_t = crate::sampler::DEFAULT_MAX_REPLY_BYTES, value_parser = clap::value_parser!(usize))]
    pub max_reply_bytes: usize,
    /// Where the other replicas reach this one's metrics API (https://<pod IP>:6443; the chart
    /// sets it). Only a policy's owner (the leader, or its replica with --ownership=shards) then
    /// samples it; the others take its values from the owner (docs/architecture.md#who-samples).
    #[arg(long, env = "LEVEE_PEER_URL", requires = "peer_token_file")]
    pub peer_url: Option<String>,
    /// The token this replica presents to its peers: a projected ServiceAccount token of
    /// audience `levee-peers` (the chart mounts one), re-read at each round.
    #[arg(long, env = "LEVEE_PEER_TOKEN_FILE", requires = "peer_url")]
    pub peer_token_file: Option<std::path::PathBuf>,
    /// How often this replica asks each peer for what it published since the last answer: well
    /// under three sample intervals, since older values are stale (and then sampled here).
    #[arg(long, env = "LEVEE_PEER_SYNC_INTERVAL", default_value = "250ms")]
    pub peer_sync_interval: kube::core::Duration,
}

/// Runs the controller; exit 1 when Kubernetes cannot be reached or the controller fails.
pub async fn run(args: RunArgs) -> ExitCode {
    telemetry::init_logging(args.log_format);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let clients = match clients(args.api_timeout.into(), args.api_concurrency.into(), &identity).await {
        Ok(clients) => clients,
        Err(error) => {
            tracing::error!(%error, "cannot reach Kubernetes: set KUBECONFIG or run in a pod with a service account");
            return ExitCode::from(1);
        }
    };
    let cert = match serving_cert(&args) {
        Ok(cert) => Arc::new(cert),
        Err(error) => {
            tracing::error!(%error, "the metrics API has no usable serving certificate");
            return ExitCode::from(1);
        }
    };
    let peer = match peer_settings(&args, &cert) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::error!(%error, "cannot share values with the peers");
            return ExitCode::from(1);
        }
    };
    let settings = Settings {
        status_heartbeat: args.status_heartbeat.into(),
        identity,
        lease: args.leader_elect.then(|| LeaseSettings {
            name: args.leader_election_name.clone(),
            namespace: args.leader_election_namespace.clone(),
            duration: std::time::Duration::from(args.lease_duration).max(std::time::Duration::from_secs(2)),
            pod_uid: args.pod_uid.clone(),
        }),
        ownership: args.ownership,
        watch_namespace: args.watch_namespace.clone(),
        // Twice the requests in flight: enough that the limit on requests, not this, paces
        // writes, and few enough that a cold start does not queue every policy's at once.
        concurrent_writers: usize::from(args.api_concurrency) * 2,
        max_reply_bytes: args.max_reply_bytes,
        peer: peer.clone(),
    };
    let listener = match tokio::net::TcpListener::bind(args.external_metrics_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, addr = %args.external_metrics_addr, "cannot listen for the metrics API");
            return ExitCode::from(1);
        }
    };
    let plain_listener = match tokio::net::TcpListener::bind(args.metrics_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, addr = %args.metrics_addr, "cannot listen on --metrics-addr (the probes' port)");
            return ExitCode::from(1);
        }
    };
    let scaler_listener = match external_scaler_listener(&args, cert.clone()).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot serve the external scaler");
            return ExitCode::from(1);
        }
    };
    let delegate = match delegate(&args, &clients.unqueued).await {
        Ok(delegate) => delegate,
        Err(error) => {
            tracing::error!(%error, "cannot forward external metrics to the delegate");
            return ExitCode::from(1);
        }
    };
    let metrics = Metrics::new();
    let values = MetricValues::default();
    metrics.render_values(values.clone());
    let trust = Arc::new(RequestHeaderTrust::default());
    let trust_task = tokio::spawn(trust.clone().watch(clients.watches.clone()));
    let heap_task = super::heap::start_tending(metrics.heap_allocated.clone());
    let api = Arc::new(MetricsApi {
        values: values.clone(),
        trust,
        authorizer: Authorizer::new(clients.unqueued.clone()),
        authenticator: Authenticator::new(
            clients.unqueued.clone(),
            Default::default(),
            metrics.token_reviews.clone(),
        ),
        peers: peer.as_ref().map(|_| PeerServing {
            replica: settings.identity.clone(),
            authenticator: Authenticator::new(
                clients.unqueued.clone(),
                Default::default(),
                metrics.peer_token_reviews.clone(),
            )
            .for_audience(routes::PEER_AUDIENCE),
        }),
        metrics: metrics.clone(),
        delegate,
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = match ServingRuntime::start() {
        Ok(serving) => serving,
        Err(error) => {
            tracing::error!(%error, "cannot start the servers' threads");
            return ExitCode::from(1);
        }
    };
    let limits = ConnectionLimits::default();
    let plain = {
        let (metrics, stopped) = (metrics.clone(), stopped.clone());
        let plain_loopback = args.metrics_plain_loopback;
        serving.spawn(plain_listener, move |listener| {
            telemetry::plain_port::serve(
                metrics,
                listener,
                plain_loopback,
                telemetry::plain_port::PLAIN_LIMITS,
                wait_for(stopped),
            )
        })
    };
    let metrics_api = {
        let stopped = stopped.clone();
        serving.spawn(listener, move |listener| {
            server::serve(api, listener, cert, limits, wait_for(stopped))
        })
    };
    let scaler = scaler_listener.map(|(listener, tls)| {
        let scaler = Scaler::new(
            values.clone(),
            metrics.clone(),
            StreamLimits {
                total: args.external_scaler_streams,
                per_namespace: args.external_scaler_streams_per_namespace,
            },
        );
        let names = ClientNames(args.external_scaler_client_names.clone().into());
        let stopped = stopped.clone();
        serving.spawn(listener, move |listener| {
            external_scaler::server::serve(scaler, listener, tls, names, limits, wait_for(stopped))
        })
    });
    let servers = match (plain, metrics_api, scaler.transpose()) {
        (Ok(plain), Ok(metrics_api), Ok(scaler)) => [Some(plain), Some(metrics_api), scaler],
        (Err(error), ..) | (_, Err(error), _) | (.., Err(error)) => {
            tracing::error!(%error, "cannot move a listener onto the servers' threads");
            return ExitCode::from(1);
        }
    };
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let result = controller::run(clients, settings, metrics, values, wait_for(stopped)).await;
    signal.abort();
    for server in servers.into_iter().flatten() {
        server.abort();
    }
    drop(serving);
    trust_task.abort();
    heap_task.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "controller failed");
            ExitCode::from(1)
        }
    }
}

/// The delegate of `--delegate-external-metrics`, asked as the caller with
/// `--delegate-client-cert-file`, else with levee's own credentials.
async fn delegate(args: &RunArgs, client: &kube::Client) -> Result<Option<Delegate>, String> {
    let Some(url) = &args.delegate_external_metrics else {
        return Ok(None);
    };
    if let Some(cert_file) = &args.delegate_client_cert_file {
        let cert = std::fs::read(cert_file)
            .map_err(|e| format!("reading --delegate-client-cert-file {}: {e}", cert_file.display()))?;
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), "kube-system");
        match api.get("extension-apiserver-authentication").await {
            Ok(config_map) => {
                let data = config_map.data.unwrap_or_default();
                if let Some(ca) = data.get("requestheader-client-ca-file") {
                    crate::metrics_api::delegate::check_not_issued_by_requestheader_ca(&cert, ca.as_bytes())?;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read kube-system/extension-apiserver-authentication to check that --delegate-client-cert-file is not the cluster's front-proxy certificate")
            }
        }
    }
    let ca = match &args.delegate_ca_file {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| format!("reading --delegate-ca-file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let front_proxy = args
        .delegate_client_cert_file
        .clone()
        .zip(args.delegate_client_key_file.clone())
        .map(|(cert_file, key_file)| FrontProxyCertificate { cert_file, key_file });
    let delegate = Delegate::new(url, ca.as_deref(), config, front_proxy.as_ref())?;
    let asking_as = if front_proxy.is_some() {
        "the caller"
    } else {
        "levee"
    };
    tracing::info!(%url, asking_as, "external metrics levee does not serve are forwarded");
    Ok(Some(delegate))
}

/// The external scaler's socket and TLS configuration, when `--external-scaler-addr` is set.
async fn external_scaler_listener(
    args: &RunArgs,
    cert: Arc<ServingCert>,
) -> Result<Option<(tokio::net::TcpListener, rustls::ServerConfig)>, String> {
    let Some(addr) = args.external_scaler_addr else {
        return Ok(None);
    };
    let client_ca = match &args.external_scaler_client_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("reading --external-scaler-client-ca-file {}: {e}", path.display()))?,
        ),
        None if args.external_scaler_allow_unauthenticated => {
            tracing::warn!(
                %addr,
                "THE EXTERNAL SCALER AUTHENTICATES NO CLIENT (--external-scaler-allow-unauthenticated): anything that reaches {addr} may read every policy's figures and hold StreamIsActive streams in any namespace's name. Set --external-scaler-client-ca-file (the chart does with externalScaler.clusterTriggerAuthentication or externalScaler.clientCaSecret)"
            );
            None
        }
        None => {
            return Err(format!(
                "--external-scaler-addr {addr} needs --external-scaler-client-ca-file: the CA of KEDA's client certificate (the chart sets it with externalScaler.clusterTriggerAuthentication or externalScaler.clientCaSecret); to serve any client without one, pass --external-scaler-allow-unauthenticated"
            ));
        }
    };
    let tls = external_scaler::server::server_config(cert, client_ca.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening on --external-scaler-addr {addr}: {e}"))?;
    Ok(Some((listener, tls)))
}

/// The clients levee talks to Kubernetes with: requests time out after `timeout` and at most
/// `concurrency` are in flight; the Lease has its own, and the metrics API's reviews theirs (never
/// queued behind policy writes, nor the Lease behind the reviews); watches may stay quiet for minutes (the watcher has its own idle
/// timeout). Every request names this replica in its User-Agent (`levee/<version> (<identity>)`),
/// so the API server's audit log says which replica made each write.
async fn clients(
    timeout: std::time::Duration,
    concurrency: usize,
    identity: &str,
) -> Result<controller::ApiClients, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    config
        .headers
        .push((http::header::USER_AGENT, user_agent(identity)));
    let watches = kube::Client::try_from(config.clone()).map_err(|e| e.to_string())?;
    let mut requests = config;
    requests.read_timeout = Some(timeout);
    requests.reset_reader_on_write = true;
    let lease = kube::Client::try_from(requests.clone()).map_err(|e| e.to_string())?;
    let unqueued = kube::Client::try_from(requests.clone()).map_err(|e| e.to_string())?;
    let requests = kube::client::ClientBuilder::try_from(requests)
        .map_err(|e| e.to_string())?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(concurrency))
        .build();
    Ok(controller::ApiClients {
        requests,
        watches,
        lease,
        unqueued,
    })
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// This replica as a peer (`--peer-url`), which needs a Lease (`--leader-elect`).
fn peer_settings(args: &RunArgs, cert: &Arc<ServingCert>) -> Result<Option<PeerSettings>, String> {
    let (Some(url), Some(token_file)) = (&args.peer_url, &args.peer_token_file) else {
        return Ok(None);
    };
    if !args.leader_elect {
        return Err(
            "--peer-url needs --leader-elect: without a Lease no replica says where it answers".into(),
        );
    }
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| format!("--peer-url {url:?} is not a URL: {e}"))?;
    if parsed.scheme_str() != Some("https") || parsed.host().is_none() {
        return Err(format!(
            "--peer-url {url:?} must be an https:// URL of this replica's metrics API, such as https://10.0.0.7:6443"
        ));
    }
    let sync_every = std::time::Duration::from(args.peer_sync_interval);
    if sync_every < std::time::Duration::from_millis(50) {
        return Err(format!("--peer-sync-interval {sync_every:?} is under 50ms"));
    }
    Ok(Some(PeerSettings {
        url: url.clone(),
        cert: cert.clone(),
        token_file: token_file.clone(),
        sync_every,
    }))
}

fn serving_cert(args: &RunArgs) -> Result<ServingCert, String> {
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        return ServingCert::from_files(cert.clone(), key.clone());
    }
    let names = if args.tls_san.is_empty() {
        let mut names = super::serving_cert::service_names("levee", &args.leader_election_namespace);
        names.extend(["localhost".into(), "127.0.0.1".into()]);
        names
    } else {
        args.tls_san.clone()
    };
    ServingCert::self_signed(&names)
}

/// `levee/<version> (<identity>)`; an identity no header may carry is left out.
fn user_agent(identity: &str) -> http::HeaderValue {
    let product = concat!("levee/", env!("CARGO_PKG_VERSION"));
    http::HeaderValue::from_str(&format!("{product} ({identity})"))
        .unwrap_or_else(|_| http::HeaderValue::from_static(product))
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "levee".into());
    format!("{}-{}", host.trim(), std::process::id())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::user_agent;

    #[test]
    fn the_user_agent_names_the_replica_when_a_header_can_carry_it() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            user_agent("levee-7d9f-x2k4p"),
            format!("levee/{version} (levee-7d9f-x2k4p)")
        );
        assert_eq!(user_agent("line\nbreak"), format!("levee/{version}"));
    }
}
