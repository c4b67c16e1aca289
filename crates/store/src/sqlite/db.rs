//! One SQLite database file shared by async code: a writer thread that
//! group-commits write jobs, and a few reader connections used from
//! blocking tasks.
//!
//! SQLite admits one writer at a time, and what costs is the commit (the
//! WAL fsync), not the statements. So every write goes to one thread that
//! takes all jobs waiting, runs each in its own savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once and then answers each job
//! with its own outcome (a failed job rolls back to its savepoint and leaves
//! the others alone). Readers never wait on the writer (WAL). Another
//! process on the same file waits for the write lock up to the busy timeout.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Semaphore, oneshot};

use super::SqliteConfig;
use crate::{StoreError, migrate::Migration};

/// Most jobs in one transaction: bounds how long the first waits for the
/// commit behind the others (a job is a few statements; a commit, an fsync).
const JOBS_PER_COMMIT: usize = 512;

/// Called once the transaction of its job is over, with the commit's outcome.
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs a job's statements (or learns that the transaction could not begin).
type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> Finish + Send>;

/// A handle to the database; clones share the writer thread and the readers.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<Job>,
    path: PathBuf,
    busy_timeout: Duration,
    idle_readers: Mutex<Vec<Connection>>,
    readers: Arc<Semaphore>,
}

/// Sorts a SQLite error into retryable or not.
pub fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

impl Db {
    /// Opens (creating it and its directory if needed) the database file and
    /// starts the writer thread.
    pub fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(&config.path).map_err(classify)?;
        conn.busy_timeout(config.busy_timeout).map_err(classify)?;
        // WAL: readers never block the writer nor it them; it persists in the file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(classify)?;
        conn.pragma_update(None, "synchronous", config.synchronous.pragma())
            .map_err(classify)?;
        let (writer, jobs) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs))
            .map_err(|e| StoreError::Internal(format!("writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                path: config.path.clone(),
                busy_timeout: config.busy_timeout,
                idle_readers: Mutex::new(Vec::new()),
                readers: Arc::new(Semaphore::new(config.readers.max(1))),
            }),
        })
    }

    /// Runs `f` in the next group commit; its changes are durable (as the
    /// `synchronous` setting makes them) when this returns `Ok`. If `f`
    /// fails, its changes are rolled back and the others' are kept.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let outcome = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(e) => Err(e.clone()),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = answer.send(committed.and(outcome));
            })
        });
        let stopped = || StoreError::Unavailable("the SQLite writer stopped".into());
        self.inner.writer.send(job).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Runs `f` on a reader connection, in a blocking task.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = self
            .inner
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("readers closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner.idle_readers.lock().expect("readers lock").pop();
            let conn = match idle {
                Some(conn) => conn,
                None => inner.open_reader()?,
            };
            let result = f(&conn).map_err(classify);
            inner.idle_readers.lock().expect("readers lock").push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("reader task: {e}")))?
    }
}

impl Inner {
    fn open_reader(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(classify)?;
        conn.busy_timeout(self.busy_timeout).map_err(classify)?;
        // Guards the rule that every write goes through the writer thread.
        conn.pragma_update(None, "query_only", true)
            .map_err(classify)?;
        Ok(conn)
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job").map_err(classify)?;
    let outcome = f(conn);
    if outcome.is_err() {
        conn.execute_batch("ROLLBACK TO job").map_err(classify)?;
    }
    conn.execute_batch("RELEASE job").map_err(classify)?;
    outcome.map_err(classify)
}

fn write_loop(conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // IMMEDIATE: take the write lock now (waiting up to the busy timeout
        // for another process), not at the first write, where a lock upgrade
        // could fail after work was done.
        let begun = conn.execute_batch("BEGIN IMMEDIATE").map_err(classify);
        let finishes: Vec<Finish> = batch
            .into_iter()
            .map(|job| job(begun.as_ref().map(|()| &conn)))
            .collect();
        let committed = match begun {
            Ok(()) => conn.execute_batch("COMMIT").map_err(classify),
            Err(e) => Err(e),
        };
        if committed.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for finish in finishes {
            finish(committed.clone());
        }
    }
}

/// Applies the migrations not applied yet, in one write job (so in one
/// transaction: a failed migration leaves nothing behind); returns how many.
pub async fn migrate(db: &Db, migrations: &'static [Migration]) -> Result<usize, StoreError> {
    let outcome = db
        .write(move |conn| {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    checksum   INTEGER NOT NULL,
                    applied_at INTEGER NOT NULL DEFAULT (unixepoch())
                )",
            )?;
            let mut applied = Vec::new();
            for m in migrations {
                let checksum: Option<i64> = conn
                    .query_row(
                        "SELECT checksum FROM schema_migrations WHERE version = ?1",
                        [m.version],
                        |r| r.get(0),
                    )
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                match checksum {
                    Some(c) if c == m.checksum() => {}
                    Some(_) => return Ok(Err(m)),
                    None => {
                        conn.execute_batch(m.sql)?;
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum)
                             VALUES (?1, ?2, ?3)",
                            rusqlite::params![m.version, m.name, m.checksum()],
                        )?;
                        applied.push(m);
                    }
                }
            }
            Ok(Ok(applied))
        })
        .await?;
    match outcome {
        Ok(applied) => {
            for m in &applied {
                tracing::info!(version = m.version, name = m.name, "migration applied");
            }
            Ok(applied.len())
        }
        Err(m) => Err(StoreError::MigrationChanged {
            version: m.version,
            name: m.name,
        }),
    }
}
