//! The dispute service's configuration: the common runtime's, the workflow
//! machinery's (outbox, feed, timers, credentials, peers), and its own:
//! windows, penalty points, the evidence store and its limits.

use std::time::Duration;

use clap::Parser;
use ta_runtime::config::{CommonConfig, DurationRange};
use ta_workflow::WorkflowConfig;

use crate::{
    app::Settings,
    domain::claim::{Policy, Reason},
};

/// `reason=full/partial,...`, e.g. `non_delivery=20/10,late_shipment=8/4`:
/// the points of a decision per claim reason, each 0-100.
fn points_by_reason(text: &str) -> Result<[Option<(u32, u32)>; 6], String> {
    let mut table = [None; 6];
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (reason, points) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not reason=full/partial"))?;
        let reason = Reason::parse(reason.trim()).ok_or_else(|| {
            format!(
                "`{reason}` is not a claim reason ({})",
                Reason::ALL.map(Reason::as_str).join(", ")
            )
        })?;
        let (full, partial) = points
            .split_once('/')
            .ok_or_else(|| format!("`{item}` is not reason=full/partial"))?;
        let number = |p: &str| {
            p.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100)
                .ok_or_else(|| format!("`{p}` is not 0-100 points"))
        };
        table[reason.index()] = Some((number(full)?, number(partial)?));
    }
    Ok(table)
}

/// Dispute: a buyer's claim against a Trade Assurance contract, its evidence,
/// the negotiation, escalation and the arbiter's decision.
#[derive(Parser, Debug)]
#[command(name = "dispute", version)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub workflow: WorkflowConfig,
    /// How long one day of the claim windows lasts. A day in production;
    /// shorter only in tests and demos, so the windows pass in seconds.
    #[arg(long, env = "DISPUTE_TERM_DAY", value_name = "DISPUTE_TERM_DAY",
          default_value = "1d", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub term_day: Duration,
    /// Days of negotiation after a claim opened; the buyer may escalate after.
    #[arg(long, env = "DISPUTE_NEGOTIATION_DAYS", value_name = "DISPUTE_NEGOTIATION_DAYS",
          default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub negotiation_days: u32,
    /// Days after a claim opened when it escalates by itself while still
    /// negotiating; at least the negotiation days.
    #[arg(long, env = "DISPUTE_AUTO_ESCALATION_DAYS", value_name = "DISPUTE_AUTO_ESCALATION_DAYS",
          default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=90))]
    pub auto_escalation_days: u32,
    /// Days an arbiter has for an escalated claim (the decision target).
    #[arg(long, env = "DISPUTE_DECISION_DAYS", value_name = "DISPUTE_DECISION_DAYS",
          default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=90))]
    pub decision_days: u32,
    /// Penalty points a decided full refund records against the supplier.
    #[arg(long, env = "DISPUTE_PENALTY_POINTS_FULL_REFUND", value_name = "DISPUTE_PENALTY_POINTS_FULL_REFUND",
          default_value_t = 12, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub full_refund_points: u32,
    /// Penalty points a decided partial refund records against the supplier.
    #[arg(long, env = "DISPUTE_PENALTY_POINTS_PARTIAL_REFUND", value_name = "DISPUTE_PENALTY_POINTS_PARTIAL_REFUND",
          default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub partial_refund_points: u32,
    /// Points per claim reason instead of the two above, as
    /// `reason=full/partial,...` (e.g. `non_delivery=20/10`); empty for none.
    #[arg(long, env = "DISPUTE_PENALTY_POINTS_BY_REASON", value_name = "DISPUTE_PENALTY_POINTS_BY_REASON",
          default_value = "", value_parser = points_by_reason)]
    pub points_by_reason: [Option<(u32, u32)>; 6],
    /// The evidence store (shared with contract's inspection reports'
    /// files): where it is and its limits.
    #[command(flatten)]
    pub store: ta_objects::StoreConfig,
    /// How long FileClaim's reads of the contract and its escrow account may take.
    #[arg(long, env = "DISPUTE_PEER_TIMEOUT", value_name = "DISPUTE_PEER_TIMEOUT",
          default_value = "5s", value_parser = DurationRange::new(Duration::from_millis(100), Duration::from_secs(60)))]
    pub peer_timeout: Duration,
    /// How often the cross-service reconciliation runs in the background
    /// (its count of differences is the `ta.reconciliation.differences`
    /// gauge).
    #[arg(long, env = "RECONCILIATION_INTERVAL", value_name = "RECONCILIATION_INTERVAL",
          default_value = "5m", value_parser = DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub reconciliation_interval: Duration,
    /// Rows any side changed less than this long ago are left out of the
    /// reconciliation (work in flight); ReconcilePlatform may ask otherwise.
    #[arg(long, env = "RECONCILIATION_SETTLED_FOR", value_name = "RECONCILIATION_SETTLED_FOR",
          default_value = "1m", value_parser = DurationRange::new(Duration::ZERO, Duration::from_secs(86_400)))]
    pub reconciliation_settled_for: Duration,
}

impl Config {
    /// # Errors
    /// A message naming the variables at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.auto_escalation_days < self.negotiation_days {
            return Err(
                "DISPUTE_AUTO_ESCALATION_DAYS must not be less than DISPUTE_NEGOTIATION_DAYS"
                    .into(),
            );
        }
        self.store.check()?;
        self.workflow.check()
    }

    pub fn settings(&self) -> Settings {
        let day = time::Duration::try_from(self.term_day).unwrap_or(time::Duration::DAY);
        Settings {
            policy: Policy {
                negotiation_window: day * self.negotiation_days,
                auto_escalation_after: day * self.auto_escalation_days,
                full_refund_penalty_points: self.full_refund_points,
                partial_refund_penalty_points: self.partial_refund_points,
                points_by_reason: self.points_by_reason,
            },
            decision_target: day * self.decision_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["dispute", "--database-url", "postgres://localhost/x"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).map_err(|e| e.to_string())
    }

    #[test]
    fn the_windows_follow_the_brief_unless_configured() {
        let config = parse(&[]).unwrap();
        let settings = config.settings();
        assert_eq!(settings.policy, Policy::default());
        let fast = parse(&["--term-day", "2s", "--negotiation-days", "1"]).unwrap();
        let policy = fast.settings().policy;
        assert_eq!(policy.negotiation_window, time::Duration::seconds(2));
        assert_eq!(policy.auto_escalation_after, time::Duration::seconds(14));
        let err = parse(&["--term-day", "2d"]).unwrap_err();
        assert!(err.contains("DISPUTE_TERM_DAY"), "{err}");
        let by_reason = parse(&[
            "--points-by-reason",
            "non_delivery=20/10, late_shipment=8/4",
        ])
        .unwrap()
        .settings()
        .policy;
        assert_eq!(
            by_reason.points_by_reason[Reason::NonDelivery.index()],
            Some((20, 10))
        );
        assert_eq!(
            by_reason.points_by_reason[Reason::LateShipment.index()],
            Some((8, 4))
        );
        for bad in ["damage=200/1", "broken=1/1", "damage=3"] {
            let err = parse(&["--points-by-reason", bad]).unwrap_err();
            assert!(err.contains("DISPUTE_PENALTY_POINTS_BY_REASON"), "{err}");
        }
        let inverted = parse(&["--negotiation-days", "9"]).unwrap();
        assert!(
            inverted
                .check()
                .unwrap_err()
                .contains("DISPUTE_AUTO_ESCALATION_DAYS")
        );
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let (args, secrets) = ta_testkit::command_line_with_secrets("dispute");
        let config = Config::try_parse_from(args).unwrap();
        let shown = format!("{config:?} {config:#?}");
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
