//! The common runtime of every Trade Assurance service: configuration,
//! telemetry, authentication, error mapping, money, Postgres, idempotency, the
//! staff audit trail and the gRPC server bootstrap. Written once here, used by all four services.

pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod durations;
pub mod errors;
pub mod group_commit;
pub mod idempotency;
pub mod middleware;
pub mod migrations;
pub mod money;
pub mod paging;
pub mod pipeline;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod timestamps;
pub mod tls;

pub use errors::{OrConflict, ServiceError, Violations};
