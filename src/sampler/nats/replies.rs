//! What JetStream's API answers, read into what levee needs: a consumer's work not done and ack
//! floor (`CONSUMER.INFO`), and the stored time of the oldest message it has not had
//! acknowledged (`STREAM.MSG.GET` of the next message after the ack floor on its filter). Every
//! error says which stream or consumer and what to change. No I/O.
//!
//! A reply is untrusted: its filter subjects are counted as they are parsed, and past
//! [`MAX_LATENCY_FILTERS`] none is kept (nor any request made for it).

use super::connection::Reply;
use jiff::Timestamp;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

/// The most filter subjects of one consumer whose latency levee reads. The latency costs one
/// `STREAM.MSG.GET` per filter subject per tick, so this bounds a tick's latency reads at 32 a
/// consumer (2,048 for a policy's 64 queues). A real consumer with more is rare: JetStream's
/// multi-filter consumers (NATS 2.10) are for a handful of subjects that no one wildcard
/// matches, and a wildcard (`orders.*.eu`, `orders.>`) covers any number of subjects in one.
/// Past it the consumer's depth is still read, exact (CONSUMER.INFO counts every filter), its
/// latency is an error naming the bound, and the subjects are counted as they are parsed, not
/// kept: 60,000 of them from a hostile server cost levee a count.
pub const MAX_LATENCY_FILTERS: usize = 32;

/// A consumer's state as its leader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerState {
    /// `num_pending + num_ack_pending`: not yet delivered, and delivered but not acknowledged.
    pub depth: u64,
    /// The stream sequence below which every message is acknowledged.
    pub ack_floor: u64,
    /// The consumer's filter subjects.
    pub filters: Filters,
}

/// A consumer's filter subjects, kept only up to [`MAX_LATENCY_FILTERS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filters {
    /// At most `MAX_LATENCY_FILTERS` subjects; none: the whole stream.
    Listed(Vec<String>),
    /// More than `MAX_LATENCY_FILTERS`: how many the reply listed (none of them kept).
    TooMany(usize),
}

/// `config.filter_subjects` as parsed: up to `MAX_LATENCY_FILTERS` kept, the rest only counted.
struct BoundedSubjects(Filters);

impl<'de> serde::Deserialize<'de> for BoundedSubjects {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counting;
        impl<'de> Visitor<'de> for Counting {
            type Value = BoundedSubjects;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of filter subjects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut kept = Vec::new();
                while kept.len() < MAX_LATENCY_FILTERS {
                    match seq.next_element::<String>()? {
                        Some(subject) => kept.push(subject),
                        None => return Ok(BoundedSubjects(Filters::Listed(kept))),
                    }
                }
                let mut count = kept.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count = count.saturating_add(1);
                }
                Ok(BoundedSubjects(if count > MAX_LATENCY_FILTERS {
                    Filters::TooMany(count)
                } else {
                    Filters::Listed(kept)
                }))
            }
        }
        deserializer.deserialize_seq(Counting)
    }
}

#[derive(serde::Deserialize)]
struct ConsumerInfo {
    #[serde(default)]
    num_pending: Option<u64>,
    #[serde(default)]
    num_ack_pending: Option<u64>,
    #[serde(default)]
    ack_floor: Option<Sequences>,
    #[serde(default)]
    config: Option<ConsumerConfig>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct Sequences {
    #[serde(default)]
    stream_seq: u64,
}

#[derive(serde::Deserialize)]
struct ConsumerConfig {
    #[serde(default)]
    filter_subject: Option<String>,
    #[serde(default)]
    filter_subjects: Option<BoundedSubjects>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// JetStream's "no message found" (`STREAM.MSG.GET` past the last message on a subject).
const NO_MESSAGE_FOUND: u32 = 10037;

/// The consumer's state from its CONSUMER.INFO reply.
pub fn consumer_state(stream: &str, name: &str, reply: &Reply) -> Result<ConsumerState, String> {
    let info: ConsumerInfo = api_json(reply, &format!("consumer {name} of stream {stream}"))?;
    if let Some(error) = info.error {
        let hint = match error.err_code {
            10014 => ": create the consumer or fix spec.queues[].consumer",
            10059 => ": create the stream or fix spec.queues[].stream",
            _ => "",
        };
        return Err(format!(
            "consumer {name} of stream {stream}: {} (JetStream {} {}){hint}",
            error.description, error.code, error.err_code
        ));
    }
    let (Some(pending), Some(ack_pending)) = (info.num_pending, info.num_ack_pending) else {
        return Err(format!(
            "consumer {name} of stream {stream}: the reply has no num_pending and num_ack_pending"
        ));
    };
    let (filter, filters) = info
        .config
        .map_or((None, None), |c| (c.filter_subject, c.filter_subjects));
    let filters = match filters.map(|f| f.0) {
        Some(Filters::Listed(listed)) if listed.is_empty() => None,
        listed => listed,
    }
    .or_else(|| filter.filter(|f| !f.is_empty()).map(|f| Filters::Listed(vec![f])))
    .unwrap_or(Filters::Listed(Vec::new()));
    Ok(ConsumerState {
        depth: pending.saturating_add(ack_pending),
        ack_floor: info.ack_floor.map_or(0, |f| f.stream_seq),
        filters,
    })
}

/// The bodies of the `STREAM.MSG.GET` requests that find the oldest message not acknowledged of
/// consumer `name` of `stream`: the next one after the ack floor on each filter subject (`>` for
/// the whole stream), at most [`MAX_LATENCY_FILTERS`], each made as it is taken; past them, an
/// error and no request.
pub fn oldest_message_requests<'a>(
    stream: &str,
    name: &str,
    state: &'a ConsumerState,
) -> Result<impl ExactSizeIterator<Item = Vec<u8>> + 'a, String> {
    let filters = match &state.filters {
        Filters::Listed(filters) => filters,
        Filters::TooMany(count) => {
            return Err(format!(
                "consumer {name} of stream {stream} has {count} filter subjects, over levee's bound of {MAX_LATENCY_FILTERS}: its latency is not read (its depth is); give the consumer at most {MAX_LATENCY_FILTERS} filter subjects (one wildcard such as orders.> covers many), or set spec.readLatency: false"
            ));
        }
    };
    let next = state.ack_floor.saturating_add(1);
    Ok((0..filters.len().max(1)).map(move |i| {
        let subject = filters.get(i).map_or(">", String::as_str);
        serde_json::json!({"seq": next, "next_by_subj": subject})
            .to_string()
            .into_bytes()
    }))
}

#[derive(serde::Deserialize)]
struct MessageReply {
    #[serde(default)]
    message: Option<StoredMessage>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct StoredMessage {
    seq: u64,
    time: String,
}

/// The sequence and stored time of the message a `STREAM.MSG.GET` found; `None` when there is
/// none on that subject after the ack floor.
pub fn message_found(stream: &str, reply: &Reply) -> Result<Option<(u64, Timestamp)>, String> {
    if let Some(size) = reply.oversized {
        return Err(format!(
            "stream {stream}: its oldest unacknowledged message is {size} bytes, more than levee reads ({} bytes): latency cannot be read for it",
            super::LIMITS.max_payload
        ));
    }
    let found: MessageReply = api_json(reply, &format!("stream {stream}"))?;
    match (found.message, found.error) {
        (Some(message), _) => {
            let time: Timestamp = message
                .time
                .parse()
                .map_err(|e| format!("stream {stream}: message {} has no valid time: {e}", message.seq))?;
            Ok(Some((message.seq, time)))
        }
        (None, Some(error)) if error.err_code == NO_MESSAGE_FOUND => Ok(None),
        (None, Some(error)) => Err(format!(
            "stream {stream}: reading its oldest unacknowledged message: {} (JetStream {} {})",
            error.description, error.code, error.err_code
        )),
        (None, None) => Err(format!(
            "stream {stream}: the reply has neither a message nor an error"
        )),
    }
}

/// A JetStream API reply's JSON, or why there is none (`what` names the stream or consumer).
fn api_json<T: serde::de::DeserializeOwned>(reply: &Reply, what: &str) -> Result<T, String> {
    if reply.status.as_deref().is_some_and(|s| s.starts_with("503")) {
        return Err(format!(
            "no server answers JetStream requests for {what}: is JetStream enabled on this NATS server (nats-server -js), and does the account have it?"
        ));
    }
    if let Some(size) = reply.oversized {
        return Err(format!(
            "{what}: a reply of {size} bytes, more than levee reads ({} bytes)",
            super::LIMITS.max_payload
        ));
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("{what}: the reply is not JetStream's JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: Option<&str>, payload: &str) -> Reply {
        Reply {
            status: status.map(str::to_string),
            payload: payload.as_bytes().to_vec(),
            oversized: None,
        }
    }

    fn state(payload: &str) -> Result<ConsumerState, String> {
        consumer_state("EVENTS", "writer", &reply(None, payload))
    }

    fn requests(state: &ConsumerState) -> Result<Vec<Vec<u8>>, String> {
        oldest_message_requests("EVENTS", "writer", state).map(Iterator::collect)
    }

    #[test]
    fn the_depth_is_pending_plus_ack_pending_and_errors_say_what_to_fix() {
        let info = r#"{"type":"io.nats.jetstream.api.v1.consumer_info_response","num_pending":40,"num_ack_pending":2,"ack_floor":{"consumer_seq":3,"stream_seq":7},"config":{"filter_subject":"events.eu"}}"#;
        assert_eq!(
            state(info),
            Ok(ConsumerState {
                depth: 42,
                ack_floor: 7,
                filters: Filters::Listed(vec!["events.eu".into()])
            })
        );
        let missing = r#"{"error":{"code":404,"err_code":10014,"description":"consumer not found"}}"#;
        let error = state(missing).unwrap_err();
        assert!(
            error.contains("consumer not found") && error.contains("create the consumer"),
            "{error}"
        );
        let error = consumer_state("EVENTS", "writer", &reply(Some("503"), "")).unwrap_err();
        assert!(error.contains("JetStream enabled"), "{error}");
        assert!(state("{}").is_err(), "a reply without the counts is no zero");
        assert!(state("not json").is_err());
    }

    #[test]
    fn the_oldest_message_is_the_next_after_the_ack_floor_on_each_filter() {
        let whole = ConsumerState {
            depth: 1,
            ack_floor: 7,
            filters: Filters::Listed(Vec::new()),
        };
        assert_eq!(
            requests(&whole),
            Ok(vec![br#"{"next_by_subj":">","seq":8}"#.to_vec()])
        );
        let filtered = ConsumerState {
            filters: Filters::Listed(vec!["a".into(), "b.>".into()]),
            ..whole
        };
        assert_eq!(requests(&filtered).map(|r| r.len()), Ok(2));
        let found = r#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"a","seq":9,"data":"eA==","time":"2026-12-03T00:01:02.5Z"}}"#;
        assert_eq!(
            message_found("EVENTS", &reply(None, found)),
            Ok(Some((9, "2026-12-03T00:01:02.5Z".parse().unwrap())))
        );
        let none = r#"{"error":{"code":404,"err_code":10037,"description":"no message found"}}"#;
        assert_eq!(message_found("EVENTS", &reply(None, none)), Ok(None));
        let oversized = Reply {
            oversized: Some(5_000_000),
            ..reply(None, "")
        };
        let error = message_found("EVENTS", &oversized).unwrap_err();
        assert!(error.contains("5000000 bytes"), "{error}");
    }

    /// Filter subjects are kept up to the bound; past it they are only counted, and the latency
    /// is an error that names the bound, with no request at all.
    #[test]
    fn filter_subjects_past_the_bound_are_counted_not_kept_and_cost_no_request() {
        let listing = |count: usize| {
            let filters: Vec<String> = (0..count).map(|i| format!("jobs.{i}")).collect();
            serde_json::json!({"num_pending": 4, "num_ack_pending": 1, "config": {"filter_subjects": filters}})
                .to_string()
        };
        let at_bound = state(&listing(MAX_LATENCY_FILTERS)).unwrap();
        assert_eq!(requests(&at_bound).map(|r| r.len()), Ok(MAX_LATENCY_FILTERS));
        let over = state(&listing(60_000)).unwrap();
        assert_eq!(
            over,
            ConsumerState {
                depth: 5,
                ack_floor: 0,
                filters: Filters::TooMany(60_000)
            },
            "the depth is still read"
        );
        let error = requests(&over).unwrap_err();
        assert!(
            error.contains("consumer writer of stream EVENTS has 60000 filter subjects, over levee's bound of 32: its latency is not read"),
            "{error}"
        );
        let one_over = state(&listing(MAX_LATENCY_FILTERS + 1)).unwrap();
        assert_eq!(one_over.filters, Filters::TooMany(MAX_LATENCY_FILTERS + 1));
        // Past the bound the entries are skipped unread, whatever they are.
        let mixed = format!(
            r#"{{"num_pending":1,"num_ack_pending":0,"config":{{"filter_subjects":[{}{{"a":[1,2]}},null,7]}}}}"#,
            r#""s","#.repeat(MAX_LATENCY_FILTERS)
        );
        assert_eq!(
            state(&mixed).unwrap().filters,
            Filters::TooMany(MAX_LATENCY_FILTERS + 3)
        );
        let empty =
            r#"{"num_pending":1,"num_ack_pending":0,"config":{"filter_subject":"one","filter_subjects":[]}}"#;
        assert_eq!(state(empty).unwrap().filters, Filters::Listed(vec!["one".into()]));
        assert!(state(r#"{"num_pending":1,"num_ack_pending":0,"config":{"filter_subjects":[1]}}"#).is_err());
    }
}
