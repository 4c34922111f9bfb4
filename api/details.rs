//! Typed details of error answers, carried in the standard `google.rpc.Status`
//! (the `grpc-status-details-bin` trailer) so that clients in every language
//! read them with their gRPC library instead of parsing messages.

use prost::Message;
use prost_types::Any;
use tonic::{Code, Status};

use crate::pb::LeaseEvicted;

/// The `Any` type URL of [`LeaseEvicted`].
pub const LEASE_EVICTED_TYPE_URL: &str = "type.googleapis.com/stormlock.v1.LeaseEvicted";

/// A status with `code` and `message` that carries `evicted` as a detail.
pub fn with_eviction(code: Code, message: impl Into<String>, evicted: &LeaseEvicted) -> Status {
    let message = message.into();
    let details = tonic_types::pb::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![Any {
            type_url: LEASE_EVICTED_TYPE_URL.to_string(),
            value: evicted.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// The [`LeaseEvicted`] detail of `status`, if it has one.
pub fn eviction(status: &Status) -> Option<LeaseEvicted> {
    let details = tonic_types::pb::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|any| any.type_url == LEASE_EVICTED_TYPE_URL)
        .and_then(|any| LeaseEvicted::decode(any.value.as_slice()).ok())
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
    }
}
