//! Answers to registration tickets (`bridge.proto`): once a connection or a
//! subscription is in routing, the bridge learns where its feed stands, read
//! from the store after that point. Reads are batched: a connect storm asks
//! for thousands at once, and one `positions` read answers them all.

use std::sync::Arc;

use notify_proto::{
    convert,
    v1::{self as pb, bridge_down::Msg as Down},
};
use notify_store::{Feed, Store};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::delivery::router::DownSender;

/// Questions queued before link streams wait.
const QUEUE: usize = 65_536;
/// Feeds read per store round trip.
const BATCH: usize = 2_048;

/// One ticket to answer on a bridge's down stream.
pub struct Ask {
    pub ticket: u64,
    pub feed: Feed,
    pub down: DownSender,
}

/// Sends questions to the answering task; cheap to clone.
#[derive(Clone)]
pub struct Tickets {
    tx: mpsc::Sender<Ask>,
}

impl Tickets {
    /// Starts the answering task; it ends once every handle is dropped.
    pub fn start(store: Arc<dyn Store>, tracker: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(store, rx));
        Self { tx }
    }

    pub async fn ask(&self, ask: Ask) {
        let _ = self.tx.send(ask).await;
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Ask>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let feeds: Vec<Feed> = batch.iter().map(|a| a.feed.clone()).collect();
        let read = store.positions(&feeds).await;
        for (i, ask) in batch.drain(..).enumerate() {
            let registered = match read.as_ref().map(|p| p.get(i)) {
                Ok(Some(position)) => pb::Registered {
                    ticket: ask.ticket,
                    head_seq: position.head_seq,
                    acked_seq: position.acked_seq,
                    error: String::new(),
                    first_seq: position.first_seq,
                    subscriptions: position
                        .subscriptions
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    counts: Some(convert::counts(position.counts)),
                    mutes: Some(convert::mutes(&position.mutes)),
                },
                Ok(None) => pb::Registered {
                    ticket: ask.ticket,
                    error: "the store answered fewer positions than asked".into(),
                    ..Default::default()
                },
                Err(e) => pb::Registered {
                    ticket: ask.ticket,
                    error: e.to_string(),
                    ..Default::default()
                },
            };
            let answer = pb::BridgeDown {
                msg: Some(Down::Registered(registered)),
            };
            // A bridge this far behind is being replaced; its connection
            // waits out its own timeout and reconnects.
            if ask.down.try_send(answer).is_err() {
                tracing::warn!(ticket = ask.ticket, "bridge queue full: ticket unanswered");
            }
        }
    }
}
