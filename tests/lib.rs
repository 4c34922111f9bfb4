//! Nothing here: the package exists for its integration test binary,
//! `tests.rs`, which builds and runs the workspace's real binaries.
