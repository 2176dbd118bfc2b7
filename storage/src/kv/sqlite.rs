//! Embedded backend: one sqlite file, usable by several processes on one
//! host at once.
//!
//! - WAL journal, `synchronous=NORMAL`: a commit survives the process being
//!   killed (`kill -9`); on power loss the last few commits may be lost.
//! - Keys and values are BLOBs in one `WITHOUT ROWID` table keyed by the
//!   key; sqlite compares BLOBs with memcmp, which is the order the KV layer
//!   promises.
//! - Write transactions start with `BEGIN IMMEDIATE`, which takes the
//!   database's single write lock up front. sqlite serializes writers, so
//!   two read-modify-write transactions never interleave: where
//!   FoundationDB reports a conflict, sqlite makes the second writer wait
//!   (up to [`BUSY_TIMEOUT_MS`], then [`StorageError::Busy`], which is
//!   retryable). Read-only transactions read a WAL snapshot and never
//!   block writers.
//! - A transaction older than FoundationDB's 5 s limit fails its next read
//!   or its commit with `transaction_too_old` (retryable), as on
//!   FoundationDB: no backend lets a transaction hold the write lock, or a
//!   snapshot, for longer.
//! - The file is read through a memory mapping (`mmap_size`, up to
//!   [`MMAP_BYTES`]): without it every write resets the other pooled
//!   connections' page caches and they read each page again with a system
//!   call. sqlite's documented trade-off applies: an I/O error while
//!   reading, or the file truncated by another program, ends the process
//!   (SIGBUS) instead of failing the read; a corrupt value is still
//!   caught by the record layer's checksums.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, params};

use super::{KeyValue, KvBackend, KvTransaction};
use crate::StorageError;

/// How long a writer waits for the write lock before giving up, in ms.
pub const BUSY_TIMEOUT_MS: u64 = 10_000;
/// Idle connections kept per backend.
pub const POOL_IDLE_MAX: usize = 8;

/// Bytes of the database file each connection reads through a mapping.
pub const MMAP_BYTES: u64 = 256 << 20;

fn map_err(e: rusqlite::Error) -> StorageError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    {
        return StorageError::Busy {
            detail: e.to_string(),
        };
    }
    StorageError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    }
}

/// The sqlite backend.
pub struct SqliteBackend {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, creating parent
    /// directories.
    pub fn open(path: &Path) -> Result<SqliteBackend, StorageError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Backend {
                backend: "sqlite",
                message: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let backend = SqliteBackend {
            path: path.to_path_buf(),
            pool: Arc::default(),
        };
        let conn = backend.connect()?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .map_err(map_err)?;
        backend.pool.lock().push(conn);
        Ok(backend)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, StorageError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StorageError::Backend {
            backend: "sqlite",
            message: format!("cannot open {}: {e}", self.path.display()),
        })?;
        conn.busy_handler(Some(busy_wait)).map_err(map_err)?;
        // journal_mode returns a row; WAL is persistent in the file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(map_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Backend {
                backend: "sqlite",
                message: format!(
                    "{} could not be switched to WAL mode (got {mode}); is it on a network filesystem?",
                    self.path.display()
                ),
            });
        }
        // Reads through a mapping of the file: a write by any pooled
        // connection resets the page cache of the others, which then read
        // every page again with pread (62 reads per durable turn in the
        // core bench; with the mapping 0.6, and 1.6x the durable turns/s).
        // At most MMAP_BYTES of address space per connection.
        conn.execute_batch(&format!(
            "PRAGMA synchronous=NORMAL; PRAGMA mmap_size={MMAP_BYTES};"
        ))
        .map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StorageError> {
        if let Some(c) = self.pool.lock().pop() {
            return Ok(c);
        }
        self.connect()
    }
}

/// Busy polls of 100 µs before [`busy_wait`] backs off to 1 ms.
const BUSY_FINE_POLLS: i32 = 200;

/// Waits for another writer to release the database lock, for up to
/// [`BUSY_TIMEOUT_MS`] in all. sqlite's default handler sleeps in steps
/// growing to 100 ms, which turns a lock held for 100 µs (one commit) into a
/// 10-50 ms wait when several POP processes share the file; this one polls
/// every 100 µs for the first 20 ms, then every 1 ms.
fn busy_wait(count: i32) -> bool {
    let coarse_polls = BUSY_TIMEOUT_MS as i32 - BUSY_FINE_POLLS / 10;
    if count < BUSY_FINE_POLLS {
        std::thread::sleep(Duration::from_micros(100));
        true
    } else if count < BUSY_FINE_POLLS + coarse_polls {
        std::thread::sleep(Duration::from_millis(1));
        true
    } else {
        false
    }
}

impl KvBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn begin(&self, write: bool) -> Result<Box<dyn KvTransaction>, StorageError> {
        let conn = self.take()?;
        let begin = if write {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        };
        conn.execute_batch(begin).map_err(map_err)?;
        Ok(Box::new(SqliteTx {
            conn: Some(conn),
            pool: self.pool.clone(),
            write,
            started: Instant::now(),
        }))
    }
}

struct SqliteTx {
    conn: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
    write: bool,
    /// When the transaction began (its locks held).
    started: Instant,
}

impl SqliteTx {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }

    fn writable(&self) -> Result<&Connection, StorageError> {
        if !self.write {
            return Err(StorageError::ReadOnlyTransaction);
        }
        Ok(self.conn())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Still in a transaction unless commit succeeded.
            if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
                return; // drop the connection rather than reuse a broken one
            }
            let mut pool = self.pool.lock();
            if pool.len() < POOL_IDLE_MAX {
                pool.push(conn);
            }
        }
    }
}

impl KvTransaction for SqliteTx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        super::check_age(self.started)?;
        let mut st = self
            .conn()
            .prepare_cached("SELECT v FROM kv WHERE k = ?1")
            .map_err(map_err)?;
        let mut rows = st.query(params![key]).map_err(map_err)?;
        match rows.next().map_err(map_err)? {
            Some(row) => Ok(Some(row.get(0).map_err(map_err)?)),
            None => Ok(None),
        }
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, StorageError> {
        // No `LIMIT ?`: sqlite plans with a bound LIMIT's value, so every
        // new binding expired the cached statement and it was parsed and
        // planned again on each call (9 % of the durable bench's CPU).
        // The scan follows the primary key, so stopping after `limit`
        // rows reads no more than a LIMIT would.
        let sql = if reverse {
            "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k DESC"
        } else {
            "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k ASC"
        };
        super::check_age(self.started)?;
        let mut st = self.conn().prepare_cached(sql).map_err(map_err)?;
        let rows = st
            .query_map(params![begin, end], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(map_err)?;
        rows.take(limit.unwrap_or(usize::MAX))
            .collect::<Result<Vec<KeyValue>, _>>()
            .map_err(map_err)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let mut st = self
            .writable()?
            .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
            .map_err(map_err)?;
        st.execute(params![key, value]).map_err(map_err)?;
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StorageError> {
        let mut st = self
            .writable()?
            .prepare_cached("DELETE FROM kv WHERE k = ?1")
            .map_err(map_err)?;
        st.execute(params![key]).map_err(map_err)?;
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StorageError> {
        let mut st = self
            .writable()?
            .prepare_cached("DELETE FROM kv WHERE k >= ?1 AND k < ?2")
            .map_err(map_err)?;
        st.execute(params![begin, end]).map_err(map_err)?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        if self.write {
            super::check_age(self.started)?;
        }
        self.conn().execute_batch("COMMIT").map_err(map_err)?;
        Ok(())
    }
}
