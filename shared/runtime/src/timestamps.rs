//! Conversions between `time` and protobuf timestamps.

use time::OffsetDateTime;

use crate::Violations;

/// Now, at the microsecond precision Postgres keeps, so that what a call
/// returns equals what a later read (or an idempotent replay) returns.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

pub fn to_proto(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a time, when it is one `time` can represent.
pub fn from_proto(at: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    if !(0..1_000_000_000).contains(&at.nanos) {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos),
    )
    .ok()
}

/// The request field `field`, an optional timestamp: unset is `None`; one
/// `time` cannot represent is a violation of `field` (and `None`).
pub fn parse_optional(
    field: &str,
    at: Option<&prost_types::Timestamp>,
    v: &mut Violations,
) -> Option<OffsetDateTime> {
    let at = at?;
    let parsed = from_proto(at);
    if parsed.is_none() {
        v.add(field, "is not a valid timestamp");
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_has_microsecond_precision() {
        assert_eq!(now().nanosecond() % 1_000, 0);
    }

    #[test]
    fn keeps_seconds_and_nanos() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let ts = to_proto(at);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
        assert_eq!(from_proto(&ts), Some(at));
        let out_of_range = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(from_proto(&out_of_range), None);
        let bad_nanos = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(from_proto(&bad_nanos), None);
    }

    #[test]
    fn an_optional_timestamp_is_none_when_unset_and_a_violation_when_out_of_range() {
        let mut v = Violations::new();
        assert_eq!(parse_optional("at", None, &mut v), None);
        assert!(v.is_empty());
        let at = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(parse_optional("at", Some(&at), &mut v), from_proto(&at));
        assert!(v.is_empty());
        let out_of_range = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(parse_optional("at", Some(&out_of_range), &mut v), None);
        assert!(!v.is_empty());
    }
}
