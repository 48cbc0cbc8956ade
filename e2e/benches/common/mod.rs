//! What the KEDA benchmarks share: a worker Deployment and the metric latency through the
//! aggregator.

use serde_json::{Value, json};
use std::time::Instant;

const LATENCY_SAMPLES: usize = 200;

/// A one-pod Deployment `name` of pause containers, for an HPA to scale.
pub fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}}})
}

/// p50 and p99 of 200 sequential GETs of `path` through the aggregator, in ms.
pub fn latency(runtime: &tokio::runtime::Runtime, client: &kube::Client, path: &str) -> (f64, f64) {
    let mut took: Vec<f64> = runtime.block_on(async {
        let mut took = Vec::with_capacity(LATENCY_SAMPLES);
        for _ in 0..LATENCY_SAMPLES {
            let request = http::Request::get(path).body(Vec::new()).unwrap();
            let started = Instant::now();
            client.request_text(request).await.expect("the metric answers");
            took.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        took
    });
    took.sort_by(f64::total_cmp);
    (took[took.len() / 2], took[took.len() * 99 / 100])
}
