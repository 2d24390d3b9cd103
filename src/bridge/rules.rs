//! Topic rules of a bridge, with the meaning of Mosquitto's `topic` lines:
//! `topic PATTERN DIRECTION QOS LOCAL_PREFIX REMOTE_PREFIX`. Locally the rule covers
//! `LOCAL_PREFIX + PATTERN`, remotely `REMOTE_PREFIX + PATTERN`; a message crossing the
//! bridge keeps the part after the prefix and changes the prefix. Pure: no I/O.

use crate::protocol::topic::matches;
use crate::protocol::{QoS, RetainHandling, SubscriptionOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote.
    Out,
    /// Remote to local.
    In,
    Both,
}

impl Direction {
    pub fn goes_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn comes_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl Rule {
    /// The filter the bridge subscribes to locally (out) or remotely (in).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// A bridge's rules in config order; the first that matches a topic decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// The remote topic of a local message, when an out rule covers it.
    pub fn outbound(&self, local_topic: &str) -> Option<String> {
        self.0
            .iter()
            .filter(|r| r.direction.goes_out())
            .find(|r| matches(&r.local_filter(), local_topic))
            .and_then(|r| {
                let rest = local_topic.strip_prefix(r.local_prefix.as_str())?;
                Some(format!("{}{rest}", r.remote_prefix))
            })
    }

    /// The most bytes [`Rules::outbound`] adds to a topic (a longer remote prefix).
    pub fn outbound_growth(&self) -> usize {
        self.0
            .iter()
            .filter(|r| r.direction.goes_out())
            .map(|r| r.remote_prefix.len().saturating_sub(r.local_prefix.len()))
            .max()
            .unwrap_or(0)
    }

    /// The local topic of a remote message, when an in rule covers it.
    pub fn inbound(&self, remote_topic: &str) -> Option<String> {
        self.0
            .iter()
            .filter(|r| r.direction.comes_in())
            .find(|r| matches(&r.remote_filter(), remote_topic))
            .and_then(|r| {
                let rest = remote_topic.strip_prefix(r.remote_prefix.as_str())?;
                Some(format!("{}{rest}", r.local_prefix))
            })
    }

    /// The bridge's subscriptions on one side: the local filters of the `out` rules
    /// (`local`), or the remote filters of the `in` rules. No-local, so what the bridge
    /// sends there does not come back; retain-as-published, so retained stays retained.
    pub fn subscriptions(
        &self,
        local: bool,
        retain_handling: RetainHandling,
    ) -> Vec<(String, SubscriptionOptions)> {
        self.0
            .iter()
            .filter(|r| {
                if local {
                    r.direction.goes_out()
                } else {
                    r.direction.comes_in()
                }
            })
            .map(|rule| {
                let options = SubscriptionOptions {
                    qos: rule.qos,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling,
                };
                let filter = if local {
                    rule.local_filter()
                } else {
                    rule.remote_filter()
                };
                (filter, options)
            })
            .collect()
    }

    pub fn outgoing(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter().filter(|r| r.direction.goes_out())
    }

    pub fn incoming(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter().filter(|r| r.direction.comes_in())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, direction: Direction, local: &str, remote: &str) -> Rule {
        Rule {
            pattern: pattern.into(),
            direction,
            qos: QoS::AtLeastOnce,
            local_prefix: local.into(),
            remote_prefix: remote.into(),
        }
    }

    #[test]
    fn prefixes_are_swapped_as_mosquitto_does() {
        let rules = Rules(vec![
            rule("sensors/#", Direction::Out, "", "site1/"),
            rule("cmd/#", Direction::In, "local/", "site1/"),
            rule("both/+", Direction::Both, "l/", "r/"),
        ]);
        assert_eq!(
            rules.outbound("sensors/t1").as_deref(),
            Some("site1/sensors/t1")
        );
        assert_eq!(rules.outbound("cmd/x"), None, "an in rule does not go out");
        assert_eq!(
            rules.inbound("site1/cmd/reboot").as_deref(),
            Some("local/cmd/reboot")
        );
        assert_eq!(rules.inbound("site1/sensors/t1"), None);
        assert_eq!(rules.outbound("l/both/a").as_deref(), Some("r/both/a"));
        assert_eq!(rules.inbound("r/both/a").as_deref(), Some("l/both/a"));
        assert_eq!(
            rules.outbound("both/a"),
            None,
            "the local prefix is part of the match"
        );
        let filters: Vec<String> = rules.outgoing().map(Rule::local_filter).collect();
        assert_eq!(filters, ["sensors/#", "l/both/+"]);
        let filters: Vec<String> = rules.incoming().map(Rule::remote_filter).collect();
        assert_eq!(filters, ["site1/cmd/#", "r/both/+"]);
    }
}
