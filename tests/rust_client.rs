//! A Rust MQTT client (rumqttc, 3.1.1 and 5.0) against the real `tern` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> Broker {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One directory per broker: each has its own store.
        let dir = std::env::temp_dir().join(format!("tern-rust-client-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("tern.toml");
        // Every listener on a free port: the tests run side by side.
        let text = "[listeners.tcp]\nbind = \"127.0.0.1:0\"\n[listeners.ws]\nbind = \"127.0.0.1:0\"\n\
                    [api]\nbind = \"127.0.0.1:0\"\n[dashboard]\nbind = \"127.0.0.1:0\"\n";
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tern");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("tern exited before listening").unwrap();
            if let Some(addr) = line.split("listening name=tcp addr=").nth(1) {
                break addr.rsplit(':').next().unwrap().trim().parse().unwrap();
            }
        };
        // Keep draining the log so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_v311_publish_subscribe_qos1_and_retained() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = Broker::start();
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("rust-v4", "127.0.0.1", broker.port), 10);
    client
        .publish("rust/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    client.subscribe("rust/#", QoS::AtLeastOnce).await.unwrap();
    client
        .publish("rust/live", QoS::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("timed out")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = event {
            got.push((p.topic.clone(), p.payload.to_vec(), p.retain));
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("rust/live".into(), b"hello".to_vec(), false),
            ("rust/retained".into(), b"kept".to_vec(), true)
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_v5_qos2_round_trip() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = Broker::start();
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("rust-v5", "127.0.0.1", broker.port), 10);
    client.subscribe("v5/#", QoS::ExactlyOnce).await.unwrap();
    client
        .publish("v5/t", QoS::ExactlyOnce, false, "exactly once")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("timed out")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = event {
            assert_eq!(&p.topic[..], b"v5/t");
            assert_eq!(&p.payload[..], b"exactly once");
            assert_eq!(p.qos, QoS::ExactlyOnce);
            break;
        }
    }
}
