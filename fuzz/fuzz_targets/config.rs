//! The daemon's TOML configuration: any text is accepted or refused with an
//! error, never a panic; an accepted one keeps the invariants `validate`
//! promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormlockd::config::Config;

fuzz_target!(|text: &str| {
    if let Ok(config) = Config::parse(text, "fuzz") {
        let defaults = &config.defaults;
        assert!(defaults.ttl.as_secs() >= 1);
        assert!(defaults.max_ttl >= defaults.ttl);
        assert!(!defaults.backend_timeout.is_zero());
        let config = config.with_implicit_backend();
        assert!(config.backends.contains_key(&config.defaults.backend));
    }
});
