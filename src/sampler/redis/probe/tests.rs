//! Probe layouts and reply interpretation, without Redis (the integration tests use a real one).

use super::*;
use redis::{ErrorKind, RedisError};

fn queue(yaml: &str) -> QueueSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn keys(probe: &QueueProbe) -> Vec<(ReadKind, String)> {
    probe.reads.iter().map(|r| (r.kind, r.key.clone())).collect()
}

fn server_error(code: &'static str, detail: &str) -> RedisError {
    let parsed: RedisResult<Value> = redis::parse_redis_value(format!("-{code} {detail}\r\n").as_bytes());
    match parsed {
        Ok(Value::ServerError(error)) => error.into(),
        other => panic!("not a server error: {other:?}"),
    }
}

#[test]
fn bullmq_reads_wait_paused_prioritized_active_under_its_prefix() {
    use ReadKind::*;
    let probe = QueueProbe::for_queue(&queue("{name: e, type: bullmq, key: mail}"));
    assert_eq!(
        keys(&probe),
        vec![
            (Llen, "bull:mail:wait".into()),
            (Llen, "bull:mail:paused".into()),
            (Zcard, "bull:mail:prioritized".into()),
            (Llen, "bull:mail:active".into()),
        ]
    );
    let delayed = QueueProbe::for_queue(&queue(
        "{name: e, type: bullmq, key: mail, prefix: '{app}', includeDelayed: true}",
    ));
    assert_eq!(delayed.reads.len(), 5);
    assert_eq!(delayed.reads[4].key, "{app}:mail:delayed");
    assert_eq!(delayed.reads[0].key, "{app}:mail:wait");
}

#[test]
fn celery_reads_the_queue_and_every_priority_sub_queue() {
    let probe = QueueProbe::for_queue(&queue("{name: c, type: celery, key: celery}"));
    let keys: Vec<String> = probe.reads.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 10);
    assert_eq!(keys[0], "celery");
    assert_eq!(keys[3], "celery\x06\x163");
    assert_eq!(keys[9], "celery\x06\x169");
    let custom = QueueProbe::for_queue(&queue(
        "{name: c, type: celery, key: celery, prioritySeparator: ':'}",
    ));
    assert_eq!(custom.reads[9].key, "celery:9");
}

#[test]
fn rq_sidekiq_list_zset_and_stream_keys() {
    let cases = [
        (
            "{name: q, type: rq, key: default}",
            "rq:queue:default",
            ReadKind::Llen,
        ),
        (
            "{name: q, type: sidekiq, key: default}",
            "queue:default",
            ReadKind::Llen,
        ),
        (
            "{name: q, type: sidekiq, key: default, namespace: app}",
            "app:queue:default",
            ReadKind::Llen,
        ),
        (
            "{name: q, type: list, key: 'jobs:retry'}",
            "jobs:retry",
            ReadKind::Llen,
        ),
        ("{name: q, type: zset, key: sched}", "sched", ReadKind::Zcard),
        ("{name: q, type: stream, key: audit}", "audit", ReadKind::Xlen),
        (
            "{name: q, type: stream, key: audit, consumerGroup: g}",
            "audit",
            ReadKind::XinfoGroups,
        ),
    ];
    for (yaml, key, kind) in cases {
        assert_eq!(
            keys(&QueueProbe::for_queue(&queue(yaml))),
            vec![(kind, key.to_string())],
            "{yaml}"
        );
    }
}

#[test]
fn depth_sums_the_replies() {
    let probe = QueueProbe::for_queue(&queue("{name: e, type: bullmq, key: mail}"));
    let replies = vec![
        Ok(Value::Int(3)),
        Ok(Value::Int(0)),
        Ok(Value::Int(4)),
        Ok(Value::Int(2)),
    ];
    assert_eq!(probe.depth(&replies), Ok(9));
}

#[test]
fn wrong_type_names_the_key_and_what_was_expected() {
    let probe = QueueProbe::for_queue(&queue("{name: q, type: list, key: jobs}"));
    let error = probe
        .depth(&[Err(server_error(
            "WRONGTYPE",
            "Operation against a key holding the wrong kind of value",
        ))])
        .unwrap_err();
    assert_eq!(
        error,
        QueueError::WrongType {
            key: "jobs".into(),
            expected: "list"
        }
    );
    assert!(error.to_string().contains("check the queue's key and type"));
}

fn group(name: &str, pending: i64, lag: Value) -> Value {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    Value::Array(vec![
        bulk("name"),
        bulk(name),
        bulk("consumers"),
        Value::Int(1),
        bulk("pending"),
        Value::Int(pending),
        bulk("last-delivered-id"),
        bulk("0-0"),
        bulk("entries-read"),
        Value::Int(1),
        bulk("lag"),
        lag,
    ])
}

#[test]
fn stream_group_depth_is_pending_plus_lag() {
    let probe = QueueProbe::for_queue(&queue("{name: q, type: stream, key: s, consumerGroup: b}"));
    let reply = Value::Array(vec![
        group("a", 100, Value::Int(100)),
        group("b", 2, Value::Int(5)),
    ]);
    assert_eq!(probe.depth(&[Ok(reply)]), Ok(7));
}

#[test]
fn stream_group_errors_say_what_to_change() {
    let probe = QueueProbe::for_queue(&queue("{name: q, type: stream, key: s, consumerGroup: b}"));
    let missing_group = probe.depth(&[Ok(Value::Array(vec![group("a", 1, Value::Int(1))]))]);
    assert_eq!(
        missing_group,
        Err(QueueError::MissingGroup {
            key: "s".into(),
            group: "b".into()
        })
    );
    let unknown_lag = probe.depth(&[Ok(Value::Array(vec![group("b", 1, Value::Nil)]))]);
    assert_eq!(
        unknown_lag,
        Err(QueueError::LagUnknown {
            key: "s".into(),
            group: "b".into()
        })
    );
    assert_eq!(probe.depth(&[Err(server_error("ERR", "no such key"))]), Ok(0));
}

#[test]
fn io_errors_are_not_mistaken_for_empty_queues() {
    let probe = QueueProbe::for_queue(&queue("{name: q, type: list, key: jobs}"));
    let io: RedisError = (ErrorKind::Io, "broken pipe").into();
    assert!(matches!(probe.depth(&[Err(io)]), Err(QueueError::Server { .. })));
    assert!(matches!(
        probe.depth(&[Ok(Value::Nil)]),
        Err(QueueError::Unexpected { .. })
    ));
}
