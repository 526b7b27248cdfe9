//! Configuration shared by every service, read from environment variables (or
//! the equivalent flags) with clap, so `--help` documents every variable.
//!
//! Each value's placeholder is the name of its environment variable, so a bad
//! value fails at start-up with a message that names the variable. Every
//! number and duration has a range: a value outside it (a pool of zero
//! connections, a zero deadline) stops the process the same way, never later
//! as a panic.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, builder::TypedValueParser};

use crate::auth::AuthConfig;
pub use crate::durations::{DurationRange, parse_duration};

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
    #[command(flatten)]
    pub tls: TlsConfig,
}

#[derive(Args, Clone, Debug)]
pub struct ServerConfig {
    /// Address the gRPC server listens on [default: 127.0.0.1 and the service's own port].
    #[arg(long, env = "GRPC_LISTEN_ADDR", value_name = "GRPC_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Deadline for one request when the client sets none (e.g. 30s, 500ms).
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT", value_name = "GRPC_REQUEST_TIMEOUT",
          default_value = "30s", value_parser = DurationRange::new(MILLISECOND, HOUR))]
    pub request_timeout: Duration,
    /// Largest request or response message accepted, in bytes (1 KiB to 64 MiB);
    /// a larger request is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", value_name = "GRPC_MAX_MESSAGE_BYTES",
          default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024).map(|v| v as usize))]
    pub max_message_bytes: usize,
    /// Requests served at once by the process (1 to 100000); beyond it requests
    /// are shed with UNAVAILABLE. Health and reflection are not counted.
    #[arg(long, env = "GRPC_CONCURRENCY_LIMIT", value_name = "GRPC_CONCURRENCY_LIMIT",
          default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|v| v as usize))]
    pub concurrency_limit: usize,
    /// After SIGTERM, how long in-flight requests may take before connections are closed.
    #[arg(long, env = "SHUTDOWN_GRACE_PERIOD", value_name = "SHUTDOWN_GRACE_PERIOD",
          default_value = "20s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub shutdown_grace_period: Duration,
    /// After SIGTERM, how long to keep accepting requests while reporting NOT_SERVING,
    /// so load balancers stop routing here first (e.g. 5s on Kubernetes).
    #[arg(long, env = "SHUTDOWN_READINESS_DELAY", value_name = "SHUTDOWN_READINESS_DELAY",
          default_value = "0s", value_parser = DurationRange::new(Duration::ZERO, 5 * MINUTE))]
    pub shutdown_readiness_delay: Duration,
    /// A second, plaintext listener that serves grpc.health.v1.Health only (and its reflection),
    /// for probes that cannot speak TLS (Kubernetes' gRPC probes) when the
    /// gRPC listener is TLS only. Unset: no such listener.
    #[arg(
        long,
        env = "GRPC_HEALTH_LISTEN_ADDR",
        value_name = "GRPC_HEALTH_LISTEN_ADDR"
    )]
    pub health_listen_addr: Option<SocketAddr>,
}

impl ServerConfig {
    /// The configured address, or loopback on the service's fixed local port.
    pub fn listen_addr_or(&self, default_port: u16) -> SocketAddr {
        self.listen_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}

/// `Debug` shows the URL without its password.
#[derive(Args, Clone)]
pub struct DatabaseConfig {
    /// Postgres connection URL, e.g. postgres://user@127.0.0.1:5432/trade_assurance.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Connections in this service's pool (1 to 1000).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// How long a request waits for a pooled connection before failing with UNAVAILABLE.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", value_name = "DATABASE_ACQUIRE_TIMEOUT",
          default_value = "5s", value_parser = DurationRange::new(MILLISECOND, MINUTE))]
    pub database_acquire_timeout: Duration,
    /// How long idempotency keys are kept; a retry after that runs again.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION", value_name = "IDEMPOTENCY_KEY_RETENTION",
          default_value = "7d", value_parser = DurationRange::new(HOUR, 366 * DAY))]
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

/// TLS on the gRPC listener and on calls to other services. Every file is
/// PEM and is re-read when it changes (checked at most every
/// TLS_RELOAD_INTERVAL): a rotated certificate is used by the next
/// connection, a bad new file keeps the previous one and is logged. Without
/// GRPC_TLS_CERT_FILE the listener is plaintext (the local default).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "TLS")]
pub struct TlsConfig {
    /// Certificate chain of the gRPC listener (e.g. cert-manager's tls.crt);
    /// with GRPC_TLS_KEY_FILE, the listener speaks TLS only.
    #[arg(
        long,
        env = "GRPC_TLS_CERT_FILE",
        value_name = "GRPC_TLS_CERT_FILE",
        requires = "grpc_tls_key_file"
    )]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// Private key of GRPC_TLS_CERT_FILE (PKCS#8, PKCS#1 or SEC1; tls.key).
    #[arg(
        long,
        env = "GRPC_TLS_KEY_FILE",
        value_name = "GRPC_TLS_KEY_FILE",
        requires = "grpc_tls_cert_file"
    )]
    pub grpc_tls_key_file: Option<PathBuf>,
    /// CA certificates (ca.crt) of the clients: when set, every client must
    /// present a certificate signed by one of them (mutual TLS).
    #[arg(
        long,
        env = "GRPC_TLS_CLIENT_CA_FILE",
        value_name = "GRPC_TLS_CLIENT_CA_FILE",
        requires = "grpc_tls_cert_file"
    )]
    pub grpc_tls_client_ca_file: Option<PathBuf>,
    /// Under mutual TLS, accept a token only from a client certificate that
    /// stands for its principal: a service's token (role service, sub
    /// contract) from a certificate whose SPIFFE ID (URI SAN) is
    /// spiffe://<trust domain>/contract, a person's token from one that names
    /// no workload or an edge gateway (GRPC_TLS_EDGE_GATEWAYS); any other is
    /// refused UNAUTHENTICATED. true needs GRPC_TLS_CLIENT_CA_FILE [default:
    /// true with GRPC_TLS_CLIENT_CA_FILE, else false].
    #[arg(long, env = "GRPC_TLS_BIND_SERVICE_IDENTITY",
          value_name = "GRPC_TLS_BIND_SERVICE_IDENTITY", action = clap::ArgAction::Set)]
    pub grpc_tls_bind_service_identity: Option<bool>,
    /// The workloads (the last part of their SPIFFE ID, e.g. ingress for
    /// spiffe://<trust domain>/ingress) whose client certificates may carry
    /// people's tokens although they name a workload, comma-separated; the
    /// edge gateways that pass on browsers' and apps' calls [default: none].
    #[arg(long, env = "GRPC_TLS_EDGE_GATEWAYS", value_name = "GRPC_TLS_EDGE_GATEWAYS",
          value_delimiter = ',', value_parser = workload_name)]
    pub grpc_tls_edge_gateways: Vec<String>,
    /// CA certificates that sign the other services' certificates: calls to an
    /// https:// peer URL (CONTRACT_URL, ...) are verified with them. Required
    /// by an https:// peer URL; http:// URLs stay plaintext.
    #[arg(long, env = "PEER_TLS_CA_FILE", value_name = "PEER_TLS_CA_FILE")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Client certificate presented to peers (mutual TLS) [default:
    /// GRPC_TLS_CERT_FILE, the service's own].
    #[arg(long, env = "PEER_TLS_CERT_FILE", value_name = "PEER_TLS_CERT_FILE",
          requires_all = ["peer_tls_key_file", "peer_tls_ca_file"])]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// Private key of PEER_TLS_CERT_FILE [default: GRPC_TLS_KEY_FILE].
    #[arg(
        long,
        env = "PEER_TLS_KEY_FILE",
        value_name = "PEER_TLS_KEY_FILE",
        requires = "peer_tls_cert_file"
    )]
    pub peer_tls_key_file: Option<PathBuf>,
    /// How often the TLS files are checked for a change (at most), e.g. 5s.
    #[arg(long, env = "TLS_RELOAD_INTERVAL", value_name = "TLS_RELOAD_INTERVAL",
          default_value = "5s", value_parser = DurationRange::new(100 * MILLISECOND, HOUR))]
    pub tls_reload_interval: Duration,
}

impl Default for TlsConfig {
    /// No TLS: plaintext listener and peers.
    fn default() -> Self {
        Self {
            grpc_tls_cert_file: None,
            grpc_tls_key_file: None,
            grpc_tls_client_ca_file: None,
            grpc_tls_bind_service_identity: None,
            grpc_tls_edge_gateways: Vec::new(),
            peer_tls_ca_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            tls_reload_interval: Duration::from_secs(5),
        }
    }
}

/// Whether `name` can be a workload's name, the one segment of the path of
/// a SPIFFE ID `spiffe://<trust domain>/<name>` ([`crate::tls`]): ASCII
/// letters, digits, `.`, `-` and `_`, not `.` or `..` (e.g. `contract`,
/// `supplier-registry`).
pub fn is_workload_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A workload's name (GRPC_TLS_EDGE_GATEWAYS), see [`is_workload_name`].
fn workload_name(value: &str) -> Result<String, String> {
    let value = value.trim();
    if is_workload_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "`{value}` is not a workload name (letters, digits, '.', '-' and '_', as in spiffe://<trust domain>/<name>)"
        ))
    }
}

/// A configuration value that is a secret (an API key, a secret access key,
/// a URL with a password): `Debug` shows `<redacted>`, so a configuration
/// struct holding one can derive `Debug` and be logged whole. Read it with
/// [`Secret::expose`]. A clap field of this type parses like a `String`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

const MILLISECOND: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("database_url", &redacted_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("database_acquire_timeout", &self.database_acquire_timeout)
            .field("idempotency_key_retention", &self.idempotency_key_retention)
            .finish()
    }
}

/// `scheme://user:<redacted>@host/db` for a URL with a password; anything
/// that does not look like one with credentials is shown without them.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted>".to_owned();
    };
    let (authority_end, _) = rest
        .char_indices()
        .find(|(_, c)| matches!(c, '/' | '?'))
        .unwrap_or((rest.len(), ' '));
    let (authority, path) = rest.split_at(authority_end);
    let password_in_query = path.contains("password=");
    let path = if password_in_query {
        "/<redacted>"
    } else {
        path
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            if credentials.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            common: CommonConfig,
            #[arg(long)]
            api_key: Option<Secret>,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "svc",
            "--database-url",
            "postgres://app:db-password-1@db:5432/ta",
            "--auth-jwt-hs256-secret",
            "hs256-secret-0123456789",
            "--api-key",
            "api-key-0123456789",
        ])
        .unwrap();
        assert_eq!(
            cli.api_key.as_ref().map(Secret::expose),
            Some("api-key-0123456789")
        );
        let shown = format!("{cli:?} {cli:#?}");
        for secret in [
            "db-password-1",
            "hs256-secret-0123456789",
            "api-key-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn bad_identity_binding_settings_name_their_variable() {
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            tls: TlsConfig,
        }
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(
                std::iter::once("svc").chain(args.iter().copied()),
            )
        };
        for (args, variable) in [
            (
                ["--grpc-tls-bind-service-identity", "yes"],
                "GRPC_TLS_BIND_SERVICE_IDENTITY",
            ),
            (
                ["--grpc-tls-edge-gateways", "ingress,edge/gateway"],
                "GRPC_TLS_EDGE_GATEWAYS",
            ),
            (
                ["--grpc-tls-edge-gateways", "ingress,,x"],
                "GRPC_TLS_EDGE_GATEWAYS",
            ),
        ] {
            let error = parse(&args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
        let cli = parse(&[
            "--grpc-tls-bind-service-identity",
            "false",
            "--grpc-tls-edge-gateways",
            "ingress, api-gateway",
        ])
        .unwrap();
        assert_eq!(cli.tls.grpc_tls_bind_service_identity, Some(false));
        assert_eq!(cli.tls.grpc_tls_edge_gateways, ["ingress", "api-gateway"]);
    }

    #[test]
    fn the_database_password_never_shows_in_debug() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db.internal:5432/ta",
                "postgres://app:<redacted>@db.internal:5432/ta",
            ),
            (
                "postgres://app@127.0.0.1:5432/ta",
                "postgres://app@127.0.0.1:5432/ta",
            ),
            (
                "postgres://db/ta?user=app&password=s3cret",
                "postgres://db/<redacted>",
            ),
            ("garbage with s3cret", "<redacted>"),
        ] {
            assert_eq!(redacted_url(url), shown);
            let config = DatabaseConfig {
                database_url: url.to_owned(),
                database_max_connections: 1,
                database_acquire_timeout: Duration::from_secs(1),
                idempotency_key_retention: DAY,
            };
            assert!(!format!("{config:?}").contains("s3cret"));
        }
    }
}
