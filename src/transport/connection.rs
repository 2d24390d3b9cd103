//! Drives one client connection: reads bytes, decodes packets, hands them to the
//! broker's [`Client`] state machine, and writes what it produced in batches.
//!
//! One task per connection and one loop: wait for whichever comes first of readable
//! input, room to write, or a wake-up (messages queued, a takeover, the broker's
//! keep-alive sweep finding the client silent). Buffers are allocated when there is
//! data and given back when drained, so an idle connection holds almost nothing.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::Timer;
use smol::future::{Future, FutureExt};
use smol::io::{AsyncWrite, AsyncWriteExt};

use super::Stream;
use super::admission::{Slot, Verdict};
use super::handshake::{Start, handshake};
use super::proxy::Cidr;
use super::tls::Tls;
use crate::auth::AuthPolicy;
use crate::broker::link::ListenerName;
use crate::broker::session::Session;
use crate::broker::{Broker, Client, Close, Held, Role};
use crate::protocol::{self, ReasonCode};
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
    /// Who is on the other end: a network client, or one of the broker's relays (a
    /// bridge's, a cluster peer's link).
    pub role: Role,
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
    let (slot, turned_away) = match verdict {
        Verdict::Admit(slot) => (Some(slot), None),
        Verdict::Refuse(code, why) => (None, Some((code, why))),
    };
    let start = Box::new(Start {
        stream,
        peer,
        turned_away,
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

thread_local! {
    /// Each executor thread reads into one scratch buffer and copies out exactly what
    /// arrived, so a connection holds no read buffer while it waits.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads what is available and appends it to `rbuf`.
pub(super) fn poll_read_some<S: Stream>(
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
pub(super) struct Connected<S> {
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
    /// A client just accepted; `rbuf` holds what arrived after its CONNECT.
    pub(super) fn new(stream: S, client: Client, rbuf: BytesMut) -> Connected<S> {
        Connected {
            stream,
            client,
            rbuf,
            waits: None,
            busy: 0,
            unflushed: false,
            fresh: true,
        }
    }

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

pub(super) async fn flush_with_timeout<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
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
            role: Role::Network,
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
