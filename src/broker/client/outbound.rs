//! What the broker sends the client: queued messages moved into the write buffer
//! within the client's Receive Maximum, Maximum Packet Size and topic aliases, and the
//! acknowledgements (PUBACK, PUBREC, PUBCOMP) that end those QoS 1 and 2 flows.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Client, Close};
use crate::auth::Access;
use crate::broker::count;
use crate::broker::session::{Inflight, done_op};
use crate::message::{Delivery, Stage};
use crate::protocol::*;
use crate::store::Op;

/// Stop encoding queued messages once this much is waiting to be written: the rest stay
/// in the session queue, where the overload rules apply.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// An acknowledgement (`received`) for a packet id in flight that awaits another kind
/// breaks the QoS flow ([MQTT-4.3.2-2], [MQTT-4.3.3-2]): the connection is closed
/// ([MQTT-4.8.0-1]) and the flight is left as it was, so a persistent session sends it
/// again on resume.
fn wrong_acknowledgement(received: &str, awaited: Stage, packet_id: u16) -> Close {
    Close::new(
        ReasonCode::PROTOCOL_ERROR,
        format!(
            "{received} for packet id {packet_id}, which awaits {}",
            awaited.acknowledgement()
        ),
    )
}

impl Client {
    /// Ends an outbound flow waiting in `stage` (PUBACK or PUBCOMP) for this
    /// acknowledgement. One for an id not in flight is harmless and ignored.
    pub(super) fn complete(&mut self, packet_id: u16, stage: Stage) -> Result<(), Close> {
        let mut st = self.session.lock();
        let Some(i) = st.inflight_position(packet_id) else {
            log::debug!(
                "client_id={} acknowledged unknown packet id {packet_id}",
                self.session.client_id
            );
            return Ok(());
        };
        let awaited = st.inflight[i].stage;
        if awaited != stage {
            return Err(wrong_acknowledgement(
                stage.acknowledgement(),
                awaited,
                packet_id,
            ));
        }
        let done = st
            .remove_inflight(i)
            .and_then(|f| done_op(self.session.sid.get(), &f.delivery));
        drop(st);
        self.broker.submit(done.into_iter().collect());
        Ok(())
    }

    pub(super) fn on_pubrec(&mut self, ack: Ack) -> Result<(), Close> {
        let mut st = self.session.lock();
        let sid = self.session.sid.get();
        let (code, op) = match st.inflight_position(ack.packet_id) {
            Some(i) if st.inflight[i].stage == Stage::AwaitingPubAck => {
                return Err(wrong_acknowledgement(
                    "PUBREC",
                    Stage::AwaitingPubAck,
                    ack.packet_id,
                ));
            }
            Some(i) if ack.code.is_error() => {
                // The receiver refused it: the flow ends here (MQTT 5.0 section 4.3.3).
                let done = st
                    .remove_inflight(i)
                    .and_then(|f| done_op(sid, &f.delivery));
                drop(st);
                self.broker.submit(done.into_iter().collect());
                return Ok(());
            }
            Some(i) => {
                // Awaiting PUBREC, or PUBCOMP after a PUBREL the receiver has not seen:
                // (again) PUBREL.
                let f = &mut st.inflight[i];
                f.stage = Stage::AwaitingPubComp;
                let op = f.delivery.seq.map(|seq| Op::SentDelivery {
                    sid,
                    seq: seq.get(),
                    packet_id: ack.packet_id,
                    stage: Stage::AwaitingPubComp,
                });
                (ReasonCode::SUCCESS, op)
            }
            None => (ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None),
        };
        drop(st);
        // PUBREL only once the stage is durable: after a crash the broker must resend
        // PUBREL, not the PUBLISH the client has already passed on.
        let ticket = self.broker.submit(op.into_iter().collect());
        self.hold_for(ticket);
        self.send(&Packet::PubRel(Ack::new(ack.packet_id, code)));
        Ok(())
    }

    /// Moves queued messages into `out` as far as the client's receive maximum and the
    /// write high-water mark allow. Fails when the session must close (taken over,
    /// queue overflow, shutdown).
    pub fn pump(&mut self, now: Instant) -> Result<(), Close> {
        if let Some(close) = self.closing.take() {
            return Err(*close);
        }
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            return Err(Close::new(
                ReasonCode::SESSION_TAKEN_OVER,
                "another connection took the session",
            ));
        }
        if let Some(reason) = st.close_reason {
            return Err(Close::new(reason.code(), reason.why()));
        }
        // PUBLISH packets written, by QoS: added to the shared counters once per pump,
        // not once per message, so fan-out on several cores does not bounce them.
        let mut sent = [0u64; 3];
        let sid = session.sid.get();
        let mut ops = Vec::new();
        if self.resend_inflight {
            self.resend_inflight = false;
            let mut too_large = Vec::new();
            for (i, f) in st.inflight.iter().enumerate() {
                match f.stage {
                    Stage::AwaitingPubComp => {
                        self.send(&Packet::PubRel(Ack::new(f.packet_id, ReasonCode::SUCCESS)))
                    }
                    _ if self.write_publish(&f.delivery, f.packet_id, true, now) => {
                        sent[f.delivery.qos as usize] += 1;
                    }
                    // Larger than the client accepts since it reconnected: discarded as
                    // if delivered, so it holds no place in its Receive Maximum.
                    _ => too_large.push(i),
                }
            }
            for i in too_large.into_iter().rev() {
                if let Some(f) = st.remove_inflight(i) {
                    ops.extend(done_op(sid, &f.delivery));
                }
            }
        }
        let acl = self.auth.acl();
        let mut hold_start = None;
        let limits = self.broker.queue_limits();
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos > QoS::AtMostOnce
                && st.inflight.len() >= usize::from(self.peer_receive_maximum)
            {
                break;
            }
            let delivery = st.pop_queued().expect("front exists");
            if let Some(acl) = &acl {
                let topic = delivery.message.topic.as_str();
                if !acl.allows(
                    &self.session.client_id,
                    self.link.username(),
                    topic,
                    Access::Read,
                ) {
                    self.note_refusal(topic, Access::Read);
                    ops.extend(done_op(sid, &delivery));
                    continue;
                }
            }
            if st.take_drained(&limits) {
                session.drained.notify(usize::MAX);
            }
            if delivery.message.is_expired(now) {
                count(&self.broker.metrics.dropped_expired);
                ops.extend(done_op(sid, &delivery));
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                if self.write_publish(&delivery, 0, false, now) {
                    sent[0] += 1;
                }
                ops.extend(done_op(sid, &delivery));
                continue;
            }
            let packet_id = st.allocate_packet_id();
            if delivery.qos == QoS::ExactlyOnce {
                self.hold_for_message(&delivery.message);
            }
            let before = self.out.len();
            if self.write_publish(&delivery, packet_id, false, now) {
                sent[delivery.qos as usize] += 1;
                let stage = if delivery.qos == QoS::AtLeastOnce {
                    Stage::AwaitingPubAck
                } else {
                    Stage::AwaitingPubRec
                };
                if let Some(seq) = delivery.seq {
                    ops.push(Op::SentDelivery {
                        sid,
                        seq: seq.get(),
                        packet_id,
                        stage,
                    });
                    if stage == Stage::AwaitingPubRec {
                        // A QoS 2 PUBLISH goes out only with its packet id durable, so
                        // that after a crash it is resent under the same id and the
                        // client can recognise it. QoS 1 may be sent again under a new
                        // one; waiting for it would cost a sync per message.
                        hold_start.get_or_insert(before);
                    }
                }
                st.inflight.push_back(Inflight {
                    packet_id,
                    stage,
                    delivery,
                });
            } else {
                ops.extend(done_op(sid, &delivery));
            }
        }
        drop(st);
        self.count_sent(sent);
        let ticket = self.broker.submit(ops);
        if let Some(from) = hold_start {
            self.hold_from(from, ticket);
        }
        Ok(())
    }

    /// Adds one pump's PUBLISH packets, by QoS, to the broker's and this connection's
    /// counters.
    pub(super) fn count_sent(&self, sent_by_qos: [u64; 3]) {
        let total: u64 = sent_by_qos.iter().sum();
        if total == 0 {
            return;
        }
        let metrics = &self.broker.metrics;
        metrics.messages_sent.fetch_add(total, Ordering::Relaxed);
        for (counter, n) in metrics.sent_by_qos.iter().zip(sent_by_qos) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.link.sent.fetch_add(total, Ordering::Relaxed);
    }

    /// Encodes one delivery, choosing a topic alias where the client allows them.
    /// Returns false when it is larger than the client accepts: then it is discarded
    /// as if delivered ([MQTT-3.1.2-25]).
    pub(super) fn write_publish(
        &mut self,
        d: &Delivery,
        packet_id: u16,
        dup: bool,
        now: Instant,
    ) -> bool {
        let v5 = self.v5();
        let m = &d.message;
        let topic = m.topic.as_str();
        let mut publish = OutgoingPublish {
            topic,
            qos: d.qos,
            retain: d.retain,
            dup,
            packet_id,
            message_expiry: if v5 { m.remaining_expiry(now) } else { None },
            topic_alias: None,
            subscription_ids: if v5 { &d.subscription_ids } else { &[] },
            forwarded_properties: if v5 { &m.forwarded_properties } else { &[] },
            payload: &m.payload,
        };
        let mut new_alias = None;
        if v5 && self.peer_topic_alias_maximum > 0 {
            let outbound = &self.aliases.get_or_insert_with(Box::default).outbound;
            if let Some(&alias) = outbound.get(topic) {
                publish.topic = "";
                publish.topic_alias = Some(alias);
            } else if outbound.len() < usize::from(self.peer_topic_alias_maximum) {
                let alias = outbound.len() as u16 + 1;
                publish.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        if publish.encoded_len(self.version) > self.peer_max_packet_size as usize {
            count(&self.broker.metrics.dropped_too_large);
            log::debug!(
                "client_id={} not sent {topic:?}: larger than its maximum packet size",
                self.session.client_id
            );
            return false;
        }
        if let Some(alias) = new_alias {
            let aliases = self.aliases.get_or_insert_with(Box::default);
            aliases.outbound.insert(topic.into(), alias);
        }
        publish.encode(self.version, &mut self.out);
        true
    }
}
