//! NATS JetStream sampling-tick benchmark on one real nats-server (started here): 1, 100 and
//! 1,000 durable consumers with work not done, read by as many policies as the CRD's 64 queues a
//! policy take (1, 2, 16), all ticking at once as `levee run` ticks them; depth only
//! (`readLatency: false`) and with latency (one STREAM.MSG.GET per consumer with work). JetStream
//! API requests a tick and connections come from the server's own `/varz`, round trips (requests
//! all in flight at once count as one) from the sampler's; each depth is checked against what
//! nats-py reads of one consumer once per size.
//!
//! Run with `make bench` (or `cargo bench --bench nats`); it prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use levee::api::{NatsSpec, QueueSpec};
use levee::sampler::nats::{NatsAuth, NatsEndpoint};
use levee::sampler::{BackendEndpoint, PreparedQueues, Sampler};
use std::time::{Duration, Instant};
use support::nats::NatsServer;

const PER_CONSUMER: u64 = 5;
/// The most queues one policy may name (the CRD's `maxItems`).
const MAX_QUEUES: usize = 64;

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = NatsServer::start_monitored(&["-js"]);
    let spec: NatsSpec = serde_yaml::from_str(&format!("{{url: '{}', timeout: 5s}}", server.url())).unwrap();
    let endpoint = BackendEndpoint::Nats(NatsEndpoint::from_spec(&spec, NatsAuth::None).unwrap());
    println!(
        "| consumers (policies) | depth only (median / p90) | requests / round trips a tick | depth + latency (median / p90) | requests / round trips a tick | connections (server's /varz) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let api_requests = || {
        server.varz()["jetstream"]["stats"]["api"]["total"]
            .as_u64()
            .expect("/varz counts JetStream API requests")
    };
    for consumers in [1usize, 100, 1000] {
        let stream = format!("bench-{consumers}");
        server.jetstream(&[
            "fill-many",
            &stream,
            &stream,
            &consumers.to_string(),
            &PER_CONSUMER.to_string(),
        ]);
        assert_eq!(
            server.unprocessed_and_outstanding(&stream, "c-0", &[]),
            PER_CONSUMER,
            "nats-py's own figure"
        );
        let queues: Vec<String> = (0..consumers)
            .map(|i| format!("{{name: c-{i}, type: jetstream, stream: {stream}, consumer: c-{i}}}"))
            .collect();
        let policies: Vec<Vec<QueueSpec>> = queues
            .chunks(MAX_QUEUES)
            .map(|chunk| serde_yaml::from_str(&format!("[{}]", chunk.join(", "))).unwrap())
            .collect();
        let mut cells = Vec::new();
        let mut connections = 0;
        for latency in [false, true] {
            let prepared: Vec<PreparedQueues> = policies
                .iter()
                .map(|queues| PreparedQueues::new(queues, latency))
                .collect();
            let sampler = Sampler::new();
            let tick = || {
                runtime.block_on(futures::future::join_all(
                    prepared
                        .iter()
                        .map(|queues| sampler.sample_backend(&endpoint, queues)),
                ))
            };
            let _ = tick();
            let mut times = Vec::new();
            let mut round_trips = 0;
            let ticks = if consumers >= 1000 { 50 } else { 200 };
            let asked_before = api_requests();
            for _ in 0..ticks {
                let started = Instant::now();
                let samples = tick();
                times.push(started.elapsed());
                for sample in &samples {
                    for queue in &sample.queues {
                        assert_eq!(queue.depth, Ok(PER_CONSUMER), "{sample:?}");
                        if latency {
                            assert!(matches!(queue.latency, Some(Ok(_))), "{sample:?}");
                        }
                    }
                }
                round_trips = samples.iter().map(|s| s.round_trips).sum::<usize>();
            }
            let requests = (api_requests() - asked_before) as f64 / f64::from(ticks);
            connections = server.varz()["connections"]
                .as_u64()
                .expect("/varz counts connections");
            let (median, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
            cells.push(format!(
                "{:.3} ms / {:.3} ms | {requests:.0} / {round_trips}",
                median.as_secs_f64() * 1000.0,
                p90.as_secs_f64() * 1000.0
            ));
        }
        println!(
            "| {consumers} ({}) | {} | {} | {connections} |",
            policies.len(),
            cells[0],
            cells[1]
        );
    }
}
