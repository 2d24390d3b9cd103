//! A log line that can come in floods (refused connections, a full disk) is written
//! the first time, then at most once a minute with a count of those left out, so a
//! misbehaving client or a dying SD card cannot fill the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs the first of a kind of warning, then at most one a minute with a count of
/// those suppressed in between.
pub struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when this one should be logged.
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(60) => {
                st.1 += 1;
                None
            }
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                Some(suppressed)
            }
        }
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
    fn throttle_logs_first_then_once_a_minute() {
        let t = Throttle::new();
        let now = Instant::now();
        assert_eq!(t.check(now), Some(0));
        assert_eq!(t.check(now + Duration::from_secs(1)), None);
        assert_eq!(t.check(now + Duration::from_secs(2)), None);
        assert_eq!(t.check(now + Duration::from_secs(61)), Some(2));
    }
}
