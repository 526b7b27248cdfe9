//! Durations as settings are written (`250ms`, `30s`, `7d`, a bare number of
//! seconds) and the range each setting allows. A leaf module: the server's
//! settings (`config`) and the authentication settings (`auth::config`) both
//! read durations, and neither imports the other's module for it.

use std::time::Duration;

use clap::builder::TypedValueParser;

/// Parses durations the humantime way (`250ms`, `30s`, `5m`, `2h`, `7d`,
/// `1h 30m`); a bare number is seconds, as Kubernetes manifests often write.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{text}` is too long"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration such as 500ms, 30s, 5m, 2h or 3d ({e})"))
}

/// A clap value parser for durations within `[min, max]`.
#[derive(Clone, Copy, Debug)]
pub struct DurationRange {
    min: Duration,
    max: Duration,
}

impl DurationRange {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// The duration in `text`, if it lies in the range.
    pub fn check(&self, text: &str) -> Result<Duration, String> {
        let value = parse_duration(text)?;
        if value < self.min || value > self.max {
            return Err(format!(
                "`{text}` is out of range: use {} to {}",
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            ));
        }
        Ok(value)
    }
}

impl TypedValueParser for DurationRange {
    type Value = Duration;

    fn parse_ref(
        &self,
        command: &clap::Command,
        argument: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Duration, clap::Error> {
        let invalid = |reason: String| {
            let name = argument
                .and_then(|a| a.get_value_names())
                .and_then(|names| names.first())
                .map_or_else(|| "value".to_owned(), |n| n.to_string());
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {name}: {reason}\n"),
            )
            .with_cmd(command)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".to_owned()))?;
        self.check(text).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILLISECOND: Duration = Duration::from_millis(1);
    const HOUR: Duration = Duration::from_secs(3_600);

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(259_200)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn rejects_garbage_with_a_readable_reason() {
        for bad in ["", "ten", "10x", "-1s", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration("ten")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn ranges_refuse_values_outside_them() {
        let range = DurationRange::new(MILLISECOND, HOUR);
        assert_eq!(range.check("30s"), Ok(Duration::from_secs(30)));
        assert!(range.check("0s").unwrap_err().contains("out of range"));
        assert!(range.check("2h").unwrap_err().contains("out of range"));
    }
}
