//! `Notify.WatchConnections`: the connection lifecycle log, streamed from a
//! position. Each stream reads the log after the last position it sent,
//! in pages; it wakes when this replica records events and polls for what
//! other replicas recorded. The log is durable, so a backend that resumes
//! from its last position misses nothing within the retention, and is told
//! (`missed`) when retention already removed some of what it asked for.

use std::{sync::Arc, time::Duration};

use notify_proto::{convert::millis, v1 as pb};
use notify_store::{RecordedEvent, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::status;

/// Events per read and per streamed message.
// 500: a connect storm's events go out in a few messages of ~60 KB each.
const PAGE: u32 = 500;
/// How often a stream looks for events other replicas recorded.
// Half a second: what a backend reacting to presence notices, for one
// indexed read per stream.
const POLL: Duration = Duration::from_millis(500);
/// Messages queued towards a slow backend before the reader waits (the log
/// keeps the rest).
pub const STREAM_QUEUE: usize = 4;

/// Where a stream starts: after `after`, or after the head now.
pub async fn start(store: &dyn Store, req: &pb::WatchConnectionsRequest) -> Result<u64, Status> {
    if !req.from_now {
        return Ok(req.after);
    }
    let page = store
        .lifecycle_after(u64::MAX, 0)
        .await
        .map_err(status::store)?;
    Ok(page.head)
}

/// Streams the log after `after` into `tx` until the caller goes, the
/// service stops, or the store fails (the caller resumes from its position).
pub async fn run(
    store: Arc<dyn Store>,
    after: u64,
    mut recorded: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<pb::ConnectionEvents, Status>>,
    shutdown: CancellationToken,
) {
    let mut position = after;
    let mut first = true;
    loop {
        // Seen before reading: what is recorded during the read wakes us.
        recorded.borrow_and_update();
        let page = match store.lifecycle_after(position, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(status::store(e))).await;
                return;
            }
        };
        let missed = first && page.missed_after(position);
        first = false;
        let full = page.events.len() == PAGE as usize;
        if let Some(last) = page.events.last() {
            position = last.position;
        }
        if !page.events.is_empty() || missed {
            let events = page.events.into_iter().map(event).collect();
            if tx
                .send(Ok(pb::ConnectionEvents { events, missed }))
                .await
                .is_err()
            {
                return;
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            _ = recorded.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

fn event(r: RecordedEvent) -> pb::ConnectionEvent {
    let e = r.event;
    let (close_code, reason) = e.what.close();
    pb::ConnectionEvent {
        position: r.position,
        // The stored kind is the proto enum's value.
        kind: i32::from(e.what.kind()),
        connection_id: e.connection_id.to_string(),
        user_id: e.user_id.to_string(),
        bridge_id: e.bridge_id,
        topic: e.what.topic().to_owned(),
        close_code: u32::from(close_code),
        reason: reason.to_owned(),
        at_ms: millis(e.at),
    }
}
