//! The Postgres migration runner. Lock-free and RDS-Proxy-safe: no advisory
//! lock and no session state. Each migration runs in its own transaction that
//! first inserts its row into `schema_migrations`; a second runner inserting
//! the same version blocks on that row until the first commits, then sees the
//! conflict and skips. Postgres DDL is transactional, so a failed migration
//! leaves neither its row nor its changes.

use tokio_postgres::types::Type;

use crate::{StoreError, migrate::Migration};

const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies the migrations not yet applied; returns how many this call applied.
pub async fn run(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<usize, StoreError> {
    create_history(client).await?;
    let mut applied = 0;
    for migration in migrations {
        if let Some(checksum) = applied_checksum(client, migration.version).await? {
            migration.verify(checksum)?;
            continue;
        }
        let tx = client.transaction().await.map_err(super::classify)?;
        let claimed = tx
            .query_typed(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)
                 ON CONFLICT (version) DO NOTHING RETURNING version",
                &[
                    (&migration.version, Type::INT4),
                    (&migration.name, Type::TEXT),
                    (&migration.checksum(), Type::INT8),
                ],
            )
            .await
            .map_err(super::classify)?;
        if claimed.is_empty() {
            // Another runner applied it while we looked.
            drop(tx);
            if let Some(checksum) = applied_checksum(client, migration.version).await? {
                migration.verify(checksum)?;
            }
            continue;
        }
        tx.batch_execute(migration.sql)
            .await
            .map_err(|e| StoreError::Internal(format!("migration {}: {e}", migration.name)))?;
        tx.commit().await.map_err(super::classify)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        applied += 1;
    }
    Ok(applied)
}

async fn create_history(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    // Two runners creating the table at once can collide in the catalog even
    // with IF NOT EXISTS; the loser simply finds it there on the second try.
    match client.batch_execute(CREATE_HISTORY).await {
        Ok(()) => Ok(()),
        Err(_) => client
            .batch_execute(CREATE_HISTORY)
            .await
            .map_err(super::classify),
    }
}

async fn applied_checksum(
    client: &tokio_postgres::Client,
    version: i32,
) -> Result<Option<i64>, StoreError> {
    let rows = client
        .query_typed(
            "SELECT checksum FROM schema_migrations WHERE version = $1",
            &[(&version, Type::INT4)],
        )
        .await
        .map_err(super::classify)?;
    Ok(rows.first().map(|row| row.get(0)))
}
