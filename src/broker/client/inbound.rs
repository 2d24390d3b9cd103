//! What the client publishes: the checks a PUBLISH meets (topic aliases, limits, the
//! ACL and the broker's own `$` topics, the payload format), QoS 1 and 2 towards the
//! broker, and the batch that routes several publishes under one lock per subscriber.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Client, Close, Role};
use crate::auth::Access;
use crate::broker::{Reached, count};
use crate::message::{Message, Via, Visibility};
use crate::protocol::*;
use crate::store::Op;

/// Publishes from one client routed together, at most: small enough that back-pressure
/// still stops a publisher within a few dozen messages of a subscriber's high-water
/// mark, and at most a quarter of a session's queue limit, so one batch never
/// overflows a queue that was below its high-water mark.
const PUBLISH_BATCH: usize = 32;

/// Publishes into `$SYS` and `$share` refused for lack of an ACL grant: they come from
/// every client at once when one misbehaves, so the log line is shared and throttled.
static RESERVED_TOPIC_REFUSALS: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// What the broker itself publishes under `$SYS`, and `$share`, which names a shared
/// subscription, never a topic. Mosquitto's one exception stays open: a bridge's
/// connection state (`$SYS/broker/connection/NAME/state`), which a bridge publishes
/// to the broker it connects to, retained and as its will. Compared as prefixes without
/// the slash, as Mosquitto does: `$SYSTEM/x` and `$shared/x` are refused too.
fn reserved_for_the_broker(topic: &str) -> bool {
    if topic.starts_with("$share") {
        return true;
    }
    topic.starts_with("$SYS")
        && !crate::protocol::topic::matches("$SYS/broker/connection/+/state", topic)
}

impl Client {
    /// Counts an ACL refusal; only the first on a connection is logged, so a client
    /// cannot fill an SD card with them.
    pub(super) fn note_refusal(&mut self, topic: &str, access: Access) {
        self.acl_refusals = self.acl_refusals.saturating_add(1);
        if self.acl_refusals == 1 {
            let what = match access {
                Access::Read => "receive from",
                Access::Write => "publish to",
            };
            log::warn!(
                "client_id={} user={:?} is not authorized to {what} {topic:?} (further refusals on this connection are counted, not logged)",
                self.session.client_id,
                self.link.username()
            );
        }
    }

    /// Whether this client may publish to `topic`: the ACL's write rules, and
    /// [`reserved_for_the_broker`] topics only where an ACL rule of the operator's
    /// grants them (such a grant comes from a rule that starts with `$`: a `#` rule
    /// never matches a `$` topic).
    pub(super) fn may_publish(&mut self, topic: &str, now: Instant) -> bool {
        let acl = self.auth.acl();
        let (client_id, user) = (&self.session.client_id, self.link.username());
        if reserved_for_the_broker(topic) {
            // A bridge's relay is the broker itself, publishing what its `in` rules map.
            let granted = self.role == Role::BridgeRelay
                || acl.is_some_and(|acl| acl.grants_reserved(client_id, user, topic));
            if !granted {
                self.acl_refusals = self.acl_refusals.saturating_add(1);
                if let Some(left_out) = RESERVED_TOPIC_REFUSALS.check(now) {
                    log::warn!(
                        "client_id={client_id} user={user:?} may not publish to {topic:?}: $SYS and $share belong to the broker{}",
                        crate::throttle::left_out(left_out)
                    );
                }
            }
            return granted;
        }
        let allowed = acl.is_none_or(|acl| acl.allows(client_id, user, topic, Access::Write));
        if !allowed {
            self.note_refusal(topic, Access::Write);
        }
        allowed
    }

    pub(super) fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Close> {
        self.link.received.fetch_add(1, Ordering::Relaxed);
        let mut shared_group = None;
        if self.v5() {
            if let Some(&id) = p.properties.subscription_identifiers.first() {
                if self.role != Role::PeerLink {
                    return Err(Close::new(
                        ReasonCode::PROTOCOL_ERROR,
                        "PUBLISH from a client carries a subscription identifier",
                    ));
                }
                // A cluster peer picked this node for one member of a shared
                // subscription it announced under this identifier.
                shared_group = NonZeroU32::new(id);
            }
            let alias = p.properties.get_mut().and_then(|p| p.topic_alias.take());
            if let Some(alias) = alias {
                if alias > self.broker.settings.topic_alias_maximum {
                    return Err(Close::new(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        format!(
                            "topic alias {alias} exceeds the maximum of {}",
                            self.broker.settings.topic_alias_maximum
                        ),
                    ));
                }
                let aliases = self.aliases.get_or_insert_with(Box::default);
                if p.topic.is_empty() {
                    p.topic = aliases.inbound.get(&alias).cloned().ok_or_else(|| {
                        Close::new(
                            ReasonCode::PROTOCOL_ERROR,
                            format!("topic alias {alias} is not set"),
                        )
                    })?;
                } else {
                    aliases.inbound.insert(alias, p.topic.clone());
                }
            } else if p.topic.is_empty() {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "PUBLISH with neither topic nor topic alias",
                ));
            }
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        if let Some(why) = self.broker.topic_too_big(p.topic.as_str()) {
            return Err(Close::new(ReasonCode::TOPIC_NAME_INVALID, why));
        }
        if !self.may_publish(p.topic.as_str(), now) {
            // v5 is told 0x87; v3 has no way to say no, so it is acknowledged and the
            // message discarded ([MQTT-3.3.5-2]).
            self.flush_publishes(now);
            let code = if self.v5() {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(packet_id, code))),
                QoS::ExactlyOnce => {
                    if !self.v5() {
                        let mut st = self.session.lock();
                        if !st.inbound_qos2.contains(&packet_id) {
                            st.inbound_qos2.push(packet_id);
                            if st.stored {
                                let op = Op::AddInbound {
                                    sid: self.session.sid.get(),
                                    packet_id,
                                };
                                drop(st);
                                let ticket = self.broker.submit(vec![op]);
                                self.hold_for(ticket);
                            }
                        }
                    }
                    self.send(&Packet::PubRec(Ack::new(packet_id, code)));
                }
            }
            return Ok(());
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // Refused, not disconnected: a persistent client would send it again after
            // every reconnect and be cut off for ever (MQTT 5.0 section 3.3.2.3.2 lets
            // the receiver answer 0x99 in the PUBACK or PUBREC).
            self.flush_publishes(now);
            count(&self.broker.metrics.dropped_payload_format);
            log::debug!(
                "client_id={} published to {:?} a payload marked UTF-8 that is not: refused (0x99)",
                self.session.client_id,
                p.topic.as_str()
            );
            let refusal = Ack::new(packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID);
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(refusal)),
                QoS::ExactlyOnce => self.send(&Packet::PubRec(refusal)),
            }
            return Ok(());
        }
        let mut exactly_once_stored = false;
        if qos == QoS::ExactlyOnce {
            let mut st = self.session.lock();
            if st.inbound_qos2.contains(&packet_id) {
                // A resent QoS 2 PUBLISH already routed: acknowledge again, deliver once
                // (and not before the first one's record is durable).
                let stored = st.stored;
                drop(st);
                self.flush_publishes(now);
                if stored {
                    let ticket = self.broker.store().and_then(|s| s.last_ticket());
                    self.hold_for(ticket);
                }
                self.send(&Packet::PubRec(Ack::new(packet_id, ReasonCode::SUCCESS)));
                return Ok(());
            }
            exactly_once_stored = st.stored;
            // Only a v5 client was told the Receive Maximum; a 3.x client's ids are
            // bounded by the 65535 packet ids themselves.
            if self.v5()
                && st.inbound_qos2.len() >= usize::from(self.broker.settings.receive_maximum)
            {
                return Err(Close::new(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    format!(
                        "more than {} QoS 2 messages unreleased",
                        self.broker.settings.receive_maximum
                    ),
                ));
            }
            st.inbound_qos2.push(packet_id);
        }
        let mut message = Message::from_publish(p, Some(self.session.client_id.clone()), now);
        message.via = match self.role {
            Role::Network => Via::Client,
            Role::BridgeRelay => Via::Bridge,
            Role::PeerLink => Via::Peer {
                shared: shared_group,
            },
        };
        let message = Arc::new(message);
        if exactly_once_stored && self.is_strict() {
            // Subscribers wait until the exactly-once record is durable; see
            // `Message::durable_after`.
            message.durable_after.set_unknown();
        }
        let batch = self.batch.get_or_insert_with(Box::default);
        if qos > QoS::AtMostOnce {
            batch.acks.push((batch.messages.len(), qos, packet_id));
        }
        batch.messages.push(message);
        let most = (self.broker.settings.max_queued_messages / 4).clamp(1, PUBLISH_BATCH);
        if batch.messages.len() >= most {
            self.flush_publishes(now);
        }
        Ok(())
    }

    /// Routes the publishes decoded so far and writes the acknowledgements they owe.
    /// The connection calls it after each read, and [`Client::handle`] before any other
    /// packet and every `publish_batch` messages.
    pub fn flush_publishes(&mut self, now: Instant) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        if batch.messages.is_empty() {
            self.batch = Some(batch);
            return;
        }
        let messages = std::mem::take(&mut batch.messages);
        let awaiting: Vec<Arc<Message>> = messages
            .iter()
            .filter(|m| m.durable_after.get() == Visibility::Unknown)
            .cloned()
            .collect();
        batch.reached.clear();
        let mut ops = Vec::new();
        let pressure = self
            .broker
            .publish_batch(messages, &mut batch.reached, &mut ops, now);
        if self.backpressure.is_none() {
            self.backpressure = pressure;
        }
        let acks = &batch.acks;
        let reached = &batch.reached;
        // A refused QoS 2 message ends its flow (PUBREC with an error code): its packet
        // id is free again, so that the publisher's retry is routed, not taken for a
        // duplicate of something that was never kept.
        let refused_qos2: Vec<u16> = acks
            .iter()
            .filter(|&&(i, qos, _)| qos == QoS::ExactlyOnce && reached[i] == Reached::Refused)
            .map(|&(_, _, packet_id)| packet_id)
            .collect();
        if !refused_qos2.is_empty() {
            self.session
                .lock()
                .inbound_qos2
                .retain(|id| !refused_qos2.contains(id));
        }
        // Only QoS 2 needs the session's store id: no lock for the rest.
        let exactly_once = acks
            .iter()
            .any(|&(i, qos, _)| qos == QoS::ExactlyOnce && reached[i] != Reached::Refused);
        if let Some(sid) = exactly_once.then(|| self.stored_sid()).flatten() {
            // After the deliveries they protect: once the id is durable, so are they.
            ops.extend(
                acks.iter()
                    .filter(|&&(i, qos, _)| {
                        qos == QoS::ExactlyOnce && reached[i] != Reached::Refused
                    })
                    .map(|&(_, _, packet_id)| Op::AddInbound { sid, packet_id }),
            );
        }
        let ticket = self.broker.submit(ops);
        for message in awaiting {
            message.durable_after.set(ticket);
        }
        if !acks.is_empty() {
            self.hold_for(ticket);
        }
        for &(index, qos, packet_id) in acks {
            let code = match batch.reached[index] {
                Reached::Refused if !self.v5() => {
                    // 3.x has no way to say "not kept" in a PUBACK: close instead of
                    // acknowledging what was not kept.
                    self.closing.get_or_insert_with(|| {
                        Box::new(Close::new(
                            ReasonCode::QUOTA_EXCEEDED,
                            "a bridge outbox is full",
                        ))
                    });
                    continue;
                }
                Reached::Refused => ReasonCode::QUOTA_EXCEEDED,
                Reached::Sessions(0) if self.v5() => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                _ => ReasonCode::SUCCESS,
            };
            match qos {
                QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(packet_id, code))),
                _ => self.send(&Packet::PubRec(Ack::new(packet_id, code))),
            }
        }
        batch.acks.clear();
        self.batch = Some(batch);
    }

    pub(super) fn on_pubrel(&mut self, ack: Ack) {
        let mut st = self.session.lock();
        let mut op = None;
        let code = match st.inbound_qos2.iter().position(|id| *id == ack.packet_id) {
            Some(i) => {
                st.inbound_qos2.swap_remove(i);
                st.inbound_qos2.tidy();
                if st.stored {
                    op = Some(Op::DeleteInbound {
                        sid: self.session.sid.get(),
                        packet_id: ack.packet_id,
                    });
                }
                ReasonCode::SUCCESS
            }
            None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        drop(st);
        // PUBCOMP only once the id is forgotten for good: a stored id would make the
        // client's next message under it look like a duplicate after a crash.
        let ticket = self.broker.submit(op.into_iter().collect());
        self.hold_for(ticket);
        self.send(&Packet::PubComp(Ack::new(ack.packet_id, code)));
    }
}
