//! The escrow service's library: `domain` (pure rules: the ledger and the
//! escrow account's state machine), `storage` (the Postgres ledger and
//! accounts) and `app` (use cases, each inside the caller's transaction).
//! The gRPC API is not served yet (see `main.rs`).

pub mod app;
pub mod domain;
pub mod gateway;
pub mod storage;
pub mod webhook;
