//! One SQLite database file shared by async code: a writer thread that
//! group-commits write jobs, and a few reader connections used from
//! blocking tasks.
//!
//! SQLite admits one writer at a time, and what costs is the commit (the WAL
//! frames and their sync), not the statements. So every write goes to one
//! thread that takes all jobs waiting, runs them one after the other inside
//! one `BEGIN IMMEDIATE` transaction, commits once and then answers each. A
//! job that fails rolls the whole transaction back; it gets its error and
//! the others run again without it (jobs are re-runnable closures). No
//! savepoint per job: each one made SQLite copy every page it touched to a
//! statement journal first, a third of the writer's time. Readers never wait
//! on the writer (WAL). Another process on the same file waits for the
//! write lock up to the busy timeout.

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

/// Pages SQLite keeps in memory (negative: KiB): 16 MiB, so the B-tree
/// pages a commit touches are mostly found in memory, not read back from
/// the OS. Not more: every commit scans the cache's hash table (64 MiB made
/// that 5 % of the writer's time).
const CACHE_KIB: i64 = 16 * 1024;
/// How often the checkpointer copies the WAL back into the database file,
/// on a thread of its own (PASSIVE: it never blocks the writer), so the
/// page copies and the database fsync are not done inside a commit. A
/// second, not 100 ms: a page rewritten by many commits in between is
/// copied once (15.0k → 16.0k publishes/s in the bench).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// WAL pages (4 KiB: 64 MiB) after which the writer checkpoints itself. The
/// WAL can only start over from its beginning after a checkpoint that
/// caught up with the writer, which a concurrent one never does under
/// steady load (the WAL grew past 1 GB in 10 s of benchmark); the writer's
/// own finds most pages already copied by the checkpointer, so it is short.
/// It bounds the WAL, and its pause is the SQLite p99.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// A write job as the writer thread sees it.
trait Job: Send {
    /// Runs the job's statements in the open transaction; may run again
    /// (in a new transaction) if another job of the batch failed.
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()>;
    /// Answers the caller once the transaction is over.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Typed<T, F> {
    f: F,
    output: Option<T>,
    answer: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.output = Some((self.f)(conn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let Self { output, answer, .. } = *self;
        let outcome = committed.and_then(|()| {
            output.ok_or_else(|| StoreError::Internal("write job did not run".into()))
        });
        let _ = answer.send(outcome);
    }
}

/// A handle to the database; clones share the writer thread and the readers.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: mpsc::Sender<Box<dyn Job>>,
    path: PathBuf,
    busy_timeout: Duration,
    idle_readers: Mutex<Vec<Connection>>,
    readers: Arc<Semaphore>,
    /// The checkpointer runs while this lives.
    _alive: Arc<()>,
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
        // NO_MUTEX: the connection only ever lives on the writer thread.
        let conn = Connection::open_with_flags(
            &config.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(classify)?;
        conn.busy_timeout(config.busy_timeout).map_err(classify)?;
        // WAL: readers never block the writer nor it them; it persists in the file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(classify)?;
        conn.pragma_update(None, "synchronous", config.synchronous.pragma())
            .map_err(classify)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(classify)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            .map_err(classify)?;
        // Statement journals (a multi-row statement that may fail half-way)
        // in memory, not in a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(classify)?;
        let (writer, jobs) = mpsc::channel::<Box<dyn Job>>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, jobs))
            .map_err(|e| StoreError::Internal(format!("writer thread: {e}")))?;
        let checkpointer = Connection::open(&config.path).map_err(classify)?;
        checkpointer
            .busy_timeout(config.busy_timeout)
            .map_err(classify)?;
        let alive = Arc::new(());
        let watch = Arc::downgrade(&alive);
        thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, watch))
            .map_err(|e| StoreError::Internal(format!("checkpoint thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                path: config.path.clone(),
                busy_timeout: config.busy_timeout,
                idle_readers: Mutex::new(Vec::new()),
                readers: Arc::new(Semaphore::new(config.readers.max(1))),
                _alive: alive,
            }),
        })
    }

    /// Runs `f` in the next group commit; its changes are durable (as the
    /// `synchronous` setting makes them) when this returns `Ok`. If `f`
    /// fails, nothing of it is kept and the other jobs are not affected. `f`
    /// may run more than once (only the last run's changes are committed).
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job = Box::new(Typed {
            f,
            output: None,
            answer,
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
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(classify)?;
        conn.busy_timeout(self.busy_timeout).map_err(classify)?;
        // Guards the rule that every write goes through the writer thread.
        conn.pragma_update(None, "query_only", true)
            .map_err(classify)?;
        Ok(conn)
    }
}

fn write_loop(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        while !batch.is_empty() {
            match run_together(&conn, &mut batch) {
                Ok(committed) => {
                    for job in batch.drain(..) {
                        job.finish(committed.clone());
                    }
                }
                // The failed job leaves with its error; the rest run again.
                Err((i, e)) => batch.remove(i).finish(Err(e)),
            }
        }
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] while the [`Db`] lives.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>) {
    while alive.strong_count() > 0 {
        thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

/// Runs `batch` in one transaction. `Ok` carries the commit's outcome for
/// every job; `Err` names the job that failed (all was rolled back).
fn run_together(
    conn: &Connection,
    batch: &mut [Box<dyn Job>],
) -> Result<Result<(), StoreError>, (usize, StoreError)> {
    // IMMEDIATE: take the write lock now (waiting up to the busy timeout for
    // another process), not at the first write, where a lock upgrade could
    // fail after work was done.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Ok(Err(classify(e)));
    }
    for (i, job) in batch.iter_mut().enumerate() {
        if let Err(e) = job.run(conn) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err((i, classify(e)));
        }
    }
    let committed = conn.execute_batch("COMMIT").map_err(classify);
    if committed.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    Ok(committed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteConfig;

    fn db() -> (Db, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "notify-sqlite-db-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let db = Db::open(&SqliteConfig::new(dir.join("t.db"))).unwrap();
        (db, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_takes_nothing_of_the_others_with_it() {
        let (db, dir) = db();
        db.write(|c| c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        // Many jobs at once, so they share transactions; every fifth writes
        // a row and then fails (a duplicate key).
        let jobs: Vec<_> = (1..=200i64)
            .map(|k| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |c| {
                        c.execute("INSERT INTO t (k) VALUES (?1)", [k])?;
                        if k % 5 == 0 {
                            c.execute("INSERT INTO t (k) VALUES (?1)", [k])?;
                        }
                        Ok(k)
                    })
                    .await
                })
            })
            .collect();
        let mut failed = Vec::new();
        for job in jobs {
            if let Err(e) = job.await.unwrap() {
                assert!(matches!(e, StoreError::Internal(_)), "{e}");
                failed.push(());
            }
        }
        assert_eq!(failed.len(), 40);
        let kept: Vec<i64> = db
            .read(|c| {
                c.prepare("SELECT k FROM t ORDER BY k")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        // The successful jobs' rows, once each; nothing of the failed ones.
        assert_eq!(kept, (1..=200).filter(|k| k % 5 != 0).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let (db, dir) = db();
        db.write(|c| c.execute_batch("CREATE TABLE t (k INTEGER)"))
            .await
            .unwrap();
        let refused = db.read(|c| c.execute("INSERT INTO t VALUES (1)", [])).await;
        assert!(refused.is_err(), "query_only readers");
        let _ = std::fs::remove_dir_all(dir);
    }
}
