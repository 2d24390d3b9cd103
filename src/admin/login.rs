//! Failed logins to the API and dashboard, per source address (an IPv6 address by its
//! /64, which one host may hold whole): an operator may set a short `app_secret`, so
//! each failure past the first few makes that address wait longer (250 ms, doubling,
//! at most 30 s) before its answer, and any request from it during the wait is turned
//! away with 429 unchecked. Other addresses are not touched, so a guesser cannot lock
//! the operator out. Failures are forgiven after 15 quiet minutes, not by a success:
//! behind a NAT the operator's page and a guesser share an address, and the page's
//! polls must not reset the guesser's count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Failures an address may make before it waits.
const FREE_FAILURES: u32 = 3;
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// Addresses remembered, at most; past it those quiet longest are forgotten.
const ADDRESSES: usize = 4096;
/// An address that has failed nothing for this long starts afresh.
const FORGIVEN_AFTER: Duration = Duration::from_secs(15 * 60);

struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
}

#[derive(Default)]
pub struct LoginGuard {
    addresses: Mutex<HashMap<IpAddr, Failures>>,
    /// Failed logins, and requests turned away while their address waited.
    pub failures: AtomicU64,
    pub turned_away: AtomicU64,
}

impl LoginGuard {
    /// `Err(retry_after)` while `ip` must wait after its last failure.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = source(ip);
        let addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        match addresses.get(&ip) {
            Some(f) if f.wait_until > now => {
                self.turned_away.fetch_add(1, Ordering::Relaxed);
                Err(f.wait_until - now)
            }
            _ => Ok(()),
        }
    }

    /// Records a failure from `ip`; how long its answer waits.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let ip = source(ip);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if addresses.len() >= ADDRESSES && !addresses.contains_key(&ip) {
            addresses.retain(|_, f| now.duration_since(f.last) < FORGIVEN_AFTER);
            if addresses.len() >= ADDRESSES {
                let quietest = addresses
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(ip, _)| *ip);
                addresses.remove(&quietest.expect("the map is full"));
            }
        }
        let f = addresses.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
            wait_until: now,
        });
        if now.duration_since(f.last) >= FORGIVEN_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        let wait = wait_after(f.count);
        f.wait_until = now + wait;
        wait
    }
}

/// The address failures are counted by: an IPv6 address's /64.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked above")),
        v4 => v4,
    }
}

/// The wait after an address's `count`th failure in a row.
fn wait_after(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    (FIRST_WAIT * 2u32.pow(doublings)).min(LONGEST_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_are_capped() {
        let waits: Vec<u64> = (1..=12).map(|n| wait_after(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [
                0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000
            ]
        );
    }

    #[test]
    fn one_address_waiting_leaves_the_others_alone() {
        let guard = LoginGuard::default();
        let (guesser, operator) = ("10.0.0.9".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let now = Instant::now();
        for _ in 0..5 {
            guard.failed(guesser, now);
        }
        assert!(guard.check(guesser, now).is_err());
        assert!(guard.check(operator, now).is_ok());
        assert!(guard.check(guesser, now + LONGEST_WAIT).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_slash_64() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for i in 0..5 {
            guard.failed(format!("2001:db8::{i}").parse().unwrap(), now);
        }
        assert!(guard.check("2001:db8::ffff".parse().unwrap(), now).is_err());
        assert!(guard.check("2001:db8:0:1::1".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn failures_are_forgiven_after_quiet_minutes() {
        let guard = LoginGuard::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            guard.failed(ip, now);
        }
        assert_eq!(guard.failed(ip, now + FORGIVEN_AFTER), Duration::ZERO);
    }
}
