//! What the store's test files share: a fresh database of either backend
//! ([`Backend`]), raw SQL in each dialect ([`Sql`]), the macro that runs a
//! test body once per backend, and small builders.
#![allow(dead_code)] // each test file uses its own part

use std::{sync::Arc, time::Duration};

use notify_core::{MessageId, Publish, Target, UserId};
use notify_store::{
    Database, PgStoreConfig, PublishItem, SqliteConfig, Store,
    fights::{FightBook, FightLog},
    migrate,
    relay::RelayPosition,
};
use test_support::{TestDb, TestDir};

/// One fresh database of either backend.
pub enum Backend {
    Postgres(TestDb),
    Sqlite(TestDir),
}

/// The same statement in each dialect (for what the trait cannot do, like
/// aging rows). SQLite keeps times as Unix microseconds.
pub struct Sql {
    pub postgres: &'static str,
    pub sqlite: &'static str,
}

impl Sql {
    pub fn both(sql: &'static str) -> Self {
        Self {
            postgres: sql,
            sqlite: sql,
        }
    }
}

impl Backend {
    pub async fn postgres() -> Self {
        Self::Postgres(TestDb::create().await)
    }

    pub fn sqlite() -> Self {
        Self::Sqlite(TestDir::create("store-conformance"))
    }

    pub fn database(&self) -> Database {
        match self {
            Self::Postgres(db) => Database::Postgres(PgStoreConfig::new(db.url.clone())),
            Self::Sqlite(dir) => Database::Sqlite(SqliteConfig::new(dir.join("notify.db"))),
        }
    }

    /// A store of its own on this database: another replica.
    pub fn store(&self) -> Arc<dyn Store> {
        self.database().store().expect("store")
    }

    pub async fn migrated(&self) -> Arc<dyn Store> {
        let store = self.store();
        store.migrate().await.expect("migrate");
        store
    }

    pub fn migrations(&self) -> usize {
        match self {
            Self::Postgres(_) => migrate::POSTGRES.len(),
            Self::Sqlite(_) => migrate::SQLITE.len(),
        }
    }

    pub fn fight_log(&self) -> Arc<dyn FightLog> {
        self.database().fight_log().expect("fight log")
    }

    pub fn relay_position(&self, group: &str) -> Arc<dyn RelayPosition> {
        self.database()
            .relay_position(group)
            .expect("relay position")
    }

    pub fn fight_book(&self) -> Arc<dyn FightBook> {
        self.database().fight_book().expect("fight book")
    }

    /// Runs raw SQL, outside the store.
    pub async fn sql(&self, sql: Sql) {
        match self {
            Self::Postgres(db) => {
                let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(sql.postgres).await.unwrap();
            }
            Self::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.join("notify.db")).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(sql.sqlite).unwrap();
            }
        }
    }
}

/// Instantiates each test body once per backend.
#[macro_export]
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::sqlite()).await;
                }
            )*
        }
    };
}

pub fn user(name: &str) -> UserId {
    UserId::parse("user", name).unwrap()
}

pub fn item(target: Target) -> PublishItem {
    PublishItem {
        caller: "test".into(),
        message_id: MessageId::new(),
        publish: Publish {
            target,
            event: "e".into(),
            data: "{}".into(),
            idempotency_key: None,
            ttl: Duration::from_secs(3600),
        },
        log_max_len: 100,
        push: None,
    }
}
