//! A tenant's hostile Kafka cluster costs levee a bounded amount, and a neighbour on a shared
//! cluster changes nobody's figures (issue 39). The hostile clusters are fake brokers in this
//! test (`support::fake_kafka`), each telling one lie; `levee sample` (the binary as a user runs
//! it, the sampler `levee run` uses) reads them, its peak RSS watched. `LEVEE_ABUSE_BIN` runs the
//! suite against another build of levee, for the before/after figures in docs/benchmarks.md.

mod support;
// Its own module, not in `support` (which the e2e crate includes too, without kafka-protocol).
#[path = "support/fake_kafka.rs"]
mod fake_kafka;

use bytes::Bytes;
use fake_kafka::{Commit, FakeKafka, Script};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each case's bound on levee's resident memory, as issue 39 asks.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn levee_bin() -> String {
    std::env::var("LEVEE_ABUSE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_levee").to_string())
}

fn policy(name: &str, bootstrap: &str, queues: &str) -> String {
    format!(
        "apiVersion: levee.dev/v1alpha1
kind: BackpressurePolicy
metadata: {{name: {name}, namespace: {name}}}
spec:
  kafka: {{bootstrapServers: ['{bootstrap}'], timeout: 2s}}
  sampleInterval: 500ms
  queues:
{queues}
  thresholds: {{warning: 100000, critical: 200000, recovery: 50000}}
"
    )
}

/// What `levee sample` printed of each policy's ticks, its peak RSS, and its stderr.
struct Run {
    ticks: Vec<Value>,
    peak_kib: u64,
    stderr: String,
}

impl Run {
    fn of(&self, policy: &str) -> Vec<&Value> {
        self.ticks.iter().filter(|t| t["policy"] == policy).collect()
    }
}

/// Runs `levee sample` on `policies` for `watched` (or once, when `None`), watching its RSS.
fn sample(policies: &[String], watched: Option<Duration>) -> Run {
    sample_with(policies, watched, &[])
}

/// `sample`, with more arguments for `levee sample`.
fn sample_with(policies: &[String], watched: Option<Duration>, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, policies.join("---\n")).unwrap();
    let mut args = vec!["sample", "-f", file.to_str().unwrap(), "-o", "json"];
    if watched.is_none() {
        args.push("--once");
    }
    args.extend_from_slice(extra);
    let mut levee = Command::new(levee_bin())
        .args(&args)
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
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .collect::<Vec<Value>>()
    });
    let mut errors = levee.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = errors.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let until = watched.unwrap_or(Duration::from_secs(60));
    let mut peak = 0;
    while started.elapsed() < until {
        match support::peak_rss_kib(pid) {
            Some(kib) => peak = peak.max(kib),
            None => break,
        }
        if levee.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = levee.wait();
    Run {
        ticks: reader.join().unwrap(),
        peak_kib: peak,
        stderr: stderr.join().unwrap(),
    }
}

/// A v2 record batch's 61-byte header with `codec`, `records` declared, then `body`.
fn batch(base_offset: i64, codec: i16, records: i32, first_timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&base_offset.to_be_bytes());
    bytes.extend_from_slice(&i32::try_from(49 + body.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&0i32.to_be_bytes());
    bytes.push(2);
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&codec.to_be_bytes());
    bytes.extend_from_slice(&(records - 1).to_be_bytes());
    bytes.extend_from_slice(&first_timestamp.to_be_bytes());
    bytes.extend_from_slice(&first_timestamp.to_be_bytes());
    bytes.extend_from_slice(&[0xffu8; 8]);
    bytes.extend_from_slice(&[0xffu8; 2]);
    bytes.extend_from_slice(&[0xffu8; 4]);
    bytes.extend_from_slice(&records.to_be_bytes());
    bytes.extend_from_slice(body);
    // A well-formed batch but for its lie: its CRC-32C (over attributes to the end) is right,
    // as a decoder that checks it (kafka-protocol's did) would want.
    let crc = crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32C (Castagnoli), bit by bit.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One topic `jobs` of one partition ending at 1,500, group `workers` committed at 1,000: a lag
/// of 500, and a Fetch at the committed offset that returns `records`.
fn lagging(records: Vec<u8>) -> Script {
    Script {
        topics: BTreeMap::from([("jobs".to_string(), 1)]),
        end_offset: 1_500,
        commits: BTreeMap::from([(
            "workers".to_string(),
            vec![Commit {
                topic: "jobs".into(),
                partition: 0,
                offset: 1_000,
                metadata_bytes: 0,
            }],
        )]),
        fetch_records: Some(Bytes::from(records)),
        ..Script::default()
    }
}

const WORKERS: &str = "    - {name: jobs, type: kafka, topic: jobs, consumerGroup: workers}";

/// Every tick of `run`'s `policy` read a depth of 500 with no error, and latency as read.
fn every_tick_reads_500(run: &Run, policy: &str) {
    let ticks = run.of(policy);
    assert!(!ticks.is_empty(), "{policy}: no tick at all: {}", run.stderr);
    for tick in &ticks {
        assert_eq!(tick["pending"], 500, "{policy}: {tick}");
        assert!(tick["queues"][0]["error"].is_null(), "{policy}: {tick}");
    }
}

/// Row 1: a 94-byte snappy batch at the committed offset that declares 4 GiB of output. Before:
/// 4,087 MiB resident in 4 s, the tick a success. Now: not inflated; the latency is the batch's
/// first timestamp.
#[test]
fn a_snappy_batch_declaring_four_gib_is_not_inflated() {
    // Kafka's snappy framing (xerial: a 16-byte magic, then length-prefixed raw blocks), one
    // 13-byte block whose stated length is 4 GiB.
    let mut liar = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
    liar.extend_from_slice(&13u32.to_be_bytes());
    liar.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0]);
    let stamp = jiff::Timestamp::now().as_millisecond() - 60_000;
    let records = batch(1_000, 2, 1, stamp, &liar);
    assert_eq!(records.len(), 94);
    let kafka = FakeKafka::start(lagging(records), 1);
    let run = sample(
        &[policy("snappy", &kafka.bootstrap(), WORKERS)],
        Some(Duration::from_secs(4)),
    );
    eprintln!(
        "figure: snappy 4 GiB batch: peak RSS {} KiB, {} ticks",
        run.peak_kib,
        run.ticks.len()
    );
    every_tick_reads_500(&run, "snappy");
    let latency = run.of("snappy")[0]["latencySeconds"].as_f64().unwrap_or(0.0);
    assert!(
        (59.0..120.0).contains(&latency),
        "the batch's first timestamp: {latency}"
    );
    assert!(run.peak_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.peak_kib);
}

/// Row 2: a 1 MiB gzip batch that inflates to 1 GiB. Before: 1,053 MiB, every tick.
#[test]
fn a_gzip_batch_inflating_to_one_gib_is_cut_at_the_bound() {
    let gzip = Command::new("sh")
        .args(["-c", "head -c 1073741824 /dev/zero | gzip -9"])
        .output()
        .unwrap();
    assert!(gzip.status.success());
    eprintln!("figure: the gzip bomb is {} bytes", gzip.stdout.len());
    let stamp = jiff::Timestamp::now().as_millisecond() - 30_000;
    let kafka = FakeKafka::start(lagging(batch(1_000, 1, 1, stamp, &gzip.stdout)), 1);
    let run = sample(
        &[policy("gzip", &kafka.bootstrap(), WORKERS)],
        Some(Duration::from_secs(4)),
    );
    eprintln!(
        "figure: gzip 1 GiB batch: peak RSS {} KiB, {} ticks",
        run.peak_kib,
        run.ticks.len()
    );
    every_tick_reads_500(&run, "gzip");
    assert!(run.peak_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.peak_kib);
}

/// Row 4: a topic with a partition on each of 64 brokers, each ListOffsets reply padded to just
/// under the 8 MiB frame bound. Before: 527 MiB every tick. Now each reply is refused at its
/// size, which is over what three partitions' offsets can take.
#[test]
fn sixty_four_brokers_padding_their_replies_cost_one_bound() {
    let mut script = lagging(Vec::new());
    script.topics.insert("jobs".into(), 64);
    script.list_offsets_padding = 8 * 1024 * 1024 - 4096;
    script.fetch_records = None;
    let kafka = FakeKafka::start(script, 64);
    let run = sample(
        &[policy("wide", &kafka.bootstrap(), WORKERS)],
        Some(Duration::from_secs(4)),
    );
    eprintln!(
        "figure: 64 padded brokers: peak RSS {} KiB, {} ticks",
        run.peak_kib,
        run.ticks.len()
    );
    let ticks = run.of("wide");
    assert!(!ticks.is_empty(), "no tick: {}", run.stderr);
    eprintln!("figure: it said {}", ticks[0]["queues"][0]["error"]);
    for tick in ticks {
        let error = tick["queues"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("over levee's bound"), "{tick}");
    }
    assert!(run.peak_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.peak_kib);
}

/// Row 5: another namespace's 1,000 topics (a group without `topic` committing to all of them,
/// the most one queue may span), sorting before the victim's topic on the same cluster. Before:
/// the victim read depth 0, no error, every tick (one Metadata window of 1,000 names for the
/// cluster). Now Metadata asks for what each tick needs; both read their own figures.
#[test]
fn a_neighbours_thousand_topics_leave_the_victims_lag_exact() {
    let mut script = lagging(Vec::new());
    script.fetch_records = None;
    script.topics.insert("zz-victim".into(), 1);
    script.commits.insert(
        "victim".into(),
        vec![Commit {
            topic: "zz-victim".into(),
            partition: 0,
            offset: 1_000,
            metadata_bytes: 0,
        }],
    );
    let mut hostile = Vec::new();
    for index in 0..1_000 {
        let topic = format!("aa-{index:04}");
        script.topics.insert(topic.clone(), 1);
        hostile.push(Commit {
            topic,
            partition: 0,
            offset: 1_499,
            metadata_bytes: 0,
        });
    }
    script.commits.insert("hostile".into(), hostile);
    let kafka = FakeKafka::start(script, 1);
    let policies = [
        policy(
            "victim",
            &kafka.bootstrap(),
            "    - {name: jobs, type: kafka, topic: zz-victim, consumerGroup: victim}",
        ),
        policy(
            "neighbour",
            &kafka.bootstrap(),
            "    - {name: all, type: kafka, consumerGroup: hostile}",
        ),
    ];
    let run = sample(&policies, Some(Duration::from_secs(4)));
    eprintln!(
        "figure: 1,000 neighbour topics: peak RSS {} KiB, {} ticks",
        run.peak_kib,
        run.ticks.len()
    );
    every_tick_reads_500(&run, "victim");
    let neighbour = run.of("neighbour");
    assert!(!neighbour.is_empty());
    for tick in neighbour {
        assert_eq!(tick["pending"], 1_000, "the neighbour's own figure: {tick}");
    }
    let asked = kafka.asked.lock().unwrap();
    assert!(!asked.metadata.is_empty());
    for (topics, auto_create) in &asked.metadata {
        assert!(!auto_create, "Metadata let the broker create {topics:?}");
    }
}

/// Row 6: a neighbour's group with 4 KB of commit metadata on each of 2,200 partitions, asked in
/// the same OffsetFetch as the victim's group (one cluster tick). Before: the reply passed the
/// bound and the victim's tick failed every time. Now only the neighbour's queue fails.
#[test]
fn a_neighbours_fat_commits_fail_its_own_queue_only() {
    let mut script = lagging(Vec::new());
    script.fetch_records = None;
    script.topics.insert("wide".into(), 2_200);
    script.commits.insert(
        "fat".into(),
        (0..2_200)
            .map(|partition| Commit {
                topic: "wide".into(),
                partition,
                offset: 0,
                metadata_bytes: 4_000,
            })
            .collect(),
    );
    let kafka = FakeKafka::start(script, 1);
    let policies = [
        policy("victim", &kafka.bootstrap(), WORKERS),
        policy(
            "neighbour",
            &kafka.bootstrap(),
            "    - {name: wide, type: kafka, topic: wide, consumerGroup: fat}",
        ),
    ];
    let run = sample(&policies, None);
    eprintln!("figure: fat commits: peak RSS {} KiB", run.peak_kib);
    every_tick_reads_500(&run, "victim");
    let neighbour = run.of("neighbour");
    assert_eq!(neighbour.len(), 1, "{}", run.stderr);
    let error = neighbour[0]["queues"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("over levee's bound"), "{}", neighbour[0]);
    let asked = kafka.asked.lock().unwrap();
    assert!(
        asked.offset_fetch_groups.contains(&2),
        "both groups were asked in one OffsetFetch first: {:?}",
        asked.offset_fetch_groups
    );
    assert!(run.peak_kib < RSS_BOUND_KIB, "peak RSS {} KiB", run.peak_kib);
}

/// A queue without `topic` whose group commits to more topics than levee reads for one queue
/// fails, saying so and what to change, never a silent undercount of the first 1,000.
#[test]
fn a_group_committing_to_more_topics_than_the_bound_fails_its_queue() {
    let mut script = lagging(Vec::new());
    script.fetch_records = None;
    let commits = (0..1_001)
        .map(|index| {
            let topic = format!("t-{index:04}");
            script.topics.insert(topic.clone(), 1);
            Commit {
                topic,
                partition: 0,
                offset: 1_499,
                metadata_bytes: 0,
            }
        })
        .collect();
    script.commits.insert("everything".into(), commits);
    let kafka = FakeKafka::start(script, 1);
    let run = sample(
        &[policy(
            "wide",
            &kafka.bootstrap(),
            "    - {name: all, type: kafka, consumerGroup: everything}",
        )],
        None,
    );
    let ticks = run.of("wide");
    assert_eq!(ticks.len(), 1, "{}", run.stderr);
    let error = ticks[0]["queues"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("commits to 1001 topics, over levee's bound of 1000: name the queue's topic"),
        "{}",
        ticks[0]
    );
}

/// A 25-byte Metadata reply whose broker array claims 2^31 entries. Before: kafka-protocol's
/// decoder asked for 206 GB at once and levee aborted (`memory allocation of 206158430208 bytes
/// failed`), every replica in turn; its decoders are bounded now (vendor/kafka-protocol).
#[test]
fn a_reply_claiming_billions_of_entries_does_not_abort_levee() {
    let mut claim = vec![0u8; 4];
    let mut count: u64 = (1 << 31) + 1;
    while count >= 0x80 {
        claim.push(u8::try_from(count & 0x7f).unwrap() | 0x80);
        count >>= 7;
    }
    claim.push(u8::try_from(count).unwrap());
    claim.extend_from_slice(&[0u8; 16]);
    let mut script = lagging(Vec::new());
    script.raw_metadata = Some(claim);
    let kafka = FakeKafka::start(script, 1);
    let run = sample(
        &[policy("claims", &kafka.bootstrap(), WORKERS)],
        Some(Duration::from_secs(2)),
    );
    eprintln!(
        "figure: billion-entry claim: peak RSS {} KiB, {} ticks",
        run.peak_kib,
        run.ticks.len()
    );
    assert!(!run.stderr.contains("memory allocation"), "{}", run.stderr);
    let ticks = run.of("claims");
    if let Some(first) = ticks.first() {
        eprintln!("figure: it said {}", first["queues"][0]["error"]);
    }
    assert!(ticks.len() >= 2, "levee kept ticking: {}", run.stderr);
    for tick in ticks {
        let error = tick["queues"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("malformed"), "{tick}");
    }
}

/// Row 8: a broker whose SCRAM challenge asks for 100,000 iterations (Kafka itself stores at most
/// 16,384). Before: accepted, and the hashing ran on the async runtime's threads at every dial
/// (issue 39: 8.85 CPU-seconds in 10 s, 4 ticks of 100). Now refused at once, saying why; a broker
/// asking for the most levee accepts is hashed on a blocking thread, and a healthy policy beside
/// both keeps its interval.
#[test]
fn a_scram_challenge_past_kafkas_own_iterations_is_refused_and_delays_no_one() {
    let scram = |iterations| {
        let mut script = lagging(Vec::new());
        script.fetch_records = None;
        script.scram_iterations = Some(iterations);
        FakeKafka::start(script, 1)
    };
    let (greedy, most) = (scram(100_000), scram(16_384));
    let mut plain = lagging(Vec::new());
    plain.fetch_records = None;
    let healthy = FakeKafka::start(plain, 1);
    let with_sasl = |name: &str, kafka: &FakeKafka| {
        policy(name, &kafka.bootstrap(), WORKERS).replace(
            "timeout: 2s}",
            "timeout: 2s, sasl: {mechanism: SCRAM-SHA-512, credentialsSecretRef: {name: kafka-user}}}",
        )
    };
    let policies = [
        with_sasl("greedy", &greedy),
        with_sasl("most", &most),
        policy("healthy", &healthy.bootstrap(), WORKERS)
            .replace("sampleInterval: 500ms", "sampleInterval: 200ms"),
    ];
    let run = sample_with(
        &policies,
        Some(Duration::from_secs(4)),
        &["--username", "levee", "--password", "secret"],
    );
    eprintln!(
        "figure: SCRAM: peak RSS {} KiB; ticks greedy {}, most {}, healthy {}",
        run.peak_kib,
        run.of("greedy").len(),
        run.of("most").len(),
        run.of("healthy").len()
    );
    for (name, says) in [
        ("greedy", "asks for 100000 SCRAM iterations"),
        ("most", "could not prove it knows levee's SCRAM password"),
    ] {
        let ticks = run.of(name);
        assert!(!ticks.is_empty(), "{name}: no tick: {}", run.stderr);
        for tick in ticks {
            let error = tick["queues"][0]["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{name}: {tick}");
        }
    }
    // 20 ticks in 4 s at 200 ms; some slack for start-up.
    let healthy = run.of("healthy");
    assert!(
        healthy.len() >= 15,
        "{} healthy ticks: {}",
        healthy.len(),
        run.stderr
    );
    assert!(healthy.iter().all(|t| t["pending"] == 500), "{healthy:?}");
}
