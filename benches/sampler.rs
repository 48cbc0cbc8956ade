//! Sampling-tick benchmark: levee's pipelined sampler against two references on one real
//! `redis-server`, in the same run:
//! - the floor: `redis-benchmark -P 1000 LLEN` (Redis's own pipelined rate), scaled to N reads;
//! - one `EVAL` per queue without pipelining (the pattern KEDA's Redis list scaler uses).
//!
//! A second table: the same tick over Sidekiq queues, depth only (`readLatency: false`) against
//! depth and latency (levee's script in the same pipeline), every tick and with the default
//! `latencyRefresh` (a tenth of the queues' latency a tick at a 1 s interval).
//!
//! Run with `make bench` (or `cargo bench --bench sampler`); it prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use levee::api::{BackpressurePolicySpec, QueueSpec, RedisSpec};
use levee::sampler::{BackendEndpoint, Credentials, Endpoint, PreparedQueues, Sampler};
use std::process::Command;
use std::time::{Duration, Instant};

/// KEDA's list-length script: TYPE, then the matching length command.
const KEDA_SCRIPT: &str = r#"local t = redis.call('type', KEYS[1])["ok"]
if t == "list" then return redis.call('llen', KEYS[1])
elseif t == "set" then return redis.call('scard', KEYS[1])
elseif t == "zset" then return redis.call('zcard', KEYS[1])
elseif t == "hash" then return redis.call('hlen', KEYS[1])
else return 0 end"#;

struct Row {
    queues: usize,
    levee: Stats,
    levee_round_trips: usize,
    eval: Stats,
    floor: Duration,
}

struct Stats {
    median: Duration,
    p90: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
    }
}

fn iterations(queues: usize) -> usize {
    match queues {
        0..=10 => 500,
        11..=1000 => 100,
        _ => 15,
    }
}

/// A command in Redis's wire protocol (for `redis-cli --pipe`: JSON needs no quoting there).
fn resp(args: &[&str]) -> String {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command += &format!("${}\r\n{arg}\r\n", arg.len());
    }
    command
}

fn fill(server: &support::RedisServer, queues: usize) {
    // One pipelined redis-cli call writes every list (RPUSH q<i> job) and every Sidekiq queue
    // (one job enqueued 10 s ago, in `queue:s<i>`).
    let enqueued_at = format!(
        "{{\"class\":\"Bench\",\"jid\":\"1\",\"enqueued_at\":{:.3}}}",
        server.time_ms() as f64 / 1000.0 - 10.0
    );
    let script: String = (0..queues)
        .map(|i| {
            resp(&["RPUSH", &format!("q{i}"), "job"])
                + &resp(&["LPUSH", &format!("queue:s{i}"), &enqueued_at])
        })
        .collect();
    let mut child = Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Redis's own pipelined LLEN rate, as the time N reads would take at that rate.
fn floor(port: u16, queues: usize) -> Duration {
    let output = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-P",
            "1000",
            "-n",
            "2000000",
            "-c",
            "1",
            "-q",
            "LLEN",
            "q0",
        ])
        .output()
        .expect("redis-benchmark (redis-tools) is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    // e.g. "LLEN q0: 2150537.50 requests per second, p50=0.407 msec"
    let rate: f64 = text
        .rsplit('\r')
        .find_map(|part| part.split(": ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"));
    Duration::from_secs_f64(queues as f64 / rate)
}

async fn eval_per_queue(client: &redis::Client, queues: usize) -> Duration {
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    let mut total: i64 = 0;
    for i in 0..queues {
        // KEDA sends the whole script with EVAL on every query (go-redis `Eval`).
        let depth: i64 = redis::cmd("EVAL")
            .arg(KEDA_SCRIPT)
            .arg(1)
            .arg(format!("q{i}"))
            .query_async(&mut connection)
            .await
            .unwrap();
        total += depth;
    }
    assert_eq!(total, queues as i64);
    started.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = support::RedisServer::start();
    let sizes = [1usize, 100, 10_000];
    fill(&server, *sizes.iter().max().unwrap());
    let spec: RedisSpec =
        serde_json::from_value(serde_json::json!({ "url": server.url(), "timeout": "10s" })).unwrap();
    let endpoint = Endpoint::from_spec(&spec, None, Credentials::default(), None).unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let sampler = Sampler::new();
    let mut rows = Vec::new();
    for &queues in &sizes {
        let specs: Vec<QueueSpec> = (0..queues)
            .map(|i| {
                serde_json::from_value(
                    serde_json::json!({"name": format!("q{i}"), "type": "list", "key": format!("q{i}")}),
                )
                .unwrap()
            })
            .collect();
        let warm = sampler.sample(&endpoint, &specs).await;
        assert!(!warm.failed() && warm.pending() == queues as u64);
        let runs = iterations(queues);
        let mut levee = Vec::with_capacity(runs);
        let mut round_trips = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let sample = sampler.sample(&endpoint, &specs).await;
            levee.push(started.elapsed());
            round_trips = sample.round_trips;
        }
        let mut eval = Vec::with_capacity(runs);
        for _ in 0..runs {
            eval.push(eval_per_queue(&client, queues).await);
        }
        rows.push(Row {
            queues,
            levee: stats(levee),
            levee_round_trips: round_trips,
            eval: stats(eval),
            floor: floor(server.port, queues),
        });
    }
    let mut latency_rows = Vec::new();
    for &queues in &sizes {
        let specs: Vec<QueueSpec> = (0..queues)
            .map(|i| {
                serde_json::from_value(
                    serde_json::json!({"name": format!("s{i}"), "type": "sidekiq", "key": format!("s{i}")}),
                )
                .unwrap()
            })
            .collect();
        let endpoint = BackendEndpoint::Redis(endpoint.clone());
        let mut row = Vec::new();
        for reads in LatencyReads::ALL {
            let prepared = reads.prepare(&server, &specs);
            let read_latency = reads != LatencyReads::DepthOnly;
            let warm = sampler.sample_backend(&endpoint, &prepared).await;
            assert_eq!(warm.pending(), queues as u64);
            assert_eq!(warm.latency().is_some(), read_latency);
            let runs = iterations(queues);
            let mut times = Vec::with_capacity(runs);
            let mut round_trips = 0;
            server.cli(&["CONFIG", "RESETSTAT"]);
            let cpu_before = redis_cpu_seconds(&server);
            for _ in 0..runs {
                let started = Instant::now();
                let sample = sampler.sample_backend(&endpoint, &prepared).await;
                times.push(started.elapsed());
                round_trips = sample.round_trips;
                assert!(!read_latency || sample.latency().unwrap() >= Duration::from_secs(10));
            }
            let ticks = (runs * queues) as f64;
            let per_queue = redis_usec(&server) / ticks;
            let cpu_per_queue = (redis_cpu_seconds(&server) - cpu_before) * 1e6 / ticks;
            row.push((stats(times), round_trips, per_queue, cpu_per_queue));
        }
        latency_rows.push((queues, row));
    }
    println!(
        "| queues | levee tick (median / p90) | levee round trips | EVAL per queue (median / p90) | EVAL round trips | floor: redis-benchmark -P 1000 LLEN |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.4} ms / {:.4} ms | {} | {:.4} ms / {:.4} ms | {} | {:.4} ms |",
            row.queues,
            ms(row.levee.median),
            ms(row.levee.p90),
            row.levee_round_trips,
            ms(row.eval.median),
            ms(row.eval.p90),
            row.queues,
            ms(row.floor),
        );
    }
    print_latency_rows(latency_rows);
}

/// Commands levee's latency script calls on Sidekiq queues: Redis counts them in
/// `INFO commandstats` on their own and again inside the script's (`evalsha`) time.
const CALLED_BY_THE_SCRIPT: [&str; 2] = ["time", "lindex"];

/// The microseconds Redis spent in the commands clients sent since the last `CONFIG RESETSTAT`,
/// as its own `INFO commandstats` counts them (the reset, this read, and the commands run inside
/// scripts, already in the script's time, left out).
fn redis_usec(server: &support::RedisServer) -> f64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            if name == "config" || CALLED_BY_THE_SCRIPT.contains(&name) {
                return None;
            }
            fields
                .split(',')
                .find_map(|f| f.strip_prefix("usec="))?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// The CPU Redis has used (`INFO cpu`: `used_cpu_sys + used_cpu_user`, seconds): with reading
/// the requests and writing the replies, which commandstats leaves out.
fn redis_cpu_seconds(server: &support::RedisServer) -> f64 {
    server
        .cli(&["INFO", "cpu"])
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            ["used_cpu_sys", "used_cpu_user"]
                .contains(&name)
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// What a tick of the latency table reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LatencyReads {
    /// `readLatency: false`: one `LLEN` a queue.
    DepthOnly,
    /// `latencyRefresh: 0s`: every queue's latency every tick.
    EveryTick,
    /// The defaults, `latencyRefresh: 10s` at `sampleInterval: 1s`: a tenth of the queues' latency
    /// a tick, the others estimated.
    Refreshed,
}

impl LatencyReads {
    const ALL: [Self; 3] = [Self::DepthOnly, Self::EveryTick, Self::Refreshed];

    fn label(self) -> &'static str {
        match self {
            Self::DepthOnly => "depth only (`readLatency: false`)",
            Self::EveryTick => "depth + latency every tick (`latencyRefresh: 0s`)",
            Self::Refreshed => "depth + latency, `latencyRefresh: 10s` (default) at a 1 s interval",
        }
    }

    fn prepare(self, server: &support::RedisServer, queues: &[QueueSpec]) -> PreparedQueues {
        let refresh = match self {
            Self::DepthOnly => return PreparedQueues::new(queues, false),
            Self::EveryTick => "0s",
            Self::Refreshed => "10s",
        };
        let spec: BackpressurePolicySpec = serde_json::from_value(serde_json::json!({
            "redis": {"url": server.url(), "timeout": "10s", "latencyRefresh": refresh},
            "queues": queues,
            "sampleInterval": "1s",
            "thresholds": {"warning": 100, "critical": 200, "recovery": 50},
        }))
        .unwrap();
        PreparedQueues::for_policy(&spec, queues)
    }
}

/// One cell of the latency table: tick times, round trips, Redis's microseconds a queue in
/// commands and in CPU.
type LatencyCell = (Stats, usize, f64, f64);

fn print_latency_rows(rows: Vec<(usize, Vec<LatencyCell>)>) {
    println!();
    println!(
        "| Sidekiq queues | reads | tick (median / p90) | round trips | Redis time a queue (INFO commandstats), × depth only | Redis CPU a queue (INFO cpu), × depth only |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for (queues, row) in rows {
        let (_, _, depth_usec, depth_cpu) = row[0];
        for (reads, (tick, trips, usec, cpu)) in LatencyReads::ALL.into_iter().zip(row) {
            println!(
                "| {queues} | {} | {:.4} ms / {:.4} ms | {trips} | {usec:.2} µs ({:.1}×) | {cpu:.2} µs ({:.1}×) |",
                reads.label(),
                ms(tick.median),
                ms(tick.p90),
                usec / depth_usec,
                cpu / depth_cpu,
            );
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
