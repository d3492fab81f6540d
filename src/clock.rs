//! Time, injected (house rule 6).
//!
//! Logic never calls `SystemTime::now()`; it takes a [`Clock`]. Production uses [`SystemClock`],
//! tests use [`ManualClock`] to move time forward without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Current time as whole seconds since the Unix epoch.
    fn now_unix(&self) -> i64;

    /// Current time as an `OffsetDateTime` (UTC, whole seconds).
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.now_unix()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(unix: i64) -> Self {
        ManualClock(AtomicI64::new(unix))
    }
    pub fn set(&self, unix: i64) {
        self.0.store(unix, Ordering::SeqCst);
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 rendering of a Unix time, for files people read (`identity.json`, status output).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parse a duration such as `90s`, `15m`, `24h`, `30d` (one unit, whole numbers).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a whole number and a unit, e.g. 15m"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration {s:?}: unit must be one of s, m, h, d")),
    };
    if n == 0 {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// Render a duration in the same units [`parse_duration`] reads (largest exact unit).
pub fn format_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s > 0 && s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s > 0 && s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_and_render() {
        let table: &[(&str, Option<u64>)] = &[
            ("90s", Some(90)),
            ("15m", Some(900)),
            ("24h", Some(86_400)),
            ("30d", Some(2_592_000)),
            (" 5m ", Some(300)),
            ("0s", None),
            ("15", None),
            ("m", None),
            ("1.5h", None),
            ("-1h", None),
            ("10w", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in table {
            let got = parse_duration(input).ok().map(|d| d.as_secs());
            assert_eq!(got, *want, "input {input:?}");
        }
        for secs in [1u64, 59, 60, 900, 3600, 86_400, 90_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_unix(), 1_000);
        c.advance(60);
        assert_eq!(c.now_unix(), 1_060);
        c.set(5);
        assert_eq!(c.now_unix(), 5);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
