//! The embedded backend of [`Store`](crate::Store) on SQLite (bundled, WAL),
//! for `notify up` and single-node deployments.
//!
//! Same semantics as Postgres, checked by the same conformance tests:
//! gap-free seqs (one writer at a time, heads bumped in the batch's
//! transaction), idempotency keys per caller (looked up under the write
//! lock, so no race to lose), retention, the registry and the lifecycle
//! log, group commit (the [`db`] writer thread commits every job waiting
//! in one transaction).
//!
//! Durability follows `synchronous`: `full` (the default) syncs the WAL at
//! every commit; `normal` syncs only at checkpoints, so a power loss or OS
//! crash (not a process crash) can lose the last commits before a
//! checkpoint. See the README.

pub mod db;
pub mod fights;
mod inbox;
mod lifecycle;
mod push;
pub mod relay;
pub mod store;

use std::{path::PathBuf, time::Duration};

pub use db::Db;
pub use fights::{SqliteFightBook, SqliteFightLog};
pub use relay::{SqlitePublishOutbox, SqliteRelayPosition};
pub use store::SqliteStore;

use crate::StoreError;

/// When SQLite syncs the WAL to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// At every commit: a committed message survives a power loss.
    #[default]
    Full,
    /// At checkpoints only: survives a process crash, not a power loss.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Where the database is and how it is used.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Reader connections (reads run beside the writer, never behind it).
    pub readers: usize,
    /// How long a write waits for another process's write lock.
    pub busy_timeout: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Keep read state and counts (see `PgStoreConfig::inbox_counts`).
    pub inbox_counts: bool,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(24 * 3600),
            inbox_counts: true,
        }
    }

    /// Reads `sqlite:PATH` or `sqlite://PATH`, with an optional
    /// `?synchronous=full|normal`. A relative PATH is relative to the
    /// working directory (`sqlite://.notify/notify.db`), an absolute one
    /// starts with `/` (`sqlite:///var/lib/notify/notify.db`).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Internal(format!("bad SQLite URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| bad("it must start with sqlite:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(bad("no file path"));
        }
        let mut config = Self::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", v)) if v.eq_ignore_ascii_case("full") => {
                    config.synchronous = Synchronous::Full;
                }
                Some(("synchronous", v)) if v.eq_ignore_ascii_case("normal") => {
                    config.synchronous = Synchronous::Normal;
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown option {pair:?} (synchronous=full|normal)"
                    )));
                }
            }
        }
        Ok(config)
    }
}

/// Microseconds since the Unix epoch, as SQLite rows keep times.
pub(crate) fn micros(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The time `micros` was made from.
pub(crate) fn time(us: i64) -> std::time::SystemTime {
    let magnitude = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        std::time::UNIX_EPOCH + magnitude
    } else {
        std::time::UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_a_sync_mode() {
        let c = SqliteConfig::from_url("sqlite://.notify/notify.db").unwrap();
        assert_eq!(c.path, PathBuf::from(".notify/notify.db"));
        assert_eq!(c.synchronous, Synchronous::Full);
        let c = SqliteConfig::from_url("sqlite:///var/lib/n.db?synchronous=normal").unwrap();
        assert_eq!(c.path, PathBuf::from("/var/lib/n.db"));
        assert_eq!(c.synchronous, Synchronous::Normal);
        assert!(SqliteConfig::from_url("sqlite:").is_err());
        assert!(SqliteConfig::from_url("sqlite:x.db?sync=off").is_err());
        assert!(SqliteConfig::from_url("postgres://h/db").is_err());
    }

    #[test]
    fn times_round_trip_through_micros() {
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_795_446_245_123_456);
        assert_eq!(time(micros(t)), t);
    }
}
