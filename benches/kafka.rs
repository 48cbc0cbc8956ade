//! Kafka sampling-tick benchmark on one real broker (Apache Kafka 4.4, KRaft, started here): a
//! policy of one `kafka` queue over a topic of 1, 100 and 1,000 partitions, every partition
//! lagging, sampled with depth only (`readLatency: false`) and with latency (one record fetched
//! per lagging partition). Requests per tick come from the sampler's own count (each a request
//! to one broker), the figure is checked against `kafka-consumer-groups.sh --describe` once per
//! size.
//!
//! Then 1, 10 and 100 policies of one queue each (each its own topic and group), ticking together
//! as the controller makes the policies of one cluster tick: the requests of all of them in a
//! tick (summed over their samples) and the time until the last has its sample.
//!
//! Run with `make bench` (or `cargo bench --bench kafka`); it prints two Markdown tables.

#[path = "../tests/support/mod.rs"]
mod support;

use levee::api::{KafkaSpec, QueueSpec};
use levee::sampler::kafka::KafkaEndpoint;
use levee::sampler::{BackendEndpoint, PreparedQueues, Sampler};
use std::time::{Duration, Instant};
use support::kafka::KafkaBroker;

const PER_PARTITION: u32 = 5;
const COMMITTED: u32 = 2;

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = KafkaBroker::start();
    let spec: KafkaSpec = serde_yaml::from_str(&format!(
        "{{bootstrapServers: ['{}'], timeout: 5s}}",
        broker.bootstrap()
    ))
    .unwrap();
    let endpoint = BackendEndpoint::Kafka(KafkaEndpoint::from_spec(&spec, None).unwrap());
    println!(
        "| partitions | depth only (median / p90) | requests a tick | depth + latency (median / p90) | requests a tick |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for partitions in [1u32, 100, 1000] {
        let topic = format!("bench-{partitions}");
        broker.jobs(
            "fill",
            &[
                &topic,
                &partitions.to_string(),
                &PER_PARTITION.to_string(),
                "bench",
                &COMMITTED.to_string(),
            ],
        );
        let expected = broker.tool_lag("bench", &topic);
        assert_eq!(expected, u64::from(partitions * (PER_PARTITION - COMMITTED)));
        let queues: Vec<QueueSpec> = serde_yaml::from_str(&format!(
            "[{{name: q, type: kafka, topic: {topic}, consumerGroup: bench}}]"
        ))
        .unwrap();
        let mut cells = Vec::new();
        for latency in [false, true] {
            let prepared = PreparedQueues::new(&queues, latency);
            let sampler = Sampler::new();
            // The first tick learns the layout (Metadata, FindCoordinator).
            let _ = runtime.block_on(sampler.sample_backend(&endpoint, &prepared));
            let mut times = Vec::new();
            let mut requests = 0;
            for _ in 0..if partitions >= 1000 { 50 } else { 200 } {
                let started = Instant::now();
                let sample = runtime.block_on(sampler.sample_backend(&endpoint, &prepared));
                times.push(started.elapsed());
                assert_eq!(sample.queues[0].depth, Ok(expected), "{sample:?}");
                if latency {
                    assert!(matches!(sample.queues[0].latency, Some(Ok(_))), "{sample:?}");
                }
                requests = sample.round_trips;
            }
            let (median, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
            cells.push(format!(
                "{:.3} ms / {:.3} ms | {requests}",
                median.as_secs_f64() * 1000.0,
                p90.as_secs_f64() * 1000.0
            ));
        }
        println!("| {partitions} | {} | {} |", cells[0], cells[1]);
    }

    println!(
        "\n| policies ticking together | tick, all of them (median / p90) | requests a tick, all of them |"
    );
    println!("|---:|---:|---:|");
    broker.jobs(
        "fill-many",
        &[
            "p",
            "100",
            "1",
            &PER_PARTITION.to_string(),
            "g",
            &COMMITTED.to_string(),
        ],
    );
    for policies in [1usize, 10, 100] {
        let prepared: Vec<PreparedQueues> = (0..policies)
            .map(|i| {
                let queues: Vec<QueueSpec> = serde_yaml::from_str(&format!(
                    "[{{name: q, type: kafka, topic: p-{i}, consumerGroup: g-{i}}}]"
                ))
                .unwrap();
                PreparedQueues::new(&queues, false)
            })
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
        let mut requests = 0;
        for _ in 0..100 {
            let started = Instant::now();
            let samples = tick();
            times.push(started.elapsed());
            for sample in &samples {
                assert_eq!(
                    sample.queues[0].depth,
                    Ok(u64::from(PER_PARTITION - COMMITTED)),
                    "{sample:?}"
                );
            }
            requests = samples.iter().map(|s| s.round_trips).sum::<usize>();
        }
        let (median, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
        println!(
            "| {policies} | {:.3} ms / {:.3} ms | {requests} |",
            median.as_secs_f64() * 1000.0,
            p90.as_secs_f64() * 1000.0
        );
    }
}
