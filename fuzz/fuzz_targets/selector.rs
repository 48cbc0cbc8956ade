//! Any `labelSelector` from the network: an error, or a selector that renders and parses back to
//! itself. Never a panic.
#![no_main]

use levee::metrics_api::selector::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(selector) = parse(text)
    {
        assert_eq!(parse(&selector.to_string()), Ok(selector));
    }
});
