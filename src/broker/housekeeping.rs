//! The once-a-second tick: delayed wills and expired sessions (walked only once one
//! is due), the keep-alive sweep, queues shrunk after a burst, expired retained
//! messages; and shutdown's request to every connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Broker;
use super::session::{self, CloseReason, Session};
use crate::store::Op;

/// Hands the pages a drained burst freed back to the system. glibc keeps freed memory
/// for reuse and returns only the top of its heap, so the burst's messages, freed
/// between longer-lived allocations, would stay in RSS; `malloc_trim` returns every
/// whole free page. Called at most once a tick, and only once a burst has drained.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Broker {
    /// Makes [`Broker::tick`] look at the sessions again by `at`, when something of an
    /// offline session falls due then.
    pub(super) fn due_by(&self, at: Option<Instant>) {
        if at.is_some() {
            let mut next = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
            *next = session::earliest(*next, at);
        }
    }

    /// Publishes wills whose delay is over and ends sessions past their expiry, once
    /// one is due; forgets expired retained messages. Called about once a second.
    pub fn tick(&self, now: Instant) {
        let due = {
            let mut next = self.next_due.lock().unwrap_or_else(|p| p.into_inner());
            let due = next.is_some_and(|at| at <= now);
            if due {
                *next = None;
            }
            due
        };
        if due {
            self.end_due_sessions(now);
        }
        self.wake_silent(now);
        self.shrink_grown_queues();
        self.expire_moved(now);
        self.retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .purge_expired(now);
    }

    /// Milliseconds since the broker was made: the keep-alive sweep's clock.
    pub fn clock_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Wakes each connection that has heard nothing for 1.5 times its keep-alive; it
    /// closes itself ([`Client::is_silent`]). Forgets connections that have ended.
    pub(super) fn wake_silent(&self, now: Instant) {
        let now_ms = self.clock_ms(now);
        let mut watched = self.keep_alive.lock().unwrap_or_else(|p| p.into_inner());
        watched.retain(|link| {
            let Some(link) = link.upgrade() else {
                return false;
            };
            if link.is_silent(now_ms) {
                link.notify();
            }
            true
        });
        let len = watched.len();
        if watched.capacity() > 64 && len < watched.capacity() / 4 {
            watched.shrink_to(len * 2);
        }
    }

    pub(super) fn end_due_sessions(&self, now: Instant) {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        let mut next_due = None;
        for session in sessions {
            let (will, expired) = {
                let mut st = session.lock();
                if st.connected {
                    continue;
                }
                let will = match st.pending_will() {
                    Some(w) if w.1 <= now => st.take_pending_will().map(|w| w.0),
                    _ => None,
                };
                if will.is_some() && st.stored {
                    self.submit(vec![Op::SetWill {
                        sid: session.sid.get(),
                        will: None,
                    }]);
                }
                let expired = st.expires_at().is_some_and(|at| now >= at);
                if !expired {
                    next_due = session::earliest(next_due, st.next_deadline());
                }
                (will, expired)
            };
            if let Some(will) = will {
                self.publish(will, now);
            }
            if expired {
                log::info!("session expired client_id={}", session.client_id);
                self.remove_session(&session, now);
            }
        }
        self.due_by(next_due);
    }

    /// Shrinks the queues that grew in a burst and have drained since; keeps watching
    /// those still large.
    pub(super) fn shrink_grown_queues(&self) {
        let mut grown = self.grown_queues.lock().unwrap_or_else(|p| p.into_inner());
        if grown.is_empty() {
            return;
        }
        grown.retain(|session| {
            session
                .upgrade()
                .is_some_and(|session| session.lock().shrink_queue())
        });
        if grown.is_empty() {
            *grown = Vec::new();
            // Once every burst has drained: trimming while queues are still busy
            // would hand back pages they take again at once (fan-out lost 3-4 %).
            release_freed_memory();
        }
    }

    /// Asks every connection to close with 0x8B (server shutting down).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.close_taps();
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in sessions {
            let mut st = session.lock();
            if st.connected {
                st.close_reason.get_or_insert(CloseReason::ShuttingDown);
                drop(st);
                session.notify_owner();
            }
        }
    }
}
