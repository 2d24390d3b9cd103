//! An in-memory byte pipe with two ends, each a [`Stream`]: the connection loop serves
//! a cluster relay session over one end as if it were a client's socket, and the link
//! to the peer reads and writes the other. The session's side is bounded (its writes
//! wait for room); the link's side takes whole frames with [`End::push`] and asks
//! [`End::poll_room`] before it reads more from the peer, so a session that does not
//! keep up holds the peer back instead of growing a buffer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use smol::io::{AsyncRead, AsyncWrite};

use crate::transport::Stream;

/// Bytes one direction holds before its writer waits.
const CAPACITY: usize = 256 * 1024;

#[derive(Default)]
struct Direction {
    bytes: BytesMut,
    /// The writing end is gone: once drained, reads see the end.
    closed: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    /// Index 0 carries what end A writes, 1 what end B writes.
    directions: [Mutex<Direction>; 2],
}

/// One end of a pipe.
pub struct End {
    shared: Arc<Shared>,
    /// The direction this end writes; it reads the other.
    writes: usize,
}

/// A pipe's two ends.
pub fn pair() -> (End, End) {
    let shared = Arc::new(Shared::default());
    (
        End {
            shared: shared.clone(),
            writes: 0,
        },
        End { shared, writes: 1 },
    )
}

impl End {
    fn direction(&self, index: usize) -> std::sync::MutexGuard<'_, Direction> {
        self.shared.directions[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes everything the other end wrote so far, waiting when there is nothing;
    /// `Ok(empty)` once it has closed and all was taken.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>> {
        let mut d = self.direction(1 - self.writes);
        if d.bytes.is_empty() {
            if d.closed {
                return Poll::Ready(Ok(BytesMut::new()));
            }
            d.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let bytes = d.bytes.split();
        if let Some(writer) = d.writer.take() {
            writer.wake();
        }
        Poll::Ready(Ok(bytes))
    }

    /// Appends `bytes` whole for the other end, however full the pipe is: for the
    /// link, which must not lose a frame's packets halfway (the bound applies to the
    /// session's side, which writes through `poll_write`).
    pub fn push(&self, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.direction(self.writes);
        if d.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        d.bytes.extend_from_slice(bytes);
        if let Some(reader) = d.reader.take() {
            reader.wake();
        }
        Ok(())
    }

    /// Ready while what this end wrote and the other has not read yet is under the
    /// pipe's capacity (or the other end is gone); otherwise woken when it reads.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut d = self.direction(self.writes);
        if d.bytes.len() < CAPACITY || d.closed {
            return Poll::Ready(());
        }
        d.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Closes this end's direction: the other end reads what is left, then the end.
    pub fn close_writes(&self) {
        let mut d = self.direction(self.writes);
        d.closed = true;
        if let Some(reader) = d.reader.take() {
            reader.wake();
        }
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.close_writes();
        // The other end may be waiting to write into this one: it never will now.
        let mut theirs = self.direction(1 - self.writes);
        theirs.closed = true;
        if let Some(writer) = theirs.writer.take() {
            writer.wake();
        }
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut d = self.direction(1 - self.writes);
        if d.bytes.is_empty() {
            if d.closed {
                return Poll::Ready(Ok(0));
            }
            d.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(d.bytes.len());
        buf[..n].copy_from_slice(&d.bytes[..n]);
        d.bytes.advance(n);
        if d.bytes.is_empty() {
            d.bytes = BytesMut::new();
        }
        if let Some(writer) = d.writer.take() {
            writer.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut d = self.direction(self.writes);
        if d.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = CAPACITY.saturating_sub(d.bytes.len());
        if room == 0 {
            d.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        d.bytes.extend_from_slice(&buf[..n]);
        if let Some(reader) = d.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_writes();
        Poll::Ready(Ok(()))
    }
}

impl Stream for End {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut d = self.direction(1 - self.writes);
        if d.bytes.is_empty() && !d.closed {
            d.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bytes_cross_both_ways_and_the_end_is_seen() {
        smol::block_on(async {
            let (mut a, mut b) = pair();
            a.write_all(b"to b").await.unwrap();
            b.push(b"to a").unwrap();
            let mut got = [0u8; 4];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"to b");
            a.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"to a");
            drop(a);
            assert_eq!(b.read(&mut got).await.unwrap(), 0);
            assert!(b.write(b"x").await.is_err());
        });
    }

    #[test]
    fn a_full_direction_holds_its_writer_back() {
        smol::block_on(async {
            let (mut a, b) = pair();
            let big = vec![7u8; CAPACITY + 10];
            let n = a.write(&big).await.unwrap();
            assert_eq!(n, CAPACITY);
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(Pin::new(&mut a).poll_write(&mut cx, &big).is_pending());
            let taken = std::future::poll_fn(|cx| b.poll_take(cx)).await.unwrap();
            assert_eq!(taken.len(), CAPACITY);
            assert!(Pin::new(&mut a).poll_write(&mut cx, &big).is_ready());
        });
    }

    #[test]
    fn a_pushing_end_is_told_when_there_is_room_again() {
        smol::block_on(async {
            let (a, mut b) = pair();
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(a.poll_room(&mut cx).is_ready());
            a.push(&vec![1u8; CAPACITY + 10]).unwrap();
            assert!(a.poll_room(&mut cx).is_pending());
            let mut got = vec![0u8; 100];
            b.read_exact(&mut got).await.unwrap();
            assert!(a.poll_room(&mut cx).is_ready());
        });
    }
}
