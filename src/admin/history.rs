//! The broker's recent past for the dashboard's charts: a sample every 10 s for the
//! last hour, kept in memory (about 30 KB), so a page that opens shows an hour at
//! once instead of starting an empty chart. Counters are cumulative; the page takes
//! differences between samples for rates.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::broker::Broker;

pub const INTERVAL: Duration = Duration::from_secs(10);
/// An hour of samples.
pub const KEPT: usize = 360;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: u64,
    pub connections: i64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    pub store_bytes: Option<u64>,
    pub memory: u64,
}

impl Sample {
    /// The broker's figures now; `memory` is the process's resident bytes.
    pub fn of(broker: &Broker, memory: u64, wall: SystemTime) -> Sample {
        let m = &broker.metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            t: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            connections: m.clients_connected.load(Ordering::Relaxed),
            messages_in: get(&m.messages_received),
            messages_out: get(&m.messages_sent),
            bytes_in: get(&m.bytes_received),
            bytes_out: get(&m.bytes_sent),
            dropped: get(&m.dropped_queue_full)
                + get(&m.dropped_too_large)
                + get(&m.dropped_expired)
                + get(&m.dropped_payload_format)
                + get(&m.dropped_by_peer),
            store_bytes: broker.store().map(|s| s.figures().2),
            memory,
        }
    }
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_is_kept_and_the_oldest_goes_first() {
        let history = History::default();
        let broker = Broker::new(Default::default(), std::time::Instant::now());
        for i in 0..KEPT as u64 + 5 {
            let at = UNIX_EPOCH + Duration::from_secs(i * 10);
            history.push(Sample::of(&broker, 0, at));
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0].t, 50);
    }
}
