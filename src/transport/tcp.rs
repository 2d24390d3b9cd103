//! The listeners: binds with a deep accept backlog and spawns one connection task per
//! client, which peels off what the listener wraps MQTT in (PROXY header, TLS,
//! WebSocket) before serving it.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::Async;
use smol::future::{Future, FutureExt};
use smol::io::{AsyncRead, AsyncWrite};

use super::admission::{ListenerAdmission, Verdict};
use super::connection::{self, ConnectionConfig, poll_read_some};
use super::lane;
use super::preamble::{self, Proxied};
use super::tls::common_name;
use super::ws::{self, WsStream};
use super::{Rewind, Stream};
use crate::broker::Broker;
use crate::throttle::Throttle;

/// Failed TLS handshakes come in floods (scanners, misconfigured devices).
static HANDSHAKE_FAILURES: Throttle = Throttle::new();

/// Runs the TLS handshake within the connect timeout; `None` (and one log line) when
/// it fails.
async fn tls_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: futures_rustls::TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    config: &ConnectionConfig,
) -> Option<futures_rustls::server::TlsStream<S>> {
    let handshake = async { acceptor.accept(stream).await.map_err(|e| e.to_string()) };
    match within(config.connect_timeout, "TLS handshake", handshake).await {
        Ok(stream) => Some(stream),
        Err(why) => {
            HANDSHAKE_FAILURES.refused(
                peer,
                &config.listener,
                format_args!("TLS handshake failed: {why}"),
            );
            None
        }
    }
}

/// Runs the WebSocket upgrade within the connect timeout; `None` (and one log line)
/// when it fails.
async fn ws_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    peer: SocketAddr,
    broker: &Broker,
    config: &ConnectionConfig,
) -> Option<WsStream<S>> {
    let max_frame = broker.settings.max_packet_size as usize;
    let upgrade = ws::accept(stream, path, max_frame);
    match within(config.connect_timeout, "WebSocket upgrade", upgrade).await {
        Ok(stream) => Some(stream),
        Err(why) => {
            HANDSHAKE_FAILURES.refused(peer, &config.listener, format_args!("{why}"));
            None
        }
    }
}

async fn within<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    work.or(async {
        smol::Timer::after(limit).await;
        Err(format!("no {what} within {limit:?}"))
    })
    .await
}

/// Serves a connection on a listener that wraps MQTT: the PROXY header, the TLS
/// handshake, the WebSocket upgrade, each as the listener asks; then the client is served under the address the header named (or the
/// socket's) and the identity of its client certificate (Tern's own handshake, or the
/// balancer's TLV). Each way of serving is boxed on its own, so a connection's task
/// holds only the state of the stream it has.
async fn serve_wrapped(
    mut stream: Async<TcpStream>,
    socket_peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<ConnectionConfig>,
    admission: ListenerAdmission,
) {
    let Proxied {
        peer,
        identity,
        rbuf,
    } = if config.proxy_trusted.is_some() {
        let probes = &broker.metrics.probes;
        let preamble = preamble::read_proxy_preamble(&mut stream, socket_peer, &config, probes);
        match Box::pin(preamble).await {
            Some(proxied) => proxied,
            None => return,
        }
    } else {
        Proxied {
            peer: socket_peer,
            identity: None,
            rbuf: BytesMut::new(),
        }
    };
    let mut rbuf = rbuf;
    if rbuf.is_empty() && !first_bytes(&mut stream, &mut rbuf, peer, &broker, &config).await {
        return;
    }
    // Admitted once the real client is known: the rate limit is per client address.
    let verdict = admission.admit(peer.ip(), Instant::now());
    let Some(tls) = config.tls.clone() else {
        let client = Client {
            peer,
            verdict,
            identity,
        };
        return serve_mqtt(stream, rbuf, client, broker, config).await;
    };
    let stream = Rewind::new(rbuf, stream);
    let handshake = tls_handshake(tls.acceptor(), stream, peer, &config);
    let Some(stream) = Box::pin(handshake).await else {
        return;
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| common_name(cert))
        .or(identity);
    let client = Client {
        peer,
        verdict,
        identity,
    };
    serve_mqtt(stream, BytesMut::new(), client, broker, config).await;
}

/// Waits for the client's first bytes before a TLS handshake, within the connect
/// timeout: `false` when it closes or resets first (a balancer's TCP health check:
/// counted, and logged at debug level, not as a failed handshake).
async fn first_bytes(
    stream: &mut Async<TcpStream>,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: &Broker,
    config: &ConnectionConfig,
) -> bool {
    let read = async { Some(std::future::poll_fn(|cx| poll_read_some(stream, cx, rbuf)).await) };
    let timeout = async {
        smol::Timer::after(config.connect_timeout).await;
        None
    };
    match read.or(timeout).await {
        Some(Ok(n)) if n > 0 => true,
        Some(_) => {
            broker.metrics.probes.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "connection addr={peer} listener={} ended before its first byte",
                config.listener
            );
            false
        }
        None => {
            log::info!(
                "closed connection addr={peer} listener={}: no byte within {:?}",
                config.listener,
                config.connect_timeout
            );
            false
        }
    }
}

/// Who is on the other end of a wrapped connection.
struct Client {
    peer: SocketAddr,
    verdict: Verdict,
    identity: Option<String>,
}

/// MQTT on `stream` (`rbuf`: what was read from it already), over a WebSocket when the
/// listener has a path.
async fn serve_mqtt<S: Stream>(
    stream: S,
    rbuf: BytesMut,
    client: Client,
    broker: Arc<Broker>,
    config: Arc<ConnectionConfig>,
) {
    let Client {
        peer,
        verdict,
        identity,
    } = client;
    let Some(path) = config.ws_path.clone() else {
        let serving = connection::serve(stream, peer, broker, config, verdict, rbuf, identity);
        return Box::pin(serving).await;
    };
    let upgrade = ws_upgrade(Rewind::new(rbuf, stream), &path, peer, &broker, &config);
    if let Some(ws) = Box::pin(upgrade).await {
        let rbuf = BytesMut::new();
        let serving = connection::serve(ws, peer, broker, config, verdict, rbuf, identity);
        Box::pin(serving).await;
    }
}

/// Connect bursts from a fleet reconnecting at once must not be refused by the kernel.
const ACCEPT_BACKLOG: i32 = 1024;

/// Binds `addr` for accepting MQTT connections.
pub fn bind(addr: SocketAddr) -> io::Result<Async<TcpListener>> {
    let listener = TcpListener::bind(addr)?;
    // std listens with a backlog of 128; listening again only changes the backlog.
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid, bound socket descriptor owned by `listener`.
        if unsafe { libc::listen(listener.as_raw_fd(), ACCEPT_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Async::new(listener)
}

/// Accepts connections until the task is dropped.
pub async fn accept_loop(
    listener: Async<TcpListener>,
    broker: Arc<Broker>,
    config: Arc<ConnectionConfig>,
    admission: ListenerAdmission,
) {
    let wrapped =
        config.proxy_trusted.is_some() || config.tls.is_some() || config.ws_path.is_some();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                let (broker, config) = (broker.clone(), config.clone());
                if wrapped {
                    let task = serve_wrapped(stream, peer, broker, config, admission.clone());
                    lane::spawn(task);
                } else {
                    // Spawned as it is: a wrapper's own copy of the arguments would be
                    // part of every idle connection's task.
                    let verdict = admission.admit(peer.ip(), Instant::now());
                    let serving = connection::serve(
                        stream,
                        peer,
                        broker,
                        config,
                        verdict,
                        BytesMut::new(),
                        None,
                    );
                    lane::spawn(serving);
                }
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                log::warn!("accept failed on listener {}: {e}", config.listener);
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}
