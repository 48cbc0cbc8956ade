//! The NATS JetStream backend against a real nats-server, the work made and the expected figures
//! read with nats-py (NATS's own client): depths equal to what CONSUMER.INFO says, errors per
//! queue, an unreachable or refusing server, and replies bounded in bytes.

mod support;

use levee::api::{NatsSpec, QueueSpec};
use levee::sampler::nats::{NatsAuth, NatsEndpoint};
use levee::sampler::{BackendEndpoint, PreparedQueues, Sample, Sampler};
use std::time::{Duration, Instant};
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

#[tokio::test]
async fn depths_equal_what_nats_own_client_reads_from_the_consumer() {
    let server = NatsServer::start();
    // 50 published, 20 delivered of which 5 acknowledged: 30 unprocessed, 15 outstanding acks.
    server.jetstream(&["fill", "EVENTS", "events.>", "writer", "50", "20", "5"]);
    server.jetstream(&["fill", "MAIL", "mail", "sender", "7", "0", "0"]);
    let expected_events = server.unprocessed_and_outstanding("EVENTS", "writer", &[]);
    let expected_mail = server.unprocessed_and_outstanding("MAIL", "sender", &[]);
    assert_eq!((expected_events, expected_mail), (45, 7), "nats-py's own figures");
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
        sample
            .queues
            .iter()
            .map(|q| q.latency.clone())
            .collect::<Vec<_>>(),
        [None, None]
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
    assert_eq!(depth(&sample, "jobs"), Ok(0), "all 12 acknowledged");
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

/// A "server" that greets like NATS and then answers the request with `reply`.
async fn impostor(reply: Vec<u8>) -> u16 {
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
                        // An endless reply goes on until levee hangs up.
                        while socket.write_all(&[b'x'; 4096]).await.is_ok() {}
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
    for (reply, expected) in [
        (
            b"MSG INBOX 1 104857600\r\n".to_vec(),
            "over the 262144-byte limit",
        ),
        (b"MSG INBOX 1 ".to_vec(), "longer than 65536 bytes"),
    ] {
        let port = impostor(reply).await;
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
