//! How a connection ends: DISCONNECT from the client, the DISCONNECT a v5 client is
//! told, and what the session keeps once the connection is gone (its will, its
//! expiry, its store row).

use std::time::{Duration, Instant};

use super::{Client, Close};
use crate::message::Message;
use crate::protocol::*;
use crate::store::{Op, StoredMessage};

impl Client {
    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.expiry_was_zero && expiry != 0 {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "DISCONNECT sets a session expiry after CONNECT set 0",
                ));
            }
            let mut st = self.session.lock();
            // Not once another connection has taken the session: it is theirs now.
            if st.generation == self.generation {
                st.expiry_interval = expiry;
            }
        }
        if d.code != ReasonCode::DISCONNECT_WITH_WILL {
            self.will = None;
        }
        Err(Close {
            code: d.code,
            reason: "client sent DISCONNECT".into(),
            by_client: true,
        })
    }

    /// The DISCONNECT to send a v5 client before closing, where there is one to send.
    pub fn write_disconnect(&mut self, close: &Close) {
        if self.v5() && !close.by_client && close.code.is_error() {
            let properties = Properties::from(PropertyValues {
                reason_string: Some(close.reason.to_string()),
                ..PropertyValues::default()
            });
            let disconnect = Packet::Disconnect(Disconnect {
                code: close.code,
                properties,
            });
            // Not sent at all when it does not fit: the connection closes either way.
            let limit = self.peer_max_packet_size as usize;
            encode_within(&disconnect, self.version, limit, &mut self.out);
        }
    }

    /// The connection is gone: publish or schedule the will, and end the session now
    /// if it does not outlive its connection.
    pub fn connection_lost(mut self, now: Instant) {
        // What arrived before the connection dropped is still delivered.
        self.flush_publishes(now);
        let broker = self.broker.clone();
        broker
            .metrics
            .connected(self.role)
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let taken_over;
        {
            let mut st = self.session.lock();
            taken_over = st.generation != self.generation;
            if !taken_over {
                self.session.set_online(&mut st, false);
                st.disconnected_at = Some(now);
                st.link = None;
                st.set_declared_will(None);
            }
        }
        let will_delay = self
            .will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval)
            .filter(|_| self.v5())
            .unwrap_or(0);
        // A session another node took for its client's CONNECT goes on there: a will
        // with a delay is not published, as when a client resumes within the delay.
        // One handed on as this node stops is published now (its delay would end
        // here, where the session no longer is).
        let continues_elsewhere =
            taken_over && broker.moved_where(&self.session.client_id).is_some();
        let session_ended = !(broker.is_current(&self.session) || continues_elsewhere);
        let will = self.will.take().filter(|w| self.may_publish(&w.topic, now));
        if let Some(will) = will {
            let message = Message::from_will(*will, Some(self.session.client_id.clone()), now);
            if will_delay == 0 || session_ended {
                broker.publish(message, now);
            } else if !taken_over {
                let expiry = self.session.lock().expiry_interval;
                let delay = Duration::from_secs(u64::from(will_delay.min(expiry)));
                self.session.lock().set_pending_will(message, now + delay);
            }
        }
        if !taken_over {
            broker.session_changed(&self.session.client_id);
            self.store_disconnected(now);
            let st = self.session.lock();
            if st.expiry_interval == 0 {
                drop(st);
                broker.remove_session(&self.session, now);
            } else {
                broker.due_by(st.next_deadline());
            }
        }
    }

    /// Stores when a persistent session lost its connection (its expiry runs from
    /// then), its expiry as DISCONNECT may have changed it, and its pending will.
    pub(super) fn store_disconnected(&self, now: Instant) {
        let Some(store) = self.broker.store() else {
            return;
        };
        let st = self.session.lock();
        if !st.stored || st.expiry_interval == 0 {
            return;
        }
        let sid = self.session.sid.get();
        let clock = &store.clock;
        let mut ops = vec![Op::PutSession {
            sid,
            client_id: self.session.client_id.clone(),
            protocol: st.protocol.level(),
            expiry: st.expiry_interval,
            disconnected_at: Some(clock.secs(now)),
        }];
        if let Some(will) = st.pending_will() {
            let encoded = StoredMessage::from_message(&will.0, clock).encode();
            ops.push(Op::SetWill {
                sid,
                will: Some((encoded, clock.secs(will.1))),
            });
        }
        self.broker.submit(ops);
    }
}
