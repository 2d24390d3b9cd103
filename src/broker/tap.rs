//! Taps: the dashboard's "watch this filter". A tap sees each message routed whose
//! topic its filter matches, as a subscriber would, without being one: it makes no
//! route, changes no reason code and holds no publisher back. Its buffer is bounded;
//! a tap that falls behind is closed and told why, never waited for, so a page that
//! stops reading costs the broker that buffer and nothing else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::topics::Preview;
use crate::message::Message;
use crate::protocol::topic;

/// Messages a tap holds for its reader, at most, and their bytes (topics and previews).
pub const TAP_MESSAGES: usize = 256;
pub const TAP_BYTES: usize = 1024 * 1024;

/// Why a tap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEnd {
    /// Its reader let more than the buffer's bound wait.
    FellBehind,
    /// Its reader closed it, or the broker is stopping.
    Closed,
}

pub struct Tap {
    pub filter: String,
    state: Mutex<TapState>,
}

/// A message as a tap shows it: a copy of its topic and [`Preview`], never the message
/// itself, whose payload shares the allocation of the read buffer it was decoded from.
pub struct Tapped {
    pub topic: String,
    pub message: Preview,
}

impl Tapped {
    fn of(message: &Message) -> Tapped {
        Tapped {
            topic: message.topic.as_str().to_owned(),
            message: Preview::of(message),
        }
    }

    fn bytes(&self) -> usize {
        self.topic.len() + self.message.bytes.len()
    }
}

#[derive(Default)]
struct TapState {
    waiting: VecDeque<Tapped>,
    bytes: usize,
    ended: Option<TapEnd>,
    reader: Option<Waker>,
}

impl Tap {
    /// A tap on `filter`, which must be a valid, non-shared filter.
    pub fn new(filter: &str) -> Tap {
        Tap {
            filter: filter.to_owned(),
            state: Mutex::new(TapState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `message` if the filter matches; `false` once the tap has ended.
    pub fn offer(&self, message: &Arc<Message>) -> bool {
        if !topic::matches(&self.filter, message.topic.as_str()) {
            return !self.is_ended();
        }
        let mut st = self.state();
        if st.ended.is_some() {
            return false;
        }
        let tapped = Tapped::of(message);
        if st.waiting.len() >= TAP_MESSAGES || st.bytes + tapped.bytes() > TAP_BYTES {
            st.waiting.clear();
            st.bytes = 0;
            st.ended = Some(TapEnd::FellBehind);
        } else {
            st.bytes += tapped.bytes();
            st.waiting.push_back(tapped);
        }
        if let Some(reader) = st.reader.take() {
            reader.wake();
        }
        st.ended.is_none()
    }

    /// Takes what waits, or how the tap ended once nothing does.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<Vec<Tapped>, TapEnd>> {
        let mut st = self.state();
        if !st.waiting.is_empty() {
            st.bytes = 0;
            return Poll::Ready(Ok(st.waiting.drain(..).collect()));
        }
        if let Some(end) = st.ended {
            return Poll::Ready(Err(end));
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ends the tap (its reader is gone, or the broker stops).
    pub fn close(&self) {
        let mut st = self.state();
        st.ended.get_or_insert(TapEnd::Closed);
        st.waiting.clear();
        if let Some(reader) = st.reader.take() {
            reader.wake();
        }
    }

    pub fn is_ended(&self) -> bool {
        self.state().ended.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;
    use std::task::Waker;

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::from_static(b"v"),
            QoS::AtMostOnce,
            false,
        ))
    }

    #[test]
    fn a_tap_takes_what_its_filter_matches() {
        let tap = Tap::new("site/+/temp");
        assert!(tap.offer(&message("site/a/temp")));
        assert!(tap.offer(&message("site/a/humidity")));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Ok(taken)) = tap.poll_take(&mut cx) else {
            panic!("a message waits");
        };
        assert_eq!(taken.len(), 1);
        assert!(tap.poll_take(&mut cx).is_pending());
    }

    #[test]
    fn a_tap_whose_reader_falls_behind_ends_and_holds_nothing() {
        let tap = Tap::new("#");
        for _ in 0..TAP_MESSAGES {
            assert!(tap.offer(&message("t")));
        }
        assert!(!tap.offer(&message("t")), "one past the bound ends it");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            tap.poll_take(&mut cx),
            Poll::Ready(Err(TapEnd::FellBehind))
        ));
        assert!(!tap.offer(&message("t")));
    }

    #[test]
    fn a_tap_sees_dollar_topics_only_when_its_filter_names_them() {
        let tap = Tap::new("#");
        tap.offer(&message("$SYS/broker/uptime"));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(tap.poll_take(&mut cx).is_pending());
        let sys = Tap::new("$SYS/#");
        sys.offer(&message("$SYS/broker/uptime"));
        assert!(matches!(sys.poll_take(&mut cx), Poll::Ready(Ok(m)) if m.len() == 1));
    }
}
