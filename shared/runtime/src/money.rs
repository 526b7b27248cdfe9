//! Money as integer minor units of an ISO 4217 currency, and ISO 3166 country
//! codes. There is no floating point anywhere near money.

use std::fmt;

use ta_proto::common;

use crate::errors::Violations;

/// Officially assigned ISO 3166-1 alpha-2 codes.
const ISO_3166: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI \
BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ \
GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN \
KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS \
MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT \
PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF \
TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && ISO_3166.split_whitespace().any(|c| c == code)
}

/// An ISO 4217 currency in which money changes hands: its data (code, minor
/// unit exponent) comes from the `iso_currency` tables, never from an
/// assumption of two decimals (JPY has none, KWD three). Funds codes and
/// special codes without a minor unit (gold, testing, "no currency") are
/// refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Option<Self> {
        iso_currency::Currency::from_code(code)
            .filter(|c| c.exponent().is_some() && !c.is_fund())
            .map(Self)
    }

    pub fn as_str(&self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point of one major unit: 2 for USD, 0 for
    /// JPY, 3 for KWD.
    pub fn minor_unit_exponent(&self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of integer minor units in one currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// Validates a request's money field: present, known currency, positive amount.
    /// Records violations under `field` and returns `None` when invalid.
    pub fn positive_from_proto(
        field: &str,
        money: Option<&common::Money>,
        violations: &mut Violations,
    ) -> Option<Self> {
        let Some(money) = money else {
            violations.add(field, "is required");
            return None;
        };
        let currency = Currency::parse(&money.currency_code);
        if currency.is_none() {
            violations.add(
                format!("{field}.currency_code"),
                "must be an ISO 4217 currency code such as USD",
            );
        }
        if money.amount_minor <= 0 {
            violations.add(
                format!("{field}.amount_minor"),
                "must be a positive number of minor units",
            );
            return None;
        }
        currency.map(|currency| Self::new(money.amount_minor, currency))
    }

    pub fn to_proto(self) -> common::Money {
        common::Money {
            currency_code: self.currency.to_string(),
            amount_minor: self.amount_minor,
        }
    }
}

/// Money as people read it (timelines, messages): major units with
/// thousands grouped, as many decimals as the currency's minor unit has, and
/// the code after: `3,100.00 USD`, `-0.05 USD`, `123,456,789 JPY`.
pub fn readable(money: Money) -> String {
    let exponent = u32::from(money.currency.minor_unit_exponent());
    let scale = 10_i128.pow(exponent);
    // i128: the magnitude of i64::MIN has no i64.
    let minor = i128::from(money.amount_minor);
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.abs();
    let whole = (minor / scale).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let fraction = if exponent == 0 {
        String::new()
    } else {
        format!(".{:0width$}", minor % scale, width = exponent as usize)
    };
    format!("{sign}{grouped}{fraction} {}", money.currency)
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} minor units", self.currency, self.amount_minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_iso_4217() {
        assert!(Currency::parse("USD").is_some());
        assert!(Currency::parse("CNY").is_some());
        assert!(Currency::parse("usd").is_none());
        assert!(Currency::parse("XYZ").is_none());
        assert!(Currency::parse("US").is_none());
        assert!(Currency::parse("XAU").is_none(), "gold has no minor unit");
        assert!(Currency::parse("XTS").is_none(), "testing code");
        let exponent = |code| Currency::parse(code).map(|c| c.minor_unit_exponent());
        assert_eq!(exponent("USD"), Some(2));
        assert_eq!(exponent("JPY"), Some(0));
        assert_eq!(exponent("KWD"), Some(3));
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()),
            Some("EUR".into())
        );
    }

    #[test]
    fn money_reads_in_major_units_with_its_currency() {
        let currency = |code| Currency::parse(code).unwrap();
        let (usd, jpy, kwd) = (currency("USD"), currency("JPY"), currency("KWD"));
        assert_eq!(readable(Money::zero(usd)), "0.00 USD");
        assert_eq!(readable(Money::new(5, usd)), "0.05 USD");
        assert_eq!(readable(Money::new(-5, usd)), "-0.05 USD");
        assert_eq!(readable(Money::new(-1_050, usd)), "-10.50 USD");
        assert_eq!(readable(Money::new(123_450, usd)), "1,234.50 USD");
        assert_eq!(readable(Money::new(310_000, usd)), "3,100.00 USD");
        assert_eq!(readable(Money::new(99_999, usd)), "999.99 USD");
        assert_eq!(readable(Money::new(100_000, usd)), "1,000.00 USD");
        assert_eq!(
            readable(Money::new(i64::MAX, usd)),
            "92,233,720,368,547,758.07 USD"
        );
        assert_eq!(
            readable(Money::new(i64::MIN, usd)),
            "-92,233,720,368,547,758.08 USD"
        );
        assert_eq!(readable(Money::zero(jpy)), "0 JPY");
        assert_eq!(readable(Money::new(123_456_789, jpy)), "123,456,789 JPY");
        assert_eq!(readable(Money::new(-5, jpy)), "-5 JPY");
        assert_eq!(readable(Money::new(1_234_567, kwd)), "1,234.567 KWD");
        assert_eq!(readable(Money::new(-5, kwd)), "-0.005 KWD");
    }

    #[test]
    fn country_codes_are_iso_3166() {
        assert!(is_country_code("CN"));
        assert!(is_country_code("DE"));
        assert!(!is_country_code("XX"));
        assert!(!is_country_code("cn"));
        assert!(!is_country_code("CHN"));
    }

    #[test]
    fn positive_money_reports_each_bad_part() {
        let mut v = Violations::new();
        let bad = common::Money {
            currency_code: "DOLLARS".into(),
            amount_minor: -5,
        };
        assert_eq!(
            Money::positive_from_proto("amount", Some(&bad), &mut v),
            None
        );
        assert_eq!(Money::positive_from_proto("limit", None, &mut v), None);
        let err = v.finish(()).unwrap_err().to_string();
        assert!(err.contains("amount.currency_code"));
        assert!(err.contains("amount.amount_minor"));
        assert!(err.contains("limit: is required"));

        let mut v = Violations::new();
        let good = common::Money {
            currency_code: "USD".into(),
            amount_minor: 12_500,
        };
        let money = Money::positive_from_proto("amount", Some(&good), &mut v).unwrap();
        assert!(v.is_empty());
        assert_eq!(money.to_proto(), good);
    }
}
