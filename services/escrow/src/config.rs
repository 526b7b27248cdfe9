//! Escrow's configuration: the common runtime's, the workflow machinery's,
//! and its own (the gateway webhook secret and the deadlines of money in
//! flight).

use std::time::Duration;

use clap::Parser;
use ta_runtime::{
    config::{CommonConfig, DurationRange, Secret},
    group_commit::GroupCommitConfig,
};
use ta_workflow::WorkflowConfig;

use crate::{app::context::Settings, gateway::signature::WebhookSecret};

/// Escrow: one account per contract holding the buyer's money in a
/// double-entry ledger until it is released to the supplier or refunded.
#[derive(Parser, Debug)]
#[command(name = "escrow", version)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub workflow: WorkflowConfig,
    /// Releases, refunds, settlements, freezes and account changes that
    /// arrive together share transactions (`GROUP_COMMIT_*`).
    #[command(flatten)]
    pub group_commit: GroupCommitConfig,
    /// The secret the payment gateway signs its webhooks with (HMAC-SHA256),
    /// at least 32 bytes. Required: no default outside development scripts.
    #[arg(long, env = "ESCROW_WEBHOOK_SECRET", value_name = "ESCROW_WEBHOOK_SECRET",
          hide_env_values = true, value_parser = webhook_secret)]
    pub webhook_secret: WebhookSecret,
    /// How far a webhook's signed timestamp may be from now.
    #[arg(long, env = "ESCROW_WEBHOOK_TOLERANCE", value_name = "ESCROW_WEBHOOK_TOLERANCE",
          default_value = "5m", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(3600)))]
    pub webhook_tolerance: Duration,
    /// How long a bank transfer may take before its attempt expires.
    #[arg(long, env = "ESCROW_BANK_TRANSFER_EXPIRY", value_name = "ESCROW_BANK_TRANSFER_EXPIRY",
          default_value = "7d", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(90 * 86_400)))]
    pub bank_transfer_expiry: Duration,
    /// How long the financing partner may take to disburse a Pay Later payment.
    #[arg(long, env = "ESCROW_PAY_LATER_EXPIRY", value_name = "ESCROW_PAY_LATER_EXPIRY",
          default_value = "2d", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(30 * 86_400)))]
    pub pay_later_expiry: Duration,
    /// How often money owed to suppliers and buyers is paid out.
    #[arg(long, env = "ESCROW_PAYOUT_INTERVAL", value_name = "ESCROW_PAYOUT_INTERVAL",
          default_value = "1h", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(7 * 86_400)))]
    pub payout_interval: Duration,
    /// How long the gateway may take to report a payout or refund; after
    /// that it is UNKNOWN and the gateway is asked by key (never voided).
    #[arg(long, env = "ESCROW_PAYOUT_EXPIRY", value_name = "ESCROW_PAYOUT_EXPIRY",
          default_value = "3d", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(30 * 86_400)))]
    pub payout_expiry: Duration,
    /// How long after a gateway call with no recorded answer (a time-out, a
    /// crash) the gateway is asked by key what it did; at least the call's
    /// time-out.
    #[arg(long, env = "ESCROW_GATEWAY_CHECK_AFTER", value_name = "ESCROW_GATEWAY_CHECK_AFTER",
          default_value = "30s", value_parser = DurationRange::new(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub gateway_check_after: Duration,
    /// How often the gateway worker looks for work another replica left
    /// (work recorded in this process wakes it at once).
    #[arg(long, env = "ESCROW_GATEWAY_WORKER_POLL", value_name = "ESCROW_GATEWAY_WORKER_POLL",
          default_value = "5s", value_parser = DurationRange::new(Duration::from_millis(10), Duration::from_secs(600)))]
    pub gateway_worker_poll: Duration,
    /// How long a webhook naming a payment escrow does not know is answered
    /// "retry later" (it may have overtaken the commit that records the
    /// payment) before it is recorded as an unmatched item.
    #[arg(long, env = "ESCROW_WEBHOOK_RETRY_WINDOW", value_name = "ESCROW_WEBHOOK_RETRY_WINDOW",
          default_value = "1h", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(7 * 86_400)))]
    pub webhook_retry_window: Duration,
    /// Where the gateway's webhooks are received over HTTP
    /// (`POST /v1/gateway-webhooks`); unset for none (operators can still
    /// re-drive an event through the gRPC method).
    #[arg(
        long,
        env = "ESCROW_WEBHOOK_LISTEN_ADDR",
        value_name = "ESCROW_WEBHOOK_LISTEN_ADDR"
    )]
    pub webhook_listen_addr: Option<std::net::SocketAddr>,
    /// The payment gateway's base URL, e.g. the sandbox process at
    /// http://127.0.0.1:50060 (calls go to `<url>/v1/...`). The binary
    /// refuses to start without it; only in-process tests pay through the
    /// in-process gateway.
    #[arg(long, env = "ESCROW_GATEWAY_URL", value_name = "ESCROW_GATEWAY_URL",
          value_parser = crate::gateway::http::check_base_url)]
    pub gateway_url: Option<String>,
    /// How long one gateway call may take; after that its answer is unknown
    /// (the gateway may have acted) and it is resolved by asking by key.
    #[arg(long, env = "ESCROW_GATEWAY_TIMEOUT", value_name = "ESCROW_GATEWAY_TIMEOUT",
          default_value = "10s", value_parser = DurationRange::new(Duration::from_millis(100), Duration::from_secs(300)))]
    pub gateway_timeout: Duration,
    /// The gateway's API key, sent as `Authorization: Bearer <key>`
    /// (`Debug` shows it as `<redacted>`).
    #[arg(
        long,
        env = "ESCROW_GATEWAY_API_KEY",
        value_name = "ESCROW_GATEWAY_API_KEY",
        hide_env_values = true
    )]
    pub gateway_api_key: Option<Secret>,
}

fn webhook_secret(text: &str) -> Result<WebhookSecret, String> {
    WebhookSecret::new(text.as_bytes().to_vec())
}

impl Config {
    pub fn settings(&self) -> Settings {
        Settings {
            webhook_secret: self.webhook_secret.clone(),
            webhook_tolerance: self.webhook_tolerance,
            bank_transfer_expiry: self.bank_transfer_expiry,
            pay_later_expiry: self.pay_later_expiry,
            payout_interval: self.payout_interval,
            payout_expiry: self.payout_expiry,
            gateway_check_after: self.gateway_check_after,
            webhook_retry_window: self.webhook_retry_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["escrow", "--database-url", "postgres://localhost/x"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn the_webhook_secret_is_required_and_long_enough() {
        let missing = parse(&[]).unwrap_err();
        assert!(missing.contains("ESCROW_WEBHOOK_SECRET"), "{missing}");
        let short = parse(&["--webhook-secret", "short"]).unwrap_err();
        assert!(short.contains("at least 32 bytes"), "{short}");
        let config = parse(&["--webhook-secret", SECRET]).unwrap();
        assert_eq!(config.webhook_tolerance, Duration::from_secs(300));
        assert_eq!(config.bank_transfer_expiry, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let config = Config::try_parse_from([
            "escrow",
            "--database-url",
            "postgres://escrow:db-password-0123@db/ta",
            "--auth-jwt-hs256-secret",
            "hs256-secret-0123456789",
            "--webhook-secret",
            SECRET,
            "--gateway-api-key",
            "gateway-api-key-0123456789",
        ])
        .unwrap();
        let shown = format!("{config:?} {config:#?} {:?}", config.settings());
        for secret in [
            "db-password-0123",
            "hs256-secret-0123456789",
            SECRET,
            "gateway-api-key-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let gateway = crate::gateway::http::HttpGateway::new(
            "http://127.0.0.1:9",
            Duration::from_secs(1),
            config
                .gateway_api_key
                .as_ref()
                .map(|k| k.expose().to_owned()),
        )
        .unwrap();
        assert!(!format!("{gateway:?}").contains("gateway-api-key-0123456789"));
    }

    #[test]
    fn durations_out_of_range_name_their_variable() {
        let err = parse(&["--webhook-secret", SECRET, "--payout-interval", "0s"]).unwrap_err();
        assert!(err.contains("ESCROW_PAYOUT_INTERVAL"), "{err}");
    }
}
