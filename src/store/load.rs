//! Reading the store back. At start: purge what expired while Tern was stopped, then
//! load session metadata (subscriptions, inbound QoS 2 ids, pending wills, how much each
//! has queued) and the retained messages, before any listener accepts. Queued payloads
//! stay on disk until their session resumes ([`backlog`]).

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::record::{StoreClock, StoredMessage, decode_ids, message_from_parts};
use crate::message::{Message, Seq, Stage};
use crate::protocol::QoS;

pub struct StoredSession {
    pub sid: u64,
    pub client_id: String,
    pub protocol: u8,
    pub expiry: u32,
    /// Store-clock second it was disconnected (a session connected when the last run
    /// stopped counts as disconnected when this run started).
    pub disconnected_at: u64,
    pub will: Option<(StoredMessage, u64)>,
    /// Filter, options byte, subscription identifier.
    pub subscriptions: Vec<(String, u8, Option<u32>)>,
    pub inbound_qos2: Vec<u16>,
    pub backlog_messages: usize,
    pub backlog_bytes: usize,
}

pub struct StoredDelivery {
    pub seq: Seq,
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared: Option<String>,
    /// Sent before the last run stopped: its packet id and the acknowledgement awaited.
    pub inflight: Option<(u16, Stage)>,
}

pub struct Loaded {
    pub sessions: Vec<StoredSession>,
    pub retained: Vec<Message>,
    pub next_sid: u64,
    pub next_seq: u64,
    pub next_message_id: u64,
    pub purged_sessions: usize,
    pub purged_deliveries: usize,
}

/// Deletes sessions, queued messages and retained messages that expired while Tern was
/// stopped, and rows no session owns. Returns (sessions, deliveries) deleted.
fn purge_expired(conn: &mut Connection, now: u64) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction()?;
    let now = now as i64;
    tx.execute(
        "UPDATE session SET disconnected_at = ?1 WHERE disconnected_at IS NULL",
        [now],
    )?;
    let sessions = tx.execute(
        "DELETE FROM session WHERE expiry != 4294967295 AND disconnected_at + expiry <= ?1",
        [now],
    )?;
    tx.execute(
        "DELETE FROM subscription WHERE sid NOT IN (SELECT sid FROM session)",
        [],
    )?;
    tx.execute(
        "DELETE FROM inbound_qos2 WHERE sid NOT IN (SELECT sid FROM session)",
        [],
    )?;
    let mut deliveries = tx.execute(
        "DELETE FROM delivery WHERE sid NOT IN (SELECT sid FROM session)",
        [],
    )?;
    deliveries += tx.execute(
        "DELETE FROM delivery WHERE message_id IN
           (SELECT id FROM message WHERE expires_at IS NOT NULL AND expires_at <= ?1)",
        [now],
    )?;
    tx.execute(
        "DELETE FROM message WHERE NOT EXISTS
           (SELECT 1 FROM delivery WHERE delivery.message_id = message.id)",
        [],
    )?;
    tx.execute(
        "DELETE FROM retained WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now],
    )?;
    tx.commit()?;
    Ok((sessions, deliveries))
}

pub fn load_all(conn: &mut Connection, clock: &StoreClock) -> rusqlite::Result<Loaded> {
    let (purged_sessions, purged_deliveries) = purge_expired(conn, clock.now_secs())?;
    let mut subscriptions: HashMap<u64, Vec<(String, u8, Option<u32>)>> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT sid, filter, options, identifier FROM subscription")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            subscriptions.entry(row.get(0)?).or_default().push((
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
            ));
        }
    }
    let mut inbound: HashMap<u64, Vec<u16>> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT sid, packet_id FROM inbound_qos2")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            inbound.entry(row.get(0)?).or_default().push(row.get(1)?);
        }
    }
    let mut backlog: HashMap<u64, (usize, usize)> = HashMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT d.sid, count(*), sum(length(m.payload) + length(CAST(m.topic AS BLOB)))
             FROM delivery d JOIN message m ON m.id = d.message_id GROUP BY d.sid",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            backlog.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
        }
    }
    let mut sessions = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT sid, client_id, protocol, expiry, disconnected_at, will, will_due FROM session",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let sid: u64 = row.get(0)?;
            let will: Option<Vec<u8>> = row.get(5)?;
            let will_due: Option<u64> = row.get(6)?;
            let will = match (will.as_deref().and_then(StoredMessage::decode), will_due) {
                (Some(message), Some(due)) => Some((message, due)),
                _ => None,
            };
            let (backlog_messages, backlog_bytes) = backlog.remove(&sid).unwrap_or_default();
            sessions.push(StoredSession {
                sid,
                client_id: row.get(1)?,
                protocol: row.get(2)?,
                expiry: row.get(3)?,
                disconnected_at: row.get::<_, Option<u64>>(4)?.unwrap_or(0),
                will,
                subscriptions: subscriptions.remove(&sid).unwrap_or_default(),
                inbound_qos2: inbound.remove(&sid).unwrap_or_default(),
                backlog_messages,
                backlog_bytes,
            });
        }
    }
    let mut retained = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT topic, payload, qos, properties, expires_at FROM retained")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            retained.push(message_from_parts(
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                true,
                row.get(3)?,
                row.get(4)?,
                None,
                clock,
            ));
        }
    }
    let next = |sql: &str| -> rusqlite::Result<u64> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64 + 1)
    };
    Ok(Loaded {
        sessions,
        retained,
        next_sid: next("SELECT coalesce(max(sid), 0) FROM session")?,
        next_seq: next("SELECT coalesce(max(seq), 0) FROM delivery")?,
        next_message_id: next("SELECT coalesce(max(id), 0) FROM message")?,
        purged_sessions,
        purged_deliveries,
    })
}

/// The deliveries a session had stored before `below_seq` (this run's first), oldest
/// first.
pub fn backlog(
    conn: &Connection,
    sid: u64,
    below_seq: u64,
    clock: &StoreClock,
) -> rusqlite::Result<Vec<StoredDelivery>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.seq, d.qos, d.retain, d.subscription_ids, d.shared, d.packet_id, d.stage,
                m.id, m.topic, m.payload, m.qos, m.retain, m.properties, m.expires_at
         FROM delivery d JOIN message m ON m.id = d.message_id
         WHERE d.sid = ?1 AND d.seq < ?2 ORDER BY d.seq",
    )?;
    let mut rows = stmt.query(params![sid as i64, below_seq as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let message = message_from_parts(
            row.get(8)?,
            row.get(9)?,
            row.get(10)?,
            row.get(11)?,
            row.get(12)?,
            row.get(13)?,
            None,
            clock,
        );
        let message_id: u64 = row.get(7)?;
        if let Some(id) = std::num::NonZeroU64::new(message_id) {
            message.store_id.set(id);
        }
        let packet_id: Option<u16> = row.get(5)?;
        let stage: Option<u8> = row.get(6)?;
        let seq: u64 = row.get(0)?;
        let Some(seq) = Seq::new(seq) else {
            // The store numbers deliveries from 1: a 0 is a row this store never wrote.
            continue;
        };
        out.push(StoredDelivery {
            seq,
            message,
            qos: QoS::from_u8(row.get(1)?).unwrap_or(QoS::AtLeastOnce),
            retain: row.get(2)?,
            subscription_ids: decode_ids(row.get(3)?),
            shared: row.get(4)?,
            inflight: packet_id.zip(stage.and_then(Stage::from_code)),
        });
    }
    Ok(out)
}
