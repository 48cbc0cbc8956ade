//! Queue probes: which Redis reads give a queue's depth, and how their replies add up. Pure: the
//! commands are built here and sent by the caller, in one pipeline per node.
//!
//! Layouts follow each library's own keys:
//! - BullMQ: `<prefix>:<queue>:wait|paused|active` (lists), `:prioritized|:delayed` (sorted sets);
//!   `Queue.getJobCounts()` counts the same keys.
//! - Celery (kombu's Redis transport): the list `<queue>` holds priority 0; priority `n` lives in
//!   the list `<queue><sep><n>` (sep `\x06\x16` by default); kombu's queue size sums them all.
//! - RQ: the list `rq:queue:<name>`. Sidekiq: the list `[<namespace>:]queue:<name>`.

pub use super::key_read::{KeyRead, ReadKind};
use crate::api::{QueueSpec, QueueType, defaults};
use redis::{RedisError, RedisResult, Value};
use std::fmt;

/// The reads that make up one queue's depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProbe {
    pub reads: Vec<KeyRead>,
    consumer_group: Option<String>,
}

/// Celery priorities kombu can use (its `priority_steps` are a subset of 0..=9).
const CELERY_PRIORITIES: std::ops::RangeInclusive<u8> = 1..=9;

impl QueueProbe {
    /// The probe for a queue of the policy.
    pub fn for_queue(queue: &QueueSpec) -> Self {
        use ReadKind::*;
        let key = &*queue.key;
        let reads = match queue.queue_type {
            QueueType::List => vec![KeyRead::new(Llen, key)],
            QueueType::Zset => vec![KeyRead::new(Zcard, key)],
            QueueType::Stream if queue.consumer_group.is_some() => vec![KeyRead::new(XinfoGroups, key)],
            QueueType::Stream => vec![KeyRead::new(Xlen, key)],
            QueueType::Bullmq => {
                let base = format!("{}:{key}", queue.bullmq_prefix());
                let mut reads = vec![
                    KeyRead::new(Llen, format!("{base}:wait")),
                    KeyRead::new(Llen, format!("{base}:paused")),
                    KeyRead::new(Zcard, format!("{base}:prioritized")),
                    KeyRead::new(Llen, format!("{base}:active")),
                ];
                if queue.include_delayed == Some(true) {
                    reads.push(KeyRead::new(Zcard, format!("{base}:delayed")));
                }
                reads
            }
            QueueType::Celery => {
                let separator = queue
                    .priority_separator
                    .as_deref()
                    .unwrap_or(defaults::CELERY_PRIORITY_SEPARATOR);
                std::iter::once(KeyRead::new(Llen, key))
                    .chain(CELERY_PRIORITIES.map(|p| KeyRead::new(Llen, format!("{key}{separator}{p}"))))
                    .collect()
            }
            QueueType::Rq => vec![KeyRead::new(Llen, format!("rq:queue:{key}"))],
            QueueType::Sidekiq => vec![KeyRead::new(
                Llen,
                format!("{}queue:{key}", queue.sidekiq_prefix()),
            )],
            // Read from their brokers (`sampler::nats`, `sampler::kafka`): `PreparedQueues` gives
            // Redis only Redis layouts.
            QueueType::Jetstream | QueueType::Kafka => Vec::new(),
        };
        Self {
            reads,
            consumer_group: queue.consumer_group.as_deref().map(String::from),
        }
    }

    /// The depth from the replies to `self.reads`, in the same order.
    pub fn depth(&self, replies: &[RedisResult<Value>]) -> Result<u64, QueueError> {
        debug_assert_eq!(replies.len(), self.reads.len());
        let mut depth: u64 = 0;
        for (read, reply) in self.reads.iter().zip(replies) {
            let part = match (read.kind, reply) {
                (ReadKind::XinfoGroups, reply) => self.group_backlog(read, reply)?,
                (_, Ok(Value::Int(n))) => u64::try_from(*n).unwrap_or(0),
                (_, Ok(other)) => return Err(QueueError::unexpected(read, other)),
                (_, Err(error)) => return Err(QueueError::from_server(read, error)),
            };
            depth = depth.saturating_add(part);
        }
        Ok(depth)
    }

    fn group_backlog(&self, read: &KeyRead, reply: &RedisResult<Value>) -> Result<u64, QueueError> {
        let group = self.consumer_group.as_deref().unwrap_or_default();
        let groups = match reply {
            Ok(Value::Array(groups)) => groups,
            Ok(other) => return Err(QueueError::unexpected(read, other)),
            Err(error) if is_missing_key(error) => return Ok(0),
            Err(error) => return Err(QueueError::from_server(read, error)),
        };
        let found = groups
            .iter()
            .map(fields)
            .find(|f| field_text(f, "name").as_deref() == Some(group));
        let Some(found) = found else {
            return Err(QueueError::MissingGroup {
                key: read.key.clone(),
                group: group.to_string(),
            });
        };
        let pending = field_int(&found, "pending").unwrap_or(0);
        match field_int(&found, "lag") {
            Some(lag) => Ok(pending.saturating_add(lag)),
            None => Err(QueueError::LagUnknown {
                key: read.key.clone(),
                group: group.to_string(),
            }),
        }
    }
}

fn is_missing_key(error: &RedisError) -> bool {
    error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("no such key"))
}

/// A reply's field/value pairs, from a RESP2 flat array or a RESP3 map.
fn fields(entry: &Value) -> Vec<(String, Value)> {
    match entry {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, p.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn field_text(fields: &[(String, Value)], name: &str) -> Option<String> {
    fields.iter().find(|(k, _)| k == name).and_then(|(_, v)| text(v))
}

fn field_int(fields: &[(String, Value)], name: &str) -> Option<u64> {
    match fields.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Why one queue's depth could not be read; the other queues are unaffected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The key holds another Redis type than the queue type reads.
    WrongType { key: String, expected: &'static str },
    /// The stream exists but the consumer group does not.
    MissingGroup { key: String, group: String },
    /// Redis cannot compute the group's lag (Redis older than 7, or entries deleted mid-stream).
    LagUnknown { key: String, group: String },
    /// Any other error reply.
    Server { key: String, message: String },
    /// A reply of a shape levee does not expect.
    Unexpected { key: String, reply: String },
    /// The latency script failed (the depth may still be known).
    Latency { key: String, message: String },
}

impl QueueError {
    fn from_server(read: &KeyRead, error: &RedisError) -> Self {
        if error.code() == Some("WRONGTYPE") {
            let expected = match read.kind {
                ReadKind::Llen => "list",
                ReadKind::Zcard => "zset",
                ReadKind::Xlen | ReadKind::XinfoGroups => "stream",
                ReadKind::Latency | ReadKind::Pttl => "queue of its type",
            };
            return QueueError::WrongType {
                key: read.key.clone(),
                expected,
            };
        }
        QueueError::Server {
            key: read.key.clone(),
            message: error.to_string(),
        }
    }

    fn unexpected(read: &KeyRead, reply: &Value) -> Self {
        QueueError::Unexpected {
            key: read.key.clone(),
            reply: format!("{reply:?}"),
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::WrongType { key, expected } => write!(
                f,
                "key {key:?} is not a {expected}: check the queue's key and type (WRONGTYPE)"
            ),
            QueueError::MissingGroup { key, group } => write!(
                f,
                "stream {key:?} has no consumer group {group:?}: check consumerGroup"
            ),
            QueueError::LagUnknown { key, group } => write!(
                f,
                "Redis cannot tell how far group {group:?} lags on stream {key:?} (needs Redis >= 7 and no entries deleted past the group's position): drop consumerGroup to count the whole stream"
            ),
            QueueError::Server { key, message } => write!(f, "reading {key:?} failed: {message}"),
            QueueError::Unexpected { key, reply } => write!(f, "unexpected reply for {key:?}: {reply}"),
            QueueError::Latency { key, message } => {
                write!(f, "reading the latency of {key:?} failed: {message}")
            }
        }
    }
}

impl std::error::Error for QueueError {}

#[cfg(test)]
mod tests;
