//! A policy that names a hostile "NATS server" costs levee a bounded amount of memory and of
//! requests. The hostile server is a listener in this test, on loopback: it speaks just enough of
//! the NATS protocol (INFO, PING/PONG, PUB) to answer every `CONSUMER.INFO` of stream HOSTILE
//! with a consumer of 60,000 filter subjects and work not done, and counts the `STREAM.MSG.GET`
//! requests levee sends for latency. Beside it, three policies of 4 consumers with exactly
//! levee's bound of filter subjects (stream BOUNDED) keep their latency, read through the same
//! connection. levee (`levee sample`, the binary as a user runs it) reads them all:
//! its memory stays under 64 MiB, no `STREAM.MSG.GET` goes to the hostile consumers (their depth
//! is read exactly, their latency is an error naming the bound), and no more requests are ever
//! in flight on the connection than levee's bound. Before the bounds, one tick made 3.84 million
//! `STREAM.MSG.GET` requests at once (one per filter subject) and levee's RSS passed 1 GiB in
//! 11 s (3.7 GiB in 60 s); the test stops it at 1 GiB.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The filter subjects of each hostile consumer.
const HOSTILE_FILTERS: usize = 60_000;
/// levee's bound on the filter subjects read for latency, per consumer
/// (`replies::MAX_LATENCY_FILTERS`; written out, so that the test also runs on code without it).
const FILTER_BOUND: usize = 32;
/// levee's bound on the requests in flight on one connection (`nats::MAX_IN_FLIGHT`).
const CONNECTION_BOUND: u64 = 64;
/// Queues of the hostile policy (the most a policy may have).
const HOSTILE_QUEUES: usize = 64;
/// Queues of each bounded policy: 4 × 32 filter subjects are four rounds of latency reads.
const BOUNDED_QUEUES: usize = 4;
/// The bounded policies: their latency reads, in flight together, pass the connection's bound.
const BOUNDED_POLICIES: [&str; 3] = ["bounded-a", "bounded-b", "bounded-c"];
/// How long the fake server waits with its replies for more requests: what levee sends in that
/// time, unanswered, is what it has in flight at once.
const QUIET: Duration = Duration::from_millis(10);
/// The test's own bound on the requests it holds unanswered (levee before the bounds sent
/// millions).
const HOLD_AT_MOST: usize = 100_000;
/// Past this much RSS levee is stopped: the figure is already over any bound.
const STOP_AT_KIB: u64 = 1 << 20;

/// What the fake server saw.
#[derive(Default)]
struct Seen {
    infos: AtomicU64,
    hostile_gets: AtomicU64,
    bounded_gets: AtomicU64,
    /// The most requests received and not yet answered at once.
    most_in_flight: AtomicU64,
    stop: AtomicBool,
}

/// A "NATS server" on loopback; its port, and what it saw.
fn fake_nats() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let hostile_info = hostile_consumer_info();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (counts, hostile_info) = (counts.clone(), hostile_info.clone());
            std::thread::spawn(move || serve(stream, &counts, &hostile_info));
        }
    });
    (port, seen)
}

/// A CONSUMER.INFO reply listing 60,000 filter subjects (one letter each, just under levee's
/// 256 KiB bound on a reply), with 5 messages not delivered and 2 not acknowledged.
fn hostile_consumer_info() -> Arc<Vec<u8>> {
    let filters: Vec<String> = (0..HOSTILE_FILTERS)
        .map(|i| char::from(b'a' + (i % 26) as u8).to_string())
        .collect();
    let info = serde_json::json!({
        "type": "io.nats.jetstream.api.v1.consumer_info_response",
        "num_pending": 5, "num_ack_pending": 2,
        "ack_floor": {"consumer_seq": 0, "stream_seq": 0},
        "config": {"filter_subjects": filters},
    });
    let payload = info.to_string().into_bytes();
    assert!(payload.len() < 256 * 1024, "{} bytes", payload.len());
    Arc::new(payload)
}

/// One connection: greets, answers PING, and answers the PUBs it has read once levee has sent
/// nothing for `QUIET`.
fn serve(mut stream: TcpStream, seen: &Seen, hostile_info: &[u8]) {
    let info = b"INFO {\"server_id\":\"hostile\",\"version\":\"2.10.0\",\"headers\":true,\"max_payload\":1048576}\r\n";
    if stream.write_all(info).is_err() {
        return;
    }
    stream.set_read_timeout(Some(QUIET)).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut buffer, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
    let mut unanswered: Vec<(String, String)> = Vec::new();
    while !seen.stop.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !answer(&mut stream, &mut unanswered, seen, hostile_info) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        let (used, pong) = requests(&buffer, &mut unanswered, seen);
        buffer.drain(..used);
        if pong && stream.write_all(b"PONG\r\n").is_err() {
            return;
        }
        if unanswered.len() >= HOLD_AT_MOST && !answer(&mut stream, &mut unanswered, seen, hostile_info) {
            return;
        }
    }
}

/// Reads the complete operations in `buffer`: each PUB's subject and reply inbox go to
/// `unanswered`. Returns the bytes read and whether a PING came.
fn requests(buffer: &[u8], unanswered: &mut Vec<(String, String)>, seen: &Seen) -> (usize, bool) {
    let (mut at, mut pong) = (0, false);
    while let Some(end) = buffer[at..].windows(2).position(|w| w == b"\r\n") {
        let line = String::from_utf8_lossy(&buffer[at..at + end]).into_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.first().copied() {
            Some("PUB") => {
                let size: usize = fields[fields.len() - 1].parse().unwrap();
                let next = at + end + 2 + size + 2;
                if buffer.len() < next {
                    break;
                }
                let subject = fields[1].to_string();
                if subject.starts_with("$JS.API.STREAM.MSG.GET.HOSTILE") {
                    seen.hostile_gets.fetch_add(1, Ordering::Relaxed);
                } else if subject.starts_with("$JS.API.STREAM.MSG.GET.") {
                    seen.bounded_gets.fetch_add(1, Ordering::Relaxed);
                } else {
                    seen.infos.fetch_add(1, Ordering::Relaxed);
                }
                unanswered.push((subject, fields[2].to_string()));
                at = next;
            }
            Some("PING") => {
                pong = true;
                at += end + 2;
            }
            _ => at += end + 2,
        }
    }
    (at, pong)
}

/// Answers every request held: the hostile consumers' infos, the bounded ones' (as many filter
/// subjects as levee's bound, 3 messages not delivered), and every `STREAM.MSG.GET` with a message stored a
/// minute ago.
fn answer(
    stream: &mut TcpStream,
    unanswered: &mut Vec<(String, String)>,
    seen: &Seen,
    hostile_info: &[u8],
) -> bool {
    seen.most_in_flight
        .fetch_max(unanswered.len() as u64, Ordering::Relaxed);
    let minute_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    let bounded_info = serde_json::json!({
        "num_pending": 3, "num_ack_pending": 0, "ack_floor": {"stream_seq": 10},
        "config": {"filter_subjects": (0..FILTER_BOUND).map(|i| format!("bounded.{i}")).collect::<Vec<_>>()},
    })
    .to_string();
    let message = serde_json::json!({
        "type": "io.nats.jetstream.api.v1.stream_msg_get_response",
        "message": {"subject": "bounded.0", "seq": 11, "data": "", "time": minute_ago.to_string()},
    })
    .to_string();
    let mut out = Vec::new();
    for (subject, inbox) in unanswered.drain(..) {
        let payload: &[u8] = if subject.starts_with("$JS.API.CONSUMER.INFO.HOSTILE.") {
            hostile_info
        } else if subject.starts_with("$JS.API.CONSUMER.INFO.") {
            bounded_info.as_bytes()
        } else {
            message.as_bytes()
        };
        out.extend_from_slice(format!("MSG {inbox} 1 {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        if out.len() > 1 << 20 {
            if stream.write_all(&out).is_err() {
                return false;
            }
            out.clear();
        }
    }
    stream.write_all(&out).is_ok()
}

fn policy(name: &str, port: u16, stream: &str, queues: usize) -> String {
    let queues: String = (0..queues)
        .map(|i| format!("    - {{name: q{i}, type: jetstream, stream: {stream}, consumer: c{i}}}\n"))
        .collect();
    format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: {name}, namespace: tenant}}
spec:
  nats: {{url: 'nats://127.0.0.1:{port}', timeout: 10s}}
  sampleInterval: 1s
  queues:
{queues}  thresholds: {{warning: 100000, critical: 200000, recovery: 50000}}
"
    )
}

/// 64 consumers of 60,000 filter subjects each in one policy: their depth is read exactly and
/// their latency is an error naming levee's bound, with no `STREAM.MSG.GET` for them at all;
/// consumers at the bound keep their latency, and the requests in flight on the one connection
/// all the policies share never pass levee's bound (the timeout, 10 s, is far longer than a
/// tick takes here, so no request levee gave up on stays unanswered in the server's count).
#[test]
fn consumers_with_sixty_thousand_filter_subjects_cost_no_latency_requests() {
    let (port, seen) = fake_nats();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    let mut policies = vec![policy("hostile", port, "HOSTILE", HOSTILE_QUEUES)];
    policies.extend(
        BOUNDED_POLICIES
            .iter()
            .map(|name| policy(name, port, "BOUNDED", BOUNDED_QUEUES)),
    );
    std::fs::write(&file, policies.join("---\n")).unwrap();

    let mut levee = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["sample", "-f", file.to_str().unwrap(), "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = levee.id();
    let lines = BufReader::new(levee.stdout.take().unwrap());
    let ticks = Arc::new(Mutex::new(Vec::<Value>::new()));
    let printed = ticks.clone();
    let reader = std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let tick = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            printed.lock().unwrap().push(tick);
        }
    });
    let names: Vec<&str> = std::iter::once("hostile").chain(BOUNDED_POLICIES).collect();
    let every_policy_ticked = || {
        let ticks = ticks.lock().unwrap();
        names
            .iter()
            .all(|name| ticks.iter().any(|t| t["policy"] == *name))
    };
    // At least 5 s, and until every policy has printed a tick (a loaded machine is slow).
    let started = Instant::now();
    let mut peak = 0;
    while (started.elapsed() < Duration::from_secs(5) || !every_policy_ticked())
        && started.elapsed() < Duration::from_secs(30)
        && peak < STOP_AT_KIB
    {
        peak = peak.max(support::peak_rss_kib(pid).expect("levee sample is still running"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let watched = started.elapsed();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while levee.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if levee.try_wait().unwrap().is_none() {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let status = levee.wait().unwrap();
    seen.stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let ticks = ticks.lock().unwrap();
    let mut stderr = String::new();
    levee.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();

    let of = |name: &str| -> Vec<&Value> { ticks.iter().filter(|t| t["policy"] == name).collect() };
    let (hostile_gets, bounded_gets) = (
        seen.hostile_gets.load(Ordering::Relaxed),
        seen.bounded_gets.load(Ordering::Relaxed),
    );
    let most_in_flight = seen.most_in_flight.load(Ordering::Relaxed);
    let bounded: Vec<&Value> = BOUNDED_POLICIES.iter().flat_map(|name| of(name)).collect();
    let bounded_ticks = bounded.len();
    eprintln!(
        "figure: peak RSS {} KiB in {watched:.1?}; STREAM.MSG.GET sent: {hostile_gets} for the hostile consumers, {bounded_gets} for the bounded ones; {} CONSUMER.INFO; at most {most_in_flight} requests in flight on the connection; ticks: hostile {}, bounded {bounded_ticks}",
        peak,
        seen.infos.load(Ordering::Relaxed),
        of("hostile").len(),
    );
    assert!(peak < 64 * 1024, "levee's peak RSS was {peak} KiB, over 64 MiB");
    assert_eq!(
        hostile_gets, 0,
        "no STREAM.MSG.GET for a consumer past the bound of {FILTER_BOUND} filter subjects"
    );
    // One tick of a bounded policy reads at most 4 consumers × 32 filter subjects; each policy
    // may have begun one more tick than it printed.
    let bound = (bounded_ticks + BOUNDED_POLICIES.len()) as u64 * (BOUNDED_QUEUES * FILTER_BOUND) as u64;
    assert!(
        bounded_gets <= bound,
        "{bounded_gets} STREAM.MSG.GET for {bounded_ticks} ticks, over {bound}"
    );
    assert!(
        most_in_flight <= CONNECTION_BOUND,
        "{most_in_flight} requests in flight at once on one connection"
    );
    assert!(status.success(), "{status}: {stderr}");

    let hostile = of("hostile");
    assert!(!hostile.is_empty(), "no hostile tick at all: {stderr}");
    for tick in hostile {
        for queue in tick["queues"].as_array().unwrap() {
            assert_eq!(queue["depth"], 7, "the depth is exact: {queue}");
            let error = queue["latencyError"].as_str().unwrap_or_default();
            let says = format!("has {HOSTILE_FILTERS} filter subjects, over levee's bound of {FILTER_BOUND}");
            assert!(error.contains(&says), "{queue}");
        }
    }
    assert!(!bounded.is_empty(), "no bounded tick at all: {stderr}");
    for tick in bounded {
        for queue in tick["queues"].as_array().unwrap() {
            assert_eq!(queue["depth"], 3, "{queue}");
            let latency = queue["latencySeconds"].as_f64();
            assert!(
                latency.is_some_and(|l| (30.0..120.0).contains(&l)),
                "a consumer at the bound keeps its latency: {queue}"
            );
        }
    }
}
