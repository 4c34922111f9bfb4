//! Code generated from `proto/stormlock/v1/lock.proto` by `build.rs`.
//!
//! These types are the wire contract. They stop at the daemon's service
//! layer: its backends and lock core work with types of their own.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("stormlock.v1");

/// Encoded `FileDescriptorSet` of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stormlock_descriptor");
