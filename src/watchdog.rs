//! The systemd watchdog, made to mean something: `WATCHDOG=1` goes out only while every
//! executor thread is still running its tasks. Each worker thread polls a probe next to
//! the executor (`Heartbeats::probe`), which stamps that thread's heartbeat; one plain
//! thread sends `WATCHDOG=1` when every stamp is fresh. A thread stuck in a task (a
//! blocking call, an endless loop) stops stamping, the pings stop, and systemd restarts
//! the broker after `WatchdogSec`. A timer on a healthy thread would keep pinging for a
//! broker whose other threads hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::systemd;

/// One heartbeat per executor thread: milliseconds since `started` at its last probe.
pub struct Heartbeats {
    started: Instant,
    beats: Box<[AtomicU64]>,
    /// How often each thread's probe stamps its heartbeat.
    period: Duration,
    /// Set at shutdown, when the executor threads stop on purpose.
    stopping: AtomicBool,
}

impl Heartbeats {
    /// Heartbeats for `threads` executor threads, each probed every `period`.
    pub fn new(threads: usize, period: Duration) -> Arc<Self> {
        Arc::new(Heartbeats {
            started: Instant::now(),
            beats: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            period,
            stopping: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Stamps `thread`'s heartbeat every period, forever. Run it on that thread beside
    /// the executor (`executor.run(probe.or(...))`), never as a spawned task: a task may
    /// be stolen by another thread, and would then vouch for the wrong one.
    pub async fn probe(&self, thread: usize) {
        loop {
            self.beats[thread].store(self.now_ms(), Ordering::Relaxed);
            debug_stall(thread, self.started);
            smol::Timer::after(self.period).await;
        }
    }

    /// Ends the pinger: the executor threads are about to stop, which is no stall.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The threads whose last heartbeat is older than `max_age`, with that age.
    pub fn stalled(&self, max_age: Duration) -> Vec<(usize, Duration)> {
        let now = self.now_ms();
        self.beats
            .iter()
            .enumerate()
            .filter_map(|(thread, beat)| {
                let age = Duration::from_millis(now.saturating_sub(beat.load(Ordering::Relaxed)));
                (age > max_age).then_some((thread, age))
            })
            .collect()
    }
}

/// The probe period for a ping interval: several probes fit in one interval, so one late
/// timer does not cost a ping, and at most one a second keeps idle boards idle.
pub fn probe_period(ping_interval: Duration) -> Duration {
    (ping_interval / 4).min(Duration::from_secs(1))
}

/// Starts the thread that sends `WATCHDOG=1` every `interval` while no executor thread
/// has missed its probe for a whole interval. A stall is logged once when it starts and
/// once when it ends; systemd learns of it through `STATUS=`.
pub fn start_pinger(heartbeats: Arc<Heartbeats>, interval: Duration) -> std::io::Result<()> {
    let max_age = interval.max(heartbeats.period * 2);
    thread::Builder::new()
        .name("tern-watchdog".into())
        .spawn(move || {
            let mut was_stalled = false;
            while !heartbeats.stopping.load(Ordering::Relaxed) {
                let stalled = heartbeats.stalled(max_age);
                if stalled.is_empty() {
                    if was_stalled {
                        log::warn!("every executor thread runs again: WATCHDOG=1 resumes");
                        systemd::notify("STATUS=accepting MQTT connections");
                    }
                    systemd::notify("WATCHDOG=1");
                } else if !was_stalled {
                    let list = stalled
                        .iter()
                        .map(|(thread, age)| format!("tern-worker-{thread} ({age:?})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    log::error!(
                        "executor thread stalled, no probe for longer than {max_age:?}: {list}; WATCHDOG=1 withheld so that systemd restarts the broker"
                    );
                    systemd::notify(&format!("STATUS=executor thread stalled: {list}"));
                }
                was_stalled = !stalled.is_empty();
                thread::sleep(interval);
            }
        })
        .map(drop)
}

/// Debug builds only: `TERN_DEBUG_STALL="THREAD AFTER_MS"` blocks executor thread
/// THREAD for good once AFTER_MS have passed since start, so a test can watch the
/// watchdog notice. Release builds have no such hook.
#[cfg(debug_assertions)]
fn debug_stall(thread: usize, started: Instant) {
    let Ok(spec) = std::env::var("TERN_DEBUG_STALL") else {
        return;
    };
    let mut parts = spec.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(target)), Some(Ok(after_ms))) = (parts.next(), parts.next()) else {
        return;
    };
    if target as usize == thread && started.elapsed() >= Duration::from_millis(after_ms) {
        log::warn!("TERN_DEBUG_STALL: blocking tern-worker-{thread} for good");
        loop {
            thread::park();
        }
    }
}

#[cfg(not(debug_assertions))]
fn debug_stall(_: usize, _: Instant) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_without_a_fresh_probe_is_stalled() {
        let heartbeats = Heartbeats::new(2, Duration::from_millis(10));
        assert!(heartbeats.stalled(Duration::from_secs(1)).is_empty());
        thread::sleep(Duration::from_millis(30));
        heartbeats.beats[1].store(heartbeats.now_ms(), Ordering::Relaxed);
        let stalled = heartbeats.stalled(Duration::from_millis(20));
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, 0);
    }

    #[test]
    fn probes_are_frequent_but_at_most_one_a_second() {
        assert_eq!(
            probe_period(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(
            probe_period(Duration::from_secs(15)),
            Duration::from_secs(1)
        );
    }
}
