//! Bridge expiry: the replica tells the store which bridges it hears, and
//! closes the registry rows of bridges no replica has heard for the expiry
//! (a bridge killed, or its host gone): each such connection gets a
//! disconnected event (`bridge_lost`, 1006), so backends watching the
//! lifecycle learn of every end, which API Gateway's best-effort
//! `$disconnect` does not promise.
//!
//! Heartbeats are in database time (replicas' clocks may disagree). A
//! replica expires nothing until it has run for one expiry itself: after a
//! restart of every replica, live bridges re-attach and are seen again
//! before anyone takes them for lost.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::services::Services;

/// Runs until `shutdown`: every third of `expiry`, a heartbeat for the
/// bridges attached here, then an expiry pass.
pub async fn run(services: Services, expiry: Duration, shutdown: CancellationToken) {
    let started = Instant::now();
    // A third: a bridge is seen at least twice per expiry even when one
    // heartbeat is late, and a lost one goes within 4/3 of the expiry.
    let every = (expiry / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let store = &services.store;
        if let Err(e) = store.bridges_seen(&services.router.bridges()).await {
            tracing::warn!(error = %e, "bridge heartbeat failed");
            continue;
        }
        if started.elapsed() < expiry {
            continue;
        }
        match store.expire_bridges(expiry).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(connections = n, "closed the connections of lost bridges");
                services.metrics.expired(n);
                services.lifecycle.recorded();
            }
            Err(e) => tracing::warn!(error = %e, "bridge expiry failed"),
        }
    }
}
