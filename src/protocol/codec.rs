//! Decoding and encoding whole packets: bytes in, [`Packet`]s out, and back.
//!
//! No I/O and no clock: the caller hands in a buffer and the protocol version agreed in
//! CONNECT. Every violation of the specs becomes a [`DecodeError`] carrying the v5 reason
//! code to report, so the connection can answer and close without guessing.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::*;
use super::properties::{Context, Properties};
use super::reason::ReasonCode;
use super::topic;
use super::wire::{DecodeError, Reader, put_binary, put_packet, put_str, put_vbi, vbi_len};

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// A decode failure on a CONNECT, with the version to answer in when one is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    pub error: DecodeError,
    /// The CONNACK format the client will understand, or `None` to close without one.
    pub answer_in: Option<ProtocolVersion>,
}

/// Finds the length of the first packet in `buf`: `Ok(None)` while its fixed header is
/// incomplete, otherwise the total length (fixed header included). Fails on a remaining
/// length longer than four bytes or a packet larger than `max_packet_size`, before the
/// rest of it has arrived.
pub fn frame_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + i + 1 + remaining;
            if total > max_packet_size {
                return Err(DecodeError::with(
                    ReasonCode::PACKET_TOO_LARGE,
                    format!(
                        "packet of {total} bytes exceeds the maximum packet size of {max_packet_size}"
                    ),
                ));
            }
            return Ok(Some(total));
        }
    }
    Err(DecodeError::malformed(
        "remaining length is longer than 4 bytes",
    ))
}

/// Takes one whole packet off the front of `buf` if it has arrived.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    match next_frame(buf, max_packet_size)? {
        Some(frame) => decode_frame(frame, version).map(Some),
        None => Ok(None),
    }
}

/// Takes one whole frame off the front of `buf` if it has arrived. A hot loop decodes
/// it with [`decode_frame`] rather than calling [`decode`]: a `Packet` is a few hundred
/// bytes (the v5 properties inline), and wrapping it in an `Option` costs a copy.
pub fn next_frame(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<Bytes>, DecodeError> {
    let Some(len) = frame_len(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len).freeze()))
}

/// Splits a whole frame into its first byte and body; refuses anything that is not
/// exactly one whole frame, so a caller's mistake is an error and never a panic.
fn split_frame(mut frame: Bytes) -> Result<(u8, Bytes), DecodeError> {
    match frame_len(&frame, usize::MAX)? {
        Some(len) if len == frame.len() => {}
        _ => {
            return Err(DecodeError::malformed(
                "bytes are not exactly one whole packet",
            ));
        }
    }
    let first = frame[0];
    let mut header_len = 2;
    while frame[header_len - 1] & 0x80 != 0 {
        header_len += 1;
    }
    Ok((first, frame.split_off(header_len)))
}

/// Decodes one whole frame (as measured by [`frame_len`]) of a connection that has
/// agreed on `version`. A CONNECT is decoded with the version it names itself.
pub fn decode_frame(frame: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let (first, body) = split_frame(frame)?;
    let kind = first >> 4;
    let flags = first & 0x0F;
    let expected_flags = match kind {
        PUBLISH => flags,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::malformed(format!(
            "reserved flags of packet type {kind} are {flags:#06b}, must be {expected_flags:#06b}"
        )));
    }
    let v5 = version == ProtocolVersion::V5;
    let mut r = Reader::new(body);
    let packet = match kind {
        CONNECT => Packet::Connect(Box::new(decode_connect(&mut r).map_err(|e| e.error)?)),
        CONNACK => Packet::ConnAck(decode_connack(&mut r, version)?),
        PUBLISH => Packet::Publish(decode_publish(flags, &mut r, v5)?),
        PUBACK => Packet::PubAck(decode_ack(&mut r, v5)?),
        PUBREC => Packet::PubRec(decode_ack(&mut r, v5)?),
        PUBREL => Packet::PubRel(decode_ack(&mut r, v5)?),
        PUBCOMP => Packet::PubComp(decode_ack(&mut r, v5)?),
        SUBSCRIBE => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
        SUBACK => Packet::SubAck(decode_suback(&mut r, v5, Context::SubAck)?),
        UNSUBSCRIBE => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
        UNSUBACK => Packet::UnsubAck(decode_suback(&mut r, v5, Context::UnsubAck)?),
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect(decode_disconnect(&mut r, v5)?),
        AUTH if v5 => Packet::Auth(decode_auth(&mut r)?),
        _ => {
            return Err(DecodeError::malformed(format!(
                "packet type {kind} does not exist in MQTT {}",
                version.name()
            )));
        }
    };
    if r.remaining() > 0 {
        return Err(DecodeError::malformed(format!(
            "{} has {} bytes after its end",
            packet.kind(),
            r.remaining()
        )));
    }
    Ok(packet)
}

/// Decodes a frame that must be a CONNECT, reporting which CONNACK format to refuse it in.
pub fn decode_connect_frame(frame: Bytes) -> Result<Connect, ConnectError> {
    let (first, body) = split_frame(frame).map_err(|error| ConnectError {
        error,
        answer_in: None,
    })?;
    if first >> 4 != CONNECT {
        return Err(ConnectError {
            error: DecodeError::protocol(format!(
                "first packet is type {}, not CONNECT",
                first >> 4
            )),
            answer_in: None,
        });
    }
    if first & 0x0F != 0 {
        return Err(ConnectError {
            error: DecodeError::malformed("CONNECT has reserved flags set"),
            answer_in: None,
        });
    }
    let mut r = Reader::new(body);
    let connect = decode_connect(&mut r)?;
    if r.remaining() > 0 {
        return Err(ConnectError {
            error: DecodeError::malformed("CONNECT has bytes after its payload"),
            answer_in: answer_malformed_in(connect.protocol),
        });
    }
    Ok(connect)
}

/// How a malformed CONNECT of `protocol` is refused: MQTT 5 answers with a CONNACK
/// reason code (0x81, 0x90 ...) before closing; MQTT 3.1.1 closes without a CONNACK
/// ([MQTT-3.1.4-1], [MQTT-3.1.2-3]), since its return codes have no word for
/// "malformed" and 0x05 would tell the user the wrong thing. MQTT 3.1 states no rule;
/// Tern closes without a CONNACK there too, as Mosquitto does.
fn answer_malformed_in(protocol: ProtocolVersion) -> Option<ProtocolVersion> {
    (protocol == ProtocolVersion::V5).then_some(protocol)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, ConnectError> {
    let unanswered = |error| ConnectError {
        error,
        answer_in: None,
    };
    let name = r.binary("protocol name").map_err(unanswered)?;
    let level_byte = r.u8("protocol level").map_err(unanswered)?;
    let bridge = level_byte & 0x80 != 0;
    let level = level_byte & 0x7F;
    let protocol = match (&name[..], level, bridge) {
        (b"MQIsdp", 3, _) => ProtocolVersion::V31,
        (b"MQTT", 4, _) => ProtocolVersion::V311,
        (b"MQTT", 5, false) => ProtocolVersion::V5,
        _ => {
            let name = String::from_utf8_lossy(&name);
            return Err(ConnectError {
                error: DecodeError::with(
                    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    format!("unsupported protocol name {name:?} level {level_byte:#04x}"),
                ),
                answer_in: Some(if level >= 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                }),
            });
        }
    };
    let answer = |error| ConnectError {
        error,
        answer_in: answer_malformed_in(protocol),
    };
    decode_connect_rest(r, protocol, bridge).map_err(answer)
}

fn decode_connect_rest(
    r: &mut Reader,
    protocol: ProtocolVersion,
    bridge: bool,
) -> Result<Connect, DecodeError> {
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::malformed("CONNECT reserved flag is set"));
    }
    let clean_start = flags & 0x02 != 0;
    let has_will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !has_will && (will_qos != 0 || will_retain) {
        return Err(DecodeError::malformed(
            "will QoS or will retain set without a will",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or_else(|| DecodeError::malformed("will QoS is 3"))?;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::malformed(
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        Properties::decode(r, Context::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if has_will {
        let will_properties = if v5 {
            Properties::decode(r, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        topic::validate_name(&topic).map_err(|e| {
            DecodeError::with(
                ReasonCode::TOPIC_NAME_INVALID,
                format!("will topic: {}", e.describe()),
            )
        })?;
        let payload = r.binary("will payload")?;
        if will_properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&payload).is_err()
        {
            return Err(DecodeError::with(
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                "will payload is marked UTF-8 but is not",
            ));
        }
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: will_properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        bridge,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let v5 = version == ProtocolVersion::V5;
    let ack_flags = r.u8("connect acknowledge flags")?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::malformed("CONNACK reserved flags set"));
    }
    let raw = r.u8("connect reason code")?;
    let code = if v5 {
        ReasonCode(raw)
    } else {
        ReasonCode::from_v3_connack(raw).ok_or_else(|| {
            DecodeError::malformed(format!("CONNACK return code {raw} is reserved"))
        })?
    };
    let properties = if v5 {
        Properties::decode(r, Context::ConnAck)?
    } else {
        Properties::default()
    };
    Ok(ConnAck {
        // MQTT 3.1 has no session-present flag.
        session_present: ack_flags & 1 != 0 && version != ProtocolVersion::V31,
        code,
        properties,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or_else(|| DecodeError::malformed("PUBLISH with QoS 3"))?;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::malformed("PUBLISH with QoS 0 has DUP set"));
    }
    let topic = r.utf8_bytes("topic name")?;
    if !topic.is_empty() || !v5 {
        // SAFETY of as-str: utf8_bytes checked it.
        let name = std::str::from_utf8(&topic).unwrap_or_default();
        topic::validate_name(name)
            .map_err(|e| DecodeError::with(ReasonCode::TOPIC_NAME_INVALID, e.describe()))?;
    }
    let packet_id = if qos > QoS::AtMostOnce {
        nonzero_packet_id(r)?
    } else {
        0
    };
    let properties = if v5 {
        Properties::decode(r, Context::Publish)?
    } else {
        Properties::default()
    };
    // A payload marked UTF-8 that is not is the broker's to refuse (PUBACK 0x99), not
    // a malformed packet.
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic: Topic::from_utf8_checked(topic),
        packet_id,
        properties,
        payload,
    })
}

fn nonzero_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16("packet identifier")?;
    if id == 0 {
        return Err(DecodeError::malformed("packet identifier is 0"));
    }
    Ok(id)
}

fn decode_ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = nonzero_packet_id(r)?;
    let mut ack = Ack::new(packet_id, ReasonCode::SUCCESS);
    if v5 && r.remaining() > 0 {
        ack.code = ReasonCode(r.u8("reason code")?);
        if r.remaining() > 0 {
            ack.properties = Properties::decode(r, Context::Ack)?;
        }
    }
    Ok(ack)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = nonzero_packet_id(r)?;
    let properties = if v5 {
        Properties::decode(r, Context::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let options = r.u8("subscription options")?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if options & reserved != 0 {
            return Err(DecodeError::malformed(format!(
                "subscription options {options:#04x} set reserved bits"
            )));
        }
        let qos = QoS::from_u8(options & 0x03)
            .ok_or_else(|| DecodeError::malformed("subscription with QoS 3"))?;
        let retain_handling = match (options >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::protocol("retain handling is 3")),
        };
        let no_local = options & 0x04 != 0;
        if no_local && topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::protocol(
                "no local set on a shared subscription",
            ));
        }
        let retain_as_published = options & 0x08 != 0;
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = nonzero_packet_id(r)?;
    let properties = if v5 {
        Properties::decode(r, Context::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn decode_suback(r: &mut Reader, v5: bool, context: Context) -> Result<SubAck, DecodeError> {
    let packet_id = nonzero_packet_id(r)?;
    let properties = if v5 {
        Properties::decode(r, context)?
    } else {
        Properties::default()
    };
    let codes = r.rest().iter().map(|&c| ReasonCode(c)).collect();
    Ok(SubAck {
        packet_id,
        properties,
        codes,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::new(ReasonCode::SUCCESS);
    if v5 && r.remaining() > 0 {
        disconnect.code = ReasonCode(r.u8("reason code")?);
        if r.remaining() > 0 {
            disconnect.properties = Properties::decode(r, Context::Disconnect)?;
        }
    }
    Ok(disconnect)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth {
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    };
    if r.remaining() > 0 {
        auth.code = ReasonCode(r.u8("reason code")?);
        auth.properties = Properties::decode(r, Context::Auth)?;
    }
    Ok(auth)
}

/// Appends `packet`, encoded for `version`, to `buf`.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(c) => put_packet(buf, CONNECT << 4, |b| encode_connect(c, b)),
        Packet::ConnAck(c) => put_packet(buf, CONNACK << 4, |b| {
            // MQTT 3.1 has no session-present flag: its first byte is reserved.
            let session_present = c.session_present && version != ProtocolVersion::V31;
            b.put_u8(session_present as u8);
            if v5 {
                b.put_u8(c.code.0);
                c.properties.encode(b);
            } else {
                b.put_u8(c.code.to_v3_connack());
            }
        }),
        Packet::Publish(p) => {
            let forwarded = p.properties.forwarded_message_properties();
            OutgoingPublish {
                topic: p.topic.as_str(),
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                packet_id: p.packet_id,
                message_expiry: p.properties.message_expiry_interval,
                topic_alias: p.properties.topic_alias,
                subscription_ids: &p.properties.subscription_identifiers,
                forwarded_properties: &forwarded,
                payload: &p.payload,
            }
            .encode(version, buf)
        }
        Packet::PubAck(a) => encode_ack(PUBACK << 4, a, v5, buf),
        Packet::PubRec(a) => encode_ack(PUBREC << 4, a, v5, buf),
        Packet::PubRel(a) => encode_ack(PUBREL << 4 | 0b0010, a, v5, buf),
        Packet::PubComp(a) => encode_ack(PUBCOMP << 4, a, v5, buf),
        Packet::Subscribe(s) => put_packet(buf, SUBSCRIBE << 4 | 0b0010, |b| {
            b.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(b);
            }
            for (filter, o) in &s.filters {
                put_str(b, filter);
                b.put_u8(if v5 { o.to_byte() } else { o.qos as u8 });
            }
        }),
        Packet::SubAck(s) => encode_suback(SUBACK << 4, s, v5, buf),
        Packet::Unsubscribe(u) => put_packet(buf, UNSUBSCRIBE << 4 | 0b0010, |b| {
            b.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(b);
            }
            for filter in &u.filters {
                put_str(b, filter);
            }
        }),
        Packet::UnsubAck(s) => encode_suback(UNSUBACK << 4, s, v5, buf),
        Packet::PingReq => buf.put_slice(&[PINGREQ << 4, 0]),
        Packet::PingResp => buf.put_slice(&[PINGRESP << 4, 0]),
        Packet::Disconnect(d) => put_packet(buf, DISCONNECT << 4, |b| {
            if v5 && (d.code != ReasonCode::SUCCESS || d.properties != Properties::default()) {
                b.put_u8(d.code.0);
                d.properties.encode(b);
            }
        }),
        Packet::Auth(a) => put_packet(buf, AUTH << 4, |b| {
            b.put_u8(a.code.0);
            a.properties.encode(b);
        }),
    }
}

/// Appends `packet` for a peer that accepts packets of at most `limit` bytes (its
/// Maximum Packet Size), leaving out the Reason String and User Properties when only
/// they make it too large: the one thing a sender may leave out to make a packet fit
/// ([MQTT-3.2.2-19], [MQTT-3.2.2-20], and the same rule for every other packet).
/// False when it does not fit even then; nothing is appended.
pub fn encode_within(
    packet: &Packet,
    version: ProtocolVersion,
    limit: usize,
    buf: &mut BytesMut,
) -> bool {
    let start = buf.len();
    encode(packet, version, buf);
    if buf.len() - start <= limit {
        return true;
    }
    buf.truncate(start);
    let mut plain = packet.clone();
    let stripped = match &mut plain {
        Packet::ConnAck(ConnAck { properties, .. })
        | Packet::PubAck(Ack { properties, .. })
        | Packet::PubRec(Ack { properties, .. })
        | Packet::PubRel(Ack { properties, .. })
        | Packet::PubComp(Ack { properties, .. })
        | Packet::SubAck(SubAck { properties, .. })
        | Packet::UnsubAck(SubAck { properties, .. })
        | Packet::Disconnect(Disconnect { properties, .. })
        | Packet::Auth(Auth { properties, .. }) => match properties.get_mut() {
            Some(values)
                if values.reason_string.is_some() || !values.user_properties.is_empty() =>
            {
                values.reason_string = None;
                values.user_properties.clear();
                true
            }
            _ => false,
        },
        _ => false,
    };
    if stripped {
        encode(&plain, version, buf);
        if buf.len() - start <= limit {
            return true;
        }
        buf.truncate(start);
    }
    false
}

fn encode_connect(c: &Connect, b: &mut BytesMut) {
    let v5 = c.protocol == ProtocolVersion::V5;
    match c.protocol {
        ProtocolVersion::V31 => put_str(b, "MQIsdp"),
        _ => put_str(b, "MQTT"),
    }
    b.put_u8(c.protocol.level() | if c.bridge { 0x80 } else { 0 });
    let mut flags = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
    }
    flags |= (c.password.is_some() as u8) << 6 | (c.username.is_some() as u8) << 7;
    b.put_u8(flags);
    b.put_u16(c.keep_alive);
    if v5 {
        c.properties.encode(b);
    }
    put_str(b, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.properties.encode(b);
        }
        put_str(b, &w.topic);
        put_binary(b, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(b, u);
    }
    if let Some(p) = &c.password {
        put_binary(b, p);
    }
}

fn encode_ack(first_byte: u8, a: &Ack, v5: bool, buf: &mut BytesMut) {
    let has_properties = a.properties != Properties::default();
    if !v5 || (a.code == ReasonCode::SUCCESS && !has_properties) {
        buf.put_slice(&[first_byte, 2]);
        buf.put_u16(a.packet_id);
        return;
    }
    put_packet(buf, first_byte, |b| {
        b.put_u16(a.packet_id);
        b.put_u8(a.code.0);
        if has_properties {
            a.properties.encode(b);
        }
    });
}

fn encode_suback(first_byte: u8, s: &SubAck, v5: bool, buf: &mut BytesMut) {
    put_packet(buf, first_byte, |b| {
        b.put_u16(s.packet_id);
        if v5 {
            s.properties.encode(b);
        }
        for code in &s.codes {
            b.put_u8(code.0);
        }
    });
}

/// A PUBLISH on its way to one subscriber: the shared parts of the message by reference,
/// the per-subscriber parts (QoS, packet id, alias, subscription ids) by value, so a
/// fan-out encodes straight into each connection's write buffer without building packets.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    /// Empty when `topic_alias` names an alias the receiver already knows.
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_ids: &'a [u32],
    /// Encoded by [`Properties::forwarded_message_properties`].
    pub forwarded_properties: &'a [u8],
    pub payload: &'a [u8],
}

impl OutgoingPublish<'_> {
    fn properties_len(&self) -> usize {
        let mut len = self.forwarded_properties.len();
        if self.message_expiry.is_some() {
            len += 5;
        }
        if self.topic_alias.is_some() {
            len += 3;
        }
        for id in self.subscription_ids {
            len += 1 + vbi_len(*id as usize);
        }
        len
    }

    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.qos > QoS::AtMostOnce {
            len += 2;
        }
        if version == ProtocolVersion::V5 {
            let props = self.properties_len();
            len += vbi_len(props) + props;
        }
        len
    }

    /// The whole packet's size, for checking a receiver's Maximum Packet Size.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1 + vbi_len(remaining) + remaining
    }

    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let remaining = self.remaining_len(version);
        buf.reserve(1 + vbi_len(remaining) + remaining);
        buf.put_u8(
            PUBLISH << 4 | (self.dup as u8) << 3 | (self.qos as u8) << 1 | self.retain as u8,
        );
        put_vbi(buf, remaining);
        put_str(buf, self.topic);
        if self.qos > QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version == ProtocolVersion::V5 {
            put_vbi(buf, self.properties_len());
            buf.put_slice(self.forwarded_properties);
            if let Some(expiry) = self.message_expiry {
                buf.put_u8(0x02);
                buf.put_u32(expiry);
            }
            if let Some(alias) = self.topic_alias {
                buf.put_u8(0x23);
                buf.put_u16(alias);
            }
            for id in self.subscription_ids {
                buf.put_u8(0x0B);
                put_vbi(buf, *id as usize);
            }
        }
        buf.put_slice(self.payload);
    }
}
