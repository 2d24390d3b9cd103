//! Bridges from this broker into central MQTT brokers, with store-and-forward.
//!
//! Each `[[bridge]]` is one task. Its outbox is an ordinary persistent session named
//! `$bridge/NAME`, subscribed to the `out` rules, so what is kept while the uplink is
//! down, and how durably, is what the store keeps for any persistent session (see
//! `uplink.rs`). The task connects to the remote addresses in order, relays while a
//! link lasts, and reconnects with capped exponential backoff and jitter; each failure
//! is logged once per change, not once per attempt.

pub mod remote;
pub mod rules;
pub mod settings;
pub mod uplink;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_rustls::rustls::ClientConfig;

use crate::auth::AuthPolicy;
use crate::broker::session::{QueueLimits, Session};
use crate::broker::{Broker, Role};
use crate::message::Message;
use crate::protocol::{QoS, ReasonCode};
use crate::transport::RelayStream;
use crate::transport::admission::Admission;
use crate::transport::connection::{self, ConnectionConfig};
use crate::transport::outgoing;
use remote::RemoteError;
use settings::BridgeSettings;
use uplink::Uplink;

/// What a bridge is doing, for `$SYS`, the management API and logs.
pub struct BridgeStatus {
    pub name: String,
    pub connected: AtomicBool,
    /// The remote of the current (or last) link.
    pub remote: Mutex<String>,
    pub last_error: Mutex<String>,
    /// Messages forwarded to the remote, acknowledged by it, and received from it.
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub received: AtomicU64,
    /// When the remote last took a message (acknowledged it, or was sent it at QoS 0),
    /// in milliseconds since the Unix epoch; 0 for never.
    pub last_forward_ms: AtomicU64,
    pub outbox: Mutex<Option<Arc<Session>>>,
}

impl BridgeStatus {
    fn new(name: &str) -> BridgeStatus {
        BridgeStatus {
            name: name.into(),
            connected: AtomicBool::new(false),
            remote: Mutex::new(String::new()),
            last_error: Mutex::new(String::new()),
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_forward_ms: AtomicU64::new(0),
            outbox: Mutex::new(None),
        }
    }

    /// The outbox: messages waiting (queued and in flight), their bytes, and how many
    /// it dropped.
    pub fn outbox_figures(&self) -> (usize, usize, u64) {
        let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.as_ref().map_or((0, 0, 0), |s| {
            let st = s.lock();
            let (backlog, backlog_bytes) = st.backlog().unwrap_or_default();
            let messages = st.queue.len() + st.inflight.len() + backlog;
            (messages, st.queued_bytes + backlog_bytes, st.dropped)
        })
    }

    /// Every figure by name, as `$SYS/tern/bridge/NAME/KEY` carries it.
    pub fn figures(&self) -> Vec<(&'static str, String)> {
        let (queued, queued_bytes, dropped) = self.outbox_figures();
        let text = |m: &Mutex<String>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        vec![
            (
                "connected",
                u8::from(self.connected.load(Ordering::Relaxed)).to_string(),
            ),
            ("remote", text(&self.remote)),
            ("queued", queued.to_string()),
            ("queued_bytes", queued_bytes.to_string()),
            ("dropped", dropped.to_string()),
            ("sent", self.sent.load(Ordering::Relaxed).to_string()),
            (
                "acknowledged",
                self.acknowledged.load(Ordering::Relaxed).to_string(),
            ),
            (
                "received",
                self.received.load(Ordering::Relaxed).to_string(),
            ),
            ("last_error", text(&self.last_error)),
            (
                "last_forward_ms",
                self.last_forward_ms.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }

    pub(crate) fn forwarded_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_forward_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
    }
}

/// Checks what can be checked before start: TLS files.
pub fn check(settings: &BridgeSettings) -> Result<(), String> {
    tls_config(settings).map(|_| ())
}

fn tls_config(settings: &BridgeSettings) -> Result<Option<Arc<ClientConfig>>, String> {
    if !settings.remotes.iter().any(|r| r.tls) {
        return Ok(None);
    }
    let t = &settings.tls;
    let cert_and_key = t
        .cert_and_key
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    outgoing::tls_config(t.ca.as_deref(), cert_and_key, true)
        .map(Some)
        .map_err(|e| format!("[[bridge]] {}: tls: {e}", settings.name))
}

/// The bridges' tasks, which run until the broker shuts down, and their states (for
/// the management API).
pub struct Started {
    pub tasks: Vec<smol::Task<()>>,
    pub statuses: Vec<Arc<BridgeStatus>>,
}

/// Starts every bridge.
pub fn start(
    broker: &Arc<Broker>,
    executor: &Arc<smol::Executor<'static>>,
    bridges: Vec<BridgeSettings>,
) -> Result<Started, String> {
    let mut started = Started {
        tasks: Vec::new(),
        statuses: Vec::new(),
    };
    for settings in bridges {
        let tls = tls_config(&settings)?;
        let status = Arc::new(BridgeStatus::new(&settings.name));
        started.statuses.push(status.clone());
        let tasks = &mut started.tasks;
        tasks.push(executor.spawn(report(broker.clone(), status.clone())));
        tasks.push(executor.spawn(run(broker.clone(), settings, tls, status)));
    }
    Ok(started)
}

/// The local `$SYS` state topic, as Mosquitto names it for its bridges.
fn publish_state(broker: &Broker, status: &BridgeStatus, up: bool) {
    status.connected.store(up, Ordering::Relaxed);
    let topic = format!("$SYS/broker/connection/{}/state", status.name);
    let payload = Bytes::from_static(if up { b"1" } else { b"0" });
    broker.publish_internal(
        Message::new(topic, payload, QoS::AtMostOnce, true),
        Instant::now(),
    );
}

/// How often a bridge's figures are published under `$SYS` (when they changed).
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes the bridge's figures, retained, under `$SYS/tern/bridge/NAME/`.
async fn report(broker: Arc<Broker>, status: Arc<BridgeStatus>) {
    let mut last: Vec<(&'static str, String)> = Vec::new();
    loop {
        smol::Timer::after(REPORT_INTERVAL).await;
        let figures = status.figures();
        for (key, value) in &figures {
            if last.iter().any(|(k, v)| k == key && v == value) {
                continue;
            }
            let topic = format!("$SYS/tern/bridge/{}/{key}", status.name);
            let message = Message::new(topic, Bytes::from(value.clone()), QoS::AtMostOnce, true);
            broker.publish_internal(message, Instant::now());
        }
        last = figures;
    }
}

/// Serves the outbox session over `uplink` until the relay ends; returns why.
async fn relay(
    broker: &Arc<Broker>,
    settings: &BridgeSettings,
    uplink: Uplink,
    peer: SocketAddr,
) -> String {
    let config = Arc::new(ConnectionConfig {
        listener: Arc::new(settings.local_client_id()),
        connect_timeout: Duration::from_secs(10),
        auth: Arc::new(AuthPolicy::open()),
        proxy_trusted: None,
        identity_as_username: false,
        tls: None,
        ws_path: None,
        role: Role::BridgeRelay,
    });
    // The outbox is not a network client: no connection limits apply.
    let verdict = Admission::new(usize::MAX, 0)
        .listener(None)
        .admit(peer.ip(), Instant::now());
    status_of(&uplink).set_error("the outbox session ended");
    let status = status_of(&uplink).clone();
    let rbuf = BytesMut::new();
    let uplink: RelayStream = Box::new(uplink);
    connection::serve(uplink, peer, broker.clone(), config, verdict, rbuf, None).await;
    status
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn status_of(uplink: &Uplink) -> &Arc<BridgeStatus> {
    uplink.status()
}

fn jitter(delay: Duration) -> Duration {
    // Between half and all of the delay, so a fleet of edges does not reconnect in step.
    let random = RandomState::new().hash_one(Instant::now());
    delay / 2 + Duration::from_millis(random % (delay.as_millis() as u64 / 2 + 1))
}

async fn run(
    broker: Arc<Broker>,
    settings: BridgeSettings,
    tls: Option<Arc<ClientConfig>>,
    status: Arc<BridgeStatus>,
) {
    let max_packet = broker.settings.max_packet_size as usize;
    let nowhere: SocketAddr = ([0, 0, 0, 0], 0).into();
    publish_state(&broker, &status, false);
    // The outbox exists (and keeps messages) before the remote is ever reached.
    let prime = Uplink::new(&settings, None, status.clone(), max_packet);
    relay(&broker, &settings, prime, nowhere).await;
    let limits = QueueLimits {
        max_queued_messages: settings.max_queued_messages,
        max_queued_bytes: settings.max_queued_bytes,
        queue_qos0_offline: settings.queue_qos0,
    };
    *status.outbox.lock().unwrap_or_else(|p| p.into_inner()) =
        broker.make_outbox(&settings.local_client_id(), limits);
    let inbound_maximum = broker.settings.receive_maximum;
    let mut private = settings.try_private && !settings.v5;
    let mut delay = settings.reconnect_min;
    let mut index = 0;
    let mut last_failure = String::new();
    while !broker.is_shutting_down() {
        let remote = &settings.remotes[index];
        match remote::open(&settings, remote, tls.as_ref(), private, inbound_maximum).await {
            Ok(session) => {
                log::info!(
                    "bridge {} connected to {} as {} (remote session present: {}, receive maximum {})",
                    settings.name,
                    remote.url,
                    settings.client_id,
                    session.session_present,
                    session.receive_maximum
                );
                *status.remote.lock().unwrap_or_else(|p| p.into_inner()) = remote.url.clone();
                publish_state(&broker, &status, true);
                last_failure.clear();
                delay = settings.reconnect_min;
                let peer = session.peer;
                let uplink = Uplink::new(&settings, Some(session), status.clone(), max_packet);
                let why = relay(&broker, &settings, uplink, peer).await;
                publish_state(&broker, &status, false);
                status.set_error(&why);
                if broker.is_shutting_down() {
                    break;
                }
                log::warn!("bridge {} lost {}: {why}", settings.name, remote.url);
                // The same remote first: it was good a moment ago.
                continue;
            }
            Err(RemoteError::Refused(code)) if private && refuses_bridge_flag(code) => {
                log::warn!(
                    "bridge {}: {} refused the bridge protocol flag ({code}); connecting as a plain 3.1.1 client",
                    settings.name,
                    remote.url
                );
                private = false;
                continue;
            }
            Err(RemoteError::Handshake(why)) if private => {
                log::warn!(
                    "bridge {}: {} closed the connection to a bridge-flagged CONNECT ({why}); connecting as a plain 3.1.1 client",
                    settings.name,
                    remote.url
                );
                private = false;
                continue;
            }
            Err(e) => {
                let failure = format!("{}: {e}", remote.url);
                status.set_error(&failure);
                if failure != last_failure {
                    log::warn!(
                        "bridge {} cannot connect to {failure}; retrying with backoff",
                        settings.name
                    );
                } else {
                    log::debug!("bridge {} cannot connect to {failure}", settings.name);
                }
                last_failure = failure;
            }
        }
        index = (index + 1) % settings.remotes.len();
        if index == 0 {
            smol::Timer::after(jitter(delay)).await;
            delay = (delay * 2).min(settings.reconnect_max);
        }
    }
}

/// A 3.1.1 broker's answer to a protocol level it does not know (the 0x80 bridge bit).
fn refuses_bridge_flag(code: ReasonCode) -> bool {
    code == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
}
