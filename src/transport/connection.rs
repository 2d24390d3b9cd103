//! Drives one client connection: reads bytes, decodes packets, hands them to the
//! broker's [`Client`] state machine, and writes what it produced in batches.
//!
//! One task per connection and one loop: wait for whichever comes first of readable
//! input, room to write, or a wake-up (messages queued, a takeover, the broker's
//! keep-alive sweep finding the client silent). Buffers are allocated when there is
//! data and given back when drained, so an idle connection holds almost nothing.

use std::cell::RefCell;
use std::future::poll_fn;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use smol::Timer;
use smol::future::{Future, FutureExt};
use smol::io::{AsyncWrite, AsyncWriteExt};

use super::Stream;
use super::admission::{Slot, Verdict};
use super::proxy::{self, Cidr};
use super::tls::Tls;
use crate::auth::AuthPolicy;
use crate::broker::link::ListenerName;
use crate::broker::session::Session;
use crate::broker::{self, Arrival, Broker, Client, Close, ConnectOutcome, Held, Refusal};
use crate::protocol::{self, DecodeError, ReasonCode};
use crate::throttle::Throttle;
use event_listener::EventListener;

const READ_CHUNK: usize = 64 * 1024;
/// Stop reading from a client whose replies (acknowledgements) pile up unread: it gets
/// back-pressure instead of growing our write buffer.
const READ_PAUSE: usize = 256 * 1024;
/// Events handled in a row before the task yields, so one busy connection cannot
/// starve the others on its executor thread.
const EVENTS_BEFORE_YIELD: u32 = 32;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-listener facts a connection needs.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub listener: ListenerName,
    pub connect_timeout: Duration,
    pub auth: Arc<AuthPolicy>,
    /// The listener expects a PROXY protocol header, from these ranges only.
    pub proxy_trusted: Option<Arc<[Cidr]>>,
    /// The common name of the client's verified certificate is its user name.
    pub identity_as_username: bool,
    /// Terminate TLS (the tls and wss listeners).
    pub tls: Option<Arc<Tls>>,
    /// Expect a WebSocket upgrade on this path (the ws and wss listeners).
    pub ws_path: Option<Arc<str>>,
    /// The connection is a bridge's relay to its outbox session, not a network client.
    pub bridge_relay: bool,
}

/// PROXY headers from untrusted or broken balancers come in floods: logged throttled.
static PROXY_REFUSALS: Throttle = Throttle::new();

/// What a PROXY header told about the client behind a balancer.
pub struct Proxied {
    pub peer: SocketAddr,
    /// The client certificate's common name, when the balancer verified one.
    pub identity: Option<String>,
    /// What arrived after the header.
    pub rbuf: BytesMut,
}

/// Reads the PROXY header on a `proxy_protocol` listener (from a trusted balancer,
/// within the connect timeout). `None` when the connection is to end here: refused
/// (logged, throttled), or a balancer's health check (a bare connect-and-close, a v2
/// LOCAL header), which ends quietly.
pub async fn read_proxy_preamble<S: Stream>(
    stream: &mut S,
    balancer: SocketAddr,
    config: &ConnectionConfig,
) -> Option<Proxied> {
    let trusted = config.proxy_trusted.as_deref().unwrap_or_default();
    let refuse =
        |why: String| PROXY_REFUSALS.refused(balancer, &config.listener, format_args!("{why}"));
    if !trusted.iter().any(|range| range.contains(balancer.ip())) {
        refuse(format!(
            "{} is not in proxy_protocol_trusted, so its PROXY header would not be believed",
            balancer.ip()
        ));
        return None;
    }
    let mut rbuf = BytesMut::new();
    let header = read_proxy_header(stream, &mut rbuf).or(async {
        Timer::after(config.connect_timeout).await;
        Err(format!(
            "no complete PROXY header within {:?}",
            config.connect_timeout
        ))
    });
    let mut identity = None;
    let peer = match header.await {
        Ok(Some(proxy::Header::Proxied { source, tls, .. })) => {
            if let Some(tls) = tls {
                log::debug!(
                    "connection from {source} via {balancer}: TLS client certificate verified={} cn={:?}",
                    tls.client_cert_verified,
                    tls.common_name
                );
                if tls.client_cert_verified {
                    identity = tls.common_name;
                }
            }
            source
        }
        Ok(Some(proxy::Header::Unknown)) => balancer,
        Ok(Some(proxy::Header::Local)) => {
            log::debug!("health check from {balancer} (PROXY LOCAL)");
            return None;
        }
        Ok(None) => {
            log::debug!("health check from {balancer} (connect and close)");
            return None;
        }
        Err(why) => {
            refuse(why);
            return None;
        }
    };
    Some(Proxied {
        peer,
        identity,
        rbuf,
    })
}

/// Reads the PROXY header; `None` when the connection closed before sending a byte.
/// What follows the header stays in `rbuf`.
async fn read_proxy_header<S: Stream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Option<proxy::Header>, String> {
    loop {
        match proxy::parse(rbuf) {
            Ok(Some((header, len))) => {
                let _ = rbuf.split_to(len);
                return Ok(Some(header));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match poll_fn(|cx| poll_read_some(stream, cx, rbuf)).await {
            Ok(0) if rbuf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed in the middle of its PROXY header".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("connection failed before its PROXY header: {e}")),
        }
    }
}

/// What the handshake starts from, boxed so that its inputs are not part of every
/// idle connection's task; the stream comes back in [`Connected`].
struct Start<S> {
    stream: S,
    peer: SocketAddr,
    refusal: Option<(ReasonCode, String)>,
    rbuf: BytesMut,
    identity: Option<String>,
    broker: Arc<Broker>,
    config: Arc<ConnectionConfig>,
}

/// Serves one accepted stream until it closes; `rbuf` holds what arrived already,
/// `identity` the common name of a client certificate the transport verified.
pub fn serve<S: Stream>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<ConnectionConfig>,
    verdict: Verdict,
    rbuf: BytesMut,
    identity: Option<String>,
) -> Serve<S> {
    let (slot, refusal) = match verdict {
        Verdict::Admit(slot) => (Some(slot), None),
        Verdict::Refuse(code, why) => (None, Some((code, why))),
    };
    let start = Box::new(Start {
        stream,
        peer,
        refusal,
        rbuf,
        identity,
        broker,
        config,
    });
    Serve {
        // The handshake runs once: boxed, its state is on the heap only while it runs.
        phase: Phase::Handshake(Box::pin(handshake(start))),
        slot,
    }
}

/// One connection's task: polled by hand rather than written as an async block, so
/// that an idle connection's task holds the connected phase and its admission slot,
/// and no moved-out arguments or awaited borrows beside them.
pub struct Serve<S> {
    phase: Phase<S>,
    /// The place in the connection counts, held until the connection has ended.
    slot: Option<Slot>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

enum Phase<S> {
    Handshake(Boxed<Option<Connected<S>>>),
    Connected(Connected<S>),
    /// Boxed like the handshake: it runs once.
    Finishing(Boxed<()>),
    Ended,
}

impl<S: Stream> Future for Serve<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(connected)) => this.phase = Phase::Connected(connected),
                    Poll::Ready(None) => this.phase = Phase::Ended,
                },
                Phase::Connected(connected) => {
                    let Poll::Ready(close) = connected.poll_run(cx) else {
                        return Poll::Pending;
                    };
                    let Phase::Connected(connected) =
                        std::mem::replace(&mut this.phase, Phase::Ended)
                    else {
                        unreachable!("matched above")
                    };
                    let finishing = finish(connected.stream, connected.client, close);
                    this.phase = Phase::Finishing(Box::pin(finishing));
                }
                Phase::Finishing(finishing) => match finishing.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => this.phase = Phase::Ended,
                },
                Phase::Ended => {
                    this.slot = None;
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Refusals for limits come in floods: their log line is throttled.
static LIMIT_REFUSALS: Throttle = Throttle::new();

/// Reads and answers CONNECT: the connection with its accepted client and what
/// arrived after CONNECT, or `None` when it was refused or closed.
async fn handshake<S: Stream>(start: Box<Start<S>>) -> Option<Connected<S>> {
    let Start {
        stream: mut owned_stream,
        peer,
        refusal,
        mut rbuf,
        identity,
        broker,
        config,
    } = *start;
    let (broker, stream) = (&broker, &mut owned_stream);
    let max_packet = broker.settings.max_packet_size as usize;
    let first = read_frame(stream, &mut rbuf, max_packet).or(async {
        Timer::after(config.connect_timeout).await;
        Err(FirstPacketError::Timeout)
    });
    let connect = match first.await {
        Ok(frame) => match protocol::decode_connect_frame(frame) {
            Ok(connect) => connect,
            Err(e) => {
                log::warn!(
                    "refused connection addr={peer} listener={}: {}",
                    config.listener,
                    e.error
                );
                let connack = broker::answer_malformed(&e);
                if !connack.is_empty() {
                    let _ = flush_with_timeout(stream, &connack).await;
                }
                return None;
            }
        },
        Err(FirstPacketError::Timeout) => {
            log::info!(
                "closed connection addr={peer}: no CONNECT within {:?}",
                config.connect_timeout
            );
            return None;
        }
        Err(FirstPacketError::Closed) => {
            log::debug!("connection addr={peer} closed before CONNECT");
            return None;
        }
        Err(FirstPacketError::Io(e)) => {
            log::debug!("connection addr={peer} failed before CONNECT: {e}");
            return None;
        }
        Err(FirstPacketError::Decode(e)) => {
            log::warn!(
                "refused connection addr={peer} listener={}: {e}",
                config.listener
            );
            return None;
        }
    };
    let (version, clean_start, keep_alive) =
        (connect.protocol, connect.clean_start, connect.keep_alive);
    let requested_id = connect.client_id.clone();
    let arrival = Arrival {
        peer,
        listener: &config.listener,
        auth: &config.auth,
        refusal,
        identity: identity.as_deref(),
        identity_as_username: config.identity_as_username,
        bridge_relay: config.bridge_relay,
        wall: SystemTime::now(),
        entropy: RandomState::new().hash_one(Instant::now()),
    };
    let client = match Client::connect(broker, arrival, connect, Instant::now()) {
        ConnectOutcome::Accepted(client) => *client,
        ConnectOutcome::Refused(refusal) => {
            let Refusal {
                code,
                reason,
                connack,
                flood,
                delay,
            } = refusal;
            if flood {
                LIMIT_REFUSALS.refused(peer, &config.listener, format_args!("{reason} ({code})"));
            } else {
                log::warn!(
                    "refused client_id={requested_id:?} proto={} addr={peer} listener={}: {reason} ({code})",
                    version.name(),
                    config.listener
                );
            }
            if let Some(delay) = delay {
                Timer::after(delay).await;
            }
            if !connack.is_empty() {
                let _ = flush_with_timeout(stream, &connack).await;
            }
            return None;
        }
    };
    log::info!(
        "client connected client_id={} proto={}{} addr={peer} listener={} clean_start={clean_start} keep_alive={keep_alive}",
        client.client_id(),
        version.name(),
        if client.is_bridge() { " (bridge)" } else { "" },
        config.listener
    );
    Some(Connected {
        stream: owned_stream,
        client,
        rbuf,
        waits: None,
        busy: 0,
        unflushed: false,
        fresh: true,
    })
}

/// Logs why the connection ended, tells a v5 client, and lets the session go on
/// without it.
async fn finish<S: Stream>(mut stream: S, mut client: Client, close: Close) {
    let peer = client.peer();
    let level =
        if close.code.is_error() && !close.by_client && close.code != ReasonCode::UNSPECIFIED_ERROR
        {
            log::Level::Warn
        } else {
            log::Level::Info
        };
    log::log!(
        level,
        "client disconnected client_id={} addr={peer}: {} (reason code {})",
        client.client_id(),
        close.reason,
        close.code
    );
    client.write_disconnect(&close);
    if client.is_held() {
        // Acknowledgements waiting for the store go out only once it has kept them.
        let mut wait = None;
        let held = poll_fn(|cx| poll_released(&mut client, &mut wait, cx).map(|_| ())).or(async {
            Timer::after(CLOSE_FLUSH_TIMEOUT).await;
        });
        held.await;
    }
    if !client.writable().is_empty() {
        let _ = flush_with_timeout(&mut stream, client.writable()).await;
    }
    client.connection_lost(Instant::now());
    // The transport's own goodbye: a WebSocket close frame, a TLS close_notify.
    let goodbye = async {
        let _ = stream.close().await;
    };
    goodbye
        .or(async {
            Timer::after(CLOSE_FLUSH_TIMEOUT).await;
        })
        .await;
}

enum FirstPacketError {
    Timeout,
    Closed,
    Io(io::Error),
    Decode(DecodeError),
}

/// Reads until one whole packet is buffered and returns it.
async fn read_frame<S: Stream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<bytes::Bytes, FirstPacketError> {
    loop {
        // Refuse on the first byte rather than wait for a whole frame of garbage (but
        // long enough to name a PROXY header sent to a listener that expects none).
        if let Some(&first) = rbuf.first() {
            if proxy::looks_like_header(rbuf) {
                return Err(FirstPacketError::Decode(DecodeError::protocol(
                    "a PROXY protocol header, but this listener has proxy_protocol = false",
                )));
            }
            let maybe_proxy = rbuf.len() < proxy::V2_SIGNATURE.len()
                && (proxy::V2_SIGNATURE.starts_with(rbuf) || b"PROXY ".starts_with(rbuf));
            if first != 0x10 && !maybe_proxy {
                return Err(FirstPacketError::Decode(DecodeError::protocol(format!(
                    "first packet starts with byte {first:#04x}, not CONNECT"
                ))));
            }
        }
        if let Some(len) =
            protocol::frame_len(rbuf, max_packet).map_err(FirstPacketError::Decode)?
        {
            if rbuf.len() >= len {
                return Ok(rbuf.split_to(len).freeze());
            }
        }
        let n = poll_fn(|cx| poll_read_some(stream, cx, rbuf))
            .await
            .map_err(FirstPacketError::Io)?;
        if n == 0 {
            return Err(FirstPacketError::Closed);
        }
    }
}

thread_local! {
    /// Each executor thread reads into one scratch buffer and copies out exactly what
    /// arrived, so a connection holds no read buffer while it waits.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads what is available and appends it to `rbuf`.
fn poll_read_some<S: Stream>(
    stream: &mut S,
    cx: &mut std::task::Context<'_>,
    rbuf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let result = Pin::new(&mut *stream).poll_read(cx, &mut scratch);
        if let Poll::Ready(Ok(n)) = result {
            rbuf.extend_from_slice(&scratch[..n]);
        }
        result
    })
}

enum Event {
    Read(usize),
    Wrote(usize),
    /// Packets held for the store may be written now.
    Released,
    /// The store could not keep what held packets acknowledge.
    StoreFailed(Close),
    /// The session or the keep-alive sweep has something for this connection.
    Woken,
    Drained,
    Stalled,
}

/// Ready once the packets `client` holds for the store may be written, or with why
/// the connection must close (the store could not keep what they acknowledge). The
/// state machine says where they stand; waiting for the store's next commit is the
/// shell's, through `wait`.
fn poll_released(
    client: &mut Client,
    wait: &mut Option<EventListener>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Close>> {
    loop {
        match client.release_held() {
            Held::Released => {
                *wait = None;
                return Poll::Ready(Ok(()));
            }
            Held::Failed(close) => {
                *wait = None;
                return Poll::Ready(Err(close));
            }
            Held::Waiting => {}
        }
        match wait {
            // Listen, then look again: a commit between the two is not missed.
            None => match client.broker().store() {
                Some(store) => *wait = Some(store.listen()),
                None => return Poll::Ready(Ok(())),
            },
            Some(listener) => {
                if Pin::new(listener).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *wait = None;
            }
        }
    }
}

/// What a connection may wait on besides its socket and its link: boxed, as most
/// connections never wait on either.
#[derive(Default)]
struct Waits {
    /// A subscriber's queue this publisher is held back for.
    pressure: Option<Pressure>,
    /// The store's next commit, while packets are held for it.
    store: Option<EventListener>,
}

/// A publisher held back until a subscriber's queue drains, or the stall timeout.
struct Pressure {
    session: Arc<Session>,
    drained: EventListener,
    timeout: Timer,
}

impl Pressure {
    /// `None` when the session has drained already.
    fn new(session: Arc<Session>, stall_timeout: Duration) -> Option<Pressure> {
        let drained = session.drained.listen();
        if !session.is_pressured() {
            return None;
        }
        Some(Pressure {
            session,
            drained,
            timeout: Timer::after(stall_timeout),
        })
    }
}

/// The connected phase: one loop, polled by hand rather than written as an async fn,
/// so that an idle connection's task holds these few fields and nothing else. No
/// timer either: the broker's keep-alive sweep wakes a connection gone silent.
struct Connected<S> {
    stream: S,
    client: Client,
    rbuf: BytesMut,
    waits: Option<Box<Waits>>,
    /// Events handled since the task last waited.
    busy: u32,
    /// Written to a stream that buffers (TLS records, WebSocket frames) but not yet
    /// flushed to the socket.
    unflushed: bool,
    /// Packets that arrived together with CONNECT are still to be handled.
    fresh: bool,
}

impl<S: Stream> Connected<S> {
    fn is_pressured(&self) -> bool {
        self.waits.as_ref().is_some_and(|w| w.pressure.is_some())
    }

    /// Stops waiting for a subscriber to drain, and returns what it waited on.
    fn take_pressure(&mut self) -> Option<Pressure> {
        let pressure = self.waits.as_mut()?.pressure.take();
        self.tidy_waits();
        pressure
    }

    /// Gives the box back once nothing is waited on.
    fn tidy_waits(&mut self) {
        if self
            .waits
            .as_ref()
            .is_some_and(|w| w.pressure.is_none() && w.store.is_none())
        {
            self.waits = None;
        }
    }

    /// Ready with why the connection ended.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Close> {
        if std::mem::take(&mut self.fresh) {
            if let Err(close) = self.handle_buffered() {
                return Poll::Ready(close);
            }
        }
        loop {
            if self.busy >= EVENTS_BEFORE_YIELD {
                // Let the other connections on this executor thread have their turn.
                self.busy = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.busy += 1;
            if let Err(close) = self.client.pump(Instant::now()) {
                return Poll::Ready(close);
            }
            if !self.is_pressured() {
                if let Some(session) = self.client.take_backpressure() {
                    match Pressure::new(session, self.client.stall_timeout()) {
                        Some(pressure) => {
                            self.waits.get_or_insert_default().pressure = Some(pressure);
                        }
                        None => {
                            // Drained already: carry on with what is buffered.
                            if let Err(close) = self.handle_buffered() {
                                return Poll::Ready(close);
                            }
                            continue;
                        }
                    }
                }
            }
            let Poll::Ready(event) = self.poll_event(cx) else {
                self.busy = 0;
                return Poll::Pending;
            };
            if let Err(close) = self.on_event(event) {
                return Poll::Ready(close);
            }
        }
    }

    /// Whichever comes first: room to write, the store, a drained subscriber, input,
    /// a wake-up.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Event>> {
        let writable = self.client.writable();
        if !writable.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_write(cx, writable) {
                return Poll::Ready(r.map(Event::Wrote));
            }
        } else if self.unflushed {
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_flush(cx) {
                r?;
                self.unflushed = false;
            }
        }
        if self.client.is_held() {
            let waits = self.waits.get_or_insert_default();
            let released = poll_released(&mut self.client, &mut waits.store, cx);
            if let Poll::Ready(r) = released {
                self.tidy_waits();
                return Poll::Ready(Ok(match r {
                    Ok(()) => Event::Released,
                    Err(close) => Event::StoreFailed(close),
                }));
            }
        }
        let pressure = self.waits.as_mut().and_then(|w| w.pressure.as_mut());
        if let Some(p) = pressure {
            if Pin::new(&mut p.drained).poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Drained));
            }
            if Pin::new(&mut p.timeout).poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Stalled));
            }
        } else if self.client.out.len() < READ_PAUSE {
            if let Poll::Ready(ready) = self.stream.poll_readable(cx) {
                if let Err(e) = ready {
                    return Poll::Ready(Err(e));
                }
                if let Poll::Ready(r) = poll_read_some(&mut self.stream, cx, &mut self.rbuf) {
                    return Poll::Ready(r.map(Event::Read));
                }
            }
        }
        if self.client.link().poll_woken(cx).is_ready() {
            return Poll::Ready(Ok(Event::Woken));
        }
        Poll::Pending
    }

    /// Handles one event; `Err` with why the connection must end.
    fn on_event(&mut self, event: io::Result<Event>) -> Result<(), Close> {
        match event {
            Ok(Event::Read(0)) => Err(Close::new(
                ReasonCode::UNSPECIFIED_ERROR,
                "connection closed by the client without DISCONNECT",
            )),
            Ok(Event::Read(n)) => {
                let metrics = &self.client.broker().metrics;
                metrics
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.handle_buffered()
            }
            Ok(Event::Wrote(n)) => {
                let metrics = &self.client.broker().metrics;
                metrics.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                self.unflushed = true;
                self.client.wrote(n);
                Ok(())
            }
            Ok(Event::Released) => Ok(()),
            Ok(Event::StoreFailed(close)) => Err(close),
            Ok(Event::Woken) if self.client.is_silent(Instant::now()) => Err(Close::new(
                ReasonCode::KEEP_ALIVE_TIMEOUT,
                "no packet within 1.5 times the keep-alive",
            )),
            Ok(Event::Woken) => Ok(()),
            Ok(Event::Drained) => {
                self.take_pressure();
                self.handle_buffered()
            }
            Ok(Event::Stalled) => {
                if let Some(p) = self.take_pressure() {
                    if p.session.mark_stalled() {
                        log::warn!(
                            "subscriber client_id={} has not drained its queue for {:?}: \
                             no longer holding publishers back for it",
                            p.session.client_id,
                            self.client.stall_timeout()
                        );
                    }
                }
                self.handle_buffered()
            }
            Err(e) => Err(Close::new(
                ReasonCode::UNSPECIFIED_ERROR,
                format!("connection error: {e}"),
            )),
        }
    }

    /// Decodes and handles every whole packet in the read buffer, then gives the
    /// buffer back if it is drained.
    fn handle_buffered(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let (version, max_packet) = (self.client.version, self.client.max_packet_size());
        loop {
            if self.client.has_backpressure() {
                // Leave the rest buffered until the subscriber it feeds has drained.
                return Ok(());
            }
            let frame = match protocol::next_frame(&mut self.rbuf, max_packet) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(Close::new(e.code, e.what)),
            };
            match protocol::decode_frame(frame, version) {
                Ok(packet) => self.client.handle(packet, now)?,
                Err(e) => return Err(Close::new(e.code, e.what)),
            }
        }
        self.client.flush_publishes(now);
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }
}

async fn flush_with_timeout<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    async {
        stream.write_all(bytes).await?;
        stream.flush().await
    }
    .or(async {
        Timer::after(CLOSE_FLUSH_TIMEOUT).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "flush timed out"))
    })
    .await
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::link::Link;
    use smol::Async;
    use std::net::{TcpListener, TcpStream};

    /// Every idle connection holds its task (the `Client` inside it), its `Link` and its
    /// `Session`: keep them small (BENCHMARKS.md, RSS per idle connection). glibc gives
    /// each a block of 8 bytes more rounded up to 16, so each is bound at the last size
    /// of its block class: the task with async-task's 40-byte header, the `Link` and
    /// the `Session` with an `Arc`'s 16. A jump past the bounds
    /// means a field most connections never use is not boxed.
    #[test]
    fn an_idle_connection_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = smol::block_on(Async::<TcpStream>::connect(addr)).unwrap();
        let config = Arc::new(ConnectionConfig {
            listener: Arc::new("tcp".into()),
            connect_timeout: Duration::from_secs(1),
            auth: Arc::new(AuthPolicy::open()),
            proxy_trusted: None,
            identity_as_username: false,
            tls: None,
            ws_path: None,
            bridge_relay: false,
        });
        let refused = Verdict::Refuse(ReasonCode::SERVER_BUSY, String::new());
        let broker = Broker::new(Default::default(), Instant::now());
        let task = serve(stream, addr, broker, config, refused, BytesMut::new(), None);
        let (task, client) = (size_of_val(&task), size_of::<Client>());
        let (link, session) = (size_of::<Link>(), size_of::<Session>());
        assert!(task <= 208, "the connection future is {task} bytes");
        assert!(client <= 136, "Client is {client} bytes");
        assert!(link <= 104, "Link is {link} bytes");
        assert!(session <= 168, "Session is {session} bytes");
    }
}
