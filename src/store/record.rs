//! How stored things are encoded, and the store clock that stored expiries are
//! measured on.
//!
//! A Raspberry Pi has no real-time clock: it boots with the time it saved at shutdown
//! (or 1970) and jumps when NTP answers. Expiries are therefore not stored as wall-clock
//! deadlines but on a clock of the store's own, in seconds, that runs with the
//! monotonic clock while Tern runs. Across a restart it moves on by the wall-clock gap
//! only when the wall clock went forward; a clock that went back counts as no time
//! passed, so nothing expires early because of it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::message::{Message, SmallStr};
use crate::protocol::QoS;

#[derive(Debug, Clone, Copy)]
pub struct StoreClock {
    base: Instant,
    base_secs: u64,
}

impl StoreClock {
    pub fn new(base_secs: u64) -> StoreClock {
        StoreClock {
            base: Instant::now(),
            base_secs,
        }
    }

    /// The store-clock second of a monotonic instant.
    pub fn secs(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.base) {
            Some(after) => self.base_secs + after.as_secs(),
            None => self
                .base_secs
                .saturating_sub(self.base.duration_since(at).as_secs()),
        }
    }

    /// The monotonic instant of a store-clock second. One from before this machine
    /// booted cannot be represented: it becomes the clock's start, which only ever makes
    /// a session or message live longer, never shorter.
    pub fn instant(&self, secs: u64) -> Instant {
        if secs >= self.base_secs {
            self.base + Duration::from_secs(secs - self.base_secs)
        } else {
            self.base
                .checked_sub(Duration::from_secs(self.base_secs - secs))
                .unwrap_or(self.base)
        }
    }

    pub fn now_secs(&self) -> u64 {
        self.secs(Instant::now())
    }
}

pub fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
        row.get::<_, i64>(0)
    })
    .optional()
    .map(|v| v.map(|v| v.max(0) as u64))
}

/// Picks the store clock up where the last run left it.
pub fn resume_clock(conn: &Connection) -> rusqlite::Result<StoreClock> {
    let clock = meta(conn, "clock_secs")?.unwrap_or(0);
    let saved_wall = meta(conn, "wall_secs")?.unwrap_or(0);
    let now = wall_secs();
    let gap = if saved_wall > 0 && now > saved_wall {
        now - saved_wall
    } else {
        0
    };
    if saved_wall > now {
        log::warn!(
            "the wall clock ({now}) is behind the time the store last saw ({saved_wall}): \
             counting no time as passed while Tern was stopped"
        );
    }
    Ok(StoreClock::new(clock + gap))
}

/// Saves the store clock beside the wall clock, in the writer's transaction.
pub fn save_clock(conn: &Connection, clock: &StoreClock) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?;
    stmt.execute(rusqlite::params!["clock_secs", clock.now_secs() as i64])?;
    stmt.execute(rusqlite::params!["wall_secs", wall_secs() as i64])?;
    Ok(())
}

/// A message outside the message table (a pending will), encoded with postcard.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub properties: Vec<u8>,
    pub expires_at: Option<u64>,
}

impl StoredMessage {
    pub fn from_message(message: &Message, clock: &StoreClock) -> StoredMessage {
        StoredMessage {
            topic: message.topic.as_str().to_owned(),
            payload: message.payload.to_vec(),
            qos: message.qos as u8,
            retain: message.retain,
            properties: message.forwarded_properties.to_vec(),
            expires_at: message.expires_at.map(|at| clock.secs(at)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<StoredMessage> {
        postcard::from_bytes(bytes).ok()
    }

    pub fn into_message(self, origin: Option<SmallStr>, clock: &StoreClock) -> Message {
        message_from_parts(
            self.topic,
            self.payload,
            self.qos,
            self.retain,
            self.properties,
            self.expires_at,
            origin,
            clock,
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub fn message_from_parts(
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    properties: Vec<u8>,
    expires_at: Option<u64>,
    origin: Option<SmallStr>,
    clock: &StoreClock,
) -> Message {
    let qos = QoS::from_u8(qos).unwrap_or(QoS::AtLeastOnce);
    Message {
        forwarded_properties: Bytes::from(properties),
        expires_at: expires_at.map(|secs| clock.instant(secs)),
        origin,
        ..Message::new(topic, Bytes::from(payload), qos, retain)
    }
}

/// Subscription identifiers as a BLOB of postcard varints.
pub fn encode_ids(ids: &[u32]) -> Option<Vec<u8>> {
    (!ids.is_empty()).then(|| postcard::to_allocvec(ids).unwrap_or_default())
}

pub fn decode_ids(bytes: Option<Vec<u8>>) -> Vec<u32> {
    bytes
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_round_trips_and_never_goes_before_its_start() {
        let clock = StoreClock::new(1_000);
        let later = clock.instant(1_060);
        assert_eq!(clock.secs(later), 1_060);
        assert_eq!(clock.secs(clock.instant(1_000)), 1_000);
        // Far before this boot: clamped to the clock's start, never a panic.
        let long_ago = clock.instant(0);
        assert!(clock.secs(long_ago) <= 1_000);
    }

    #[test]
    fn stored_messages_and_ids_round_trip() {
        let stored = StoredMessage {
            topic: "a/b".into(),
            payload: b"will".to_vec(),
            qos: 1,
            retain: true,
            properties: vec![1, 2],
            expires_at: Some(42),
        };
        assert_eq!(StoredMessage::decode(&stored.encode()), Some(stored));
        assert_eq!(
            decode_ids(encode_ids(&[1, 300, 70_000])),
            vec![1, 300, 70_000]
        );
        assert_eq!(encode_ids(&[]), None);
    }
}
