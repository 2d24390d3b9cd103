//! The MQTT/TCP listener: binds with a deep accept backlog and spawns one connection
//! task per client.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::{Async, Executor};

use super::admission::ListenerAdmission;
use super::connection::{self, ConnectionConfig};
use crate::broker::Broker;

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
    executor: Arc<Executor<'static>>,
    config: ConnectionConfig,
    admission: ListenerAdmission,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                let broker = broker.clone();
                let config = config.clone();
                if config.proxy_trusted.is_some() {
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
