//! A log line that can come in floods (refused connections, failed handshakes, a full
//! disk) is written for the first few in a minute, then no more until the minute is
//! over, when the next one says how many were left out: a misbehaving client or a dying
//! SD card cannot fill the log, and a handful of distinct failures are all still seen.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines logged in one window before the rest are only counted.
const BURST: u64 = 10;
const WINDOW: Duration = Duration::from_secs(60);

pub struct Throttle {
    /// Start of the current window, lines logged in it, lines left out.
    state: Mutex<(Option<Instant>, u64, u64)>,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(left_out)` when this one should be logged, with how many were left out
    /// since the last one logged.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, logged, left_out) = &mut *st;
        if start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            *start = Some(now);
            *logged = 0;
        }
        if *logged >= BURST {
            *left_out += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(left_out))
    }
}

impl Throttle {
    /// Logs `refused connection addr=PEER listener=NAME: WHY` at warn level unless
    /// this throttle holds it back.
    pub fn refused(
        &self,
        peer: std::net::SocketAddr,
        listener: &str,
        why: std::fmt::Arguments<'_>,
    ) {
        if let Some(left_out) = self.check(Instant::now()) {
            log::warn!(
                "refused connection addr={peer} listener={listener}: {why}{}",
                self::left_out(left_out)
            );
        }
    }
}

/// What a throttled line ends with: how many like it were left out before it.
pub fn left_out(count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        format!(" ({count} more like it left out of the log)")
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_a_burst_then_counts_until_the_minute_is_over() {
        let t = Throttle::new();
        let now = Instant::now();
        for i in 0..BURST {
            assert_eq!(t.check(now + Duration::from_millis(i)), Some(0));
        }
        assert_eq!(t.check(now + Duration::from_secs(1)), None);
        assert_eq!(t.check(now + Duration::from_secs(2)), None);
        assert_eq!(t.check(now + Duration::from_secs(61)), Some(2));
        assert_eq!(t.check(now + Duration::from_secs(62)), Some(0));
    }
}
