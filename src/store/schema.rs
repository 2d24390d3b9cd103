//! Opening the database: the data directory, WAL and sync settings, the schema version
//! with forward migrations, and what happens to a file that is corrupt.
//!
//! A board in the field has to come back unattended, so a corrupt database is moved
//! aside (with its `-wal` and `-shm`, renamed with a timestamp, never deleted) and Tern
//! starts empty, loudly; `on_corrupt_store = "refuse"` stops instead. A database from a
//! newer Tern is never touched. A migration copies the file aside before it changes it;
//! a new file is made aside and renamed into place, so that a crash never leaves a
//! half-made store under the real name.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Deserialize;

use super::record::wall_secs;
use super::{Durability, StoreConfig};

/// The schema this build writes. Bump it with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: u32 = 1;

/// One step forward: the SQL that takes a database from version `to - 1` to `to`.
pub struct Migration {
    pub to: u32,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    to: 1,
    sql: "
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE session (
    sid INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL UNIQUE,
    protocol INTEGER NOT NULL,
    expiry INTEGER NOT NULL,
    disconnected_at INTEGER,
    will BLOB,
    will_due INTEGER
);
CREATE TABLE subscription (
    sid INTEGER NOT NULL,
    filter TEXT NOT NULL,
    options INTEGER NOT NULL,
    identifier INTEGER,
    PRIMARY KEY (sid, filter)
) WITHOUT ROWID;
CREATE TABLE inbound_qos2 (
    sid INTEGER NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (sid, packet_id)
) WITHOUT ROWID;
CREATE TABLE message (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires_at INTEGER
);
CREATE TABLE delivery (
    seq INTEGER PRIMARY KEY,
    sid INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids BLOB,
    shared TEXT,
    packet_id INTEGER,
    stage INTEGER
);
CREATE INDEX delivery_by_session ON delivery (sid, seq);
CREATE INDEX delivery_by_message ON delivery (message_id);
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties BLOB NOT NULL,
    expires_at INTEGER
) WITHOUT ROWID;
",
}];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    /// Move the files aside and start with an empty store.
    #[default]
    Quarantine,
    /// Refuse to start.
    Refuse,
}

/// A corrupt database that was moved aside at start.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub files: Vec<PathBuf>,
    pub reason: String,
    /// When it was moved aside, for the alarm.
    pub at: std::time::SystemTime,
}

pub struct Opened {
    pub connection: Connection,
    /// The store was created by this start and neither the file nor its directory
    /// entry is synced yet: the writer syncs both ([`sync_new`]) before its first
    /// commit, so nothing is acknowledged before the store itself would survive a
    /// power cut, and the first CONNACK does not wait for two syncs.
    pub unsynced: bool,
    pub quarantined: Option<Quarantined>,
    /// Held for as long as the store is open; see [`lock`].
    pub lock: fs::File,
}

enum OpenError {
    Corrupt(String),
    Fatal(String),
}

pub fn open(config: &StoreConfig) -> Result<Opened, String> {
    let path = &config.path;
    let dir = data_dir(path);
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    probe_writable(dir)?;
    let lock = lock(path)?;
    match try_open(config) {
        Ok((connection, unsynced)) => Ok(Opened {
            connection,
            unsynced,
            quarantined: None,
            lock,
        }),
        Err(OpenError::Fatal(why)) => Err(why),
        Err(OpenError::Corrupt(reason)) if config.on_corrupt == OnCorrupt::Refuse => Err(format!(
            "the store {} is corrupt ({reason}); on_corrupt_store = \"refuse\" keeps Tern \
             stopped: move the file aside or set on_corrupt_store = \"quarantine\"",
            path.display()
        )),
        Err(OpenError::Corrupt(reason)) => {
            let files = quarantine(path)?;
            log::error!(
                "the store {} is corrupt ({reason}): moved aside as {}; starting with an empty store",
                path.display(),
                listed(&files)
            );
            let (connection, unsynced) = try_open(config).map_err(|e| match e {
                OpenError::Corrupt(why) | OpenError::Fatal(why) => why,
            })?;
            Ok(Opened {
                connection,
                unsynced,
                quarantined: Some(Quarantined {
                    files,
                    reason,
                    at: std::time::SystemTime::now(),
                }),
                lock,
            })
        }
    }
}

/// A read-only connection for loading a resumed session's queue beside the writer,
/// with a page cache of `cache_kib`.
pub fn open_reader(path: &Path, cache_kib: u64) -> Result<Connection, String> {
    let err = |e| format!("cannot open the store {} for reading: {e}", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{cache_kib};"))
        .map_err(err)?;
    Ok(conn)
}

/// Takes `FILE.lock` for this process: a second Tern on the same store would otherwise
/// fail later with "database is locked", or worse, quarantine a file in use.
fn lock(path: &Path) -> Result<fs::File, String> {
    use std::os::fd::AsRawFd;
    let lock_path = sibling(path, "lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "the store {} is in use by another Tern (lock {} is held): one data directory per broker",
            path.display(),
            lock_path.display()
        ));
    }
    Ok(file)
}

/// Fails early, with the directory's name, where SQLite would fail later and vaguely.
fn probe_writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".tern-write-probe");
    fs::write(&probe, b"tern")
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("the data directory {} is not writable: {e}", dir.display()))
}

fn classify(path: &Path, e: rusqlite::Error) -> OpenError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            OpenError::Corrupt(e.to_string())
        }
        Some(ErrorCode::DiskFull) => OpenError::Fatal(format!(
            "cannot open the store {}: the disk is full",
            path.display()
        )),
        _ => OpenError::Fatal(format!("cannot open the store {}: {e}", path.display())),
    }
}

/// The open connection, and whether this call created the store (not yet synced).
fn try_open(config: &StoreConfig) -> Result<(Connection, bool), OpenError> {
    let path = &config.path;
    let err = |e| classify(path, e);
    let created = !path.exists();
    if created {
        create(path).map_err(OpenError::Fatal)?;
    }
    let conn = Connection::open(path).map_err(err)?;
    // First, before anything could write: a newer Tern's file is never touched.
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::Fatal(format!(
            "the store {} has schema version {version}, newer than this Tern's {SCHEMA_VERSION}: \
             refusing to touch it (run a newer Tern, or move the file aside)",
            path.display()
        )));
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(err)?;
    if check != "ok" {
        // One line for the log, whatever SQLite listed.
        let mut summary = check.lines().map(str::trim).collect::<Vec<_>>().join("; ");
        summary.truncate(300);
        return Err(OpenError::Corrupt(format!("integrity check: {summary}")));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::Fatal(format!(
            "the store {} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    let synchronous = match config.durability {
        Durability::Strict => "FULL",
        _ => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{};",
        config.cache_kib
    ))
    .map_err(err)?;
    migrate(&conn, path, version, MIGRATIONS).map_err(|e| match e {
        MigrateError::Sqlite(e) => err(e),
        MigrateError::Copy(why) => OpenError::Fatal(why),
    })?;
    if config.max_store_bytes > 0 {
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(err)?;
        let pages = (config.max_store_bytes / page_size.max(512)).max(16);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .map_err(err)?;
    }
    Ok((conn, created))
}

/// Makes a new store at `path`, built as `FILE.new` without syncs and renamed into
/// place; the writer thread syncs it later ([`sync_new`]): two syncs off the start-up
/// path instead of the seven SQLite takes to create a file, switch it to WAL and write
/// the schema (each one slow on an SD card), and a crash part-way leaves only
/// `FILE.new`, which the next start replaces. A `-wal` or `-shm` left without its
/// database (the file deleted by hand) is moved aside first: SQLite drops a log it
/// finds beside an empty file, but the file renamed into place is not empty, and the
/// old log would be replayed into it.
fn create(path: &Path) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!("cannot create the store {}: {what}: {e}", path.display())
    };
    let fresh = sibling(path, "new");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        match fs::remove_file(with_suffix(&fresh, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("removing a half-made one", &e)),
        }
    }
    {
        // No journal while it is built: a failure leaves only `.new`, which the next
        // start replaces, so there is nothing to roll back. WAL mode is set last, as
        // the mode the file is opened in from then on.
        let conn = Connection::open(&fresh).map_err(|e| fail("opening", &e))?;
        conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA journal_mode = OFF;")
            .map_err(|e| fail("setting it up", &e))?;
        migrate(&conn, &fresh, 0, MIGRATIONS).map_err(|e| match e {
            MigrateError::Sqlite(e) => fail("writing the schema", &e),
            MigrateError::Copy(why) => why,
        })?;
        // Only marks the file's header: no `-wal` or `-shm` is made for it.
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .map_err(|e| fail("setting WAL mode", &e))?;
    }
    let orphans = move_aside(path, &["-wal", "-shm"], "orphan")?;
    if !orphans.is_empty() {
        log::warn!(
            "the store {} was missing but not all of its files: moved aside as {}; starting with an empty store",
            path.display(),
            listed(&orphans)
        );
    }
    fs::rename(&fresh, path).map_err(|e| fail("renaming it into place", &e))
}

/// Syncs a store that [`create`] made, and its directory (the renamed file's entry and
/// the WAL's). Until then a power cut can leave the file missing, empty or partly
/// written, and the next start makes it anew or quarantines it: nothing is lost, as
/// nothing was acknowledged before the writer called this.
pub fn sync_new(path: &Path) -> Result<(), String> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| format!("cannot sync the new store {}: {e}", path.display()))?;
    fs::File::open(data_dir(path))
        .and_then(|dir| dir.sync_all())
        .map_err(|e| {
            format!(
                "cannot sync the directory of the new store {}: {e}",
                path.display()
            )
        })
}

pub enum MigrateError {
    Sqlite(rusqlite::Error),
    Copy(String),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> MigrateError {
        MigrateError::Sqlite(e)
    }
}

/// Runs the migrations after `from` in one transaction. An existing database (version
/// above 0) is first copied aside as `FILE.vN-TIMESTAMP.bak`.
pub fn migrate(
    conn: &Connection,
    path: &Path,
    from: u32,
    migrations: &[Migration],
) -> Result<(), MigrateError> {
    let steps: Vec<&Migration> = migrations.iter().filter(|m| m.to > from).collect();
    let Some(last) = steps.last() else {
        return Ok(());
    };
    if from > 0 {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let backup = sibling(path, &format!("v{from}-{}.bak", timestamp()));
        fs::copy(path, &backup).map_err(|e| {
            MigrateError::Copy(format!(
                "cannot copy the store {} aside to {} before migrating it: {e}",
                path.display(),
                backup.display()
            ))
        })?;
        log::info!(
            "migrating the store {} from schema version {from} to {}; the old file is kept as {}",
            path.display(),
            last.to,
            backup.display()
        );
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for step in &steps {
        if let Err(e) = conn.execute_batch(step.sql) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    conn.execute_batch(&format!("PRAGMA user_version = {}; COMMIT", last.to))?;
    Ok(())
}

/// `FILE.SUFFIX` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// The directory the store's files are in.
fn data_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// File names for a log line.
fn listed(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

/// `path` with `suffix` appended to its name, as SQLite names `-wal` and `-shm`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves the database and its `-wal` and `-shm` files aside; returns their new names.
fn quarantine(path: &Path) -> Result<Vec<PathBuf>, String> {
    move_aside(path, &["", "-wal", "-shm"], "corrupt")
}

/// Renames those of `path`'s files (by suffix) that exist to `NAME.WHY-TIMESTAMP`,
/// never deleting them; returns their new names.
fn move_aside(path: &Path, suffixes: &[&str], why: &str) -> Result<Vec<PathBuf>, String> {
    let stamp = timestamp();
    let mut moved = Vec::new();
    for suffix in suffixes {
        let from = with_suffix(path, suffix);
        if !from.exists() {
            continue;
        }
        let to = with_suffix(&from, &format!(".{why}-{stamp}"));
        fs::rename(&from, &to).map_err(|e| {
            format!(
                "cannot move {} ({why}) aside to {}: {e}",
                from.display(),
                to.display()
            )
        })?;
        moved.push(to);
    }
    Ok(moved)
}

/// UTC `YYYYMMDDTHHMMSSZ`, for names of files moved aside.
fn timestamp() -> String {
    let (year, month, day, hour, minute, second) = crate::civil::utc(wall_secs() as i64);
    format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of the test's own under the system's temporary one.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tern-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_a_store_this_start_created_is_left_for_the_writer_to_sync() {
        let dir = scratch_dir("unsynced");
        let config = StoreConfig {
            path: dir.join("tern.db"),
            durability: Durability::Strict,
            commit_interval: std::time::Duration::from_millis(5),
            commit_batch_ops: 100,
            max_store_bytes: 0,
            cache_kib: 512,
            on_corrupt: OnCorrupt::Quarantine,
        };
        let created = open(&config).unwrap();
        assert!(
            created.unsynced,
            "a new store is synced by the writer, later"
        );
        sync_new(&config.path).unwrap();
        drop(created);
        assert!(
            !open(&config).unwrap().unsynced,
            "an existing store needs no sync"
        );
        let missing = sync_new(&dir.join("gone.db")).unwrap_err();
        assert!(missing.contains("gone.db"), "{missing}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_store_is_made_aside_and_renamed_into_place() {
        let dir = scratch_dir("create");
        let path = dir.join("tern.db");
        // What a crash part-way through an earlier creation, and a store deleted by
        // hand, leave behind.
        fs::write(dir.join("tern.db.new"), b"half made").unwrap();
        fs::write(dir.join("tern.db-wal"), b"an old log").unwrap();
        create(&path).unwrap();
        let left = names(&dir);
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0], "tern.db");
        assert!(left[1].starts_with("tern.db-wal.orphan-"), "{left:?}");
        let conn = Connection::open(&path).unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal", "the file stays in WAL mode");
        let sessions: i64 = conn
            .query_row("SELECT count(*) FROM session", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sessions, 0);
        drop(conn);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reader_gets_the_configured_page_cache() {
        let dir = scratch_dir("cache");
        let path = dir.join("tern.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE a (x INTEGER)")
            .unwrap();
        let reader = open_reader(&path, 300).unwrap();
        let cache: i64 = reader
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(cache, -300, "negative: KiB rather than pages");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_migration_copies_the_old_file_aside_first() {
        let dir = scratch_dir("migrate");
        let path = dir.join("tern.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        let steps = [
            Migration {
                to: 1,
                sql: "CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (7);",
            },
            Migration {
                to: 2,
                sql: "ALTER TABLE a ADD COLUMN y TEXT;",
            },
        ];
        migrate(&conn, &path, 0, &steps[..1]).ok().unwrap();
        let files = || fs::read_dir(&dir).unwrap().count();
        let before = files();
        migrate(&conn, &path, 1, &steps).ok().unwrap();
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let backups: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".v1-"))
            .collect();
        assert_eq!(backups.len(), 1, "one copy beside {before} files");
        let old = Connection::open(&backups[0]).unwrap();
        let x: i64 = old.query_row("SELECT x FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
        assert!(
            old.prepare("SELECT y FROM a").is_err(),
            "the copy is version 1"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let stamp = timestamp();
        assert_eq!(stamp.len(), 16);
        assert!(stamp.starts_with("20"));
        assert!(stamp.ends_with('Z'));
    }
}
