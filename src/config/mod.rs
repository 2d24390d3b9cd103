//! The TOML configuration: every key has a built-in default, so no file is needed;
//! a key that is unknown or of the wrong type is an error naming the file, line and key.
//!
//! The keys are documented with their defaults in `docs/config.md`.

pub mod board;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::DeTable;

use crate::auth::{AuthPolicy, AuthSettings};
use crate::bridge::settings::{BridgeSettings, BridgeTable};
use crate::broker::Settings;
use crate::broker::session::NEVER_EXPIRES;
use crate::cluster::{ClusterSettings, ClusterTable, SharedStrategy};
use crate::store::{Durability, OnCorrupt, StoreConfig};
use crate::transport::proxy::{Cidr, DEFAULT_TRUSTED};
use crate::transport::tls::TlsSettings;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: Node,
    pub listeners: BTreeMap<String, ListenerTable>,
    pub limits: Limits,
    pub auth: Auth,
    pub storage: Storage,
    /// `[[bridge]]` tables.
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeTable>,
    pub api: Api,
    pub dashboard: Dashboard,
    /// `[cluster]`: present (and not `enabled = false`) turns clustering on.
    pub cluster: Option<ClusterTable>,
    /// The directory relative paths resolve against: the config file's, or the
    /// working directory when there is no file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Node {
    pub name: String,
    pub data_dir: PathBuf,
    /// Executor threads; 0 means one per core.
    pub threads: usize,
    /// A board profile (`boards/NAME.toml`) whose runtime defaults apply.
    pub board: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTable {
    #[serde(rename = "type")]
    pub kind: Option<ListenerKind>,
    #[serde(default, deserialize_with = "socket_addr")]
    pub bind: Option<SocketAddr>,
    pub enabled: Option<bool>,
    pub proxy_protocol: Option<bool>,
    /// The addresses (CIDR ranges) a PROXY header is accepted from.
    pub proxy_protocol_trusted: Option<Vec<String>>,
    /// The verified client certificate's common name is the user name.
    pub use_identity_as_username: Option<bool>,
    /// TLS: PEM certificate chain, private key, client-certificate CA.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    /// WebSocket: the HTTP path of the upgrade (default `/mqtt`).
    pub path: Option<String>,
    /// Connections open at once on this listener (the global `[limits]` one still applies).
    pub max_connections: Option<usize>,
    /// Override `[auth]` for this listener.
    pub allow_anonymous: Option<bool>,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_keepalive: u16,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// Milliseconds publishers are held back for a subscriber that does not drain.
    pub stall_timeout_ms: u64,
    /// Connections open at once, all listeners together (per listener: `[listeners.NAME]`).
    pub max_connections: usize,
    /// New connections a second from one source address; 0 means no limit.
    pub max_connection_rate: u32,
    pub max_client_id_len: usize,
    pub max_topic_len: usize,
    pub max_topic_levels: usize,
    pub max_subscriptions: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub allow_anonymous: bool,
    /// A password file as `mosquitto_passwd` writes it.
    pub password_file: Option<PathBuf>,
    /// An ACL file in Mosquitto's `acl_file` syntax.
    pub acl_file: Option<PathBuf>,
}

/// The management HTTP API (EMQX v4 shape), Prometheus metrics and `$SYS`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    pub enabled: bool,
    #[serde(deserialize_with = "socket_addr_required")]
    pub bind: SocketAddr,
    /// HTTP Basic credentials; without a secret one is generated into
    /// `<data_dir>/api_secret` at first start.
    pub app_id: String,
    pub app_secret: Option<String>,
    /// `/metrics` needs the credentials too.
    pub metrics_auth: bool,
    /// Seconds between `$SYS` updates; 0 turns `$SYS` off.
    pub sys_interval: u64,
    /// HTTPS: PEM certificate chain and key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for Api {
    fn default() -> Api {
        Api {
            enabled: true,
            bind: "0.0.0.0:8081".parse().expect("a valid address"),
            app_id: "admin".into(),
            app_secret: None,
            metrics_auth: false,
            sys_interval: 10,
            cert: None,
            key: None,
        }
    }
}

/// The dashboard page (it also serves the API, so the page stays same-origin).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dashboard {
    pub enabled: bool,
    #[serde(deserialize_with = "socket_addr_required")]
    pub bind: SocketAddr,
    /// HTTPS: PEM certificate chain and key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Topics whose last message the topic tree keeps, at most (0: none).
    pub max_topics: usize,
}

impl Default for Dashboard {
    fn default() -> Dashboard {
        Dashboard {
            enabled: true,
            bind: "0.0.0.0:18083".parse().expect("a valid address"),
            cert: None,
            key: None,
            max_topics: 2000,
        }
    }
}

/// What is kept on disk, how durably, and the bounds on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub durability: Durability,
    /// The SQLite file, relative to `[node] data_dir`.
    pub file: PathBuf,
    /// Milliseconds a commit batch stays open; by default 5 (strict) or 1000 (batched).
    pub commit_interval_ms: Option<u64>,
    pub commit_batch_ops: usize,
    pub max_store_bytes: u64,
    /// SQLite's page cache for the store's connections, in KiB.
    pub cache_kib: u64,
    /// Seconds; caps the Session Expiry Interval v5 clients ask for.
    pub max_session_expiry: Option<u32>,
    /// Seconds a v3 persistent session lives after its client left; none: for ever.
    pub persistent_client_expiration: Option<u32>,
    pub queue_qos0: bool,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    pub on_corrupt_store: OnCorrupt,
}

impl Default for Storage {
    fn default() -> Storage {
        let s = Settings::default();
        Storage {
            durability: Durability::Strict,
            file: "tern.db".into(),
            commit_interval_ms: None,
            commit_batch_ops: 10_000,
            max_store_bytes: 1 << 30,
            cache_kib: 2048,
            max_session_expiry: None,
            persistent_client_expiration: None,
            queue_qos0: false,
            max_retained_messages: s.max_retained_messages,
            max_retained_bytes: s.max_retained_bytes,
            on_corrupt_store: OnCorrupt::Quarantine,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node: Node::default(),
            listeners: BTreeMap::new(),
            limits: Limits::default(),
            auth: Auth::default(),
            storage: Storage::default(),
            bridges: Vec::new(),
            api: Api::default(),
            dashboard: Dashboard::default(),
            cluster: None,
            base_dir: PathBuf::from("."),
        }
    }
}

impl Default for Node {
    fn default() -> Node {
        Node {
            name: "tern1".into(),
            data_dir: "data".into(),
            board: None,
            threads: 0,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        let s = Settings::default();
        Limits {
            max_keepalive: s.max_keepalive,
            receive_maximum: s.receive_maximum,
            max_inflight: s.max_inflight,
            max_packet_size: s.max_packet_size,
            topic_alias_maximum: s.topic_alias_maximum,
            max_queued_messages: s.max_queued_messages,
            max_queued_bytes: s.max_queued_bytes,
            connect_timeout: 10,
            stall_timeout_ms: s.stall_timeout.as_millis() as u64,
            max_connections: 100_000,
            max_connection_rate: 0,
            max_client_id_len: s.max_client_id_len,
            max_topic_len: s.max_topic_len,
            max_topic_levels: s.max_topic_levels,
            max_subscriptions: s.max_subscriptions,
        }
    }
}

impl Default for Auth {
    fn default() -> Auth {
        Auth {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
        }
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_bind(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn socket_addr_required<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_bind(&text).map_err(serde::de::Error::custom)
}

/// `HOST:PORT`, `[v6]:PORT`; a host name is resolved once, at start.
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("bind address {text:?} resolves to nothing")),
        Err(_) => Err(format!(
            "bind address {text:?} is not HOST:PORT (use [::]:1883 for IPv6)"
        )),
    }
}

/// A listener after defaults were applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// Expect a PROXY protocol header, from these ranges only; `None`: expect none.
    pub proxy_trusted: Option<Vec<Cidr>>,
    pub identity_as_username: bool,
    pub tls: Option<TlsSettings>,
    /// WebSocket listeners: the upgrade's HTTP path.
    pub ws_path: Option<String>,
    pub auth: AuthSettings,
    pub max_connections: Option<usize>,
}

/// A configuration problem, naming the file (and, from the TOML parser, line and key).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_board(path, None)
    }

    /// Loads `path` with a board profile's defaults under it: `board`, or the file's
    /// `[node] board`.
    pub fn load_with_board(path: &Path, board: Option<&str>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let mut config = Config::parse_with_board(&text, board)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        config.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let listeners = config
            .listeners()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        for bridge in config
            .bridges()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
        {
            crate::bridge::check(&bridge)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        }
        // A password, ACL or certificate file that does not load is a configuration
        // error too.
        for listener in listeners {
            if let Some(tls) = listener.tls.clone() {
                crate::transport::tls::Tls::load(tls).map_err(|e| {
                    ConfigError(format!(
                        "{} (listener {}): {e}",
                        path.display(),
                        listener.name
                    ))
                })?;
            }
            AuthPolicy::load(listener.auth).map_err(|e| {
                ConfigError(format!(
                    "{} (listener {}): {e}",
                    path.display(),
                    listener.name
                ))
            })?;
        }
        Ok(config)
    }

    /// The HTTPS settings of `[api]` or `[dashboard]` (`name`), if it has a certificate.
    pub fn http_tls(&self, name: &str) -> Result<Option<TlsSettings>, String> {
        let (cert, key) = match name {
            "api" => (&self.api.cert, &self.api.key),
            _ => (&self.dashboard.cert, &self.dashboard.key),
        };
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsSettings {
                cert: self.base_dir.join(cert),
                key: self.base_dir.join(key),
                ca: None,
                require_client_cert: false,
            })),
            _ => Err(format!(
                "[{name}] needs both cert and key for HTTPS, or neither"
            )),
        }
    }

    /// The checked `[[bridge]]` tables.
    pub fn bridges(&self) -> Result<Vec<BridgeSettings>, String> {
        let mut out: Vec<BridgeSettings> = Vec::new();
        for table in &self.bridges {
            let bridge = table.settings(&self.node.name, &self.base_dir)?;
            if out.iter().any(|b| b.name == bridge.name) {
                return Err(format!("two [[bridge]] tables are named {:?}", bridge.name));
            }
            out.push(bridge);
        }
        Ok(out)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse_with_board(text, None)
    }

    /// Parses `text`; with a board (`board`, or the text's `[node] board`), that
    /// profile's runtime defaults fill in every key the text does not set.
    pub fn parse_with_board(text: &str, board: Option<&str>) -> Result<Config, String> {
        // Parsed alone first, so that a mistake in the file is named by its line.
        // Every parse goes through the one deserializer (toml's spanned document, not
        // `toml::Value`): each typed table's code is generated once, not twice.
        let parsed = DeTable::parse(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let named =
            board::table_of(parsed.get_ref(), "node").is_some_and(|n| n.contains_key("name"));
        let typed = |table: Spanned<DeTable<'_>>, input: Option<&str>| {
            Config::deserialize(toml::de::Deserializer::from(table)).map_err(|mut e| {
                e.set_input(input);
                e.to_string().trim_end().to_owned()
            })
        };
        let mut config = typed(parsed.clone(), Some(text))?;
        if let Some(name) = board.map(str::to_owned).or(config.node.board.clone()) {
            let mut table = parsed;
            board::apply(table.get_mut(), &name)?;
            config = typed(table, None).map_err(|e| format!("board {name}: {e}"))?;
            config.node.board = Some(name);
        }
        if config.cluster_on() && !named {
            // A cluster needs unique names: the host's, unless the file gives one.
            config.node.name = crate::cluster::settings::host_name().ok_or(
                "[cluster] is on and [node] name is not set, and the host name cannot be read: set [node] name",
            )?;
        }
        config.validate()?;
        config.bridges()?;
        config.cluster_settings()?;
        config.http_tls("api")?;
        config.http_tls("dashboard")?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if l.receive_maximum == 0 {
            return Err("[limits] receive_maximum must be at least 1".into());
        }
        if l.max_inflight == 0 {
            return Err("[limits] max_inflight must be at least 1".into());
        }
        if !(16..=268_435_455 + 5).contains(&l.max_packet_size) {
            return Err("[limits] max_packet_size must be between 16 and 268435460".into());
        }
        if l.max_queued_messages == 0 {
            return Err("[limits] max_queued_messages must be at least 1".into());
        }
        if self.node.name.is_empty() {
            return Err("[node] name must not be empty".into());
        }
        if self.storage.commit_batch_ops == 0 {
            return Err("[storage] commit_batch_ops must be at least 1".into());
        }
        if self
            .storage
            .commit_interval_ms
            .is_some_and(|ms| ms > 60_000)
        {
            return Err("[storage] commit_interval_ms must be at most 60000".into());
        }
        if !(64..=1 << 20).contains(&self.storage.cache_kib) {
            return Err("[storage] cache_kib must be between 64 and 1048576".into());
        }
        Ok(())
    }

    /// The enabled listeners: built-in ones with their defaults, then further
    /// `[listeners.NAME]` tables. Fails on listeners this build cannot serve yet and on
    /// two listeners sharing one address.
    pub fn listeners(&self) -> Result<Vec<Listener>, String> {
        let builtin = |name: &str| match name {
            "tcp" => Some((ListenerKind::Tcp, "0.0.0.0:1883")),
            "tls" => Some((ListenerKind::Tls, "0.0.0.0:8883")),
            "ws" => Some((ListenerKind::Ws, "0.0.0.0:8083")),
            "wss" => Some((ListenerKind::Wss, "0.0.0.0:8084")),
            _ => None,
        };
        let mut tables = self.listeners.clone();
        tables.entry("tcp".into()).or_default();
        tables.entry("ws".into()).or_default();
        let mut out: Vec<Listener> = Vec::new();
        for (name, table) in &tables {
            let (kind, default_bind) = match (builtin(name), table.kind) {
                (Some((kind, bind)), None) => (kind, Some(bind)),
                (Some((kind, bind)), Some(given)) if given == kind => (kind, Some(bind)),
                (Some((kind, _)), Some(given)) => {
                    return Err(format!(
                        "[listeners.{name}] is the built-in {kind} listener, not type {given:?}"
                    ));
                }
                (None, Some(kind)) => (kind, None),
                (None, None) => {
                    return Err(format!(
                        "[listeners.{name}] needs a type (tcp, tls, ws or wss)"
                    ));
                }
            };
            if table.enabled == Some(false) {
                continue;
            }
            // The built-in tls/ws/wss listeners are off until their table says more
            // than nothing (a certificate, an address, a path, `enabled = true`).
            let said_nothing = table.enabled.is_none()
                && table.bind.is_none()
                && table.cert.is_none()
                && table.path.is_none();
            // tcp and ws are on by default; tls and wss need a certificate first.
            let on_by_default = matches!(kind, ListenerKind::Tcp | ListenerKind::Ws);
            if !on_by_default && builtin(name).is_some() && said_nothing {
                continue;
            }
            let resolve = |p: &PathBuf| self.base_dir.join(p);
            let encrypted = matches!(kind, ListenerKind::Tls | ListenerKind::Wss);
            let tls = if encrypted {
                let (Some(cert), Some(key)) = (&table.cert, &table.key) else {
                    return Err(format!(
                        "[listeners.{name}] a {kind} listener needs cert and key (PEM files)"
                    ));
                };
                Some(TlsSettings {
                    cert: resolve(cert),
                    key: resolve(key),
                    ca: table.ca.as_ref().map(resolve),
                    require_client_cert: table.require_client_cert == Some(true),
                })
            } else {
                if table.cert.is_some() || table.key.is_some() || table.ca.is_some() {
                    return Err(format!(
                        "[listeners.{name}] cert, key and ca belong to a tls or wss listener, not {kind}"
                    ));
                }
                None
            };
            let ws_path = match kind {
                ListenerKind::Ws | ListenerKind::Wss => {
                    let path = table.path.clone().unwrap_or_else(|| "/mqtt".into());
                    if !path.starts_with('/') {
                        return Err(format!(
                            "[listeners.{name}] path must start with / (it is {path:?})"
                        ));
                    }
                    Some(path)
                }
                _ if table.path.is_some() => {
                    return Err(format!(
                        "[listeners.{name}] path belongs to a ws or wss listener, not {kind}"
                    ));
                }
                _ => None,
            };
            let proxy_trusted = match table.proxy_protocol {
                Some(true) => {
                    let given = table.proxy_protocol_trusted.clone();
                    let ranges: Vec<String> = given
                        .unwrap_or_else(|| DEFAULT_TRUSTED.iter().map(|r| r.to_string()).collect());
                    let parsed = ranges
                        .iter()
                        .map(|r| Cidr::parse(r))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("[listeners.{name}] proxy_protocol_trusted: {e}"))?;
                    Some(parsed)
                }
                _ if table.proxy_protocol_trusted.is_some() => {
                    return Err(format!(
                        "[listeners.{name}] proxy_protocol_trusted is set but proxy_protocol is not true"
                    ));
                }
                _ => None,
            };
            let identity_as_username = table.use_identity_as_username == Some(true);
            let verifies_certificates = table.ca.is_some() && encrypted;
            if identity_as_username && proxy_trusted.is_none() && !verifies_certificates {
                return Err(format!(
                    "[listeners.{name}] use_identity_as_username needs client certificates: a tls \
                     or wss listener with ca, or proxy_protocol = true behind a balancer that sends \
                     their name (HAProxy's send-proxy-v2-ssl-cn)"
                ));
            }
            let bind = match (table.bind, default_bind) {
                (Some(bind), _) => bind,
                (None, Some(default)) => default.parse().expect("built-in addresses parse"),
                (None, None) => {
                    return Err(format!("[listeners.{name}] needs bind = \"HOST:PORT\""));
                }
            };
            if let Some(other) = out.iter().find(|l| l.bind == bind && bind.port() != 0) {
                return Err(format!(
                    "[listeners.{name}] and [listeners.{}] both bind {bind}",
                    other.name
                ));
            }
            let auth = AuthSettings {
                allow_anonymous: table.allow_anonymous.unwrap_or(self.auth.allow_anonymous),
                password_file: table
                    .password_file
                    .as_ref()
                    .or(self.auth.password_file.as_ref())
                    .map(resolve),
                acl_file: table
                    .acl_file
                    .as_ref()
                    .or(self.auth.acl_file.as_ref())
                    .map(resolve),
            };
            out.push(Listener {
                name: name.clone(),
                kind,
                bind,
                proxy_trusted,
                identity_as_username,
                tls,
                ws_path,
                auth,
                max_connections: table.max_connections,
            });
        }
        Ok(out)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base_dir.join(&self.node.data_dir)
    }

    /// Where and how to store; `None` for `durability = "memory"`.
    pub fn store_config(&self) -> Option<StoreConfig> {
        let s = &self.storage;
        let default_interval = match s.durability {
            Durability::Memory => return None,
            Durability::Strict => 5,
            Durability::Batched => 1000,
        };
        Some(StoreConfig {
            path: self.data_dir().join(&s.file),
            durability: s.durability,
            commit_interval: Duration::from_millis(
                s.commit_interval_ms.unwrap_or(default_interval),
            ),
            commit_batch_ops: s.commit_batch_ops,
            max_store_bytes: s.max_store_bytes,
            cache_kib: s.cache_kib,
            on_corrupt: s.on_corrupt_store,
        })
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.connect_timeout.max(1))
    }

    pub fn cluster_on(&self) -> bool {
        self.cluster.as_ref().is_some_and(ClusterTable::is_on)
    }

    /// The cluster's settings when `[cluster]` turns it on.
    pub fn cluster_settings(&self) -> Result<Option<ClusterSettings>, String> {
        match &self.cluster {
            Some(table) if table.is_on() => {
                table.settings(&self.node.name, &self.base_dir).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn broker_settings(&self) -> Settings {
        let l = &self.limits;
        Settings {
            node_name: self.node.name.clone(),
            max_keepalive: l.max_keepalive,
            receive_maximum: l.receive_maximum,
            max_inflight: l.max_inflight,
            max_packet_size: l.max_packet_size,
            topic_alias_maximum: l.topic_alias_maximum,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            stall_timeout: Duration::from_millis(l.stall_timeout_ms),
            max_client_id_len: l.max_client_id_len,
            max_topic_len: l.max_topic_len,
            max_topic_levels: l.max_topic_levels,
            max_subscriptions: l.max_subscriptions,
            max_session_expiry: self.storage.max_session_expiry.unwrap_or(NEVER_EXPIRES),
            persistent_client_expiration: self
                .storage
                .persistent_client_expiration
                .unwrap_or(NEVER_EXPIRES),
            queue_qos0_offline: self.storage.queue_qos0,
            max_retained_messages: self.storage.max_retained_messages,
            max_retained_bytes: self.storage.max_retained_bytes,
            track_routes: self.cluster_on(),
            shared_prefer_local: self
                .cluster
                .as_ref()
                .is_some_and(|c| c.is_on() && c.shared_strategy == Some(SharedStrategy::Local)),
            recent_topics: if self.dashboard.enabled {
                self.dashboard.max_topics
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_tcp_on_1883_and_websocket_on_8083() {
        let c = Config::parse("").unwrap();
        let l = c.listeners().unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].bind, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(l[1].bind, "0.0.0.0:8083".parse().unwrap());
        assert_eq!(l[1].ws_path.as_deref(), Some("/mqtt"));
        assert_eq!(c.node.name, "tern1");
    }

    #[test]
    fn unknown_keys_name_line_and_key() {
        let err = Config::parse("[node]\nname = \"a\"\nnmae = \"b\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn wrong_types_name_line_and_key() {
        let err = Config::parse("[limits]\nreceive_maximum = \"lots\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("receive_maximum"), "{err}");
    }

    #[test]
    fn bad_bind_is_refused_with_its_line() {
        let err = Config::parse("[listeners.tcp]\nbind = \"nonsense\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn extra_listeners_need_a_type_and_distinct_addresses() {
        let c = Config::parse("[listeners.more]\nbind = \"127.0.0.1:1884\"\n").unwrap();
        assert!(c.listeners().unwrap_err().contains("needs a type"));
        let c =
            Config::parse("[listeners.more]\ntype = \"tcp\"\nbind = \"0.0.0.0:1883\"\n").unwrap();
        let err = c.listeners().unwrap_err();
        assert!(err.contains("more") && err.contains("tcp"), "{err}");
        let c = Config::parse("[listeners.more]\ntype = \"tcp\"\nbind = \"[::1]:1884\"\n").unwrap();
        assert_eq!(c.listeners().unwrap().len(), 3, "tcp, ws and more");
    }

    #[test]
    fn disabled_listener_is_left_out() {
        let c =
            Config::parse("[listeners.tcp]\nenabled = false\n[listeners.ws]\nenabled = false\n")
                .unwrap();
        assert!(c.listeners().unwrap().is_empty());
    }

    #[test]
    fn websocket_listeners_have_a_path_and_wss_needs_a_certificate() {
        let c = Config::parse("[listeners.ws]\nenabled = true\n").unwrap();
        let ws = c.listeners().unwrap().into_iter().find(|l| l.name == "ws");
        let ws = ws.expect("ws listener");
        assert_eq!(ws.ws_path.as_deref(), Some("/mqtt"));
        assert_eq!(ws.bind, "0.0.0.0:8083".parse().unwrap());
        let c = Config::parse("[listeners.ws]\npath = \"mqtt\"\n").unwrap();
        assert!(c.listeners().unwrap_err().contains("must start with /"));
        let c = Config::parse("[listeners.wss]\nenabled = true\n").unwrap();
        assert!(c.listeners().unwrap_err().contains("needs cert and key"));
        let c = Config::parse("[listeners.tcp]\npath = \"/mqtt\"\n").unwrap();
        assert!(
            c.listeners()
                .unwrap_err()
                .contains("belongs to a ws or wss")
        );
    }
}
