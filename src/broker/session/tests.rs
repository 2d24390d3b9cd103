//! A session's queue, limits and collections, without a broker.

use super::*;
use crate::protocol::QoS;
use bytes::Bytes;
use queue::Enqueued;

#[test]
fn a_sparse_collection_is_allocated_while_it_holds_something() {
    let mut ids: Sparse<Vec<u16>> = Sparse::default();
    assert!(ids.is_empty() && !ids.is_allocated());
    ids.push(7);
    ids.push(9);
    assert_eq!(*ids, [7, 9]);
    ids.swap_remove(0);
    ids.tidy();
    assert!(ids.is_allocated(), "still holds 9");
    ids.swap_remove(0);
    ids.tidy();
    assert!(!ids.is_allocated(), "given back once empty");
    assert!(!Sparse::from(Vec::<u16>::new()).is_allocated());
    assert_eq!(Sparse::from(vec![3]).take(), [3]);
}

fn delivery(qos: QoS) -> Delivery {
    Delivery {
        message: Arc::new(Message::new("t", Bytes::from_static(b"p"), qos, false)),
        qos,
        retain: false,
        subscription_ids: vec![],
        shared: None,
        seq: None,
    }
}

const LIMITS: QueueLimits = QueueLimits {
    max_queued_messages: 2,
    max_queued_bytes: 1 << 20,
    queue_qos0_offline: false,
};

#[test]
fn a_full_outbox_drops_its_oldest_message() {
    let s = Session::new(
        "$bridge/b".into(),
        ProtocolVersion::V5,
        NEVER_EXPIRES,
        NonZeroU64::MIN,
    );
    s.lock().outbox = Some(Box::new(Outbox {
        limits: LIMITS,
        drops_oldest: true,
    }));
    let numbered = |n: &'static [u8]| {
        let mut d = delivery(QoS::AtLeastOnce);
        d.message = Arc::new(Message::new(
            "t",
            Bytes::from_static(n),
            QoS::AtLeastOnce,
            false,
        ));
        d
    };
    // The global limits would allow far more; the outbox's own ones apply.
    let roomy = QueueLimits {
        max_queued_messages: 100,
        ..LIMITS
    };
    for n in [b"1", b"2", b"3"] {
        let queued = s.lock().enqueue(numbered(n), &roomy, None, &mut vec![]);
        assert!(matches!(queued, Enqueued::Queued { .. }));
    }
    let st = s.lock();
    let left: Vec<&[u8]> = st.queue.iter().map(|d| &d.message.payload[..]).collect();
    assert_eq!(left, [b"2", b"3"]);
    assert_eq!(st.dropped, 1);
    drop(st);
    // Under `strict` a full outbox refuses QoS 1/2 instead, and drops QoS 0.
    s.lock().outbox = Some(Box::new(Outbox {
        limits: LIMITS,
        drops_oldest: false,
    }));
    let refused = s.lock().enqueue(numbered(b"4"), &roomy, None, &mut vec![]);
    assert_eq!(refused, Enqueued::Refused);
    let qos0 = s
        .lock()
        .enqueue(delivery(QoS::AtMostOnce), &roomy, None, &mut vec![]);
    assert_eq!(qos0, Enqueued::Dropped);
    assert_eq!(s.lock().queue.len(), 2);
}

#[test]
fn full_queue_drops_qos0_and_overflows_clean_qos1() {
    let s = Session::new("c".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
    s.set_online(&mut s.lock(), true);
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Queued {
            was_empty: true,
            pressure: true
        }
    );
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Queued {
            was_empty: false,
            pressure: true
        }
    );
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Dropped
    );
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Overflow
    );
    assert_eq!(s.lock().close_reason, Some(CloseReason::QueueFull));
    // Popping from a drained queue allocates nothing.
    let mut st = s.lock();
    assert!(st.pop_queued().is_some() && st.pop_queued().is_some());
    assert!(st.pop_queued().is_none() && st.queued_bytes == 0);
    let mut fresh = Session::new("d".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
    assert!(fresh.state.get_mut().unwrap().pop_queued().is_none());
    assert!(!fresh.state.get_mut().unwrap().queue.is_allocated());
}

#[test]
fn offline_sessions_do_not_queue_qos0() {
    let s = Session::new("c".into(), ProtocolVersion::V5, 60, NonZeroU64::MIN);
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtMostOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Dropped
    );
    assert_eq!(
        s.lock()
            .enqueue(delivery(QoS::AtLeastOnce), &LIMITS, None, &mut vec![]),
        Enqueued::Queued {
            was_empty: true,
            pressure: false
        }
    );
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap() {
    let s = Session::new("c".into(), ProtocolVersion::V5, 0, NonZeroU64::MIN);
    let mut st = s.lock();
    st.next_packet_id = 65534;
    let id = st.allocate_packet_id();
    assert_eq!(id, 65535);
    st.inflight.push_back(Inflight {
        packet_id: 1,
        stage: Stage::AwaitingPubAck,
        delivery: delivery(QoS::AtLeastOnce),
    });
    assert_eq!(st.allocate_packet_id(), 2);
}
