//! Whether a new connection may go on: limits on connections open at once (all
//! listeners together, and per listener) and on new connections a second from one
//! source address. A refused client still gets a CONNACK that says why (0x89 server
//! busy, 0x9F connection rate exceeded; 3.x: 0x03 server unavailable), and the log
//! line for it is throttled so a flood cannot fill an SD card.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::ReasonCode;

/// Limits shared by every listener.
pub struct Admission {
    open: Arc<AtomicUsize>,
    max_open: usize,
    rate: Option<RateLimit>,
}

/// One listener's view: its own count and limit, and the shared ones.
#[derive(Clone)]
pub struct ListenerAdmission {
    shared: Arc<Admission>,
    counts: Arc<Counts>,
    max_open: Option<usize>,
}

/// Connections open on one listener, beside those open on all of them: one pointer
/// in each connection's [`Slot`].
struct Counts {
    all: Arc<AtomicUsize>,
    listener: AtomicUsize,
}

pub enum Verdict {
    Admit(Slot),
    Refuse(ReasonCode, String),
}

/// Holds a place in the open-connection counts until dropped.
pub struct Slot {
    counts: Arc<Counts>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.all.fetch_sub(1, Ordering::AcqRel);
        self.counts.listener.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_open: usize, max_rate_per_source: u32) -> Arc<Admission> {
        Arc::new(Admission {
            open: Arc::new(AtomicUsize::new(0)),
            max_open,
            rate: (max_rate_per_source > 0).then(|| RateLimit::new(max_rate_per_source)),
        })
    }

    pub fn listener(self: &Arc<Admission>, max_open: Option<usize>) -> ListenerAdmission {
        ListenerAdmission {
            shared: self.clone(),
            counts: Arc::new(Counts {
                all: self.open.clone(),
                listener: AtomicUsize::new(0),
            }),
            max_open,
        }
    }
}

impl ListenerAdmission {
    pub fn admit(&self, source: IpAddr, now: Instant) -> Verdict {
        if let Some(rate) = &self.shared.rate {
            if !rate.allow(source, now) {
                return Verdict::Refuse(
                    ReasonCode::CONNECTION_RATE_EXCEEDED,
                    format!(
                        "more than {} new connections a second from {source}",
                        rate.per_second
                    ),
                );
            }
        }
        let total = self.counts.all.fetch_add(1, Ordering::AcqRel) + 1;
        let mine = self.counts.listener.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot {
            counts: self.counts.clone(),
        };
        if total > self.shared.max_open {
            return Verdict::Refuse(
                ReasonCode::SERVER_BUSY,
                format!(
                    "{} connections open, the max_connections limit",
                    self.shared.max_open
                ),
            );
        }
        if let Some(max) = self.max_open.filter(|max| mine > *max) {
            return Verdict::Refuse(
                ReasonCode::SERVER_BUSY,
                format!("{max} connections open on this listener"),
            );
        }
        Verdict::Admit(slot)
    }
}

/// A token bucket per source address, one second's worth deep.
struct RateLimit {
    per_second: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 10_000 {
            // Forget sources that have been quiet long enough to be full again.
            buckets.retain(|_, (_, last)| now.duration_since(*last) < Duration::from_secs(2));
        }
        let (tokens, last) = buckets.entry(source).or_insert((rate, now));
        // clamp compares; f64::min would be a libm call on 32-bit ARM.
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).clamp(0.0, rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connection_limits_and_slots() {
        let shared = Admission::new(3, 0);
        let a = shared.listener(Some(2));
        let b = shared.listener(None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        let s1 = match a.admit(ip, now) {
            Verdict::Admit(s) => s,
            _ => panic!(),
        };
        let _s2 = match a.admit(ip, now) {
            Verdict::Admit(s) => s,
            _ => panic!(),
        };
        assert!(
            matches!(
                a.admit(ip, now),
                Verdict::Refuse(ReasonCode::SERVER_BUSY, _)
            ),
            "listener limit"
        );
        let _s3 = match b.admit(ip, now) {
            Verdict::Admit(s) => s,
            _ => panic!(),
        };
        assert!(
            matches!(
                b.admit(ip, now),
                Verdict::Refuse(ReasonCode::SERVER_BUSY, _)
            ),
            "total limit"
        );
        drop(s1);
        assert!(
            matches!(b.admit(ip, now), Verdict::Admit(_)),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn rate_per_source() {
        let shared = Admission::new(100, 2);
        let l = shared.listener(None);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        assert!(matches!(l.admit(a, now), Verdict::Admit(_)));
        assert!(matches!(l.admit(a, now), Verdict::Admit(_)));
        assert!(matches!(
            l.admit(a, now),
            Verdict::Refuse(ReasonCode::CONNECTION_RATE_EXCEEDED, _)
        ));
        assert!(
            matches!(l.admit(b, now), Verdict::Admit(_)),
            "other sources are not affected"
        );
        assert!(
            matches!(
                l.admit(a, now + Duration::from_millis(600)),
                Verdict::Admit(_)
            ),
            "refills"
        );
    }
}
