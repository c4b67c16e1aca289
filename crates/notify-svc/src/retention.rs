//! The retention sweeper: expired inbox messages, idempotency keys, old
//! topic log entries and old lifecycle events are deleted in bounded
//! chunks, in the background. Users whose counts an expired message left
//! are told the new counts on their live connections.

use std::{sync::Arc, time::Duration};

use notify_core::TopicPolicy;
use notify_proto::{convert, v1 as pb};
use notify_store::Store;
use tokio_util::sync::CancellationToken;

/// Pause between sweeps when the last one found little to do.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Sweeps until `shutdown`. Sweeps again at once while chunks come back full.
pub async fn run(
    store: Arc<dyn Store>,
    router: crate::delivery::router::Router,
    topics: TopicPolicy,
    lifecycle_retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let lifecycle_busy = match store.sweep_lifecycle(lifecycle_retention).await {
            Ok(n) => n >= notify_store::SWEEP_CHUNK,
            Err(e) => {
                tracing::warn!(error = %e, "lifecycle sweep failed");
                false
            }
        };
        let messages_busy = match store.sweep(&topics).await {
            Ok(swept) => {
                if swept != Default::default() {
                    tracing::debug!(?swept, "retention sweep");
                }
                for (user, counts) in &swept.counts {
                    let change = pb::InboxChange {
                        user_id: user.to_string(),
                        counts: Some(convert::counts(*counts)),
                        change: Some(pb::inbox_change::Change::CountsOnly(true)),
                    };
                    router.inbox_change(user, change);
                }
                swept.more_waiting()
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention sweep failed");
                false
            }
        };
        let pause = if lifecycle_busy || messages_busy {
            Duration::from_millis(100)
        } else {
            SWEEP_EVERY
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
