//! The workflow machinery against real Postgres (`#[sqlx::test]`: a database
//! per test) and real gRPC on loopback through the real auth layer. One test
//! binary, so it is linked once; child processes are this binary re-executed.

mod common;
mod concurrency;
mod consumer;
mod feeds;
mod outbox;
mod timeline;
mod timers;
mod tracing_context;
mod wakeups;
