//! Request validation (`stormlockd::validate`), fed what a client could send:
//! whatever it accepts obeys the documented rules, and nothing panics.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stormlockd::validate;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    resource: &'a str,
    reason: &'a str,
    principal: &'a str,
    lease_id: &'a str,
    ttl: Option<(i64, i32)>,
    wait: Option<(i64, i32)>,
    default_ttl: u32,
    max_ttl: u32,
    max_wait: u32,
}

fn proto((seconds, nanos): (i64, i32)) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(name) = validate::resource(input.resource) {
        assert!((1..=validate::MAX_RESOURCE_LEN).contains(&name.len()));
        assert!(!name.chars().any(char::is_control));
    }
    if let Ok(prefix) = validate::prefix(input.resource) {
        assert!(prefix.len() <= validate::MAX_RESOURCE_LEN);
    }
    if let Ok(reason) = validate::reason(input.reason) {
        assert!(reason.len() <= validate::MAX_REASON_LEN);
        assert!(!reason.chars().any(char::is_control));
    }
    if let Ok(principal) = validate::principal(input.principal) {
        assert!(principal.len() <= validate::MAX_PRINCIPAL_LEN);
    }
    if let Ok(id) = validate::lease_id(input.lease_id) {
        assert_eq!(id.expose(), input.lease_id);
        assert_eq!(id.expose().len(), 32);
    }
    let default = Duration::from_secs(u64::from(input.default_ttl).max(1));
    let max = Duration::from_secs(u64::from(input.max_ttl)).max(default);
    let ttl = input.ttl.map(proto);
    match validate::ttl(ttl.as_ref(), default, max) {
        Ok(ttl) if input.ttl.is_none() => assert_eq!(ttl, default),
        Ok(ttl) => {
            assert!(ttl >= Duration::from_secs(1) && ttl <= max);
            assert_eq!(ttl.subsec_nanos(), 0);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let max_wait = Duration::from_secs(u64::from(input.max_wait));
    let wait = input.wait.map(proto);
    if let Ok(wait) = validate::wait(wait.as_ref(), max_wait) {
        assert!(wait <= max_wait);
    }
});
