//! `levee run`: the controller, with its metrics and health endpoints, until SIGTERM or Ctrl-C.

use crate::controller::{self, LeaseSettings, Settings};
use crate::telemetry::{self, LogFormat, Metrics};
use std::net::SocketAddr;
use std::process::ExitCode;

/// The flags of `levee run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "LEVEE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Rewrite each policy's status at least this often, even when nothing changed.
    #[arg(long, env = "LEVEE_STATUS_HEARTBEAT", default_value = "30s")]
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
    /// Watch only this namespace (policies, their workloads and pods); default: all namespaces.
    #[arg(long, env = "LEVEE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// This replica's identity in the Lease and in events (default: the pod name, else host-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs the controller; exit 1 when Kubernetes cannot be reached or the controller fails.
pub async fn run(args: RunArgs) -> ExitCode {
    telemetry::init_logging(args.log_format);
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot reach Kubernetes: set KUBECONFIG or run in a pod with a service account");
            return ExitCode::from(1);
        }
    };
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_seconds = std::time::Duration::from(args.lease_duration).as_secs().max(2);
    let settings = Settings {
        status_heartbeat: args.status_heartbeat.into(),
        identity,
        lease: args.leader_elect.then(|| LeaseSettings {
            name: args.leader_election_name.clone(),
            namespace: args.leader_election_namespace.clone(),
            duration_seconds: lease_seconds,
            grace_seconds: (lease_seconds / 3).max(1),
        }),
        watch_namespace: args.watch_namespace.clone(),
    };
    let metrics = Metrics::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(telemetry::serve(
        metrics.clone(),
        args.metrics_addr,
        wait_for(stopped.clone()),
    ));
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let result = controller::run(client, settings, metrics, wait_for(stopped)).await;
    signal.abort();
    server.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "controller failed");
            ExitCode::from(1)
        }
    }
}

async fn wait_for(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
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
