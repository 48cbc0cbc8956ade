//! `/metrics` at scale: the text exposition of 1,000 policies of 10 queues each (every
//! per-policy series levee keeps, a sample-duration histogram per policy, a depth and a latency
//! per queue), rendered as a scrape renders it. Reports its size, the time to render it and what
//! one render allocates (bytes in all, and the most held at once), counted by a wrapping global
//! allocator, and what the per-policy series hold between scrapes. Run with
//! `cargo bench --bench telemetry`.

use levee::circuit::{Level, State};
use levee::telemetry::{Change, Metrics};
use levee::values::{MetricValues, PolicyValues, QueueValues};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const POLICIES: usize = 1000;
const QUEUES: usize = 10;
const RENDERS: usize = 20;

/// The system allocator, counting.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let grown = new_size - layout.size();
            let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
            ALLOCATED.fetch_add(grown, Ordering::Relaxed);
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: ptr came from `alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes a policy held by the same series as Prometheus client metrics, as levee kept them
/// before it kept its own (docs/benchmarks.md: the per-policy series).
fn held_by_client_metrics() -> f64 {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
    let registry = Registry::new();
    let labels = &["namespace", "policy"];
    let gauge = |name: &str, help: &str| {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels).unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        gauge
    };
    let gauges = [
        gauge(
            "levee_circuit_state",
            "Circuit state: 0 Closed, 1 HalfOpen, 2 Open",
        ),
        gauge("levee_level", "Backlog level: 0 Normal, 1 Warning, 2 Critical"),
        gauge(
            "levee_prolonged",
            "1 while the Prolonged condition is True (not Closed for circuit.alertAfter)",
        ),
        gauge("levee_throttled_targets", "Targets currently held back"),
    ];
    let failures = IntCounterVec::new(
        Opts::new("levee_sample_failures_total", "Ticks whose sample failed"),
        labels,
    )
    .unwrap();
    let durations = HistogramVec::new(
        HistogramOpts::new(
            "levee_sample_duration_seconds",
            "Time to sample all queues of a policy",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        labels,
    )
    .unwrap();
    registry.register(Box::new(failures.clone())).unwrap();
    registry.register(Box::new(durations.clone())).unwrap();
    let empty = LIVE.load(Ordering::Relaxed);
    for i in 0..POLICIES {
        let policy = format!("policy-{i}");
        let at = ["jobs", policy.as_str()];
        for gauge in &gauges {
            gauge.with_label_values(&at).set(0);
        }
        failures.with_label_values(&at).inc();
        durations.with_label_values(&at).observe(0.002);
    }
    let held = LIVE.load(Ordering::Relaxed) - empty;
    drop((registry, gauges, failures, durations));
    held as f64 / POLICIES as f64
}

fn main() {
    let client_bytes = held_by_client_metrics();
    let metrics = Metrics::new();
    let values = MetricValues::default();
    metrics.render_values(values.clone());
    let before_series = LIVE.load(Ordering::Relaxed);
    for i in 0..POLICIES {
        let policy = format!("policy-{i}");
        let circuit = Change::Circuit {
            state: State::Closed,
            level: Level::Normal,
            prolonged: false,
        };
        for change in [
            circuit,
            Change::ThrottledTargets(0),
            Change::Sample {
                took: Some(0.002),
                failed: true,
            },
        ] {
            metrics.policies.record("jobs", &policy, change);
        }
    }
    let series_held = LIVE.load(Ordering::Relaxed) - before_series;
    for i in 0..POLICIES {
        values.publish(PolicyValues {
            namespace: "jobs".into(),
            policy: format!("policy-{i}"),
            pending: 1000 + i as u64,
            queues: (0..QUEUES)
                .map(|q| {
                    QueueValues::new(
                        &format!("queue-{q}"),
                        Some(100 + q as u64),
                        Some(Duration::from_millis(1500 + q as u64)),
                    )
                })
                .collect(),
            latency: Some(Duration::from_millis(1509)),
            forecast: Some(levee::forecast::Forecast {
                growth_per_second: 1.25,
                critical_in: None,
            }),
            sampled_at: jiff::Timestamp::now(),
            sampled: Instant::now(),
            failed: false,
            interval: Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Default::default(),
            published: 0,
            changed: 0,
        });
    }
    let mut size = 0;
    let mut took = Vec::with_capacity(RENDERS);
    let (mut allocated, mut peak) = (0, 0);
    for _ in 0..RENDERS {
        let (before_allocated, before_live) =
            (ALLOCATED.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed));
        PEAK.store(before_live, Ordering::Relaxed);
        let started = Instant::now();
        let text = metrics.render();
        took.push(started.elapsed());
        size = text.len();
        drop(text);
        allocated = ALLOCATED.load(Ordering::Relaxed) - before_allocated;
        peak = PEAK.load(Ordering::Relaxed) - before_live;
    }
    took.sort();
    let lines = {
        let text = metrics.render();
        text.lines().filter(|line| !line.starts_with('#')).count()
    };
    println!(
        "| {POLICIES} policies, {} queues | {lines} series | {:.1} MB | {:.1} ms (median of {RENDERS}) | {:.1} MB allocated, {:.1} MB at most at once | per-policy series: {:.0} bytes a policy (as Prometheus client metrics: {:.0}) |",
        POLICIES * QUEUES,
        size as f64 / 1e6,
        took[RENDERS / 2].as_secs_f64() * 1000.0,
        allocated as f64 / 1e6,
        peak as f64 / 1e6,
        series_held as f64 / POLICIES as f64,
        client_bytes,
    );
}
