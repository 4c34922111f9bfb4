//! Code generated from `proto/stormlock/v1/lock.proto` by `build.rs`.
//!
//! These types are the wire contract. They stop at the service layer: backends
//! and the rest of the daemon work with the types of [`crate::lease`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("stormlock.v1");

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stormlock_descriptor");
