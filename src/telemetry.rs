//! Logs (tracing, text or JSON), the Prometheus registry with levee's metrics, and the plain-HTTP
//! port for `/metrics`, `/healthz` and `/readyz` (`plain_port`).

use crate::values::MetricValues;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector gets plain `key=value` text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The `kind` label values of `levee_api_writes_total`.
pub const API_WRITE_KINDS: [&str; 6] = [
    "status",
    "workload",
    "pod_condition",
    "pod_annotations",
    "event",
    "hpa",
];

/// levee's metrics. Labels: `namespace`, `policy` (and `queue`, `from`/`to`, `kind`, `result`).
pub struct Metrics {
    pub registry: Registry,
    /// The series of each policy this replica acts on (state, level, samples, transitions).
    pub policies: PolicySeries,
    pub reconciliations: IntCounterVec,
    pub api_writes: IntCounterVec,
    pub metrics_api_requests: IntCounterVec,
    pub metrics_api_duration: Histogram,
    /// Open connections to the external metrics API.
    pub metrics_api_connections: IntGauge,
    /// Connections closed by a limit, by reason.
    pub metrics_api_connections_closed: IntCounterVec,
    /// Open connections to the plain port.
    pub plain_connections: IntGauge,
    /// Connections to the plain port closed by a limit, by reason.
    pub plain_connections_closed: IntCounterVec,
    /// TokenReviews of bearer tokens on the metrics API, by result (`auth::TOKEN_REVIEW_RESULTS`).
    pub token_reviews: IntCounterVec,
    /// TokenReviews of the peers' bearer tokens on `/peer/values`, by result (the same results).
    pub peer_token_reviews: IntCounterVec,
    /// This replica's requests for its peers' values, by peer and result (`ok`, `unreachable`,
    /// `refused`, `invalid`).
    pub peer_fetches: IntCounterVec,
    /// Policies with a task on this replica: those it owns (and, without peers, every one).
    pub policy_tasks: IntGauge,
    /// Bytes the allocator counts as held by levee's allocations (`cli::heap`).
    pub heap_allocated: IntGauge,
    /// Calls to the KEDA external scaler, by rpc and gRPC status code.
    pub external_scaler_requests: IntCounterVec,
    /// `StreamIsActive` streams open now.
    pub external_scaler_streams: IntGauge,
    /// Open connections to the external scaler.
    pub external_scaler_connections: IntGauge,
    /// Connections to the external scaler closed by a limit, by reason.
    pub external_scaler_connections_closed: IntCounterVec,
    ready: AtomicBool,
    /// The published values rendered at each scrape (`render_values`).
    values: std::sync::OnceLock<MetricValues>,
    /// The length of the last rendering, to size the next one's buffer.
    last_render_len: AtomicUsize,
}

pub mod plain_port;
mod policy_series;
mod text;
mod values_text;

pub use policy_series::{Change, PolicySeries};

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let metrics_api_duration = Histogram::with_opts(
            HistogramOpts::new(
                "levee_metrics_api_request_duration_seconds",
                "Time to answer one request to the external metrics API (authorization included)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(metrics_api_duration.clone()))
            .expect("unique metric");
        let single_gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let api_writes = counter(
            "levee_api_writes_total",
            "Writes to the Kubernetes API by kind",
            &["kind"],
        );
        // Every kind exported from the start, at 0: a check that no write was made reads a
        // series that exists, not a missing one.
        for kind in API_WRITE_KINDS {
            api_writes.with_label_values(&[kind]);
        }
        Arc::new(Self {
            policies: PolicySeries::default(),
            reconciliations: counter(
                "levee_reconciliations_total",
                "Policy reconciliations by result",
                &["result"],
            ),
            api_writes,
            metrics_api_requests: counter(
                "levee_metrics_api_requests_total",
                "Requests to the external metrics API by HTTP status code",
                &["code"],
            ),
            metrics_api_duration,
            metrics_api_connections: single_gauge(
                "levee_metrics_api_connections",
                "Open connections to the external metrics API",
            ),
            metrics_api_connections_closed: counter(
                "levee_metrics_api_connections_closed_total",
                "Connections to the external metrics API closed by a limit (limit, evicted, handshake_timeout)",
                &["reason"],
            ),
            plain_connections: single_gauge(
                "levee_plain_connections",
                "Open connections to the plain port (probes, loopback /metrics)",
            ),
            plain_connections_closed: counter(
                "levee_plain_connections_closed_total",
                "Connections to the plain port closed by a limit (evicted_anonymous: the oldest, to make room at the cap)",
                &["reason"],
            ),
            token_reviews: counter(
                "levee_token_reviews_total",
                "Bearer tokens on the metrics API by result: authenticated, rejected, failed (the review did not answer), over_budget (429: too many new tokens at once), too_long (over 4 KiB, not reviewed)",
                &["result"],
            ),
            peer_token_reviews: counter(
                "levee_peer_token_reviews_total",
                "Bearer tokens of peers asking for /peer/values by result (as levee_token_reviews_total)",
                &["result"],
            ),
            peer_fetches: counter(
                "levee_peer_fetches_total",
                "Requests for a peer's values by peer and result: ok, unreachable (no connection, TLS or a timeout), refused (an HTTP error status), invalid (an answer levee cannot take)",
                &["peer", "result"],
            ),
            heap_allocated: single_gauge(
                "levee_heap_allocated_bytes",
                "Bytes of heap held by levee's allocations, as the allocator counts them (resident memory adds the allocator's free pages, stacks and the binary); updated every 10 s",
            ),
            policy_tasks: single_gauge(
                "levee_policy_tasks",
                "Policies this replica runs a task for: those it owns; with peers, others only while their owner's values do not arrive",
            ),
            external_scaler_requests: counter(
                "levee_external_scaler_requests_total",
                "Calls to the KEDA external scaler by rpc and gRPC status code",
                &["rpc", "code"],
            ),
            external_scaler_streams: single_gauge(
                "levee_external_scaler_streams",
                "StreamIsActive streams open to the KEDA external scaler",
            ),
            external_scaler_connections: single_gauge(
                "levee_external_scaler_connections",
                "Open connections to the KEDA external scaler",
            ),
            external_scaler_connections_closed: counter(
                "levee_external_scaler_connections_closed_total",
                "Connections to the KEDA external scaler closed by a limit (limit, evicted, handshake_timeout)",
                &["reason"],
            ),
            ready: AtomicBool::new(false),
            values: std::sync::OnceLock::new(),
            last_render_len: AtomicUsize::new(0),
            registry,
        })
    }

    /// Removes every series of a deleted policy.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        self.policies.forget(namespace, policy);
    }

    /// Renders `levee_pending`, `levee_queue_depth`, the latencies and the forecast from the
    /// published values at each scrape, rather than keeping a series per queue beside them
    /// (10,000 queues took 7 MB that way). Called once; a second call is ignored.
    pub fn render_values(&self, values: MetricValues) {
        let _ = self.values.set(values);
    }

    /// Marks the process ready (`/readyz` answers 200).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The text exposition of every metric, in a buffer sized from the last one (a scrape at
    /// 1,000 policies is megabytes: growing it by doubling held up to twice that).
    pub fn render(&self) -> String {
        let expected = self.last_render_len.load(Ordering::Relaxed);
        let mut text = String::with_capacity(expected + expected / 16);
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .expect("text encoding never fails");
        self.policies.write(&mut text);
        if let Some(values) = self.values.get() {
            values_text::write(values, &mut text);
        }
        self.last_render_len.store(text.len(), Ordering::Relaxed);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{PolicyValues, QueueValues};

    /// The values of policy `jobs/<policy>` sampled just now, without latency or forecast.
    fn published(policy: &str, pending: u64, queues: Vec<QueueValues>) -> PolicyValues {
        PolicyValues {
            namespace: "jobs".into(),
            policy: policy.into(),
            pending,
            queues,
            latency: None,
            forecast: None,
            sampled_at: jiff::Timestamp::now(),
            sampled: std::time::Instant::now(),
            failed: false,
            interval: std::time::Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Default::default(),
            published: 0,
            changed: 0,
        }
    }

    #[test]
    fn pending_and_queue_depths_are_rendered_from_the_published_values() {
        let metrics = Metrics::new();
        let values = MetricValues::default();
        metrics.render_values(values.clone());
        values.publish(PolicyValues {
            latency: Some(std::time::Duration::from_millis(1500)),
            forecast: Some(crate::forecast::Forecast {
                growth_per_second: 2.5,
                critical_in: None,
            }),
            ..published(
                "p",
                7,
                vec![
                    QueueValues::new("a", Some(5), Some(std::time::Duration::from_millis(1500))),
                    QueueValues::new("b", None, None),
                ],
            )
        });
        let text = metrics.render();
        assert!(
            text.contains("levee_pending{namespace=\"jobs\",policy=\"p\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("levee_queue_depth{namespace=\"jobs\",policy=\"p\",queue=\"a\"} 5\n"));
        assert!(!text.contains("queue=\"b\""), "a queue never read has no series");
        assert!(text.contains("levee_latency_seconds{namespace=\"jobs\",policy=\"p\"} 1.5\n"));
        assert!(
            text.contains("levee_queue_latency_seconds{namespace=\"jobs\",policy=\"p\",queue=\"a\"} 1.5\n")
        );
        assert!(text.contains("levee_growth_per_second{namespace=\"jobs\",policy=\"p\"} 2.5\n"));
        assert!(
            !text.contains("levee_redis_memory_ratio{"),
            "no memory read is no ratio"
        );
        assert!(
            !text.contains("levee_critical_in_seconds{"),
            "no forecast of critical, no series"
        );
        values.publish(PolicyValues {
            memory: Some(crate::values::MemoryValues {
                used: 600,
                max: Some(800),
                warning: Some(560),
            }),
            ..published("m", 0, Vec::new())
        });
        let text = metrics.render();
        assert!(
            text.contains("levee_redis_memory_ratio{namespace=\"jobs\",policy=\"m\"} 0.75\n"),
            "{text}"
        );
        assert!(text.contains("levee_redis_memory_used_bytes{namespace=\"jobs\",policy=\"m\"} 600\n"));
        assert!(text.contains("levee_redis_memory_warning_bytes{namespace=\"jobs\",policy=\"m\"} 560\n"));
        values.forget("jobs", "p");
        values.forget("jobs", "m");
        assert!(
            !metrics.render().contains("levee_pending{"),
            "a deleted policy's series go"
        );
    }

    #[test]
    fn the_exposition_keeps_each_family_together_under_one_header() {
        let metrics = Metrics::new();
        let values = MetricValues::default();
        metrics.render_values(values.clone());
        for policy in ["a", "b"] {
            let circuit = Change::Circuit {
                state: crate::circuit::State::Open,
                level: crate::circuit::Level::Critical,
                prolonged: false,
            };
            metrics.policies.record("jobs", policy, circuit);
            let sample = Change::Sample {
                took: Some(0.01),
                failed: false,
            };
            metrics.policies.record("jobs", policy, sample);
            values.publish(PolicyValues {
                latency: Some(std::time::Duration::from_secs(2)),
                ..published(
                    policy,
                    3,
                    vec![
                        QueueValues::new("q\"1", Some(1), Some(std::time::Duration::from_secs(2))),
                        QueueValues::new("q2", Some(2), None),
                    ],
                )
            });
        }
        let text = metrics.render();
        let mut seen = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "{current} has two headers:\n{text}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|base| *base == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "{line} outside its family:\n{text}");
            }
        }
        assert!(seen.contains("levee_queue_latency_seconds") && seen.contains("levee_circuit_state"));
        assert!(
            text.contains("levee_queue_depth{namespace=\"jobs\",policy=\"b\",queue=\"q\\\"1\"} 1\n"),
            "a quote in a queue name is escaped:\n{text}"
        );
        assert_eq!(text.matches("levee_pending{").count(), 2);
    }
}
