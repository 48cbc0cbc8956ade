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
        peak = peak.max(support::peak_rss_kib(pid).expect("levee sample is still running"));
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

/// Reads one RESP command (an array of bulk strings) from `reader`; `None` at the end.
fn read_command(reader: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let count: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let length: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut data = vec![0u8; length + 2];
        reader.read_exact(&mut data).ok()?;
        data.truncate(length);
        parts.push(String::from_utf8_lossy(&data).into_owned());
    }
    Some(parts)
}

/// A "Redis" that answers every SCAN with a cursor that never ends and 1,000 new key names of
/// 1,000 bytes (just under the 1 MiB reply bound), and everything else with +OK.
fn endless_scan() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let (started, mut batch) = (Instant::now(), 0u64);
                while let Some(command) = read_command(&mut reader) {
                    if started.elapsed() > STREAM_FOR {
                        return;
                    }
                    let reply = if command[0].eq_ignore_ascii_case("SCAN") {
                        batch += 1;
                        let mut reply = b"*2\r\n$1\r\n1\r\n*1000\r\n".to_vec();
                        for i in 0..1000 {
                            let key = format!("jobs:{batch:08}:{i:04}:{}", "k".repeat(980));
                            reply.extend(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
                        }
                        reply
                    } else {
                        b"+OK\r\n".to_vec()
                    };
                    if writer.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A hostile server whose SCAN never ends, each reply full of new names: the discovery stops at
/// 16 MiB of names (or 100,000 keys) and says to narrow the pattern, and levee's memory stays
/// bounded. Before, it kept every name for up to 10,000 calls (10 GB) until the deadline.
#[test]
fn a_scan_that_never_ends_is_cut_at_a_bound_of_names() {
    let port = endless_scan();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = policy("scanned", port, "1s").replace(
        "    - {name: jobs, type: list, key: jobs}",
        "    - {name: found, type: list, keyPattern: 'jobs:*'}",
    );
    std::fs::write(&file, policy).unwrap();
    let started = Instant::now();
    let levee = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["sample", "--once", "-f", file.to_str().unwrap(), "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = levee.id();
    let mut peak = 0;
    let waiter = std::thread::spawn(move || levee.wait_with_output().unwrap());
    while !waiter.is_finished() && started.elapsed() < Duration::from_secs(60) {
        peak = peak.max(support::peak_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = waiter.join().unwrap();
    let took = started.elapsed();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "figure: endless SCAN: levee sample --once ended in {took:.1?}, peak RSS {} MiB",
        peak / 1024
    );
    assert!(
        said.contains("narrow keyPattern") && said.contains("matched more than"),
        "{said}"
    );
    assert!(peak < 128 * 1024, "peak RSS {} MiB", peak / 1024);
}
