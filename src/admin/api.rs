//! The management API in EMQX v4's shape, so operators' existing scripts work against
//! Tern unchanged: base `/api/v4`, HTTP Basic with an app id and secret, the envelope
//! `{"code":0,"data":...}` (lists add `meta` and take `_page`/`_limit`), EMQX's field
//! names and result codes. Also `/status` for load balancers and `/metrics` for
//! Prometheus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::history::{History, Sample};
use super::http::{Request, Response};
use super::login::LoginGuard;
use super::{prometheus, topics};
use crate::bridge::BridgeStatus;
use crate::broker::session::SessionKind;
use crate::broker::{Broker, ClientView, MAX_TAPS, SubscribeError, TapRefused};
use crate::cluster::Cluster;
use crate::message::Message;
use crate::protocol::topic::validate_name;
use crate::protocol::{ProtocolVersion, QoS};

/// EMQX v4 result codes.
const WRONG_CREDENTIALS: u32 = 103;
const MISSING_PARAMETER: u32 = 107;
const BAD_PARAMETER: u32 = 108;
const BAD_JSON: u32 = 109;
const CLIENT_OFFLINE: u32 = 112;
const BAD_TOPIC: u32 = 115;

static CREDENTIAL_FAILURES: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// EMQX's default page size.
const DEFAULT_LIMIT: usize = 10_000;

/// A listener as `/api/v4/listeners` shows it.
pub struct ListenerView {
    pub name: String,
    pub protocol: String,
    pub bind: String,
    pub max_connections: Option<usize>,
    /// Whether it takes a PROXY header, and terminates TLS itself.
    pub proxy_protocol: bool,
    pub tls: bool,
}

pub struct Admin {
    /// Set once the store has loaded; until then every answer is 503.
    pub broker: OnceLock<Arc<Broker>>,
    pub listeners: Vec<ListenerView>,
    pub app_id: String,
    /// Set with the broker: it may be generated into the data directory, which the
    /// store checks first.
    pub app_secret: OnceLock<String>,
    pub metrics_auth: bool,
    pub started: Instant,
    /// `/status` says 200 only while this is set: from the listeners' start to shutdown.
    pub serving: AtomicBool,
    /// The bridges' states, set once they have started.
    pub bridges: OnceLock<Vec<Arc<BridgeStatus>>>,
    /// The cluster, when this node is in one.
    pub cluster: OnceLock<Arc<Cluster>>,
    /// The dashboard's charts: the last hour, sampled every 10 s.
    pub history: History,
    pub logins: LoginGuard,
}

fn ok(data: Value) -> Response {
    Response::json(200, &json!({"code": 0, "data": data}))
}

fn error(status: u16, code: u32, message: impl Into<String>) -> Response {
    Response::json(status, &json!({"code": code, "message": message.into()}))
}

/// A page of `items` as `_page` and `_limit` ask (positive numbers), with EMQX's
/// `meta`.
fn page(req: &Request, items: Vec<Value>) -> Response {
    let number = |name: &str, default: usize| match req.query(name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            error(
                400,
                BAD_PARAMETER,
                format!("{name}={v:?}: expected a number from 1"),
            )
        }),
    };
    let (page, limit) = match (number("_page", 1), number("_limit", DEFAULT_LIMIT)) {
        (Ok(page), Ok(limit)) => (page, limit),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let count = items.len();
    let start = (page - 1).saturating_mul(limit).min(count);
    let end = start.saturating_add(limit).min(count);
    let data: Vec<Value> = items[start..end].to_vec();
    Response::json(
        200,
        &json!({"code": 0, "data": data,
                "meta": {"page": page, "limit": limit, "count": count, "hasnext": end < count}}),
    )
}

/// Whether `text` holds `part`, ASCII letters in either case.
fn contains_ignoring_case(text: &str, part: &str) -> bool {
    part.is_empty()
        || text
            .as_bytes()
            .windows(part.len())
            .any(|w| w.eq_ignore_ascii_case(part.as_bytes()))
}

/// The client fields a list may be sorted by.
const CLIENT_SORTS: &[&str] = &[
    "clientid",
    "username",
    "ip_address",
    "connected_at",
    "keepalive",
    "mqueue_len",
    "inflight",
    "recv_msg",
    "send_msg",
];

/// `YYYY-MM-DD HH:MM:SS` in UTC, as EMQX v4 writes times.
pub fn datetime(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (year, month, day, hour, minute, second) = crate::civil::utc(secs);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
}

/// EMQX's uptime wording: `2 hours, 3 minutes, 4 seconds`.
pub fn uptime(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "days"),
        (secs % 86_400 / 3600, "hours"),
        (secs % 3600 / 60, "minutes"),
        (secs % 60, "seconds"),
    ];
    let words: Vec<String> = parts
        .iter()
        .skip_while(|(n, unit)| *n == 0 && *unit != "seconds")
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    words.join(", ")
}

fn proto_ver(v: ProtocolVersion) -> u8 {
    match v {
        ProtocolVersion::V31 => 3,
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    }
}

impl Admin {
    fn broker(&self) -> &Arc<Broker> {
        self.broker
            .get()
            .expect("requests are answered 503 until the broker is set")
    }

    fn node(&self) -> &str {
        &self.broker().settings.node_name
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(given) = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
        else {
            return false;
        };
        let Some(secret) = self.app_secret.get() else {
            return false;
        };
        let expected = format!("{}:{}", self.app_id, secret);
        given.ct_eq(expected.as_bytes()).into()
    }

    /// Answers one request; `dashboard`: this port also serves the dashboard's page.
    pub fn handle(&self, req: Request, dashboard: bool) -> Response {
        let path = req.path.trim_end_matches('/').to_owned();
        if self.broker.get().is_none() {
            // The store is still opening: a balancer must not send clients here yet.
            return Response::new(503, "text/plain", "tern is starting\n");
        }
        match (req.method.as_str(), path.as_str()) {
            ("GET", "/status") => return self.status(),
            ("GET", "/metrics") if !self.metrics_auth => return self.prometheus(),
            _ => {}
        }
        if dashboard && req.method == "GET" {
            if let Some(page) = super::dashboard::page(&path) {
                return page;
            }
        }
        let now = Instant::now();
        if let Err(wait) = self.logins.check(req.peer.ip(), now) {
            let mut r = error(
                429,
                WRONG_CREDENTIALS,
                "too many failed logins from this address: wait before trying again",
            );
            r.headers
                .push(("Retry-After", whole_seconds_up(wait).to_string()));
            return r;
        }
        if !self.authorized(&req) {
            // Only a wrong password is a guess; a request without one (a scraper, a
            // browser's first try) is told 401 and not counted against its address.
            let wait = match req.header("authorization") {
                Some(_) => self.logins.failed(req.peer.ip(), now),
                None => Duration::ZERO,
            };
            // A password guesser must not fill the SD card: ten lines a minute, then a count.
            if let Some(suppressed) = CREDENTIAL_FAILURES.check(now) {
                let slowed = if wait.is_zero() {
                    String::new()
                } else {
                    format!(", answered after {wait:?}")
                };
                log::warn!(
                    "management API: {} {} from {} without valid credentials{slowed}{}",
                    req.method,
                    req.path,
                    req.peer,
                    crate::throttle::left_out(suppressed)
                );
            }
            let mut r = error(401, WRONG_CREDENTIALS, "Username or password error");
            if req.header("x-requested-with").is_none() {
                r.headers
                    .push(("WWW-Authenticate", "Basic realm=\"tern\"".into()));
            }
            r.delay = Some(wait).filter(|w| !w.is_zero());
            return r;
        }
        if path == "/metrics" {
            return self.prometheus();
        }
        let Some(rest) = path.strip_prefix("/api/v4") else {
            return error(
                404,
                BAD_PARAMETER,
                format!("no such endpoint: {}", req.path),
            );
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["brokers"] | ["brokers", _]) => ok(json!([self.broker_info()])),
            ("GET", ["nodes"]) => ok(json!(self.nodes())),
            ("GET", ["nodes", name]) => match self.nodes().into_iter().find(|n| n["node"] == *name)
            {
                Some(node) => ok(node),
                None => error(404, BAD_PARAMETER, format!("no node {name}")),
            },
            ("GET", ["cluster"]) => ok(self.cluster_info()),
            ("GET", ["stats"]) => ok(json!([self.stats()])),
            ("GET", ["metrics"]) => ok(json!([{"node": self.node(), "metrics": self.metrics()}])),
            ("GET", ["listeners"]) => {
                ok(json!([{"node": self.node(), "listeners": self.listeners()}]))
            }
            ("GET", ["clients"]) => self.clients(&req),
            ("GET", ["clients", "username", user]) => {
                let found =
                    self.client_list(|c| c.info.username() == Some(*user), "connected_at", false);
                ok(json!(found))
            }
            ("GET", ["clients", ..]) => self.client(&rest_after(rest, "clients/")),
            ("DELETE", ["clients", ..]) => self.kick(&rest_after(rest, "clients/")),
            ("GET", ["subscriptions"]) => page(&req, self.subscriptions(None)),
            ("GET", ["subscriptions", ..]) => ok(json!(
                self.subscriptions(Some(&rest_after(rest, "subscriptions/")))
            )),
            ("GET", ["routes"]) => page(&req, self.routes(None)),
            ("GET", ["routes", ..]) => ok(json!(self.routes(Some(&rest_after(rest, "routes/"))))),
            ("POST", ["mqtt", "publish"]) => self.publish(&req, false),
            ("POST", ["mqtt", "publish_batch"]) => self.publish(&req, true),
            ("GET", ["retainer", "messages"]) => page(&req, self.retained()),
            ("DELETE", ["retainer", "message", ..]) => {
                self.delete_retained(&rest_after(rest, "retainer/message/"))
            }
            ("GET", ["bridges"]) => ok(json!(self.bridges())),
            ("GET", ["topics"]) => self.topic_tree(&req),
            ("GET", ["topics", "tap"]) => self.tap(&req),
            ("GET", ["history"]) => self.history(),
            ("GET", ["alarms"]) => ok(json!([{"node": self.node(), "alarms": self.alarms()}])),
            ("POST", ["mqtt", "subscribe"]) => self.subscribe(&req, false, true),
            ("POST", ["mqtt", "subscribe_batch"]) => self.subscribe(&req, true, true),
            ("POST", ["mqtt", "unsubscribe"]) => self.subscribe(&req, false, false),
            ("POST", ["mqtt", "unsubscribe_batch"]) => self.subscribe(&req, true, false),
            (_, _) => error(
                404,
                BAD_PARAMETER,
                format!("no such endpoint: {} {}", req.method, req.path),
            ),
        }
    }

    fn status(&self) -> Response {
        let broker = self.broker();
        let store_failing = broker.store().is_some_and(|s| s.is_failing());
        // Cut off from the cluster (`isolated_status`): a balancer sends clients to the
        // nodes that still see the others.
        let isolated = self.cluster.get().is_some_and(|c| c.isolated());
        let up = self.serving.load(Ordering::Relaxed)
            && !broker.is_shutting_down()
            && !store_failing
            && !isolated;
        let state = if up { "is running" } else { "is not running" };
        let body = format!(
            "Node {} is {}\ntern {state}\n",
            self.node(),
            if up {
                "started"
            } else if store_failing {
                "started, but its store cannot write"
            } else if isolated {
                "started, but cut off from the cluster (isolated_status)"
            } else {
                "starting or stopping"
            }
        );
        Response::new(if up { 200 } else { 503 }, "text/plain", body)
    }

    fn broker_info(&self) -> Value {
        json!({
            "node": self.node(),
            "node_status": "Running",
            "sysdescr": "Tern MQTT broker",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": uptime(self.started.elapsed().as_secs()),
            "datetime": datetime(SystemTime::now()),
        })
    }

    fn node_info(&self) -> Value {
        let (load1, load5, load15) = loadavg();
        json!({
            "node": self.node(),
            "node_status": "Running",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": uptime(self.started.elapsed().as_secs()),
            "connections": self.broker().metrics.clients_connected.load(Ordering::Relaxed),
            "load1": load1, "load5": load5, "load15": load15,
            "memory_used": prometheus::resident_bytes(),
            "store_bytes": self.broker().store().map(|s| s.figures().2),
            "max_fds": max_fds(),
        })
    }

    fn stats(&self) -> Value {
        let subscriptions = self.broker().subscription_list();
        let topics = {
            let mut filters: Vec<&String> = subscriptions.iter().map(|(_, f, _)| f).collect();
            filters.sort();
            filters.dedup();
            filters.len()
        };
        json!({
            "node": self.node(),
            "connections.count": self.broker().metrics.clients_connected.load(Ordering::Relaxed),
            "sessions.count": self.broker().session_count(),
            "subscriptions.count": subscriptions.len(),
            "subscribers.count": subscriptions.iter().map(|(c, _, _)| c).collect::<std::collections::HashSet<_>>().len(),
            "topics.count": topics,
            "routes.count": topics,
            "retained.count": self.broker().retained_count(),
        })
    }

    fn metrics(&self) -> Value {
        let m = &self.broker().metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let dropped = get(&m.dropped_queue_full)
            + get(&m.dropped_too_large)
            + get(&m.dropped_expired)
            + get(&m.dropped_payload_format)
            + get(&m.dropped_by_peer);
        json!({
            "messages.received": get(&m.messages_received),
            "messages.sent": get(&m.messages_sent),
            "messages.qos0.received": get(&m.received_by_qos[0]),
            "messages.qos1.received": get(&m.received_by_qos[1]),
            "messages.qos2.received": get(&m.received_by_qos[2]),
            "messages.qos0.sent": get(&m.sent_by_qos[0]),
            "messages.qos1.sent": get(&m.sent_by_qos[1]),
            "messages.qos2.sent": get(&m.sent_by_qos[2]),
            "messages.dropped": dropped,
            "messages.dropped.queue_full": get(&m.dropped_queue_full),
            "messages.dropped.too_large": get(&m.dropped_too_large),
            "messages.dropped.expired": get(&m.dropped_expired),
            "messages.dropped.payload_format_invalid": get(&m.dropped_payload_format),
            "messages.dropped.refused_by_peer": get(&m.dropped_by_peer),
            "messages.retained": self.broker().retained_count(),
            "bytes.received": get(&m.bytes_received),
            "bytes.sent": get(&m.bytes_sent),
            "client.connected": get(&m.connections),
            "connections.probes": get(&m.probes),
            "api.login_failures": get(&self.logins.failures),
            "api.logins_turned_away": get(&self.logins.turned_away),
            "dashboard.taps": self.broker().tap_count(),
            "dashboard.topics": self.broker().recent_topics(|t| t.len()),
        })
    }

    fn listeners(&self) -> Vec<Value> {
        let clients = self.broker().clients();
        self.listeners
            .iter()
            .map(|l| {
                let current = clients
                    .iter()
                    .filter(|c| *c.info.listener == *l.name)
                    .count();
                json!({
                    "identifier": l.name,
                    "protocol": l.protocol,
                    "listen_on": l.bind,
                    "current_conns": current,
                    "max_conns": l.max_connections,
                    "proxy_protocol": l.proxy_protocol,
                    "tls": l.tls,
                })
            })
            .collect()
    }

    fn client_json(&self, c: &ClientView) -> Value {
        let i = &c.info;
        json!({
            "node": self.node(),
            "clientid": &*c.client_id,
            "username": i.username(),
            "ip_address": i.peer().ip().to_string(),
            "port": i.peer().port(),
            "proto_name": if i.protocol == ProtocolVersion::V31 { "MQIsdp" } else { "MQTT" },
            "proto_ver": proto_ver(i.protocol),
            "clean_start": i.clean_start,
            "keepalive": i.keep_alive,
            "expiry_interval": c.expiry_interval,
            "connected": true,
            "connected_at": datetime(i.connected_at()),
            "connected_seconds": SystemTime::now()
                .duration_since(i.connected_at())
                .map_or(0, |d| d.as_secs()),
            "zone": &*i.listener,
            "mqueue_len": c.queued,
            "mqueue_dropped": c.dropped,
            "inflight": c.inflight,
            "subscriptions_cnt": c.subscriptions,
            "recv_msg": i.received(),
            "send_msg": i.sent(),
        })
    }

    /// The connected clients that `keep` keeps, ordered by the field `sort` (one of
    /// [`CLIENT_SORTS`]; ties in connection order), as the API shows them.
    fn client_list(
        &self,
        keep: impl Fn(&ClientView) -> bool,
        sort: &str,
        descending: bool,
    ) -> Vec<Value> {
        let mut clients = self.broker().clients();
        // A bridge's or a cluster peer's relay session is not a client of this node's
        // (the bridges and the nodes have their own views).
        clients.retain(|c| SessionKind::of(&c.client_id) == SessionKind::Client && keep(c));
        // Sorted as pairs of strings (numbers zero-padded, so that they order as
        // text), with a tie-break of connection time and position: that sort is in the
        // binary already (routes), where a sort of a key type of our own added 10 KB.
        let mut order: Vec<(String, String)> = clients
            .iter()
            .enumerate()
            .map(|(at, c)| {
                let i = &c.info;
                let number = |n: u64| format!("{n:020}");
                let key = match sort {
                    "clientid" => c.client_id.to_string(),
                    "username" => i.username().unwrap_or_default().to_owned(),
                    "ip_address" => i.peer().ip().to_string(),
                    "keepalive" => number(u64::from(i.keep_alive)),
                    "mqueue_len" => number(c.queued as u64),
                    "inflight" => number(c.inflight as u64),
                    "recv_msg" => number(i.received()),
                    "send_msg" => number(i.sent()),
                    _ => String::new(),
                };
                let since = i
                    .connected_at()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                (key, format!("{:020}{at:020}", since.as_millis()))
            })
            .collect();
        order.sort();
        let mut clients: Vec<&ClientView> = order
            .iter()
            .map(|(_, tie)| &clients[tie[20..].parse::<usize>().expect("written above")])
            .collect();
        if descending {
            clients.reverse();
        }
        clients.iter().map(|c| self.client_json(c)).collect()
    }

    /// `GET /api/v4/clients`: EMQX's `_like_clientid`, `_like_username` and
    /// `ip_address`, Tern's `_like` (any of the three, any case), sorted by `_sort`
    /// (`_order=desc` for the other way), paged.
    fn clients(&self, req: &Request) -> Response {
        let like_id = req.query("_like_clientid").unwrap_or("");
        let like_user = req.query("_like_username").unwrap_or("");
        let ip = req.query("ip_address");
        let like = req.query("_like").unwrap_or("");
        let sort = req.query("_sort").unwrap_or("connected_at");
        if !CLIENT_SORTS.contains(&sort) {
            return error(
                400,
                BAD_PARAMETER,
                format!(
                    "_sort={sort:?}: expected one of {}",
                    CLIENT_SORTS.join(", ")
                ),
            );
        }
        let descending = match req.query("_order") {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return error(
                    400,
                    BAD_PARAMETER,
                    format!("_order={other:?}: expected asc or desc"),
                );
            }
        };
        let keep = |c: &ClientView| {
            let user = c.info.username();
            let address = c.info.peer().ip().to_string();
            c.client_id.contains(like_id)
                && (like_user.is_empty() || user.is_some_and(|u| u.contains(like_user)))
                && ip.is_none_or(|ip| address == ip)
                && (like.is_empty()
                    || contains_ignoring_case(&c.client_id, like)
                    || user.is_some_and(|u| contains_ignoring_case(u, like))
                    || address.contains(like))
        };
        let found = self.client_list(keep, sort, descending);
        page(req, found)
    }

    /// `GET /api/v4/clients/ID`: the client as listed, with its subscriptions and will.
    fn client(&self, id: &str) -> Response {
        let clients = self.broker().clients();
        let Some(c) = clients
            .iter()
            .find(|c| &*c.client_id == id && SessionKind::of(id) == SessionKind::Client)
        else {
            return error(
                404,
                CLIENT_OFFLINE,
                format!("client {id:?} is not connected"),
            );
        };
        let mut client = self.client_json(c);
        client["will"] = json!(c.info.will().map(|w| json!({
            "topic": w.topic, "qos": w.qos as u8, "retain": w.retain,
            "delay_interval": w.delay})));
        let subscriptions: Vec<Value> = self
            .subscriptions(Some(id))
            .into_iter()
            .map(|s| json!({"topic": s["topic"], "qos": s["qos"]}))
            .collect();
        client["subscriptions"] = json!(subscriptions);
        ok(json!([client]))
    }

    fn kick(&self, id: &str) -> Response {
        if self.broker().kick(id) {
            log::info!("management API: kicked client_id={id}");
            ok(Value::Null)
        } else {
            error(
                404,
                CLIENT_OFFLINE,
                format!("client {id:?} is not connected"),
            )
        }
    }

    fn subscriptions(&self, client: Option<&str>) -> Vec<Value> {
        self.broker()
            .subscription_list()
            .into_iter()
            .filter(|(c, _, _)| {
                SessionKind::of(c) == SessionKind::Client && client.is_none_or(|id| **c == *id)
            })
            .map(|(c, filter, s)| {
                json!({"node": self.node(), "clientid": &*c, "topic": filter,
                       "qos": s.options.qos as u8})
            })
            .collect()
    }

    /// Each filter this node's clients hold, and each a peer announced, with its node.
    fn routes(&self, topic: Option<&str>) -> Vec<Value> {
        let mut routes: Vec<(String, String)> = self
            .broker()
            .subscription_list()
            .into_iter()
            .filter(|(client_id, _, _)| SessionKind::of(client_id) == SessionKind::Client)
            .map(|(_, f, _)| (f, self.node().to_owned()))
            .collect();
        if let Some(cluster) = self.cluster.get() {
            routes.extend(cluster.remote_routes());
        }
        routes.retain(|(f, _)| topic.is_none_or(|t| f == t));
        routes.sort();
        routes.dedup();
        routes
            .into_iter()
            .map(|(f, node)| json!({"topic": f, "node": node}))
            .collect()
    }

    /// This node, and with a cluster every node it knows of.
    fn nodes(&self) -> Vec<Value> {
        let Some(cluster) = self.cluster.get() else {
            return vec![self.node_info()];
        };
        let mut out = Vec::new();
        for node in cluster.nodes() {
            if node.name == self.node() {
                let mut mine = self.node_info();
                mine["cluster_address"] = json!(node.addr.map(|a| a.to_string()));
                mine["routes"] = json!(node.routes);
                out.push(mine);
                continue;
            }
            let status = node.status.as_ref();
            out.push(json!({
                "node": node.name,
                "node_status": match node.state {
                    "running" => "Running",
                    "connecting" => "Connecting",
                    _ => "Stopped",
                },
                "version": status.map(|s| s.version.clone()),
                "uptime": status.map(|s| {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    uptime(now.saturating_sub(s.started))
                }),
                "connections": status.map(|s| s.connections),
                "cluster_address": node.addr.map(|a| a.to_string()),
                "link_since": node.link_since.map(datetime),
                "last_sync": node.last_sync.map(datetime),
                "queued": node.queued.0,
                "queued_bytes": node.queued.1,
                "routes": node.routes,
                "last_error": node.last_error,
            }));
        }
        out
    }

    /// The cluster at a glance: how many nodes this one sees of those it knew.
    fn cluster_info(&self) -> Value {
        match self.cluster.get() {
            None => json!({"enabled": false}),
            Some(cluster) => {
                let (seen, known) = cluster.reachable();
                let m = &cluster.metrics;
                json!({"enabled": true, "node": self.node(), "nodes_seen": seen, "nodes_known": known,
                       "isolated": cluster.isolated(),
                       "sessions_owned": cluster.sessions_owned(),
                       "takeovers": m.takeovers.load(Ordering::Relaxed),
                       "owner_unreachable": m.owner_unreachable.load(Ordering::Relaxed),
                       "lost_node_wills": m.lost_wills.load(Ordering::Relaxed),
                       "redirected": m.redirected.load(Ordering::Relaxed)})
            }
        }
    }

    fn retained(&self) -> Vec<Value> {
        self.broker()
            .retained_list(Instant::now())
            .iter()
            .map(|m| {
                json!({"topic": m.topic.as_str(), "qos": m.qos as u8,
                       "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
                       "encoding": "base64"})
            })
            .collect()
    }

    fn delete_retained(&self, topic: &str) -> Response {
        if validate_name(topic).is_err() {
            return error(
                400,
                BAD_TOPIC,
                format!("{topic:?} is not a valid topic name"),
            );
        }
        let clear = Message::new(topic, Bytes::new(), QoS::AtMostOnce, true);
        self.broker().publish(clear, Instant::now());
        ok(Value::Null)
    }

    /// The bridges' states (none before they have started).
    pub fn bridge_statuses(&self) -> &[Arc<BridgeStatus>] {
        self.bridges.get().map_or(&[], Vec::as_slice)
    }

    fn bridges(&self) -> Vec<Value> {
        self.bridge_statuses()
            .iter()
            .map(|b| {
                let mut fields = serde_json::Map::new();
                fields.insert("name".into(), json!(b.name));
                for (key, value) in b.figures() {
                    let value = value.parse::<u64>().map_or(json!(value), |n| json!(n));
                    fields.insert(key.into(), value);
                }
                Value::Object(fields)
            })
            .collect()
    }

    fn alarms(&self) -> Vec<Value> {
        let alarms = self
            .broker()
            .alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        alarms
            .iter()
            .map(|a| json!({"name": a.name, "message": a.message, "activate_at": datetime(a.raised_at)}))
            .collect()
    }

    /// `POST /api/v4/mqtt/subscribe` and `unsubscribe` (one object: `topic` or `topics`,
    /// `clientid`, `qos`) and their `_batch` forms (an array), for connected clients.
    fn subscribe(&self, req: &Request, batch: bool, subscribe: bool) -> Response {
        let requests = match json_requests(req, batch) {
            Ok(r) => r,
            Err(response) => return response,
        };
        let mut checked = Vec::new();
        for r in &requests {
            let Some(client) = r.get("clientid").and_then(Value::as_str) else {
                return error(400, MISSING_PARAMETER, "missing clientid");
            };
            let filters = match topics_of(r) {
                Ok(t) => t,
                Err(response) => return response,
            };
            for f in &filters {
                if let Err(e) = crate::protocol::topic::validate_filter(f) {
                    return error(
                        400,
                        BAD_TOPIC,
                        format!("topic filter {f:?}: {}", e.describe()),
                    );
                }
            }
            let qos = match qos_of(r) {
                Ok(q) => q,
                Err(response) => return response,
            };
            checked.push((client.to_owned(), filters, qos));
        }
        let mut results = Vec::new();
        for (client, filters, qos) in checked {
            let mut outcome = Ok(());
            for f in &filters {
                let done = if subscribe {
                    self.broker().subscribe_for(&client, f, qos, Instant::now())
                } else {
                    match self.broker().unsubscribe_for(&client, f) {
                        Some(_) => Ok(()),
                        None => Err(SubscribeError::NotConnected),
                    }
                };
                outcome = outcome.and(done);
            }
            results.push(match outcome {
                Ok(()) => json!({"code": 0, "clientid": client}),
                Err(SubscribeError::NotConnected) => {
                    json!({"code": CLIENT_OFFLINE, "clientid": client, "message": "client is not connected"})
                }
                Err(SubscribeError::Refused(code, why)) => {
                    json!({"code": BAD_TOPIC, "clientid": client, "message": format!("subscription refused ({code}): {why}")})
                }
            });
        }
        if batch {
            return ok(json!(results));
        }
        match results.pop() {
            Some(r) if r["code"] == 0 => Response::json(200, &json!({"code": 0})),
            Some(r) if r["code"] == CLIENT_OFFLINE => Response::json(404, &r),
            Some(r) => Response::json(400, &r),
            None => error(400, MISSING_PARAMETER, "nothing to do"),
        }
    }

    /// `POST /api/v4/mqtt/publish` (one object) or `publish_batch` (an array of them).
    fn publish(&self, req: &Request, batch: bool) -> Response {
        let requests = match json_requests(req, batch) {
            Ok(r) => r,
            Err(response) => return response,
        };
        let mut messages = Vec::new();
        for r in &requests {
            match message_from(r) {
                Ok(mut m) => messages.append(&mut m),
                Err(response) => return response,
            }
        }
        let n = messages.len();
        for m in messages {
            self.broker().publish(m, Instant::now());
        }
        log::debug!("management API: published {n} message(s)");
        if batch {
            ok(json!(
                requests
                    .iter()
                    .map(|_| json!({"code": 0}))
                    .collect::<Vec<_>>()
            ))
        } else {
            Response::json(200, &json!({"code": 0}))
        }
    }

    /// `GET /api/v4/topics?under=PREFIX&sys=true`: one level of the topic tree (the top
    /// without `under`; `under=` is the empty first level of topics like `/a`).
    fn topic_tree(&self, req: &Request) -> Response {
        let under = req.query("under");
        if let Some(under) = under.filter(|u| u.contains(['+', '#'])) {
            return error(
                400,
                BAD_TOPIC,
                format!("under={under:?}: a topic prefix has no wildcards"),
            );
        }
        let sys = match flag(req, "sys") {
            Ok(sys) => sys,
            Err(response) => return response,
        };
        ok(topics::tree(self.broker(), under, sys, Instant::now()))
    }

    /// `GET /api/v4/topics/tap?filter=FILTER`: the messages that match, as they are
    /// routed, one JSON object a line.
    fn tap(&self, req: &Request) -> Response {
        let Some(filter) = req.query("filter") else {
            return error(400, MISSING_PARAMETER, "missing filter");
        };
        match self.broker().open_tap(filter) {
            Ok(tap) => {
                log::info!("management API: {} watches {filter:?}", req.peer);
                let hello = json!({"watching": filter}).to_string() + "\n";
                let mut r = Response::new(200, "application/x-ndjson", hello);
                r.stream = Some(Box::pin(topics::TapLines::new(tap)));
                r
            }
            Err(TapRefused::BadFilter(why)) => {
                error(400, BAD_TOPIC, format!("topic filter {filter:?}: {why}"))
            }
            Err(TapRefused::TooMany) => error(
                503,
                BAD_PARAMETER,
                format!("{MAX_TAPS} taps are open already: close one"),
            ),
        }
    }

    /// `GET /api/v4/history`: the samples of the last hour, and one for now.
    fn history(&self) -> Response {
        let mut samples = self.history.samples();
        samples.push(self.sample_now());
        ok(json!({"interval": super::history::INTERVAL.as_secs(), "samples": samples}))
    }

    pub fn sample_now(&self) -> Sample {
        Sample::of(
            self.broker(),
            prometheus::resident_bytes(),
            SystemTime::now(),
        )
    }

    fn prometheus(&self) -> Response {
        Response::new(
            200,
            "text/plain; version=0.0.4",
            prometheus::render(
                self.broker(),
                self.bridge_statuses(),
                self.cluster.get(),
                &self.logins,
            ),
        )
    }
}

fn rest_after(rest: &str, prefix: &str) -> String {
    rest.trim_start_matches('/')
        .strip_prefix(prefix)
        .unwrap_or_default()
        .to_owned()
}

/// A `true`/`false` query parameter, false when absent.
fn flag(req: &Request, name: &str) -> Result<bool, Response> {
    match req.query(name) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(error(
            400,
            BAD_PARAMETER,
            format!("{name}={other:?}: expected true or false"),
        )),
    }
}

/// The request objects of a body: one object, or (`batch`) an array of them.
fn json_requests(req: &Request, batch: bool) -> Result<Vec<Value>, Response> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| error(400, BAD_JSON, format!("request body is not JSON: {e}")))?;
    match (batch, body) {
        (false, v @ Value::Object(_)) => Ok(vec![v]),
        (true, Value::Array(items)) => Ok(items),
        (false, _) => Err(error(400, BAD_PARAMETER, "expected a JSON object")),
        (true, _) => Err(error(400, BAD_PARAMETER, "expected a JSON array")),
    }
}

/// `topic`, or `topics` separated by commas.
fn topics_of(r: &Value) -> Result<Vec<String>, Response> {
    match (r.get("topic"), r.get("topics")) {
        (Some(Value::String(t)), _) => Ok(vec![t.clone()]),
        (None, Some(Value::String(ts))) => Ok(ts.split(',').map(|t| t.trim().to_owned()).collect()),
        (Some(_), _) | (None, Some(_)) => Err(error(400, BAD_PARAMETER, "topic must be a string")),
        (None, None) => Err(error(400, MISSING_PARAMETER, "missing topic or topics")),
    }
}

fn qos_of(r: &Value) -> Result<QoS, Response> {
    match r.get("qos").map(Value::as_u64) {
        None | Some(Some(0)) => Ok(QoS::AtMostOnce),
        Some(Some(1)) => Ok(QoS::AtLeastOnce),
        Some(Some(2)) => Ok(QoS::ExactlyOnce),
        Some(_) => Err(error(400, BAD_PARAMETER, "qos must be 0, 1 or 2")),
    }
}

/// One request object of `/mqtt/publish`: `topic` or `topics` (comma-separated),
/// `payload`, `encoding` (`plain` or `base64`), `qos`, `retain`, v5 `properties`.
fn message_from(r: &Value) -> Result<Vec<Message>, Response> {
    let topics = topics_of(r)?;
    for t in &topics {
        if let Err(e) = validate_name(t) {
            let why = format!("topic {t:?}: {}", e.describe());
            return Err(error(400, BAD_TOPIC, why));
        }
    }
    let qos = qos_of(r)?;
    let retain = match r.get("retain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(error(400, BAD_PARAMETER, "retain must be true or false")),
    };
    let text = match r.get("payload") {
        None => "",
        Some(Value::String(p)) => p.as_str(),
        Some(_) => return Err(error(400, BAD_PARAMETER, "payload must be a string")),
    };
    let payload = match r.get("encoding").and_then(Value::as_str).unwrap_or("plain") {
        "plain" => Bytes::copy_from_slice(text.as_bytes()),
        "base64" => match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) => Bytes::from(bytes),
            Err(_) => return Err(error(400, BAD_PARAMETER, "payload is not valid base64")),
        },
        other => {
            return Err(error(
                400,
                BAD_PARAMETER,
                format!("encoding {other:?} is not plain or base64"),
            ));
        }
    };
    let expiry = r
        .get("properties")
        .and_then(|p| p.get("message_expiry_interval"))
        .and_then(Value::as_u64);
    Ok(topics
        .into_iter()
        .map(|t| {
            let mut m = Message::new(t, payload.clone(), qos, retain);
            if let Some(secs) = expiry {
                m.expires_at = Some(Instant::now() + std::time::Duration::from_secs(secs));
            }
            m
        })
        .collect())
}

fn loadavg() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    (
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    )
}

/// Retry-After counts whole seconds, rounded up so a client never retries early. In
/// integers: `f64::ceil` is a libm call on 32-bit ARM, and the binaries link only libc.
fn whole_seconds_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

// rlim_t is u32 on 32-bit ARM and u64 on 64-bit targets.
#[allow(clippy::useless_conversion)]
fn max_fds() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        u64::from(limit.rlim_cur)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds_up(Duration::ZERO), 0);
        assert_eq!(whole_seconds_up(Duration::from_millis(250)), 1);
        assert_eq!(whole_seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds_up(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn times_in_emqx_wording() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(datetime(t), "2026-11-18 11:06:40");
        assert_eq!(datetime(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(uptime(5), "5 seconds");
        assert_eq!(uptime(3 * 3600 + 7), "3 hours, 0 minutes, 7 seconds");
    }
}
