//! Which backend a database URL names: `postgres://…` (production, RDS
//! Proxy) or `sqlite:PATH` (embedded), and the store, fight and relay views
//! on it.

use std::{fmt, sync::Arc};

use crate::{
    PgStore, PgStoreConfig, SqliteStore, Store, StoreError,
    fights::{FightBook, FightLog},
    postgres::{PgFightBook, PgFightLog, PgPublishOutbox, PgRelayPosition, redact_url},
    relay::{PublishOutbox, RelayPosition},
    sqlite::{
        SqliteConfig, SqliteFightBook, SqliteFightLog, SqlitePublishOutbox, SqliteRelayPosition,
    },
};

/// A database and how to use it.
#[derive(Clone)]
pub enum Database {
    Postgres(PgStoreConfig),
    Sqlite(SqliteConfig),
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(c) => c.fmt(f),
            Self::Sqlite(c) => c.fmt(f),
        }
    }
}

impl fmt::Display for Database {
    /// The URL with any password hidden, for banners and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(c) => f.write_str(&redact_url(&c.url)),
            Self::Sqlite(c) => write!(f, "sqlite:{}", c.path.display()),
        }
    }
}

impl Database {
    /// `postgres://…` / `postgresql://…` or `sqlite:PATH` (see
    /// [`SqliteConfig::from_url`]); defaults for everything else.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PgStoreConfig::new(url)))
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteConfig::from_url(url)?))
        } else {
            Err(StoreError::Internal(format!(
                "database URL {:?}: expected postgres://… or sqlite:PATH",
                redact_url(url)
            )))
        }
    }

    /// The notify store on it (call [`Store::migrate`] first).
    pub fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Self::Postgres(c) => Arc::new(PgStore::new(c.clone())?),
            Self::Sqlite(c) => Arc::new(SqliteStore::open(c.clone())?),
        })
    }

    /// BetTracker's view of the fights tables.
    pub fn fight_log(&self) -> Result<Arc<dyn FightLog>, StoreError> {
        Ok(match self {
            Self::Postgres(c) => Arc::new(PgFightLog::new(c)?),
            Self::Sqlite(c) => Arc::new(SqliteFightLog::open(c)?),
        })
    }

    /// The lease and cursor of the relay group `name`.
    pub fn relay_position(&self, name: &str) -> Result<Arc<dyn RelayPosition>, StoreError> {
        Ok(match self {
            Self::Postgres(c) => Arc::new(PgRelayPosition::new(c, name)?),
            Self::Sqlite(c) => Arc::new(SqliteRelayPosition::open(c, name)?),
        })
    }

    /// `notify_outbox`, as its relay reads it.
    pub fn publish_outbox(&self) -> Result<Arc<dyn PublishOutbox>, StoreError> {
        Ok(match self {
            Self::Postgres(c) => Arc::new(PgPublishOutbox::new(c)?),
            Self::Sqlite(c) => Arc::new(SqlitePublishOutbox::open(c)?),
        })
    }

    /// BetService's writes (simulations, tests).
    pub fn fight_book(&self) -> Result<Arc<dyn FightBook>, StoreError> {
        Ok(match self {
            Self::Postgres(c) => Arc::new(PgFightBook::new(c)?),
            Self::Sqlite(c) => Arc::new(SqliteFightBook::open(c)?),
        })
    }
}
