//! From an accepted stream to a connected client: the first packet read within the
//! connect timeout, decoded as CONNECT and handed to the client state machine, whose
//! answer (a CONNACK, or a refusal after its delay) is written here.

use std::future::poll_fn;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use smol::Timer;
use smol::future::FutureExt;

use super::Stream;
use super::connection::{Connected, ConnectionConfig, flush_with_timeout, poll_read_some};
use super::proxy;
use crate::broker::{self, Admitted, Arrival, Broker, Claimed, Client, Refusal, Role};
use crate::protocol::{self, DecodeError, ReasonCode};
use crate::throttle::Throttle;

/// What the handshake starts from, boxed so that its inputs are not part of every
/// idle connection's task; the stream comes back in [`Connected`].
pub(super) struct Start<S> {
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    pub(super) turned_away: Option<(ReasonCode, String)>,
    pub(super) rbuf: BytesMut,
    pub(super) identity: Option<String>,
    pub(super) broker: Arc<Broker>,
    pub(super) config: Arc<ConnectionConfig>,
}

/// Refusals for limits come in floods: their log line is throttled.
static LIMIT_REFUSALS: Throttle = Throttle::new();

/// In a cluster, takes a network client's session from whichever node holds it
/// before it is opened here (see `broker::Replicator::claim`).
async fn claim(broker: &Broker, mut admitted: Admitted) -> Result<Admitted, Refusal> {
    let Some(cluster) = broker.replicator() else {
        return Ok(admitted);
    };
    match cluster
        .claim(admitted.client_id(), admitted.clean_start())
        .await
    {
        Claimed::AsAsked => Ok(admitted),
        Claimed::Fresh => {
            admitted.start_fresh();
            Ok(admitted)
        }
        Claimed::Refused(reason) => Err(admitted.refuse_unavailable(reason)),
    }
}

/// Reads and answers CONNECT: the connection with its accepted client and what
/// arrived after CONNECT, or `None` when it was refused or closed.
pub(super) async fn handshake<S: Stream>(start: Box<Start<S>>) -> Option<Connected<S>> {
    let Start {
        stream: mut owned_stream,
        peer,
        turned_away,
        mut rbuf,
        identity,
        broker,
        config,
    } = *start;
    let (broker, stream) = (&broker, &mut owned_stream);
    let max_packet = broker.settings.max_packet_size as usize;
    // A wrapped listener counts its probes before its PROXY header, TLS or WebSocket:
    // a client that closes after those is no balancer's check.
    let unwrapped =
        config.proxy_trusted.is_none() && config.tls.is_none() && config.ws_path.is_none();
    let first = read_frame(stream, &mut rbuf, max_packet).or(async {
        Timer::after(config.connect_timeout).await;
        Err(FirstPacketError::Timeout)
    });
    let connect = match first.await {
        Ok(frame) => match protocol::decode_connect_frame(frame) {
            Ok(connect) => connect,
            Err(e) => {
                log::warn!(
                    "refused connection addr={peer} listener={}: {}",
                    config.listener,
                    e.error
                );
                let connack = broker::answer_malformed(&e);
                if !connack.is_empty() {
                    let _ = flush_with_timeout(stream, &connack).await;
                }
                return None;
            }
        },
        Err(FirstPacketError::Timeout) => {
            log::info!(
                "closed connection addr={peer}: no CONNECT within {:?}",
                config.connect_timeout
            );
            return None;
        }
        Err(FirstPacketError::Closed) => {
            if rbuf.is_empty() && unwrapped {
                broker.metrics.probes.fetch_add(1, Ordering::Relaxed);
            }
            log::debug!("connection addr={peer} closed before CONNECT");
            return None;
        }
        Err(FirstPacketError::Io(e)) => {
            if rbuf.is_empty() && unwrapped {
                broker.metrics.probes.fetch_add(1, Ordering::Relaxed);
            }
            log::debug!("connection addr={peer} failed before CONNECT: {e}");
            return None;
        }
        Err(FirstPacketError::Decode(e)) => {
            log::warn!(
                "refused connection addr={peer} listener={}: {e}",
                config.listener
            );
            return None;
        }
    };
    let (version, clean_start, keep_alive) =
        (connect.protocol, connect.clean_start, connect.keep_alive);
    let requested_id = connect.client_id.clone();
    let arrival = Arrival {
        peer,
        listener: &config.listener,
        auth: &config.auth,
        turned_away,
        identity: identity.as_deref(),
        identity_as_username: config.identity_as_username,
        role: config.role,
        wall: SystemTime::now(),
        entropy: RandomState::new().hash_one(Instant::now()),
    };
    let admitted = match Client::admit(broker, arrival, connect) {
        // Boxed: a broker without a cluster does not carry the claim's state in every
        // handshake.
        Ok(admitted) if broker.replicator().is_some() && admitted.role() == Role::Network => {
            Box::pin(claim(broker, admitted)).await
        }
        admitted => admitted,
    };
    let client = match admitted {
        Ok(admitted) => *admitted.open(Instant::now()),
        Err(refusal) => {
            let Refusal {
                code,
                reason,
                connack,
                flood,
                delay,
            } = refusal;
            if flood {
                LIMIT_REFUSALS.refused(peer, &config.listener, format_args!("{reason} ({code})"));
            } else {
                log::warn!(
                    "refused client_id={requested_id:?} proto={} addr={peer} listener={}: {reason} ({code})",
                    version.name(),
                    config.listener
                );
            }
            if let Some(delay) = delay {
                Timer::after(delay).await;
            }
            if !connack.is_empty() {
                let _ = flush_with_timeout(stream, &connack).await;
            }
            return None;
        }
    };
    log::info!(
        "client connected client_id={} proto={}{} addr={peer} listener={} clean_start={clean_start} keep_alive={keep_alive}",
        client.client_id(),
        version.name(),
        if client.is_bridge() { " (bridge)" } else { "" },
        config.listener
    );
    Some(Connected::new(owned_stream, client, rbuf))
}

enum FirstPacketError {
    Timeout,
    Closed,
    Io(io::Error),
    Decode(DecodeError),
}

/// Reads until one whole packet is buffered and returns it.
async fn read_frame<S: Stream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<bytes::Bytes, FirstPacketError> {
    loop {
        // Refuse on the first byte rather than wait for a whole frame of garbage (but
        // long enough to name a PROXY header sent to a listener that expects none).
        if let Some(&first) = rbuf.first() {
            if proxy::looks_like_header(rbuf) {
                return Err(FirstPacketError::Decode(DecodeError::protocol(
                    "a PROXY protocol header, but this listener has proxy_protocol = false",
                )));
            }
            let maybe_proxy = rbuf.len() < proxy::V2_SIGNATURE.len()
                && (proxy::V2_SIGNATURE.starts_with(rbuf) || b"PROXY ".starts_with(rbuf));
            if first != 0x10 && !maybe_proxy {
                return Err(FirstPacketError::Decode(DecodeError::protocol(format!(
                    "first packet starts with byte {first:#04x}, not CONNECT"
                ))));
            }
        }
        if let Some(len) =
            protocol::frame_len(rbuf, max_packet).map_err(FirstPacketError::Decode)?
        {
            if rbuf.len() >= len {
                return Ok(rbuf.split_to(len).freeze());
            }
        }
        let n = poll_fn(|cx| poll_read_some(stream, cx, rbuf))
            .await
            .map_err(FirstPacketError::Io)?;
        if n == 0 {
            return Err(FirstPacketError::Closed);
        }
    }
}
