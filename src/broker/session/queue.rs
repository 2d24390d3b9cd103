//! A session's queue and the overload rules: what a full queue does with each
//! delivery (drop QoS 0, refuse into a strict outbox, close a clean QoS 1/2
//! subscriber with 0x97), the high-water mark that holds publishers back, and the
//! room a burst leaves behind.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{CloseReason, Session, SessionState, add_op, done_op};
use crate::message::{Delivery, Message};
use crate::protocol::QoS;
use crate::store::{Op, Store};

/// What [`Session::deliver`] did.
pub struct Delivered {
    /// Publishers should wait for this session to drain.
    pub pressure: bool,
    pub dropped: u64,
    /// Messages a full bridge outbox refused: their publishers must not be acknowledged.
    pub refused: Vec<Arc<Message>>,
    /// The queue's buffer grew past [`QUEUE_KEPT`]: the broker watches it until
    /// [`SessionState::shrink_queue`] has given the burst's room back.
    pub grew: bool,
}

/// Deliveries' room a queue keeps between bursts (64 bytes each). A queue that grew
/// past it is shrunk by the broker's tick once drained, not as it drains: giving the
/// buffer back on every drain cost fan-out about 10 % in page faults.
pub const QUEUE_KEPT: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for persistent sessions while they are offline.
    pub queue_qos0_offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// `pressure`: the queue is past half its limit, so the publisher should pause
    /// until it drains (back-pressure) rather than push it over the edge.
    Queued { was_empty: bool, pressure: bool },
    /// QoS 0 to a full queue, or to a session that is offline: dropped and counted.
    Dropped,
    /// QoS 1/2 to a full queue of a session that made no durability promise: its
    /// connection is closed with 0x97 (quota exceeded).
    Overflow,
    /// QoS 1/2 to a full bridge outbox under `strict`: not queued, and its publisher is
    /// refused rather than acknowledged (the design guide's overload rule).
    Refused,
}

/// An outbox (a bridge's, or what waits for a cluster peer): its own bounds, and what
/// it does when they are reached.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub limits: QueueLimits,
    /// Make room by dropping the oldest message (`batched`, `memory`); otherwise a full
    /// outbox refuses QoS 1/2 messages (`strict`).
    pub drops_oldest: bool,
}

/// Past this many queued messages or bytes, publishers wait for the queue to drain.
fn high_water(limits: &QueueLimits) -> (usize, usize) {
    (limits.max_queued_messages / 2, limits.max_queued_bytes / 2)
}

impl Session {
    /// Queues several deliveries under one lock and wakes the connection at most once;
    /// for a stored session, appends the ops that store them to `ops`.
    pub fn deliver(
        &self,
        deliveries: Vec<Delivery>,
        limits: &QueueLimits,
        store: Option<&Store>,
        ops: &mut Vec<Op>,
    ) -> Delivered {
        let mut st = self.lock();
        let was_empty = st.queue.is_empty();
        let kept_before = st.queue.capacity() <= QUEUE_KEPT;
        let (mut pressure, mut dropped, mut overflow) = (false, 0, false);
        let mut refused = Vec::new();
        let store = store.filter(|_| st.stored).map(|s| (s, self.sid.get()));
        for delivery in deliveries {
            let message = delivery.message.clone();
            match st.enqueue(delivery, limits, store, ops) {
                Enqueued::Queued { pressure: p, .. } => pressure |= p,
                Enqueued::Dropped => dropped += 1,
                Enqueued::Overflow => {
                    dropped += 1;
                    overflow = true;
                }
                Enqueued::Refused => refused.push(message),
            }
        }
        let wake = overflow || (was_empty && !st.queue.is_empty());
        let link = if wake { st.link.clone() } else { None };
        let grew = kept_before && st.queue.capacity() > QUEUE_KEPT;
        drop(st);
        if let Some(link) = link {
            link.notify();
        }
        Delivered {
            pressure,
            dropped,
            refused,
            grew,
        }
    }
}

impl SessionState {
    /// Gives back what a drained burst left in the queue's buffer: all of it when the
    /// queue is empty, else down to twice what it holds. Whether the buffer is still
    /// larger than [`QUEUE_KEPT`].
    pub fn shrink_queue(&mut self) -> bool {
        let Some(queue) = self.queue.get_mut() else {
            return false;
        };
        if queue.len() * 4 <= queue.capacity() {
            queue.shrink_to(queue.len() * 2);
        }
        let still_large = queue.capacity() > QUEUE_KEPT;
        self.queue.tidy();
        still_large
    }

    pub(super) fn enqueue(
        &mut self,
        delivery: Delivery,
        limits: &QueueLimits,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> Enqueued {
        let outcome = self.try_enqueue(delivery, limits, store, ops);
        if matches!(
            outcome,
            Enqueued::Dropped | Enqueued::Overflow | Enqueued::Refused
        ) {
            self.dropped += 1;
        }
        outcome
    }

    /// Whether the queue has no room for `size` more bytes.
    pub(super) fn is_full(&self, limits: &QueueLimits, size: usize) -> bool {
        let (backlog_messages, backlog_bytes) = self.backlog().unwrap_or_default();
        self.queue.len() + backlog_messages >= limits.max_queued_messages
            || self.queued_bytes + backlog_bytes + size > limits.max_queued_bytes
    }

    /// Drops the oldest queued messages until `size` more bytes fit; false when the
    /// queue holds nothing in memory to drop (a backlog still on disk).
    pub(super) fn drop_oldest(
        &mut self,
        limits: &QueueLimits,
        size: usize,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> bool {
        while self.is_full(limits, size) {
            let Some(oldest) = self.queue.get_mut().and_then(VecDeque::pop_front) else {
                return false;
            };
            self.queued_bytes -= oldest.message.payload.len() + oldest.message.topic.as_str().len();
            self.dropped += 1;
            if let Some((_, sid)) = store {
                ops.extend(done_op(sid, &oldest));
            }
        }
        true
    }

    pub(super) fn try_enqueue(
        &mut self,
        mut delivery: Delivery,
        limits: &QueueLimits,
        store: Option<(&Store, u64)>,
        ops: &mut Vec<Op>,
    ) -> Enqueued {
        let outbox = self.outbox.as_deref().copied();
        let limits = outbox.as_ref().map_or(limits, |o| &o.limits);
        let offline = !self.connected;
        if delivery.qos == QoS::AtMostOnce
            && offline
            && !(limits.queue_qos0_offline && self.is_persistent())
        {
            return Enqueued::Dropped;
        }
        let size = delivery.message.payload.len() + delivery.message.topic.as_str().len();
        let mut full = self.is_full(limits, size);
        match outbox {
            Some(o) if full && o.drops_oldest => full = !self.drop_oldest(limits, size, store, ops),
            Some(_) if full && delivery.qos > QoS::AtMostOnce => return Enqueued::Refused,
            _ => {}
        }
        if full {
            if delivery.qos > QoS::AtMostOnce && self.connected && !self.is_persistent() {
                self.close_reason.get_or_insert(CloseReason::QueueFull);
                return Enqueued::Overflow;
            }
            return Enqueued::Dropped;
        }
        if let Some((store, sid)) = store {
            if delivery.qos > QoS::AtMostOnce || offline {
                let seq = store.new_seq();
                delivery.seq = Some(seq);
                ops.push(add_op(sid, seq, &delivery, store));
            }
        }
        let was_empty = self.queue.is_empty();
        self.queued_bytes += size;
        self.queue.push_back(delivery);
        let (messages, bytes) = high_water(limits);
        let pressure = self.connected
            && !self.stalled
            && (self.queue.len() >= messages || self.queued_bytes >= bytes);
        self.pressured |= pressure;
        Enqueued::Queued {
            was_empty,
            pressure,
        }
    }

    /// True once when the queue has drained to half its high-water mark after being
    /// pressured or stalled: the caller wakes waiting publishers.
    /// `limits` are the broker's; a bridge's outbox has its own.
    pub fn take_drained(&mut self, limits: &QueueLimits) -> bool {
        if !(self.pressured || self.stalled) {
            return false;
        }
        let limits = self.outbox.as_deref().map_or(limits, |o| &o.limits);
        let (messages, bytes) = high_water(limits);
        if self.queue.len() <= messages / 2 && self.queued_bytes <= bytes / 2 {
            self.pressured = false;
            self.stalled = false;
            return true;
        }
        false
    }

    pub fn pop_queued(&mut self) -> Option<Delivery> {
        // A drained queue keeps its buffer: giving it back after each batch cost the
        // fan-out scenario about a tenth of its rate in page faults and mallocs.
        let delivery = self.queue.get_mut()?.pop_front()?;
        self.queued_bytes -= delivery.message.payload.len() + delivery.message.topic.as_str().len();
        Some(delivery)
    }
}
