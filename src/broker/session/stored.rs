//! What the store keeps of a session: the ops that store it whole when it starts to
//! outlive its connection, and those that add and remove one delivery.

use super::SessionState;
use crate::message::{Delivery, Seq, SmallStr};
use crate::store::{Op, Store};

/// The op that stores one delivery under `seq`.
pub fn add_op(sid: u64, seq: Seq, d: &Delivery, store: &Store) -> Op {
    store.message_id(&d.message);
    Op::AddDelivery {
        sid,
        seq: seq.get(),
        message: d.message.clone(),
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids.clone(),
        shared: d.shared.clone(),
    }
}

/// The op that removes a stored delivery, once it is acknowledged or discarded.
pub fn done_op(sid: u64, d: &Delivery) -> Option<Op> {
    d.seq.map(|seq| Op::DoneDelivery {
        sid,
        seq: seq.get(),
        // Given by `add_op` before the delivery was stored.
        message_id: d.message.store_id.get().map_or(0, |id| id.get()),
    })
}

impl SessionState {
    /// The ops that store this whole session as it is now, for a session that starts
    /// to outlive its connection; its deliveries get new sequence numbers.
    pub fn snapshot(&mut self, sid: u64, client_id: &SmallStr, store: &Store) -> Vec<Op> {
        self.stored = true;
        let mut ops = vec![Op::PutSession {
            sid,
            client_id: client_id.clone(),
            protocol: self.protocol.level(),
            expiry: self.expiry_interval,
            disconnected_at: None,
        }];
        ops.extend(
            self.subscriptions
                .iter()
                .map(|(filter, s)| Op::PutSubscription {
                    sid,
                    filter: filter.to_owned(),
                    options: s.options.to_byte(),
                    identifier: s.id,
                }),
        );
        ops.extend(
            self.inbound_qos2
                .iter()
                .map(|&packet_id| Op::AddInbound { sid, packet_id }),
        );
        // Through `get_mut`: `DerefMut` would allocate the lists that are empty.
        for f in self
            .inflight
            .get_mut()
            .into_iter()
            .flat_map(|f| f.iter_mut())
        {
            let seq = store.new_seq();
            f.delivery.seq = Some(seq);
            ops.push(add_op(sid, seq, &f.delivery, store));
            ops.push(Op::SentDelivery {
                sid,
                seq: seq.get(),
                packet_id: f.packet_id,
                stage: f.stage,
            });
        }
        for d in self.queue.get_mut().into_iter().flat_map(|q| q.iter_mut()) {
            let seq = store.new_seq();
            d.seq = Some(seq);
            ops.push(add_op(sid, seq, d, store));
        }
        ops
    }
}
