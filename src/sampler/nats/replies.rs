//! What JetStream's API answers, read into what levee needs: a consumer's work not done and ack
//! floor (`CONSUMER.INFO`), and the stored time of the oldest message it has not had
//! acknowledged (`STREAM.MSG.GET` of the next message after the ack floor on its filter). Every
//! error says which stream or consumer and what to change. No I/O.

use super::connection::Reply;
use jiff::Timestamp;

/// A consumer's state as its leader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerState {
    /// `num_pending + num_ack_pending`: not yet delivered, and delivered but not acknowledged.
    pub depth: u64,
    /// The stream sequence below which every message is acknowledged.
    pub ack_floor: u64,
    /// The consumer's filter subjects (none: the whole stream).
    pub filters: Vec<String>,
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
    filter_subjects: Option<Vec<String>>,
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
    let config = info.config;
    let filters = config
        .as_ref()
        .and_then(|c| c.filter_subjects.clone())
        .filter(|f| !f.is_empty())
        .or_else(|| {
            config
                .and_then(|c| c.filter_subject)
                .filter(|f| !f.is_empty())
                .map(|f| vec![f])
        })
        .unwrap_or_default();
    Ok(ConsumerState {
        depth: pending.saturating_add(ack_pending),
        ack_floor: info.ack_floor.map_or(0, |f| f.stream_seq),
        filters,
    })
}

/// The bodies of the `STREAM.MSG.GET` requests that find the oldest message not acknowledged:
/// the next one after the ack floor on each filter subject (`>` for the whole stream).
pub fn oldest_message_requests(state: &ConsumerState) -> Vec<Vec<u8>> {
    let whole_stream = [String::from(">")];
    let filters = if state.filters.is_empty() {
        &whole_stream[..]
    } else {
        &state.filters[..]
    };
    filters
        .iter()
        .map(|filter| {
            serde_json::json!({"seq": state.ack_floor.saturating_add(1), "next_by_subj": filter})
                .to_string()
                .into_bytes()
        })
        .collect()
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

    #[test]
    fn the_depth_is_pending_plus_ack_pending_and_errors_say_what_to_fix() {
        let info = r#"{"type":"io.nats.jetstream.api.v1.consumer_info_response","num_pending":40,"num_ack_pending":2,"ack_floor":{"consumer_seq":3,"stream_seq":7},"config":{"filter_subject":"events.eu"}}"#;
        assert_eq!(
            state(info),
            Ok(ConsumerState {
                depth: 42,
                ack_floor: 7,
                filters: vec!["events.eu".into()]
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
            filters: Vec::new(),
        };
        assert_eq!(
            oldest_message_requests(&whole),
            [br#"{"next_by_subj":">","seq":8}"#.to_vec()]
        );
        let filtered = ConsumerState {
            filters: vec!["a".into(), "b.>".into()],
            ..whole
        };
        assert_eq!(oldest_message_requests(&filtered).len(), 2);
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
}
