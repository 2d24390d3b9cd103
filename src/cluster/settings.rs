//! The `[cluster]` table: what it says, its defaults, and the checks that make a
//! mistake an error at start rather than a node that silently never joins.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The cluster's port, for gossip (UDP) and links (TCP) alike.
pub const DEFAULT_PORT: u16 = 5370;

/// How a shared subscription with members on several nodes picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Every member in turn, wherever it is.
    RoundRobin,
    /// Members on this node first; another node's only when this one has none online.
    Local,
}

/// What a CONNECT gets when the node holding its session cannot be reached within
/// `takeover_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerUnreachable {
    /// The session rebuilt from its replicated record: its subscriptions, session
    /// present = 1 (what the owner still queued arrives when that node returns).
    Rebuild,
    /// A new session: session present = 0.
    New,
    /// CONNACK Server unavailable (0x88; 3 for MQTT 3.x).
    Refuse,
}

/// When `/status` says 503 because the node is cut off from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolatedStatus {
    /// While it sees fewer than half the nodes it knew, itself included (never with
    /// two nodes, which cannot tell a dead peer from a cut link).
    Minority,
    /// While it sees no other node.
    Alone,
    Never,
}

/// `[cluster]` as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    pub enabled: Option<bool>,
    pub bind: Option<String>,
    pub advertise: Option<String>,
    #[serde(default)]
    pub seeds: Vec<String>,
    pub dns: Option<String>,
    pub secret: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub max_queued_messages: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub route_hold: Option<u64>,
    pub shared_strategy: Option<SharedStrategy>,
    pub join_wait: Option<u64>,
    pub stop_wait: Option<u64>,
    pub takeover_timeout: Option<f64>,
    pub on_owner_unreachable: Option<OwnerUnreachable>,
    pub isolated_status: Option<IsolatedStatus>,
    pub lost_node_wills_after: Option<u64>,
}

/// A running cluster's settings, defaults applied and checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name: unique in the cluster.
    pub name: String,
    pub bind: SocketAddr,
    /// The address peers reach this node at (gossip and links).
    pub advertise: SocketAddr,
    /// Addresses (or `HOST:PORT` names, resolved again and again) of nodes to join.
    pub seeds: Vec<String>,
    /// A name whose every A/AAAA record is a node, resolved again and again.
    pub dns: Option<String>,
    /// Keys every datagram's MAC and every link's proof; empty only on loopback.
    pub secret: Vec<u8>,
    /// Mutual TLS on the links: certificate, key and the CA both ends are signed by.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// How long a node that went down keeps its routes here, and what waits for it.
    pub route_hold: Duration,
    pub shared_strategy: SharedStrategy,
    /// At start, how long to wait for the cluster's routes before serving MQTT.
    pub join_wait: Duration,
    /// At stop, how long `/status` says 503 before clients are closed, so that a
    /// balancer's health check stops sending new ones here first.
    pub stop_wait: Duration,
    /// How long a CONNECT waits for the node that holds its session.
    pub takeover_timeout: Duration,
    pub on_owner_unreachable: OwnerUnreachable,
    pub isolated_status: IsolatedStatus,
    /// How long a node is down before its clients' wills are published elsewhere
    /// (zero: never).
    pub lost_node_wills_after: Duration,
}

impl ClusterTable {
    /// Whether the table turns the cluster on: present, and not `enabled = false`.
    pub fn is_on(&self) -> bool {
        self.enabled != Some(false)
    }

    /// The settings, for node `name`, relative paths against `base`.
    pub fn settings(&self, name: &str, base: &Path) -> Result<ClusterSettings, String> {
        check_name(name)?;
        let bind = match &self.bind {
            Some(text) => resolve_one(text, "bind")?,
            None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
        };
        let advertise = match &self.advertise {
            Some(text) => resolve_one(text, "advertise")?,
            None if !bind.ip().is_unspecified() => bind,
            None => {
                return Err(
                    "[cluster] bind listens on every address: set advertise to the address \
                     peers reach this node at (HOST:PORT)"
                        .into(),
                );
            }
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(format!(
                "[cluster] advertise {advertise} is not an address a peer can reach"
            ));
        }
        // Seeds are names resolved again and again while the node runs: here only
        // their form is checked, and a name counts as a remote address, never loopback.
        let mut seeds_loopback = true;
        for seed in &self.seeds {
            let ip = seed_ip(seed).map_err(|e| format!("[cluster] seeds {seed:?}: {e}"))?;
            seeds_loopback &= ip.is_some_and(|ip| ip.is_loopback());
        }
        let secret = self.secret.clone().unwrap_or_default().into_bytes();
        let everything_loopback = bind.ip().is_loopback()
            && advertise.ip().is_loopback()
            && seeds_loopback
            && self.dns.is_none();
        if secret.is_empty() && !everything_loopback {
            return Err(
                "[cluster] secret is required unless every address (bind, advertise, seeds) \
                 is a loopback address: it authenticates every datagram and link"
                    .into(),
            );
        }
        if !secret.is_empty() && secret.len() < 16 {
            return Err("[cluster] secret must be at least 16 characters".into());
        }
        let tls = match (&self.cert, &self.key, &self.ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                Some((base.join(cert), base.join(key), base.join(ca)))
            }
            _ => {
                return Err(
                    "[cluster] cert, key and ca go together: mutual TLS needs all three".into(),
                );
            }
        };
        let max_queued_messages = self.max_queued_messages.unwrap_or(100_000);
        if max_queued_messages == 0 {
            return Err("[cluster] max_queued_messages must be at least 1".into());
        }
        let takeover_timeout = self.takeover_timeout.unwrap_or(5.0);
        if !(0.0..=60.0).contains(&takeover_timeout) {
            return Err(format!(
                "[cluster] takeover_timeout {takeover_timeout}: seconds from 0 to 60 (a client waits that long for its CONNACK)"
            ));
        }
        Ok(ClusterSettings {
            takeover_timeout: Duration::from_secs_f64(takeover_timeout),
            on_owner_unreachable: self
                .on_owner_unreachable
                .unwrap_or(OwnerUnreachable::Rebuild),
            isolated_status: self.isolated_status.unwrap_or(IsolatedStatus::Minority),
            lost_node_wills_after: Duration::from_secs(self.lost_node_wills_after.unwrap_or(60)),
            name: name.to_owned(),
            bind,
            advertise,
            seeds: self.seeds.clone(),
            dns: self.dns.clone(),
            secret,
            tls,
            max_queued_messages,
            max_queued_bytes: self.max_queued_bytes.unwrap_or(64 << 20),
            route_hold: Duration::from_secs(self.route_hold.unwrap_or(3600)),
            shared_strategy: self.shared_strategy.unwrap_or(SharedStrategy::RoundRobin),
            join_wait: Duration::from_secs(self.join_wait.unwrap_or(5)),
            stop_wait: Duration::from_secs(self.stop_wait.unwrap_or(5)),
        })
    }
}

/// Node names travel in gossip, links and client ids (`$cluster/out/NAME`).
fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "[node] name {name:?}: a cluster node's name is 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A seed's address if it is written as one; `None` for a host name, whose form
/// (letters, digits, '-', '.', an optional port) is checked without resolving it.
fn seed_ip(text: &str) -> Result<Option<IpAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr.ip()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Some(ip));
    }
    let host = match text.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>()
                .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
            host
        }
        None => text,
    };
    let host_name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if host_name {
        Ok(None)
    } else {
        Err("not an address or a host name (HOST[:PORT])".into())
    }
}

/// `HOST:PORT` (a name resolved now), the port defaulting to the cluster's.
fn resolve_one(text: &str, key: &str) -> Result<SocketAddr, String> {
    resolve(text)
        .map_err(|e| format!("[cluster] {key} {text:?}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("[cluster] {key} {text:?} resolves to no address"))
}

/// Every address of `HOST[:PORT]` (the cluster's port when none is given).
pub fn resolve(text: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, DEFAULT_PORT)]);
    }
    let with_port = if text
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        text.to_owned()
    } else {
        format!("{text}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| format!("cannot resolve: {e}"))
}

/// The host name, for a node without `[node] name` in a cluster.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> ClusterTable {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn loopback_needs_no_secret_and_everything_else_does() {
        let t = table("bind = \"127.0.0.2:5370\"\nseeds = [\"127.0.0.3:5370\"]\n");
        let s = t.settings("a", Path::new("/")).unwrap();
        assert_eq!(s.advertise, "127.0.0.2:5370".parse().unwrap());
        assert!(s.secret.is_empty());
        let t = table("bind = \"10.0.0.2:5370\"\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("secret")
        );
        // Listening beyond loopback, or a seed named rather than numbered, needs one.
        let t = table("bind = \"0.0.0.0:5370\"\nadvertise = \"127.0.0.2:5370\"\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("secret")
        );
        let t = table("bind = \"127.0.0.2:5370\"\nseeds = [\"localhost:5370\"]\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("secret")
        );
        let t = table("bind = \"127.0.0.2:5370\"\nseeds = [\"no such host!\"]\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("host name")
        );
        let t = table("bind = \"0.0.0.0:5370\"\nsecret = \"0123456789abcdef\"\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("advertise")
        );
    }

    #[test]
    fn names_and_partial_tls_are_refused() {
        let t = table("bind = \"127.0.0.2:5370\"\n");
        assert!(t.settings("a/b", Path::new("/")).is_err());
        assert!(t.settings("", Path::new("/")).is_err());
        let t = table("bind = \"127.0.0.2:5370\"\ncert = \"c.pem\"\n");
        assert!(
            t.settings("a", Path::new("/"))
                .unwrap_err()
                .contains("together")
        );
        assert!(!table("enabled = false").is_on());
        assert!(table("").is_on());
    }

    #[test]
    fn a_seed_without_a_port_gets_the_clusters() {
        assert_eq!(
            resolve("127.0.0.9").unwrap(),
            ["127.0.0.9:5370".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(resolve("localhost:1").unwrap()[0].port(), 1);
    }
}
