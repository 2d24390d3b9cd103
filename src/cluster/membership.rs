//! Who is in the cluster: SWIM gossip through the `foca` crate over UDP on the cluster
//! port, every datagram behind a MAC (`wire.rs`). One task owns foca, the socket and
//! one timer heap; seeds and DNS answers are announced to again and again, so a node
//! that was cut off (or started first) finds the others when they appear, without an
//! operator. What it learns goes out as [`MemberEvent`]s; contents never travel here,
//! only on the links.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, RandomState};
use std::net::{SocketAddr, UdpSocket};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use smol::Async;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;

use super::settings::{self, ClusterSettings};
use super::wire::{self, DATAGRAM_MAC_LEN};
use crate::throttle::Throttle;

/// How often seeds and DNS names are announced to while some are not members.
const RESEED_EVERY: Duration = Duration::from_secs(5);
/// How often a DNS name is resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// The largest datagram, MAC included: below a LAN's MTU.
const MAX_DATAGRAM: usize = 1400;

/// A node as gossip knows it: its name, where it is reached, and which life of it
/// this is (a restarted node is a new incarnation and wins over its old self).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    pub incarnation: u64,
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What membership tells the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Up(NodeId),
    Down(NodeId),
}

/// What the cluster asks of membership.
pub enum Command {
    /// Tell the others this node is leaving (SIGTERM), then stop.
    Leave(Sender<()>),
}

/// Bad datagrams come in floods (a misconfigured node, a scanner): logged throttled.
static BAD_DATAGRAMS: Throttle = Throttle::new();

type Membership = Foca<NodeId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>;

/// Binds the gossip socket; the task runs from [`run`].
pub fn bind(settings: &ClusterSettings) -> Result<Async<UdpSocket>, String> {
    Async::<UdpSocket>::bind(settings.bind)
        .map_err(|e| format!("[cluster] cannot bind {} (UDP): {e}", settings.bind))
}

/// Gossip until told to leave. `me` is this node; `events` hears of the others.
pub async fn run(
    socket: Async<UdpSocket>,
    settings: ClusterSettings,
    me: NodeId,
    events: Sender<MemberEvent>,
    commands: Receiver<Command>,
) {
    let mut config = Config::new_lan(NonZeroU32::new(5).expect("5 is not 0"));
    config.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - 1 - DATAGRAM_MAC_LEN)
        .expect("the datagram has room for foca's bytes");
    let seed = RandomState::new().hash_one(Instant::now());
    let mut foca: Membership = Foca::new(
        me.clone(),
        config,
        SmallRng::seed_from_u64(seed),
        PostcardCodec,
    );
    let mut driver = Driver {
        runtime: AccumulatingRuntime::new(),
        timers: BinaryHeap::new(),
        order: 0,
        socket,
        secret: settings.secret.clone(),
        me,
        events,
        sealed: Vec::with_capacity(MAX_DATAGRAM),
        leaving: false,
    };
    // Names are resolved beside the gossip, not in its turn: a slow DNS server must
    // not hold up the datagrams that tell the others this node is alive.
    let (answers, resolved) = smol::channel::bounded(1);
    let mut resolver = std::pin::pin!(resolve_again_and_again(settings, answers));
    let mut seeds: Vec<SocketAddr> = Vec::new();
    let mut next_reseed = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM + 64];
    loop {
        // Timers first: a stream of datagrams must not keep them from firing.
        driver.fire_due_timers(&mut foca);
        driver.drain(&mut foca).await;
        let now = Instant::now();
        if now >= next_reseed {
            // Announce to every seed that is not a member (yet, or any more): a node
            // started first, or cut off, finds the others as they appear.
            let members: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().addr).collect();
            for addr in seeds
                .iter()
                .filter(|a| **a != driver.me.addr && !members.contains(a))
            {
                let stranger = NodeId {
                    name: String::new(),
                    addr: *addr,
                    incarnation: 0,
                };
                if let Err(e) = foca.announce(stranger, &mut driver.runtime) {
                    log::debug!("cluster: announce to {addr} failed: {e}");
                }
            }
            driver.drain(&mut foca).await;
            next_reseed = now + RESEED_EVERY;
        }
        let next_timer = driver.timers.peek().map(|Reverse((at, _, _))| *at);
        let wake_at = next_timer.map_or(next_reseed, |t| t.min(next_reseed));
        let input = async { Input::Datagram(driver.socket.recv_from(&mut buf).await) }
            .or(async { Input::Command(commands.recv().await.ok()) })
            .or(async {
                match resolved.recv().await {
                    Ok(addrs) => Input::Seeds(addrs),
                    Err(_) => std::future::pending().await,
                }
            })
            .or(async {
                resolver.as_mut().await;
                Input::Tick
            })
            .or(async {
                smol::Timer::at(wake_at).await;
                Input::Tick
            })
            .await;
        match input {
            Input::Datagram(Ok((n, from))) => {
                match wire::open_datagram(&driver.secret, &buf[..n]) {
                    Ok(payload) => {
                        if let Err(e) = foca.handle_data(payload, &mut driver.runtime) {
                            log::debug!("cluster: datagram from {from} not taken: {e}");
                        }
                    }
                    Err(e) => {
                        if let Some(left_out) = BAD_DATAGRAMS.check(Instant::now()) {
                            log::warn!(
                                "cluster: dropped a datagram from {from}: {e}{}",
                                crate::throttle::left_out(left_out)
                            );
                        }
                    }
                }
            }
            Input::Datagram(Err(e)) => {
                log::debug!("cluster: gossip socket: {e}");
            }
            Input::Command(Some(Command::Leave(done))) => {
                driver.leaving = true;
                if let Err(e) = foca.leave_cluster(&mut driver.runtime) {
                    log::debug!("cluster: leaving: {e}");
                }
                driver.drain(&mut foca).await;
                log::info!("cluster: left the cluster");
                let _ = done.send(()).await;
                return;
            }
            Input::Command(None) => return,
            Input::Seeds(addrs) => {
                if seeds.is_empty() && !addrs.is_empty() {
                    next_reseed = Instant::now();
                }
                seeds = addrs;
            }
            Input::Tick => {}
        }
        driver.drain(&mut foca).await;
    }
}

enum Input {
    Datagram(std::io::Result<(usize, SocketAddr)>),
    Command(Option<Command>),
    /// The seeds' and the DNS name's addresses, resolved again.
    Seeds(Vec<SocketAddr>),
    Tick,
}

/// What foca asked for, carried out: datagrams sent, timers scheduled (one heap, in
/// order: foca wants its events in the order it asked for them), notifications passed
/// on.
struct Driver {
    runtime: AccumulatingRuntime<NodeId>,
    /// (when, order asked, the timer).
    timers: BinaryHeap<Reverse<(Instant, u64, Timer<NodeId>)>>,
    order: u64,
    socket: Async<UdpSocket>,
    secret: Vec<u8>,
    me: NodeId,
    events: Sender<MemberEvent>,
    sealed: Vec<u8>,
    /// Leaving (SIGTERM): foca then reports this node down, which is no news.
    leaving: bool,
}

impl Driver {
    /// Hands foca the timers that are due, in the order it asked for them.
    fn fire_due_timers(&mut self, foca: &mut Membership) {
        let now = Instant::now();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            if let Err(e) = foca.handle_timer(timer, &mut self.runtime) {
                log::debug!("cluster: gossip timer: {e}");
            }
        }
    }

    async fn drain(&mut self, foca: &mut Membership) {
        while let Some((to, data)) = self.runtime.to_send() {
            wire::seal_datagram(&self.secret, &data, &mut self.sealed);
            if let Err(e) = self.socket.send_to(&self.sealed, to.addr).await {
                log::debug!("cluster: gossip to {}: {e}", to.addr);
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let at = Instant::now()
                .checked_add(after)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
            self.order += 1;
            self.timers.push(Reverse((at, self.order, timer)));
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.notify(notification, foca).await;
        }
    }

    async fn notify(&mut self, notification: OwnedNotification<NodeId>, foca: &mut Membership) {
        match notification {
            OwnedNotification::Defunct | OwnedNotification::Rejoin(_) if self.leaving => {}
            OwnedNotification::MemberUp(id) if id.name == self.me.name => {
                // Both nodes see the other: each says so, and neither links to it.
                log::error!(
                    "cluster: node {} at {} has this node's name: node names must be unique; ignoring it",
                    id.name,
                    id.addr
                );
            }
            OwnedNotification::MemberUp(id) => {
                log::info!("cluster: node {} at {} is up", id.name, id.addr);
                let _ = self.events.send(MemberEvent::Up(id)).await;
            }
            OwnedNotification::MemberDown(id) if id.name != self.me.name => {
                log::warn!("cluster: node {} at {} is down", id.name, id.addr);
                let _ = self.events.send(MemberEvent::Down(id)).await;
            }
            OwnedNotification::MemberDown(_) => {}
            OwnedNotification::Rename(old, new) => {
                log::info!(
                    "cluster: node {} at {} restarted (incarnation {} -> {})",
                    new.name,
                    new.addr,
                    old.incarnation,
                    new.incarnation
                );
            }
            OwnedNotification::Rejoin(id) => {
                log::warn!(
                    "cluster: this node was declared down; rejoined as incarnation {}",
                    id.incarnation
                );
                self.me = id;
            }
            OwnedNotification::Defunct => {
                log::warn!("cluster: this node was declared down; rejoining");
                if let Some(renewed) = foca.identity().renew() {
                    self.me = renewed.clone();
                    if let Err(e) = foca.change_identity(renewed, &mut self.runtime) {
                        log::debug!("cluster: rejoining: {e}");
                    }
                }
            }
            OwnedNotification::Idle => {
                log::info!("cluster: no other node reachable; announcing to the seeds");
            }
            OwnedNotification::Active => log::info!("cluster: in touch with the cluster"),
        }
    }
}

/// Resolves the seeds and every record of the DNS name every [`RESOLVE_EVERY`] and
/// sends the addresses (a name that does not resolve is left out until the next time).
async fn resolve_again_and_again(settings: ClusterSettings, answers: Sender<Vec<SocketAddr>>) {
    let mut names = settings.seeds.clone();
    names.extend(settings.dns.clone());
    loop {
        let asked = names.clone();
        let addrs = smol::unblock(move || {
            let mut out = Vec::new();
            for name in &asked {
                match settings::resolve(name) {
                    Ok(addrs) => out.extend(addrs),
                    Err(e) => log::debug!("cluster: seed {name}: {e}"),
                }
            }
            out.sort();
            out.dedup();
            out
        })
        .await;
        if answers.send(addrs).await.is_err() {
            // Nobody listens any more; never finishing keeps the race above simple.
            std::future::pending::<()>().await;
        }
        smol::Timer::after(RESOLVE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_identity_wins_over_the_old_one() {
        let old = NodeId {
            name: "a".into(),
            addr: "127.0.0.2:5370".parse().unwrap(),
            incarnation: 7,
        };
        let new = old.renew().unwrap();
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert_eq!(new.addr(), old.addr());
    }
}
