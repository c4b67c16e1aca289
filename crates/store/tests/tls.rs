//! `sslmode=require`: the store talks TLS to Postgres (as RDS Proxy wants by
//! default), verifies the server against `sslrootcert`, and refuses one it
//! cannot verify; without it, connections stay plain. A Postgres server of
//! the test's own serves TLS with a throw-away CA's certificate.

use std::time::Duration;

use notify_store::{PgStore, PgStoreConfig, Store};
use test_support::{cluster::PgCluster, tls::TestPki};

/// Whether the pool's session is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, String> {
    let mut config = PgStoreConfig::new(url);
    config.connect_timeout = Duration::from_secs(5);
    let pool = notify_store::postgres::pool(&config).map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_typed(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row[0].get(0))
}

#[tokio::test]
async fn sslmode_require_verifies_the_server_and_plain_stays_plain() {
    let pki = TestPki::new("postgres");
    let cluster = PgCluster::start_with_tls(&pki.server("postgres"));
    // The certificate names localhost and 127.0.0.1.
    let base = format!("postgres://postgres@localhost:{}/postgres", cluster.port);

    let trusted = format!("{base}?sslmode=require&sslrootcert={}", pki.ca.display());
    assert_eq!(encrypted(&trusted).await, Ok(true));
    let store = PgStore::new(PgStoreConfig::new(trusted)).unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();

    // The system's roots do not know the test CA: refused, saying why.
    let mut config = PgStoreConfig::new(format!("{base}?sslmode=require"));
    config.connect_timeout = Duration::from_secs(5);
    let unverified = PgStore::new(config).unwrap().ping().await;
    assert!(
        unverified
            .as_ref()
            .is_err_and(|e| e.to_string().to_lowercase().contains("certificate")),
        "{unverified:?}"
    );
    assert_eq!(
        encrypted(&base).await,
        Ok(false),
        "no sslmode: plain, as before"
    );
    assert_eq!(
        encrypted(&format!("{base}?sslmode=disable")).await,
        Ok(false)
    );

    let missing = notify_store::postgres::pool(&PgStoreConfig::new(format!(
        "{base}?sslmode=require&sslrootcert=/nonexistent/ca.pem"
    )));
    assert!(
        missing
            .as_ref()
            .is_err_and(|e| e.to_string().contains("/nonexistent/ca.pem")),
        "a missing sslrootcert is named"
    );
}
