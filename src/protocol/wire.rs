//! The primitive data types of MQTT (spec section 1.5): integers, variable byte integers,
//! UTF-8 strings and binary data, read from a packet body and written to a buffer.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::reason::ReasonCode;

/// What was wrong with the bytes and the reason code a v5 peer should be told.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub code: ReasonCode,
    pub what: Cow<'static, str>,
}

impl DecodeError {
    pub fn malformed(what: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            code: ReasonCode::MALFORMED_PACKET,
            what: what.into(),
        }
    }

    pub fn protocol(what: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            code: ReasonCode::PROTOCOL_ERROR,
            what: what.into(),
        }
    }

    pub fn with(code: ReasonCode, what: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            code,
            what: what.into(),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.what, self.code)
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over one packet's body that never reads past its end.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::malformed(format!("packet ends inside {what}")));
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub fn vbi(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8(what)?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::malformed(format!(
            "{what} is a variable byte integer longer than 4 bytes"
        )))
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    pub fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)? as usize;
        self.take(len, what)
    }

    /// A UTF-8 string kept as the bytes of the packet (checked, not copied).
    pub fn utf8_bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let bytes = self.binary(what)?;
        check_utf8(&bytes, what)?;
        Ok(bytes)
    }

    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.binary(what)?;
        check_utf8(&bytes, what)?;
        // Checked just above; from_utf8 again would be a second scan.
        Ok(unsafe { String::from_utf8_unchecked(bytes.to_vec()) })
    }

    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
}

/// MQTT strings must be well-formed UTF-8 without U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2]).
pub fn check_utf8(bytes: &[u8], what: &'static str) -> Result<(), DecodeError> {
    let s = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::malformed(format!("{what} is not valid UTF-8")))?;
    if s.as_bytes().contains(&0) {
        return Err(DecodeError::malformed(format!("{what} contains U+0000")));
    }
    Ok(())
}

pub fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_vbi(buf: &mut impl BufMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

pub fn put_binary(buf: &mut impl BufMut, bytes: &[u8]) {
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

pub fn put_str(buf: &mut impl BufMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

/// Writes a fixed header and a body whose length is known only once it is written:
/// the body goes after room for the longest header, then slides back into place.
pub fn put_packet(buf: &mut BytesMut, first_byte: u8, body: impl FnOnce(&mut BytesMut)) {
    const ROOM: usize = 5;
    let start = buf.len();
    buf.put_bytes(0, ROOM);
    body(buf);
    let body_len = buf.len() - start - ROOM;
    let header_len = 1 + vbi_len(body_len);
    let mut header = [0u8; ROOM];
    header[0] = first_byte;
    put_vbi(&mut &mut header[1..], body_len);
    buf[start..start + header_len].copy_from_slice(&header[..header_len]);
    let shift = ROOM - header_len;
    if shift > 0 {
        buf.copy_within(start + ROOM.., start + header_len);
        buf.truncate(buf.len() - shift);
    }
}
