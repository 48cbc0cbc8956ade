//! A policy that names a hostile "Redis" costs levee a bounded amount and nobody else anything.
//! The hostile servers are listeners in this test, on loopback, bounded in time and bytes: one
//! answers every request with `$4000000000` and then streams bytes, one with an array that never
//! ends, one with arrays nested without end. levee (`levee sample`, the binary as a user runs it)
//! samples them beside a real Redis:
//! its memory stays under 64 MiB, the hostile queues report "reply larger than N bytes", and the
//! real Redis's policy keeps its interval. Before replies were bounded, levee's RSS reached
//! 1,525 MiB against the first server.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// How long a hostile connection streams at most, and how many bytes it sends at most.
const STREAM_FOR: Duration = Duration::from_secs(20);
const STREAM_AT_MOST: u64 = 4 << 30;

/// A listener that answers each connection's first bytes with `header` and then streams `body`
/// over and over until the peer goes away (or the bounds above); returns its port and the bytes
/// it has sent in all.
fn hostile(header: &'static [u8], body: &'static [u8]) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let total = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let total = total.clone();
            std::thread::spawn(move || stream_to(stream, header, body, &total));
        }
    });
    (port, sent)
}

fn stream_to(mut stream: TcpStream, header: &[u8], body: &[u8], total: &AtomicU64) {
    let mut request = [0u8; 4096];
    if stream.read(&mut request).unwrap_or(0) == 0 || stream.write_all(header).is_err() {
        return;
    }
    let chunk: Vec<u8> = body.iter().copied().cycle().take(64 * 1024).collect();
    let (started, mut sent) = (Instant::now(), 0u64);
    while started.elapsed() < STREAM_FOR && sent < STREAM_AT_MOST {
        if stream.write_all(&chunk).is_err() {
            return; // levee closed the connection: what is expected
        }
        sent += chunk.len() as u64;
        total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// The most resident memory the process has had, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn policy(name: &str, port: u16, interval: &str) -> String {
    format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: {name}, namespace: tenant}}
spec:
  redis: {{url: 'redis://127.0.0.1:{port}/0', timeout: 10s}}
  sampleInterval: {interval}
  queues:
    - {{name: jobs, type: list, key: jobs}}
  thresholds: {{warning: 100, critical: 200, recovery: 50}}
"
    )
}

#[test]
fn a_hostile_redis_costs_levee_a_bounded_memory_and_other_policies_nothing() {
    let redis = RedisServer::start();
    redis.push_jobs("jobs", 7);
    let (bulk_port, bulk_sent) = hostile(b"$4000000000\r\n", b"x");
    let (array_port, array_sent) = hostile(b"*4000000\r\n", b"*1\r\n");
    let (nested_port, _) = hostile(b"*1\r\n", b"*1\r\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let policies = [
        policy("healthy", redis.port, "200ms"),
        policy("bulk", bulk_port, "200ms"),
        policy("array", array_port, "200ms"),
        policy("nested", nested_port, "200ms"),
    ];
    std::fs::write(&file, policies.join("---\n")).unwrap();

    let mut levee = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["sample", "-f", file.to_str().unwrap(), "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = levee.id();
    let lines = BufReader::new(levee.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        lines
            .lines()
            .map_while(Result::ok)
            .map(|line| serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect::<Vec<Value>>()
    });
    let watched_for = Duration::from_secs(4);
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < watched_for {
        peak = peak.max(peak_rss_kib(pid).expect("levee sample is still running"));
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = levee.wait().unwrap();
    let ticks = reader.join().unwrap();
    let mut stderr = String::new();
    levee.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");

    let of = |name: &str| -> Vec<&Value> { ticks.iter().filter(|t| t["policy"] == name).collect() };
    eprintln!(
        "figure: peak RSS {} KiB; hostile servers sent {} + {} bytes; healthy ticks {}",
        peak,
        bulk_sent.load(Ordering::Relaxed),
        array_sent.load(Ordering::Relaxed),
        of("healthy").len()
    );
    assert!(peak < 64 * 1024, "levee's peak RSS was {peak} KiB, over 64 MiB");
    for (name, says) in [
        ("bulk", "reply larger than 1048576 bytes"),
        ("array", "reply larger than 1048576 bytes"),
        ("nested", "reply nested deeper than 32 levels"),
    ] {
        let hostile = of(name);
        assert!(!hostile.is_empty(), "{name}: no tick at all: {stderr}");
        for tick in hostile {
            let error = tick["queues"][0]["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{name}: {tick} (stderr: {stderr})");
        }
    }
    // The healthy policy keeps its 200 ms interval (20 ticks in 4 s; some slack for start-up).
    let healthy = of("healthy");
    assert!(
        healthy.len() >= 15,
        "{} healthy ticks in {watched_for:?}",
        healthy.len()
    );
    assert!(healthy.iter().all(|t| t["pending"] == 7), "{healthy:?}");
}
