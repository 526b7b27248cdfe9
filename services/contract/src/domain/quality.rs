//! Measurable quality criteria and how a measured value is judged against
//! them. Values are exact decimals (never floats): "1.20 mm at least" must
//! judge 1.2 as a pass on every machine.

use std::cmp::Ordering;

/// At most this many digits in a value, so aligned values fit an i128.
const MAX_DIGITS: usize = 18;

/// An exact decimal: `mantissa * 10^-scale`.
#[derive(Clone, Copy, Debug)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// `-12.5`, `0.003`, `40`; no exponent, no thousands separators.
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || (digits.contains('.') && fraction.is_empty())
            || whole.len() + fraction.len() > MAX_DIGITS
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let magnitude: i128 = format!("{whole}{fraction}").parse().ok()?;
        Some(Decimal {
            mantissa: if negative { -magnitude } else { magnitude },
            scale: fraction.len() as u32,
        })
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// Both mantissas at the larger scale.
    fn aligned(self, other: Decimal) -> (i128, i128, u32) {
        let scale = self.scale.max(other.scale);
        let lift = |d: Decimal| d.mantissa * 10_i128.pow(scale - d.scale);
        (lift(self), lift(other), scale)
    }

    fn abs_difference(self, other: Decimal) -> Decimal {
        let (a, b, scale) = self.aligned(other);
        Decimal {
            mantissa: (a - b).abs(),
            scale,
        }
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b, _) = self.aligned(*other);
        a.cmp(&b)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparator {
    AtLeast,
    AtMost,
    Equal,
    WithinTolerance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
}

/// What a criterion demands, in numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub comparator: Comparator,
    pub target: Decimal,
    /// Only for `WithinTolerance`; non-negative.
    pub tolerance: Option<Decimal>,
}

impl Requirement {
    /// The outcome the measurement implies. An inspection report whose stated
    /// outcome differs is refused, so a report cannot pass what it measured
    /// as failing.
    pub fn judge(&self, measured: Decimal) -> Outcome {
        let pass = match self.comparator {
            Comparator::AtLeast => measured >= self.target,
            Comparator::AtMost => measured <= self.target,
            Comparator::Equal => measured == self.target,
            Comparator::WithinTolerance => {
                let tolerance = self.tolerance.unwrap_or(Decimal {
                    mantissa: 0,
                    scale: 0,
                });
                measured.abs_difference(self.target) <= tolerance
            }
        };
        if pass { Outcome::Pass } else { Outcome::Fail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text} should parse"))
    }

    #[test]
    fn decimals_parse_exactly_and_compare_across_scales() {
        assert_eq!(d("1.20"), d("1.2"));
        assert!(d("0.1") < d("0.10001"));
        assert!(d("-3") < d("-2.999"));
        assert_eq!(d("40"), d("40.000"));
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1,5",
            "1e3",
            "+1",
            "1.2.3",
            "١٢",
            &"9".repeat(19),
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad} should be refused");
        }
    }

    #[test]
    fn each_comparator_judges_at_its_boundary() {
        let at_least = Requirement {
            comparator: Comparator::AtLeast,
            target: d("1.20"),
            tolerance: None,
        };
        assert_eq!(at_least.judge(d("1.2")), Outcome::Pass);
        assert_eq!(at_least.judge(d("1.19")), Outcome::Fail);
        let at_most = Requirement {
            comparator: Comparator::AtMost,
            target: d("2.5"),
            tolerance: None,
        };
        assert_eq!(at_most.judge(d("2.50")), Outcome::Pass);
        assert_eq!(at_most.judge(d("2.501")), Outcome::Fail);
        let equal = Requirement {
            comparator: Comparator::Equal,
            target: d("24"),
            tolerance: None,
        };
        assert_eq!(equal.judge(d("24.0")), Outcome::Pass);
        assert_eq!(equal.judge(d("23")), Outcome::Fail);
        let within = Requirement {
            comparator: Comparator::WithinTolerance,
            target: d("10.0"),
            tolerance: Some(d("0.05")),
        };
        assert_eq!(within.judge(d("9.95")), Outcome::Pass);
        assert_eq!(within.judge(d("10.05")), Outcome::Pass);
        assert_eq!(within.judge(d("10.051")), Outcome::Fail);
        assert_eq!(within.judge(d("9.9")), Outcome::Fail);
    }
}
