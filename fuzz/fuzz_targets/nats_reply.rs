//! Any bytes from a NATS server: the wire parser takes them one operation at a time within its
//! bounds (never more bytes than it was given, never a payload over the limit), and the
//! JetStream reply parsers read any payload into a consumer's state, a message, or an error; a
//! consumer's state never leads to more latency reads than the bound. Never a panic.
#![no_main]

use levee::sampler::nats::replies::{self, Filters, MAX_LATENCY_FILTERS};
use levee::sampler::nats::wire::{self, Limits, ServerOp};
use levee::sampler::nats::{LIMITS, Reply};
use libfuzzer_sys::fuzz_target;

/// Small bounds, so that short inputs reach the parser's every bound too.
const SMALL: Limits = Limits {
    max_line: 64,
    max_payload: 32,
    max_skip: 100,
};

/// Parses operations from `bytes` as the connection's reader does, dropping an oversized
/// message's payload unread.
fn parse_all(mut bytes: &[u8], limits: Limits) {
    while let Ok(Some((op, used))) = wire::parse(bytes, limits) {
        assert!(used > 0 && used <= bytes.len(), "{used} of {} bytes", bytes.len());
        let skipped = match &op {
            ServerOp::Msg { payload, .. } => {
                assert!(payload.len() <= limits.max_payload);
                0
            }
            ServerOp::Oversized { size, .. } => {
                assert!(*size > limits.max_payload && *size <= limits.max_skip);
                size + 2
            }
            _ => 0,
        };
        bytes = &bytes[(used + skipped).min(bytes.len())..];
    }
}

fuzz_target!(|data: &[u8]| {
    parse_all(data, SMALL);
    parse_all(data, LIMITS);
    for status in [None, Some("503".to_string())] {
        let reply = Reply {
            status,
            payload: data.to_vec(),
            oversized: None,
        };
        if let Ok(state) = replies::consumer_state("STREAM", "consumer", &reply) {
            match replies::oldest_message_requests("STREAM", "consumer", &state) {
                Ok(requests) => assert!((1..=MAX_LATENCY_FILTERS).contains(&requests.len())),
                Err(error) => assert!(
                    matches!(state.filters, Filters::TooMany(count) if count > MAX_LATENCY_FILTERS),
                    "{error}"
                ),
            }
        }
        let _ = replies::message_found("STREAM", &reply);
    }
});
