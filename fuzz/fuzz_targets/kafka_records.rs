//! Any bytes as a Fetch's records, at any offset: a timestamp or none, never a panic, and never
//! more than the inflation bound allocated (libFuzzer's -rss_limit_mb catches any more).
#![no_main]

use levee::sampler::kafka::untrusted::record_timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let offset = i64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
    let _ = record_timestamp(&data[8..], offset);
});
