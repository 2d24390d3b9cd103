//! Transports carry MQTT bytes to and from the broker core. Each listener accepts
//! streams and hands them to [`connection::serve`], which knows nothing of sockets
//! beyond the [`Stream`] trait, so TLS and WebSocket can plug in beside TCP.

pub mod admission;
pub mod connection;
mod handshake;
pub mod lane;
pub mod outgoing;
mod preamble;
pub mod proxy;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};

use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};

/// A byte stream a connection can be served over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would make progress. An idle connection waits here without
    /// holding a read buffer; streams that cannot tell report ready at once.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The in-memory relays (a bridge's outbox, a cluster peer's sessions) are served
/// boxed: one copy of the connection loop for all of them, not one per relay type,
/// for a few bytes' indirection on streams that are not the broker's hot path.
pub type RelayStream = Box<dyn Stream>;

impl Stream for RelayStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_readable(cx)
    }
}

impl Stream for Async<TcpStream> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Async::poll_readable(self, cx)
    }
}

/// A stream that first yields bytes already read from it (what followed a PROXY
/// header), so TLS and WebSocket handshakes can start on a stream that was peeked at.
pub struct Rewind<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.len().min(self.prefix.len());
        buf[..n].copy_from_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            self.prefix = BytesMut::new();
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
