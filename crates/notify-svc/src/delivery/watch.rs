//! `Watch`: in-process fan-out of committed messages to watching streams.
//!
//! The pipeline hands every commit to the [`WatchHub`]; a watcher of a user or
//! topic also reads the store, so it sees what was committed before it started
//! (`since`), what it missed while lagging, and what other replicas committed
//! (a periodic catch-up): seqs stay strictly increasing with no gap or
//! duplicate at any seam. Broadcast has no seq and is live only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify_core::Target;
use notify_store::{Committed, Feed, PublishItem, Store, StoreError, StoredMessage};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::delivery::bounded;

/// Messages a watcher may fall behind before it reads the store instead.
const WATCH_BUFFER: usize = 1024;
/// Page size when a watcher reads the store.
// 100: a page is held whole while it is sent; 100 × 64 KiB is 6.4 MiB.
const CATCH_UP_PAGE: u32 = 100;
/// What one Watch stream may hold queued for its caller.
pub const STREAM_BOUND: bounded::Bound = bounded::Bound {
    messages: 256,
    bytes: 1 << 20,
};

/// One Watch stream's queue.
pub type Out = bounded::Sender<Result<StoredMessage, WatchError>>;

/// A queued item's size, as the stream's bound counts it.
pub fn out_len(item: &Result<StoredMessage, WatchError>) -> usize {
    item.as_ref()
        .map_or(64, |m| m.data.len() + m.event.len() + 64)
}

/// Watch streams open per caller, within a cap.
#[derive(Debug)]
pub struct WatchSlots {
    max_per_caller: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open Watch stream's slot; given back when dropped.
#[derive(Debug)]
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    caller: String,
}

impl WatchSlots {
    pub fn new(max_per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_caller,
            open: Mutex::default(),
        })
    }

    pub fn max_per_caller(&self) -> usize {
        self.max_per_caller
    }

    /// A slot for `caller`, if it holds fewer than the cap.
    pub fn take(self: &Arc<Self>, caller: &str) -> Option<WatchSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(caller.to_owned()).or_default();
        if *held >= self.max_per_caller {
            return None;
        }
        *held += 1;
        Some(WatchSlot {
            slots: Arc::clone(self),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.caller);
            }
        }
    }
}
/// How often a watcher checks the store for messages other replicas committed.
const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// What can be watched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchKey {
    Feed(Feed),
    Broadcast,
}

type Senders = HashMap<WatchKey, broadcast::Sender<Arc<StoredMessage>>>;

/// Live fan-out of committed messages; cheap to clone.
#[derive(Clone, Default)]
pub struct WatchHub {
    senders: Arc<Mutex<Senders>>,
}

impl WatchHub {
    fn subscribe(&self, key: WatchKey) -> Subscription {
        let mut senders = self.senders.lock().expect("hub lock");
        let rx = senders
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(WATCH_BUFFER).0)
            .subscribe();
        Subscription {
            rx,
            key,
            hub: self.clone(),
        }
    }

    /// Hands a committed batch to its watchers (duplicates were not delivered
    /// again, so they are skipped).
    pub fn publish(&self, items: &[PublishItem], committed: &[Committed]) {
        let senders = self.senders.lock().expect("hub lock");
        if senders.is_empty() {
            return;
        }
        for (item, done) in items.iter().zip(committed).filter(|(_, c)| !c.duplicate) {
            let message = |seq| {
                Arc::new(StoredMessage {
                    message_id: done.message_id,
                    seq,
                    event: item.publish.event.clone(),
                    data: item.publish.data.clone(),
                    ts: done.ts,
                    // Watchers see every message as committed, muted or not.
                    state: Default::default(),
                })
            };
            let send = |key: WatchKey, seq: u64| {
                if let Some(tx) = senders.get(&key) {
                    let _ = tx.send(message(seq));
                }
            };
            match &item.publish.target {
                Target::User(user) => send(WatchKey::Feed(Feed::Inbox(user.clone())), done.seq),
                Target::Users(_) => {
                    for (user, seq) in &done.inbox_seqs {
                        send(WatchKey::Feed(Feed::Inbox(user.clone())), *seq);
                    }
                }
                Target::Topic(topic) => send(WatchKey::Feed(Feed::Topic(topic.clone())), done.seq),
                Target::Broadcast => send(WatchKey::Broadcast, 0),
            }
        }
    }
}

/// A receiver that removes its channel from the hub when it is the last one.
struct Subscription {
    rx: broadcast::Receiver<Arc<StoredMessage>>,
    key: WatchKey,
    hub: WatchHub,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut senders = self.hub.senders.lock().expect("hub lock");
        if senders
            .get(&self.key)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            senders.remove(&self.key);
        }
    }
}

/// Why a watch stream ended early.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("watcher fell {0} broadcast messages behind")]
    Lagged(u64),
}

/// A watch that has subscribed and knows where it starts: everything
/// committed after [`Watcher::open`] returned is streamed.
pub struct Watcher {
    sub: Subscription,
    /// For a feed: the last seq already accounted for.
    feed: Option<(Feed, u64)>,
}

impl Watcher {
    /// Subscribes to `key`, then (for a feed) fixes the starting seq: `since`,
    /// or the feed's current head for a live-only watch.
    pub async fn open(
        store: &dyn Store,
        hub: &WatchHub,
        key: WatchKey,
        since: Option<u64>,
    ) -> Result<Self, StoreError> {
        // Subscribe before reading the store: anything committed from here on is
        // either in the read or in the subscription.
        let sub = hub.subscribe(key.clone());
        let feed = match key {
            WatchKey::Broadcast => None,
            WatchKey::Feed(feed) => {
                let last = match since {
                    Some(since) => since,
                    None => store.history(&feed, 0, 0).await?.head_seq,
                };
                Some((feed, last))
            }
        };
        Ok(Self { sub, feed })
    }

    /// Streams into `out` until the receiver goes away or `shutdown`.
    pub async fn run(self, store: Arc<dyn Store>, out: Out, shutdown: CancellationToken) {
        let Self { mut sub, feed } = self;
        let Some((feed, mut last)) = feed else {
            return follow_broadcast(sub, out, shutdown).await;
        };
        if let Err(e) = catch_up(store.as_ref(), &feed, &mut last, &out).await {
            let _ = out.send(Err(e.into())).await;
            return;
        }
        let mut tick = tokio::time::interval(CATCH_UP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let behind = tokio::select! {
                () = shutdown.cancelled() => return,
                () = out.closed() => return,
                _ = tick.tick() => true,
                live = sub.rx.recv() => match live {
                    Ok(m) if m.seq <= last => false,
                    Ok(m) if m.seq == last + 1 => {
                        last = m.seq;
                        if out.send(Ok((*m).clone())).await.is_err() {
                            return;
                        }
                        false
                    }
                    // A gap (another replica committed in between) or a lag: read the store.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if behind && let Err(e) = catch_up(store.as_ref(), &feed, &mut last, &out).await {
                // Keep the stream; the next tick tries again.
                tracing::warn!(error = %e, "watch catch-up failed");
            }
        }
    }
}

async fn follow_broadcast(mut sub: Subscription, out: Out, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = out.closed() => return,
            live = sub.rx.recv() => match live {
                Ok(m) => {
                    if out.send(Ok((*m).clone())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = out.send(Err(WatchError::Lagged(n))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Sends every stored message after `last`, advancing it.
async fn catch_up(
    store: &dyn Store,
    feed: &Feed,
    last: &mut u64,
    out: &Out,
) -> Result<(), StoreError> {
    loop {
        let page = store.history(feed, *last, CATCH_UP_PAGE).await?;
        let full = page.messages.len() == CATCH_UP_PAGE as usize;
        for m in page.messages {
            *last = m.seq;
            if out.send(Ok(m)).await.is_err() {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
    }
}
