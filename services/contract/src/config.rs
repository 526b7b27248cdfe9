//! The contract service's configuration: the common runtime's, the workflow
//! machinery's (outbox, feed, consumer, timers, credentials, peers), and its
//! own durations.

use std::time::Duration;

use clap::Parser;
use ta_runtime::config::{CommonConfig, DurationRange};
use ta_workflow::WorkflowConfig;

use crate::app::Settings;

/// Contract: the Trade Assurance agreement between buyer and supplier and the
/// order's whole life, from draft to acceptance.
#[derive(Parser, Debug)]
#[command(name = "contract", version)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub workflow: WorkflowConfig,
    /// How long one day of contract terms lasts (payment due days, the
    /// inspection period, the claim window). A day in production; shorter
    /// only in tests and demos, so their timers fire in seconds.
    #[arg(long, env = "CONTRACT_TERM_DAY", value_name = "CONTRACT_TERM_DAY",
          default_value = "1d", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub term_day: Duration,
    /// How long a claim recorded by RecordClaimOpened waits for dispute's
    /// confirmation before the contract drops it and resumes.
    #[arg(long, env = "CONTRACT_CLAIM_CONFIRMATION_TIMEOUT", value_name = "CONTRACT_CLAIM_CONFIRMATION_TIMEOUT",
          default_value = "10m", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub claim_confirmation_timeout: Duration,
    /// How long the supplier lookup of CreateContractDraft may take.
    #[arg(long, env = "CONTRACT_REGISTRY_TIMEOUT", value_name = "CONTRACT_REGISTRY_TIMEOUT",
          default_value = "3s", value_parser = DurationRange::new(Duration::from_millis(100), Duration::from_secs(60)))]
    pub registry_timeout: Duration,
    /// The file store inspection reports' files go to: the one dispute's
    /// evidence is in (the same EVIDENCE_STORE).
    #[command(flatten)]
    pub store: ta_objects::StoreConfig,
}

impl Config {
    /// # Errors
    /// A duration out of what `time` represents (cannot happen within the
    /// ranges above).
    pub fn settings(&self) -> Settings {
        let convert = |d: Duration| time::Duration::try_from(d).unwrap_or(time::Duration::DAY);
        Settings {
            day: convert(self.term_day),
            claim_confirmation: convert(self.claim_confirmation_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["contract", "--database-url", "postgres://localhost/x"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn a_term_day_is_a_day_unless_shortened_within_range() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.settings().day, time::Duration::DAY);
        let fast = parse(&["--term-day", "2s"]).unwrap();
        assert_eq!(fast.settings().day, time::Duration::seconds(2));
        let err = parse(&["--term-day", "2d"]).unwrap_err();
        assert!(err.contains("CONTRACT_TERM_DAY"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let (args, secrets) = ta_testkit::command_line_with_secrets("contract");
        let config = Config::try_parse_from(args).unwrap();
        let shown = format!("{config:?} {config:#?}");
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
