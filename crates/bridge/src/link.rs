//! The bridge's side of `BridgeLink.Attach`: one task per notify-svc replica,
//! re-attaching with exponential backoff (and its full state) whenever the
//! stream ends; plus the plain Notify client the bridge reads history with.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use notify_proto::channel::{self, ClientTls};
use notify_proto::v1::{
    self as pb, bridge_down::Msg as Down, bridge_link_client::BridgeLinkClient,
    notify_client::NotifyClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, metadata::MetadataValue, transport::Channel};

use crate::{hub::Hub, queue::MAX_DIRECT};

/// Up-stream messages queued per link; a link that falls this far behind is
/// re-attached, and its Hello carries the state again.
const UP_QUEUE: usize = 16_384;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Limit for one History call during a replay.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the bridge's credential to every call.
#[derive(Clone)]
pub struct Credential(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Credential {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self(match token {
            Some(t) => Some(format!("Bearer {t}").parse()?),
            None => None,
        }))
    }

    pub fn apply<T>(&self, mut req: Request<T>) -> Request<T> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        req
    }
}

/// Client publishes waiting for their result, by request id.
#[derive(Clone, Default)]
pub struct Pending {
    next: Arc<AtomicU64>,
    waiters: Arc<Mutex<HashMap<u64, oneshot::Sender<pb::ClientPublishResult>>>>,
}

impl Pending {
    /// A new request id and the receiver of its result.
    pub fn register(&self) -> (u64, oneshot::Receiver<pb::ClientPublishResult>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("pending lock").insert(id, tx);
        (id, rx)
    }

    pub fn forget(&self, id: u64) {
        self.waiters.lock().expect("pending lock").remove(&id);
    }

    fn resolve(&self, result: pb::ClientPublishResult) {
        let waiter = self
            .waiters
            .lock()
            .expect("pending lock")
            .remove(&result.request_id);
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    }
}

/// Keeps link `index` to `url` attached until `shutdown`.
pub async fn run(
    index: usize,
    url: String,
    tls: ClientTls,
    credential: Credential,
    hub: Hub,
    pending: Pending,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    while !shutdown.is_cancelled() {
        let mut attached = false;
        let link = Attempt {
            index,
            url: &url,
            tls: &tls,
            credential: &credential,
            hub: &hub,
            pending: &pending,
            shutdown: &shutdown,
        };
        match link.attach(&mut attached).await {
            Ok(()) => backoff = BACKOFF_FIRST,
            Err(e) => {
                tracing::warn!(url, error = %e, retry_in = ?backoff, "BridgeLink not attached")
            }
        }
        hub.detach_link(index);
        if attached && !shutdown.is_cancelled() {
            // The replica may have committed messages it could not route
            // to us before the link broke; if it never comes back, only a
            // read finds them.
            hub.catch_up_all();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One attempt to attach link `index`.
struct Attempt<'a> {
    index: usize,
    url: &'a str,
    tls: &'a ClientTls,
    credential: &'a Credential,
    hub: &'a Hub,
    pending: &'a Pending,
    shutdown: &'a CancellationToken,
}

impl Attempt<'_> {
    /// Attaches and serves the link until it breaks; `attached` says
    /// whether it got as far as attaching.
    async fn attach(&self, attached: &mut bool) -> Result<(), Status> {
        let Self {
            index,
            url,
            tls,
            credential,
            hub,
            pending,
            shutdown,
        } = *self;
        // Re-read per attempt: a rotated client certificate is used on reconnect.
        let channel = channel::endpoint(url, tls)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (up, up_rx) = mpsc::channel(UP_QUEUE);
        hub.attach_link(index, up);
        let mut client = BridgeLinkClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let mut down = client
            .attach(credential.apply(Request::new(ReceiverStream::new(up_rx))))
            .await?
            .into_inner();
        tracing::info!(url, "BridgeLink attached");
        *attached = true;
        // What this replica committed while it had no link to us was not
        // delivered live: every socket reads its feeds once more.
        hub.catch_up_all();
        // A message read off the stream behind a burst of deliveries.
        let mut held = None;
        loop {
            let next = match held.take() {
                Some(next) => next,
                None => tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    next = down.message() => next,
                },
            }?;
            match next.and_then(|d| d.msg) {
                Some(Down::Delivery(d)) => {
                    // The deliveries already read go out together: a socket
                    // due several takes them in one write.
                    let mut burst = vec![d];
                    while burst.len() < MAX_DIRECT {
                        match down.message().now_or_never() {
                            Some(Ok(Some(pb::BridgeDown {
                                msg: Some(Down::Delivery(d)),
                            }))) => burst.push(d),
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    hub.deliver(burst);
                }
                Some(Down::Kick(k)) => hub.kick(k),
                Some(Down::PublishResult(r)) => pending.resolve(r),
                Some(Down::Registered(r)) => hub.registered(index, r),
                Some(Down::Subscription(change)) => hub.server_subscription(change),
                Some(Down::Inbox(change)) => hub.inbox_change(change),
                None => return Err(Status::unavailable("notify-svc ended the stream")),
            }
        }
    }
}

/// The Notify API as the bridge uses it (history for replays, the Dev
/// Panel's publishes).
#[derive(Clone)]
pub struct Api {
    client: NotifyClient<Channel>,
    credential: Credential,
}

impl Api {
    /// Connects lazily to `url`.
    pub fn new(url: &str, tls: &ClientTls, credential: Credential) -> anyhow::Result<Self> {
        let channel = channel::endpoint(url, tls)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            // notify-svc pages History by bytes (1 MiB); room for one message
            // of a deployment that raised NOTIFY_MAX_DATA_BYTES past 4 MiB.
            client: NotifyClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
            credential,
        })
    }

    /// A Dev Panel publish, made as the signed-in admin: their token goes
    /// with the bridge's credential and notify-svc checks it there.
    pub async fn publish_as_admin(
        &self,
        admin_token: &str,
        req: pb::PublishRequest,
    ) -> Result<pb::PublishResponse, Status> {
        let mut client = self.client.clone();
        let mut req = self.credential.apply(Request::new(req));
        let admin = tonic::metadata::MetadataValue::try_from(admin_token)
            .map_err(|_| Status::unauthenticated("the admin's token is not a header value"))?;
        req.metadata_mut()
            .insert(notify_proto::PANEL_ADMIN_METADATA, admin);
        req.set_timeout(HISTORY_TIMEOUT);
        Ok(client.publish(req).await?.into_inner())
    }

    /// A client's inbox action, on the user's behalf.
    pub async fn inbox(&self, call: crate::inbox::Call) -> Result<crate::inbox::Answer, Status> {
        use crate::inbox::{Answer, Call};
        let mut client = self.client.clone();
        Ok(match call {
            Call::Mark(r) => Answer::Marked(client.mark_inbox(self.timed(r)).await?.into_inner()),
            Call::List(r) => Answer::Listed(client.list_inbox(self.timed(r)).await?.into_inner()),
            Call::RegisterDevice(r) => {
                let user_id = r.user_id.clone();
                client.register_device(self.timed(r)).await?;
                let list = pb::ListDevicesRequest { user_id };
                Answer::Devices(client.list_devices(self.timed(list)).await?.into_inner())
            }
            Call::ListDevices(r) => {
                Answer::Devices(client.list_devices(self.timed(r)).await?.into_inner())
            }
            Call::RemoveDevice(r) => {
                let user_id = r.user_id.clone();
                client.remove_device(self.timed(r)).await?;
                let list = pb::ListDevicesRequest { user_id };
                Answer::Devices(client.list_devices(self.timed(list)).await?.into_inner())
            }
            Call::Counts(r) => {
                Answer::Counts(client.get_inbox_counts(self.timed(r)).await?.into_inner())
            }
            Call::Preferences(r) => {
                Answer::Preferences(client.get_preferences(self.timed(r)).await?.into_inner())
            }
            Call::Mutes(r) => {
                Answer::Preferences(client.update_preferences(self.timed(r)).await?.into_inner())
            }
        })
    }

    /// A request with the bridge's credential and the same bound as a
    /// replay read (a client waits for the answer).
    fn timed<T>(&self, message: T) -> Request<T> {
        let mut req = self.credential.apply(Request::new(message));
        req.set_timeout(HISTORY_TIMEOUT);
        req
    }

    pub async fn history(&self, req: pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> {
        let mut client = self.client.clone();
        let mut req = self.credential.apply(Request::new(req));
        req.set_timeout(HISTORY_TIMEOUT);
        Ok(client.history(req).await?.into_inner())
    }
}
