//! Packets that may not be written before the store has made something durable (an
//! acknowledgement before the message it acknowledges is kept, a QoS 2 delivery
//! before its exactly-once record), under `strict` durability. The state machine only
//! says where they stand; the connection shell waits for the store.

use std::sync::Arc;

use bytes::BytesMut;

use super::{Client, Close, Hold};
use crate::message::{Message, Ticket, Visibility};
use crate::protocol::*;
use crate::store::TicketState;

/// Where packets held for the store stand; see [`Client::release_held`].
#[derive(Debug)]
pub enum Held {
    /// Nothing is held (any more): write everything.
    Released,
    /// The store has not yet made durable what they acknowledge.
    Waiting,
    /// The store could not keep it: close without sending them.
    Failed(Close),
}

impl Client {
    /// Holds what is written to `out` from `from` on until `ticket` is durable, under
    /// `strict` durability.
    pub(super) fn hold_from(&mut self, from: usize, ticket: Option<Ticket>) {
        if ticket.is_none() || !self.is_strict() {
            return;
        }
        match &mut self.hold {
            Some(h) => {
                h.from = h.from.min(from);
                h.ticket = h.ticket.max(ticket);
            }
            None => {
                self.hold = Some(Box::new(Hold {
                    from,
                    ticket,
                    messages: Vec::new(),
                }))
            }
        }
    }

    /// Holds what is written from now on until `ticket` is durable.
    pub(super) fn hold_for(&mut self, ticket: Option<Ticket>) {
        self.hold_from(self.out.len(), ticket);
    }

    /// Holds what is written from now on until `message` may be seen by subscribers.
    pub(super) fn hold_for_message(&mut self, message: &Arc<Message>) {
        match message.durable_after.get() {
            Visibility::Now => {}
            Visibility::Unknown => {
                let from = self.out.len();
                self.hold
                    .get_or_insert_with(|| {
                        Box::new(Hold {
                            from,
                            ticket: None,
                            messages: Vec::new(),
                        })
                    })
                    .messages
                    .push(message.clone());
            }
            Visibility::After(ticket) => self.hold_for(Some(ticket)),
        }
    }

    /// The part of `out` that may be written now.
    pub fn writable(&self) -> &[u8] {
        match &self.hold {
            Some(h) => &self.out[..h.from],
            None => &self.out,
        }
    }

    /// `n` bytes from the front of `out` were written.
    pub fn wrote(&mut self, n: usize) {
        use bytes::Buf;
        self.out.advance(n);
        if let Some(h) = &mut self.hold {
            h.from -= n;
        }
        if self.out.is_empty() {
            // Give the buffer back: an idle connection should hold nothing.
            self.out = BytesMut::new();
        }
    }

    pub fn is_held(&self) -> bool {
        self.hold.is_some()
    }

    /// Whether the held packets may be written now, as far as the store has come:
    /// [`Held::Waiting`] until it has made durable what they acknowledge (the caller
    /// waits for the store's next commit and asks again), [`Held::Failed`] when it
    /// could not keep it, and then they are never sent: the client will send its
    /// message again.
    pub fn release_held(&mut self) -> Held {
        let Some(store) = self.broker.store.clone() else {
            self.hold = None;
            return Held::Released;
        };
        let Some(h) = &mut self.hold else {
            return Held::Released;
        };
        let mut unknown = false;
        let ticket = &mut h.ticket;
        h.messages.retain(|m| match m.durable_after.get() {
            Visibility::Unknown => {
                unknown = true;
                true
            }
            Visibility::After(t) => {
                *ticket = (*ticket).max(Some(t));
                false
            }
            Visibility::Now => false,
        });
        if unknown {
            return Held::Waiting;
        }
        let Some(ticket) = h.ticket else {
            self.hold = None;
            return Held::Released;
        };
        match store.ticket_state(ticket) {
            TicketState::Durable => {
                self.hold = None;
                Held::Released
            }
            TicketState::Failed => {
                let from = h.from;
                self.out.truncate(from);
                self.hold = None;
                Held::Failed(Close::new(
                    ReasonCode::QUOTA_EXCEEDED,
                    "the store could not keep the message (disk full or failing): not acknowledged",
                ))
            }
            TicketState::Pending => Held::Waiting,
        }
    }
}
