//! The patched poller in `vendor/polling` (see `vendor/README.md`): timeouts still end
//! on time whichever way they are waited out, and a notification still wakes exactly
//! one wait, now that the timerfd and the notifier are re-armed only when needed.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};

/// Waits once with `timeout` and returns how long the wait took.
fn timed_wait(poller: &Poller, timeout: Option<Duration>) -> Duration {
    let mut events = Events::new();
    let started = Instant::now();
    poller.wait(&mut events, timeout).unwrap();
    started.elapsed()
}

#[test]
fn a_long_timeout_waits_in_epoll_and_ends_on_time() {
    let poller = Poller::new().unwrap();
    let took = timed_wait(&poller, Some(Duration::from_millis(150)));
    assert!(took >= Duration::from_millis(150), "woke early: {took:?}");
    assert!(took < Duration::from_secs(1), "woke late: {took:?}");
}

#[test]
fn a_short_timeout_uses_the_timer_and_ends_on_time() {
    let poller = Poller::new().unwrap();
    let took = timed_wait(&poller, Some(Duration::from_millis(10)));
    assert!(took >= Duration::from_millis(10), "woke early: {took:?}");
    assert!(took < Duration::from_millis(100), "woke late: {took:?}");
}

#[test]
fn a_timer_left_armed_by_a_notified_wait_does_not_cut_the_next_wait_short() {
    let poller = Poller::new().unwrap();
    // The short wait arms the timer for 30 ms, but the notification ends it at once.
    poller.notify().unwrap();
    let took = timed_wait(&poller, Some(Duration::from_millis(30)));
    assert!(
        took < Duration::from_millis(30),
        "the notification did not wake: {took:?}"
    );
    // The long wait must outlast the stale 30 ms timer.
    let took = timed_wait(&poller, Some(Duration::from_millis(200)));
    assert!(
        took >= Duration::from_millis(200),
        "the stale timer woke it: {took:?}"
    );
}

#[test]
fn a_notification_wakes_one_wait_and_is_then_spent() {
    let poller = Poller::new().unwrap();
    poller.notify().unwrap();
    let took = timed_wait(&poller, None);
    assert!(took < Duration::from_millis(100), "not woken: {took:?}");
    let took = timed_wait(&poller, Some(Duration::from_millis(120)));
    assert!(took >= Duration::from_millis(120), "woken twice: {took:?}");
    // A second notification, after waits that saw none, still wakes.
    poller.notify().unwrap();
    let took = timed_wait(&poller, None);
    assert!(
        took < Duration::from_millis(100),
        "not woken again: {took:?}"
    );
}

#[test]
fn a_notification_from_another_thread_wakes_a_wait_without_timeout() {
    let poller = std::sync::Arc::new(Poller::new().unwrap());
    let notifier = poller.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        notifier.notify().unwrap();
    });
    let took = timed_wait(&poller, None);
    thread.join().unwrap();
    assert!(took >= Duration::from_millis(50), "woke early: {took:?}");
    assert!(took < Duration::from_secs(2), "not woken: {took:?}");
}

#[test]
fn readiness_is_reported_after_waits_that_timed_out() {
    let poller = Poller::new().unwrap();
    let (mut writer, reader) = UnixStream::pair().unwrap();
    reader.set_nonblocking(true).unwrap();
    unsafe { poller.add(&reader, Event::readable(7)).unwrap() };
    timed_wait(&poller, Some(Duration::from_millis(5)));
    timed_wait(&poller, Some(Duration::from_millis(110)));
    writer.write_all(b"x").unwrap();
    let mut events = Events::new();
    poller
        .wait(&mut events, Some(Duration::from_secs(5)))
        .unwrap();
    let keys: Vec<usize> = events.iter().map(|event| event.key).collect();
    assert_eq!(keys, [7]);
    poller.delete(&reader).unwrap();
}
