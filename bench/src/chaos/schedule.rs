//! The fault schedule: derived from one `u64` seed alone, so the same seed
//! replays the same faults at the same offsets (what the platform does in
//! between depends on timing, as in any real run; the schedule does not).
//!
//! The generator is SplitMix64 (Steele, Lea and Flood, 2014): a few lines,
//! no dependency, statistically fine for picking faults.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::proxy::Mode;

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A process the schedule may kill or pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Registry,
    Escrow,
    Contract,
    Dispute,
    Gateway,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Self::Registry,
        Self::Escrow,
        Self::Contract,
        Self::Dispute,
        Self::Gateway,
    ];

    /// How many processes of it run: two of each service (all are
    /// stateless over Postgres; relays, timers and feed consumers lease
    /// their work in the database), one sandbox gateway (it stands for an
    /// outside party).
    pub fn replicas(self) -> u8 {
        match self {
            Self::Gateway => 1,
            _ => 2,
        }
    }

    pub fn binary(self) -> &'static str {
        match self {
            Self::Registry => "supplier-registry",
            Self::Escrow => "escrow",
            Self::Contract => "contract",
            Self::Dispute => "dispute",
            Self::Gateway => "payment-gateway-sandbox",
        }
    }
}

/// What one fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// SIGKILL of one replica, then the same binary started again on the
    /// same address after `hold`.
    Kill(Target, u8),
    /// SIGSTOP of one replica, SIGCONT after `hold`.
    Pause(Target, u8),
    /// `pg_ctl stop -m fast` and start of the run's own cluster.
    PostgresRestart,
    /// The sandbox gateway's answers delayed (`latency_ms` + jitter) for `hold`.
    GatewayLatency { latency_ms: u64 },
    /// A share of the gateway's calls answered 503 before acting, for `hold`.
    GatewayFailures { failure_rate: f64 },
    /// A share of the gateway's acting calls act, commit, and hold their
    /// answer longer than escrow waits, for `hold`.
    GatewayTimeouts { timeout_rate: f64 },
    /// Webhooks duplicated, reordered, delayed and some lost, for `hold`.
    WebhookChaos {
        duplicate_rate: f64,
        reorder_window_ms: u64,
        lose_next: u32,
    },
    /// Between the clients and the services: a share of the answers lost on
    /// the way back for `hold` (the service acted; the client retries under
    /// the same key, as after a timeout).
    LostAnswers { share: f64 },
    /// The calls of one link between processes cut for `hold`, nobody
    /// killed: the harness's proxy in front of the callee refuses them,
    /// carries them but drops the answers, or stalls them.
    CutCalls { link: Link, mode: Mode },
}

/// A link between processes that goes through a harness proxy the
/// schedule can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// Contract's and dispute's outbox relays to supplier-registry.
    ToRegistry,
    /// Contract's and dispute's relays to escrow, and contract's pull of
    /// escrow's feed.
    ToEscrow,
    /// Dispute's relay to contract.
    ToContract,
    /// The gateway's webhooks to escrow's HTTP endpoints.
    Webhooks,
}

impl Link {
    pub const ALL: [Link; 4] = [
        Self::ToRegistry,
        Self::ToEscrow,
        Self::ToContract,
        Self::Webhooks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ToRegistry => "calls to supplier-registry",
            Self::ToEscrow => "calls to escrow",
            Self::ToContract => "calls to contract",
            Self::Webhooks => "webhooks to escrow",
        }
    }
}

impl FaultKind {
    /// The kind's name in the counts.
    pub fn name(&self) -> String {
        match self {
            Self::Kill(t, _) => format!("kill -9 {}", t.binary()),
            Self::Pause(t, _) => format!("SIGSTOP/SIGCONT {}", t.binary()),
            Self::PostgresRestart => "postgres restart".into(),
            Self::GatewayLatency { .. } => "gateway latency".into(),
            Self::GatewayFailures { .. } => "gateway 503s".into(),
            Self::GatewayTimeouts { .. } => "gateway acts, answer lost".into(),
            Self::WebhookChaos { .. } => "webhooks duplicated/reordered/delayed/lost".into(),
            Self::LostAnswers { .. } => "client answers lost".into(),
            Self::CutCalls { link, mode } => format!("{} {}", link.name(), mode.name()),
        }
    }
}

/// One fault at its offset from the start of the timed phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
    /// How long it lasts (a kill: until the restart).
    pub hold: Duration,
    /// The gateway's own fault generator is reseeded with this.
    pub gateway_seed: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t+{:.1}s {:?} for {:.1}s",
            self.at.as_secs_f64(),
            self.kind,
            self.hold.as_secs_f64()
        )
    }
}

/// The faults of one run in two lanes, each one fault after another (a
/// fault ends before the next of its lane starts; the next comes a seeded
/// gap later): the processes', Postgres's, the gateway's and the clients'
/// faults in `faults`, and beside them the cuts of the links between
/// processes in `cuts`, drawn from a stream of their own (so `faults` is
/// the schedule the seed gave before cuts existed).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub cuts: Vec<Fault>,
}

/// How dense the schedule is.
#[derive(Clone, Copy, Debug)]
pub struct Density {
    /// Quiet time before the first fault.
    pub warmup: Duration,
    /// Gaps between faults are drawn from `min_gap..=max_gap`.
    pub min_gap: Duration,
    pub max_gap: Duration,
    /// Gaps between cuts of the links, likewise.
    pub min_cut_gap: Duration,
    pub max_cut_gap: Duration,
}

impl Default for Density {
    fn default() -> Self {
        Self {
            warmup: Duration::from_secs(3),
            min_gap: Duration::from_millis(500),
            max_gap: Duration::from_secs(4),
            min_cut_gap: Duration::from_secs(2),
            max_cut_gap: Duration::from_secs(12),
        }
    }
}

impl Density {
    /// For the short run of `make test`: a fault every second or so, so a
    /// minute holds a few of each cheap kind.
    pub fn dense() -> Self {
        Self {
            warmup: Duration::from_secs(2),
            min_gap: Duration::from_millis(200),
            max_gap: Duration::from_millis(1_500),
            min_cut_gap: Duration::from_millis(1_000),
            max_cut_gap: Duration::from_millis(5_000),
        }
    }
}

impl Schedule {
    /// The schedule of `seed` over `duration` (no fault starts after it).
    pub fn generate(seed: u64, duration: Duration, density: Density) -> Self {
        let mut rng = Rng::new(seed);
        let mut faults = Vec::new();
        let mut at = density.warmup;
        let gap = |rng: &mut Rng| {
            rng.millis(
                density.min_gap.as_millis() as u64,
                density.max_gap.as_millis() as u64,
            )
        };
        while at < duration {
            let target = Target::ALL[rng.below(Target::ALL.len() as u64) as usize];
            // Weights: process faults are the point; the gateway's and the
            // network's are cheap and frequent.
            let (kind, hold) = match rng.below(100) {
                0..=21 => (FaultKind::Kill(target, 0), rng.millis(100, 2_500)),
                22..=39 => (FaultKind::Pause(target, 0), rng.millis(500, 6_000)),
                40..=47 => (FaultKind::PostgresRestart, Duration::ZERO),
                48..=57 => (
                    FaultKind::GatewayLatency {
                        latency_ms: 200 + rng.below(4_000),
                    },
                    rng.millis(2_000, 8_000),
                ),
                58..=67 => (
                    FaultKind::GatewayFailures {
                        failure_rate: 0.2 + rng.below(60) as f64 / 100.0,
                    },
                    rng.millis(2_000, 8_000),
                ),
                68..=77 => (
                    FaultKind::GatewayTimeouts {
                        timeout_rate: 0.2 + rng.below(60) as f64 / 100.0,
                    },
                    rng.millis(2_000, 6_000),
                ),
                78..=87 => (
                    FaultKind::WebhookChaos {
                        duplicate_rate: 0.3 + rng.below(70) as f64 / 100.0,
                        reorder_window_ms: rng.below(3_000),
                        lose_next: rng.below(3) as u32,
                    },
                    rng.millis(2_000, 8_000),
                ),
                _ => (
                    FaultKind::LostAnswers {
                        share: 0.2 + rng.below(60) as f64 / 100.0,
                    },
                    rng.millis(2_000, 8_000),
                ),
            };
            let gateway_seed = rng.next_u64();
            // The replica is drawn from the fault's own seed, so the stream
            // (and every later fault) is what it was with one replica.
            let mut kind = kind;
            if let FaultKind::Kill(t, r) | FaultKind::Pause(t, r) = &mut kind {
                *r = ((gateway_seed >> 17) % u64::from(t.replicas())) as u8;
            }
            faults.push(Fault {
                at,
                kind,
                hold,
                gateway_seed,
            });
            at += hold + gap(&mut rng);
        }
        let cuts = Self::cuts(seed, duration, density);
        Self { seed, faults, cuts }
    }

    /// The second lane: cuts of the links between processes.
    fn cuts(seed: u64, duration: Duration, density: Density) -> Vec<Fault> {
        let mut rng = Rng::new(seed ^ 0x6375_745F_6C69_6E6B);
        let mut cuts = Vec::new();
        let mut at = density.warmup
            + rng.millis(
                density.min_cut_gap.as_millis() as u64,
                density.max_cut_gap.as_millis() as u64,
            );
        while at < duration {
            let link = Link::ALL[rng.below(Link::ALL.len() as u64) as usize];
            let mode = [Mode::Refuse, Mode::Drop, Mode::Stall][rng.below(3) as usize];
            let hold = rng.millis(1_000, 6_000);
            let gateway_seed = rng.next_u64();
            cuts.push(Fault {
                at,
                kind: FaultKind::CutCalls { link, mode },
                hold,
                gateway_seed,
            });
            at += hold
                + rng.millis(
                    density.min_cut_gap.as_millis() as u64,
                    density.max_cut_gap.as_millis() as u64,
                );
        }
        cuts
    }

    /// How many faults of each kind.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for f in self.faults.iter().chain(&self.cuts) {
            *counts.entry(f.kind.name()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let d = Duration::from_secs(600);
        let a = Schedule::generate(42, d, Density::default());
        let b = Schedule::generate(42, d, Density::default());
        let c = Schedule::generate(43, d, Density::default());
        assert_eq!(a, b);
        assert_ne!(a.faults, c.faults);
        assert_ne!(a.cuts, c.cuts);
        assert!(a.faults.len() > 50, "{}", a.faults.len());
        assert!(a.cuts.len() > 20, "{}", a.cuts.len());
    }

    #[test]
    fn a_long_schedule_has_every_kind_and_faults_do_not_overlap() {
        let s = Schedule::generate(7, Duration::from_secs(1_800), Density::default());
        let counts = s.counts();
        for kind in [
            "postgres restart",
            "gateway latency",
            "gateway 503s",
            "gateway acts, answer lost",
            "webhooks duplicated/reordered/delayed/lost",
            "client answers lost",
        ] {
            assert!(
                counts.get(kind).copied().unwrap_or(0) > 0,
                "{kind}: {counts:?}"
            );
        }
        for t in Target::ALL {
            assert!(
                counts.contains_key(&FaultKind::Kill(t, 0).name()),
                "{counts:?}"
            );
            assert!(
                counts.contains_key(&FaultKind::Pause(t, 0).name()),
                "{counts:?}"
            );
            for r in 0..t.replicas() {
                assert!(
                    s.faults.iter().any(|f| f.kind == FaultKind::Kill(t, r)),
                    "{t:?} replica {r} never killed"
                );
            }
        }
        for link in Link::ALL {
            for mode in [Mode::Refuse, Mode::Drop, Mode::Stall] {
                let kind = FaultKind::CutCalls { link, mode };
                assert!(counts.contains_key(&kind.name()), "{counts:?}");
            }
        }
        for lane in [&s.faults, &s.cuts] {
            for pair in lane.windows(2) {
                assert!(
                    pair[0].at + pair[0].hold < pair[1].at,
                    "{} / {}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The reference sequence of SplitMix64 from seed 0.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
