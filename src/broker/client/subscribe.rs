//! SUBSCRIBE and UNSUBSCRIBE from the client: each filter checked (validity, limits,
//! the ACL), answered in one SUBACK, and the retained messages it earns queued after.

use std::time::Instant;

use super::{Client, Close};
use crate::broker::session::Subscription;
use crate::protocol::*;
use crate::store::Op;

impl Client {
    /// Whether this client may subscribe to `filter`: what every subscription meets
    /// ([`Broker::check_subscription`]), and an ACL that lets it read from the filter.
    pub(super) fn may_subscribe(&self, filter: &str) -> Result<(), (ReasonCode, String)> {
        self.broker.check_subscription(&self.session, filter)?;
        let readable = match self.auth.acl() {
            Some(acl) => acl.may_ever_read(&self.session.client_id, self.link.username(), filter),
            None => true,
        };
        if !readable {
            return Err((
                ReasonCode::NOT_AUTHORIZED,
                "the ACL grants no read access to it".to_owned(),
            ));
        }
        Ok(())
    }

    pub(super) fn on_subscribe(&mut self, s: Subscribe, now: Instant) -> Result<(), Close> {
        let id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let answer = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes: vec![ReasonCode::SUCCESS; s.filters.len()],
        });
        if !self.fits(&answer) {
            return Err(self.too_large_to_answer("SUBACK"));
        }
        let mut retained = Vec::new();
        let mut ops = Vec::new();
        for (filter, mut options) in s.filters {
            if let Err((code, why)) = self.may_subscribe(&filter) {
                log::info!(
                    "client_id={} user={:?} subscription refused filter={filter:?}: {why}",
                    self.session.client_id,
                    self.link.username()
                );
                if self.version == ProtocolVersion::V31 && topic::validate_filter(&filter).is_err()
                {
                    // MQTT 3.1's SUBACK has no way to refuse a malformed filter.
                    return Err(Close::new(code, format!("topic filter {filter:?}: {why}")));
                }
                codes.push(if self.v5() {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            if self.bridge {
                options.no_local = true;
                options.retain_as_published = true;
            }
            let subscription = Subscription { options, id };
            retained.extend(self.broker.add_subscription(
                &self.session,
                &filter,
                subscription,
                &mut ops,
                now,
            ));
            codes.push(ReasonCode(options.qos as u8));
        }
        let ticket = self.broker.submit(ops);
        self.hold_for(ticket);
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            codes,
        }));
        for delivery in retained {
            self.broker.enqueue(&self.session, delivery);
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let answer = Packet::UnsubAck(SubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes: vec![ReasonCode::SUCCESS; if self.v5() { u.filters.len() } else { 0 }],
        });
        if !self.fits(&answer) {
            return Err(self.too_large_to_answer("UNSUBACK"));
        }
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut ops = Vec::new();
        let sid = self.stored_sid();
        for filter in &u.filters {
            let existed = self.session.lock().remove_subscription(filter);
            if existed {
                self.broker.unsubscribe(&self.session, filter);
                if let Some(sid) = sid {
                    ops.push(Op::DeleteSubscription {
                        sid,
                        filter: filter.clone(),
                    });
                }
            }
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        if !self.v5() {
            codes.clear();
        }
        let ticket = self.broker.submit(ops);
        self.hold_for(ticket);
        self.send(&Packet::UnsubAck(SubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes,
        }));
        Ok(())
    }
}
