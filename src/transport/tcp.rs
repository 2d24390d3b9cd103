//! The MQTT/TCP listener: binds with a deep accept backlog and spawns one connection
//! task per client.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::{Async, Executor};

use super::admission::{ListenerAdmission, Verdict};
use super::connection::{self, ConnectionConfig};
use super::tls::{Tls, common_name};
use crate::broker::Broker;
use crate::throttle::Throttle;

/// Failed TLS handshakes come in floods (scanners, misconfigured devices).
static HANDSHAKE_FAILURES: Throttle = Throttle::new();

/// Runs the TLS handshake within the connect timeout; `None` (and one log line) when
/// it fails.
async fn tls_handshake(
    acceptor: futures_rustls::TlsAcceptor,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    config: &ConnectionConfig,
) -> Option<futures_rustls::server::TlsStream<Async<TcpStream>>> {
    use smol::future::FutureExt;
    let handshake = async { acceptor.accept(stream).await.map_err(|e| e.to_string()) }.or(async {
        smol::Timer::after(config.connect_timeout).await;
        Err(format!(
            "no TLS handshake within {:?}",
            config.connect_timeout
        ))
    });
    match handshake.await {
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

/// Serves one connection on the TLS listener: the handshake, then MQTT, the verified
/// client certificate's common name as the client's identity.
async fn serve_tls(
    acceptor: futures_rustls::TlsAcceptor,
    stream: Async<TcpStream>,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: ConnectionConfig,
    verdict: Verdict,
) {
    let Some(stream) = tls_handshake(acceptor, stream, peer, &config).await else {
        return;
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| common_name(cert));
    let rbuf = BytesMut::new();
    connection::serve(stream, peer, broker, config, verdict, rbuf, identity).await;
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

/// Accepts connections until the task is dropped; with `tls`, each is a TLS
/// connection (the MQTT/TLS listener).
pub async fn accept_loop(
    listener: Async<TcpListener>,
    broker: Arc<Broker>,
    executor: Arc<Executor<'static>>,
    config: ConnectionConfig,
    admission: ListenerAdmission,
    tls: Option<Arc<Tls>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                let broker = broker.clone();
                let config = config.clone();
                if let Some(tls) = &tls {
                    let verdict = admission.admit(peer.ip(), Instant::now());
                    let acceptor = tls.acceptor();
                    executor
                        .spawn(serve_tls(acceptor, stream, peer, broker, config, verdict))
                        .detach();
                } else if config.proxy_trusted.is_some() {
                    // Admitted once the header has named the real client.
                    let admission = admission.clone();
                    executor
                        .spawn(connection::serve_behind_proxy(
                            stream, peer, broker, config, admission,
                        ))
                        .detach();
                } else {
                    let verdict = admission.admit(peer.ip(), Instant::now());
                    executor
                        .spawn(connection::serve(
                            stream,
                            peer,
                            broker,
                            config,
                            verdict,
                            BytesMut::new(),
                            None,
                        ))
                        .detach();
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
