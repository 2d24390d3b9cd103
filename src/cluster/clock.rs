//! A hybrid logical clock for the retained messages' last-writer-wins: wall-clock
//! milliseconds where the wall clock moves forward, a counter where it does not, and
//! never behind anything it has seen, its own past included. A Raspberry Pi without a
//! real-time clock may boot in 1970 and jump when NTP syncs: a mark ahead of the
//! high-water mark is kept on disk (`cluster.state`, see [`Hlc::reservation`]) so
//! that a reboot into the past, or a crash, does not go backwards.

use std::sync::Mutex;

/// Bits of the counter below the milliseconds.
const COUNTER_BITS: u32 = 16;

/// How far ahead of the high-water mark a kept reservation reaches: a node that
/// crashes starts again past anything it gave out, as long as the reservation was
/// renewed before the clock caught up with it (the cluster renews it at half-way).
const RESERVE_AHEAD_MS: u64 = 60_000;

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
            last.saturating_add(1)
        };
        *last
    }

    /// Takes in a time another node gave, so that what this node writes next is later.
    pub fn observe(&self, remote: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(remote);
    }

    /// The latest time given or seen.
    pub fn high_water(&self) -> u64 {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to keep across a restart: a time past every one given so far and past
    /// those given in the next [`RESERVE_AHEAD_MS`] of wall time.
    pub fn reservation(&self, wall_ms: u64) -> u64 {
        let from = self.high_water().max(wall_ms << COUNTER_BITS);
        from.saturating_add(RESERVE_AHEAD_MS << COUNTER_BITS)
    }

    /// Whether a kept `reservation` should be renewed: the clock is half-way to it.
    pub fn needs_reservation(&self, reservation: u64, wall_ms: u64) -> bool {
        let from = self.high_water().max(wall_ms << COUNTER_BITS);
        from.saturating_add((RESERVE_AHEAD_MS / 2) << COUNTER_BITS) >= reservation
    }
}

/// The wall-clock milliseconds of time `t`.
pub fn wall_ms_of(t: u64) -> u64 {
    t >> COUNTER_BITS
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
        rebooted.observe(u64::MAX);
        assert_eq!(rebooted.tick(0), u64::MAX, "a peer's absurd time saturates");
    }

    #[test]
    fn a_crash_restarts_past_everything_given_within_the_reservation() {
        let clock = Hlc::new(0);
        let kept = clock.reservation(1_000);
        assert!(!clock.needs_reservation(kept, 1_000));
        let given = clock.tick(1_000 + RESERVE_AHEAD_MS / 2 - 1);
        assert!(!clock.needs_reservation(kept, 1_000 + RESERVE_AHEAD_MS / 2 - 1));
        assert!(clock.needs_reservation(kept, 1_000 + RESERVE_AHEAD_MS / 2));
        // Crashed before renewing: it starts from the reservation.
        assert!(Hlc::new(kept).tick(0) > given);
        assert_eq!(wall_ms_of(Hlc::new(0).tick(5_000)), 5_000);
    }
}
