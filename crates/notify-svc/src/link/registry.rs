//! The connection registry's and lifecycle log's writer. Bridges report
//! connections opening and closing by the thousand during a connect storm;
//! one task applies the changes to the store in order, a batch per round
//! trip, so link streams never wait on the database. A failed batch is
//! retried with the changes that arrived meanwhile folded in: nothing is
//! dropped while the database is away, and the registry converges once it
//! is back. Lifecycle events are recorded in the order heard (the store
//! drops copies other replicas recorded first), and WatchConnections
//! streams are woken once they are.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use notify_core::ConnectionId;
use notify_store::{
    ConnectionEvent, ConnectionRecord, Store, StoreError, lifecycle::REASON_CLOSED_UNHEARD,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::services::LifecycleSignal;

/// Changes queued before link streams wait; the writer drains continuously,
/// so this only fills if the writer task is starved.
const QUEUE: usize = 65_536;
/// Changes folded into one batch before it is written.
const BATCH: usize = 4_096;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One change of the registry, as a bridge reported it.
#[derive(Debug)]
pub enum Change {
    Open(ConnectionRecord),
    Close(ConnectionId),
    /// A bridge's Hello, the whole truth about it: its rows not `live` go,
    /// each recorded closed (`closed_unheard`).
    Replace {
        bridge: String,
        live: Vec<ConnectionId>,
    },
    /// A lifecycle event, to record once.
    Event(ConnectionEvent),
}

/// Sends changes to the writer; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    tx: mpsc::Sender<Change>,
}

impl Registry {
    /// Starts the writer; it ends once every handle is dropped and the
    /// last batch is written (or `shutdown` came while the store was away).
    pub fn start(
        store: Arc<dyn Store>,
        recorded: LifecycleSignal,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(run(store, recorded, rx, shutdown));
        Self { tx }
    }

    pub async fn change(&self, change: Change) {
        // Fails only when the writer is gone, at shutdown.
        let _ = self.tx.send(change).await;
    }
}

async fn run(
    store: Arc<dyn Store>,
    recorded: LifecycleSignal,
    mut rx: mpsc::Receiver<Change>,
    shutdown: CancellationToken,
) {
    let mut plan = Plan::default();
    let mut retry = RETRY_FIRST;
    loop {
        if plan.is_empty() {
            match rx.recv().await {
                Some(change) => plan.add(change),
                None => return,
            }
        }
        while plan.len() < BATCH {
            match rx.try_recv() {
                Ok(change) => plan.add(change),
                Err(_) => break,
            }
        }
        match plan.apply(store.as_ref()).await {
            Ok(()) => {
                if plan.records_events() {
                    recorded.recorded();
                }
                plan = Plan::default();
                retry = RETRY_FIRST;
            }
            Err(e) if shutdown.is_cancelled() => {
                tracing::warn!(error = %e, "registry changes not written at shutdown");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "writing the connection registry failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Changes folded so that applying them as replaces, then closes, then
/// opens gives the same rows as applying them one by one in arrival order;
/// events keep their order.
#[derive(Debug, Default)]
struct Plan {
    replaces: Vec<(String, Vec<ConnectionId>)>,
    closes: HashSet<ConnectionId>,
    opens: HashMap<ConnectionId, ConnectionRecord>,
    events: Vec<ConnectionEvent>,
}

impl Plan {
    fn add(&mut self, change: Change) {
        match change {
            // Opens of that bridge queued earlier and not live any more
            // would be replaced anyway: never written, but closed all the same.
            Change::Replace { bridge, live } => {
                let keep: HashSet<ConnectionId> = live.iter().copied().collect();
                let gone: Vec<ConnectionId> = self
                    .opens
                    .values()
                    .filter(|r| r.bridge_id == bridge && !keep.contains(&r.connection_id))
                    .map(|r| r.connection_id)
                    .collect();
                for id in gone {
                    if let Some(r) = self.opens.remove(&id) {
                        self.events.push(ConnectionEvent::unreported_close(
                            r.connection_id,
                            r.user_id,
                            r.bridge_id,
                            REASON_CLOSED_UNHEARD,
                        ));
                    }
                }
                self.replaces.retain(|(b, _)| *b != bridge);
                self.replaces.push((bridge, live));
            }
            Change::Open(record) => {
                self.opens.insert(record.connection_id, record);
            }
            // Opened and closed within one batch: never written at all.
            Change::Close(id) => {
                if self.opens.remove(&id).is_none() {
                    self.closes.insert(id);
                }
            }
            Change::Event(event) => self.events.push(event),
        }
    }

    fn len(&self) -> usize {
        self.replaces.len() + self.closes.len() + self.opens.len() + self.events.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether applying it records lifecycle events (a replace may).
    fn records_events(&self) -> bool {
        !self.events.is_empty() || !self.replaces.is_empty()
    }

    /// Writes the plan; a retry after a partial failure writes it again,
    /// which is safe: every step is idempotent and opens come after the
    /// replaces that would remove them.
    async fn apply(&self, store: &dyn Store) -> Result<(), StoreError> {
        if !self.replaces.is_empty() {
            // Seen before its rows are written: expiry never takes a
            // just-registered row for a lost bridge's.
            let bridges: Vec<String> = self.replaces.iter().map(|(b, _)| b.clone()).collect();
            store.bridges_seen(&bridges).await?;
        }
        for (bridge, live) in &self.replaces {
            store.replace_bridge(bridge, live).await?;
        }
        let closes: Vec<ConnectionId> = self.closes.iter().copied().collect();
        store.remove_connections(&closes).await?;
        let opens: Vec<ConnectionRecord> = self.opens.values().cloned().collect();
        store.register_connections(&opens).await?;
        store.record_lifecycle(&self.events).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use notify_core::UserId;

    use super::*;

    fn open(bridge: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: ConnectionId::new(),
            user_id: UserId::parse("user", "ann").unwrap(),
            bridge_id: bridge.into(),
            connected_at: SystemTime::now(),
            last_seen: SystemTime::now(),
        }
    }

    #[test]
    fn a_connection_opened_and_closed_in_one_batch_is_never_written() {
        let mut plan = Plan::default();
        let r = open("b1");
        let id = r.connection_id;
        plan.add(Change::Open(r));
        plan.add(Change::Close(id));
        assert!(plan.is_empty());
    }

    #[test]
    fn a_replace_drops_earlier_opens_of_its_bridge_it_does_not_list_and_closes_them() {
        let mut plan = Plan::default();
        let (early, listed, other) = (open("b1"), open("b1"), open("b2"));
        let (early_id, listed_id, other_id) = (
            early.connection_id,
            listed.connection_id,
            other.connection_id,
        );
        plan.add(Change::Open(early));
        plan.add(Change::Open(listed));
        plan.add(Change::Open(other));
        plan.add(Change::Replace {
            bridge: "b1".into(),
            live: vec![listed_id],
        });
        let late = open("b1");
        let late_id = late.connection_id;
        plan.add(Change::Open(late));
        assert!(!plan.opens.contains_key(&early_id));
        assert!(plan.opens.contains_key(&listed_id));
        assert!(plan.opens.contains_key(&other_id));
        assert!(plan.opens.contains_key(&late_id));
        assert_eq!(plan.replaces, [("b1".to_owned(), vec![listed_id])]);
        let closed: Vec<(ConnectionId, (u16, &str))> = plan
            .events
            .iter()
            .map(|e| (e.connection_id, e.what.close()))
            .collect();
        assert_eq!(closed, [(early_id, (1006, "closed_unheard"))]);
    }

    #[test]
    fn closes_of_connections_written_earlier_are_kept() {
        let mut plan = Plan::default();
        let id = ConnectionId::new();
        plan.add(Change::Close(id));
        assert!(plan.closes.contains(&id));
        assert_eq!(plan.len(), 1);
    }
}
