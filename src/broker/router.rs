//! The subscription trie: which sessions a topic reaches (MQTT 5.0 section 4.7), with
//! shared subscriptions (`$share/group/filter`, section 4.8.2) picked round-robin.
//!
//! One node per topic level; `+` and `#` have their own slots so a match walks only the
//! branches that can match. Topics that start with `$` skip wildcards at the first level.
//!
//! Most levels are leaves with one plain subscriber (one per device in `devices/+/...`
//! trees), so a leaf is kept in its parent's map as 48 bytes and no allocation of its
//! own: its level inline when short ([`SmallStr`]), its one subscriber inline (a [`Member`]
//! is 16 bytes), and everything else a level may have boxed behind one pointer.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::session::{Session, SessionKind, Subscription};
use crate::message::SmallStr;
use crate::protocol::{SubscriptionOptions, topic};

/// One subscription that a topic matched, borrowed from the router while its read
/// lock is held: matching a topic clones no `Arc`.
pub struct Match<'a> {
    pub session: &'a Arc<Session>,
    pub subscription: Subscription,
    /// The `$share/group/filter` it came through, if it is a shared subscription.
    pub shared: Option<&'a Arc<str>>,
}

struct Member {
    session: Arc<Session>,
    subscription: Packed,
}

/// A [`Subscription`] in 8 bytes where it takes 12: the options byte and the
/// identifier, which MQTT never lets be 0.
#[derive(Clone, Copy)]
struct Packed {
    options: u8,
    id: Option<NonZeroU32>,
}

impl Packed {
    fn new(subscription: Subscription) -> Packed {
        Packed {
            options: subscription.options.to_byte(),
            id: subscription.id.and_then(NonZeroU32::new),
        }
    }

    fn unpack(self) -> Subscription {
        Subscription {
            options: SubscriptionOptions::from_byte(self.options).expect("made by to_byte"),
            id: self.id.map(NonZeroU32::get),
        }
    }
}

impl Member {
    fn new(session: &Arc<Session>, subscription: Subscription) -> Member {
        Member {
            session: session.clone(),
            subscription: Packed::new(subscription),
        }
    }

    fn to_match<'a>(&'a self, shared: Option<&'a Arc<str>>) -> Match<'a> {
        Match {
            session: &self.session,
            subscription: self.subscription.unpack(),
            shared,
        }
    }
}

struct SharedGroup {
    key: Arc<str>,
    members: Vec<Member>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// The next member round-robin, preferring connected ones (and, with
    /// `prefer_local`, this node's over a cluster peer's); `exclude` skips a session
    /// that is going away.
    fn pick(&self, exclude: Option<&str>, prefer_local: bool) -> Option<&Member> {
        self.pick_ranked(|session| {
            if Some(&*session.client_id) == exclude {
                return None;
            }
            let remote = prefer_local && session.kind != SessionKind::Client;
            Some(u8::from(!session.is_online()) * 2 + u8::from(remote))
        })
    }

    /// The next member round-robin among those `rank` ranks best (lowest), leaving
    /// out those it ranks `None`.
    fn pick_ranked(&self, rank: impl Fn(&Session) -> Option<u8>) -> Option<&Member> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(u8, &Member)> = None;
        for i in 0..n {
            let member = &self.members[(start + i) % n];
            let Some(r) = rank(&member.session) else {
                continue;
            };
            if best.is_none_or(|(b, _)| r < b) {
                best = Some((r, member));
                if r == 0 {
                    break;
                }
            }
        }
        best.map(|(_, member)| member)
    }
}

/// One topic level: 24 bytes.
#[derive(Default)]
struct Node {
    /// The level's plain subscriber when it has exactly one; with more they are all in
    /// `more.subscribers.here`, so at most one of the two holds any.
    one: Option<Member>,
    /// Children, `+` and the other subscribers: absent on a leaf with one subscriber.
    more: Option<Box<More>>,
}

#[derive(Default)]
struct More {
    children: HashMap<SmallStr, Node>,
    plus: Option<Box<Node>>,
    subscribers: Subscribers,
}

impl More {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.subscribers.is_empty()
    }
}

#[derive(Default)]
struct Subscribers {
    /// Subscriptions whose filter ends at this level (when there is more than one).
    here: Vec<Member>,
    /// Subscriptions whose filter is this level followed by `#`.
    hash: Vec<Member>,
    /// Boxed: most filters have no shared groups.
    shared: Option<Box<SharedGroups>>,
}

/// Shared groups whose filter ends at this level, and those followed by `#`.
#[derive(Default)]
struct SharedGroups {
    here: Vec<SharedGroup>,
    hash: Vec<SharedGroup>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.here.is_empty() && self.hash.is_empty() && self.shared.is_none()
    }

    fn members(&mut self, hash: bool) -> &mut Vec<Member> {
        if hash { &mut self.hash } else { &mut self.here }
    }

    fn groups_mut(&mut self, hash: bool) -> &mut Vec<SharedGroup> {
        let shared = self.shared.get_or_insert_with(Box::default);
        if hash {
            &mut shared.hash
        } else {
            &mut shared.here
        }
    }

    fn groups(&self, hash: bool) -> &[SharedGroup] {
        match &self.shared {
            Some(shared) if hash => &shared.hash,
            Some(shared) => &shared.here,
            None => &[],
        }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.one.is_none() && self.more.is_none()
    }

    fn more_mut(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    fn child(&self, level: &str) -> Option<&Node> {
        self.more.as_ref()?.children.get(level)
    }

    fn subscribers(&self) -> Option<&Subscribers> {
        self.more.as_ref().map(|more| &more.subscribers)
    }

    /// Subscriptions whose filter ends at this level.
    fn here(&self) -> &[Member] {
        match (&self.one, self.subscribers()) {
            (Some(one), _) => std::slice::from_ref(one),
            (None, Some(subscribers)) => &subscribers.here,
            (None, None) => &[],
        }
    }

    /// Subscriptions whose filter is this level followed by `#`.
    fn hash(&self) -> &[Member] {
        self.subscribers().map_or(&[], |s| &s.hash)
    }

    fn groups(&self, hash: bool) -> &[SharedGroup] {
        self.subscribers().map_or(&[], |s| s.groups(hash))
    }

    /// Adds or replaces a plain (unshared) subscription; whether it was new.
    fn upsert(&mut self, member: Member, hash: bool) -> bool {
        if hash {
            return upsert(&mut self.more_mut().subscribers.hash, member);
        }
        let nobody_here = self.here().is_empty();
        match &mut self.one {
            Some(one) if one.session.client_id == member.session.client_id => {
                *one = member;
                return false;
            }
            None if nobody_here => {
                self.one = Some(member);
                return true;
            }
            _ => {}
        }
        let one = self.one.take();
        let here = &mut self.more_mut().subscribers.here;
        here.extend(one);
        upsert(here, member)
    }

    /// Removes `client_id`'s plain subscription; whether there was one.
    fn remove(&mut self, client_id: &str, hash: bool) -> bool {
        if !hash
            && self
                .one
                .as_ref()
                .is_some_and(|one| &*one.session.client_id == client_id)
        {
            self.one = None;
            return true;
        }
        match &mut self.more {
            Some(more) => remove_member(more.subscribers.members(hash), client_id),
            None => false,
        }
    }

    /// Gives back what is no longer used after a removal: an empty groups box, the
    /// plain list down to its last subscriber, `more` once nothing is in it.
    fn tidy(&mut self) {
        let Some(more) = &mut self.more else { return };
        let subscribers = &mut more.subscribers;
        if subscribers
            .shared
            .as_ref()
            .is_some_and(|g| g.here.is_empty() && g.hash.is_empty())
        {
            subscribers.shared = None;
        }
        if self.one.is_none() && subscribers.here.len() == 1 {
            self.one = subscribers.here.pop();
        }
        if subscribers.here.is_empty() {
            subscribers.here = Vec::new();
        }
        if more.children.is_empty() {
            more.children = HashMap::new();
        }
        if more.is_empty() {
            self.more = None;
        }
    }

    fn collect<'a>(
        &'a self,
        mut levels: std::str::Split<'_, char>,
        (first, dollar, prefer_local): (bool, bool, bool),
        out: &mut Vec<Match<'a>>,
    ) {
        let wildcards = !(first && dollar);
        if wildcards {
            push_members(self.hash(), out);
            push_groups(self.groups(true), prefer_local, out);
        }
        let Some(level) = levels.next() else {
            push_members(self.here(), out);
            push_groups(self.groups(false), prefer_local, out);
            return;
        };
        let Some(more) = &self.more else { return };
        let walk = (false, dollar, prefer_local);
        if let Some(child) = more.children.get(level) {
            child.collect(levels.clone(), walk, out);
        }
        if let (true, Some(plus)) = (wildcards, &more.plus) {
            plus.collect(levels, walk, out);
        }
    }
}

fn push_members<'a>(members: &'a [Member], out: &mut Vec<Match<'a>>) {
    out.extend(members.iter().map(|m| m.to_match(None)));
}

fn push_groups<'a>(groups: &'a [SharedGroup], prefer_local: bool, out: &mut Vec<Match<'a>>) {
    for group in groups {
        if let Some(m) = group.pick(None, prefer_local) {
            out.push(m.to_match(Some(&group.key)));
        }
    }
}

#[derive(Default)]
pub struct Router {
    root: Node,
    count: usize,
    /// Shared groups pick this node's members before a cluster peer's.
    prefer_local: bool,
}

/// Where a filter lives: the plain filter, its shared group if any.
fn split_filter(filter: &str) -> (&str, Option<&str>) {
    match topic::parse_shared(filter) {
        Some(Ok((group, inner))) => (inner, Some(group)),
        _ => (filter, None),
    }
}

impl Router {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `session`'s subscription to `filter` (already validated);
    /// whether it is new.
    pub fn subscribe(
        &mut self,
        filter: &str,
        session: &Arc<Session>,
        subscription: Subscription,
    ) -> bool {
        let (plain, group) = split_filter(filter);
        let (node, is_hash) = node_for(&mut self.root, plain);
        let member = Member::new(session, subscription);
        let added = match group {
            None => node.upsert(member, is_hash),
            Some(_) => {
                let groups = node.more_mut().subscribers.groups_mut(is_hash);
                let i = match groups.iter().position(|g| &*g.key == filter) {
                    Some(i) => i,
                    None => {
                        groups.push(SharedGroup {
                            key: filter.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        groups.len() - 1
                    }
                };
                upsert(&mut groups[i].members, member)
            }
        };
        if added {
            self.count += 1;
        }
        added
    }

    /// Removes `client_id`'s subscription to `filter`; whether there was one.
    pub fn unsubscribe(&mut self, filter: &str, client_id: &str) -> bool {
        let (plain, group) = split_filter(filter);
        let mut remove = |node: &mut Node, is_hash: bool| {
            let removed = match group {
                None => node.remove(client_id, is_hash),
                Some(_) => {
                    let Some(more) = &mut node.more else {
                        return false;
                    };
                    let groups = more.subscribers.groups_mut(is_hash);
                    match groups.iter().position(|g| &*g.key == filter) {
                        Some(i) => {
                            let removed = remove_member(&mut groups[i].members, client_id);
                            if groups[i].members.is_empty() {
                                groups.swap_remove(i);
                            }
                            removed
                        }
                        None => false,
                    }
                }
            };
            node.tidy();
            removed
        };
        let removed = remove_at(&mut self.root, plain.split('/'), &mut remove);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Shared groups pick members on this node before a cluster peer's.
    pub fn set_prefer_local(&mut self, prefer_local: bool) {
        self.prefer_local = prefer_local;
    }

    /// Appends every subscription that `topic` matches to `out`; for shared groups,
    /// the one member chosen to receive it.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Match<'a>>) {
        let walk = (true, topic.starts_with('$'), self.prefer_local);
        self.root.collect(topic.split('/'), walk, out);
    }

    /// Another member of the shared group `key` to hand a message to when the member
    /// `leaving` goes away before acknowledging it.
    pub fn pick_shared(&self, key: &str, leaving: &str) -> Option<(Arc<Session>, Subscription)> {
        let m = self
            .group(key)?
            .pick(Some(leaving), self.prefer_local)
            .filter(|m| &*m.session.client_id != leaving)?;
        Some((m.session.clone(), m.subscription.unpack()))
    }

    /// The member of shared group `key` that `rank` ranks best (lowest; `None` leaves
    /// a member out), round-robin among equals.
    pub fn pick_in_group<'a>(
        &'a self,
        key: &str,
        rank: impl Fn(&Session) -> Option<u8>,
    ) -> Option<Match<'a>> {
        let group = self.group(key)?;
        let member = group.pick_ranked(rank)?;
        Some(member.to_match(Some(&group.key)))
    }

    fn group(&self, key: &str) -> Option<&SharedGroup> {
        let (plain, _) = split_filter(key);
        let mut node = &self.root;
        let mut is_hash = false;
        for level in plain.split('/') {
            match level {
                "#" => is_hash = true,
                "+" => node = node.more.as_ref()?.plus.as_deref()?,
                _ => node = node.child(level)?,
            }
        }
        node.groups(is_hash).iter().find(|g| &*g.key == key)
    }
}

fn upsert(list: &mut Vec<Member>, member: Member) -> bool {
    match list
        .iter_mut()
        .find(|m| m.session.client_id == member.session.client_id)
    {
        Some(existing) => {
            *existing = member;
            false
        }
        None => {
            // Most filters have one subscriber: do not reserve room for four.
            list.reserve_exact(1);
            list.push(member);
            true
        }
    }
}

fn remove_member(list: &mut Vec<Member>, client_id: &str) -> bool {
    match list.iter().position(|m| &*m.session.client_id == client_id) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

/// The node a filter's subscriptions hang from, creating the path; `true` for `.../#`.
fn node_for<'a>(root: &'a mut Node, filter: &str) -> (&'a mut Node, bool) {
    let mut node = root;
    for level in filter.split('/') {
        node = match level {
            "#" => return (node, true),
            "+" => node.more_mut().plus.get_or_insert_with(Box::default),
            _ => node
                .more_mut()
                .children
                .entry(SmallStr::new(level))
                .or_default(),
        };
    }
    (node, false)
}

/// Walks to a filter's node, applies `remove` there, and prunes nodes left empty.
fn remove_at(
    node: &mut Node,
    mut levels: std::str::Split<'_, char>,
    remove: &mut dyn FnMut(&mut Node, bool) -> bool,
) -> bool {
    let Some(level) = levels.next() else {
        return remove(node, false);
    };
    match level {
        "#" => remove(node, true),
        "+" => {
            let Some(plus) = node.more.as_mut().and_then(|more| more.plus.as_deref_mut()) else {
                return false;
            };
            let removed = remove_at(plus, levels, remove);
            if plus.is_empty() {
                node.more_mut().plus = None;
                node.tidy();
            }
            removed
        }
        _ => {
            let Some(child) = node
                .more
                .as_mut()
                .and_then(|more| more.children.get_mut(level))
            else {
                return false;
            };
            let removed = remove_at(child, levels, remove);
            if child.is_empty() {
                node.more_mut().children.remove(level);
                node.tidy();
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProtocolVersion, SubscriptionOptions};
    use std::num::NonZeroU64;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(
            id.into(),
            ProtocolVersion::V5,
            0,
            NonZeroU64::MIN,
        ))
    }

    fn sub() -> Subscription {
        Subscription {
            options: SubscriptionOptions::default(),
            id: None,
        }
    }

    fn matched(router: &Router, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        router.matches(topic, &mut out);
        let mut ids: Vec<String> = out
            .iter()
            .map(|m| m.session.client_id.to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut r = Router::default();
        let (a, b, c, d) = (session("a"), session("b"), session("c"), session("d"));
        r.subscribe("sport/#", &a, sub());
        r.subscribe("sport/+/player1", &b, sub());
        r.subscribe("#", &c, sub());
        r.subscribe("$SYS/#", &d, sub());
        assert_eq!(matched(&r, "sport"), ["a", "c"]);
        assert_eq!(matched(&r, "sport/tennis/player1"), ["a", "b", "c"]);
        assert_eq!(matched(&r, "$SYS/uptime"), ["d"]);
        assert_eq!(r.len(), 4);
        assert!(r.unsubscribe("sport/+/player1", "b"));
        assert!(!r.unsubscribe("sport/+/player1", "b"));
        assert_eq!(matched(&r, "sport/tennis/player1"), ["a", "c"]);
        assert!(r.unsubscribe("#", "c"));
        assert!(r.unsubscribe("sport/#", "a"));
        assert!(r.unsubscribe("$SYS/#", "d"));
        assert!(r.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn resubscribing_replaces() {
        let mut r = Router::default();
        let a = session("a");
        r.subscribe("x", &a, sub());
        r.subscribe("x", &a, sub());
        assert_eq!(r.len(), 1);
        assert_eq!(matched(&r, "x"), ["a"]);
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut r = Router::default();
        let (a, b, c) = (session("a"), session("b"), session("c"));
        for s in [&a, &b, &c] {
            s.set_online(&mut s.lock(), true);
        }
        r.subscribe("$share/g/t/+", &a, sub());
        r.subscribe("$share/g/t/+", &b, sub());
        r.subscribe("$share/h/t/+", &c, sub());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = matched(&r, "t/1");
            assert_eq!(got.len(), 2, "one per group: {got:?}");
            seen.extend(got);
        }
        assert_eq!(seen.iter().filter(|s| *s == "a").count(), 2);
        assert_eq!(seen.iter().filter(|s| *s == "b").count(), 2);
        // An offline member is passed over while another is online.
        b.set_online(&mut b.lock(), false);
        for _ in 0..3 {
            assert_eq!(matched(&r, "t/1"), ["a", "c"]);
        }
        let (picked, _) = r.pick_shared("$share/g/t/+", "a").unwrap();
        assert_eq!(&*picked.client_id, "b");
        assert!(r.unsubscribe("$share/g/t/+", "a"));
        assert!(r.unsubscribe("$share/g/t/+", "b"));
        assert_eq!(matched(&r, "t/1"), ["c"]);
    }

    /// A level with one plain subscriber holds just that member; a second makes the
    /// full lists, and the last but one leaving turns them back.
    #[test]
    fn a_level_with_one_subscriber_holds_it_alone() {
        let mut r = Router::default();
        let (x, y) = (session("x"), session("y"));
        let one = |r: &Router| {
            let level = r.root.child("a").unwrap();
            level.one.is_some() && level.more.is_none()
        };
        r.subscribe("a", &x, sub());
        assert!(one(&r));
        r.subscribe("a", &x, sub());
        assert_eq!((r.len(), matched(&r, "a")), (1, vec!["x".to_string()]));
        r.subscribe("a", &y, sub());
        assert!(!one(&r));
        assert_eq!(matched(&r, "a"), ["x", "y"]);
        assert!(r.unsubscribe("a", "x"));
        assert!(one(&r), "back to one");
        assert_eq!(matched(&r, "a"), ["y"]);
        assert!(!r.unsubscribe("a/#", "y"), "a/# is another filter");
        assert!(r.unsubscribe("a", "y"));
        assert!(r.root.is_empty() && r.is_empty());
    }

    /// The shared groups live in their own box, made on first use and dropped with the
    /// last group, so a level with plain subscribers alone does not carry them.
    #[test]
    fn shared_groups_leave_no_empty_lists_behind() {
        let mut r = Router::default();
        let (a, b) = (session("a"), session("b"));
        r.subscribe("t/#", &a, sub());
        fn level(r: &Router) -> &Subscribers {
            r.root
                .child("t")
                .unwrap()
                .subscribers()
                .expect("t/# lives in more")
        }
        assert!(level(&r).shared.is_none());
        // Unsubscribing from a group that does not exist leaves no box behind.
        assert!(!r.unsubscribe("$share/other/t/#", "b"));
        assert!(level(&r).shared.is_none());
        r.subscribe("$share/g/t/#", &b, sub());
        assert_eq!(level(&r).groups(true).len(), 1);
        assert!(r.unsubscribe("$share/g/t/#", "b"));
        assert!(level(&r).shared.is_none(), "the empty groups box stays");
        assert_eq!(matched(&r, "t/1"), ["a"]);
        assert!(r.unsubscribe("t/#", "a"));
        assert!(r.root.is_empty(), "empty branches are pruned");
    }

    /// A leaf with one subscriber is 48 bytes in its parent's map and no allocation.
    #[test]
    fn a_leaf_is_small() {
        assert_eq!(std::mem::size_of::<SmallStr>(), 24);
        assert_eq!(std::mem::size_of::<Node>(), 24);
        assert_eq!(std::mem::size_of::<Member>(), 16);
    }

    /// Short levels are kept inline, long ones boxed; both are found by `&str`.
    #[test]
    fn long_and_short_levels() {
        let mut r = Router::default();
        let a = session("a");
        let long = "x".repeat(SmallStr::INLINE + 1);
        let short = "y".repeat(SmallStr::INLINE);
        for level in [&long, &short] {
            r.subscribe(&format!("d/{level}/t"), &a, sub());
        }
        assert_eq!(matched(&r, &format!("d/{long}/t")), ["a"]);
        assert_eq!(matched(&r, &format!("d/{short}/t")), ["a"]);
        assert!(matched(&r, "d/y/t").is_empty());
        assert!(r.unsubscribe(&format!("d/{long}/t"), "a"));
        assert!(r.unsubscribe(&format!("d/{short}/t"), "a"));
        assert!(r.root.is_empty());
    }

    /// A level's lone plain subscriber stays inline beside `#` subscribers and shared
    /// groups; the identifier and options come back as they went in.
    #[test]
    fn a_lone_subscriber_beside_other_kinds() {
        let mut r = Router::default();
        let (a, b, c) = (session("a"), session("b"), session("c"));
        let with_id = Subscription {
            options: SubscriptionOptions {
                qos: crate::protocol::QoS::ExactlyOnce,
                no_local: true,
                ..SubscriptionOptions::default()
            },
            id: Some(268_435_455),
        };
        r.subscribe("t/#", &b, sub());
        r.subscribe("t", &a, with_id);
        r.subscribe("$share/g/t", &c, sub());
        assert!(r.root.child("t").unwrap().one.is_some());
        let mut out = Vec::new();
        r.matches("t", &mut out);
        let a_match = out.iter().find(|m| &*m.session.client_id == "a").unwrap();
        assert_eq!(a_match.subscription, with_id);
        assert_eq!(out.len(), 3);
        drop(out);
        assert!(r.unsubscribe("t/#", "b"));
        assert!(r.unsubscribe("$share/g/t", "c"));
        let level = r.root.child("t").unwrap();
        assert!(
            level.one.is_some() && level.more.is_none(),
            "nothing else left"
        );
        assert_eq!(matched(&r, "t"), ["a"]);
    }
}
