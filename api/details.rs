//! Typed details of error answers, carried in the standard `google.rpc.Status`
//! (the `grpc-status-details-bin` trailer) so that clients in every language
//! read them with their gRPC library instead of parsing messages.

use prost::Message;
use prost_types::Any;
use tonic::{Code, Status};

use crate::pb::{LeaseEvicted, Window};

/// The `Any` type URL of [`LeaseEvicted`].
pub const LEASE_EVICTED_TYPE_URL: &str = "type.googleapis.com/stormlock.v1.LeaseEvicted";
/// The `Any` type URL of [`Window`].
pub const WINDOW_TYPE_URL: &str = "type.googleapis.com/stormlock.v1.Window";

fn with_detail(code: Code, message: String, type_url: &str, detail: &impl Message) -> Status {
    let details = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![Any {
            type_url: type_url.to_string(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

fn detail<M: Message + Default>(status: &Status, type_url: &str) -> Option<M> {
    let details = tonic_types::pb::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|any| any.type_url == type_url)
        .and_then(|any| M::decode(any.value.as_slice()).ok())
}

/// A status with `code` and `message` that carries `evicted` as a detail.
pub fn with_eviction(code: Code, message: impl Into<String>, evicted: &LeaseEvicted) -> Status {
    with_detail(code, message.into(), LEASE_EVICTED_TYPE_URL, evicted)
}

/// The [`LeaseEvicted`] detail of `status`, if it has one.
pub fn eviction(status: &Status) -> Option<LeaseEvicted> {
    detail(status, LEASE_EVICTED_TYPE_URL)
}

/// A status with `code` and `message` that carries the window that
/// refused the call (a renewal into a freeze) as a detail.
pub fn with_window(code: Code, message: impl Into<String>, window: &Window) -> Status {
    with_detail(code, message.into(), WINDOW_TYPE_URL, window)
}

/// The [`Window`] detail of `status`, if it has one.
pub fn window(status: &Status) -> Option<Window> {
    detail(status, WINDOW_TYPE_URL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eviction_survives_the_round_trip() {
        let evicted = LeaseEvicted {
            actor: "oncall".to_string(),
            reason: "incident 7".to_string(),
        };
        let status = with_eviction(Code::FailedPrecondition, "not current", &evicted);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "not current");
        assert_eq!(eviction(&status), Some(evicted));
        assert_eq!(eviction(&Status::failed_precondition("not current")), None);
        assert_eq!(window(&status), None, "another detail");
    }

    #[test]
    fn a_window_survives_the_round_trip() {
        let frozen = Window {
            kind: crate::pb::window::Kind::Reservation.into(),
            name: "1a2b3c4d".to_string(),
            owner: "alice".to_string(),
            resource: "staging".to_string(),
            reason: "load test".to_string(),
            starts_at: None,
            ends_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
        };
        let status = with_window(Code::FailedPrecondition, "frozen", &frozen);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(window(&status), Some(frozen));
        assert_eq!(eviction(&status), None, "another detail");
    }
}
