//! Any request path and query: a reply with a valid status code, never a panic.
#![no_main]

use levee::metrics_api::routes::respond;
use levee::values::{MetricValues, PolicyValues, QueueValues, Source};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Instant;

fn values() -> &'static MetricValues {
    static VALUES: OnceLock<MetricValues> = OnceLock::new();
    VALUES.get_or_init(|| {
        let values = MetricValues::default();
        values.publish(PolicyValues {
            namespace: "jobs".into(),
            policy: "p".into(),
            pending: 7,
            queues: vec![QueueValues::new("q", Some(7), None)],
            latency: None,
            forecast: None,
            sampled_at: jiff::Timestamp::UNIX_EPOCH,
            sampled: Instant::now(),
            failed: false,
            interval: std::time::Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Source::Owner,
            published: 0,
            changed: 0,
        });
        values
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        };
        let reply = respond(path, query, values(), Instant::now());
        assert!((200..600).contains(&reply.status));
    }
});
