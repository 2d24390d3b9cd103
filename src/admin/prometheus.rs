//! `GET /metrics` in the Prometheus text format (version 0.0.4).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use super::login::LoginGuard;
use crate::bridge::BridgeStatus;
use crate::broker::Broker;
use crate::cluster::Cluster;

/// The process's resident memory, from /proc.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(
    broker: &Broker,
    bridges: &[Arc<BridgeStatus>],
    cluster: Option<&Arc<Cluster>>,
    logins: &LoginGuard,
) -> String {
    let m = &broker.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let clients = broker.clients();
    let subscriptions = broker.subscription_list().len() as u64;
    let mut out = String::new();
    let connected = m.clients_connected.load(Ordering::Relaxed).max(0) as u64;
    metric(
        &mut out,
        "tern_connections",
        "gauge",
        "Clients connected now.",
        &[("", connected)],
    );
    metric(
        &mut out,
        "tern_connections_total",
        "counter",
        "Connections accepted since start.",
        &[("", get(&m.connections))],
    );
    metric(
        &mut out,
        "tern_probe_connections_total",
        "counter",
        "Connections that ended before sending a byte (load balancers' TCP health checks).",
        &[("", get(&m.probes))],
    );
    metric(
        &mut out,
        "tern_api_login_failures_total",
        "counter",
        "Requests to the API and dashboard with wrong credentials.",
        &[("", get(&logins.failures))],
    );
    metric(
        &mut out,
        "tern_api_logins_turned_away_total",
        "counter",
        "Requests turned away (429) while their address waited after failed logins.",
        &[("", get(&logins.turned_away))],
    );
    metric(
        &mut out,
        "tern_sessions",
        "gauge",
        "Sessions, connected or not.",
        &[("", broker.session_count() as u64)],
    );
    metric(
        &mut out,
        "tern_subscriptions",
        "gauge",
        "Subscriptions of every session.",
        &[("", subscriptions)],
    );
    metric(
        &mut out,
        "tern_retained_messages",
        "gauge",
        "Retained messages kept.",
        &[("", broker.retained_count() as u64)],
    );
    metric(
        &mut out,
        "tern_messages_received_total",
        "counter",
        "PUBLISH packets received from clients.",
        &[("", get(&m.messages_received))],
    );
    metric(
        &mut out,
        "tern_messages_sent_total",
        "counter",
        "PUBLISH packets sent to clients.",
        &[("", get(&m.messages_sent))],
    );
    metric(
        &mut out,
        "tern_bytes_received_total",
        "counter",
        "Bytes read from client connections.",
        &[("", get(&m.bytes_received))],
    );
    metric(
        &mut out,
        "tern_bytes_sent_total",
        "counter",
        "Bytes written to client connections.",
        &[("", get(&m.bytes_sent))],
    );
    metric(
        &mut out,
        "tern_messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
        &[
            ("reason=\"queue_full\"", get(&m.dropped_queue_full)),
            ("reason=\"too_large\"", get(&m.dropped_too_large)),
            ("reason=\"expired\"", get(&m.dropped_expired)),
            ("reason=\"retained_full\"", get(&m.dropped_retained_full)),
            (
                "reason=\"payload_format_invalid\"",
                get(&m.dropped_payload_format),
            ),
            ("reason=\"refused_by_peer\"", get(&m.dropped_by_peer)),
        ],
    );
    let queued: u64 = clients.iter().map(|c| c.queued as u64).sum();
    let inflight: u64 = clients.iter().map(|c| c.inflight as u64).sum();
    metric(
        &mut out,
        "tern_queued_messages",
        "gauge",
        "Messages queued for connected clients.",
        &[("", queued)],
    );
    metric(
        &mut out,
        "tern_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent to connected clients and not yet acknowledged.",
        &[("", inflight)],
    );
    if let Some(store) = broker.store() {
        let (commits, commit_micros, bytes) = store.figures();
        metric(
            &mut out,
            "tern_store_commits_total",
            "counter",
            "Store commits.",
            &[("", commits)],
        );
        metric(
            &mut out,
            "tern_store_commit_microseconds_total",
            "counter",
            "Time spent committing and syncing.",
            &[("", commit_micros)],
        );
        metric(
            &mut out,
            "tern_store_file_bytes",
            "gauge",
            "Size of the SQLite file and its WAL.",
            &[("", bytes)],
        );
    }
    if !bridges.is_empty() {
        let mut state = Vec::new();
        let mut queued = Vec::new();
        let mut dropped = Vec::new();
        let names: Vec<String> = bridges
            .iter()
            .map(|b| format!("bridge=\"{}\"", label(&b.name)))
            .collect();
        for (b, name) in bridges.iter().zip(&names) {
            let (q, _, d) = b.outbox_figures();
            state.push((
                name.as_str(),
                u64::from(b.connected.load(Ordering::Relaxed)),
            ));
            queued.push((name.as_str(), q as u64));
            dropped.push((name.as_str(), d));
        }
        metric(
            &mut out,
            "tern_bridge_connected",
            "gauge",
            "1 while the bridge's uplink is connected.",
            &state,
        );
        metric(
            &mut out,
            "tern_bridge_queued_messages",
            "gauge",
            "Messages waiting in the bridge's outbox.",
            &queued,
        );
        metric(
            &mut out,
            "tern_bridge_dropped_total",
            "counter",
            "Messages the bridge's outbox dropped or refused.",
            &dropped,
        );
    }
    if let Some(cluster) = cluster {
        let nodes = cluster.nodes();
        let names: Vec<String> = nodes
            .iter()
            .skip(1)
            .map(|n| format!("node=\"{}\"", label(&n.name)))
            .collect();
        let peers = nodes.iter().skip(1).zip(&names);
        let up: Vec<(&str, u64)> = peers
            .clone()
            .map(|(n, name)| (name.as_str(), u64::from(n.state == "running")))
            .collect();
        let queued: Vec<(&str, u64)> = peers
            .clone()
            .map(|(n, name)| (name.as_str(), n.queued.0 as u64))
            .collect();
        let synced: Vec<(&str, u64)> = peers
            .map(|(n, name)| {
                let at = n.last_sync.and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                (name.as_str(), at.map_or(0, |d| d.as_secs()))
            })
            .collect();
        metric(
            &mut out,
            "tern_cluster_nodes",
            "gauge",
            "Nodes of the cluster this node knows of, itself included.",
            &[("", nodes.len() as u64)],
        );
        metric(
            &mut out,
            "tern_cluster_link_up",
            "gauge",
            "1 while the link to the node is up.",
            &up,
        );
        metric(
            &mut out,
            "tern_cluster_queued_messages",
            "gauge",
            "Messages waiting for the node.",
            &queued,
        );
        metric(
            &mut out,
            "tern_cluster_last_sync_timestamp_seconds",
            "gauge",
            "When the node's routes were last brought up to date (0: never).",
            &synced,
        );
    }
    metric(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        &[("", resident_bytes())],
    );
    out
}
