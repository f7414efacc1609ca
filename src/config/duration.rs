//! Durations as the configuration writes them: `"250ms"`, `"10s"`, `"5m"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration that parsed from the contract's string form; it cannot hold a bad value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a duration is, in the message for a value that is not a string.
pub(super) const EXPECTED: &str = "a duration string like \"250ms\", \"10s\", \"5m\" or \"1h\"";

/// A duration as `{:?}` writes it (`250ms`, `1s`, `1.5s`, `3600s`), for log lines: `Debug`
/// itself would link `Duration`'s decimal formatting (~2 KB of the module) for one warning.
pub fn as_debug(duration: Duration) -> String {
    let nanos = duration.subsec_nanos();
    let (whole, fraction, digits, unit) = if duration.as_secs() > 0 {
        (duration.as_secs(), nanos, 9, "s")
    } else if nanos >= 1_000_000 {
        (u64::from(nanos / 1_000_000), nanos % 1_000_000, 6, "ms")
    } else if nanos >= 1_000 {
        (u64::from(nanos / 1_000), nanos % 1_000, 3, "\u{b5}s")
    } else {
        (u64::from(nanos), 0, 0, "ns")
    };
    let mut text = whole.to_string();
    if fraction > 0 {
        let fraction = format!("{fraction:0digits$}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push_str(unit);
    text
}

/// Parses `<whole number><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?} (use a whole number and ms, s, m or h, like \"250ms\" or \"10s\")")
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let value: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    let millis = value.checked_mul(millis_per_unit).ok_or_else(invalid)?;
    Ok(Duration::from_millis(millis))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_debug_writes_what_debug_writes() {
        let mut samples: Vec<Duration> = (0..=200_000).map(Duration::from_millis).collect();
        samples.extend((0..=5_000).map(Duration::from_micros));
        samples.extend((0..=5_000).map(Duration::from_nanos));
        samples.extend([
            Duration::from_secs(3_600),
            Duration::from_secs(86_400 * 365),
            Duration::new(1, 1),
            Duration::new(12, 340_000_000),
            Duration::from_nanos(1_000_001),
            Duration::from_nanos(1_234_567),
            Duration::MAX,
        ]);
        for duration in samples {
            assert_eq!(as_debug(duration), format!("{duration:?}"));
        }
    }

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_is_not_number_and_unit() {
        for bad in [
            "",
            "s",
            "1 sec",
            "1",
            "1.5s",
            "-1s",
            "10d",
            "1S",
            " 1s",
            "99999999999999999999h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn overflow_is_refused_not_wrapped() {
        assert!(parse_duration("18446744073709551615h").is_err());
    }
}
