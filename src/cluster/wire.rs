//! The cluster's wire formats, pure: the membership protocol's datagrams (foca's bytes
//! behind a version byte and a MAC) and the frames of a link between two nodes
//! (postcard, each behind its length), with the proofs by which both ends of a link
//! show they hold the secret. No I/O here, so that all of it is tested (and fuzzed)
//! on its own.

use serde::{Deserialize, Serialize};

use crate::broker::{ImageDelivery, SessionImage, SubscriptionList};
use subtle::ConstantTimeEq;

/// The link protocol versions this build speaks, newest last. A `Hello` names them,
/// and the two ends use the newest they share, so nodes of mixed versions can run side
/// by side through a rolling upgrade.
pub const LINK_VERSIONS: &[u16] = &[1, 2];
/// The first link version with sessions that move between nodes (ownership records,
/// claims, handovers): a node of version 1 is never sent those frames.
pub const SESSIONS_VERSION: u16 = 2;

/// The first bytes of every link, so that something else reaching the port (an MQTT
/// client, a scanner) is told apart at once.
pub const LINK_MAGIC: [u8; 8] = *b"TERN-CL1";

/// The version byte in front of every datagram.
const DATAGRAM_VERSION: u8 = 1;
/// Bytes of HMAC-SHA256 kept on a datagram: enough against forgery on a site's network.
pub const DATAGRAM_MAC_LEN: usize = 16;
/// The largest frame a link accepts once both ends proved they hold the secret: the
/// largest MQTT packet (256 MiB), with room for the frame's own fields. Frames of many
/// items (retained messages, packets) are cut at [`BATCH_BYTES`].
pub const MAX_FRAME: usize = (256 << 20) + 65536;
/// Where a frame of many items is cut.
pub const BATCH_BYTES: usize = 1 << 20;

/// HMAC-SHA256 over `parts`, with ring's implementation (rustls links it already).
fn mac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.sign().as_ref());
    out
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    TooShort,
    Version(u8),
    Mac,
}

impl std::fmt::Display for DatagramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatagramError::TooShort => write!(f, "shorter than its header"),
            DatagramError::Version(v) => write!(f, "datagram version {v}, this node speaks 1"),
            DatagramError::Mac => write!(f, "wrong MAC (another secret, or forged)"),
        }
    }
}

/// `payload` (foca's bytes) as a datagram: version, MAC of both, payload.
pub fn seal_datagram(secret: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(DATAGRAM_VERSION);
    let tag = mac(secret, &[&[DATAGRAM_VERSION], payload]);
    out.extend_from_slice(&tag[..DATAGRAM_MAC_LEN]);
    out.extend_from_slice(payload);
}

/// The payload of a datagram sealed with `secret`.
pub fn open_datagram<'a>(secret: &[u8], datagram: &'a [u8]) -> Result<&'a [u8], DatagramError> {
    if datagram.len() < 1 + DATAGRAM_MAC_LEN {
        return Err(DatagramError::TooShort);
    }
    if datagram[0] != DATAGRAM_VERSION {
        return Err(DatagramError::Version(datagram[0]));
    }
    let (tag, payload) = datagram[1..].split_at(DATAGRAM_MAC_LEN);
    let expected = mac(secret, &[&[DATAGRAM_VERSION], payload]);
    if expected[..DATAGRAM_MAC_LEN].ct_eq(tag).into() {
        Ok(payload)
    } else {
        Err(DatagramError::Mac)
    }
}

/// The first frame each end of a link sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub versions: Vec<u16>,
    pub node: String,
    /// What the other end's proof is over, so that an old proof cannot be replayed.
    pub nonce: [u8; 16],
    /// QoS 1 and 2 messages from the other end this node takes in flight at once.
    pub receive_maximum: u16,
}

/// The second frame of each end: its proof, and whether its session for the other end
/// (its outbox) has nothing in flight. When it has not, the other end starts its
/// session for this one afresh: QoS 2 packet ids it still holds from an older outbox
/// (one dropped after `route_hold`, or kept in memory only) would otherwise take new
/// messages that reuse them for duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    pub mac: [u8; 32],
    pub outbox_idle: bool,
}

/// One route a node announces: a filter its sessions hold. For a shared subscription
/// (`$share/GROUP/FILTER`), `shared` is the identifier messages sent for one of its
/// members carry back, and `members` how many it has on that node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    pub filter: String,
    pub shared: Option<u32>,
    pub members: u32,
}

/// A retained message's version: last writer wins by this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Hybrid logical clock: milliseconds in the high 48 bits, a counter below.
    pub clock: u64,
    /// Breaks ties between nodes: a hash of the writer's name.
    pub node: u64,
}

/// One topic's retained state as nodes exchange it: a message, or its deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedEntry {
    pub topic: String,
    pub stamp: Stamp,
    /// `None`: deleted (a tombstone, kept a while so the deletion wins everywhere).
    pub message: Option<RetainedMessage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedMessage {
    pub payload: Vec<u8>,
    pub qos: u8,
    /// The message's v5 properties as the broker forwards them (encoded once).
    pub properties: Vec<u8>,
    /// Seconds left before it expires.
    pub expiry: Option<u32>,
}

/// What a node tells its peers about itself, for `/api/v4/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub version: String,
    /// Unix seconds it started at.
    pub started: u64,
    pub connections: u64,
}

/// A link's frames after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// This end's proof that it holds the secret (see [`proof`]).
    Proof(Proof),
    /// MQTT 5 packets (PUBLISH, PUBREL) from this node's session for the peer (its
    /// outbox) to the peer's session for this node: the peer's broker takes them as
    /// from a client. Several packets, whole, one after the other.
    Forward(Vec<u8>),
    /// The answers (PUBACK, PUBREC, PUBCOMP) of this node's session for the peer to
    /// what the peer forwarded.
    Acknowledge(Vec<u8>),
    /// The routes of this node: all of them (`full`), or what changed since `since`.
    Routes {
        version: u64,
        full: bool,
        add: Vec<Route>,
        remove: Vec<String>,
    },
    /// A digest of the routes as of `version`; a peer that holds another asks again.
    RouteDigest {
        version: u64,
        digest: u64,
    },
    RoutesRequest,
    /// Retained messages set or deleted; all of them after a digest differed.
    Retained(Vec<RetainedEntry>),
    RetainedDigest {
        digest: u64,
        count: u64,
    },
    RetainedRequest,
    Status(NodeStatus),
    Ping,
    Pong,
    // Link version 2 and later (see [`SESSIONS_VERSION`]).
    /// Ownership records changed (or all of them, at a link's start).
    Owners(Vec<OwnerRecord>),
    /// A client connected to the sender under `client_id`: close any connection
    /// here, hand over a persistent session (unless `clean_start`), answer `Handover`.
    Claim {
        id: u64,
        client_id: String,
        clean_start: bool,
        epoch: u64,
    },
    /// The answer to claim `id`: the session's image, or none. Unasked (`id` 0): a
    /// copy the sender held of a session the receiver owns now (`resume` false: what
    /// it held is sent again), or a session the sender passes on as it stops (`resume`:
    /// its messages in flight keep their packet ids).
    Handover {
        id: u64,
        client_id: String,
        image: Option<SessionImage>,
        resume: bool,
    },
    /// The sender leaves the cluster on purpose (it stops): it no longer counts among
    /// the nodes a node expects to see.
    Leaving,
}

/// Who owns a client session cluster-wide, and what any node needs to answer for it
/// when the owner cannot: its subscriptions (to rebuild it) and its will (to publish
/// it should the owner die).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub client_id: String,
    pub owner: String,
    /// When the owner's client connected (hybrid logical clock): the later CONNECT wins.
    pub epoch: u64,
    /// The record's own version (same clock), for changes under one owner.
    pub stamp: u64,
    pub protocol: u8,
    /// Session Expiry Interval; 0 for a session that ends with its connection.
    pub expiry: u32,
    pub subscriptions: SubscriptionList,
    pub will: Option<ImageDelivery>,
    /// The session ended: kept a while so that the end wins over an older copy.
    pub ended: bool,
}

impl OwnerRecord {
    /// The order in which records of one client id replace each other.
    pub fn version(&self) -> (u64, u64, &str) {
        (self.epoch, self.stamp, &self.owner)
    }
}

/// `records` as frames of about [`BATCH_BYTES`] each.
pub fn owner_frames(records: Vec<OwnerRecord>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for record in records {
        bytes += record.client_id.len()
            + record.owner.len()
            + record
                .subscriptions
                .iter()
                .map(|s| s.0.len() + 8)
                .sum::<usize>()
            + record
                .will
                .as_ref()
                .map_or(0, |w| w.payload.len() + w.topic.len())
            + 48;
        batch.push(record);
        if bytes >= BATCH_BYTES {
            frames.push(Frame::Owners(std::mem::take(&mut batch)));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        frames.push(Frame::Owners(batch));
    }
    frames
}

/// `entries` as frames of about [`BATCH_BYTES`] each.
pub fn retained_frames(entries: Vec<RetainedEntry>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for entry in entries {
        bytes += entry.topic.len()
            + entry
                .message
                .as_ref()
                .map_or(0, |m| m.payload.len() + m.properties.len())
            + 32;
        batch.push(entry);
        if bytes >= BATCH_BYTES {
            frames.push(Frame::Retained(std::mem::take(&mut batch)));
            bytes = 0;
        }
    }
    if !batch.is_empty() || frames.is_empty() {
        frames.push(Frame::Retained(batch));
    }
    frames
}

/// Why a link's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    Garbage(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "a frame of {n} bytes (at most {MAX_FRAME})"),
            FrameError::Garbage(why) => write!(f, "a frame that does not decode: {why}"),
        }
    }
}

/// Appends `frame` behind its length (4 bytes, little endian).
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let out_len_before = out.len();
    // postcard into an extending Vec cannot fail for these types.
    let encoded = postcard::to_extend(frame, std::mem::take(out)).unwrap_or_default();
    *out = encoded;
    let len = (out.len() - out_len_before) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Takes one whole frame off the front of `buf`; `Ok(None)` while it is incomplete.
pub fn decode_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    decode_frame_within(buf, MAX_FRAME)
}

/// As [`decode_frame`], for frames of at most `max` bytes (a handshake's are small:
/// a stranger may not make a node hold a large buffer before it proved anything).
pub fn decode_frame_within(buf: &mut Vec<u8>, max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame =
        postcard::from_bytes(&buf[4..4 + len]).map_err(|e| FrameError::Garbage(e.to_string()));
    buf.drain(..4 + len);
    frame.map(Some)
}

/// The newest link version both ends speak.
pub fn common_version(theirs: &[u16]) -> Option<u16> {
    LINK_VERSIONS
        .iter()
        .rev()
        .find(|v| theirs.contains(v))
        .copied()
}

/// Which end of a link gives a proof. The dialler proves first and the acceptor only
/// once it has checked that; the two proofs are over different inputs, so neither end
/// can be made to produce a proof that a stranger could pass on as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialler = 1,
    Acceptor = 2,
}

/// Both ends' hellos as a proof covers them.
pub struct Transcript<'a> {
    pub dialler: &'a Hello,
    pub acceptor: &'a Hello,
}

/// The proof `side` gives that it holds the secret: over both ends' names and nonces,
/// and what it says of its outbox.
pub fn proof(secret: &[u8], side: Side, t: &Transcript<'_>, outbox_idle: bool) -> [u8; 32] {
    let len = |s: &str| (s.len() as u32).to_le_bytes();
    let (d, a) = (&t.dialler.node, &t.acceptor.node);
    mac(
        secret,
        &[
            b"tern-cluster-link",
            &[side as u8, u8::from(outbox_idle)],
            &t.dialler.nonce,
            &t.acceptor.nonce,
            &len(d),
            d.as_bytes(),
            &len(a),
            a.as_bytes(),
        ],
    )
}

/// Whether `given` is `side`'s proof for this transcript.
pub fn check_proof(secret: &[u8], side: Side, t: &Transcript<'_>, given: &Proof) -> bool {
    proof(secret, side, t, given.outbox_idle)
        .ct_eq(&given.mac)
        .into()
}

/// A fresh nonce from the operating system's generator.
pub fn nonce() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; 16];
    // The system generator does not fail on Linux once booted; a zero nonce would
    // still only let an old proof be replayed, which the other end's nonce prevents.
    let _ = ring::rand::SystemRandom::new().fill(&mut out);
    out
}

/// A 64-bit digest of items in any order (each hashed with FNV-1a, then added), so
/// that two nodes holding the same set compute the same digest however they built it.
pub fn digest<'a>(items: impl Iterator<Item = &'a [u8]>) -> u64 {
    items.fold(0u64, |sum, item| sum.wrapping_add(fnv1a(item)))
}

/// FNV-1a: a stable hash (std's is randomly keyed per process).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_opens_only_with_its_secret() {
        let mut sealed = Vec::new();
        seal_datagram(b"0123456789abcdef", b"foca bytes", &mut sealed);
        assert_eq!(
            open_datagram(b"0123456789abcdef", &sealed),
            Ok(&b"foca bytes"[..])
        );
        assert_eq!(
            open_datagram(b"another secret!!", &sealed),
            Err(DatagramError::Mac)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_datagram(b"0123456789abcdef", &tampered),
            Err(DatagramError::Mac)
        );
        sealed[0] = 9;
        assert_eq!(
            open_datagram(b"0123456789abcdef", &sealed),
            Err(DatagramError::Version(9))
        );
        assert_eq!(open_datagram(b"", &[1, 2]), Err(DatagramError::TooShort));
    }

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let frames = vec![
            Frame::Hello(Hello {
                magic: LINK_MAGIC,
                versions: LINK_VERSIONS.to_vec(),
                node: "a".into(),
                nonce: [7; 16],
                receive_maximum: 32,
            }),
            Frame::Routes {
                version: 3,
                full: true,
                add: vec![Route {
                    filter: "$share/g/t/#".into(),
                    shared: Some(1),
                    members: 2,
                }],
                remove: vec![],
            },
            Frame::Forward(vec![0x30, 0x03, 0x00, 0x01, b't']),
            Frame::Ping,
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            encode_frame(f, &mut bytes);
        }
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in bytes {
            buf.push(b);
            while let Some(frame) = decode_frame(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversize_and_garbage_frames_are_errors() {
        let mut huge = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        assert!(matches!(
            decode_frame(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
        let mut garbage = vec![3, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame(&mut garbage),
            Err(FrameError::Garbage(_))
        ));
    }

    fn hello(node: &str, nonce: u8) -> Hello {
        Hello {
            magic: LINK_MAGIC,
            versions: LINK_VERSIONS.to_vec(),
            node: node.into(),
            nonce: [nonce; 16],
            receive_maximum: 32,
        }
    }

    #[test]
    fn proofs_bind_the_side_both_nonces_and_both_names() {
        let (a, b) = (hello("a", 1), hello("b", 2));
        let t = Transcript {
            dialler: &a,
            acceptor: &b,
        };
        let given = |side, idle| Proof {
            mac: proof(b"s", side, &t, idle),
            outbox_idle: idle,
        };
        let p = given(Side::Dialler, true);
        assert!(check_proof(b"s", Side::Dialler, &t, &p));
        // Reflected as the other side's, or its outbox claim flipped: refused.
        assert!(!check_proof(b"s", Side::Acceptor, &t, &p));
        let flipped = Proof {
            outbox_idle: false,
            ..p.clone()
        };
        assert!(!check_proof(b"s", Side::Dialler, &t, &flipped));
        assert!(!check_proof(b"t", Side::Dialler, &t, &p));
        // The same proof for another pair of nonces or names: refused.
        for (d, acc) in [
            (hello("a", 3), hello("b", 2)),
            (hello("a", 1), hello("c", 2)),
        ] {
            let other = Transcript {
                dialler: &d,
                acceptor: &acc,
            };
            assert!(!check_proof(b"s", Side::Dialler, &other, &p));
        }
        // Names are length-prefixed: "ab" + "c" is not "a" + "bc".
        let (ab, c) = (hello("ab", 1), hello("c", 2));
        let (a2, bc) = (hello("a", 1), hello("bc", 2));
        let t1 = Transcript {
            dialler: &ab,
            acceptor: &c,
        };
        let t2 = Transcript {
            dialler: &a2,
            acceptor: &bc,
        };
        assert_ne!(
            proof(b"s", Side::Dialler, &t1, true),
            proof(b"s", Side::Dialler, &t2, true)
        );
        assert_ne!(nonce(), nonce());
        assert_eq!(common_version(&[1, 2]), Some(2));
        assert_eq!(common_version(&[1]), Some(1));
        assert_eq!(common_version(&[7]), None);
    }

    #[test]
    fn digests_ignore_order() {
        let a = digest([&b"x"[..], b"y", b"z"].into_iter());
        let b = digest([&b"z"[..], b"x", b"y"].into_iter());
        assert_eq!(a, b);
        assert_ne!(a, digest([&b"x"[..], b"y"].into_iter()));
    }
}
