//! `[[bridge]]` tables: what the TOML says, and the checked settings a bridge runs with.
//! Defaults follow Mosquitto's bridge (persistent remote session, notifications,
//! `try_private`) so that its configuration translates line by line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::rules::{Direction, Rule, Rules};
use crate::protocol::QoS;
use crate::protocol::topic::{validate_filter, validate_name};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTable {
    pub name: String,
    /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT`, tried in order.
    pub addresses: Vec<String>,
    /// "v5" or "v311".
    pub protocol: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Option<u16>,
    /// Start a new remote session on every connect (default false: keep it).
    pub clean_start: Option<bool>,
    /// v5: the remote session's expiry in seconds (default: never).
    pub session_expiry: Option<u32>,
    /// v3.1.1: announce a bridge (protocol level | 0x80), as Mosquitto's `try_private`.
    pub try_private: Option<bool>,
    /// Keep a retained `1`/`0` state topic on the remote (Mosquitto's `notifications`).
    pub notifications: Option<bool>,
    pub notification_topic: Option<String>,
    /// The outbox: messages waiting for the remote, oldest dropped when full.
    pub max_queued_messages: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    /// Keep QoS 0 messages in the outbox while the link is down.
    pub queue_qos0: Option<bool>,
    /// Outbound QoS 1/2 in flight to a 3.1.1 remote (a v5 remote states its own).
    pub max_inflight: Option<u16>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    /// A cap on the bytes a second sent to the remote (metered uplinks).
    pub max_bytes_per_second: Option<u64>,
    pub tls: Option<TlsTable>,
    #[serde(default)]
    pub topic: Vec<TopicTable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsTable {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicTable {
    pub pattern: String,
    pub direction: Option<String>,
    pub qos: Option<u8>,
    #[serde(default)]
    pub local_prefix: String,
    #[serde(default)]
    pub remote_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// As written, for logs.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// PEM CA certificates; the system's bundle when `None`.
    pub ca: Option<PathBuf>,
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    pub server_name: Option<String>,
}

/// A checked `[[bridge]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSettings {
    pub name: String,
    pub remotes: Vec<Remote>,
    pub v5: bool,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: u16,
    pub clean_start: bool,
    pub session_expiry: u32,
    pub try_private: bool,
    pub notification_topic: Option<String>,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub queue_qos0: bool,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_bytes_per_second: Option<u64>,
    pub tls: BridgeTls,
    pub rules: Rules,
}

impl BridgeSettings {
    /// The name of the local session that holds this bridge's outbox.
    pub fn local_client_id(&self) -> String {
        crate::broker::session::outbox_client_id(&self.name)
    }
}

fn parse_address(text: &str) -> Result<Remote, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!(
            "address {text:?} must start with mqtt:// or mqtts://"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("address {text:?}: port {port:?} is not a number"))?;
            (host, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {text:?} has no host"));
    }
    Ok(Remote {
        url: text.to_owned(),
        host: host.to_owned(),
        port,
        tls,
    })
}

impl BridgeTable {
    /// Checks the table; `node` names the default client id, `base` resolves paths.
    pub fn settings(&self, node: &str, base: &Path) -> Result<BridgeSettings, String> {
        let name = &self.name;
        let at = |e: String| format!("[[bridge]] {name}: {e}");
        if name.is_empty() || name.contains(['/', '+', '#']) {
            return Err(format!(
                "[[bridge]] name {name:?} must be non-empty, without / + #"
            ));
        }
        if self.addresses.is_empty() {
            return Err(at("needs at least one address".into()));
        }
        let remotes = self
            .addresses
            .iter()
            .map(|a| parse_address(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let v5 = match self.protocol.as_deref().unwrap_or("v311") {
            "v5" | "mqttv5" | "5" => true,
            "v311" | "mqttv311" | "3.1.1" => false,
            other => return Err(at(format!("protocol {other:?} is not v5 or v311"))),
        };
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{node}.{name}"));
        if self.topic.is_empty() {
            return Err(at("needs at least one [[bridge.topic]]".into()));
        }
        let mut rules = Vec::new();
        for t in &self.topic {
            let direction = match t.direction.as_deref().unwrap_or("out") {
                "out" => Direction::Out,
                "in" => Direction::In,
                "both" => Direction::Both,
                other => return Err(at(format!("direction {other:?} is not out, in or both"))),
            };
            let qos = match t.qos.unwrap_or(0) {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                other => return Err(at(format!("qos {other} is not 0, 1 or 2"))),
            };
            let rule = Rule {
                pattern: t.pattern.clone(),
                direction,
                qos,
                local_prefix: t.local_prefix.clone(),
                remote_prefix: t.remote_prefix.clone(),
            };
            for filter in [rule.local_filter(), rule.remote_filter()] {
                validate_filter(&filter)
                    .map_err(|e| at(format!("topic {filter:?}: {}", e.describe())))?;
            }
            rules.push(rule);
        }
        let notification_topic = match self.notifications.unwrap_or(true) {
            false => None,
            true => Some(
                self.notification_topic
                    .clone()
                    .unwrap_or_else(|| format!("$SYS/broker/connection/{client_id}/state")),
            ),
        };
        if let Some(topic) = &notification_topic {
            validate_name(topic)
                .map_err(|e| at(format!("notification_topic {topic:?}: {}", e.describe())))?;
        }
        let tls = match &self.tls {
            None => BridgeTls {
                ca: None,
                cert_and_key: None,
                server_name: None,
            },
            Some(t) => BridgeTls {
                ca: t.ca.as_ref().map(|p| base.join(p)),
                cert_and_key: match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
                    (None, None) => None,
                    _ => return Err(at("tls needs both cert and key, or neither".into())),
                },
                server_name: t.server_name.clone(),
            },
        };
        let reconnect_min = Duration::from_millis(self.reconnect_min_ms.unwrap_or(1000).max(10));
        let reconnect_max = Duration::from_millis(self.reconnect_max_ms.unwrap_or(60_000));
        if reconnect_max < reconnect_min {
            return Err(at("reconnect_max_ms is below reconnect_min_ms".into()));
        }
        Ok(BridgeSettings {
            name: name.clone(),
            remotes,
            v5,
            client_id,
            username: self.username.clone(),
            password: self.password.clone(),
            keep_alive: self.keep_alive.unwrap_or(60),
            clean_start: self.clean_start.unwrap_or(false),
            session_expiry: self.session_expiry.unwrap_or(u32::MAX),
            try_private: self.try_private.unwrap_or(true),
            notification_topic,
            max_queued_messages: self.max_queued_messages.unwrap_or(100_000).max(1),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(64 << 20).max(1),
            queue_qos0: self.queue_qos0.unwrap_or(false),
            max_inflight: self.max_inflight.unwrap_or(1000).max(1),
            reconnect_min,
            reconnect_max,
            max_bytes_per_second: self.max_bytes_per_second.filter(|&b| b > 0),
            tls,
            rules: Rules(rules),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BridgeSettings, String> {
        let table: BridgeTable = toml::from_str(text).map_err(|e| e.to_string())?;
        table.settings("edge1", Path::new("/etc/tern"))
    }

    #[test]
    fn the_issue_example_parses_with_mosquitto_defaults() {
        let b = parse(
            r#"
            name = "central"
            addresses = ["mqtts://central-lb.example:8883", "mqtt://10.0.0.2"]
            protocol = "v5"
            client_id = "edge-site1"
            tls = { ca = "central-ca.pem" }
            [[topic]]
            pattern = "sensors/#"
            direction = "out"
            qos = 1
            remote_prefix = "site1/"
            "#,
        )
        .unwrap();
        assert!(b.v5 && !b.clean_start && b.try_private);
        assert_eq!(b.remotes[0].host, "central-lb.example");
        assert!(b.remotes[0].tls && b.remotes[0].port == 8883);
        assert_eq!((b.remotes[1].port, b.remotes[1].tls), (1883, false));
        assert_eq!(
            b.tls.ca.as_deref(),
            Some(Path::new("/etc/tern/central-ca.pem"))
        );
        assert_eq!(
            b.notification_topic.as_deref(),
            Some("$SYS/broker/connection/edge-site1/state")
        );
        assert_eq!(b.local_client_id(), "$bridge/central");
    }

    #[test]
    fn mistakes_are_named() {
        let base = "name = \"c\"\naddresses = [\"mqtt://h:1883\"]\n";
        let topic = "[[topic]]\npattern = \"a/#\"\n";
        let cases = [
            (base.to_string(), "at least one [[bridge.topic]]"),
            (
                format!("name = \"c\"\naddresses = []\n{topic}"),
                "at least one address",
            ),
            (
                format!("name = \"c\"\naddresses = [\"tcp://h\"]\n{topic}"),
                "mqtt://",
            ),
            (
                format!("{base}protocol = \"v4\"\n{topic}"),
                "not v5 or v311",
            ),
            (
                format!("{base}[[topic]]\npattern = \"a/#/b\"\n"),
                "topic \"a/#/b\"",
            ),
            (
                format!("{base}[[topic]]\npattern = \"a\"\nqos = 3\n"),
                "qos 3",
            ),
            (
                format!("{base}[[topic]]\npattern = \"a\"\ndirection = \"up\"\n"),
                "direction",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
