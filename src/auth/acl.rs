//! Access control lists in the syntax of Mosquitto's `acl_file`, with the semantics a
//! user coming from Mosquitto would notice:
//!
//! - `topic [read|write|readwrite|deny] TOPIC` lines before the first `user` line are
//!   for anonymous clients; after `user NAME`, for that user; `pattern ...` lines are
//!   for everyone, with `%c` (client id) and `%u` (user name) standing for whole levels.
//! - A matching `deny` wins over any grant; no matching grant means no access.
//! - A topic that starts with `$` only matches rules that start with `$`.
//! - A client whose id or user name contains `+` or `#` matches no pattern rule.
//!
//! Beyond Mosquitto, a SUBSCRIBE to a filter the client could never read is refused.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use crate::protocol::topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Kind {
    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Kind::ReadWrite, _) | (Kind::Read, Access::Read) | (Kind::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    kind: Kind,
    filter: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Splits `[ACCESS] TOPIC`; the topic is the rest of the line and may hold spaces.
fn parse_rule(rest: &str) -> Result<Rule, String> {
    let rest = rest.trim();
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (kind, filter) = match first {
        "read" => (Kind::Read, after.trim()),
        "write" => (Kind::Write, after.trim()),
        "readwrite" => (Kind::ReadWrite, after.trim()),
        "deny" => (Kind::Deny, after.trim()),
        _ => (Kind::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("rule without a topic".into());
    }
    topic::validate_filter(filter).map_err(|e| format!("topic {filter:?}: {}", e.describe()))?;
    Ok(Rule {
        kind,
        filter: filter.to_owned(),
    })
}

impl Acl {
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |e: String| format!("line {}: {e}", n + 1);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match keyword {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(at("user without a name".into()));
                    }
                    user = Some(name.to_owned());
                    acl.users.entry(name.to_owned()).or_default();
                }
                "topic" => {
                    let rule = parse_rule(rest).map_err(at)?;
                    match &user {
                        Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                        None => acl.anonymous.push(rule),
                    }
                }
                "pattern" => acl.patterns.push(parse_rule(rest).map_err(at)?),
                other => {
                    return Err(at(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    pub fn load(path: &Path) -> Result<Acl, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The rules that apply to a client: each with its filter, patterns filled in,
    /// and the filter as the operator wrote it.
    fn rules_for(
        &self,
        client_id: &str,
        username: Option<&str>,
    ) -> Vec<(Kind, Cow<'_, str>, &str)> {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let mut rules: Vec<(Kind, Cow<'_, str>, &str)> = own
            .iter()
            .map(|r| (r.kind, Cow::Borrowed(r.filter.as_str()), r.filter.as_str()))
            .collect();
        for p in &self.patterns {
            if let Some(filter) = substitute(&p.filter, client_id, username) {
                rules.push((p.kind, filter, p.filter.as_str()));
            }
        }
        rules
    }

    /// Whether the client may publish to (`Write`) or receive from (`Read`) `topic`.
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        self.decide(client_id, username, topic, access, |_| true)
    }

    /// Whether the client may publish to `topic`, which the broker keeps for itself
    /// (`$SYS`): only a rule the operator wrote with a leading `$` grants it, never a
    /// pattern that `%c` or `%u` turned into one (a client named `$SYS` under the
    /// common `pattern readwrite %c/#`). Deny rules apply as ever.
    pub fn grants_reserved(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.decide(client_id, username, topic, Access::Write, |written| {
            written.starts_with('$')
        })
    }

    /// A matching deny wins; otherwise a matching grant of `access` from a rule whose
    /// filter as written passes `counts`.
    fn decide(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
        counts: impl Fn(&str) -> bool,
    ) -> bool {
        let mut granted = false;
        for (kind, filter, written) in self.rules_for(client_id, username) {
            if !topic::matches(&filter, topic) {
                continue;
            }
            if kind == Kind::Deny {
                return false;
            }
            granted |= kind.grants(access) && counts(written);
        }
        granted
    }

    /// Whether a subscription to `filter` could ever deliver anything: some read grant
    /// overlaps it, and no deny rule covers all of it.
    pub fn may_ever_read(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let filter = match topic::parse_shared(filter) {
            Some(Ok((_, inner))) => inner,
            _ => filter,
        };
        let rules = self.rules_for(client_id, username);
        if rules
            .iter()
            .any(|(k, f, _)| *k == Kind::Deny && covers(f, filter))
        {
            return false;
        }
        rules
            .iter()
            .any(|(k, f, _)| k.grants(Access::Read) && intersects(f, filter))
    }
}

/// Fills `%c` and `%u` in a pattern; `None` when the rule cannot apply to this client.
fn substitute<'a>(
    pattern: &'a str,
    client_id: &str,
    username: Option<&str>,
) -> Option<Cow<'a, str>> {
    if !pattern.contains('%') {
        return Some(Cow::Borrowed(pattern));
    }
    let unsafe_value = |v: &str| v.contains('+') || v.contains('#');
    let mut levels = Vec::new();
    for level in pattern.split('/') {
        let value = match level {
            "%c" if !unsafe_value(client_id) => client_id,
            "%u" => match username {
                Some(u) if !unsafe_value(u) => u,
                _ => return None,
            },
            "%c" => return None,
            _ if level.contains("%c") || level.contains("%u") => return None,
            _ => level,
        };
        levels.push(value);
    }
    Some(Cow::Owned(levels.join("/")))
}

/// Whether some topic name matches both filters.
fn intersects(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

/// Whether every topic that matches `inner` also matches `outer`.
fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') != outer.starts_with('$')
        && !inner.starts_with('+')
        && !inner.starts_with('#')
    {
        return false;
    }
    let (mut o, mut i) = (outer.split('/'), inner.split('/'));
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(q)) if q != "#" => {}
            (Some(p), Some(q)) if p == q && q != "+" && q != "#" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic write sensors/+/temp
topic deny alice/secret

user bob with space
topic read $SYS/#

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

    fn acl() -> Acl {
        Acl::parse(FILE).unwrap()
    }

    #[test]
    fn users_and_anonymous() {
        let a = acl();
        assert!(a.allows("c", None, "public/x", Access::Read));
        assert!(!a.allows("c", None, "public/x", Access::Write));
        assert!(a.allows("c", Some("alice"), "alice/x", Access::Write));
        assert!(a.allows("c", Some("alice"), "sensors/1/temp", Access::Write));
        assert!(!a.allows("c", Some("alice"), "sensors/1/temp", Access::Read));
        assert!(
            !a.allows("c", Some("alice"), "public/x", Access::Read),
            "anonymous rules are not alice's"
        );
        assert!(!a.allows("c", Some("mallory"), "alice/x", Access::Read));
    }

    #[test]
    fn deny_wins() {
        assert!(!acl().allows("c", Some("alice"), "alice/secret", Access::Read));
        assert!(!acl().allows("c", Some("alice"), "alice/secret", Access::Write));
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let a = Acl::parse("user root\ntopic readwrite #\ntopic read $SYS/#\n").unwrap();
        assert!(!a.allows("c", Some("root"), "$internal/x", Access::Read));
        assert!(a.allows("c", Some("root"), "$SYS/uptime", Access::Read));
        assert!(acl().allows("c", Some("bob with space"), "$SYS/x", Access::Read));
    }

    #[test]
    fn patterns_fill_whole_levels_and_refuse_wildcard_ids() {
        let a = acl();
        assert!(a.allows("dev1", None, "devices/dev1/state", Access::Write));
        assert!(!a.allows("dev1", None, "devices/dev2/state", Access::Write));
        assert!(!a.allows("dev+", None, "devices/dev+/state", Access::Write));
        assert!(a.allows("c", Some("alice"), "users/alice/inbox", Access::Read));
        assert!(!a.allows("c", None, "users//inbox", Access::Read));
        let partial = Acl::parse("pattern readwrite x/a%c\n").unwrap();
        assert!(!partial.allows("b", None, "x/ab", Access::Read));
    }

    #[test]
    fn subscribe_refused_only_when_nothing_could_be_read() {
        let a = acl();
        assert!(a.may_ever_read("c", Some("alice"), "alice/#"));
        assert!(
            a.may_ever_read("c", Some("alice"), "#"),
            "# overlaps alice/#"
        );
        assert!(
            !a.may_ever_read("c", Some("alice"), "alice/secret"),
            "denied entirely"
        );
        assert!(
            !a.may_ever_read("c", Some("alice"), "sensors/+/temp"),
            "write only"
        );
        assert!(a.may_ever_read("c", None, "$share/g/public/+"));
        assert!(!a.may_ever_read("c", None, "private/#"));
    }

    #[test]
    fn errors_name_the_line() {
        let err = Acl::parse("user a\ntopic read a/#\ntopic read a/#/b\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = Acl::parse("usr a\n").unwrap_err();
        assert!(err.starts_with("line 1") && err.contains("usr"), "{err}");
    }

    #[test]
    fn only_a_rule_written_with_a_dollar_grants_a_reserved_topic() {
        let a =
            Acl::parse("pattern readwrite %c/#\npattern readwrite %u/#\ntopic write $SYS/site/#\n")
                .unwrap();
        // A client named `$SYS` fills the pattern to `$SYS/#`: enough for `allows`,
        // never for the broker's own topics.
        assert!(a.allows("$SYS", None, "$SYS/broker/version", Access::Write));
        assert!(!a.grants_reserved("$SYS", None, "$SYS/broker/version"));
        assert!(!a.grants_reserved("c", Some("$SYS"), "$SYS/broker/version"));
        assert!(a.grants_reserved("c", None, "$SYS/site/note"));
        let denied = Acl::parse("topic write $SYS/#\ntopic deny $SYS/broker/#\n").unwrap();
        assert!(!denied.grants_reserved("c", None, "$SYS/broker/version"));
    }
}
