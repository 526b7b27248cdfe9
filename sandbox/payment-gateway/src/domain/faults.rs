//! Injected faults: what `PUT /sandbox/faults` sets, their defaults from the
//! `GATEWAY_SANDBOX_*` variables, and a small seeded generator so random
//! faults repeat under one seed (`GATEWAY_SANDBOX_SEED`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, Refusal};

/// The longest latency, hang or webhook delay accepted, in milliseconds.
pub const MAX_MS: u64 = 3_600_000;

/// The faults in force. `fail_nth` and `lose_next` count down as calls and
/// events happen (shared by every process through the database).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Added to every `/v1` call.
    pub latency_ms: u64,
    /// Up to this much more, drawn per call.
    pub latency_jitter_ms: u64,
    /// Share of calls (0 to 1) answered 503 before acting.
    pub failure_rate: f64,
    /// Share of acting calls (0 to 1) that act, commit, then hold their answer
    /// for `hang_ms`.
    pub timeout_rate: f64,
    /// How long a timed-out answer is held: longer than any client waits.
    pub hang_ms: u64,
    /// The n-th call of a kind from now fails with 503 before acting.
    pub fail_nth: Option<FailNth>,
    /// Payouts and refunds stay pending until the control API settles them.
    pub hold_settlement: bool,
    /// The next this many webhook events are never delivered (still listed
    /// and re-drivable).
    pub lose_next: u32,
    /// Share of events (0 to 1) delivered twice.
    pub duplicate_rate: f64,
    /// Each delivery is delayed by a random 0..=window, so events overtake
    /// each other.
    pub reorder_window_ms: u64,
    /// Every delivery waits this long first.
    pub webhook_delay_ms: u64,
    /// Reseeds the generator of random faults (the process answering the PUT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNth {
    /// charge, bank_transfer, pay_later, payout or refund.
    pub kind: String,
    /// 1 is the next call.
    pub n: u32,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            failure_rate: 0.0,
            timeout_rate: 0.0,
            hang_ms: 60_000,
            fail_nth: None,
            hold_settlement: false,
            lose_next: 0,
            duplicate_rate: 0.0,
            reorder_window_ms: 0,
            webhook_delay_ms: 0,
            seed: None,
        }
    }
}

impl FaultSettings {
    /// `body` (a JSON object) over `defaults`: a field left out takes its
    /// default, so `{}` restores the defaults.
    ///
    /// # Errors
    /// 400 when the body is not such an object or a value is out of range.
    pub fn overlay(defaults: &FaultSettings, body: &[u8]) -> Result<Self, Refusal> {
        let given: Value = serde_json::from_slice(body)
            .map_err(|e| Refusal::invalid(format!("invalid JSON body: {e}")))?;
        let Value::Object(given) = given else {
            return Err(Refusal::invalid("the faults must be a JSON object"));
        };
        let mut merged = serde_json::to_value(defaults).unwrap_or(Value::Null);
        if let Value::Object(merged) = &mut merged {
            merged.extend(given);
        }
        let settings: FaultSettings = serde_json::from_value(merged)
            .map_err(|e| Refusal::invalid(format!("invalid faults: {e}")))?;
        settings.check()?;
        Ok(settings)
    }

    /// # Errors
    /// 400 naming the value out of range.
    pub fn check(&self) -> Result<(), Refusal> {
        for (name, rate) in [
            ("failure_rate", self.failure_rate),
            ("timeout_rate", self.timeout_rate),
            ("duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(Refusal::invalid(format!("{name} must be 0 to 1")));
            }
        }
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("latency_jitter_ms", self.latency_jitter_ms),
            ("hang_ms", self.hang_ms),
            ("reorder_window_ms", self.reorder_window_ms),
            ("webhook_delay_ms", self.webhook_delay_ms),
        ] {
            if ms > MAX_MS {
                return Err(Refusal::invalid(format!("{name} must be at most {MAX_MS}")));
            }
        }
        if let Some(nth) = &self.fail_nth {
            if Kind::parse(&nth.kind).is_none() {
                return Err(Refusal::invalid(
                    "fail_nth.kind must be charge, bank_transfer, pay_later, payout or refund",
                ));
            }
            if nth.n == 0 {
                return Err(Refusal::invalid("fail_nth.n must be 1 or more"));
            }
        }
        Ok(())
    }

    /// The latency of one call.
    pub fn latency(&self, rng: &mut Rng) -> Duration {
        let jitter = if self.latency_jitter_ms == 0 {
            0
        } else {
            rng.below(self.latency_jitter_ms + 1)
        };
        Duration::from_millis(self.latency_ms + jitter)
    }

    /// Whether this call fails before acting.
    pub fn fails(&self, rng: &mut Rng) -> bool {
        rng.chance(self.failure_rate)
    }

    /// Whether this acting call holds its answer.
    pub fn times_out(&self, rng: &mut Rng) -> bool {
        rng.chance(self.timeout_rate)
    }

    pub fn hang(&self) -> Duration {
        Duration::from_millis(self.hang_ms)
    }

    /// How one new event is delivered (losses are counted in the database).
    pub fn delivery(&self, rng: &mut Rng) -> Delivery {
        let reorder = if self.reorder_window_ms == 0 {
            0
        } else {
            rng.below(self.reorder_window_ms + 1)
        };
        Delivery {
            delay: Duration::from_millis(self.webhook_delay_ms + reorder),
            duplicate: rng.chance(self.duplicate_rate),
        }
    }
}

/// How an event is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// From its creation to its first attempt.
    pub delay: Duration,
    /// Delivered a second time right after the first success.
    pub duplicate: bool,
}

/// SplitMix64: small, fast, and the same sequence for the same seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed that differs per process and start.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Self(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// True with probability `p`; draws nothing when `p` is 0 or 1.
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits as a fraction in [0, 1).
        let fraction = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        fraction < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_overlays_the_defaults() {
        let defaults = FaultSettings {
            latency_ms: 300,
            ..FaultSettings::default()
        };
        let set = FaultSettings::overlay(
            &defaults,
            br#"{"failure_rate":0.5,"fail_nth":{"kind":"payout","n":3}}"#,
        )
        .unwrap();
        assert_eq!(set.latency_ms, 300);
        assert_eq!(set.failure_rate, 0.5);
        assert_eq!(
            set.fail_nth,
            Some(FailNth {
                kind: "payout".into(),
                n: 3
            })
        );
        assert_eq!(FaultSettings::overlay(&defaults, b"{}").unwrap(), defaults);
    }

    #[test]
    fn bad_faults_are_refused_by_name() {
        let defaults = FaultSettings::default();
        for (body, expected) in [
            (r#"{"failure_rate":1.5}"#, "failure_rate"),
            (r#"{"duplicate_rate":-0.1}"#, "duplicate_rate"),
            (r#"{"hang_ms":99999999}"#, "hang_ms"),
            (r#"{"fail_nth":{"kind":"loan","n":1}}"#, "fail_nth.kind"),
            (r#"{"fail_nth":{"kind":"payout","n":0}}"#, "fail_nth.n"),
            (r#"{"latency":5}"#, "unknown field `latency`"),
            ("[]", "JSON object"),
            ("nope", "invalid JSON"),
        ] {
            let error = FaultSettings::overlay(&defaults, body.as_bytes()).unwrap_err();
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn one_seed_gives_one_sequence() {
        let draw = |seed| {
            let mut rng = Rng::seeded(seed);
            (0..16).map(|_| rng.below(1_000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn chances_of_zero_and_one_are_certain() {
        let mut rng = Rng::seeded(1);
        assert!((0..100).all(|_| !rng.chance(0.0)));
        assert!((0..100).all(|_| rng.chance(1.0)));
        let hits = (0..10_000).filter(|_| rng.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }

    #[test]
    fn deliveries_fall_within_the_window() {
        let faults = FaultSettings {
            webhook_delay_ms: 100,
            reorder_window_ms: 50,
            latency_ms: 10,
            latency_jitter_ms: 5,
            ..FaultSettings::default()
        };
        let mut rng = Rng::seeded(3);
        for _ in 0..100 {
            let delay = faults.delivery(&mut rng).delay.as_millis();
            assert!((100..=150).contains(&delay), "{delay}");
            let latency = faults.latency(&mut rng).as_millis();
            assert!((10..=15).contains(&latency), "{latency}");
        }
    }
}
