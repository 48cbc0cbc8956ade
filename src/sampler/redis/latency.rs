//! Queue latency: the age of a queue's oldest waiting job. Pure: the read is built here (levee's
//! script, `latency.lua`, sent with EVALSHA in the same pipeline as the depths) and its reply is
//! turned into an age here. The script reads Redis's own clock (`TIME`), so a pod whose clock is
//! off changes nothing.
//!
//! Where each library keeps the enqueue time:
//! - Sidekiq: `enqueued_at` in the JSON of the list's last entry (the next to run), float seconds
//!   or, from Sidekiq 8, integer milliseconds; `Sidekiq::Queue#latency` computes the same.
//! - RQ: `enqueued_at` (`%Y-%m-%dT%H:%M:%S.%fZ`, UTC) in the hash `rq:job:<id>` of the list's
//!   first entry.
//! - BullMQ: `timestamp` (milliseconds) in the job hash, for the jobs at both ends of `wait` (and
//!   the legacy `paused`) and the first job of each priority; delayed jobs, with
//!   `includeDelayed`, count from when they fell due.
//! - Streams: the entry ID's time, of the oldest entry the group has not acknowledged (its oldest
//!   pending entry, else the first after its last-delivered ID), or of the first entry.
//!
//! Lists, sorted sets and Celery queues hold no enqueue time that levee could read without
//! guessing: they have no latency.

use super::key_read::SCRIPT;
use super::key_read::{KeyRead, ReadKind};
use super::probe::QueueError;
use crate::api::{QueueSpec, QueueType};
use jiff::Timestamp;
use redis::{RedisError, RedisResult, Value};
use std::time::Duration;

/// How a layout writes the enqueue time the script returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StampFormat {
    /// Sidekiq's `enqueued_at`: seconds (float) or, from Sidekiq 8, milliseconds (integer).
    SidekiqEnqueuedAt,
    /// RQ's `enqueued_at`: an ISO 8601 UTC time.
    IsoUtc,
    /// Milliseconds since the epoch (BullMQ's `timestamp`).
    Milliseconds,
    /// A stream entry ID, `<milliseconds>-<sequence>`.
    StreamId,
}

/// The read that gives one queue's latency, and how to parse its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyProbe {
    pub read: KeyRead,
    format: StampFormat,
}

impl LatencyProbe {
    /// The probe for a queue, or `None` for a layout that keeps no enqueue time.
    pub fn for_queue(queue: &QueueSpec) -> Option<Self> {
        let key = &*queue.key;
        let (first_key, args, format) = match queue.queue_type {
            // JetStream consumers and Kafka groups are read from their brokers, never from Redis.
            QueueType::List
            | QueueType::Zset
            | QueueType::Celery
            | QueueType::Jetstream
            | QueueType::Kafka => return None,
            QueueType::Sidekiq => (
                format!("{}queue:{key}", queue.sidekiq_prefix()),
                vec!["sidekiq".to_string()],
                StampFormat::SidekiqEnqueuedAt,
            ),
            QueueType::Rq => (
                format!("rq:queue:{key}"),
                vec!["rq".to_string(), "rq:job:".to_string()],
                StampFormat::IsoUtc,
            ),
            QueueType::Bullmq => {
                let base = format!("{}:{key}:", queue.bullmq_prefix());
                let delayed = if queue.include_delayed == Some(true) {
                    "1"
                } else {
                    "0"
                };
                (
                    format!("{base}wait"),
                    vec!["bullmq".to_string(), base, delayed.to_string()],
                    StampFormat::Milliseconds,
                )
            }
            QueueType::Stream => (
                key.to_string(),
                vec![
                    "stream".to_string(),
                    queue.consumer_group.as_deref().unwrap_or_default().to_string(),
                ],
                StampFormat::StreamId,
            ),
        };
        Some(Self {
            read: KeyRead::script(first_key, args),
            format,
        })
    }

    /// The age of the oldest waiting job (zero when none waits), from the script's reply.
    pub fn age(&self, reply: &RedisResult<Value>) -> Result<Duration, QueueError> {
        let key = &self.read.key;
        let values = match reply {
            Ok(Value::Array(values)) => values,
            Ok(other) => return Err(unexpected(key, other)),
            Err(error) => return Err(script_error(key, error)),
        };
        // {seconds, microseconds, n, n stamps}: the script's reply for one queue.
        if let Some(Value::ServerError(error)) = values.get(2) {
            return Err(script_error(key, &error.clone().into()));
        }
        let texts: Option<Vec<String>> = values.iter().map(text).collect();
        let Some([seconds, micros, count, stamps @ ..]) = texts.as_deref() else {
            return Err(unexpected(key, &Value::Array(values.clone())));
        };
        if count.parse::<usize>().ok() != Some(stamps.len()) {
            return Err(unexpected(key, &Value::Array(values.clone())));
        }
        let now = redis_time(seconds, micros).ok_or_else(|| unexpected(key, &values[0]))?;
        let mut oldest: Option<Timestamp> = None;
        for stamp in stamps {
            let at = parse_stamp(self.format, stamp).ok_or_else(|| QueueError::Unexpected {
                key: key.clone(),
                reply: format!("an enqueue time levee cannot read: {stamp:?}"),
            })?;
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        Ok(oldest.map_or(Duration::ZERO, |at| {
            // A producer whose clock runs ahead stamps jobs in Redis's future: no wait yet.
            now.duration_since(at).try_into().unwrap_or(Duration::ZERO)
        }))
    }
}

impl KeyRead {
    /// levee's latency script on `key` with `args`.
    fn script(key: String, args: Vec<String>) -> Self {
        Self {
            kind: ReadKind::Latency,
            key,
            args,
        }
    }
}

fn redis_time(seconds: &str, micros: &str) -> Option<Timestamp> {
    let seconds: i64 = seconds.parse().ok()?;
    let micros: i64 = micros.parse().ok()?;
    Timestamp::from_microsecond(seconds.checked_mul(1_000_000)?.checked_add(micros)?).ok()
}

/// Milliseconds from which a Sidekiq `enqueued_at` must be milliseconds: as seconds, it would be
/// past the year 5000.
const SIDEKIQ_MILLISECONDS_FROM: f64 = 1e11;

fn parse_stamp(format: StampFormat, stamp: &str) -> Option<Timestamp> {
    let from_millis = |millis: f64| -> Option<Timestamp> {
        millis
            .is_finite()
            .then(|| Timestamp::from_microsecond((millis * 1000.0) as i64).ok())
            .flatten()
    };
    match format {
        StampFormat::SidekiqEnqueuedAt => {
            let value: f64 = stamp.parse().ok()?;
            if value >= SIDEKIQ_MILLISECONDS_FROM {
                from_millis(value)
            } else {
                from_millis(value * 1000.0)
            }
        }
        StampFormat::Milliseconds => from_millis(stamp.parse::<i64>().ok()? as f64),
        StampFormat::StreamId => {
            let millis = stamp.split_once('-').map_or(stamp, |(ms, _)| ms);
            Timestamp::from_millisecond(millis.parse().ok()?).ok()
        }
        StampFormat::IsoUtc => {
            let civil: jiff::civil::DateTime = stamp.strip_suffix('Z').unwrap_or(stamp).parse().ok()?;
            civil
                .to_zoned(jiff::tz::TimeZone::UTC)
                .ok()
                .map(|z| z.timestamp())
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unexpected(key: &str, reply: &Value) -> QueueError {
    QueueError::Unexpected {
        key: key.to_string(),
        reply: format!("{reply:?}"),
    }
}

fn script_error(key: &str, error: &RedisError) -> QueueError {
    let message = match error.code() {
        Some("NOPERM") => format!(
            "the ACL user may not run levee's latency script ({error}): grant it +evalsha +eval, or set spec.readLatency: false"
        ),
        Some("WRONGTYPE") => format!("a key of the queue has another type than its layout: {error}"),
        Some("NOGROUP") => format!("{error}: check consumerGroup"),
        _ => error.to_string(),
    };
    QueueError::Latency {
        key: key.to_string(),
        message,
    }
}

/// Loads the script on a new connection's node, so the first tick needs no second round trip. A
/// refusal (an ACL user without `+script|load`) is left for the reads to report.
pub async fn preload(connection: &mut redis::aio::MultiplexedConnection, timeout: Duration) {
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(SCRIPT);
    if let Ok(Err(error)) = tokio::time::timeout(timeout, load.query_async::<String>(connection)).await {
        tracing::debug!(%error, "loading the latency script failed");
    }
}

/// Whether the node has forgotten the script (restarted, or `SCRIPT FLUSH`): load it again.
pub fn is_unloaded(error: &RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

#[cfg(test)]
mod tests;
