//! The workflow settings a service flattens into its configuration. Every
//! number and duration has a range, so a typo fails at start-up naming the
//! variable instead of turning into a busy loop or a relay that never retries.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use ta_runtime::config::parse_duration;

/// Parses a duration and checks it lies in `min..=max`.
fn bounded(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = parse_duration(text)?;
    if value < min || value > max {
        return Err(format!("`{text}` must be between {min:?} and {max:?}"));
    }
    Ok(value)
}

macro_rules! duration_parsers {
    ($($name:ident: $min:expr, $max:expr;)*) => {
        $(fn $name(text: &str) -> Result<Duration, String> { bounded(text, $min, $max) })*
    };
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

duration_parsers! {
    poll_interval: 10 * MS, 60 * S;
    backoff_base: 10 * MS, 60 * S;
    backoff_cap: 100 * MS, 24 * 3_600 * S;
    call_timeout: 100 * MS, 300 * S;
    heartbeat_interval: 100 * MS, 300 * S;
    token_ttl: 60 * S, 24 * 3_600 * S;
    retention: 3_600 * S, 3_650 * 24 * 3_600 * S;
}

/// Everything the workflow machinery reads from the environment.
#[derive(Args, Clone, Debug)]
pub struct WorkflowConfig {
    #[command(flatten)]
    pub outbox: OutboxConfig,
    #[command(flatten)]
    pub feed: FeedConfig,
    #[command(flatten)]
    pub consumer: ConsumerConfig,
    #[command(flatten)]
    pub timers: TimerConfig,
    #[command(flatten)]
    pub credentials: CredentialsConfig,
    #[command(flatten)]
    pub peers: PeersConfig,
    /// How long completed outbox rows and fired or cancelled timers are kept
    /// (for operators and audits) before they are purged. Feed events are kept.
    #[arg(long = "workflow-retention", id = "workflow-retention", env = "WORKFLOW_RETENTION",
          value_name = "WORKFLOW_RETENTION", default_value = "30d", value_parser = retention)]
    pub retention: Duration,
}

impl WorkflowConfig {
    /// Checks what one value's range cannot: the relations between values.
    ///
    /// # Errors
    /// A message naming the variables at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.outbox.backoff_base > self.outbox.backoff_cap {
            return Err(
                "WORKFLOW_OUTBOX_BACKOFF_BASE must not exceed WORKFLOW_OUTBOX_BACKOFF_CAP".into(),
            );
        }
        if self.consumer.reconnect_base > self.consumer.reconnect_cap {
            return Err(
                "WORKFLOW_CONSUMER_RECONNECT_BASE must not exceed WORKFLOW_CONSUMER_RECONNECT_CAP"
                    .into(),
            );
        }
        if self.timers.retry_base > self.timers.retry_cap {
            return Err(
                "WORKFLOW_TIMER_RETRY_BASE must not exceed WORKFLOW_TIMER_RETRY_CAP".into(),
            );
        }
        self.credentials.check()
    }
}

#[derive(Args, Clone, Debug)]
pub struct OutboxConfig {
    /// How often the relay looks for due outbox rows when it found none.
    #[arg(long = "workflow-outbox-poll-interval", id = "workflow-outbox-poll-interval", env = "WORKFLOW_OUTBOX_POLL_INTERVAL",
          value_name = "WORKFLOW_OUTBOX_POLL_INTERVAL", default_value = "500ms",
          value_parser = poll_interval)]
    pub poll_interval: Duration,
    /// Rows one relay claims, and calls concurrently, at a time.
    #[arg(long = "workflow-outbox-batch-size", id = "workflow-outbox-batch-size", env = "WORKFLOW_OUTBOX_BATCH_SIZE",
          value_name = "WORKFLOW_OUTBOX_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub batch_size: u32,
    /// Failed attempts after which a row is parked for an operator.
    #[arg(long = "workflow-outbox-max-attempts", id = "workflow-outbox-max-attempts", env = "WORKFLOW_OUTBOX_MAX_ATTEMPTS",
          value_name = "WORKFLOW_OUTBOX_MAX_ATTEMPTS", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_attempts: u32,
    /// Delay after the first failed attempt; doubles with each further one.
    #[arg(long = "workflow-outbox-backoff-base", id = "workflow-outbox-backoff-base", env = "WORKFLOW_OUTBOX_BACKOFF_BASE",
          value_name = "WORKFLOW_OUTBOX_BACKOFF_BASE", default_value = "250ms",
          value_parser = backoff_base)]
    pub backoff_base: Duration,
    /// The longest delay between two attempts.
    #[arg(long = "workflow-outbox-backoff-cap", id = "workflow-outbox-backoff-cap", env = "WORKFLOW_OUTBOX_BACKOFF_CAP",
          value_name = "WORKFLOW_OUTBOX_BACKOFF_CAP", default_value = "5m",
          value_parser = backoff_cap)]
    pub backoff_cap: Duration,
    /// Deadline of one delivery; a relay's claim on a row outlives it a little,
    /// so a relay that died is replaced soon after.
    #[arg(long = "workflow-outbox-call-timeout", id = "workflow-outbox-call-timeout", env = "WORKFLOW_OUTBOX_CALL_TIMEOUT",
          value_name = "WORKFLOW_OUTBOX_CALL_TIMEOUT", default_value = "10s",
          value_parser = call_timeout)]
    pub call_timeout: Duration,
    /// Whether the relay also looks as soon as an outbox row is committed
    /// (LISTEN/NOTIFY); `false` leaves it to its polls.
    #[arg(long = "workflow-outbox-wake-on-commit", id = "workflow-outbox-wake-on-commit", env = "WORKFLOW_OUTBOX_WAKE_ON_COMMIT",
          value_name = "WORKFLOW_OUTBOX_WAKE_ON_COMMIT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub wake_on_commit: bool,
}

#[derive(Args, Clone, Debug)]
pub struct FeedConfig {
    /// How often an open event stream looks for new events.
    #[arg(long = "workflow-feed-poll-interval", id = "workflow-feed-poll-interval", env = "WORKFLOW_FEED_POLL_INTERVAL",
          value_name = "WORKFLOW_FEED_POLL_INTERVAL", default_value = "200ms",
          value_parser = poll_interval)]
    pub poll_interval: Duration,
    /// Events read from the database at a time.
    #[arg(long = "workflow-feed-batch-size", id = "workflow-feed-batch-size", env = "WORKFLOW_FEED_BATCH_SIZE",
          value_name = "WORKFLOW_FEED_BATCH_SIZE", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// An idle stream sends a heartbeat this often, so both ends see a dead peer.
    #[arg(long = "workflow-feed-heartbeat-interval", id = "workflow-feed-heartbeat-interval", env = "WORKFLOW_FEED_HEARTBEAT_INTERVAL",
          value_name = "WORKFLOW_FEED_HEARTBEAT_INTERVAL", default_value = "15s",
          value_parser = heartbeat_interval)]
    pub heartbeat_interval: Duration,
    /// Event streams of the feed open at once in this process; above it UNAVAILABLE.
    #[arg(long = "workflow-feed-max-streams", id = "workflow-feed-max-streams", env = "WORKFLOW_FEED_MAX_STREAMS",
          value_name = "WORKFLOW_FEED_MAX_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams: u32,
    /// Event streams of the feed one caller (role and subject) may hold open at once; above it RESOURCE_EXHAUSTED.
    #[arg(long = "workflow-feed-max-streams-per-caller", id = "workflow-feed-max-streams-per-caller", env = "WORKFLOW_FEED_MAX_STREAMS_PER_CALLER",
          value_name = "WORKFLOW_FEED_MAX_STREAMS_PER_CALLER", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_streams_per_caller: u32,
    /// Whether an open event stream also looks as soon as an event is
    /// committed (LISTEN/NOTIFY); `false` leaves it to its polls.
    #[arg(long = "workflow-feed-wake-on-commit", id = "workflow-feed-wake-on-commit", env = "WORKFLOW_FEED_WAKE_ON_COMMIT",
          value_name = "WORKFLOW_FEED_WAKE_ON_COMMIT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub wake_on_commit: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ConsumerConfig {
    /// Delay before the first reconnection to a feed; doubles after each failure.
    #[arg(long = "workflow-consumer-reconnect-base", id = "workflow-consumer-reconnect-base", env = "WORKFLOW_CONSUMER_RECONNECT_BASE",
          value_name = "WORKFLOW_CONSUMER_RECONNECT_BASE", default_value = "200ms",
          value_parser = backoff_base)]
    pub reconnect_base: Duration,
    /// The longest delay between two reconnections.
    #[arg(long = "workflow-consumer-reconnect-cap", id = "workflow-consumer-reconnect-cap", env = "WORKFLOW_CONSUMER_RECONNECT_CAP",
          value_name = "WORKFLOW_CONSUMER_RECONNECT_CAP", default_value = "30s",
          value_parser = backoff_cap)]
    pub reconnect_cap: Duration,
    /// A stream silent for this long (no event, no heartbeat) is dropped and reopened.
    #[arg(long = "workflow-consumer-idle-timeout", id = "workflow-consumer-idle-timeout", env = "WORKFLOW_CONSUMER_IDLE_TIMEOUT",
          value_name = "WORKFLOW_CONSUMER_IDLE_TIMEOUT", default_value = "45s",
          value_parser = heartbeat_interval)]
    pub idle_timeout: Duration,
    /// Failed applications of one event (transient database trouble aside)
    /// after which it is parked for an operator and the feed goes on.
    #[arg(long = "workflow-consumer-max-attempts", id = "workflow-consumer-max-attempts", env = "WORKFLOW_CONSUMER_MAX_ATTEMPTS",
          value_name = "WORKFLOW_CONSUMER_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_attempts: u32,
    /// Events already received that the consumer applies in one transaction.
    #[arg(long = "workflow-consumer-batch-size", id = "workflow-consumer-batch-size", env = "WORKFLOW_CONSUMER_BATCH_SIZE",
          value_name = "WORKFLOW_CONSUMER_BATCH_SIZE", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub batch_size: u32,
    /// How often the consumer looks for parked events an operator re-drove.
    #[arg(long = "workflow-consumer-redrive-poll-interval", id = "workflow-consumer-redrive-poll-interval", env = "WORKFLOW_CONSUMER_REDRIVE_POLL_INTERVAL",
          value_name = "WORKFLOW_CONSUMER_REDRIVE_POLL_INTERVAL", default_value = "2s",
          value_parser = poll_interval)]
    pub redrive_poll_interval: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct TimerConfig {
    /// How often the timer worker looks for due timers when it found none.
    #[arg(long = "workflow-timer-poll-interval", id = "workflow-timer-poll-interval", env = "WORKFLOW_TIMER_POLL_INTERVAL",
          value_name = "WORKFLOW_TIMER_POLL_INTERVAL", default_value = "500ms",
          value_parser = poll_interval)]
    pub poll_interval: Duration,
    /// Timers fired before the worker looks again without waiting.
    #[arg(long = "workflow-timer-batch-size", id = "workflow-timer-batch-size", env = "WORKFLOW_TIMER_BATCH_SIZE",
          value_name = "WORKFLOW_TIMER_BATCH_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Delay before a timer whose handler failed is tried again; doubles each time.
    #[arg(long = "workflow-timer-retry-base", id = "workflow-timer-retry-base", env = "WORKFLOW_TIMER_RETRY_BASE",
          value_name = "WORKFLOW_TIMER_RETRY_BASE", default_value = "1s",
          value_parser = backoff_base)]
    pub retry_base: Duration,
    /// The longest delay between two tries of a failing timer.
    #[arg(long = "workflow-timer-retry-cap", id = "workflow-timer-retry-cap", env = "WORKFLOW_TIMER_RETRY_CAP",
          value_name = "WORKFLOW_TIMER_RETRY_CAP", default_value = "5m",
          value_parser = backoff_cap)]
    pub retry_cap: Duration,
}

/// How this service proves who it is to the services it calls; see
/// [`crate::credentials`]. With none of these set, the dev secret
/// (`AUTH_JWT_HS256_SECRET`) signs, for local runs only.
#[derive(Args, Clone, Debug)]
pub struct CredentialsConfig {
    /// PEM RSA private key that signs this service's RS256 tokens.
    #[arg(
        long = "service-signing-key-file",
        id = "service-signing-key-file",
        env = "SERVICE_SIGNING_KEY_FILE",
        value_name = "SERVICE_SIGNING_KEY_FILE"
    )]
    pub signing_key_file: Option<PathBuf>,
    /// The `kid` under which the verifiers' JWK set publishes that key.
    #[arg(
        long = "service-signing-key-id",
        id = "service-signing-key-id",
        env = "SERVICE_SIGNING_KEY_ID",
        value_name = "SERVICE_SIGNING_KEY_ID"
    )]
    pub signing_key_id: Option<String>,
    /// Directory of ready-made tokens, one file per audience (`<dir>/escrow`),
    /// re-read when they change (a Kubernetes projected service-account token).
    #[arg(
        long = "service-token-dir",
        id = "service-token-dir",
        env = "SERVICE_TOKEN_DIR",
        value_name = "SERVICE_TOKEN_DIR"
    )]
    pub token_dir: Option<PathBuf>,
    /// Lifetime of the tokens this service signs itself.
    #[arg(long = "service-token-ttl", id = "service-token-ttl", env = "SERVICE_TOKEN_TTL", value_name = "SERVICE_TOKEN_TTL",
          default_value = "10m", value_parser = token_ttl)]
    pub token_ttl: Duration,
}

impl CredentialsConfig {
    fn check(&self) -> Result<(), String> {
        match (&self.signing_key_file, &self.signing_key_id, &self.token_dir) {
            (Some(_), None, _) => Err(
                "SERVICE_SIGNING_KEY_ID is required with SERVICE_SIGNING_KEY_FILE: verifiers pick the key by kid"
                    .into(),
            ),
            (None, Some(_), _) => {
                Err("SERVICE_SIGNING_KEY_ID is set without SERVICE_SIGNING_KEY_FILE".into())
            }
            (Some(_), Some(_), Some(_)) => Err(
                "set either SERVICE_SIGNING_KEY_FILE or SERVICE_TOKEN_DIR, not both".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Where the other services listen. A service needs only those it calls.
#[derive(Args, Clone, Debug, Default)]
pub struct PeersConfig {
    /// e.g. http://supplier-registry:50051
    #[arg(
        long = "supplier-registry-url",
        id = "supplier-registry-url",
        env = "SUPPLIER_REGISTRY_URL",
        value_name = "SUPPLIER_REGISTRY_URL"
    )]
    pub supplier_registry_url: Option<String>,
    /// e.g. http://contract:50052
    #[arg(
        long = "contract-url",
        id = "contract-url",
        env = "CONTRACT_URL",
        value_name = "CONTRACT_URL"
    )]
    pub contract_url: Option<String>,
    /// e.g. http://escrow:50053
    #[arg(
        long = "escrow-url",
        id = "escrow-url",
        env = "ESCROW_URL",
        value_name = "ESCROW_URL"
    )]
    pub escrow_url: Option<String>,
    /// e.g. http://dispute:50054
    #[arg(
        long = "dispute-url",
        id = "dispute-url",
        env = "DISPUTE_URL",
        value_name = "DISPUTE_URL"
    )]
    pub dispute_url: Option<String>,
}

impl PeersConfig {
    /// (service name, URL) of every peer configured.
    pub fn configured(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("supplier-registry", &self.supplier_registry_url),
            ("contract", &self.contract_url),
            ("escrow", &self.escrow_url),
            ("dispute", &self.dispute_url),
        ]
        .into_iter()
        .filter_map(|(name, url)| url.as_deref().map(|url| (name, url)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        workflow: WorkflowConfig,
    }

    fn parse(args: &[&str]) -> Result<WorkflowConfig, String> {
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map(|c| c.workflow)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();
        config.check().unwrap();
        assert_eq!(config.outbox.batch_size, 32);
        assert_eq!(config.feed.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(config.consumer.batch_size, 64);
        assert!(config.outbox.wake_on_commit && config.feed.wake_on_commit);
    }

    #[test]
    fn out_of_range_values_name_their_variable() {
        let err = parse(&["--workflow-outbox-poll-interval", "1ms"]).unwrap_err();
        assert!(err.contains("WORKFLOW_OUTBOX_POLL_INTERVAL"), "{err}");
        let err = parse(&["--workflow-outbox-batch-size", "0"]).unwrap_err();
        assert!(err.contains("WORKFLOW_OUTBOX_BATCH_SIZE"), "{err}");
        let err = parse(&["--workflow-consumer-batch-size", "0"]).unwrap_err();
        assert!(err.contains("WORKFLOW_CONSUMER_BATCH_SIZE"), "{err}");
        let err = parse(&["--workflow-outbox-wake-on-commit", "maybe"]).unwrap_err();
        assert!(err.contains("WORKFLOW_OUTBOX_WAKE_ON_COMMIT"), "{err}");
        let err = parse(&["--workflow-timer-poll-interval", "soon"]).unwrap_err();
        assert!(err.contains("WORKFLOW_TIMER_POLL_INTERVAL"), "{err}");
    }

    #[test]
    fn relations_between_values_are_checked() {
        let config = parse(&[
            "--workflow-outbox-backoff-base",
            "10s",
            "--workflow-outbox-backoff-cap",
            "1s",
        ])
        .unwrap();
        assert!(config.check().unwrap_err().contains("BACKOFF_BASE"));
        let config = parse(&["--service-signing-key-file", "/k.pem"]).unwrap();
        assert!(
            config
                .check()
                .unwrap_err()
                .contains("SERVICE_SIGNING_KEY_ID")
        );
    }

    #[test]
    fn only_configured_peers_are_listed() {
        let config = parse(&["--escrow-url", "http://escrow:50053"]).unwrap();
        let peers: Vec<_> = config.peers.configured().collect();
        assert_eq!(peers, vec![("escrow", "http://escrow:50053")]);
    }
}
