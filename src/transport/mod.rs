//! Transports carry MQTT bytes to and from the broker core. Each listener accepts
//! streams and hands them to [`connection::serve`], which knows nothing of sockets
//! beyond the [`Stream`] trait, so TLS and WebSocket can plug in beside TCP.

pub mod admission;
pub mod connection;
pub mod proxy;
pub mod tcp;
pub mod tls;

use std::io;
use std::net::TcpStream;
use std::task::{Context, Poll};

use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection can be served over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when a read would make progress. An idle connection waits here without
    /// holding a read buffer; streams that cannot tell report ready at once.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Stream for Async<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Async::poll_readable(self, cx)
    }
}
