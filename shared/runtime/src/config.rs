//! Configuration shared by every service, read from environment variables (or
//! the equivalent flags) with clap, so `--help` documents every variable.
//!
//! Each value's placeholder is the name of its environment variable, so a bad
//! value fails at start-up with a message that names the variable.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::auth::AuthConfig;

/// Everything a service needs from the common runtime.
#[derive(Args, Clone, Debug)]
pub struct CommonConfig {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

#[derive(Args, Clone, Debug)]
pub struct ServerConfig {
    /// Address the gRPC server listens on [default: 127.0.0.1 and the service's own port].
    #[arg(long, env = "GRPC_LISTEN_ADDR", value_name = "GRPC_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Deadline for one request when the client sets none (e.g. 30s, 500ms).
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT", value_name = "GRPC_REQUEST_TIMEOUT",
          default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Largest request or response message accepted, in bytes.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", value_name = "GRPC_MAX_MESSAGE_BYTES",
          default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests served at once per connection; beyond it requests are shed with UNAVAILABLE.
    #[arg(
        long,
        env = "GRPC_CONCURRENCY_LIMIT",
        value_name = "GRPC_CONCURRENCY_LIMIT",
        default_value_t = 256
    )]
    pub concurrency_limit: usize,
    /// After SIGTERM, how long in-flight requests may take before connections are closed.
    #[arg(long, env = "SHUTDOWN_GRACE_PERIOD", value_name = "SHUTDOWN_GRACE_PERIOD",
          default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,
    /// After SIGTERM, how long to keep accepting requests while reporting NOT_SERVING,
    /// so load balancers stop routing here first (e.g. 5s on Kubernetes).
    #[arg(long, env = "SHUTDOWN_READINESS_DELAY", value_name = "SHUTDOWN_READINESS_DELAY",
          default_value = "0s", value_parser = parse_duration)]
    pub shutdown_readiness_delay: Duration,
}

impl ServerConfig {
    /// The configured address, or loopback on the service's fixed local port.
    pub fn listen_addr_or(&self, default_port: u16) -> SocketAddr {
        self.listen_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}

#[derive(Args, Clone, Debug)]
pub struct DatabaseConfig {
    /// Postgres connection URL, e.g. postgres://user@127.0.0.1:5432/trade_assurance.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Connections in this service's pool.
    #[arg(
        long,
        env = "DATABASE_MAX_CONNECTIONS",
        value_name = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub database_max_connections: u32,
    /// How long a request waits for a pooled connection before failing with UNAVAILABLE.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", value_name = "DATABASE_ACQUIRE_TIMEOUT",
          default_value = "5s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,
    /// How long idempotency keys are kept; a retry after that runs again.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", value_name = "IDEMPOTENCY_KEY_RETENTION",
          default_value = "7d", value_parser = parse_duration)]
    pub idempotency_key_retention: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct TelemetryConfig {
    /// Log filter in `tracing` EnvFilter syntax, e.g. "info,sqlx=warn".
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info,sqlx=warn"
    )]
    pub log_level: String,
    /// Log format: json (default, for machines) or text (for people).
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", default_value = "json",
          value_parser = ["json", "text"])]
    pub log_format: String,
}

/// Parses durations such as `250ms`, `30s`, `5m`, `2h`, `3d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 30s, 5m, 2h or 3d"))?;
    let seconds = |factor: u64| {
        value
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{text}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3_600),
        "d" => seconds(86_400),
        _ => Err(format!(
            "`{text}` has an unknown unit `{unit}`; use ms, s, m, h or d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
    }

    #[test]
    fn rejects_garbage_with_a_readable_reason() {
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
        assert!(
            parse_duration("ten")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("10w").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }
}
