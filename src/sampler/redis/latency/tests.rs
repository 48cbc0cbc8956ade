use super::*;
use crate::fixtures;
use crate::sampler::redis::key_read::SCRIPT_SHA;

fn queue(yaml: &str) -> QueueSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn bulk(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

/// A script reply for one queue at Redis time `now` (seconds, microseconds) with `stamps`.
fn reply(now: (i64, i64), stamps: &[&str]) -> RedisResult<Value> {
    let mut values = vec![
        bulk(&now.0.to_string()),
        bulk(&now.1.to_string()),
        Value::Int(stamps.len() as i64),
    ];
    values.extend(stamps.iter().map(|s| bulk(s)));
    Ok(Value::Array(values))
}

const NOW: i64 = 1_800_000_000;

#[test]
fn layouts_without_an_enqueue_time_have_no_latency_probe() {
    for yaml in [
        "{name: q, type: list, key: jobs}",
        "{name: q, type: zset, key: jobs}",
        "{name: q, type: celery, key: celery}",
    ] {
        assert_eq!(LatencyProbe::for_queue(&queue(yaml)), None, "{yaml}");
    }
}

#[test]
fn each_layout_reads_from_its_own_keys() {
    let read = |yaml: &str| LatencyProbe::for_queue(&queue(yaml)).unwrap().read;
    let sidekiq = read("{name: q, type: sidekiq, key: default, namespace: app}");
    assert_eq!(
        (sidekiq.key.as_str(), sidekiq.args.as_slice()),
        ("app:queue:default", &["sidekiq".to_string()][..])
    );
    let rq = read("{name: q, type: rq, key: reports}");
    assert_eq!(rq.key, "rq:queue:reports");
    assert_eq!(rq.args, ["rq", "rq:job:"]);
    let bullmq = read("{name: q, type: bullmq, key: mail, prefix: '{app}', includeDelayed: true}");
    assert_eq!(bullmq.key, "{app}:mail:wait");
    assert_eq!(bullmq.args, ["bullmq", "{app}:mail:", "1"]);
    let stream = read("{name: q, type: stream, key: audit, consumerGroup: writers}");
    assert_eq!(
        (stream.key.as_str(), stream.args.as_slice()),
        ("audit", &["stream".to_string(), "writers".to_string()][..])
    );
    let command = stream.command().get_packed_command();
    let text = String::from_utf8_lossy(&command);
    assert!(
        text.contains("EVALSHA") && text.contains(SCRIPT_SHA.as_str()),
        "{text}"
    );
    let loading = String::from_utf8_lossy(&stream.command_loading().get_packed_command()).into_owned();
    assert!(loading.contains("EVAL") && loading.contains("redis.call('TIME')"));
}

#[test]
fn sidekiq_seconds_and_milliseconds_give_the_same_age() {
    let probe = LatencyProbe::for_queue(&queue("{name: q, type: sidekiq, key: default}")).unwrap();
    // Sidekiq up to 7: float seconds; Sidekiq 8: integer milliseconds.
    let seconds = format!("{}.25", NOW - 10);
    let millis = format!("{}", (NOW - 10) * 1000 + 250);
    for stamp in [seconds, millis] {
        let age = probe.age(&reply((NOW, 0), &[&stamp])).unwrap();
        assert_eq!(age.as_millis(), 9_750, "{stamp}");
    }
}

#[test]
fn the_oldest_stamp_counts_and_an_empty_queue_has_waited_nothing() {
    let probe = LatencyProbe::for_queue(&queue("{name: q, type: bullmq, key: mail}")).unwrap();
    let stamps = [format!("{}", (NOW - 5) * 1000), format!("{}", (NOW - 42) * 1000)];
    let age = probe
        .age(&reply((NOW, 500_000), &[&stamps[0], &stamps[1]]))
        .unwrap();
    assert_eq!(age, Duration::from_millis(42_500));
    assert_eq!(probe.age(&reply((NOW, 0), &[])).unwrap(), Duration::ZERO);
}

#[test]
fn rq_and_stream_stamps() {
    let rq = LatencyProbe::for_queue(&queue("{name: q, type: rq, key: reports}")).unwrap();
    let enqueued = Timestamp::from_second(NOW - 3).unwrap();
    let text = enqueued.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string();
    assert_eq!(
        rq.age(&reply((NOW, 0), &[&text])).unwrap(),
        Duration::from_secs(3)
    );
    let stream = LatencyProbe::for_queue(&queue("{name: q, type: stream, key: s}")).unwrap();
    let id = format!("{}-7", (NOW - 2) * 1000);
    assert_eq!(
        stream.age(&reply((NOW, 0), &[&id])).unwrap(),
        Duration::from_secs(2)
    );
}

#[test]
fn a_job_stamped_in_redis_future_has_not_waited_and_garbage_is_reported() {
    let probe = LatencyProbe::for_queue(&queue("{name: q, type: bullmq, key: mail}")).unwrap();
    let future = format!("{}", (NOW + 60) * 1000);
    assert_eq!(probe.age(&reply((NOW, 0), &[&future])).unwrap(), Duration::ZERO);
    let error = probe.age(&reply((NOW, 0), &["soon"])).unwrap_err().to_string();
    assert!(error.contains("\"soon\""), "{error}");
}

#[test]
fn script_errors_say_what_to_change() {
    let probe = LatencyProbe::for_queue(&queue("{name: q, type: sidekiq, key: default}")).unwrap();
    let noperm = RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
        "NOPERM",
        "this user has no permissions to run the 'evalsha' command".to_string(),
    ));
    let message = probe.age(&Err(noperm)).unwrap_err().to_string();
    assert!(
        message.contains("+evalsha") && message.contains("readLatency"),
        "{message}"
    );
    let _ = fixtures::policy();
}
