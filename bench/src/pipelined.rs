//! The generator's side of MQTT: 3.1.1 connections that write pre-encoded batches and
//! read large chunks, parsing only the fixed header, topic and packet id of what arrives.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_rustls::rustls::ClientConfig;
use rustls_pki_types::ServerName;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use tern::protocol::{
    Ack, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, encode,
};
use tern::transport::outgoing::{self, OutgoingStream};

const V: ProtocolVersion = ProtocolVersion::V311;

/// Set once by `--tls-ca`: every connection is then MQTT over TLS, each a full
/// handshake (no session resumption), so the broker's handshake cost is measured.
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

pub fn use_tls(ca_file: &str) -> io::Result<()> {
    let config =
        outgoing::tls_config(Some(Path::new(ca_file)), None, false).map_err(io::Error::other)?;
    let _ = TLS.set(config);
    Ok(())
}

pub struct Conn {
    pub stream: OutgoingStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// One packet as the generator sees it.
pub struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// (packet id, payload) of a PUBLISH.
    pub fn publish(&self) -> (u16, &[u8]) {
        let topic_len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let mut pos = 2 + topic_len;
        let mut id = 0;
        if (self.flags >> 1) & 3 > 0 {
            id = u16::from_be_bytes([self.body[pos], self.body[pos + 1]]);
            pos += 2;
        }
        (id, &self.body[pos..])
    }
}

pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const CONNACK: u8 = 2;
pub const SUBACK: u8 = 9;

impl Conn {
    pub async fn open(addr: SocketAddr, client_id: &str, keep_alive: u16) -> io::Result<Conn> {
        Conn::open_session(addr, client_id, keep_alive, true).await
    }

    /// Connects with clean session 0 (`clean = false`) to keep a persistent session.
    pub async fn open_session(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
    ) -> io::Result<Conn> {
        let tls = TLS
            .get()
            .map(|config| (config, ServerName::IpAddress(addr.ip().into())));
        let stream = outgoing::connect(addr, tls).await?;
        let mut conn = Conn {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        };
        let mut out = BytesMut::new();
        connect_packet(client_id, keep_alive, clean, &mut out);
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
        conn.expect(CONNACK).await?;
        Ok(conn)
    }

    /// Writes `bytes` and flushes them (TLS buffers records until a flush).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        let mut out = BytesMut::new();
        subscribe_packet(filter, qos, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.expect(SUBACK).await
    }

    async fn expect(&mut self, kind: u8) -> io::Result<()> {
        loop {
            let mut found = None;
            // One frame only: what follows (a resumed session's messages may come in
            // the same segment as the CONNACK) stays buffered for the next reader.
            self.read_frames_max(1, |f| found = Some(f.kind)).await?;
            match found {
                Some(k) if k == kind => return Ok(()),
                Some(k) => {
                    return Err(io::Error::other(format!(
                        "expected packet type {kind}, got {k}"
                    )));
                }
                None => {}
            }
        }
    }

    /// Calls `each` for every whole frame buffered, reading one chunk first when there
    /// is none. Returns the number of frames; an error on EOF.
    pub async fn read_frames(&mut self, each: impl FnMut(Frame<'_>)) -> io::Result<usize> {
        self.read_frames_max(usize::MAX, each).await
    }

    async fn read_frames_max(
        &mut self,
        max: usize,
        mut each: impl FnMut(Frame<'_>),
    ) -> io::Result<usize> {
        let frames = self.parse_frames(max, &mut each);
        if frames > 0 {
            return Ok(frames);
        }
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            ));
        }
        self.end += n;
        Ok(self.parse_frames(max, &mut each))
    }

    fn parse_frames(&mut self, max: usize, each: &mut impl FnMut(Frame<'_>)) -> usize {
        let mut frames = 0;
        while frames < max {
            let data = &self.buf[self.start..self.end];
            let Some((header, body_len)) = frame_header(data) else {
                break;
            };
            if data.len() < header + body_len {
                break;
            }
            each(Frame {
                kind: data[0] >> 4,
                flags: data[0] & 0x0F,
                body: &data[header..header + body_len],
            });
            self.start += header + body_len;
            frames += 1;
        }
        frames
    }
}

fn frame_header(data: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *data.get(1 + i)?;
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    None
}

pub fn connect_packet(client_id: &str, keep_alive: u16, clean: bool, out: &mut BytesMut) {
    let connect = Connect {
        protocol: V,
        bridge: false,
        clean_start: clean,
        keep_alive,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    encode(&Packet::Connect(Box::new(connect)), V, out);
}

pub fn subscribe_packet(filter: &str, qos: QoS, out: &mut BytesMut) {
    let options = SubscriptionOptions {
        qos,
        ..Default::default()
    };
    let sub = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), options)],
    };
    encode(&Packet::Subscribe(sub), V, out);
}

pub fn publish_packet(topic: &str, qos: QoS, packet_id: u16, payload: &[u8], out: &mut BytesMut) {
    let p = Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    };
    encode(&Packet::Publish(p), V, out);
}

pub fn puback_packet(packet_id: u16, out: &mut BytesMut) {
    encode(
        &Packet::PubAck(Ack::new(packet_id, tern::protocol::ReasonCode::SUCCESS)),
        V,
        out,
    );
}
