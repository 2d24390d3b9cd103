//! `$SYS` topics with Mosquitto's names, retained, every `sys_interval` seconds, each
//! published only when its value changed, so dashboards built on Mosquitto's tree work
//! against Tern unchanged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::Broker;
use crate::broker::message::Message;
use crate::protocol::QoS;

/// A per-minute rate smoothed the way Mosquitto's `load/.../1min` figures are.
struct Load {
    last: u64,
    per_minute: f64,
}

impl Load {
    fn update(&mut self, total: u64, interval: Duration) -> f64 {
        let rate = total.saturating_sub(self.last) as f64 * 60.0 / interval.as_secs_f64();
        self.last = total;
        // One-minute exponential moving average.
        let k = (-interval.as_secs_f64() / 60.0).exp();
        self.per_minute = self.per_minute * k + rate * (1.0 - k);
        self.per_minute
    }
}

pub async fn publish_loop(broker: Arc<Broker>, interval: Duration, started: Instant) {
    let mut last: Vec<(String, String)> = Vec::new();
    let m = &broker.metrics;
    let mut loads = [
        (
            "messages/received",
            Load {
                last: 0,
                per_minute: 0.0,
            },
        ),
        (
            "messages/sent",
            Load {
                last: 0,
                per_minute: 0.0,
            },
        ),
        (
            "bytes/received",
            Load {
                last: 0,
                per_minute: 0.0,
            },
        ),
        (
            "bytes/sent",
            Load {
                last: 0,
                per_minute: 0.0,
            },
        ),
    ];
    loop {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let totals = [
            get(&m.messages_received),
            get(&m.messages_sent),
            get(&m.bytes_received),
            get(&m.bytes_sent),
        ];
        let mut figures: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("tern version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            (
                "clients/connected".into(),
                m.clients_connected.load(Ordering::Relaxed).to_string(),
            ),
            ("clients/total".into(), broker.session_count().to_string()),
            ("messages/received".into(), totals[0].to_string()),
            ("messages/sent".into(), totals[1].to_string()),
            ("bytes/received".into(), totals[2].to_string()),
            ("bytes/sent".into(), totals[3].to_string()),
            (
                "retained messages/count".into(),
                broker.retained_count().to_string(),
            ),
            (
                "subscriptions/count".into(),
                broker.subscription_list().len().to_string(),
            ),
        ];
        for ((name, load), total) in loads.iter_mut().zip(totals) {
            let rate = load.update(total, interval);
            figures.push((format!("load/{name}/1min"), format!("{rate:.2}")));
        }
        for (key, value) in &figures {
            if last.iter().any(|(k, v)| k == key && v == value) {
                continue;
            }
            let topic = format!("$SYS/broker/{key}");
            let message = Message::new(topic, Bytes::from(value.clone()), QoS::AtMostOnce, true);
            broker.publish_internal(message);
        }
        last = figures;
        smol::Timer::after(interval).await;
    }
}
