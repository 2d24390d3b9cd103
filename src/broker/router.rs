//! The subscription trie: which sessions a topic reaches (MQTT 5.0 section 4.7), with
//! shared subscriptions (`$share/group/filter`, section 4.8.2) picked round-robin.
//!
//! One node per topic level; `+` and `#` have their own slots so a match walks only the
//! branches that can match. Topics that start with `$` skip wildcards at the first level.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::session::{Session, Subscription};
use crate::protocol::topic;

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
    subscription: Subscription,
}

struct SharedGroup {
    key: Arc<str>,
    members: Vec<Member>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// The next member round-robin, preferring connected ones; `exclude` skips a
    /// session that is going away.
    fn pick(&self, exclude: Option<&str>) -> Option<&Member> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = || {
            (0..n)
                .map(move |i| &self.members[(start + i) % n])
                .filter(|m| Some(&*m.session.client_id) != exclude)
        };
        candidates()
            .find(|m| m.session.is_online())
            .or_else(|| candidates().next())
    }
}

/// One topic level. Most levels are only a way through, and most are leaves (one per
/// device in `devices/+/...` trees), so what hangs from a level is boxed and absent
/// until needed: a leaf is four words in its parent's map.
#[derive(Default)]
struct Node {
    // Boxed on purpose: a map's header is 48 bytes inline, a box 8, and leaves have no
    // children.
    #[allow(clippy::box_collection)]
    children: Option<Box<HashMap<Box<str>, Node>>>,
    plus: Option<Box<Node>>,
    subscribers: Subs,
}

/// Who subscribed at a level: nobody, the one plain subscriber that most subscribed
/// levels have (one allocation of a member), or the full lists.
#[derive(Default)]
enum Subs {
    #[default]
    None,
    One(Box<Member>),
    Full(Box<Subscribers>),
}

impl Subs {
    /// Subscriptions whose filter ends at this level.
    fn here(&self) -> &[Member] {
        match self {
            Subs::None => &[],
            Subs::One(member) => std::slice::from_ref(&**member),
            Subs::Full(full) => &full.here,
        }
    }

    /// Subscriptions whose filter is this level followed by `#`.
    fn hash(&self) -> &[Member] {
        match self {
            Subs::Full(full) => &full.hash,
            _ => &[],
        }
    }

    fn groups(&self, hash: bool) -> &[SharedGroup] {
        match self {
            Subs::Full(full) => full.groups(hash),
            _ => &[],
        }
    }

    /// The full lists, made from what there is on first use.
    fn full_mut(&mut self) -> &mut Subscribers {
        if !matches!(self, Subs::Full(_)) {
            let mut full = Subscribers::default();
            if let Subs::One(member) = std::mem::take(self) {
                full.here.push(*member);
            }
            *self = Subs::Full(Box::new(full));
        }
        match self {
            Subs::Full(full) => full,
            _ => unreachable!("made full above"),
        }
    }

    /// Adds or replaces a plain (unshared) subscription; whether it was new.
    fn upsert(&mut self, member: Member, hash: bool) -> bool {
        match self {
            Subs::None if !hash => {
                *self = Subs::One(Box::new(member));
                true
            }
            Subs::One(one) if !hash && one.session.client_id == member.session.client_id => {
                **one = member;
                false
            }
            _ => upsert(self.full_mut().members(hash), member),
        }
    }

    /// Removes `client_id`'s plain subscription; whether there was one.
    fn remove(&mut self, client_id: &str, hash: bool) -> bool {
        match self {
            Subs::None => false,
            Subs::One(one) => {
                let found = !hash && &*one.session.client_id == client_id;
                if found {
                    *self = Subs::None;
                }
                found
            }
            Subs::Full(full) => remove_member(full.members(hash), client_id),
        }
    }

    /// Gives back what is no longer used: an empty groups box, empty lists, full lists
    /// down to their one plain subscriber.
    fn tidy(&mut self) {
        let Subs::Full(full) = self else { return };
        if full
            .shared
            .as_ref()
            .is_some_and(|g| g.here.is_empty() && g.hash.is_empty())
        {
            full.shared = None;
        }
        if full.hash.is_empty() && full.shared.is_none() && full.here.len() <= 1 {
            *self = match full.here.pop() {
                Some(member) => Subs::One(Box::new(member)),
                None => Subs::None,
            };
        }
    }
}

#[derive(Default)]
struct Subscribers {
    /// Subscriptions whose filter ends at this level.
    here: Vec<Member>,
    /// Subscriptions whose filter is this level followed by `#`.
    hash: Vec<Member>,
    /// Boxed: most filters have no shared groups, and every subscribed level has a
    /// `Subscribers`.
    shared: Option<Box<SharedGroups>>,
}

/// Shared groups whose filter ends at this level, and those followed by `#`.
#[derive(Default)]
struct SharedGroups {
    here: Vec<SharedGroup>,
    hash: Vec<SharedGroup>,
}

impl Subscribers {
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
        self.children.is_none() && self.plus.is_none() && matches!(self.subscribers, Subs::None)
    }

    fn child(&self, level: &str) -> Option<&Node> {
        self.children.as_ref()?.get(level)
    }

    fn collect<'a>(
        &'a self,
        mut levels: std::str::Split<'_, char>,
        first: bool,
        dollar: bool,
        out: &mut Vec<Match<'a>>,
    ) {
        let wildcards = !(first && dollar);
        let subs = &self.subscribers;
        if wildcards {
            push_members(subs.hash(), out);
            push_groups(subs.groups(true), out);
        }
        let Some(level) = levels.next() else {
            push_members(subs.here(), out);
            push_groups(subs.groups(false), out);
            return;
        };
        if let Some(child) = self.child(level) {
            child.collect(levels.clone(), false, dollar, out);
        }
        if let (true, Some(plus)) = (wildcards, &self.plus) {
            plus.collect(levels, false, dollar, out);
        }
    }
}

fn push_members<'a>(members: &'a [Member], out: &mut Vec<Match<'a>>) {
    out.extend(members.iter().map(|m| Match {
        session: &m.session,
        subscription: m.subscription,
        shared: None,
    }));
}

fn push_groups<'a>(groups: &'a [SharedGroup], out: &mut Vec<Match<'a>>) {
    for group in groups {
        if let Some(m) = group.pick(None) {
            out.push(Match {
                session: &m.session,
                subscription: m.subscription,
                shared: Some(&group.key),
            });
        }
    }
}

#[derive(Default)]
pub struct Router {
    root: Node,
    count: usize,
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

    /// Adds or replaces `session`'s subscription to `filter` (already validated).
    pub fn subscribe(&mut self, filter: &str, session: &Arc<Session>, subscription: Subscription) {
        let (plain, group) = split_filter(filter);
        let (node, is_hash) = node_for(&mut self.root, plain);
        let subs = &mut node.subscribers;
        let member = Member {
            session: session.clone(),
            subscription,
        };
        let added = match group {
            None => subs.upsert(member, is_hash),
            Some(_) => {
                let groups = subs.full_mut().groups_mut(is_hash);
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
    }

    /// Removes `client_id`'s subscription to `filter`; whether there was one.
    pub fn unsubscribe(&mut self, filter: &str, client_id: &str) -> bool {
        let (plain, group) = split_filter(filter);
        let mut remove = |node: &mut Node, is_hash: bool| {
            let subs = &mut node.subscribers;
            let removed = match group {
                None => subs.remove(client_id, is_hash),
                Some(_) => {
                    let Subs::Full(full) = subs else {
                        return false;
                    };
                    let groups = full.groups_mut(is_hash);
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
            subs.tidy();
            removed
        };
        let removed = remove_at(&mut self.root, plain.split('/'), &mut remove);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Appends every subscription that `topic` matches to `out`; for shared groups,
    /// the one member chosen to receive it.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Match<'a>>) {
        self.root
            .collect(topic.split('/'), true, topic.starts_with('$'), out);
    }

    /// Another member of the shared group `key` to hand a message to when the member
    /// `leaving` goes away before acknowledging it.
    pub fn pick_shared(&self, key: &str, leaving: &str) -> Option<(Arc<Session>, Subscription)> {
        let (plain, _) = split_filter(key);
        let mut node = &self.root;
        let mut is_hash = false;
        for level in plain.split('/') {
            match level {
                "#" => is_hash = true,
                "+" => node = node.plus.as_deref()?,
                _ => node = node.child(level)?,
            }
        }
        let group = node
            .subscribers
            .groups(is_hash)
            .iter()
            .find(|g| &*g.key == key)?;
        let m = group
            .pick(Some(leaving))
            .filter(|m| &*m.session.client_id != leaving)?;
        Some((m.session.clone(), m.subscription))
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
            "+" => node.plus.get_or_insert_with(Box::default),
            _ => node
                .children
                .get_or_insert_with(Box::default)
                .entry(level.into())
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
            let Some(plus) = node.plus.as_deref_mut() else {
                return false;
            };
            let removed = remove_at(plus, levels, remove);
            if plus.is_empty() {
                node.plus = None;
            }
            removed
        }
        _ => {
            let Some(children) = node.children.as_deref_mut() else {
                return false;
            };
            let Some(child) = children.get_mut(level) else {
                return false;
            };
            let removed = remove_at(child, levels, remove);
            if child.is_empty() {
                children.remove(level);
                if children.is_empty() {
                    node.children = None;
                }
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProtocolVersion, SubscriptionOptions};

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(id.into(), ProtocolVersion::V5, 0, 0))
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
        assert_eq!(
            r.pick_shared("$share/g/t/+", "a")
                .unwrap()
                .0
                .client_id
                .as_ref(),
            "b"
        );
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
        let one = |r: &Router| matches!(r.root.child("a").unwrap().subscribers, Subs::One(_));
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
            match &r.root.child("t").unwrap().subscribers {
                Subs::Full(full) => full,
                _ => panic!("t/# lives in the full lists"),
            }
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
}
