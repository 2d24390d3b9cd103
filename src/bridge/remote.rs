//! The bridge's connection to one remote broker: name resolution, TCP, TLS, CONNECT
//! and CONNACK, and the subscriptions of its `in` rules. What follows the CONNACK is
//! the uplink's business (`uplink.rs`).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_rustls::rustls::ClientConfig;
use rustls_pki_types::ServerName;
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::settings::{BridgeSettings, Remote};
use crate::protocol::{
    self, Connect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, Subscribe,
    Will,
};
use crate::transport::outgoing::{self, OutgoingStream};

/// How long one connection attempt may take, from DNS to CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The packet id of the bridge's own SUBSCRIBE; the outbox's PUBLISH ids count up
/// from 1, so this one is the least likely to be in flight.
pub const SUBSCRIBE_ID: u16 = u16::MAX;

/// Why an attempt failed, by stage, for one clear log line.
#[derive(Debug)]
pub enum RemoteError {
    Dns(String),
    Tcp(String),
    Tls(String),
    /// The remote refused the CONNECT: its reason code.
    Refused(ReasonCode),
    /// The remote closed or broke the connection during the MQTT handshake.
    Handshake(String),
    Timeout,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Dns(e) => write!(f, "name lookup failed: {e}"),
            RemoteError::Tcp(e) => write!(f, "TCP connect failed: {e}"),
            RemoteError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            RemoteError::Refused(code) => write!(f, "CONNACK refused: {code}"),
            RemoteError::Handshake(e) => write!(f, "MQTT handshake failed: {e}"),
            RemoteError::Timeout => write!(f, "no CONNACK within {CONNECT_TIMEOUT:?}"),
        }
    }
}

/// An open connection to the remote, past its CONNACK.
pub struct RemoteSession {
    pub stream: OutgoingStream,
    pub version: ProtocolVersion,
    pub peer: SocketAddr,
    /// Bytes that arrived after the CONNACK.
    pub rbuf: BytesMut,
    pub session_present: bool,
    /// Outbound QoS 1/2 the remote takes in flight at once.
    pub receive_maximum: u16,
    /// The keep-alive the remote holds us to (a v5 server may lower ours).
    pub keep_alive: Duration,
    /// The largest packet the remote accepts, when it said (v5).
    pub maximum_packet_size: Option<u32>,
}

/// Connects to `remote`. `private`: announce a Mosquitto-style bridge (3.1.1 only).
pub async fn open(
    settings: &BridgeSettings,
    remote: &Remote,
    tls: Option<&Arc<ClientConfig>>,
    private: bool,
    inbound_maximum: u16,
) -> Result<RemoteSession, RemoteError> {
    open_within(settings, remote, tls, private, inbound_maximum)
        .or(async {
            smol::Timer::after(CONNECT_TIMEOUT).await;
            Err(RemoteError::Timeout)
        })
        .await
}

async fn open_within(
    settings: &BridgeSettings,
    remote: &Remote,
    tls: Option<&Arc<ClientConfig>>,
    private: bool,
    inbound_maximum: u16,
) -> Result<RemoteSession, RemoteError> {
    let target = (remote.host.clone(), remote.port);
    let addrs: Vec<SocketAddr> = smol::unblock(move || target.to_socket_addrs())
        .await
        .map_err(|e| RemoteError::Dns(format!("{}: {e}", remote.host)))?
        .collect();
    let mut last = RemoteError::Dns(format!("{}: no address", remote.host));
    for addr in addrs {
        let tcp = match outgoing::connect_tcp(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                last = RemoteError::Tcp(format!("{addr}: {e}"));
                continue;
            }
        };
        let stream = match (remote.tls, tls) {
            (false, _) => OutgoingStream::Tcp(tcp),
            (true, Some(config)) => {
                let name = settings.tls.server_name.as_deref().unwrap_or(&remote.host);
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| RemoteError::Tls(format!("server name {name:?}: {e}")))?;
                outgoing::start_tls(tcp, config, name)
                    .await
                    .map_err(|e| RemoteError::Tls(e.to_string()))?
            }
            (true, None) => return Err(RemoteError::Tls("no TLS configuration".into())),
        };
        return handshake(settings, stream, addr, private, inbound_maximum).await;
    }
    Err(last)
}

async fn handshake(
    settings: &BridgeSettings,
    mut stream: OutgoingStream,
    peer: SocketAddr,
    private: bool,
    inbound_maximum: u16,
) -> Result<RemoteSession, RemoteError> {
    let version = if settings.v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let mut properties = Properties::default();
    if settings.v5 {
        properties.session_expiry_interval = Some(if settings.clean_start {
            0
        } else {
            settings.session_expiry
        });
        properties.receive_maximum = Some(inbound_maximum);
    }
    let will = settings.notification_topic.as_ref().map(|topic| Will {
        topic: topic.clone(),
        payload: Bytes::from_static(b"0"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    let connect = Connect {
        protocol: version,
        bridge: private && !settings.v5,
        clean_start: settings.clean_start,
        keep_alive: settings.keep_alive,
        client_id: settings.client_id.clone(),
        will,
        username: settings.username.clone(),
        password: settings.password.clone().map(Bytes::from),
        properties,
    };
    let mut out = BytesMut::new();
    protocol::encode(&Packet::Connect(Box::new(connect)), version, &mut out);
    let failed = |e: std::io::Error| RemoteError::Handshake(e.to_string());
    stream.write_all(&out).await.map_err(failed)?;
    stream.flush().await.map_err(failed)?;
    let mut rbuf = BytesMut::with_capacity(4096);
    let connack = loop {
        match protocol::decode(&mut rbuf, version, 1 << 20) {
            Ok(Some(Packet::ConnAck(ack))) => break ack,
            Ok(Some(other)) => {
                return Err(RemoteError::Handshake(format!(
                    "expected CONNACK, got {}",
                    other.kind()
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(RemoteError::Handshake(e.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(failed)?;
        if n == 0 {
            return Err(RemoteError::Handshake(
                "the remote closed the connection before CONNACK".into(),
            ));
        }
        rbuf.extend_from_slice(&chunk[..n]);
    };
    if connack.code != ReasonCode::SUCCESS {
        return Err(RemoteError::Refused(connack.code));
    }
    let p = &connack.properties;
    let keep_alive = p.server_keep_alive.unwrap_or(settings.keep_alive);
    let mut remote = RemoteSession {
        stream,
        version,
        peer,
        rbuf,
        session_present: connack.session_present,
        receive_maximum: match p.receive_maximum {
            Some(max) => max,
            None if settings.v5 => u16::MAX,
            None => settings.max_inflight,
        },
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        maximum_packet_size: p.maximum_packet_size,
    };
    remote.greet(settings).await.map_err(failed)?;
    Ok(remote)
}

impl RemoteSession {
    /// The remote's first packets from us: the `1` of the notification topic and the
    /// subscriptions of the `in` rules (with no-local on v5, so what the bridge sends
    /// out does not come back).
    async fn greet(&mut self, settings: &BridgeSettings) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        if let Some(topic) = &settings.notification_topic {
            let up = protocol::Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: topic.as_str().into(),
                packet_id: 0,
                properties: Properties::default(),
                payload: Bytes::from_static(b"1"),
            };
            protocol::encode(&Packet::Publish(up), self.version, &mut out);
        }
        let filters = settings
            .rules
            .subscriptions(false, RetainHandling::SendAtSubscribe);
        if !filters.is_empty() {
            let subscribe = Subscribe {
                packet_id: SUBSCRIBE_ID,
                properties: Properties::default(),
                filters,
            };
            protocol::encode(&Packet::Subscribe(subscribe), self.version, &mut out);
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }
}
