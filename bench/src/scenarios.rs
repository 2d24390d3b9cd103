//! The benchmark scenarios. Each one connects its clients, runs for a fixed time while
//! sampling the broker's CPU and memory and its own CPU, drains, and returns one line of
//! `key=value` figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smol::future::FutureExt;
use smol::{Executor, Timer};
use tern::protocol::QoS;

use crate::pipelined::{Conn, PUBACK, PUBLISH, puback_packet, publish_packet};
use crate::proc::{CpuWindow, PeakRss, rss_kib, write_bytes};

pub type Line = Vec<(&'static str, String)>;
type Result<T> = std::io::Result<T>;

pub struct Opts {
    pub addr: SocketAddr,
    /// Where subscribers connect (another broker, across a bridge); `addr` by default.
    pub sub_addr: SocketAddr,
    /// Messages for `publish` and `drain`.
    pub count: u64,
    pub broker_pid: String,
    pub duration: Duration,
    pub publishers: usize,
    pub subscribers: usize,
    pub window: u64,
    pub connections: usize,
}

const PAYLOAD: usize = 64;

fn payload() -> [u8; PAYLOAD] {
    [b'x'; PAYLOAD]
}

fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Waits until `received` stops growing for `quiet` or reaches `target`.
async fn drain(received: &AtomicU64, target: u64, quiet: Duration) {
    let mut last = received.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while received.load(Ordering::Relaxed) < target {
        Timer::after(Duration::from_millis(10)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > quiet {
            break;
        }
    }
}

/// Waits for the publishers, then for the subscriber to receive all that was `sent`
/// (or to go quiet for two seconds), and stops it: (sent, received).
async fn wind_down(
    publishers: Vec<smol::Task<Result<()>>>,
    sent: &AtomicU64,
    received: &AtomicU64,
    sub_stop: &AtomicBool,
    sub_task: smol::Task<()>,
) -> Result<(u64, u64)> {
    for p in publishers {
        p.await?;
    }
    let total = sent.load(Ordering::Relaxed);
    drain(received, total, Duration::from_secs(2)).await;
    sub_stop.store(true, Ordering::Relaxed);
    sub_task.await;
    Ok((total, received.load(Ordering::Relaxed)))
}

/// A subscriber task: counts PUBLISH packets and acknowledges QoS 1 in batches.
fn spawn_subscriber(
    ex: &Executor<'static>,
    mut conn: Conn,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> smol::Task<()> {
    ex.spawn(async move {
        let mut acks = BytesMut::new();
        loop {
            let read = conn
                .read_frames(|f| {
                    if f.kind == PUBLISH {
                        let (id, _) = f.publish();
                        if id != 0 {
                            puback_packet(id, &mut acks);
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .or(async {
                    Timer::after(Duration::from_millis(200)).await;
                    Ok(0)
                })
                .await;
            if !acks.is_empty() {
                if conn.send(&acks).await.is_err() {
                    break;
                }
                acks.clear();
            }
            if read.is_err() || (stop.load(Ordering::Relaxed) && matches!(read, Ok(0))) {
                break;
            }
        }
    })
}

fn figures(line: &mut Line, cpu: &CpuWindow, peak: PeakRss) {
    let (broker_cpu, gen_cpu) = cpu.finish();
    line.push(("broker_cpu", format!("{broker_cpu:.0}")));
    line.push(("gen_cpu", format!("{gen_cpu:.0}")));
    line.push(("peak_rss_kb", peak.finish().to_string()));
}

/// `publishers` clients publish to `bench/N` as fast as a window of `window` messages
/// ahead of the subscriber (QoS 0) or of the broker's PUBACKs (QoS 1) allows; one
/// subscriber on `bench/#` receives.
pub async fn fan_in(ex: &Executor<'static>, o: &Opts, qos: QoS) -> Result<Line> {
    let mut sub = Conn::open(o.sub_addr, "bench-sub", 60).await?;
    sub.subscribe("bench/#", qos).await?;
    let (received, sent, stop, sub_stop) = (counter(), counter(), flag(), flag());
    let sub_task = spawn_subscriber(ex, sub, received.clone(), sub_stop.clone());
    let mut pubs = Vec::new();
    for i in 0..o.publishers {
        let conn = Conn::open(o.addr, &format!("bench-pub-{i}"), 60).await?;
        let (received, sent, stop) = (received.clone(), sent.clone(), stop.clone());
        // QoS 0 has no acknowledgements: each publisher may be `window` messages ahead
        // of the subscriber, like the QoS 1 window, so the loop is not latency-bound.
        let window = match qos {
            QoS::AtMostOnce => o.window * o.publishers as u64,
            _ => o.window,
        };
        let topic = format!("bench/{i}");
        pubs.push(ex.spawn(async move {
            match qos {
                QoS::AtMostOnce => {
                    publish_qos0(conn, &topic, window, &sent, &received, &stop).await
                }
                _ => publish_qos1(conn, &topic, window, None, u64::MAX, &sent, &stop).await,
            }
        }));
    }
    let cpu = CpuWindow::start(&o.broker_pid);
    let peak = PeakRss::start(&o.broker_pid);
    Timer::after(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let in_window = received.load(Ordering::Relaxed);
    let mut line: Line = vec![(
        "rate",
        format!("{:.0}", in_window as f64 / o.duration.as_secs_f64()),
    )];
    figures(&mut line, &cpu, peak);
    let (total, got) = wind_down(pubs, &sent, &received, &sub_stop, sub_task).await?;
    line.push(("sent", total.to_string()));
    line.push(("received", got.to_string()));
    line.push(("loss", total.saturating_sub(got).to_string()));
    Ok(line)
}

/// Up to `wanted` QoS 0 publishes to `topic` encoded back to back (at least one, at
/// most 64 KiB of them): the batch and how many it holds.
fn qos0_batch(topic: &str, wanted: u64) -> (Vec<u8>, u64) {
    let mut one = BytesMut::new();
    publish_packet(topic, QoS::AtMostOnce, 0, &payload(), &mut one);
    let count = wanted.clamp(1, (64 * 1024 / one.len()) as u64);
    let batch = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * count as usize)
        .collect();
    (batch, count)
}

/// Publishes QoS 0 in pre-encoded batches, keeping all publishers together at most
/// `window` messages ahead of what the subscriber has received.
async fn publish_qos0(
    mut conn: Conn,
    topic: &str,
    window: u64,
    sent: &AtomicU64,
    received: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    let (batch, per_batch) = qos0_batch(topic, window / 4);
    while !stop.load(Ordering::Relaxed) {
        if sent
            .load(Ordering::Relaxed)
            .saturating_sub(received.load(Ordering::Relaxed))
            + per_batch
            > window
        {
            Timer::after(Duration::from_micros(100)).await;
            continue;
        }
        conn.send(&batch).await?;
        sent.fetch_add(per_batch, Ordering::Relaxed);
    }
    Ok(())
}

/// Publishes QoS 1 keeping `window` messages unacknowledged, optionally paced to
/// `rate` messages a second, at most `limit` in all; `acked` counts what the broker
/// acknowledged.
async fn publish_qos1(
    mut conn: Conn,
    topic: &str,
    window: u64,
    rate: Option<f64>,
    limit: u64,
    acked: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    let start = Instant::now();
    let mut next_id: u16 = 0;
    let mut inflight = 0u64;
    let mut sent = 0u64;
    let mut out = BytesMut::new();
    let pay = payload();
    loop {
        let allowed = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r) as u64,
            None => u64::MAX,
        };
        out.clear();
        let allowed = allowed.min(limit);
        while !stop.load(Ordering::Relaxed) && inflight < window && sent < allowed {
            next_id = next_id.checked_add(1).unwrap_or(1);
            publish_packet(topic, QoS::AtLeastOnce, next_id, &pay, &mut out);
            inflight += 1;
            sent += 1;
        }
        if !out.is_empty() {
            conn.send(&out).await?;
        }
        if inflight == 0 {
            if stop.load(Ordering::Relaxed) || sent == limit {
                return Ok(());
            }
            Timer::after(Duration::from_micros(200)).await;
            continue;
        }
        let mut acks = 0;
        let read = conn
            .read_frames(|f| {
                if f.kind == PUBACK {
                    acks += 1;
                }
            })
            .or(async {
                Timer::after(Duration::from_millis(if rate.is_some() { 1 } else { 2000 })).await;
                Ok(0)
            })
            .await?;
        if read == 0 && rate.is_none() {
            return Err(std::io::Error::other("no PUBACK within 2 s"));
        }
        inflight -= acks;
        acked.fetch_add(acks, Ordering::Relaxed);
    }
}

/// Raises the offered QoS 1 rate step by step; each step reports what the broker
/// acknowledged and what reached the subscriber. The lossless rate is the highest
/// delivered rate of a step where every acknowledged message arrived.
pub async fn qos1_sweep(ex: &Executor<'static>, o: &Opts, rates: &[f64]) -> Result<Line> {
    let mut best = 0.0f64;
    let mut first_loss = None;
    let mut steps = Vec::new();
    let mut peak_rss = 0;
    let (mut broker_cpu, mut gen_cpu) = (0.0f64, 0.0f64);
    for &rate in rates {
        let mut sub = Conn::open(o.addr, "sweep-sub", 60).await?;
        sub.subscribe("sweep/#", QoS::AtLeastOnce).await?;
        let (received, acked, stop, sub_stop) = (counter(), counter(), flag(), flag());
        let sub_task = spawn_subscriber(ex, sub, received.clone(), sub_stop.clone());
        let mut pubs = Vec::new();
        for i in 0..o.publishers {
            let conn = Conn::open(o.addr, &format!("sweep-pub-{i}"), 60).await?;
            let (acked, stop) = (acked.clone(), stop.clone());
            let per = rate / o.publishers as f64;
            let window = o.window;
            pubs.push(ex.spawn(async move {
                publish_qos1(
                    conn,
                    &format!("sweep/{i}"),
                    window,
                    Some(per),
                    u64::MAX,
                    &acked,
                    &stop,
                )
                .await
            }));
        }
        let cpu = CpuWindow::start(&o.broker_pid);
        let peak = PeakRss::start(&o.broker_pid);
        Timer::after(o.duration).await;
        stop.store(true, Ordering::Relaxed);
        let (b, g) = cpu.finish();
        let (total, got) = wind_down(pubs, &acked, &received, &sub_stop, sub_task).await?;
        peak_rss = peak_rss.max(peak.finish());
        let loss = total.saturating_sub(got);
        let delivered = got as f64 / o.duration.as_secs_f64();
        steps.push(format!("{rate:.0}:{delivered:.0}:{loss}"));
        if loss == 0 {
            if delivered > best {
                best = delivered;
                broker_cpu = b;
                gen_cpu = g;
            }
        } else if first_loss.is_none() {
            first_loss = Some(rate);
        }
        if loss > 0 || delivered < 0.8 * rate {
            break;
        }
    }
    Ok(vec![
        ("rate", format!("{best:.0}")),
        (
            "first_loss_offered",
            first_loss.map_or("none".into(), |r| format!("{r:.0}")),
        ),
        ("steps", steps.join(",")),
        ("broker_cpu", format!("{broker_cpu:.0}")),
        ("gen_cpu", format!("{gen_cpu:.0}")),
        ("peak_rss_kb", peak_rss.to_string()),
    ])
}

/// One publisher to `subscribers` subscribers of the same topic, QoS 0, at most
/// `window` messages ahead of the slowest subscriber.
pub async fn fan_out(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let (stop, sub_stop) = (flag(), flag());
    let mut counters = Vec::new();
    let mut subs = Vec::new();
    for i in 0..o.subscribers {
        let mut conn = Conn::open(o.sub_addr, &format!("fan-sub-{i}"), 60).await?;
        conn.subscribe("fan/t", QoS::AtMostOnce).await?;
        let received = counter();
        subs.push(spawn_subscriber(
            ex,
            conn,
            received.clone(),
            sub_stop.clone(),
        ));
        counters.push(received);
    }
    let slowest = {
        let counters = counters.clone();
        move || {
            counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0)
        }
    };
    let total = {
        let counters = counters.clone();
        move || {
            counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
        }
    };
    let mut conn = Conn::open(o.addr, "fan-pub", 60).await?;
    let sent = counter();
    let publisher = {
        let (sent, stop, slowest) = (sent.clone(), stop.clone(), slowest.clone());
        let window = o.window;
        ex.spawn(async move {
            let (batch, per_batch) = qos0_batch("fan/t", (window / 4).min(64));
            while !stop.load(Ordering::Relaxed) {
                if sent.load(Ordering::Relaxed).saturating_sub(slowest()) + per_batch > window {
                    Timer::after(Duration::from_micros(100)).await;
                    continue;
                }
                conn.send(&batch).await?;
                sent.fetch_add(per_batch, Ordering::Relaxed);
            }
            Result::Ok(())
        })
    };
    let cpu = CpuWindow::start(&o.broker_pid);
    let peak = PeakRss::start(&o.broker_pid);
    let before = total();
    Timer::after(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let in_window = total() - before;
    let mut line: Line = vec![(
        "rate",
        format!("{:.0}", in_window as f64 / o.duration.as_secs_f64()),
    )];
    figures(&mut line, &cpu, peak);
    publisher.await?;
    let expected = sent.load(Ordering::Relaxed) * o.subscribers as u64;
    let all = counter();
    let deadline = Instant::now() + Duration::from_secs(3);
    while total() < expected && Instant::now() < deadline {
        Timer::after(Duration::from_millis(10)).await;
    }
    all.store(total(), Ordering::Relaxed);
    sub_stop.store(true, Ordering::Relaxed);
    for s in subs {
        s.await;
    }
    line.push(("sent", sent.load(Ordering::Relaxed).to_string()));
    line.push((
        "loss",
        expected
            .saturating_sub(all.load(Ordering::Relaxed))
            .to_string(),
    ));
    Ok(line)
}

/// QoS 1 at a fixed `rate` from one publisher to one subscriber: p50, p99 and p99.9 of
/// the time from a timestamp written into the payload just before the send to its
/// arrival. The generator spins on one thread instead of sleeping between messages: a
/// thread woken from sleep takes tens of microseconds on a VM, and a sleeping generator
/// (woken by its pacing timer, then again by the delivery) added some 80 µs of its
/// own to every figure, for every broker alike. Spinning leaves only the broker's own
/// wake-up and work in the figure; the generator's CPU is one core, by design.
pub async fn latency(_ex: &Executor<'static>, o: &Opts, rate: f64) -> Result<Line> {
    use smol::future::{block_on, poll_once};
    let epoch = Instant::now();
    let mut sub = Conn::open(o.addr, "lat-sub", 60).await?;
    sub.subscribe("lat/t", QoS::AtLeastOnce).await?;
    let mut publisher = Conn::open(o.addr, "lat-pub", 60).await?;
    let cpu = CpuWindow::start(&o.broker_pid);
    let peak = PeakRss::start(&o.broker_pid);
    let mut latencies: Vec<u64> = Vec::new();
    let (mut sent, mut received, mut acked) = (0u64, 0u64, 0u64);
    let mut id: u16 = 0;
    let (mut out, mut acks) = (BytesMut::new(), BytesMut::new());
    let start = Instant::now();
    let drain_until = start + o.duration + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if now < start + o.duration {
            let due = ((now - start).as_secs_f64() * rate) as u64;
            while sent < due {
                id = id.checked_add(1).unwrap_or(1);
                let mut pay = payload();
                pay[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                publish_packet("lat/t", QoS::AtLeastOnce, id, &pay, &mut out);
                sent += 1;
            }
            if !out.is_empty() {
                block_on(publisher.send(&out))?;
                out.clear();
            }
        } else if received >= sent || now > drain_until {
            break;
        }
        // One poll each, never a wait: a read that would block returns at once.
        let delivered = sub.read_frames(|f| {
            if f.kind == PUBLISH {
                let (id, body) = f.publish();
                let stamp = u64::from_be_bytes(body[..8].try_into().unwrap());
                latencies.push((epoch.elapsed().as_nanos() as u64).saturating_sub(stamp));
                puback_packet(id, &mut acks);
                received += 1;
            }
        });
        if let Some(read) = block_on(poll_once(delivered)) {
            read?;
        }
        if !acks.is_empty() {
            block_on(sub.send(&acks))?;
            acks.clear();
        }
        let acknowledged = publisher.read_frames(|f| acked += u64::from(f.kind == PUBACK));
        if let Some(read) = block_on(poll_once(acknowledged)) {
            read?;
        }
    }
    let mut line: Line = Vec::new();
    figures(&mut line, &cpu, peak);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    line.insert(0, ("p50_us", format!("{:.1}", pct(0.50) as f64 / 1000.0)));
    line.insert(1, ("p99_us", format!("{:.1}", pct(0.99) as f64 / 1000.0)));
    line.insert(2, ("p999_us", format!("{:.1}", pct(0.999) as f64 / 1000.0)));
    line.push(("sent", sent.to_string()));
    line.push(("acked", acked.to_string()));
    line.push(("loss", sent.saturating_sub(received).to_string()));
    Ok(line)
}

/// `connections` idle clients (keep-alive 60, one subscription each), opened with at
/// most 64 handshakes in flight: the connect rate and the broker's RSS per connection.
pub async fn connections(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let rss_before = rss_kib(&o.broker_pid);
    let cpu = CpuWindow::start(&o.broker_pid);
    let start = Instant::now();
    let next = counter();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (next, n, addr) = (next.clone(), o.connections as u64, o.addr);
        workers.push(ex.spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Result::Ok(held);
                }
                let mut c = Conn::open(addr, &format!("idle-{i}"), 60).await?;
                c.subscribe(&format!("idle/{i}"), QoS::AtLeastOnce).await?;
                held.push(c);
            }
        }));
    }
    let mut held = Vec::new();
    for w in workers {
        held.extend(w.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (broker_cpu, gen_cpu) = cpu.finish();
    // Let the broker settle (its housekeeping runs once a second) before measuring.
    Timer::after(Duration::from_millis(1500)).await;
    let rss_after = rss_kib(&o.broker_pid);
    let per_conn = (rss_after.saturating_sub(rss_before) * 1024) as f64 / held.len().max(1) as f64;
    let line = vec![
        ("rate", format!("{:.0}", held.len() as f64 / elapsed)),
        ("connections", held.len().to_string()),
        ("rss_per_conn_bytes", format!("{per_conn:.0}")),
        ("rss_kb", rss_after.to_string()),
        ("broker_cpu", format!("{broker_cpu:.0}")),
        ("gen_cpu", format!("{gen_cpu:.0}")),
        ("peak_rss_kb", rss_after.to_string()),
    ];
    drop(held);
    Ok(line)
}

/// `count` QoS 1 messages from `publishers` clients to `bench/N`, `window` in flight
/// each, every one acknowledged: the acknowledged rate (a backlog for `drain`).
pub async fn publish(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let per_publisher = o.count.div_ceil(o.publishers as u64);
    let acked = counter();
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..o.publishers {
        let conn = Conn::open(o.addr, &format!("bench-pub-{i}"), 60).await?;
        let (acked, window, stop) = (acked.clone(), o.window, flag());
        let topic = format!("bench/{i}");
        pubs.push(ex.spawn(async move {
            publish_qos1(conn, &topic, window, None, per_publisher, &acked, &stop).await
        }));
    }
    for p in pubs {
        p.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    Ok(vec![
        ("rate", format!("{:.0}", n as f64 / elapsed)),
        ("acked", n.to_string()),
    ])
}

/// A persistent subscriber (`drain-sub`, QoS 1 on `bench/#`) connects and counts until
/// `count` messages (duplicates included) arrived: the time from its CONNACK to the last one, and
/// the rate from the first to the last. With `count` 0 it only leaves its session, and
/// subscribes: a resumed session keeps its subscription, and its queued messages may
/// come before a SUBACK would.
pub async fn drain_backlog(o: &Opts) -> Result<Line> {
    let start = Instant::now();
    let mut conn = Conn::open_session(o.addr, "drain-sub", 60, false).await?;
    if o.count == 0 {
        conn.subscribe("bench/#", QoS::AtLeastOnce).await?;
    }
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let mut acks = BytesMut::new();
    let deadline = Duration::from_secs(120);
    while received < o.count && start.elapsed() < deadline {
        let read = conn
            .read_frames(|f| {
                if f.kind == PUBLISH {
                    let (id, _) = f.publish();
                    if id != 0 {
                        puback_packet(id, &mut acks);
                    }
                    received += 1;
                }
            })
            .or(async {
                Timer::after(Duration::from_millis(500)).await;
                Ok(0)
            })
            .await?;
        if read > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if !acks.is_empty() {
            conn.send(&acks).await?;
            acks.clear();
        }
    }
    let total = start.elapsed();
    let flowing = first.map_or(Duration::ZERO, |f| f.elapsed());
    Ok(vec![
        ("drain_ms", format!("{:.0}", total.as_secs_f64() * 1000.0)),
        (
            "rate",
            format!("{:.0}", received as f64 / flowing.as_secs_f64().max(1e-3)),
        ),
        ("received", received.to_string()),
        ("loss", o.count.saturating_sub(received).to_string()),
    ])
}

/// New connections, each closed after its CONNACK, from 16 at a time for `duration`:
/// the rate of whole handshakes (TCP, TLS when asked for, MQTT CONNECT).
pub async fn handshakes(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let cpu = CpuWindow::start(&o.broker_pid);
    let start = Instant::now();
    let done = counter();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (done, addr, duration) = (done.clone(), o.addr, o.duration);
        workers.push(ex.spawn(async move {
            let mut i = 0u64;
            while start.elapsed() < duration {
                let conn = Conn::open(addr, &format!("hs-{w}-{i}"), 60).await?;
                drop(conn);
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Result::Ok(())
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (broker_cpu, gen_cpu) = cpu.finish();
    let n = done.load(Ordering::Relaxed);
    Ok(vec![
        ("rate", format!("{:.0}", n as f64 / elapsed)),
        ("handshakes", n.to_string()),
        ("broker_cpu", format!("{broker_cpu:.0}")),
        ("gen_cpu", format!("{gen_cpu:.0}")),
    ])
}

/// QoS 1 fan-in to a persistent subscriber that is offline, so every message must be
/// stored: the acknowledged rate, the bytes the broker wrote to storage per message
/// meanwhile (SD-card wear), then the subscriber comes back and counts what it gets.
pub async fn persist_qos1(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let mut keeper = Conn::open_session(o.addr, "bench-keeper", 60, false).await?;
    keeper.subscribe("bench/#", QoS::AtLeastOnce).await?;
    drop(keeper);
    Timer::after(Duration::from_millis(300)).await;
    let (acked, stop) = (counter(), flag());
    let mut pubs = Vec::new();
    for i in 0..o.publishers {
        let conn = Conn::open(o.addr, &format!("bench-pub-{i}"), 60).await?;
        let (acked, stop) = (acked.clone(), stop.clone());
        let (topic, window) = (format!("bench/{i}"), o.window);
        pubs.push(ex.spawn(async move {
            publish_qos1(conn, &topic, window, None, u64::MAX, &acked, &stop).await
        }));
    }
    let written_before = write_bytes(&o.broker_pid);
    let cpu = CpuWindow::start(&o.broker_pid);
    let peak = PeakRss::start(&o.broker_pid);
    Timer::after(o.duration).await;
    let in_window = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut line: Line = vec![(
        "rate",
        format!("{:.0}", in_window as f64 / o.duration.as_secs_f64()),
    )];
    figures(&mut line, &cpu, peak);
    for p in pubs {
        p.await?;
    }
    let total = acked.load(Ordering::Relaxed);
    let (received, sub_stop) = (counter(), flag());
    let keeper = Conn::open_session(o.addr, "bench-keeper", 60, false).await?;
    let task = spawn_subscriber(ex, keeper, received.clone(), sub_stop.clone());
    drain(&received, total, Duration::from_secs(3)).await;
    sub_stop.store(true, Ordering::Relaxed);
    task.await;
    let got = received.load(Ordering::Relaxed);
    // Everything written to keep each message and to forget it once delivered; a
    // broker that writes only on a timer or at exit shows what it wrote until now.
    let written = write_bytes(&o.broker_pid).saturating_sub(written_before);
    line.push((
        "disk_bytes_per_msg",
        format!("{:.0}", written as f64 / total.max(1) as f64),
    ));
    line.push(("acked", total.to_string()));
    line.push(("received", got.to_string()));
    line.push(("loss", total.saturating_sub(got).to_string()));
    Ok(line)
}

/// Leaves `connections` persistent sessions behind, one subscription each, for timing
/// a restart that has to load them.
pub async fn sessions(ex: &Executor<'static>, o: &Opts) -> Result<Line> {
    let start = Instant::now();
    let next = counter();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (next, n, addr) = (next.clone(), o.connections as u64, o.addr);
        workers.push(ex.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Result::Ok(());
                }
                let mut c = Conn::open_session(addr, &format!("kept-{i}"), 60, false).await?;
                c.subscribe(&format!("kept/{i}"), QoS::AtLeastOnce).await?;
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(vec![
        ("rate", format!("{:.0}", o.connections as f64 / elapsed)),
        ("sessions", o.connections.to_string()),
    ])
}

/// Starts `command`, then connects as soon as it accepts: time from exec to CONNACK.
pub fn startup(addr: SocketAddr, command: &[String]) -> Result<Line> {
    let start = Instant::now();
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = smol::block_on(async {
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other("no CONNACK within 10 s"));
            }
            match Conn::open(addr, "startup", 60).await {
                Ok(_) => return Ok(start.elapsed()),
                Err(_) => Timer::after(Duration::from_micros(100)).await,
            };
        }
    });
    let pid = child.id().to_string();
    let idle = rss_kib(&pid);
    let _ = child.kill();
    let _ = child.wait();
    let elapsed = result?;
    Ok(vec![
        (
            "startup_ms",
            format!("{:.2}", elapsed.as_secs_f64() * 1000.0),
        ),
        ("rss_at_start_kb", idle.to_string()),
    ])
}
