//! A peer's refusal is retried, never taken as delivery. The outbox session for a peer
//! would take a PUBACK or PUBREC with an error code (a full queue on the peer, under
//! `strict`) as the end of that message, as MQTT has it. So the link keeps each QoS 1
//! and 2 PUBLISH it passed on until the peer takes it, holds a refusal back from the
//! outbox, and offers the message again later (1 s, doubling to 30 s): the outbox keeps
//! it in flight meanwhile, and after a cut or a crash sends it again as usual. Only a
//! refusal that no retry can change (a payload that is not the UTF-8 it claims, a topic
//! the peer may not take) is passed on, and counted.
//!
//! Pure: packets and instants in, packets out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::ReasonCode;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// What to do with an acknowledgement from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the outbox session.
    Pass,
    /// A refusal that a retry may overcome: keep it from the outbox.
    Hold,
    /// A refusal for good: pass it on (the message ends), and say so.
    Final(ReasonCode),
}

#[derive(Default)]
pub struct Retries {
    /// QoS 1 and 2 PUBLISH packets passed to the peer and not yet taken, by packet id,
    /// with when to offer each again once refused, and the wait after that.
    waiting: HashMap<u16, (Bytes, Option<Instant>, Duration)>,
}

impl Retries {
    /// A PUBLISH the outbox sent to the peer (QoS 0 ones are ignored).
    pub fn sent(&mut self, packet: Bytes) {
        if let Some(id) = publish_packet_id(&packet) {
            self.waiting.insert(id, (packet, None, FIRST_RETRY));
        }
    }

    /// The peer's PUBACK, PUBREC or PUBCOMP `packet` (v5), seen at `now`.
    pub fn acknowledged(&mut self, packet: &[u8], now: Instant) -> Verdict {
        let Some((id, code)) = ack_parts(packet) else {
            return Verdict::Pass;
        };
        if !code.is_error() {
            self.waiting.remove(&id);
            return Verdict::Pass;
        }
        let transient = matches!(
            code,
            ReasonCode::QUOTA_EXCEEDED
                | ReasonCode::UNSPECIFIED_ERROR
                | ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
        );
        match self.waiting.get_mut(&id) {
            Some((_, at, wait)) if transient => {
                *at = Some(now + *wait);
                *wait = (*wait * 2).min(LAST_RETRY);
                Verdict::Hold
            }
            _ => {
                self.waiting.remove(&id);
                Verdict::Final(code)
            }
        }
    }

    /// The refused packets due again at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        for (packet, at, _) in self.waiting.values_mut() {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                out.push(packet.clone());
            }
        }
        out
    }

    /// When the next refused packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().filter_map(|(_, at, _)| *at).min()
    }

    /// How many refused packets wait for a retry.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.waiting
            .values()
            .filter(|(_, at, _)| at.is_some())
            .count()
    }
}

/// The length of a packet's fixed header (type byte and remaining length).
fn header_len(packet: &[u8]) -> Option<usize> {
    let ends = packet.iter().skip(1).take(4).position(|b| b & 0x80 == 0)?;
    Some(2 + ends)
}

/// The packet id of a QoS 1 or 2 PUBLISH.
fn publish_packet_id(packet: &[u8]) -> Option<u16> {
    if packet.first()? >> 4 != 3 || packet[0] & 0x06 == 0 {
        return None;
    }
    let at = header_len(packet)?;
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    let id = at + 2 + topic_len;
    Some(u16::from_be_bytes([*packet.get(id)?, *packet.get(id + 1)?]))
}

/// A v5 PUBACK's, PUBREC's or PUBCOMP's packet id and reason code (success when the
/// packet leaves it out).
fn ack_parts(packet: &[u8]) -> Option<(u16, ReasonCode)> {
    if !matches!(packet.first()? >> 4, 4 | 5 | 7) {
        return None;
    }
    let at = header_len(packet)?;
    let id = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    let code = packet.get(at + 2).copied().unwrap_or(0);
    Some((id, ReasonCode(code)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Ack, Packet, ProtocolVersion, Publish, QoS, Topic};
    use bytes::BytesMut;

    fn publish(id: u16, qos: QoS) -> Bytes {
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Topic::from("t/x"),
            packet_id: id,
            properties: Default::default(),
            payload: Bytes::from_static(b"payload"),
        };
        let mut out = BytesMut::new();
        protocol::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
        out.freeze()
    }

    fn ack(id: u16, code: ReasonCode) -> BytesMut {
        let mut out = BytesMut::new();
        protocol::encode(
            &Packet::PubAck(Ack::new(id, code)),
            ProtocolVersion::V5,
            &mut out,
        );
        out
    }

    #[test]
    fn a_full_queue_is_retried_with_a_growing_wait_until_taken() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        r.sent(publish(7, QoS::AtLeastOnce));
        r.sent(publish(0, QoS::AtMostOnce));
        assert_eq!(
            r.acknowledged(&ack(7, ReasonCode::QUOTA_EXCEEDED), t0),
            Verdict::Hold
        );
        assert_eq!(r.held(), 1);
        assert!(r.due(t0).is_empty());
        assert_eq!(r.next_due(), Some(t0 + FIRST_RETRY));
        let again = r.due(t0 + FIRST_RETRY);
        assert_eq!(again, vec![publish(7, QoS::AtLeastOnce)]);
        assert_eq!(r.next_due(), None, "offered again: waits for the answer");
        let t1 = t0 + FIRST_RETRY;
        assert_eq!(
            r.acknowledged(&ack(7, ReasonCode::QUOTA_EXCEEDED), t1),
            Verdict::Hold
        );
        assert_eq!(r.next_due(), Some(t1 + 2 * FIRST_RETRY));
        assert_eq!(
            r.acknowledged(&ack(7, ReasonCode::SUCCESS), t1),
            Verdict::Pass
        );
        assert_eq!(r.held(), 0);
        assert!(r.due(t1 + LAST_RETRY).is_empty());
    }

    #[test]
    fn a_refusal_for_good_ends_the_message_and_unknown_ids_pass() {
        let mut r = Retries::default();
        let now = Instant::now();
        r.sent(publish(3, QoS::ExactlyOnce));
        assert_eq!(
            r.acknowledged(&ack(3, ReasonCode::PAYLOAD_FORMAT_INVALID), now),
            Verdict::Final(ReasonCode::PAYLOAD_FORMAT_INVALID)
        );
        assert_eq!(
            r.acknowledged(&ack(3, ReasonCode::SUCCESS), now),
            Verdict::Pass
        );
        assert_eq!(
            publish_packet_id(&publish(0x1234, QoS::AtLeastOnce)),
            Some(0x1234)
        );
        // A PUBACK that leaves out its reason code (success).
        assert_eq!(ack_parts(&[0x40, 2, 0, 9]), Some((9, ReasonCode::SUCCESS)));
    }
}
