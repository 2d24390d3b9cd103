//! A hybrid logical clock for the retained messages' last-writer-wins: wall-clock
//! milliseconds where the wall clock moves forward, a counter where it does not, and
//! never behind anything it has seen, its own past included. A Raspberry Pi without a
//! real-time clock may boot in 1970 and jump when NTP syncs: the high-water mark is
//! kept on disk (`cluster.state`) so a reboot into the past does not go backwards.

use std::sync::Mutex;

/// Bits of the counter below the milliseconds.
const COUNTER_BITS: u32 = 16;

pub struct Hlc {
    last: Mutex<u64>,
}

impl Hlc {
    /// A clock that never goes below `high_water` (what it reached before a restart).
    pub fn new(high_water: u64) -> Hlc {
        Hlc {
            last: Mutex::new(high_water),
        }
    }

    /// A new time, after every one given or seen so far; `wall_ms` is the wall clock.
    pub fn tick(&self, wall_ms: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let physical = wall_ms << COUNTER_BITS;
        *last = if physical > *last {
            physical
        } else {
            *last + 1
        };
        *last
    }

    /// Takes in a time another node gave, so that what this node writes next is later.
    pub fn observe(&self, remote: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(remote);
    }

    /// The latest time given or seen: what is kept across a restart.
    pub fn high_water(&self) -> u64 {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_whatever_the_wall_clock_does() {
        let clock = Hlc::new(0);
        let a = clock.tick(1_000);
        let b = clock.tick(1_000);
        let c = clock.tick(5); // NTP moved the clock back
        assert!(a < b && b < c);
        clock.observe(u64::from(u32::MAX) << COUNTER_BITS);
        assert!(clock.tick(2_000) > u64::from(u32::MAX) << COUNTER_BITS);
        let rebooted = Hlc::new(clock.high_water());
        assert!(
            rebooted.tick(0) > c,
            "a board booting in 1970 keeps going forward"
        );
    }
}
