//! List page tokens: a forged token is refused, never trusted, and a token
//! the daemon made resumes exactly where it should.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormlockd::validate::{self, make_page_token, page_token};

fuzz_target!(|input: (&str, &str)| {
    let (token, prefix) = input;
    if let Ok(Some(last)) = page_token(token, prefix) {
        assert!(last.starts_with(prefix));
        assert!(validate::resource(&last).is_ok());
        assert!(make_page_token(&last).eq_ignore_ascii_case(token));
    }
    // Treated as a resource name: a genuine token round-trips.
    if validate::resource(token).is_ok() {
        let made = make_page_token(token);
        let resumed = page_token(&made, "").ok().flatten();
        assert_eq!(resumed.as_deref(), Some(token));
    }
});
