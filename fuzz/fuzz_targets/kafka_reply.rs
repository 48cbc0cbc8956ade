//! Any bytes as the reply to any of levee's Kafka requests, read as the sampler reads it: an
//! answer or an error, never a panic, never room made for what a count claims (the patched
//! decoder: vendor/kafka-protocol/VENDORED.md).
#![no_main]

use levee::sampler::kafka::untrusted::reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((kind, frame)) = data.split_first() {
        let _ = reply(*kind, frame);
    }
});
