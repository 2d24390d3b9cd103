//! MQTT 5.0 properties (spec section 2.2.2): one struct for all of them, decoded with the
//! rules of the packet they arrive in (which properties it may carry, which may repeat).

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{DecodeError, Reader, put_binary, put_str, put_vbi};

/// A packet's properties: boxed, and absent when there are none. Most packets carry
/// none, and a `Packet` is moved by value through the codec and the broker: 8 bytes of
/// properties where the values take 344. Reads see [`PropertyValues::EMPTY`] when there
/// are none; the first write makes the box.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

impl PropertyValues {
    pub const EMPTY: PropertyValues = PropertyValues {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: Vec::new(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };
}

static EMPTY: PropertyValues = PropertyValues::EMPTY;

impl Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_default()
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Properties {
        if values == PropertyValues::EMPTY {
            Properties(None)
        } else {
            Properties(Some(Box::new(values)))
        }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Properties {
    /// The values to change, without making a box when there are none: for removals
    /// on a hot path, where `DerefMut` would allocate an empty one.
    pub fn get_mut(&mut self) -> Option<&mut PropertyValues> {
        self.0.as_deref_mut()
    }
}

/// Where a property list stands; each property is allowed in some of these only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Context {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const fn ctx(list: &[Context]) -> u16 {
    let mut mask = 0;
    let mut i = 0;
    while i < list.len() {
        mask |= 1 << (list[i] as u16);
        i += 1;
    }
    mask
}

use Context::*;
const MSG: u16 = ctx(&[Publish, Will]);
const ALL: u16 = u16::MAX;
const REASON: u16 = ctx(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]);

/// (identifier, name, contexts where it is allowed) for every property in the spec.
fn describe(id: u8) -> Option<(&'static str, u16)> {
    Some(match id {
        0x01 => ("payload format indicator", MSG),
        0x02 => ("message expiry interval", MSG),
        0x03 => ("content type", MSG),
        0x08 => ("response topic", MSG),
        0x09 => ("correlation data", MSG),
        0x0B => ("subscription identifier", ctx(&[Publish, Subscribe])),
        0x11 => (
            "session expiry interval",
            ctx(&[Connect, ConnAck, Disconnect]),
        ),
        0x12 => ("assigned client identifier", ctx(&[ConnAck])),
        0x13 => ("server keep alive", ctx(&[ConnAck])),
        0x15 => ("authentication method", ctx(&[Connect, ConnAck, Auth])),
        0x16 => ("authentication data", ctx(&[Connect, ConnAck, Auth])),
        0x17 => ("request problem information", ctx(&[Connect])),
        0x18 => ("will delay interval", ctx(&[Will])),
        0x19 => ("request response information", ctx(&[Connect])),
        0x1A => ("response information", ctx(&[ConnAck])),
        0x1C => ("server reference", ctx(&[ConnAck, Disconnect])),
        0x1F => ("reason string", REASON),
        0x21 => ("receive maximum", ctx(&[Connect, ConnAck])),
        0x22 => ("topic alias maximum", ctx(&[Connect, ConnAck])),
        0x23 => ("topic alias", ctx(&[Publish])),
        0x24 => ("maximum QoS", ctx(&[ConnAck])),
        0x25 => ("retain available", ctx(&[ConnAck])),
        0x26 => ("user property", ALL),
        0x27 => ("maximum packet size", ctx(&[Connect, ConnAck])),
        0x28 => ("wildcard subscription available", ctx(&[ConnAck])),
        0x29 => ("subscription identifier available", ctx(&[ConnAck])),
        0x2A => ("shared subscription available", ctx(&[ConnAck])),
        _ => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::protocol(format!(
            "{name} property appears twice"
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, name: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8(name)?;
    if v > 1 {
        return Err(DecodeError::protocol(format!(
            "{name} must be 0 or 1, got {v}"
        )));
    }
    Ok(v)
}

fn nonzero_u16(r: &mut Reader, name: &'static str) -> Result<u16, DecodeError> {
    let v = r.u16(name)?;
    if v == 0 {
        return Err(DecodeError::protocol(format!("{name} must not be 0")));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property length and the properties it covers.
    pub fn decode(r: &mut Reader, context: Context) -> Result<Properties, DecodeError> {
        let len = r.vbi("property length")? as usize;
        if len == 0 {
            return Ok(Properties::default());
        }
        let mut r = Reader::new(r.take(len, "properties")?);
        let mut p = PropertyValues::default();
        while r.remaining() > 0 {
            let id = r.vbi("property identifier")?;
            let (name, allowed) = u8::try_from(id).ok().and_then(describe).ok_or_else(|| {
                DecodeError::malformed(format!("unknown property identifier 0x{id:02X}"))
            })?;
            if allowed & context.bit() == 0 {
                return Err(DecodeError::protocol(format!(
                    "{name} property is not allowed in {context:?}"
                )));
            }
            match id {
                0x01 => set_once(&mut p.payload_format_indicator, flag(&mut r, name)?, name)?,
                0x02 => set_once(&mut p.message_expiry_interval, r.u32(name)?, name)?,
                0x03 => set_once(&mut p.content_type, r.string(name)?, name)?,
                0x08 => set_once(&mut p.response_topic, r.string(name)?, name)?,
                0x09 => set_once(&mut p.correlation_data, r.binary(name)?, name)?,
                0x0B => {
                    let v = r.vbi(name)?;
                    if v == 0 {
                        return Err(DecodeError::protocol(
                            "subscription identifier must not be 0",
                        ));
                    }
                    if context == Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::protocol(
                            "subscription identifier property appears twice",
                        ));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, r.u32(name)?, name)?,
                0x12 => set_once(&mut p.assigned_client_identifier, r.string(name)?, name)?,
                0x13 => set_once(&mut p.server_keep_alive, r.u16(name)?, name)?,
                0x15 => set_once(&mut p.authentication_method, r.string(name)?, name)?,
                0x16 => set_once(&mut p.authentication_data, r.binary(name)?, name)?,
                0x17 => set_once(
                    &mut p.request_problem_information,
                    flag(&mut r, name)?,
                    name,
                )?,
                0x18 => set_once(&mut p.will_delay_interval, r.u32(name)?, name)?,
                0x19 => set_once(
                    &mut p.request_response_information,
                    flag(&mut r, name)?,
                    name,
                )?,
                0x1A => set_once(&mut p.response_information, r.string(name)?, name)?,
                0x1C => set_once(&mut p.server_reference, r.string(name)?, name)?,
                0x1F => set_once(&mut p.reason_string, r.string(name)?, name)?,
                0x21 => set_once(&mut p.receive_maximum, nonzero_u16(&mut r, name)?, name)?,
                0x22 => set_once(&mut p.topic_alias_maximum, r.u16(name)?, name)?,
                0x23 => set_once(&mut p.topic_alias, nonzero_u16(&mut r, name)?, name)?,
                0x24 => set_once(&mut p.maximum_qos, flag(&mut r, name)?, name)?,
                0x25 => set_once(&mut p.retain_available, flag(&mut r, name)?, name)?,
                0x26 => {
                    let key = r.string("user property name")?;
                    let value = r.string("user property value")?;
                    p.user_properties.push((key, value));
                }
                0x27 => {
                    let v = r.u32(name)?;
                    if v == 0 {
                        return Err(DecodeError::protocol("maximum packet size must not be 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v, name)?
                }
                0x28 => set_once(
                    &mut p.wildcard_subscription_available,
                    flag(&mut r, name)?,
                    name,
                )?,
                0x29 => set_once(
                    &mut p.subscription_identifier_available,
                    flag(&mut r, name)?,
                    name,
                )?,
                0x2A => set_once(
                    &mut p.shared_subscription_available,
                    flag(&mut r, name)?,
                    name,
                )?,
                _ => unreachable!("describe() lists every identifier handled here"),
            }
        }
        // At least one property was read: there is something to box.
        Ok(Properties(Some(Box::new(p))))
    }

    /// See [`PropertyValues::forwarded_message_properties`]; nothing to encode, on every
    /// publish, when the packet carries no properties.
    pub fn forwarded_message_properties(&self) -> Bytes {
        match &self.0 {
            Some(values) => values.forwarded_message_properties(),
            None => Bytes::new(),
        }
    }

    /// The inverse of [`PropertyValues::forwarded_message_properties`], for tests.
    #[cfg(test)]
    pub fn from_forwarded(encoded: &Bytes) -> Properties {
        let mut framed = BytesMut::with_capacity(encoded.len() + 4);
        put_vbi(&mut framed, encoded.len());
        framed.put_slice(encoded);
        Properties::decode(&mut Reader::new(framed.freeze()), Context::Publish).unwrap_or_default()
    }
}

impl PropertyValues {
    /// Writes the property length and the properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        put_vbi(buf, body.len());
        buf.put_slice(&body);
    }

    fn encode_body(&self, b: &mut Vec<u8>) {
        fn byte(b: &mut Vec<u8>, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u8(v);
            }
        }
        fn two(b: &mut Vec<u8>, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u16(v);
            }
        }
        fn four(b: &mut Vec<u8>, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                b.put_u8(id);
                b.put_u32(v);
            }
        }
        fn string(b: &mut Vec<u8>, id: u8, v: &Option<String>) {
            if let Some(v) = v {
                b.put_u8(id);
                put_str(b, v);
            }
        }
        fn binary(b: &mut Vec<u8>, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                b.put_u8(id);
                put_binary(b, v);
            }
        }
        byte(b, 0x01, self.payload_format_indicator);
        four(b, 0x02, self.message_expiry_interval);
        string(b, 0x03, &self.content_type);
        string(b, 0x08, &self.response_topic);
        binary(b, 0x09, &self.correlation_data);
        for id in &self.subscription_identifiers {
            b.put_u8(0x0B);
            put_vbi(b, *id as usize);
        }
        four(b, 0x11, self.session_expiry_interval);
        string(b, 0x12, &self.assigned_client_identifier);
        two(b, 0x13, self.server_keep_alive);
        string(b, 0x15, &self.authentication_method);
        binary(b, 0x16, &self.authentication_data);
        byte(b, 0x17, self.request_problem_information);
        four(b, 0x18, self.will_delay_interval);
        byte(b, 0x19, self.request_response_information);
        string(b, 0x1A, &self.response_information);
        string(b, 0x1C, &self.server_reference);
        string(b, 0x1F, &self.reason_string);
        two(b, 0x21, self.receive_maximum);
        two(b, 0x22, self.topic_alias_maximum);
        two(b, 0x23, self.topic_alias);
        byte(b, 0x24, self.maximum_qos);
        byte(b, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            b.put_u8(0x26);
            put_str(b, k);
            put_str(b, v);
        }
        four(b, 0x27, self.maximum_packet_size);
        byte(b, 0x28, self.wildcard_subscription_available);
        byte(b, 0x29, self.subscription_identifier_available);
        byte(b, 0x2A, self.shared_subscription_available);
    }

    /// The properties of an application message that a broker forwards unchanged to
    /// subscribers ([MQTT-3.3.2-...]: payload format, content type, response topic,
    /// correlation data, user properties), encoded once so each delivery copies bytes.
    pub fn forwarded_message_properties(&self) -> Bytes {
        let forwarded = PropertyValues {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            ..PropertyValues::default()
        };
        let mut body = Vec::new();
        forwarded.encode_body(&mut body);
        Bytes::from(body)
    }
}
