//! The supplier registry's configuration: the common runtime's plus its policy.

use clap::Parser;
use ta_runtime::{config::CommonConfig, group_commit::GroupCommitConfig};
use ta_workflow::config::FeedConfig;

use crate::domain::PenaltyPolicy;

/// Supplier registry: suppliers, verification, Trade Assurance enrolment and
/// cover, reviews, response rate and penalty points.
#[derive(Parser, Debug)]
#[command(name = "supplier-registry", version)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    /// The event feed's streams (`WORKFLOW_FEED_*`).
    #[command(flatten)]
    pub feed: FeedConfig,
    /// Cover reservations and other changes that arrive together share
    /// transactions (`GROUP_COMMIT_*`): one supplier's row is then updated
    /// by one transaction for many reservations.
    #[command(flatten)]
    pub group_commit: GroupCommitConfig,
    /// Penalty points at which a supplier is restricted.
    #[arg(long, env = "PENALTY_RESTRICTION_THRESHOLD", value_name = "PENALTY_RESTRICTION_THRESHOLD",
          default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..))]
    pub penalty_restriction_threshold: u32,
    /// Percentage taken off the TA limit when a supplier reaches the threshold.
    #[arg(long, env = "PENALTY_LIMIT_REDUCTION_PERCENT", value_name = "PENALTY_LIMIT_REDUCTION_PERCENT",
          default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub penalty_limit_reduction_percent: u8,
}

impl Config {
    pub fn penalty_policy(&self) -> PenaltyPolicy {
        PenaltyPolicy {
            restriction_threshold: self.penalty_restriction_threshold,
            limit_reduction_percent: self.penalty_limit_reduction_percent,
        }
    }
}
