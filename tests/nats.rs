//! The NATS JetStream backend against a real nats-server, the work made and the expected figures
//! read with nats-py (NATS's own client): depths equal to what CONSUMER.INFO says, errors per
//! queue, an unreachable or refusing server, and replies bounded in bytes.

mod support;

use levee::api::{NatsSpec, QueueSpec};
use levee::sampler::nats::{NatsAuth, NatsEndpoint};
use levee::sampler::{BackendEndpoint, PreparedQueues, Sample, Sampler};
use std::time::{Duration, Instant};
use support::held_back::HeldBackStage;
use support::nats::NatsServer;

fn queues(yaml: &str) -> PreparedQueues {
    let queues: Vec<QueueSpec> = serde_yaml::from_str(yaml).unwrap();
    PreparedQueues::new(&queues, true)
}

fn endpoint(url: &str, auth: NatsAuth) -> BackendEndpoint {
    let spec: NatsSpec = serde_yaml::from_str(&format!("{{url: '{url}', timeout: 1s}}")).unwrap();
    BackendEndpoint::Nats(NatsEndpoint::from_spec(&spec, auth).unwrap())
}

fn depth(sample: &Sample, name: &str) -> Result<u64, String> {
    sample
        .queues
        .iter()
        .find(|q| q.name == name)
        .unwrap()
        .depth
        .clone()
}

/// Each depth equals what NATS's own tools read of the consumer: `nats consumer info`'s
/// "Unprocessed Messages" + "Outstanding Acks", and nats-py's `consumer_info`.
#[tokio::test]
async fn depths_equal_what_nats_own_tools_read_from_the_consumer() {
    let server = NatsServer::start();
    // 50 published, 20 delivered of which 5 acknowledged: 30 unprocessed, 15 outstanding acks.
    server.jetstream(&["fill", "EVENTS", "events.>", "writer", "50", "20", "5"]);
    server.jetstream(&["fill", "MAIL", "mail", "sender", "7", "0", "0"]);
    let expected_events = server.unprocessed_and_outstanding("EVENTS", "writer", &[]);
    let expected_mail = server.unprocessed_and_outstanding("MAIL", "sender", &[]);
    assert_eq!((expected_events, expected_mail), (45, 7), "nats-py's own figures");
    assert_eq!(
        (
            server.consumer_info_tool("EVENTS", "writer"),
            server.consumer_info_tool("MAIL", "sender")
        ),
        (expected_events, expected_mail),
        "nats consumer info's own figures"
    );
    let prepared = queues(
        "[{name: events, type: jetstream, stream: EVENTS, consumer: writer},
          {name: mail, type: jetstream, stream: MAIL, consumer: sender, weight: 3}]",
    );
    let sampler = Sampler::new();
    let sample = sampler
        .sample_backend(&endpoint(&server.url(), NatsAuth::None), &prepared)
        .await;
    assert_eq!(sample.unreachable, None);
    assert_eq!(depth(&sample, "events"), Ok(expected_events));
    assert_eq!(depth(&sample, "mail"), Ok(expected_mail));
    assert_eq!(sample.pending(), expected_events + 3 * expected_mail);
    assert_eq!(
        sample.round_trips, 2,
        "the infos, then the latency reads, each all at once"
    );

    // Work done moves the figure as the consumer's own state does.
    server.jetstream(&["fill", "JOBS", "jobs", "worker", "12", "12", "12"]);
    let jobs = queues("[{name: jobs, type: jetstream, stream: JOBS, consumer: worker}]");
    let sample = sampler
        .sample_backend(&endpoint(&server.url(), NatsAuth::None), &jobs)
        .await;
    assert_eq!(
        depth(&sample, "jobs"),
        Ok(server.unprocessed_and_outstanding("JOBS", "worker", &[]))
    );
    assert_eq!(
        depth(&sample, "jobs"),
        Ok(server.consumer_info_tool("JOBS", "worker"))
    );
    assert_eq!(depth(&sample, "jobs"), Ok(0), "all 12 acknowledged");
    assert_eq!(
        latency(&sample, "jobs"),
        Some(Ok(Duration::ZERO)),
        "no work not done: no latency"
    );
}

fn latency(sample: &Sample, name: &str) -> Option<Result<Duration, String>> {
    sample
        .queues
        .iter()
        .find(|q| q.name == name)
        .unwrap()
        .latency
        .clone()
}

/// Seconds since the epoch, as the producer's clock gives them.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The latency of a consumer is the age of the oldest message it has not had acknowledged, on
/// its own filter subject: within 1 s of the time the producer published that message.
#[tokio::test]
async fn latency_is_the_age_of_the_oldest_unacknowledged_message_on_the_consumers_filter() {
    let server = NatsServer::start();
    // Four messages 0.5 s apart, three delivered, the first acknowledged: the oldest not
    // acknowledged is the second.
    let filled = server.jetstream(&["fill", "LAT", "lat", "worker", "4", "3", "1", "--spacing", "0.5"]);
    let published: Vec<f64> = serde_json::from_value(filled["published"].clone()).unwrap();
    // A filtered consumer: older messages on another subject are not its work.
    let filter = ["--filter", "orders.eu"];
    let fill = |count: &str, to: &str| {
        let mut args = vec![
            "fill",
            "ORDERS",
            "orders.>",
            "eu",
            count,
            "0",
            "0",
            "--publish-to",
            to,
        ];
        args.extend(filter);
        server.jetstream(&args)
    };
    let us = fill("2", "orders.us");
    std::thread::sleep(Duration::from_secs(3));
    let eu = fill("2", "orders.eu");
    let first_eu = eu["published"][0].as_f64().unwrap();
    let first_us = us["published"][0].as_f64().unwrap();
    assert_eq!(
        server.unprocessed_and_outstanding("ORDERS", "eu", &[]),
        2,
        "only orders.eu is the consumer's"
    );

    let prepared = queues(
        "[{name: lat, type: jetstream, stream: LAT, consumer: worker},
          {name: eu, type: jetstream, stream: ORDERS, consumer: eu}]",
    );
    let sample = Sampler::new()
        .sample_backend(&endpoint(&server.url(), NatsAuth::None), &prepared)
        .await;
    let now = now_seconds();
    assert_eq!(depth(&sample, "lat"), Ok(3));
    let lat = latency(&sample, "lat")
        .expect("latency is read")
        .unwrap()
        .as_secs_f64();
    let expected = now - published[1];
    assert!(
        (lat - expected).abs() < 1.0,
        "levee {lat:.3} s, the second message's age {expected:.3} s"
    );
    let eu_latency = latency(&sample, "eu")
        .expect("latency is read")
        .unwrap()
        .as_secs_f64();
    let expected = now - first_eu;
    assert!(
        (eu_latency - expected).abs() < 1.0,
        "levee {eu_latency:.3} s, the first orders.eu message's age {expected:.3} s (orders.us's {:.3} s is not the consumer's)",
        now - first_us
    );

    // With latency off, none is read.
    let depth_only: Vec<QueueSpec> =
        serde_yaml::from_str("[{name: lat, type: jetstream, stream: LAT, consumer: worker}]").unwrap();
    let sample = Sampler::new()
        .sample_backend(
            &endpoint(&server.url(), NatsAuth::None),
            &PreparedQueues::new(&depth_only, false),
        )
        .await;
    assert_eq!((depth(&sample, "lat"), latency(&sample, "lat")), (Ok(3), None));
}

#[tokio::test]
async fn an_unknown_stream_or_consumer_is_that_queues_error_and_the_others_still_read() {
    let server = NatsServer::start();
    server.jetstream(&["fill", "EVENTS", "events", "writer", "9", "0", "0"]);
    let prepared = queues(
        "[{name: events, type: jetstream, stream: EVENTS, consumer: writer},
          {name: nobody, type: jetstream, stream: EVENTS, consumer: nobody},
          {name: nowhere, type: jetstream, stream: NOWHERE, consumer: writer}]",
    );
    let sample = Sampler::new()
        .sample_backend(&endpoint(&server.url(), NatsAuth::None), &prepared)
        .await;
    assert_eq!(sample.unreachable, None, "the server answered");
    assert_eq!(depth(&sample, "events"), Ok(9));
    let nobody = depth(&sample, "nobody").unwrap_err();
    assert!(
        nobody.contains("consumer nobody of stream EVENTS") && nobody.contains("not found"),
        "{nobody}"
    );
    let nowhere = depth(&sample, "nowhere").unwrap_err();
    assert!(
        nowhere.contains("stream NOWHERE") && nowhere.contains("not found"),
        "{nowhere}"
    );
    assert!(
        sample.failed(),
        "a queue that cannot be read fails the tick, as for Redis"
    );
}

#[tokio::test]
async fn a_server_without_jetstream_an_unreachable_one_and_wrong_credentials_are_told_apart() {
    let plain = NatsServer::start_with(&[]);
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    let sample = sampler
        .sample_backend(&endpoint(&plain.url(), NatsAuth::None), &prepared)
        .await;
    let error = depth(&sample, "events").unwrap_err();
    assert!(error.contains("is JetStream enabled"), "{error}");

    let closed = support::free_port();
    let started = Instant::now();
    let sample = sampler
        .sample_backend(
            &endpoint(&format!("nats://127.0.0.1:{closed}"), NatsAuth::None),
            &prepared,
        )
        .await;
    let unreachable = sample.unreachable.clone().expect("nothing listens there");
    assert!(
        unreachable.contains(&format!("127.0.0.1:{closed}")),
        "{unreachable}"
    );
    assert!(depth(&sample, "events").is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let guarded = NatsServer::start_with(&["-js", "--auth", "s3cret"]);
    guarded.jetstream(&[
        "fill", "EVENTS", "events", "writer", "4", "0", "0", "--token", "s3cret",
    ]);
    let wrong = sampler
        .sample_backend(
            &endpoint(&guarded.url(), NatsAuth::Token("wrong".into())),
            &prepared,
        )
        .await;
    let refused = wrong
        .unreachable
        .clone()
        .expect("the server refuses a wrong token");
    assert!(
        refused.contains("refused levee") && refused.contains("Authorization"),
        "{refused}"
    );
    let right = sampler
        .sample_backend(
            &endpoint(&guarded.url(), NatsAuth::Token("s3cret".into())),
            &prepared,
        )
        .await;
    assert_eq!(depth(&right, "events"), Ok(4));
}

/// nkey and JWT (`.creds`) users, made with NATS's own nkeys and jwt libraries and checked by a
/// real server: the right key is let in and reads what nats-py reads, another user's is refused.
#[tokio::test]
async fn nkey_and_creds_users_are_let_in_and_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    support::nats::nats_keys("nkey", dir.path());
    support::nats::nats_keys("creds", dir.path());
    let path = |name: &str| dir.path().join(name).to_string_lossy().to_string();
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    let seed = std::fs::read_to_string(path("user.nk"))
        .unwrap()
        .trim()
        .to_string();
    let (jwt, creds_seed) =
        levee::sampler::nats::nkey::parse_creds(&std::fs::read_to_string(path("user.creds")).unwrap())
            .unwrap();

    let nkey_server = NatsServer::start_with(&["-js", "-c", &path("nkey.conf")]);
    let nkey = ["--nkey", &path("user.nk")];
    let mut fill = vec!["fill", "EVENTS", "events", "writer", "4", "1", "0"];
    fill.extend(nkey);
    nkey_server.jetstream(&fill);
    let expected = nkey_server.unprocessed_and_outstanding("EVENTS", "writer", &nkey);
    let right = sampler
        .sample_backend(
            &endpoint(&nkey_server.url(), NatsAuth::Nkey { seed: seed.clone() }),
            &prepared,
        )
        .await;
    assert_eq!(depth(&right, "events"), Ok(expected));
    assert_eq!(expected, 4);
    let stranger = sampler
        .sample_backend(
            &endpoint(
                &nkey_server.url(),
                NatsAuth::Nkey {
                    seed: creds_seed.clone(),
                },
            ),
            &prepared,
        )
        .await;
    let refused = stranger
        .unreachable
        .expect("a key the server does not know is refused");
    assert!(
        refused.contains("refused levee") && refused.contains("Authorization"),
        "{refused}"
    );

    let operator_server = NatsServer::start_with(&["-js", "-c", &path("operator.conf")]);
    let creds = ["--creds", &path("user.creds")];
    let mut fill = vec!["fill", "EVENTS", "events", "writer", "6", "2", "1"];
    fill.extend(creds);
    operator_server.jetstream(&fill);
    let expected = operator_server.unprocessed_and_outstanding("EVENTS", "writer", &creds);
    let right = sampler
        .sample_backend(
            &endpoint(
                &operator_server.url(),
                NatsAuth::Credentials {
                    jwt: jwt.clone(),
                    seed: creds_seed,
                },
            ),
            &prepared,
        )
        .await;
    assert_eq!(depth(&right, "events"), Ok(expected));
    assert_eq!(expected, 5, "6 published, 1 acknowledged");
    // The JWT signed with another user's seed: the server sees the signature does not match.
    let forged = sampler
        .sample_backend(
            &endpoint(&operator_server.url(), NatsAuth::Credentials { jwt, seed }),
            &prepared,
        )
        .await;
    let refused = forged
        .unreachable
        .expect("a JWT signed by another key is refused");
    assert!(refused.contains("refused levee"), "{refused}");
}

/// A server with a `tls {}` block: read over TLS with the right CA (the figure nats-py reads over
/// TLS too); a CA that did not sign it, no `tls` where the server requires it, and `tls` where
/// the server offers none are each refused with what to change.
#[tokio::test]
async fn tls_with_the_right_ca_reads_and_a_mismatch_says_what_to_change() {
    let files = support::TlsFiles::generate();
    let server = NatsServer::start_with(&[
        "-js",
        "--tls",
        "--tlscert",
        &files.path("server.crt"),
        "--tlskey",
        &files.path("server.key"),
    ]);
    let ca = ["--ca", &files.path("ca.crt")];
    let mut fill = vec!["fill", "EVENTS", "events", "writer", "7", "2", "2"];
    fill.extend(ca);
    server.jetstream(&fill);
    let expected = server.unprocessed_and_outstanding("EVENTS", "writer", &ca);
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    let spec = |tls: bool| NatsSpec {
        url: server.url(),
        credentials_secret_ref: None,
        tls: tls.then(Default::default),
        timeout: levee::api::RequestTimeout(kube::core::Duration::from(Duration::from_secs(2))),
    };
    let with_ca = |pem: Vec<u8>| {
        BackendEndpoint::Nats(
            NatsEndpoint::from_spec(&spec(true), NatsAuth::None)
                .unwrap()
                .with_ca(pem),
        )
    };
    let good = sampler
        .sample_backend(&with_ca(std::fs::read(files.path("ca.crt")).unwrap()), &prepared)
        .await;
    assert_eq!(depth(&good, "events"), Ok(expected));
    assert_eq!(expected, 5, "7 published, 2 acknowledged");

    let other = support::TlsFiles::generate();
    let mismatch = sampler
        .sample_backend(&with_ca(std::fs::read(other.path("ca.crt")).unwrap()), &prepared)
        .await;
    let why = mismatch
        .unreachable
        .expect("a CA that did not sign the server's certificate");
    assert!(why.contains("check spec.nats.tls.caSecretRef"), "{why}");

    let plain_to_tls = sampler
        .sample_backend(
            &BackendEndpoint::Nats(NatsEndpoint::from_spec(&spec(false), NatsAuth::None).unwrap()),
            &prepared,
        )
        .await;
    let why = plain_to_tls.unreachable.expect("the server requires TLS");
    assert!(why.contains("requires TLS: set spec.nats.tls"), "{why}");

    let plain = NatsServer::start();
    let tls_to_plain = sampler
        .sample_backend(
            &BackendEndpoint::Nats(
                NatsEndpoint::from_spec(
                    &NatsSpec {
                        url: plain.url(),
                        ..spec(true)
                    },
                    NatsAuth::None,
                )
                .unwrap(),
            ),
            &prepared,
        )
        .await;
    let why = tls_to_plain.unreachable.expect("the server offers no TLS");
    assert!(why.contains("offers no TLS"), "{why}");
}

/// A server whose packets vanish (no RST, only the deadline ends a request): each tick fails
/// within the policy's timeout, saying so, and once packets flow the figure is back, exact.
#[tokio::test]
async fn a_server_whose_packets_are_dropped_fails_ticks_within_the_timeout_and_is_read_again() {
    if !support::netns::may_run() {
        return;
    }
    let isolated = support::netns::Isolated::create("nats", 215);
    let server = NatsServer::start_isolated(&isolated);
    server.jetstream(&["fill", "EVENTS", "events", "writer", "11", "4", "1"]);
    let expected = server.unprocessed_and_outstanding("EVENTS", "writer", &[]);
    assert_eq!(expected, 10, "11 published, 1 acknowledged");
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    let spec: NatsSpec =
        serde_yaml::from_str(&format!("{{url: '{}', timeout: 500ms}}", server.url())).unwrap();
    let target = BackendEndpoint::Nats(NatsEndpoint::from_spec(&spec, NatsAuth::None).unwrap());
    assert_eq!(
        depth(&sampler.sample_backend(&target, &prepared).await, "events"),
        Ok(expected)
    );

    isolated.drop_packets(server.port, true);
    for _ in 0..3 {
        let started = Instant::now();
        let sample = sampler.sample_backend(&target, &prepared).await;
        let took = started.elapsed();
        let why = depth(&sample, "events").unwrap_err();
        assert!(why.contains("within"), "a timeout: {why}");
        assert!(
            took < Duration::from_secs(3),
            "bounded by the 500 ms deadline: {took:?}"
        );
    }

    isolated.drop_packets(server.port, false);
    let restored = Instant::now();
    let mut read = Err(String::new());
    while read != Ok(expected) && restored.elapsed() < Duration::from_secs(15) {
        read = depth(&sampler.sample_backend(&target, &prepared).await, "events");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read, Ok(expected), "read again once packets flow");
}

/// A "server" that greets like NATS and then answers the request with `reply`, followed, when
/// `endless`, by bytes that never end (else it holds the connection open).
async fn impostor(reply: Vec<u8>, endless: bool) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let _ = socket
                    .write_all(b"INFO {\"server_id\":\"x\",\"headers\":true,\"max_payload\":1048576}\r\n")
                    .await;
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if text.contains("PING\r\n") && !text.contains("PUB ") {
                        let _ = socket.write_all(b"PONG\r\n").await;
                        seen.clear();
                    }
                    if let Some(at) = text.find("PUB ") {
                        let inbox = text[at..].split_whitespace().nth(2).unwrap_or("").to_string();
                        let reply = String::from_utf8_lossy(&reply).replace("INBOX", &inbox);
                        let _ = socket.write_all(reply.as_bytes()).await;
                        while endless && socket.write_all(&[b'x'; 4096]).await.is_ok() {}
                        let _ = socket.read(&mut buffer).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn an_oversized_or_endless_reply_is_cut_off_at_the_bound() {
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    for (reply, endless, expected) in [
        // Past what levee drops unread: the connection goes.
        (
            b"MSG INBOX 1 104857600\r\n".to_vec(),
            true,
            "over the 67108864-byte limit",
        ),
        // Over what levee reads, dropped unread: that request fails.
        (
            [&b"MSG INBOX 1 1048576\r\n"[..], &vec![b'x'; 1048576], b"\r\n"].concat(),
            false,
            "a reply of 1048576 bytes, more than levee reads (262144 bytes)",
        ),
        (b"MSG INBOX 1 ".to_vec(), true, "longer than 65536 bytes"),
    ] {
        let port = impostor(reply, endless).await;
        let started = Instant::now();
        let sample = sampler
            .sample_backend(
                &endpoint(&format!("nats://127.0.0.1:{port}"), NatsAuth::None),
                &prepared,
            )
            .await;
        let error = depth(&sample, "events").unwrap_err();
        assert!(error.contains(expected), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

/// In a 3-node cluster the consumer's leader steps down while levee samples every 50 ms through
/// one node: every figure levee reports is the exact one (a follower never answers in its place),
/// and the sampling goes on with the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leader_stepping_down_never_yields_a_followers_figure() {
    let cluster = support::nats::NatsCluster::start();
    // 60 published, 25 delivered of which 10 acknowledged: 35 unprocessed, 15 outstanding acks.
    let before = cluster.fill_replicated(&["EVENTS", "events", "writer", "60", "25", "10"]);
    let expected = before["num_pending"].as_u64().unwrap() + before["num_ack_pending"].as_u64().unwrap();
    assert_eq!(expected, 50, "nats-py's own figure");
    let old_leader = before["leader"]
        .as_str()
        .expect("a clustered consumer has a leader")
        .to_string();
    // levee talks to a node that does not lead the consumer, so the request must be routed.
    let (via, _) = cluster
        .nodes
        .iter()
        .enumerate()
        .find(|(i, _)| format!("n{}", i + 1) != old_leader)
        .unwrap();
    let url = cluster.nodes[via].url();
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let sampler = Sampler::new();
    let endpoint = endpoint(&url, NatsAuth::None);
    assert_eq!(
        depth(&sampler.sample_backend(&endpoint, &prepared).await, "events"),
        Ok(expected)
    );

    let stepped = {
        let leader_url = cluster.nodes[0].url();
        tokio::task::spawn_blocking(move || {
            support::nats::jetstream(&leader_url, &["stepdown", "EVENTS", "writer"])
        })
    };
    let mut readings = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        readings.push((
            started.elapsed(),
            depth(&sampler.sample_backend(&endpoint, &prepared).await, "events"),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = stepped.await.unwrap();
    let new_leader = after["leader"].as_str().unwrap().to_string();
    assert_ne!(new_leader, old_leader, "the consumer has a new leader");
    let wrong: Vec<_> = readings
        .iter()
        .filter(|(_, r)| matches!(r, Ok(d) if *d != expected))
        .collect();
    assert!(
        wrong.is_empty(),
        "levee reported another figure than the leader's {expected}: {wrong:?}"
    );
    let failed = readings.iter().filter(|(_, r)| r.is_err()).count();
    let last = readings.last().unwrap();
    assert_eq!(
        last.1,
        Ok(expected),
        "read from the new leader {new_leader}: {readings:?}"
    );
    eprintln!(
        "figure: leader {old_leader} -> {new_leader}; {} samples in 6 s through node n{}, {failed} failed (an election: timeout or 10008), the rest {expected}",
        readings.len(),
        via + 1
    );
}

/// The NATS stage of docs/integration.md, run as a user would copy it: held back by levee's
/// annotation it pulls nothing; let through, it works the consumer's backlog off.
#[tokio::test]
async fn a_stage_held_back_by_levee_stops_pulling_and_resumes() {
    let stage = HeldBackStage::from_docs("### A NATS JetStream stage");
    let server = NatsServer::start();
    server.jetstream(&["fill", "UPSTREAM", "upstream", "stage", "25", "0", "0"]);
    stage.accepting(false);
    let mut process = stage.spawn(&[server.url(), "UPSTREAM".into(), "stage".into()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = server.unprocessed_and_outstanding("UPSTREAM", "stage", &[]);
    stage.accepting(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = held;
    while left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = server.unprocessed_and_outstanding("UPSTREAM", "stage", &[]);
    }
    let _ = process.kill();
    let output = process.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(held, 25, "held back, the stage pulled nothing");
    assert_eq!(left, 0, "let through, it worked the backlog off");
    assert_eq!(
        printed.lines().collect::<Vec<_>>(),
        ["paused", "resumed"],
        "{printed}"
    );
}

/// Thousands of policies reading one server at once through the one connection they share, on a
/// 2 ms timeout: the replies that come late fail their samples, but the connection keeps
/// answering the others, so it is kept. (Before, a policy whose requests all came late dropped
/// the shared connection and the next policy dialled a new one, as the Redis sampler did before
/// `late_replies_on_a_connection_that_still_answers_keep_it` in tests/sampler.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_on_a_connection_that_still_answers_keep_it() {
    let server = NatsServer::start_monitored(&["-js"]);
    server.jetstream(&["fill", "EVENTS", "events", "writer", "3", "0", "0"]);
    let prepared = queues("[{name: events, type: jetstream, stream: EVENTS, consumer: writer}]");
    let spec: NatsSpec = serde_yaml::from_str(&format!("{{url: '{}', timeout: 2ms}}", server.url())).unwrap();
    let tight = BackendEndpoint::Nats(NatsEndpoint::from_spec(&spec, NatsAuth::None).unwrap());
    let sampler = Sampler::new();
    let mut read = Err(String::new());
    for _ in 0..50 {
        read = depth(&sampler.sample_backend(&tight, &prepared).await, "events");
        if read.is_ok() {
            break;
        }
    }
    assert_eq!(read, Ok(3), "one sample at a time answers within 2 ms");
    let opened = |server: &NatsServer| {
        server.varz()["total_connections"]
            .as_u64()
            .expect("total_connections")
    };
    let before = opened(&server);
    let mut late = 0;
    for _ in 0..5 {
        let ticks = futures::future::join_all((0..2000).map(|_| {
            let (sampler, tight, prepared) = (sampler.clone(), tight.clone(), prepared.clone());
            tokio::spawn(async move { depth(&sampler.sample_backend(&tight, &prepared).await, "events") })
        }))
        .await;
        for read in ticks {
            match read.unwrap() {
                Ok(depth) => assert_eq!(depth, 3),
                Err(error) => {
                    assert!(error.contains("within"), "{error}");
                    late += 1;
                }
            }
        }
    }
    let dialled = opened(&server) - before;
    eprintln!("figure: 10,000 samples at once on a 2 ms timeout: {late} late, {dialled} connections opened");
    assert!(late > 0, "no reply came late: the test shows nothing");
    assert!(
        dialled <= 2,
        "{dialled} connections opened for {late} late replies"
    );
}
