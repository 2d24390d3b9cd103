//! `$SYS` topics with Mosquitto's names, retained, every `sys_interval` seconds, each
//! published only when its value changed, so dashboards built on Mosquitto's tree work
//! against Tern unchanged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::Broker;
use crate::message::Message;
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
        let k = exp_neg(interval.as_secs_f64() / 60.0);
        self.per_minute = self.per_minute * k + rate * (1.0 - k);
        self.per_minute
    }
}

/// e^(−x) for x ≥ 0, to 1e-12 relative: halve x until it is tiny, sum the series,
/// square back. Written here because `f64::exp` would make the binary load libm, about
/// half a megabyte of resident memory at start for this one call.
fn exp_neg(x: f64) -> f64 {
    if x > 745.0 {
        return 0.0; // below the smallest f64
    }
    let mut y = if x > 0.0 { -x } else { 0.0 };
    let mut halvings = 0;
    while y < -1.0 / 64.0 {
        y /= 2.0;
        halvings += 1;
    }
    // Taylor series to the 7th power: the error is below y^8/8! < 1e-19 here.
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..8 {
        term *= y / f64::from(n);
        sum += term;
    }
    for _ in 0..halvings {
        sum *= sum;
    }
    sum
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
            broker.publish_internal(message, Instant::now());
        }
        last = figures;
        smol::Timer::after(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

    #[test]
    fn exp_neg_matches_the_library_function() {
        for x in [
            0.0,
            1e-9,
            0.01,
            1.0 / 6.0,
            0.5,
            1.0,
            2.5,
            10.0,
            60.0,
            300.0,
            700.0,
        ] {
            let (ours, libm) = (exp_neg(x), (-x).exp());
            assert!(
                ((ours - libm) / libm).abs() < 1e-11,
                "exp(-{x}): {ours} vs {libm}"
            );
        }
        assert_eq!(exp_neg(1e6), 0.0);
        assert_eq!(exp_neg(f64::INFINITY), 0.0);
    }
}
