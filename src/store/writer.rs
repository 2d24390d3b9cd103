//! The writer thread: owns the database connection and turns batches of ops into
//! transactions (group commit: a batch closes `commit_interval` after its first op, or
//! at `commit_batch_ops`, or at shutdown).
//!
//! Ops reach it from many connections at once and not always in the order their effects
//! happened: a subscriber can acknowledge a delivery before the publisher that queued it
//! has handed in the op that adds it. The writer sorts this out itself. It knows which
//! deliveries it has stored this run (`live`), so an acknowledgement of one it has not
//! seen yet is remembered (`early_done`, `early_sent`) and applied when the addition
//! arrives; and a delivery added and acknowledged within one batch is never written.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::record::{StoreClock, encode_ids, save_clock, wall_secs};
use super::schema;
use super::{FAILURES_KEPT, Op, Shared, StoreConfig};
use crate::message::Stage;
use crate::throttle::Throttle;

/// How often messages that expired on disk are deleted while Tern runs.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// How often an idle writer checks whether the wall clock jumped (NTP setting the
/// clock of a board without one): the store clock is saved again at once when it did,
/// so the next start does not count the jump as time Tern was stopped.
const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(60);
const CLOCK_JUMP: u64 = 30;

/// What the writer knows about what is stored, to sort out ops that arrive late or
/// early (see the module doc).
struct Known {
    /// Sessions with a row: ops for any other are late and dropped.
    sids: HashSet<u64>,
    /// Deliveries stored this run and not yet done: seq -> sid.
    live: HashMap<u64, u64>,
    /// Acknowledgements and sends of deliveries not stored yet: seq -> sid (, state).
    early_done: HashMap<u64, u64>,
    early_sent: HashMap<u64, (u64, u16, Stage)>,
}

impl Known {
    fn forget(&mut self, sid: u64) {
        self.sids.remove(&sid);
        self.live.retain(|_, s| *s != sid);
        self.early_done.retain(|_, s| *s != sid);
        self.early_sent.retain(|_, (s, _, _)| *s != sid);
    }
}

/// Deletes a session and everything it owns (its messages are collected after).
fn delete_session(tx: &Transaction<'_>, sid: u64) -> rusqlite::Result<()> {
    for sql in [
        "DELETE FROM session WHERE sid = ?1",
        "DELETE FROM subscription WHERE sid = ?1",
        "DELETE FROM inbound_qos2 WHERE sid = ?1",
        "DELETE FROM delivery WHERE sid = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([sid as i64])?;
    }
    Ok(())
}

enum Next {
    Batch(Vec<Op>, u64),
    Idle,
    Stop,
}

pub struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    clock: StoreClock,
    config: StoreConfig,
    /// Deliveries below this sequence number were stored by an earlier run.
    loaded_below_seq: u64,
    known: Known,
    last_purge: Instant,
    failures_logged: Throttle,
    /// When the store clock was last saved, and the wall clock then.
    clock_saved: (Instant, u64),
    /// A store this start created, to sync before anything is committed.
    unsynced: Option<PathBuf>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        shared: Arc<Shared>,
        clock: StoreClock,
        config: StoreConfig,
        live_sids: HashSet<u64>,
        loaded_below_seq: u64,
    ) -> Writer {
        conn.set_prepared_statement_cache_capacity(32);
        Writer {
            conn,
            shared,
            clock,
            config,
            loaded_below_seq,
            known: Known {
                sids: live_sids,
                live: HashMap::new(),
                early_done: HashMap::new(),
                early_sent: HashMap::new(),
            },
            last_purge: Instant::now(),
            failures_logged: Throttle::new(),
            clock_saved: (Instant::now(), wall_secs()),
            unsynced: None,
        }
    }

    /// The store at `path` was just created and is not synced (see `schema::sync_new`).
    pub fn sync_before_first_commit(&mut self, path: PathBuf) {
        self.unsynced = Some(path);
    }

    /// Syncs a newly created store, once; false while that fails, and then no batch
    /// may be committed (it would be acknowledged without a store that survives).
    fn sync_new_store(&mut self) -> bool {
        let Some(path) = &self.unsynced else {
            return true;
        };
        match schema::sync_new(path) {
            Ok(()) => {
                self.unsynced = None;
                true
            }
            Err(e) => {
                log::error!("{e}; the next batch tries again");
                false
            }
        }
    }

    pub fn run(mut self) {
        // At once, while nothing waits on it yet; a batch that comes first waits.
        self.sync_new_store();
        loop {
            match self.next_batch() {
                Next::Batch(ops, last_ticket) => {
                    let first_ticket = last_ticket + 1 - ops.len() as u64;
                    let started = Instant::now();
                    let ok = self.sync_new_store() && self.commit(ops);
                    self.shared.last_failed.store(!ok, Ordering::Relaxed);
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    let micros = started.elapsed().as_micros() as u64;
                    self.shared
                        .commit_micros
                        .fetch_add(micros, Ordering::Relaxed);
                    if !ok {
                        self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                        let mut failures = self
                            .shared
                            .failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        if failures.len() >= FAILURES_KEPT {
                            failures.pop_front();
                        }
                        failures.push_back((first_ticket, last_ticket));
                    }
                    self.shared.finished.store(last_ticket, Ordering::Release);
                    self.shared.committed.notify(usize::MAX);
                }
                Next::Idle => {
                    if let Err(e) = self.save_clock_if_wall_jumped() {
                        log::warn!("saving the store clock failed: {e}");
                    }
                    if self.last_purge.elapsed() >= PURGE_EVERY {
                        self.last_purge = Instant::now();
                        if let Err(e) = self.purge_expired() {
                            log::warn!("purging expired messages from the store failed: {e}");
                        }
                    }
                }
                Next::Stop => break,
            }
        }
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            log::warn!("store checkpoint at shutdown failed: {e}");
        }
        log::info!("store closed: {}", self.config.path.display());
    }

    fn next_batch(&self) -> Next {
        let mut pending = self.shared.pending();
        loop {
            let stopping = self.shared.stopping.load(Ordering::SeqCst);
            let now = Instant::now();
            if !pending.ops.is_empty() {
                let deadline = pending.first_at.unwrap_or(now) + self.config.commit_interval;
                if stopping || now >= deadline || pending.ops.len() >= self.config.commit_batch_ops
                {
                    pending.first_at = None;
                    return Next::Batch(std::mem::take(&mut pending.ops), pending.last_ticket);
                }
                pending = self
                    .shared
                    .wake_writer
                    .wait_timeout(pending, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else if stopping {
                return Next::Stop;
            } else {
                let (guard, timeout) = self
                    .shared
                    .wake_writer
                    .wait_timeout(pending, CLOCK_CHECK_EVERY)
                    .unwrap_or_else(|p| p.into_inner());
                pending = guard;
                if timeout.timed_out() && pending.ops.is_empty() {
                    return Next::Idle;
                }
            }
        }
    }

    /// Applies one batch in one transaction; false when it could not be committed.
    fn commit(&mut self, ops: Vec<Op>) -> bool {
        match self.apply(&ops) {
            Ok(()) => true,
            Err(e) => {
                if let Some(suppressed) = self.failures_logged.check(Instant::now()) {
                    let more = crate::throttle::left_out(suppressed);
                    log::error!(
                        "cannot write to the store {}: {e}: {} changes not stored{more}",
                        self.config.path.display(),
                        ops.len()
                    );
                }
                false
            }
        }
    }

    fn apply(&mut self, ops: &[Op]) -> rusqlite::Result<()> {
        // A delivery added and done within this batch never needs to be written, nor
        // the packet id of one sent and done within it (a drained backlog: one UPDATE
        // fewer per message).
        let mut added = HashSet::new();
        let mut cancelled = HashSet::new();
        let mut done = HashSet::new();
        let mut last_retained: HashMap<&str, usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::AddDelivery { seq, .. } => {
                    added.insert(*seq);
                }
                Op::DoneDelivery { seq, .. } => {
                    done.insert(*seq);
                    if added.contains(seq) {
                        cancelled.insert(*seq);
                    }
                }
                Op::SetRetained { topic, .. } => {
                    last_retained.insert(topic.as_str(), i);
                }
                _ => {}
            }
        }
        let tx = self.conn.transaction()?;
        let mut writes = 0usize;
        let mut gc: Vec<u64> = Vec::new();
        let mut gc_all = false;
        let mut messages_written: HashSet<u64> = HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            writes += 1;
            match op {
                Op::PutSession {
                    sid,
                    client_id,
                    protocol,
                    expiry,
                    disconnected_at,
                } => {
                    self.known.sids.insert(*sid);
                    // A session that replaced another under this client id: the old
                    // one's delete normally comes first, but a row left behind (by a
                    // failed batch) must not fail every later batch on the unique id.
                    let replaced: Option<i64> = tx
                        .prepare_cached(
                            "SELECT sid FROM session WHERE client_id = ?1 AND sid != ?2",
                        )?
                        .query_row(params![&**client_id, *sid as i64], |r| r.get(0))
                        .optional()?;
                    if let Some(old) = replaced {
                        delete_session(&tx, old as u64)?;
                        self.known.forget(old as u64);
                    }
                    tx.prepare_cached(
                        "INSERT INTO session (sid, client_id, protocol, expiry, disconnected_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (sid) DO UPDATE SET protocol = excluded.protocol,
                           expiry = excluded.expiry, disconnected_at = excluded.disconnected_at",
                    )?
                    .execute(params![
                        *sid as i64,
                        &**client_id,
                        protocol,
                        expiry,
                        disconnected_at.map(|s| s as i64)
                    ])?;
                }
                Op::DeleteSession { sid } => {
                    if !self.known.sids.contains(sid) {
                        writes -= 1;
                        continue;
                    }
                    delete_session(&tx, *sid)?;
                    self.known.forget(*sid);
                    gc_all = true;
                }
                _ if op_sid(op).is_some_and(|sid| !self.known.sids.contains(&sid)) => {
                    // A late op for a session discarded since.
                    writes -= 1;
                }
                Op::SetWill { sid, will } => {
                    let (blob, due) = match will {
                        Some((blob, due)) => (Some(blob.as_slice()), Some(*due as i64)),
                        None => (None, None),
                    };
                    tx.prepare_cached(
                        "UPDATE session SET will = ?2, will_due = ?3 WHERE sid = ?1",
                    )?
                    .execute(params![*sid as i64, blob, due])?;
                }
                Op::PutSubscription {
                    sid,
                    filter,
                    options,
                    identifier,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO subscription (sid, filter, options, identifier)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        *sid as i64,
                        filter,
                        options,
                        identifier
                    ])?;
                }
                Op::DeleteSubscription { sid, filter } => {
                    tx.prepare_cached("DELETE FROM subscription WHERE sid = ?1 AND filter = ?2")?
                        .execute(params![*sid as i64, filter])?;
                }
                Op::AddDelivery { seq, .. } if cancelled.contains(seq) => {
                    self.known.early_sent.remove(seq);
                    writes -= 1;
                }
                Op::AddDelivery {
                    sid,
                    seq,
                    message,
                    qos,
                    retain,
                    subscription_ids,
                    shared,
                } => {
                    if self.known.early_done.remove(seq).is_some() {
                        // Acknowledged before it was stored: nothing to keep.
                        self.known.early_sent.remove(seq);
                        writes -= 1;
                        continue;
                    }
                    let message_id = message.store_id.get().map_or(0, |id| id.get());
                    if messages_written.insert(message_id) {
                        tx.prepare_cached(
                            "INSERT OR IGNORE INTO message
                               (id, topic, payload, qos, retain, properties, expires_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )?
                        .execute(params![
                            message_id as i64,
                            message.topic.as_str(),
                            &message.payload[..],
                            message.qos as u8,
                            message.retain,
                            &message.forwarded_properties[..],
                            message.expires_at.map(|at| self.clock.secs(at) as i64)
                        ])?;
                    }
                    let sent = self.known.early_sent.remove(seq);
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO delivery (seq, sid, message_id, qos, retain,
                           subscription_ids, shared, packet_id, stage)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        *seq as i64,
                        *sid as i64,
                        message_id as i64,
                        *qos as u8,
                        retain,
                        encode_ids(subscription_ids),
                        shared.as_deref(),
                        sent.map(|(_, packet_id, _)| packet_id),
                        sent.map(|(_, _, stage)| stage.code())
                    ])?;
                    self.known.live.insert(*seq, *sid);
                }
                Op::SentDelivery {
                    sid,
                    seq,
                    packet_id,
                    stage,
                } => {
                    if done.contains(seq) {
                        // Its DoneDelivery follows in this batch (an ack comes after
                        // its send), which deletes the row or forgets the delivery.
                        writes -= 1;
                    } else if *seq < self.loaded_below_seq || self.known.live.contains_key(seq) {
                        tx.prepare_cached(
                            "UPDATE delivery SET packet_id = ?2, stage = ?3 WHERE seq = ?1",
                        )?
                        .execute(params![
                            *seq as i64,
                            packet_id,
                            stage.code()
                        ])?;
                    } else {
                        self.known
                            .early_sent
                            .insert(*seq, (*sid, *packet_id, *stage));
                        writes -= 1;
                    }
                }
                Op::DoneDelivery {
                    sid,
                    seq,
                    message_id,
                } => {
                    if cancelled.contains(seq) {
                        writes -= 1;
                        gc.push(*message_id);
                    } else if *seq < self.loaded_below_seq || self.known.live.remove(seq).is_some()
                    {
                        tx.prepare_cached("DELETE FROM delivery WHERE seq = ?1")?
                            .execute([*seq as i64])?;
                        gc.push(*message_id);
                    } else {
                        self.known.early_done.insert(*seq, *sid);
                        writes -= 1;
                    }
                }
                Op::AddInbound { sid, packet_id } => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO inbound_qos2 (sid, packet_id) VALUES (?1, ?2)",
                    )?
                    .execute(params![*sid as i64, packet_id])?;
                }
                Op::DeleteInbound { sid, packet_id } => {
                    tx.prepare_cached(
                        "DELETE FROM inbound_qos2 WHERE sid = ?1 AND packet_id = ?2",
                    )?
                    .execute(params![*sid as i64, packet_id])?;
                }
                Op::SetRetained { topic, message } => {
                    if last_retained.get(topic.as_str()) != Some(&i) {
                        // A later write to the same topic in this batch replaces it.
                        writes -= 1;
                        continue;
                    }
                    match message {
                        Some(m) => {
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO retained
                                   (topic, payload, qos, properties, expires_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5)",
                            )?
                            .execute(params![
                                topic,
                                &m.payload[..],
                                m.qos as u8,
                                &m.forwarded_properties[..],
                                m.expires_at.map(|at| self.clock.secs(at) as i64)
                            ])?;
                        }
                        None => {
                            tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?
                                .execute([topic])?;
                        }
                    }
                }
            }
        }
        gc.sort_unstable();
        gc.dedup();
        if gc_all {
            tx.prepare_cached(
                "DELETE FROM message WHERE NOT EXISTS
                   (SELECT 1 FROM delivery WHERE delivery.message_id = message.id)",
            )?
            .execute([])?;
        } else {
            for id in gc {
                tx.prepare_cached(
                    "DELETE FROM message WHERE id = ?1 AND NOT EXISTS
                       (SELECT 1 FROM delivery WHERE delivery.message_id = ?1)",
                )?
                .execute([id as i64])?;
            }
        }
        let committed = finish(tx, writes, &self.clock)?;
        self.saved_clock(committed);
        Ok(())
    }

    fn save_clock_if_wall_jumped(&mut self) -> rusqlite::Result<()> {
        let (at, wall) = self.clock_saved;
        let expected = wall + at.elapsed().as_secs();
        let now = wall_secs();
        if now.abs_diff(expected) <= CLOCK_JUMP {
            return Ok(());
        }
        log::info!(
            "the wall clock jumped by {} s: saving the store clock",
            now as i64 - expected as i64
        );
        let tx = self.conn.transaction()?;
        let committed = finish(tx, 1, &self.clock)?;
        self.saved_clock(committed);
        Ok(())
    }

    fn saved_clock(&mut self, committed: bool) {
        if committed {
            self.clock_saved = (Instant::now(), wall_secs());
        }
    }

    fn purge_expired(&mut self) -> rusqlite::Result<()> {
        let now = self.clock.now_secs() as i64;
        let tx = self.conn.transaction()?;
        let deleted = tx.execute(
            "DELETE FROM delivery WHERE message_id IN
               (SELECT id FROM message WHERE expires_at IS NOT NULL AND expires_at <= ?1)",
            [now],
        )? + tx.execute(
            "DELETE FROM retained WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [now],
        )?;
        if deleted > 0 {
            tx.execute(
                "DELETE FROM message WHERE NOT EXISTS
                   (SELECT 1 FROM delivery WHERE delivery.message_id = message.id)",
                [],
            )?;
            log::info!("purged {deleted} expired messages from the store");
        }
        let committed = finish(tx, deleted, &self.clock)?;
        self.saved_clock(committed);
        Ok(())
    }
}

fn op_sid(op: &Op) -> Option<u64> {
    match op {
        Op::SetWill { sid, .. }
        | Op::PutSubscription { sid, .. }
        | Op::DeleteSubscription { sid, .. }
        | Op::AddDelivery { sid, .. }
        | Op::SentDelivery { sid, .. }
        | Op::DoneDelivery { sid, .. }
        | Op::AddInbound { sid, .. }
        | Op::DeleteInbound { sid, .. } => Some(*sid),
        _ => None,
    }
}

/// Commits when something was written (and saves the store clock with it); a batch
/// that cancelled out costs no write and no sync. Whether it committed.
fn finish(tx: Transaction<'_>, writes: usize, clock: &StoreClock) -> rusqlite::Result<bool> {
    if writes == 0 {
        tx.rollback()?;
        return Ok(false);
    }
    save_clock(&tx, clock)?;
    tx.commit()?;
    Ok(true)
}
