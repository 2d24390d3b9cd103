//! Durable sessions: what must outlive a connection, and the broker itself, kept in
//! SQLite.
//!
//! The broker never waits for the disk while it routes. It describes each change as an
//! [`Op`] and hands it here; one writer thread owns the database connection and applies
//! the ops in group-committed transactions (WAL, prepared statements). Every op gets a
//! ticket, a sequence number; the writer publishes the highest ticket it has made
//! durable, and a connection that owes a client an acknowledgement (PUBACK, PUBREC,
//! SUBACK, ...) holds that packet back until its ticket is durable (`strict`), or sends
//! it at once (`batched`).
//!
//! Only what outlives a connection is ever stored: the broker emits ops for sessions
//! that persist (v3 clean session 0, v5 session expiry > 0) and for retained messages.
//! A delivery that is added and acknowledged within one commit interval cancels out in
//! the writer and never touches the disk, which is what keeps an SD card alive when the
//! persistent subscribers keep up.
//!
//! `schema.rs` creates and migrates the database and quarantines a corrupt one;
//! `load.rs` reads it back at start and a session's queue when it resumes;
//! `writer.rs` is the writer thread; `record.rs` the encodings and the store clock.

mod load;
mod record;
mod schema;
mod writer;

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};

pub use load::{Loaded, StoredDelivery, StoredSession};
pub use record::{StoreClock, StoredMessage, wall_secs};
pub use schema::{OnCorrupt, Quarantined};

pub use crate::message::Ticket;
use crate::message::{Message, Seq, SmallStr, Stage};
use crate::protocol::QoS;

/// How much the broker promises about what it acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge only after the stored effects are committed and synced.
    Strict,
    /// Acknowledge at once; commit every interval (a crash loses at most one).
    Batched,
    /// Keep nothing on disk.
    Memory,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub durability: Durability,
    /// A batch closes this long after its first op, or at `commit_batch_ops`.
    pub commit_interval: Duration,
    pub commit_batch_ops: usize,
    /// The database file stops growing here (SQLite's `max_page_count`); 0 is no limit.
    pub max_store_bytes: u64,
    /// SQLite's page cache per connection (`PRAGMA cache_size`), in KiB.
    pub cache_kib: u64,
    pub on_corrupt: OnCorrupt,
}

/// One change to what is stored. Sessions are named by their store id (`sid`), unique
/// per session for the life of the database, so a late op for a session that has
/// since been discarded is recognised and dropped.
#[derive(Debug)]
pub enum Op {
    PutSession {
        sid: u64,
        client_id: SmallStr,
        protocol: u8,
        expiry: u32,
        /// Store-clock seconds; `None` while connected.
        disconnected_at: Option<u64>,
    },
    DeleteSession {
        sid: u64,
    },
    /// A will waiting for its delay, encoded; `None` clears it.
    SetWill {
        sid: u64,
        will: Option<(Vec<u8>, u64)>,
    },
    PutSubscription {
        sid: u64,
        filter: String,
        options: u8,
        identifier: Option<u32>,
    },
    DeleteSubscription {
        sid: u64,
        filter: String,
    },
    /// A message queued for a session; the message row is written with its first
    /// delivery.
    AddDelivery {
        sid: u64,
        seq: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared: Option<Arc<str>>,
    },
    /// A queued delivery sent with `packet_id`, now waiting in `stage`.
    SentDelivery {
        sid: u64,
        seq: u64,
        packet_id: u16,
        stage: Stage,
    },
    DoneDelivery {
        sid: u64,
        seq: u64,
        message_id: u64,
    },
    AddInbound {
        sid: u64,
        packet_id: u16,
    },
    DeleteInbound {
        sid: u64,
        packet_id: u16,
    },
    /// The retained message of a topic; `None` deletes it.
    SetRetained {
        topic: String,
        message: Option<Arc<Message>>,
    },
}

/// Takes the next number of a counter that starts at 1 and is never reset.
fn next_number(counter: &AtomicU64) -> NonZeroU64 {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN)
}

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Pending,
    Durable,
    /// Its batch could not be committed (disk full, I/O error).
    Failed,
}

/// Failed batches remembered for connections still waiting on one of their tickets.
const FAILURES_KEPT: usize = 64;

struct Pending {
    ops: Vec<Op>,
    /// The ticket of the last op handed in.
    last_ticket: u64,
    first_at: Option<Instant>,
}

/// What the writer and the broker share.
struct Shared {
    pending: Mutex<Pending>,
    wake_writer: Condvar,
    stopping: AtomicBool,
    /// The highest ticket the writer has finished with, committed or failed.
    finished: AtomicU64,
    failures: Mutex<VecDeque<(u64, u64)>>,
    /// Notified after each batch.
    committed: Event,
    /// Batches that failed, for the metrics.
    failed_batches: AtomicU64,
    /// The last batch failed (a full disk, the size limit): `/status` says 503.
    last_failed: AtomicBool,
    /// Batches committed (or tried), and the time they took in microseconds.
    commits: AtomicU64,
    commit_micros: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Store {
    /// The SQLite file.
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Closed first at shutdown: the last connection to close checkpoints and removes
    /// the WAL, and a read-only one cannot.
    reader: Mutex<Option<rusqlite::Connection>>,
    pub clock: StoreClock,
    pub durability: Durability,
    commit_batch_ops: usize,
    next_sid: AtomicU64,
    next_seq: AtomicU64,
    next_message_id: AtomicU64,
    /// Deliveries with a sequence number below this were stored by an earlier run.
    pub loaded_below_seq: u64,
    pub quarantined: Option<Quarantined>,
    /// The store's lock file, held until the process ends.
    _lock: std::fs::File,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Strict => "strict",
            Durability::Batched => "batched",
            Durability::Memory => "memory",
        })
    }
}

impl Store {
    /// Opens (or creates) the database, reads back what it holds and starts the writer.
    pub fn open(config: &StoreConfig) -> Result<(Arc<Store>, Loaded), String> {
        let opened = schema::open(config)?;
        let mut conn = opened.connection;
        let clock =
            record::resume_clock(&conn).map_err(|e| format!("cannot read the store clock: {e}"))?;
        let loaded = load::load_all(&mut conn, &clock)
            .map_err(|e| format!("cannot load the store {}: {e}", config.path.display()))?;
        let reader = schema::open_reader(&config.path, config.cache_kib)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                last_ticket: 0,
                first_at: None,
            }),
            wake_writer: Condvar::new(),
            stopping: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            failures: Mutex::new(VecDeque::new()),
            committed: Event::new(),
            failed_batches: AtomicU64::new(0),
            last_failed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            commit_micros: AtomicU64::new(0),
        });
        let live_sids = loaded.sessions.iter().map(|s| s.sid).collect();
        let mut writer = writer::Writer::new(
            conn,
            shared.clone(),
            clock,
            config.clone(),
            live_sids,
            loaded.next_seq,
        );
        if opened.unsynced {
            writer.sync_before_first_commit(config.path.clone());
        }
        let handle = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the store writer thread: {e}"))?;
        let store = Arc::new(Store {
            path: config.path.clone(),
            shared,
            writer: Mutex::new(Some(handle)),
            reader: Mutex::new(Some(reader)),
            clock,
            durability: config.durability,
            commit_batch_ops: config.commit_batch_ops.max(1),
            next_sid: AtomicU64::new(loaded.next_sid),
            next_seq: AtomicU64::new(loaded.next_seq),
            next_message_id: AtomicU64::new(loaded.next_message_id),
            loaded_below_seq: loaded.next_seq,
            quarantined: opened.quarantined,
            _lock: opened.lock,
        });
        Ok((store, loaded))
    }

    /// For the metrics: commits, microseconds spent in them, bytes of the file and its
    /// WAL.
    pub fn figures(&self) -> (u64, u64, u64) {
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        (
            self.shared.commits.load(Ordering::Relaxed),
            self.shared.commit_micros.load(Ordering::Relaxed),
            size(&self.path) + size(std::path::Path::new(&wal)),
        )
    }

    pub fn is_strict(&self) -> bool {
        self.durability == Durability::Strict
    }

    /// A session id never used in this database; numbered from 1.
    pub fn new_sid(&self) -> NonZeroU64 {
        next_number(&self.next_sid)
    }

    /// A delivery's sequence number, never used in this database; numbered from 1.
    pub fn new_seq(&self) -> Seq {
        next_number(&self.next_seq)
    }

    /// The message's store id, assigning one the first time it is stored.
    pub fn message_id(&self, message: &Message) -> u64 {
        message
            .store_id
            .get_or_give(|| next_number(&self.next_message_id))
            .get()
    }

    /// Hands ops to the writer, in order and together (they land in one transaction);
    /// returns the ticket that is durable once they all are (and all before them);
    /// `None` only when nothing was ever handed in.
    pub fn submit(&self, ops: impl IntoIterator<Item = Op>) -> Option<Ticket> {
        let mut pending = self.shared.pending();
        let before = pending.ops.len();
        pending.ops.extend(ops);
        let added = (pending.ops.len() - before) as u64;
        pending.last_ticket += added;
        let ticket = Ticket::new(pending.last_ticket);
        if before == 0 && added > 0 {
            pending.first_at = Some(Instant::now());
            drop(pending);
            self.shared.wake_writer.notify_one();
        } else if pending.ops.len() >= self.commit_batch_ops {
            drop(pending);
            self.shared.wake_writer.notify_one();
        }
        ticket
    }

    /// The ticket of the last op handed in so far.
    pub fn last_ticket(&self) -> Option<Ticket> {
        Ticket::new(self.shared.pending().last_ticket)
    }

    pub fn ticket_state(&self, ticket: Ticket) -> TicketState {
        let ticket = ticket.get();
        if self.shared.finished.load(Ordering::Acquire) < ticket {
            return TicketState::Pending;
        }
        let failures = self
            .shared
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failures
            .iter()
            .any(|&(from, to)| (from..=to).contains(&ticket))
        {
            TicketState::Failed
        } else {
            TicketState::Durable
        }
    }

    /// Notified after every batch: listen, then check [`Store::ticket_state`].
    pub fn listen(&self) -> EventListener {
        self.shared.committed.listen()
    }

    /// Whether the last commit failed, so what clients ask to keep is being refused.
    pub fn is_failing(&self) -> bool {
        self.shared.last_failed.load(Ordering::Relaxed)
    }

    pub fn failed_batches(&self) -> u64 {
        self.shared.failed_batches.load(Ordering::Relaxed)
    }

    /// A resumed session's queue as the last run left it: the deliveries stored before
    /// this run started, oldest first.
    pub fn load_backlog(&self, sid: u64) -> Result<Vec<StoredDelivery>, String> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reader) = reader.as_ref() else {
            return Err(format!(
                "cannot read the stored queue of session {sid}: the store is closed"
            ));
        };
        load::backlog(reader, sid, self.loaded_below_seq, &self.clock)
            .map_err(|e| format!("cannot read the stored queue of session {sid}: {e}"))
    }

    /// Commits what is pending and stops the writer; called once, at shutdown.
    pub fn close(&self) {
        drop(self.reader.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_writer.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn open(name: &str, interval: Duration) -> (Arc<Store>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tern-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("tern.db");
        let config = StoreConfig {
            path: path.clone(),
            durability: Durability::Strict,
            commit_interval: interval,
            commit_batch_ops: 10_000,
            max_store_bytes: 0,
            cache_kib: 512,
            on_corrupt: OnCorrupt::Quarantine,
        };
        (Store::open(&config).unwrap().0, path)
    }

    fn rows(path: &std::path::Path, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn session(store: &Store) -> (u64, Op) {
        let sid = store.new_sid().get();
        let op = Op::PutSession {
            sid,
            client_id: format!("c{sid}").into(),
            protocol: 5,
            expiry: 60,
            disconnected_at: None,
        };
        (sid, op)
    }

    fn add(store: &Store, sid: u64) -> (Op, Op) {
        let message = Arc::new(Message::new(
            "t",
            Bytes::from_static(b"payload"),
            QoS::AtLeastOnce,
            false,
        ));
        let message_id = store.message_id(&message);
        let seq = store.new_seq().get();
        let add = Op::AddDelivery {
            sid,
            seq,
            message,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared: None,
        };
        (
            add,
            Op::DoneDelivery {
                sid,
                seq,
                message_id,
            },
        )
    }

    fn wait_durable(store: &Store, ticket: Option<Ticket>) {
        let ticket = ticket.expect("ops were handed in");
        while store.ticket_state(ticket) == TicketState::Pending {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(store.ticket_state(ticket), TicketState::Durable);
    }

    #[test]
    fn a_store_made_by_this_start_commits_once_the_writer_has_synced_it() {
        let (store, path) = open("first-commit", Duration::from_millis(1));
        let (_, put) = session(&store);
        wait_durable(&store, store.submit([put]));
        store.close();
        assert_eq!(rows(&path, "session"), 1);
    }

    #[test]
    fn a_delivery_done_within_one_batch_is_never_written() {
        let (store, path) = open("cancel", Duration::from_secs(3600));
        let (sid, put) = session(&store);
        let (added, done) = add(&store, sid);
        let (kept, _) = add(&store, sid);
        store.submit([put, added, done, kept]);
        store.close();
        assert_eq!(rows(&path, "delivery"), 1);
        assert_eq!(
            rows(&path, "message"),
            1,
            "the cancelled one's message is not kept"
        );
    }

    #[test]
    fn a_delivery_sent_and_done_within_one_batch_is_deleted() {
        let (store, path) = open("sent-done", Duration::from_millis(1));
        let (sid, put) = session(&store);
        let (added, done) = add(&store, sid);
        let (kept, _) = add(&store, sid);
        let sent = |op: &Op| match op {
            Op::AddDelivery { sid, seq, .. } => Op::SentDelivery {
                sid: *sid,
                seq: *seq,
                packet_id: 7,
                stage: Stage::AwaitingPubAck,
            },
            _ => unreachable!(),
        };
        let (sent_done, sent_kept) = (sent(&added), sent(&kept));
        wait_durable(&store, store.submit([put, added, kept]));
        wait_durable(&store, store.submit([sent_done, done, sent_kept]));
        store.close();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let left: Vec<Option<u16>> = conn
            .prepare("SELECT packet_id FROM delivery")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![Some(7)], "only the one still in flight is left");
        assert_eq!(rows(&path, "message"), 1);
    }

    #[test]
    fn an_acknowledgement_that_overtakes_its_delivery_still_removes_it() {
        let (store, path) = open("early", Duration::from_millis(1));
        let (sid, put) = session(&store);
        let (added, done) = add(&store, sid);
        wait_durable(&store, store.submit([put]));
        // The subscriber's acknowledgement reaches the writer before the publisher's op.
        wait_durable(&store, store.submit([done]));
        wait_durable(&store, store.submit([added]));
        store.close();
        assert_eq!(rows(&path, "delivery"), 0);
        assert_eq!(rows(&path, "message"), 0);
    }

    #[test]
    fn late_ops_for_a_discarded_session_are_dropped() {
        let (store, path) = open("late", Duration::from_millis(1));
        let (sid, put) = session(&store);
        let (added, _) = add(&store, sid);
        wait_durable(&store, store.submit([put]));
        wait_durable(&store, store.submit([Op::DeleteSession { sid }]));
        wait_durable(&store, store.submit([added]));
        store.close();
        assert_eq!(rows(&path, "session"), 0);
        assert_eq!(rows(&path, "delivery"), 0);
    }

    #[test]
    fn the_last_retained_write_to_a_topic_in_a_batch_wins() {
        let (store, path) = open("retained", Duration::from_secs(3600));
        let set = |topic: &str, payload: Option<&'static [u8]>| Op::SetRetained {
            topic: topic.into(),
            message: payload.map(|p| {
                Arc::new(Message::new(
                    topic,
                    Bytes::from_static(p),
                    QoS::AtMostOnce,
                    true,
                ))
            }),
        };
        store.submit([
            set("a", Some(b"first")),
            set("b", Some(b"kept?")),
            set("a", None),
            set("b", None),
            set("a", Some(b"last")),
        ]);
        store.close();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let kept: Vec<(String, Vec<u8>)> = conn
            .prepare("SELECT topic, payload FROM retained")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, vec![("a".to_string(), b"last".to_vec())]);
    }

    #[test]
    fn a_new_session_under_an_old_client_id_replaces_its_row() {
        let (store, path) = open("replace", Duration::from_secs(3600));
        let put = |sid: u64| Op::PutSession {
            sid,
            client_id: "same".into(),
            protocol: 4,
            expiry: 60,
            disconnected_at: None,
        };
        let (first, second) = (store.new_sid().get(), store.new_sid().get());
        let (added, _) = add(&store, first);
        let ticket = store.submit([put(first), added, put(second)]).unwrap();
        store.close();
        assert_eq!(store.ticket_state(ticket), TicketState::Durable);
        assert_eq!(rows(&path, "session"), 1);
        assert_eq!(
            rows(&path, "delivery"),
            0,
            "the replaced session's queue went with it"
        );
    }
}
