//! Durations as operators type them (config files, the CLI's `--ttl`): any
//! text parses or is refused without a panic, and what parses survives a
//! round trip through the compact form the daemon prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormlockd::duration::{format_duration, parse_duration};

fuzz_target!(|text: &str| {
    if let Ok(duration) = parse_duration(text) {
        assert_eq!(duration.subsec_nanos(), 0, "whole seconds only");
        let printed = format_duration(duration);
        assert_eq!(parse_duration(&printed), Ok(duration), "{printed:?}");
    }
});
