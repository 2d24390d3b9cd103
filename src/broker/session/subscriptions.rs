//! A session's own list of its subscriptions: what the store, the management API,
//! UNSUBSCRIBE and a session's end read (routing uses the router's trie). Most clients
//! have a handful and the list is only searched on SUBSCRIBE and UNSUBSCRIBE, so it is
//! packed into one allocation: for each subscription the filter's length (4 bytes),
//! the filter, the options byte and the identifier (4 bytes, 0 for none, which MQTT
//! does not allow as an identifier). One subscription takes a 32-byte block where a
//! list of (String, Subscription) took two blocks and 80 bytes.

use super::Subscription;
use crate::protocol::SubscriptionOptions;

#[derive(Default)]
pub struct Subscriptions(Box<[u8]>);

impl Subscriptions {
    pub fn iter(&self) -> impl Iterator<Item = (&str, Subscription)> {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (&len, after) = rest.split_first_chunk::<4>()?;
            let len = u32::from_ne_bytes(len) as usize;
            let (filter, after) = after.split_at(len);
            let (&[options, a, b, c, d], after) = after.split_first_chunk::<5>()?;
            rest = after;
            let filter = std::str::from_utf8(filter).expect("written from a str");
            let id = u32::from_be_bytes([a, b, c, d]);
            let subscription = Subscription {
                options: SubscriptionOptions::from_byte(options).expect("written by to_byte"),
                id: (id != 0).then_some(id),
            };
            Some((filter, subscription))
        })
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, filter: &str) -> bool {
        self.iter().any(|(f, _)| f == filter)
    }

    pub fn get(&self, filter: &str) -> Option<Subscription> {
        self.iter().find(|(f, _)| *f == filter).map(|(_, s)| s)
    }

    /// Adds or replaces a subscription; whether one to that filter existed.
    pub fn set(&mut self, filter: &str, subscription: Subscription) -> bool {
        let existed = self.remove(filter);
        let mut packed = std::mem::take(&mut self.0).into_vec();
        let len = u32::try_from(filter.len()).expect("a filter is shorter than 4 GiB");
        packed.extend_from_slice(&len.to_ne_bytes());
        packed.extend_from_slice(filter.as_bytes());
        packed.push(subscription.options.to_byte());
        packed.extend_from_slice(&subscription.id.unwrap_or(0).to_be_bytes());
        self.0 = packed.into_boxed_slice();
        existed
    }

    /// Removes a subscription; whether there was one.
    pub fn remove(&mut self, filter: &str) -> bool {
        let mut at = 0;
        let found = self.iter().find_map(|(f, _)| {
            let size = 4 + f.len() + 5;
            if f == filter {
                return Some(size);
            }
            at += size;
            None
        });
        let Some(size) = found else { return false };
        let mut packed = std::mem::take(&mut self.0).into_vec();
        packed.drain(at..at + size);
        self.0 = packed.into_boxed_slice();
        true
    }

    /// Takes every filter, leaving the list empty.
    pub fn take_filters(&mut self) -> Vec<String> {
        let filters = self.iter().map(|(f, _)| f.to_owned()).collect();
        self.0 = Box::default();
        filters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn sub(qos: QoS, id: Option<u32>) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            id,
        }
    }

    #[test]
    fn subscriptions_are_added_replaced_and_removed_by_filter() {
        let mut list = Subscriptions::default();
        assert!(list.is_empty() && list.iter().next().is_none());
        assert!(!list.set("a/+", sub(QoS::AtLeastOnce, Some(7))));
        assert!(!list.set("b/#", sub(QoS::AtMostOnce, None)));
        assert!(!list.set("", sub(QoS::ExactlyOnce, Some(268_435_455))));
        assert!(list.set("a/+", sub(QoS::ExactlyOnce, None)), "replaced");
        let all: Vec<(&str, Subscription)> = list.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[0].0, all[0].1.options.qos, all[0].1.id),
            ("b/#", QoS::AtMostOnce, None)
        );
        assert_eq!((all[1].0, all[1].1.id), ("", Some(268_435_455)));
        assert_eq!(
            (all[2].0, all[2].1.options.qos, all[2].1.id),
            ("a/+", QoS::ExactlyOnce, None)
        );
        assert!(list.contains("b/#") && !list.contains("b"));
        assert!(list.remove("") && !list.remove(""));
        assert_eq!(list.take_filters(), ["b/#", "a/+"]);
        assert!(list.is_empty());
    }
}
