//! The push worker: claims due pushes (a lease, so replicas share the
//! queue and a crashed sender's claims come back), decides each by what
//! only this platform knows — did a device ack the message, is the user
//! connected — and sends to every device not yet done.
//!
//! Delivery is at least once per device: devices are recorded done after
//! their provider answered, so a crash resends only what was in flight, and
//! each push carries the message id as the provider's collapse key (Web
//! Push `Topic`, FCM `collapse_key` and `tag`, APNs `apns-collapse-id`),
//! so a resent copy replaces the first instead of showing twice; in a
//! browser the client's push worker drops it (docs/design.md §4.8).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use notify_core::push::{Destination, Device, When};
use notify_store::{
    Store,
    push::{DuePush, Finish, Finished},
};
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    apns::Apns,
    fcm::{Fcm, Notification},
    outcome::Outcome,
    web_push::{Subscription, WebPush},
};

/// Pushes claimed per round trip.
const CLAIM: u32 = 64;
/// How long a claim holds by default: longer than a round of sends (15 s
/// per request at most), so a live sender never loses its claim; a crashed
/// sender's claims come back after it.
pub const LEASE: Duration = Duration::from_secs(60);
/// Pushes sent at once by one worker.
const IN_FLIGHT: usize = 32;
/// Finished pushes waiting to be written, and the most written at once.
const FINISHED_QUEUE: usize = 256;
/// Longest sleep between looks at the queue: pushes other replicas queued
/// and `unacked` pushes coming due are found this late at most.
const POLL: Duration = Duration::from_secs(1);
/// Claims of one push before it is given up (backoff 2 s, 4 s, … 256 s).
const MAX_ATTEMPTS: u32 = 8;

/// The senders configured (a provider without one: its devices fail).
#[derive(Default)]
pub struct Senders {
    pub web_push: Option<WebPush>,
    pub fcm: Option<Fcm>,
    pub apns: Option<Apns>,
}

/// Every outcome, counted by provider: the `notify_push` metric
/// (`provider` = web_push/fcm/apns: sent, gone, retry, failed; `queue`:
/// acked, online, no_device, given_up).
#[derive(Default, Clone)]
pub struct Tally(Family<Vec<(&'static str, &'static str)>, Counter>);

impl Tally {
    fn add(&self, provider: &'static str, outcome: &'static str) {
        self.0
            .get_or_create(&vec![("provider", provider), ("outcome", outcome)])
            .inc();
    }

    /// How many of this outcome so far.
    pub fn count(&self, provider: &'static str, outcome: &'static str) -> u64 {
        self.0
            .get_or_create(&vec![("provider", provider), ("outcome", outcome)])
            .get()
    }

    /// The family, to register in a metrics registry.
    pub fn family(&self) -> Family<Vec<(&'static str, &'static str)>, Counter> {
        self.0.clone()
    }
}

/// Whether this process sees a live connection of the user (the registry
/// in the store may be a moment behind a connect): added to the store's
/// answer.
pub type Presence = Arc<dyn Fn(&notify_core::UserId) -> bool + Send + Sync>;

/// The worker's handle: wake it after a commit queued pushes.
#[derive(Clone)]
pub struct Pusher {
    wake: Arc<Notify>,
    pub tally: Tally,
}

impl Pusher {
    /// Starts the worker on `store` until `stop`.
    pub fn start(
        store: Arc<dyn Store>,
        senders: Senders,
        presence: Presence,
        lease: Duration,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let pusher = Self {
            wake: Arc::new(Notify::new()),
            tally: Tally::default(),
        };
        let (finished, to_record) = mpsc::channel(FINISHED_QUEUE);
        let worker = Worker {
            store: store.clone(),
            senders: Arc::new(senders),
            presence,
            lease,
            tally: pusher.tally.clone(),
            finished,
        };
        tracker.spawn(worker.run(pusher.wake.clone(), stop));
        // Ends when the worker is gone and everything it finished is written.
        tracker.spawn(record(store, to_record));
        pusher
    }

    /// A commit queued pushes due now: look at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

struct Worker {
    store: Arc<dyn Store>,
    senders: Arc<Senders>,
    presence: Presence,
    lease: Duration,
    tally: Tally,
    /// To [`record`], as each push's providers answer.
    finished: mpsc::Sender<Finished>,
}

/// Writes finished claims, whatever has come in since the last write in
/// one statement: a write per answered push cost more Postgres CPU than
/// the send. An answer waits at most one write here, which is all it adds
/// to what a crash resends.
async fn record(store: Arc<dyn Store>, mut finished: mpsc::Receiver<Finished>) {
    let mut batch = Vec::with_capacity(FINISHED_QUEUE);
    while finished.recv_many(&mut batch, FINISHED_QUEUE).await > 0 {
        if let Err(e) = store.finish_pushes(&batch).await {
            // Their leases end and the pushes are claimed again.
            tracing::warn!(error = %e, pushes = batch.len(), "finished pushes not recorded");
        }
        batch.clear();
    }
}

impl Worker {
    async fn run(self, wake: Arc<Notify>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let claimed = match self.store.claim_pushes(CLAIM, self.lease).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "push queue unreachable; retrying");
                    Vec::new()
                }
            };
            if claimed.len() as u32 == CLAIM {
                self.send_all(claimed).await;
                continue;
            }
            if !claimed.is_empty() {
                self.send_all(claimed).await;
            }
            let nap = self.until_next().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// How long until the next push is due, at most [`POLL`].
    async fn until_next(&self) -> Duration {
        match self.store.next_push_due().await {
            Ok(Some(due)) => due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(POLL),
            _ => POLL,
        }
    }

    async fn send_all(&self, claimed: Vec<DuePush>) {
        futures::stream::iter(claimed)
            .for_each_concurrent(IN_FLIGHT, |push| async move {
                let finish = self.handle(&push).await;
                let finished = Finished {
                    message_id: push.message_id,
                    user: push.user,
                    finish,
                };
                // Closed only when the process stops: the lease brings it back.
                let _ = self.finished.send(finished).await;
            })
            .await;
    }

    /// Decides, sends to the devices left, and says how the claim ends.
    async fn handle(&self, push: &DuePush) -> Finish {
        if push.acked {
            self.tally.add("queue", "acked");
            return Finish::Done;
        }
        if push.when == When::Offline && (push.live || (self.presence)(&push.user)) {
            self.tally.add("queue", "online");
            return Finish::Done;
        }
        let left: Vec<Device> = push
            .devices
            .iter()
            .filter(|d| !push.devices_done.contains(&d.id))
            .cloned()
            .collect();
        if left.is_empty() {
            if push.devices_done.is_empty() {
                self.tally.add("queue", "no_device");
            }
            return Finish::Done;
        }
        let payload = serde_json::json!({
            "title": push.title,
            "body": push.body,
            "message_id": push.message_id.to_string(),
            "seq": push.seq,
            "event": push.event,
        })
        .to_string();
        let outcomes: Vec<(Device, Outcome)> = futures::stream::iter(left)
            .map(|device| async {
                let outcome = self.send(&device, push, payload.as_bytes()).await;
                (device, outcome)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut done = push.devices_done.clone();
        let mut wait: Option<Duration> = None;
        let mut retrying = false;
        for (device, outcome) in outcomes {
            let provider = device.destination.provider().name();
            self.tally.add(provider, outcome.label());
            match outcome {
                Outcome::Sent => done.push(device.id),
                Outcome::Gone => {
                    if let Err(e) = self.store.remove_device(None, &device.id).await {
                        tracing::warn!(error = %e, "a gone device was not removed");
                    }
                    done.push(device.id);
                }
                Outcome::Failed { why } => {
                    tracing::warn!(provider, device = %device.id, %why, "push refused");
                    done.push(device.id);
                }
                Outcome::Retry { after, why } => {
                    tracing::info!(provider, device = %device.id, %why, "push to retry");
                    retrying = true;
                    wait = wait.max(after);
                }
            }
        }
        if retrying {
            self.retry(push, done, wait)
        } else {
            Finish::Done
        }
    }

    /// Again later with exponential backoff (or the provider's
    /// Retry-After, if longer); given up after [`MAX_ATTEMPTS`].
    fn retry(
        &self,
        push: &DuePush,
        done: Vec<notify_core::push::DeviceId>,
        after: Option<Duration>,
    ) -> Finish {
        if push.attempts + 1 >= MAX_ATTEMPTS {
            self.tally.add("queue", "given_up");
            return Finish::Done;
        }
        let backoff = Duration::from_secs(2u64 << push.attempts.min(7));
        Finish::Retry {
            at: SystemTime::now() + backoff.max(after.unwrap_or_default()),
            devices_done: done,
        }
    }

    async fn send(&self, device: &Device, push: &DuePush, payload: &[u8]) -> Outcome {
        // The message id (32 hex digits) collapses copies of one push.
        let collapse = push.message_id.0.simple().to_string();
        let message_id = push.message_id.to_string();
        let notification = Notification {
            title: &push.title,
            body: &push.body,
            message_id: &message_id,
            seq: push.seq,
            event: &push.event,
            collapse: &collapse,
        };
        let senders = &self.senders;
        let missing = || Outcome::Failed {
            why: format!(
                "no {} sender configured",
                device.destination.provider().name()
            ),
        };
        match &device.destination {
            Destination::WebPush {
                endpoint,
                p256dh,
                auth,
            } => match &senders.web_push {
                Some(sender) => {
                    let to = Subscription {
                        endpoint,
                        p256dh,
                        auth,
                    };
                    sender.send(&to, payload, &collapse).await
                }
                None => missing(),
            },
            Destination::Fcm { token } => match &senders.fcm {
                Some(sender) => sender.send(token, &notification).await,
                None => missing(),
            },
            Destination::Apns {
                token,
                topic,
                sandbox,
            } => match &senders.apns {
                Some(sender) => sender.send(token, topic, *sandbox, &notification).await,
                None => missing(),
            },
        }
    }
}
