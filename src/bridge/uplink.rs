//! The bridge's relay: a [`Stream`] that the ordinary connection loop serves as if it
//! were a client named `$bridge/NAME`, whose other end is the remote broker.
//!
//! That local client is the bridge's outbox. It holds a persistent session subscribed
//! to the `out` rules, so every message for the remote is queued, stored (under
//! `strict`, before its publisher is acknowledged), limited and resent exactly as for
//! any persistent subscriber, and deleted only when the local side sees the PUBACK (or
//! PUBCOMP) that this relay passes on from the remote. Packet ids pass through
//! unchanged in both directions: the outbox's ids are the ids the remote sees, and the
//! remote's ids for what it sends are the ids the local session acknowledges. The relay
//! itself keeps no messages; it rewrites topics by the rules, translates between the
//! local MQTT 5 and the remote's version, and answers keep-alive.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smol::Timer;
use smol::future::Future;
use smol::io::{AsyncRead, AsyncWrite};

use super::BridgeStatus;
use super::remote::{RemoteSession, SUBSCRIBE_ID};
use super::rules::Rules;
use super::settings::BridgeSettings;
use crate::broker::session::NEVER_EXPIRES;
use crate::protocol::{
    self, Ack, Connect, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish,
    QoS, ReasonCode, RetainHandling, Subscribe,
};
use crate::throttle::Throttle;
use crate::transport::Stream;

const LOCAL: ProtocolVersion = ProtocolVersion::V5;
/// The local SUBSCRIBE's packet id.
const LOCAL_SUBSCRIBE_ID: u16 = 1;
/// Stop taking the outbox's packets while this much waits for the remote socket.
const REMOTE_BACKLOG: usize = 256 * 1024;

/// Refusals from the remote come once per message: their log lines are throttled.
static REMOTE_REFUSALS: Throttle = Throttle::new();

pub struct Uplink {
    /// `None` while the outbox is only being set up (no remote yet).
    remote: Option<RemoteSession>,
    rules: Arc<Rules>,
    status: Arc<BridgeStatus>,
    notification_topic: Option<String>,
    /// Packets for the local client to read.
    to_local: BytesMut,
    /// Bytes from the local client short of a whole packet.
    from_local: BytesMut,
    /// Bytes for the remote not yet written.
    to_remote: BytesMut,
    max_packet: usize,
    keep_alive: Duration,
    ping: Timer,
    last_received: Instant,
    /// Outbound QoS 2 no rule covers any more: completed locally.
    local_only: HashSet<u16>,
    /// Inbound QoS 2 no rule covers: completed with the remote.
    remote_only: HashSet<u16>,
    /// Why the relay ended; once set, the local client is told DISCONNECT and EOF.
    ended: Option<String>,
    cap: Option<RateCap>,
}

/// A byte budget for a metered uplink: refilled continuously at `per_second`, holding
/// at most one second's worth, so bursts stay within the cap too.
struct RateCap {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
    timer: Timer,
}

impl RateCap {
    fn new(per_second: u64) -> RateCap {
        RateCap {
            per_second: per_second as f64,
            tokens: per_second as f64,
            refilled: Instant::now(),
            timer: Timer::never(),
        }
    }

    /// How many bytes may go now; when none, `Pending` until some may.
    fn poll_budget(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        loop {
            let now = Instant::now();
            let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
            // clamp compares; f64::min would be a libm call on 32-bit ARM.
            self.tokens = (self.tokens + earned).clamp(0.0, self.per_second);
            self.refilled = now;
            if self.tokens >= 1.0 {
                return Poll::Ready(self.tokens as usize);
            }
            let wait = (1.0 - self.tokens) / self.per_second;
            self.timer
                .set_after(Duration::from_secs_f64(wait.clamp(0.001, f64::MAX)));
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn spend(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

impl Uplink {
    /// The relay over an open link; `link = None` only creates (or resumes) the outbox
    /// session with its subscriptions and ends, so messages are kept from the start
    /// even when the remote has never been reachable.
    pub fn new(
        settings: &BridgeSettings,
        remote: Option<RemoteSession>,
        status: Arc<BridgeStatus>,
        max_packet: usize,
    ) -> Uplink {
        let receive_maximum = remote.as_ref().map_or(1, |l| l.receive_maximum.max(1));
        let keep_alive = remote.as_ref().map_or(Duration::ZERO, |l| l.keep_alive);
        let mut to_local = BytesMut::new();
        // The outbox never hands the relay a message the remote would refuse as too
        // large (it would stall the bridge, resent after every reconnect): the local
        // broker drops it instead, counted, as for any client with a Maximum Packet
        // Size. A rule's longer remote prefix is allowed for.
        let growth = settings.rules.outbound_growth();
        let maximum_packet_size = remote
            .as_ref()
            .and_then(|r| r.maximum_packet_size)
            .map(|max| (max as usize).saturating_sub(growth).max(1) as u32);
        let properties = Properties::from(PropertyValues {
            session_expiry_interval: Some(NEVER_EXPIRES),
            receive_maximum: Some(receive_maximum),
            maximum_packet_size,
            ..PropertyValues::default()
        });
        let connect = Connect {
            protocol: LOCAL,
            bridge: false,
            clean_start: false,
            keep_alive: 0,
            client_id: settings.local_client_id(),
            will: None,
            username: None,
            password: None,
            properties,
        };
        protocol::encode(&Packet::Connect(Box::new(connect)), LOCAL, &mut to_local);
        // Retained messages go out once, when a rule is new, not on every reconnect.
        let filters = settings
            .rules
            .subscriptions(true, RetainHandling::SendIfNew);
        let subscribe = Subscribe {
            packet_id: LOCAL_SUBSCRIBE_ID,
            properties: Properties::default(),
            filters,
        };
        let has_out_rules = !subscribe.filters.is_empty();
        if has_out_rules {
            protocol::encode(&Packet::Subscribe(subscribe), LOCAL, &mut to_local);
        }
        let mut uplink = Uplink {
            remote,
            rules: Arc::new(settings.rules.clone()),
            status,
            notification_topic: settings.notification_topic.clone(),
            to_local,
            from_local: BytesMut::new(),
            to_remote: BytesMut::new(),
            max_packet,
            keep_alive,
            ping: Timer::after(keep_alive.max(Duration::from_secs(1))),
            last_received: Instant::now(),
            local_only: HashSet::new(),
            remote_only: HashSet::new(),
            ended: None,
            cap: settings.max_bytes_per_second.map(RateCap::new),
        };
        if uplink.remote.is_none() && !has_out_rules {
            uplink.end("outbox ready".into());
        }
        uplink
    }

    pub fn status(&self) -> &Arc<BridgeStatus> {
        &self.status
    }

    /// Ends the relay; `why` becomes the bridge's last error.
    fn end(&mut self, why: String) {
        if self.ended.is_none() {
            self.status.set_error(&why);
            // A normal DISCONNECT: the outbox session goes offline and keeps everything.
            let bye = Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS));
            protocol::encode(&bye, LOCAL, &mut self.to_local);
            self.ended = Some(why);
        }
    }

    fn remote_version(&self) -> ProtocolVersion {
        self.remote.as_ref().map_or(LOCAL, |l| l.version)
    }

    fn send_remote(&mut self, packet: &Packet) {
        let version = self.remote_version();
        protocol::encode(packet, version, &mut self.to_remote);
    }

    fn send_local(&mut self, packet: &Packet) {
        protocol::encode(packet, LOCAL, &mut self.to_local);
    }

    /// One packet the outbox (the local session) sent towards the remote.
    fn on_local_packet(&mut self, packet: Packet) {
        match packet {
            Packet::ConnAck(ack) if ack.code != ReasonCode::SUCCESS => {
                self.end(format!(
                    "the local broker refused the outbox session: {}",
                    ack.code
                ));
            }
            Packet::SubAck(ack) => {
                if ack.codes.iter().any(|c| c.is_error()) {
                    log::error!(
                        "bridge {}: the local broker refused some out rules: {:?}",
                        self.status.name,
                        ack.codes
                    );
                }
                if self.remote.is_none() {
                    self.end("outbox ready".into());
                }
            }
            // Without a link the outbox's messages stay in flight (and stored), to be
            // sent again with DUP once the remote is there.
            Packet::Publish(_) if self.remote.is_none() => {}
            Packet::Publish(mut publish) => match self.rules.outbound(publish.topic.as_str()) {
                Some(remote_topic) => {
                    publish.topic = remote_topic.into();
                    publish.properties.subscription_identifiers.clear();
                    let at_most_once = publish.qos == QoS::AtMostOnce;
                    self.send_remote(&Packet::Publish(publish));
                    self.status.sent.fetch_add(1, Ordering::Relaxed);
                    if at_most_once {
                        self.status.forwarded_now();
                    }
                }
                None => {
                    // A subscription left from an older configuration: acknowledged
                    // here, so it does not wait for ever.
                    log::debug!(
                        "bridge {}: no out rule covers {}; not forwarded",
                        self.status.name,
                        publish.topic
                    );
                    if let Some(ack) = acknowledge_here(&publish, &mut self.local_only) {
                        self.send_local(&ack);
                    }
                }
            },
            Packet::PubRel(rel) if self.local_only.remove(&rel.packet_id) => {
                let done = Ack::new(rel.packet_id, ReasonCode::SUCCESS);
                self.send_local(&Packet::PubComp(done));
            }
            Packet::PubRel(_) | Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)
                if self.remote.is_some() =>
            {
                self.send_remote(&packet);
            }
            Packet::Disconnect(d) => {
                // The local side closes the outbox (shutdown, takeover): a clean goodbye
                // to the remote, with the notification a will would have given.
                if self.remote.is_some() && self.ended.is_none() {
                    self.say_goodbye();
                }
                self.end(format!("the local broker closed the outbox: {}", d.code));
            }
            _ => {}
        }
    }

    fn say_goodbye(&mut self) {
        if let Some(topic) = self.notification_topic.clone() {
            let down = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: topic.into(),
                packet_id: 0,
                properties: Properties::default(),
                payload: Bytes::from_static(b"0"),
            };
            self.send_remote(&Packet::Publish(down));
        }
        self.send_remote(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)));
    }

    /// One packet from the remote.
    fn on_remote_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(mut publish) => {
                self.status.received.fetch_add(1, Ordering::Relaxed);
                match self.rules.inbound(publish.topic.as_str()) {
                    Some(local_topic) => {
                        publish.topic = local_topic.into();
                        if let Some(properties) = publish.properties.get_mut() {
                            properties.subscription_identifiers.clear();
                            properties.topic_alias = None;
                        }
                        self.send_local(&Packet::Publish(publish));
                    }
                    None => {
                        log::debug!(
                            "bridge {}: no in rule covers {}; not delivered",
                            self.status.name,
                            publish.topic
                        );
                        if let Some(ack) = acknowledge_here(&publish, &mut self.remote_only) {
                            self.send_remote(&ack);
                        }
                    }
                }
            }
            Packet::PubAck(ref ack) | Packet::PubRec(ref ack) | Packet::PubComp(ref ack) => {
                if ack.code.is_error() {
                    let peer = self.remote.as_ref().map(|l| l.peer);
                    REMOTE_REFUSALS.refused(
                        peer.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                        &format!("bridge:{}", self.status.name),
                        format_args!("the remote refused message {}: {}", ack.packet_id, ack.code),
                    );
                }
                if matches!(packet, Packet::PubAck(_) | Packet::PubComp(_)) {
                    self.status.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if !ack.code.is_error() {
                        self.status.forwarded_now();
                    }
                }
                self.send_local(&packet);
            }
            Packet::PubRel(rel) if self.remote_only.remove(&rel.packet_id) => {
                let done = Ack::new(rel.packet_id, ReasonCode::SUCCESS);
                self.send_remote(&Packet::PubComp(done));
            }
            Packet::PubRel(_) => self.send_local(&packet),
            Packet::SubAck(ack) if ack.packet_id == SUBSCRIBE_ID => {
                let refused: Vec<String> = self
                    .rules
                    .incoming()
                    .zip(&ack.codes)
                    .filter(|(_, code)| code.is_error())
                    .map(|(rule, code)| format!("{} ({code})", rule.remote_filter()))
                    .collect();
                if !refused.is_empty() {
                    log::warn!(
                        "bridge {}: the remote refused the subscriptions {}",
                        self.status.name,
                        refused.join(", ")
                    );
                }
            }
            Packet::Disconnect(d) => {
                let why = d.properties.reason_string.clone().unwrap_or_default();
                self.end(format!("the remote sent DISCONNECT {} {why}", d.code));
            }
            _ => {}
        }
    }

    /// Writes what waits for the remote; `Pending` when the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(remote) = self.remote.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !self.to_remote.is_empty() {
            let mut budget = self.to_remote.len();
            if let Some(cap) = self.cap.as_mut() {
                match cap.poll_budget(cx) {
                    Poll::Ready(allowed) => budget = budget.min(allowed),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut remote.stream).poll_write(cx, &self.to_remote[..budget]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    let _ = self.to_remote.split_to(n);
                    if let Some(cap) = self.cap.as_mut() {
                        cap.spend(n);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut remote.stream).poll_flush(cx)
    }

    /// Sends (a goodbye too, after the end), and ends the relay when the remote
    /// cannot be written to.
    fn pump_remote(&mut self, cx: &mut Context<'_>) {
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            self.end(format!("writing to the remote failed: {e}"));
        }
    }

    /// Keep-alive: a PINGREQ each interval; silence for 1.5 intervals ends the link.
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) {
        if self.keep_alive.is_zero() || self.remote.is_none() || self.ended.is_some() {
            return;
        }
        while Pin::new(&mut self.ping).poll(cx).is_ready() {
            if self.last_received.elapsed() > self.keep_alive * 3 / 2 {
                let why = format!(
                    "no answer from the remote within {:?}",
                    self.keep_alive * 3 / 2
                );
                self.end(why);
                return;
            }
            self.send_remote(&Packet::PingReq);
            self.ping.set_after(self.keep_alive / 2);
        }
    }
}

/// The acknowledgement for a message no rule covers, so its sender does not wait for
/// ever; a QoS 2 id is remembered in `unrouted` to answer its PUBREL.
fn acknowledge_here(publish: &Publish, unrouted: &mut HashSet<u16>) -> Option<Packet> {
    let ack = Ack::new(publish.packet_id, ReasonCode::SUCCESS);
    match publish.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(ack)),
        QoS::ExactlyOnce => {
            unrouted.insert(publish.packet_id);
            Some(Packet::PubRec(ack))
        }
    }
}

impl AsyncRead for Uplink {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.to_local.is_empty() {
                let n = buf.len().min(this.to_local.len());
                buf[..n].copy_from_slice(&this.to_local.split_to(n));
                return Poll::Ready(Ok(n));
            }
            if this.ended.is_some() {
                return Poll::Ready(Ok(0));
            }
            this.poll_keep_alive(cx);
            this.pump_remote(cx);
            if this.ended.is_some() || !this.to_local.is_empty() {
                continue;
            }
            let Some(remote) = this.remote.as_mut() else {
                // Setting up the outbox: the local side's answers arrive through writes.
                return Poll::Pending;
            };
            match protocol::decode(&mut remote.rbuf, remote.version, this.max_packet) {
                Ok(Some(packet)) => {
                    this.on_remote_packet(packet);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    this.end(format!("the remote sent a malformed packet: {e}"));
                    continue;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match Pin::new(&mut remote.stream).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => this.end("the remote closed the connection".into()),
                Poll::Ready(Ok(n)) => {
                    remote.rbuf.extend_from_slice(&chunk[..n]);
                    this.last_received = Instant::now();
                }
                Poll::Ready(Err(e)) => this.end(format!("reading from the remote failed: {e}")),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Uplink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended.is_none() && this.to_remote.len() > REMOTE_BACKLOG {
            this.pump_remote(cx);
            if this.ended.is_none() && this.to_remote.len() > REMOTE_BACKLOG {
                return Poll::Pending;
            }
        }
        this.from_local.extend_from_slice(buf);
        loop {
            match protocol::decode(&mut this.from_local, LOCAL, usize::MAX) {
                Ok(Some(packet)) => this.on_local_packet(packet),
                Ok(None) => break,
                Err(e) => {
                    // Our own broker's encoding: a bug if it ever happens.
                    this.end(format!("undecodable packet from the outbox session: {e}"));
                    this.from_local.clear();
                    break;
                }
            }
        }
        this.pump_remote(cx);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended.is_some() && this.to_remote.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match this.poll_send(cx) {
            Poll::Ready(Err(e)) => {
                this.end(format!("writing to the remote failed: {e}"));
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The goodbye (if any) goes out; a dead remote is not waited for.
        if this.poll_send(cx).is_pending() {
            return Poll::Pending;
        }
        match this.remote.as_mut() {
            Some(remote) => Pin::new(&mut remote.stream).poll_close(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Stream for Uplink {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
