//! A sandbox payment gateway as its own process, for escrow's HTTP adapter,
//! the end-to-end tests and a hand walk-through: hosted-gateway style
//! HTTP/JSON with idempotency keys (`api`), its state in Postgres schema
//! `gateway_sandbox` (`storage`), signed webhooks with redelivery and
//! settlement by workers (`workers`), and faults injected on demand
//! (`domain::faults`, `PUT /sandbox/faults`).
//!
//! `domain` holds the pure rules, `app` the use cases, `server` the process.

pub mod api;
pub mod app;
pub mod config;
pub mod domain;
pub mod server;
pub mod storage;
pub mod workers;
