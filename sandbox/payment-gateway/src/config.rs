//! The sandbox's settings, from environment variables (or the equivalent
//! flags): a bad value stops the process at start, naming its variable.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use escrow::gateway::signature::{MIN_SECRET_BYTES, WebhookSecret};
use ta_runtime::config::{DurationRange, Secret, TelemetryConfig};

use crate::domain::FaultSettings;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// A sandbox payment gateway: charges, bank transfers, Pay Later, payouts and
/// refunds over HTTP/JSON with idempotency keys, signed webhooks, and faults
/// injected on demand (see the crate's docs for the API).
#[derive(Parser, Debug)]
#[command(name = "payment-gateway-sandbox", version)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "GATEWAY_SANDBOX_LISTEN_ADDR",
        value_name = "GATEWAY_SANDBOX_LISTEN_ADDR",
        default_value = "127.0.0.1:50060"
    )]
    pub listen_addr: SocketAddr,
    /// Postgres connection URL; the sandbox keeps its state in the `gateway_sandbox` schema.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Secret,
    /// Connections in the pool (1 to 1000).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// When set, every /v1 and /sandbox call must carry `Authorization: Bearer <key>`.
    #[arg(long, env = "GATEWAY_SANDBOX_API_KEY", value_name = "GATEWAY_SANDBOX_API_KEY",
          hide_env_values = true, value_parser = non_empty)]
    pub api_key: Option<Secret>,
    /// Where webhooks are POSTed (http://...); unset: events are kept, not sent.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_URL", value_name = "GATEWAY_SANDBOX_WEBHOOK_URL",
          value_parser = http_url)]
    pub webhook_url: Option<String>,
    /// The secret webhooks are signed with (at least 32 bytes); required with
    /// GATEWAY_SANDBOX_WEBHOOK_URL. The receiver's ESCROW_WEBHOOK_SECRET.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_SECRET", value_name = "GATEWAY_SANDBOX_WEBHOOK_SECRET",
          hide_env_values = true, value_parser = webhook_secret)]
    pub webhook_secret: Option<WebhookSecret>,
    /// How long one webhook delivery may take.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_TIMEOUT", value_name = "GATEWAY_SANDBOX_WEBHOOK_TIMEOUT",
          default_value = "10s", value_parser = DurationRange::new(MS, HOUR))]
    pub webhook_timeout: Duration,
    /// The first redelivery's wait; it doubles per failure up to GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_RETRY_BASE", value_name = "GATEWAY_SANDBOX_WEBHOOK_RETRY_BASE",
          default_value = "500ms", value_parser = DurationRange::new(MS, HOUR))]
    pub webhook_retry_base: Duration,
    /// The longest wait between redeliveries.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP", value_name = "GATEWAY_SANDBOX_WEBHOOK_RETRY_CAP",
          default_value = "30s", value_parser = DurationRange::new(MS, DAY))]
    pub webhook_retry_cap: Duration,
    /// After how long payouts and refunds are paid (unless settlement is held).
    #[arg(long, env = "GATEWAY_SANDBOX_SETTLE_AFTER", value_name = "GATEWAY_SANDBOX_SETTLE_AFTER",
          default_value = "2s", value_parser = DurationRange::new(Duration::ZERO, 30 * DAY))]
    pub settle_after: Duration,
    /// When set, bank transfers are credited in full and Pay Later disbursed
    /// after this long; unset, they wait for the control API.
    #[arg(long, env = "GATEWAY_SANDBOX_AUTO_CREDIT_AFTER", value_name = "GATEWAY_SANDBOX_AUTO_CREDIT_AFTER",
          value_parser = DurationRange::new(Duration::ZERO, 30 * DAY))]
    pub auto_credit_after: Option<Duration>,
    /// How often the workers look for due settlements and deliveries (they
    /// are also woken by the process's own new work).
    #[arg(long, env = "GATEWAY_SANDBOX_POLL_INTERVAL", value_name = "GATEWAY_SANDBOX_POLL_INTERVAL",
          default_value = "200ms", value_parser = DurationRange::new(MS, Duration::from_secs(60)))]
    pub poll_interval: Duration,
    /// Default fault: latency added to every /v1 call.
    #[arg(long, env = "GATEWAY_SANDBOX_LATENCY", value_name = "GATEWAY_SANDBOX_LATENCY",
          default_value = "0s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub latency: Duration,
    /// Default fault: up to this much more latency, drawn per call.
    #[arg(long, env = "GATEWAY_SANDBOX_LATENCY_JITTER", value_name = "GATEWAY_SANDBOX_LATENCY_JITTER",
          default_value = "0s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub latency_jitter: Duration,
    /// Default fault: share of calls (0 to 1) answered 503 before acting.
    #[arg(long, env = "GATEWAY_SANDBOX_FAILURE_RATE", value_name = "GATEWAY_SANDBOX_FAILURE_RATE",
          default_value_t = 0.0, value_parser = rate)]
    pub failure_rate: f64,
    /// Default fault: share of acting calls (0 to 1) that act, then hold the answer.
    #[arg(long, env = "GATEWAY_SANDBOX_TIMEOUT_RATE", value_name = "GATEWAY_SANDBOX_TIMEOUT_RATE",
          default_value_t = 0.0, value_parser = rate)]
    pub timeout_rate: f64,
    /// How long a timed-out answer (timeout_rate, tok_timeout) is held.
    #[arg(long, env = "GATEWAY_SANDBOX_HANG", value_name = "GATEWAY_SANDBOX_HANG",
          default_value = "60s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub hang: Duration,
    /// Default fault: payouts and refunds stay pending until the control API settles them.
    #[arg(long, env = "GATEWAY_SANDBOX_HOLD_SETTLEMENT", value_name = "GATEWAY_SANDBOX_HOLD_SETTLEMENT",
          default_value_t = false, action = clap::ArgAction::Set)]
    pub hold_settlement: bool,
    /// Default fault: share of webhooks (0 to 1) delivered twice.
    #[arg(long, env = "GATEWAY_SANDBOX_DUPLICATE_RATE", value_name = "GATEWAY_SANDBOX_DUPLICATE_RATE",
          default_value_t = 0.0, value_parser = rate)]
    pub duplicate_rate: f64,
    /// Default fault: each webhook is delayed by a random 0 to this, so they arrive out of order.
    #[arg(long, env = "GATEWAY_SANDBOX_REORDER_WINDOW", value_name = "GATEWAY_SANDBOX_REORDER_WINDOW",
          default_value = "0s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub reorder_window: Duration,
    /// Default fault: every webhook waits this long before its first delivery.
    #[arg(long, env = "GATEWAY_SANDBOX_WEBHOOK_DELAY", value_name = "GATEWAY_SANDBOX_WEBHOOK_DELAY",
          default_value = "0s", value_parser = DurationRange::new(Duration::ZERO, HOUR))]
    pub webhook_delay: Duration,
    /// Seeds the random faults, so a run repeats; unset, a new seed per start.
    #[arg(
        long,
        env = "GATEWAY_SANDBOX_SEED",
        value_name = "GATEWAY_SANDBOX_SEED"
    )]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

fn non_empty(text: &str) -> Result<Secret, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(Secret::from(text))
}

fn http_url(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("http://")
        .ok_or("must be an http:// URL (the sandbox delivers over plain HTTP)")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    Ok(text.to_owned())
}

fn webhook_secret(text: &str) -> Result<WebhookSecret, String> {
    WebhookSecret::new(text.as_bytes().to_vec())
        .map_err(|_| format!("must be at least {MIN_SECRET_BYTES} bytes"))
}

fn rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("`{text}` is out of range: use 0 to 1"));
    }
    Ok(value)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// The faults in force until `PUT /sandbox/faults` says otherwise.
    pub fn default_faults(&self) -> FaultSettings {
        FaultSettings {
            latency_ms: millis(self.latency),
            latency_jitter_ms: millis(self.latency_jitter),
            failure_rate: self.failure_rate,
            timeout_rate: self.timeout_rate,
            hang_ms: millis(self.hang),
            fail_nth: None,
            hold_settlement: self.hold_settlement,
            lose_next: 0,
            duplicate_rate: self.duplicate_rate,
            reorder_window_ms: millis(self.reorder_window),
            webhook_delay_ms: millis(self.webhook_delay),
            seed: None,
        }
    }

    /// What the server runs with.
    ///
    /// # Errors
    /// A webhook URL without its secret, naming both variables.
    pub fn options(&self) -> Result<Options, String> {
        let webhook = match (&self.webhook_url, &self.webhook_secret) {
            (Some(url), Some(secret)) => Some(WebhookTarget {
                url: url.clone(),
                secret: secret.clone(),
                timeout: self.webhook_timeout,
                retry_base: self.webhook_retry_base,
                retry_cap: self.webhook_retry_cap,
            }),
            (Some(_), None) => {
                return Err(
                    "GATEWAY_SANDBOX_WEBHOOK_SECRET is required when GATEWAY_SANDBOX_WEBHOOK_URL is set"
                        .into(),
                );
            }
            (None, _) => None,
        };
        Ok(Options {
            api_key: self.api_key.clone(),
            webhook,
            settle_after: self.settle_after,
            auto_credit_after: self.auto_credit_after,
            poll_interval: self.poll_interval,
            faults: self.default_faults(),
            seed: self.seed,
        })
    }
}

/// Where webhooks go and how they are retried.
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: WebhookSecret,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

/// What the server runs with (from [`Config::options`], or set by a test).
#[derive(Clone, Debug)]
pub struct Options {
    /// `Debug` shows it as `<redacted>`.
    pub api_key: Option<Secret>,
    /// None: events are kept and listed, not delivered.
    pub webhook: Option<WebhookTarget>,
    pub settle_after: Duration,
    pub auto_credit_after: Option<Duration>,
    pub poll_interval: Duration,
    pub faults: FaultSettings,
    pub seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec![
            "payment-gateway-sandbox",
            "--database-url",
            "postgres://x/y",
        ];
        all.extend_from_slice(args);
        Config::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_need_only_the_database() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen_addr.port(), 50060);
        assert_eq!(config.settle_after, Duration::from_secs(2));
        assert_eq!(config.auto_credit_after, None);
        let options = config.options().unwrap();
        assert!(options.webhook.is_none());
        assert_eq!(options.faults.hang_ms, 60_000);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (args, variable) in [
            (
                &["--webhook-url", "https://x"][..],
                "GATEWAY_SANDBOX_WEBHOOK_URL",
            ),
            (
                &["--webhook-secret", "short"][..],
                "GATEWAY_SANDBOX_WEBHOOK_SECRET",
            ),
            (&["--failure-rate", "2"][..], "GATEWAY_SANDBOX_FAILURE_RATE"),
            (
                &["--settle-after", "soon"][..],
                "GATEWAY_SANDBOX_SETTLE_AFTER",
            ),
            (
                &["--listen-addr", "localhost"][..],
                "GATEWAY_SANDBOX_LISTEN_ADDR",
            ),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
        let missing = parse(&["--webhook-url", "http://127.0.0.1:1/hooks"])
            .unwrap()
            .options()
            .unwrap_err();
        assert!(
            missing.contains("GATEWAY_SANDBOX_WEBHOOK_SECRET"),
            "{missing}"
        );
    }

    #[test]
    fn fault_defaults_come_from_the_environment_settings() {
        let config = parse(&[
            "--webhook-url",
            "http://127.0.0.1:1/hooks",
            "--webhook-secret",
            SECRET,
            "--latency",
            "300ms",
            "--duplicate-rate",
            "0.5",
            "--hold-settlement",
            "true",
        ])
        .unwrap();
        let options = config.options().unwrap();
        assert!(options.webhook.is_some());
        assert_eq!(options.faults.latency_ms, 300);
        assert_eq!(options.faults.duplicate_rate, 0.5);
        assert!(options.faults.hold_settlement);
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let config = Config::try_parse_from([
            "payment-gateway-sandbox",
            "--database-url",
            "postgres://sandbox:db-password-0123@db/ta",
            "--api-key",
            "sk_test_0123456789",
            "--webhook-url",
            "http://127.0.0.1:1/hooks",
            "--webhook-secret",
            SECRET,
        ])
        .unwrap();
        let options = config.options().unwrap();
        let shown = format!("{config:?} {config:#?} {options:?}");
        for secret in ["db-password-0123", "sk_test_0123456789", SECRET] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(
            config.database_url.expose(),
            "postgres://sandbox:db-password-0123@db/ta"
        );
    }
}
