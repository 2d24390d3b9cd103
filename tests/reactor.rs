//! The patched reactor in `vendor/async-io` (see `vendor/README.md`): the wakers of
//! `readable()` and `writable()` live in a slab made on first use. Every task waiting
//! on a socket is still woken by its event, whichever way it waits, and a wait that is
//! dropped no longer counts.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use smol::future::{self, FutureExt};
use smol::{Async, Timer};

/// A connected pair: the side under test and the side that writes to it.
fn pair() -> (Async<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (reader, _) = listener.accept().unwrap();
    (Async::new(reader).unwrap(), writer)
}

async fn within_a_second<T>(what: impl Future<Output = T>) -> Option<T> {
    async { Some(what.await) }
        .or(async {
            Timer::after(Duration::from_secs(1)).await;
            None
        })
        .await
}

#[test]
fn every_waiting_task_is_woken_by_one_event() {
    smol::block_on(async {
        let (reader, mut writer) = pair();
        let reader = Arc::new(reader);
        // Two waits through the slab (`readable`, one in another task) and one through
        // the single slot (`poll_readable`), all on the same source.
        let first = smol::spawn({
            let reader = reader.clone();
            async move { reader.readable().await }
        });
        let second = reader.readable();
        let third = future::poll_fn(|cx| reader.poll_readable(cx));
        Timer::after(Duration::from_millis(50)).await;
        writer.write_all(b"x").unwrap();
        let both = async { (second.await, third.await) };
        let (second, third) = within_a_second(both).await.expect("a waiter was not woken");
        second.unwrap();
        third.unwrap();
        within_a_second(first)
            .await
            .expect("the other task was not woken")
            .unwrap();
    });
}

#[test]
fn a_dropped_wait_leaves_the_next_one_working() {
    smol::block_on(async {
        let (reader, mut writer) = pair();
        // Registers in the slab, then goes away before any event.
        let dropped = within_a_second(async {
            reader
                .readable()
                .or(async {
                    Timer::after(Duration::from_millis(20)).await;
                    Ok(())
                })
                .await
        });
        dropped.await.unwrap().unwrap();
        let waiting = reader.readable();
        writer.write_all(b"x").unwrap();
        within_a_second(waiting).await.expect("not woken").unwrap();
        // Writable at once: an empty send buffer.
        within_a_second(reader.writable())
            .await
            .expect("not writable")
            .unwrap();
    });
}
