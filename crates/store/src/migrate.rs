//! The migrations: embedded SQL files applied in version order at start-up,
//! each with a checksum so that a file changed after it was applied is
//! refused. Each backend has its runner (`postgres::migrate`, and SQLite's in
//! `sqlite::db`).

use crate::StoreError;

/// One SQL file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// FNV-1a of the SQL text: stable across builds and platforms.
    pub fn checksum(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash as i64
    }

    /// Whether `checksum` (as applied) is this file's: a changed file is an error.
    pub fn verify(&self, checksum: i64) -> Result<(), StoreError> {
        if checksum == self.checksum() {
            Ok(())
        } else {
            Err(StoreError::MigrationChanged {
                version: self.version,
                name: self.name,
            })
        }
    }
}

/// The Postgres migrations, in order.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "inbox_acks",
        sql: include_str!("../../../migrations/postgres/0002_inbox_acks.sql"),
    },
    Migration {
        version: 3,
        name: "fights",
        sql: include_str!("../../../migrations/postgres/0003_fights.sql"),
    },
    Migration {
        version: 4,
        name: "connection_events",
        sql: include_str!("../../../migrations/postgres/0004_connection_events.sql"),
    },
    Migration {
        version: 5,
        name: "notify_outbox",
        sql: include_str!("../../../migrations/postgres/0005_notify_outbox.sql"),
    },
    Migration {
        version: 6,
        name: "inbox_state",
        sql: include_str!("../../../migrations/postgres/0006_inbox_state.sql"),
    },
    Migration {
        version: 7,
        name: "push",
        sql: include_str!("../../../migrations/postgres/0007_push.sql"),
    },
];

/// The SQLite migrations, in order.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "connection_events",
        sql: include_str!("../../../migrations/sqlite/0002_connection_events.sql"),
    },
    Migration {
        version: 3,
        name: "notify_outbox",
        sql: include_str!("../../../migrations/sqlite/0003_notify_outbox.sql"),
    },
    Migration {
        version: 4,
        name: "inbox_state",
        sql: include_str!("../../../migrations/sqlite/0004_inbox_state.sql"),
    },
    Migration {
        version: 5,
        name: "push",
        sql: include_str!("../../../migrations/sqlite/0005_push.sql"),
    },
];
