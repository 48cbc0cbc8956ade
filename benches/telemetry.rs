//! `/metrics` at scale: the text exposition of 1,000 policies of 10 queues each (every
//! per-policy series levee keeps, a sample-duration histogram per policy, a depth and a latency
//! per queue), rendered as a scrape renders it. Reports its size, the time to render it and what
//! one render allocates (bytes in all, and the most held at once), counted by a wrapping global
//! allocator. Run with `cargo bench --bench telemetry`.

use levee::telemetry::Metrics;
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

fn main() {
    let metrics = Metrics::new();
    let values = MetricValues::default();
    metrics.render_values(values.clone());
    for i in 0..POLICIES {
        let labels = ["jobs", &format!("policy-{i}")];
        metrics.circuit_state.with_label_values(&labels).set(0);
        metrics.level.with_label_values(&labels).set(0);
        metrics.prolonged.with_label_values(&labels).set(0);
        metrics.throttled_targets.with_label_values(&labels).set(0);
        metrics.sample_failures.with_label_values(&labels).inc();
        metrics.sample_duration.with_label_values(&labels).observe(0.002);
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
        "| {POLICIES} policies, {} queues | {lines} series | {:.1} MB | {:.1} ms (median of {RENDERS}) | {:.1} MB allocated, {:.1} MB at most at once |",
        POLICIES * QUEUES,
        size as f64 / 1e6,
        took[RENDERS / 2].as_secs_f64() * 1000.0,
        allocated as f64 / 1e6,
        peak as f64 / 1e6,
    );
}
