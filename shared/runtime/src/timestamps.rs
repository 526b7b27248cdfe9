//! Conversions between `time` and protobuf timestamps.

use time::OffsetDateTime;

pub fn to_proto(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_seconds_and_nanos() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let ts = to_proto(at);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }
}
