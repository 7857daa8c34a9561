//! Unix milliseconds, the wire contract's unit of time (deadlines, the
//! request id's timestamp, record timestamps).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `at` in unix milliseconds; 0 for times before 1970.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// The time `ms` unix milliseconds name.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Unix milliseconds `after` from now, e.g. for a deadline.
pub fn unix_ms_after(after: Duration) -> u64 {
    unix_ms(SystemTime::now() + after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip() {
        assert_eq!(unix_ms(from_unix_ms(1_764_480_000_123)), 1_764_480_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
