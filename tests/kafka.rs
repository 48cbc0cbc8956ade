//! The Kafka backend against a real broker (Apache Kafka 4.4, KRaft), the jobs produced and
//! committed with Kafka's own Java client and the expected figures read with Kafka's own tools:
//! every depth equals the LAG `kafka-consumer-groups.sh --describe` prints, latencies the
//! records' own timestamps, a tick a fixed handful of requests at 1,000 partitions; unknown
//! topics and groups, an unreachable or oversized broker, SASL right and wrong.

mod support;

use levee::api::{KafkaSpec, QueueSpec};
use levee::sampler::kafka::{KafkaEndpoint, SaslAuth};
use levee::sampler::{BackendEndpoint, PreparedQueues, Sample, Sampler};
use std::time::Duration;
use support::held_back::HeldBackStage;
use support::kafka::{KafkaBroker, KafkaCluster, SASL_PASSWORD, SASL_USER};

fn queues(yaml: &str) -> PreparedQueues {
    let queues: Vec<QueueSpec> = serde_yaml::from_str(yaml).unwrap();
    PreparedQueues::new(&queues, true)
}

fn endpoint(servers: &str, sasl: Option<SaslAuth>) -> BackendEndpoint {
    let spec: KafkaSpec =
        serde_yaml::from_str(&format!("{{bootstrapServers: [{servers}], timeout: 2s}}")).unwrap();
    BackendEndpoint::Kafka(KafkaEndpoint::from_spec(&spec, sasl).unwrap())
}

fn reading<'a>(sample: &'a Sample, name: &str) -> &'a levee::sampler::QueueReading {
    sample.queues.iter().find(|q| q.name == name).unwrap()
}

fn depth(sample: &Sample, name: &str) -> Result<u64, String> {
    reading(sample, name).depth.clone()
}

fn latency(sample: &Sample, name: &str) -> Duration {
    reading(sample, name)
        .latency
        .clone()
        .expect("latency read")
        .expect("latency ok")
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Two policies of one cluster that tick together are read in one cluster tick: one OffsetFetch
/// for both groups, one ListOffsets for all their partitions, one Fetch for their latencies. Each
/// still gets its own figure, equal to Kafka's tool, under its own queue name (both are `orders`);
/// ticking apart, each pays its own requests.
#[tokio::test]
async fn policies_ticking_together_share_one_cluster_tick() {
    let broker = KafkaBroker::start();
    // Topics t-0 and t-1 of 3 partitions, 6 records each, groups g-0 and g-1 committed at 1.
    broker.jobs("fill-many", &["t", "2", "3", "6", "g", "1"]);
    let (lag_a, lag_b) = (broker.tool_lag("g-0", "t-0"), broker.tool_lag("g-1", "t-1"));
    assert_eq!((lag_a, lag_b), (15, 15));
    let a = queues("[{name: orders, type: kafka, topic: t-0, consumerGroup: g-0}]");
    let b = queues("[{name: orders, type: kafka, topic: t-1, consumerGroup: g-1}]");
    let sampler = Sampler::new();
    let target = endpoint(&broker.bootstrap(), None);
    // The first tick learns the layout and the coordinators.
    let _ = futures::join!(
        sampler.sample_backend(&target, &a),
        sampler.sample_backend(&target, &b)
    );

    let (sample_a, sample_b) = futures::join!(
        sampler.sample_backend(&target, &a),
        sampler.sample_backend(&target, &b)
    );
    assert_eq!(depth(&sample_a, "orders"), Ok(lag_a));
    assert_eq!(depth(&sample_b, "orders"), Ok(lag_b));
    assert_eq!(sample_a.queues.len(), 1, "only its own queues: {sample_a:?}");
    assert_eq!(
        sample_a.round_trips + sample_b.round_trips,
        3,
        "one OffsetFetch, one ListOffsets, one Fetch for both policies"
    );

    let sample_a = sampler.sample_backend(&target, &a).await;
    let sample_b = sampler.sample_backend(&target, &b).await;
    assert_eq!(
        (depth(&sample_a, "orders"), depth(&sample_b, "orders")),
        (Ok(lag_a), Ok(lag_b))
    );
    assert_eq!(
        sample_a.round_trips + sample_b.round_trips,
        6,
        "apart, three each"
    );
}

#[tokio::test]
async fn depths_equal_the_lag_kafka_consumer_groups_prints() {
    let broker = KafkaBroker::start();
    broker.create_topic("orders", 3);
    broker.create_topic("fresh", 2);
    broker.produce("orders", 0, 50, None);
    broker.produce("orders", 1, 30, None);
    broker.produce("fresh", 0, 12, None);
    broker.produce("fresh", 1, 5, None);
    // billing: 20 of partition 0 done, partition 1 never committed, partition 2 empty.
    broker.commit("billing", "orders", 0, 20);
    broker.commit("billing", "orders", 2, 0);
    // audit commits on both topics; a queue without a topic covers both.
    broker.commit("audit", "orders", 1, 10);
    broker.commit("audit", "fresh", 0, 2);
    let tool_billing = broker.tool_lag("billing", "orders");
    let tool_audit = broker.tool_lag("audit", "orders") + broker.tool_lag("audit", "fresh");
    assert_eq!((tool_billing, tool_audit), (30, 30), "Kafka's own figures");
    // offsetReset earliest on a group that never committed: every record the log keeps.
    let earliest: i64 = broker.offsets("fresh", "earliest").iter().map(|(_, o)| o).sum();
    let latest: i64 = broker.offsets("fresh", "latest").iter().map(|(_, o)| o).sum();

    let prepared = queues(
        "[{name: billing, type: kafka, topic: orders, consumerGroup: billing},
          {name: audit, type: kafka, consumerGroup: audit, weight: 2},
          {name: replay, type: kafka, topic: fresh, consumerGroup: newcomer, offsetReset: earliest},
          {name: tail, type: kafka, topic: fresh, consumerGroup: audit}]",
    );
    let sampler = Sampler::new();
    let target = endpoint(&broker.bootstrap(), None);
    let first = sampler.sample_backend(&target, &prepared).await;
    assert_eq!(first.unreachable, None, "{first:?}");
    assert_eq!(depth(&first, "billing"), Ok(tool_billing));
    assert_eq!(depth(&first, "audit"), Ok(tool_audit));
    assert_eq!(
        depth(&first, "replay"),
        Ok(u64::try_from(latest - earliest).unwrap())
    );
    assert_eq!(depth(&first, "tail"), Ok(broker.tool_lag("audit", "fresh")));
    assert_eq!(first.pending(), 30 + 2 * 30 + 17 + 10);

    // Once the layout is known: OffsetFetch (one coordinator, both groups), ListOffsets latest
    // and earliest (one leader), Fetch for latency.
    let second = sampler.sample_backend(&target, &prepared).await;
    assert_eq!(depth(&second, "billing"), Ok(tool_billing));
    assert_eq!(second.round_trips, 4, "{second:?}");

    // Work done moves the figure as Kafka's tool sees it.
    broker.commit("billing", "orders", 0, 50);
    broker.commit("billing", "orders", 1, 25);
    let after = sampler.sample_backend(&target, &prepared).await;
    assert_eq!(depth(&after, "billing"), Ok(broker.tool_lag("billing", "orders")));
    assert_eq!(depth(&after, "billing"), Ok(5));
}

#[tokio::test]
async fn latency_is_the_age_of_the_record_at_the_committed_offset() {
    let broker = KafkaBroker::start();
    broker.create_topic("jobs", 2);
    let old = now_ms() - 90_000;
    let older = now_ms() - 300_000;
    // Partition 0: 10 records from 90 s ago, then 10 fresh; the group is past the first 10.
    broker.produce("jobs", 0, 10, Some(older));
    broker.produce("jobs", 0, 10, Some(old));
    broker.produce("jobs", 0, 10, None);
    broker.commit("workers", "jobs", 0, 10);
    // Partition 1: nothing owed, whatever its records' age.
    broker.produce("jobs", 1, 3, Some(older));
    broker.commit("workers", "jobs", 1, 3);
    // The same with compression Kafka's Java client applies: gzip (decoded), lz4 (not: the
    // batch's first timestamp).
    broker.create_topic("packed", 2);
    broker.jobs("produce", &["packed", "0", "20", &old.to_string(), "200", "gzip"]);
    broker.jobs("produce", &["packed", "1", "20", &old.to_string(), "200", "lz4"]);
    broker.commit("workers", "packed", 0, 5);
    broker.commit("workers", "packed", 1, 5);
    broker.commit("idle", "jobs", 0, 30);
    broker.commit("idle", "jobs", 1, 3);

    let prepared = queues(
        "[{name: jobs, type: kafka, topic: jobs, consumerGroup: workers},
          {name: packed, type: kafka, topic: packed, consumerGroup: workers},
          {name: idle, type: kafka, topic: jobs, consumerGroup: idle}]",
    );
    let sample = Sampler::new()
        .sample_backend(&endpoint(&broker.bootstrap(), None), &prepared)
        .await;
    let expected = Duration::from_millis(u64::try_from(now_ms() - old).unwrap());
    for name in ["jobs", "packed"] {
        let read = latency(&sample, name);
        let off = read.abs_diff(expected);
        assert!(
            off <= Duration::from_secs(1),
            "{name}: {read:?} against {expected:?}"
        );
    }
    assert_eq!(latency(&sample, "idle"), Duration::ZERO, "nothing owed");
    assert_eq!(depth(&sample, "jobs"), Ok(broker.tool_lag("workers", "jobs")));
}

#[tokio::test]
async fn an_unknown_topic_or_group_fails_its_queue_only() {
    let broker = KafkaBroker::start();
    broker.create_topic("orders", 1);
    broker.produce("orders", 0, 7, None);
    broker.commit("billing", "orders", 0, 2);
    let prepared = queues(
        "[{name: billing, type: kafka, topic: orders, consumerGroup: billing},
          {name: typo, type: kafka, topic: ordres, consumerGroup: billing},
          {name: nobody, type: kafka, topic: orders, consumerGroup: nobody}]",
    );
    let sample = Sampler::new()
        .sample_backend(&endpoint(&broker.bootstrap(), None), &prepared)
        .await;
    assert_eq!(depth(&sample, "billing"), Ok(5));
    let typo = depth(&sample, "typo").unwrap_err();
    assert!(typo.contains("topic \"ordres\" does not exist"), "{typo}");
    let nobody = depth(&sample, "nobody").unwrap_err();
    assert!(
        nobody.contains("consumer group \"nobody\" does not exist"),
        "{nobody}"
    );
    assert_eq!(sample.unreachable, None, "the cluster itself answered");
}

/// levee never writes to a broker it reads: a Kafka broker creates a topic a Metadata request
/// names when `auto.create.topics.enable` is on (Kafka's default) and the request allows it, which
/// levee's did until issue 39 (two missing topics named by `levee sample --once` were created).
#[tokio::test]
async fn naming_missing_topics_creates_none() {
    let broker = KafkaBroker::start();
    broker.create_topic("present", 1);
    let prepared = queues(
        "[{name: a, type: kafka, topic: never-made-a, consumerGroup: g},
          {name: b, type: kafka, topic: never-made-b, consumerGroup: g}]",
    );
    let sampler = Sampler::new();
    // Until the group's coordinator is up (a new cluster makes its offsets topic at first use),
    // and three ticks more.
    let (mut said, mut ticks_since) = (Vec::new(), 0);
    for _ in 0..60 {
        let sample = sampler
            .sample_backend(&endpoint(&broker.bootstrap(), None), &prepared)
            .await;
        let why = depth(&sample, "a").unwrap_err();
        if why.contains("topic \"never-made-a\" does not exist") {
            ticks_since += 1;
            if ticks_since == 3 {
                break;
            }
        }
        said.push(why);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(ticks_since, 3, "the missing topic was never reported: {said:?}");
    let topics = broker.topics();
    assert!(
        topics.contains(&"present".to_string()),
        "the tool lists topics: {topics:?}"
    );
    for missing in ["never-made-a", "never-made-b"] {
        assert!(
            !topics.contains(&missing.to_string()),
            "{missing} was created: {topics:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_broker_fails_every_queue_and_says_where() {
    let port = support::free_port();
    let prepared = queues("[{name: a, type: kafka, topic: t, consumerGroup: g}]");
    let sample = Sampler::new()
        .sample_backend(&endpoint(&format!("127.0.0.1:{port}"), None), &prepared)
        .await;
    let why = depth(&sample, "a").unwrap_err();
    assert!(why.contains("connection refused"), "{why}");
    assert!(sample.unreachable.is_some());
}

/// A "broker" that answers every request with a frame announcing `size` bytes and then sends
/// them slowly, or not at all.
async fn lying_broker(size: i32) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(&size.to_be_bytes()).await;
                loop {
                    if socket.write_all(&[0u8; 1024]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn an_oversized_or_endless_reply_is_refused_within_its_bounds() {
    let prepared = queues("[{name: a, type: kafka, topic: t, consumerGroup: g}]");
    let sampler = Sampler::new();
    let huge = lying_broker(1 << 30).await;
    let started = std::time::Instant::now();
    let sample = sampler
        .sample_backend(&endpoint(&format!("127.0.0.1:{huge}"), None), &prepared)
        .await;
    let why = depth(&sample, "a").unwrap_err();
    assert!(why.contains("over levee's bound"), "{why}");
    // Under the handshake's 64 KiB bound, sent a KiB every 50 ms: the deadline ends it.
    let endless = lying_broker(60 << 10).await;
    let sample = sampler
        .sample_backend(&endpoint(&format!("127.0.0.1:{endless}"), None), &prepared)
        .await;
    let why = depth(&sample, "a").unwrap_err();
    assert!(why.contains("within"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded in time");
}

#[tokio::test]
async fn sasl_plain_and_scram_authenticate_and_a_wrong_password_says_what_to_check() {
    let broker = KafkaBroker::start_sasl();
    broker.create_topic("orders", 1);
    broker.produce("orders", 0, 9, None);
    broker.commit("billing", "orders", 0, 4);
    let prepared = queues("[{name: billing, type: kafka, topic: orders, consumerGroup: billing}]");
    let sasl_server = format!("127.0.0.1:{}", broker.sasl_port.unwrap());
    let sampler = Sampler::new();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let auth = |password: &str| SaslAuth {
            mechanism: serde_yaml::from_str(mechanism).unwrap(),
            username: SASL_USER.into(),
            password: password.into(),
        };
        let good = sampler
            .sample_backend(&endpoint(&sasl_server, Some(auth(SASL_PASSWORD))), &prepared)
            .await;
        assert_eq!(depth(&good, "billing"), Ok(5), "{mechanism}");
        let bad = sampler
            .sample_backend(&endpoint(&sasl_server, Some(auth("wrong"))), &prepared)
            .await;
        let why = depth(&bad, "billing").unwrap_err();
        assert!(
            why.contains("refused levee's SASL credentials"),
            "{mechanism}: {why}"
        );
    }
    // No SASL against a SASL listener: the broker drops the connection.
    let none = sampler
        .sample_backend(&endpoint(&sasl_server, None), &prepared)
        .await;
    assert!(depth(&none, "billing").is_err());
}

#[tokio::test]
async fn a_tick_is_a_fixed_handful_of_requests_at_a_thousand_partitions() {
    let broker = KafkaBroker::start();
    broker.create_topic("wide", 1000);
    for partition in [0, 499, 999] {
        broker.produce("wide", partition, 4, None);
        broker.commit("wide-workers", "wide", partition, 1);
    }
    let prepared = queues("[{name: wide, type: kafka, topic: wide, consumerGroup: wide-workers}]");
    let sampler = Sampler::new();
    let target = endpoint(&broker.bootstrap(), None);
    let _ = sampler.sample_backend(&target, &prepared).await;
    let sample = sampler.sample_backend(&target, &prepared).await;
    assert_eq!(
        depth(&sample, "wide"),
        Ok(broker.tool_lag("wide-workers", "wide"))
    );
    assert_eq!(depth(&sample, "wide"), Ok(9));
    assert_eq!(
        sample.round_trips, 3,
        "OffsetFetch, ListOffsets and Fetch, one each: {sample:?}"
    );
}

#[tokio::test]
async fn a_killed_coordinator_and_leader_are_followed_and_the_figure_stays_exact() {
    let mut cluster = KafkaCluster::start();
    let tools = |cluster: &KafkaCluster, skip: usize| {
        (0..3).find(|i| *i != skip).map(|i| cluster.nodes[i].bootstrap())
    };
    cluster.any().jobs("create", &["orders", "3", "3"]);
    for partition in 0..3 {
        cluster
            .any()
            .produce("orders", partition, 10 + partition * 5, None);
    }
    cluster.any().commit("billing", "orders", 0, 4);
    cluster.any().commit("billing", "orders", 2, 11);
    let expected = cluster.any().tool_lag("billing", "orders");
    assert_eq!(
        expected,
        6 + 9,
        "Kafka's own figure (partition 1 never committed: 0)"
    );
    // The group's coordinator leads one of the three partitions too: killing it moves both.
    let coordinator = usize::try_from(cluster.coordinator(0, "billing")).unwrap() - 1;

    let prepared = queues("[{name: billing, type: kafka, topic: orders, consumerGroup: billing}]");
    let sampler = Sampler::new();
    let target = endpoint(&cluster.bootstrap(), None);
    let before = sampler.sample_backend(&target, &prepared).await;
    assert_eq!(depth(&before, "billing"), Ok(expected), "{before:?}");

    cluster.nodes[coordinator].kill();
    let killed = std::time::Instant::now();
    let mut failed_ticks = 0;
    let mut consecutive_ok = 0;
    let mut last_error = String::new();
    while consecutive_ok < 3 {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the figure did not come back within 60 s of the kill ({failed_ticks} failed ticks, the last: {last_error})"
        );
        let sample = sampler.sample_backend(&target, &prepared).await;
        match depth(&sample, "billing") {
            Ok(read) => {
                assert_eq!(read, expected, "never a wrong figure, at {:?}", killed.elapsed());
                consecutive_ok += 1;
            }
            Err(why) => {
                failed_ticks += 1;
                consecutive_ok = 0;
                last_error = why;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let back_after = killed.elapsed();
    let live = tools(&cluster, coordinator).unwrap();
    let moved_to =
        usize::try_from(cluster.coordinator(if coordinator == 0 { 1 } else { 0 }, "billing")).unwrap() - 1;
    assert_ne!(moved_to, coordinator, "the coordinator moved");
    // The dead broker is noticed by the controller within its session timeout (3 s here), then
    // the new leaders and coordinator take over: ticks fail meanwhile (onSampleFailure's count
    // absorbs them), none reads a wrong figure.
    eprintln!(
        "coordinator {coordinator} killed; figure back after {back_after:?}, {failed_ticks} failed ticks (the last: {last_error}; tools via {live})"
    );
}

#[tokio::test]
async fn a_consumer_held_back_by_levee_pauses_and_resumes() {
    let stage = HeldBackStage::from_docs("### A Kafka consumer that pauses");
    let broker = KafkaBroker::start();
    broker.create_topic("upstream", 2);
    broker.produce("upstream", 0, 15, None);
    broker.produce("upstream", 1, 10, None);
    stage.accepting(false);
    let mut consumer = stage.spawn(&[broker.bootstrap(), "upstream".into(), "stage".into()]);
    let prepared = queues(
        "[{name: upstream, type: kafka, topic: upstream, consumerGroup: stage, offsetReset: earliest}]",
    );
    let sampler = Sampler::new();
    let target = endpoint(&broker.bootstrap(), None);
    // Held back: the group joins (its members show in Kafka's tool) and consumes nothing.
    let joined = std::time::Instant::now();
    while !broker
        .describe_lags("stage")
        .iter()
        .any(|(topic, _, _)| topic == "upstream")
    {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "the consumer never joined its group"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = depth(&sampler.sample_backend(&target, &prepared).await, "upstream");
    stage.accepting(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut left = held.clone();
    while left != Ok(0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = depth(&sampler.sample_backend(&target, &prepared).await, "upstream");
    }
    let _ = consumer.kill();
    let output = consumer.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(held, Ok(25), "held back, the consumer took nothing");
    assert_eq!(left, Ok(0), "let through, it worked the backlog off");
    assert_eq!(
        broker.tool_lag("stage", "upstream"),
        0,
        "as Kafka's own tool sees it"
    );
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        ["paused", "resumed"],
        "{printed}"
    );
}

#[tokio::test]
async fn a_broker_whose_packets_are_dropped_fails_ticks_within_the_timeout_and_is_read_again() {
    if !support::netns::may_run() {
        return;
    }
    let isolated = support::netns::Isolated::create("kafka", 214);
    let broker = KafkaBroker::start_isolated(&isolated);
    broker.create_topic("orders", 2);
    broker.produce("orders", 0, 12, None);
    broker.commit("billing", "orders", 0, 2);
    let expected = broker.tool_lag("billing", "orders");
    let prepared = queues("[{name: billing, type: kafka, topic: orders, consumerGroup: billing}]");
    let sampler = Sampler::new();
    let spec: KafkaSpec = serde_yaml::from_str(&format!(
        "{{bootstrapServers: ['{}'], timeout: 500ms}}",
        broker.bootstrap()
    ))
    .unwrap();
    let target = BackendEndpoint::Kafka(KafkaEndpoint::from_spec(&spec, None).unwrap());
    assert_eq!(
        depth(&sampler.sample_backend(&target, &prepared).await, "billing"),
        Ok(expected)
    );

    // Packets vanish: no RST, so only the deadline ends each request.
    isolated.drop_packets(broker.port, true);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let sample = sampler.sample_backend(&target, &prepared).await;
        let took = started.elapsed();
        let why = depth(&sample, "billing").unwrap_err();
        assert!(why.contains("within"), "a timeout: {why}");
        assert!(sample.unreachable.is_some(), "{sample:?}");
        assert!(
            took < Duration::from_secs(3),
            "bounded by the 500 ms deadline: {took:?}"
        );
    }

    // Packets flow again: the figure is back, exact.
    isolated.drop_packets(broker.port, false);
    let restored = std::time::Instant::now();
    let mut read = Err(String::new());
    while read != Ok(expected) && restored.elapsed() < Duration::from_secs(15) {
        read = depth(&sampler.sample_backend(&target, &prepared).await, "billing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read, Ok(expected), "read again once packets flow");
}

#[test]
fn levee_sample_prints_kafkas_own_lag_and_the_partitions() {
    let broker = KafkaBroker::start();
    broker.create_topic("orders", 3);
    broker.produce("orders", 0, 8, None);
    broker.produce("orders", 2, 20, None);
    broker.commit("billing", "orders", 0, 3);
    broker.commit("billing", "orders", 2, 4);
    let expected = broker.tool_lag("billing", "orders");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let policy = std::fs::read_to_string(support::repo_root().join("examples/kafka-policy.yaml"))
        .unwrap()
        .replace(
            "[\"kafka-0.kafka.jobs.svc:9092\", \"kafka-1.kafka.jobs.svc:9092\"]",
            &format!("[\"{}\"]", broker.bootstrap()),
        );
    // Without TLS and SASL here: the example's tls and sasl lines go, and so do the queues on
    // other topics.
    let policy: String = policy
        .lines()
        .filter(|line| {
            !line.contains("sasl:")
                && !line.contains("tls:")
                && !line.contains("name: fresh")
                && !line.contains("name: audit")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&file, policy).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["sample", "-f", file.to_str().unwrap(), "--once", "-o", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or("")).unwrap();
    assert_eq!(line["pending"], expected, "{line}");
    assert_eq!(line["queues"][0]["depth"], expected, "{line}");
    assert_eq!(line["queues"][0]["partitions"], 3, "{line}");
    assert_eq!(line["queues"][0]["maxPartitionLag"], 16, "partition 2: 20 − 4");
    assert!(line["queues"][0]["latencySeconds"].as_f64().is_some(), "{line}");
}

#[tokio::test]
async fn tls_with_the_right_ca_reads_and_a_ca_mismatch_says_what_to_change() {
    let files = support::TlsFiles::generate();
    let broker = KafkaBroker::start_tls(&files);
    broker.create_topic("orders", 1);
    broker.produce("orders", 0, 6, None);
    broker.commit("billing", "orders", 0, 1);
    let prepared = queues("[{name: billing, type: kafka, topic: orders, consumerGroup: billing}]");
    let spec: KafkaSpec = serde_yaml::from_str(&format!(
        "{{bootstrapServers: ['127.0.0.1:{}'], tls: {{}}, timeout: 5s}}",
        broker.sasl_port.unwrap()
    ))
    .unwrap();
    let sampler = Sampler::new();
    let with_ca =
        |pem: Vec<u8>| BackendEndpoint::Kafka(KafkaEndpoint::from_spec(&spec, None).unwrap().with_ca(pem));
    let ca = std::fs::read(files.path("ca.crt")).unwrap();
    let good = sampler.sample_backend(&with_ca(ca), &prepared).await;
    assert_eq!(
        depth(&good, "billing"),
        Ok(broker.tool_lag("billing", "orders")),
        "{good:?}"
    );
    assert_eq!(depth(&good, "billing"), Ok(5));
    // Another CA: refused, saying which setting to check.
    let other = support::TlsFiles::generate();
    let bad = sampler
        .sample_backend(&with_ca(std::fs::read(other.path("ca.crt")).unwrap()), &prepared)
        .await;
    let why = depth(&bad, "billing").unwrap_err();
    assert!(why.contains("check spec.kafka.tls.caSecretRef"), "{why}");
}
