//! Push to users who are away, in the store (docs/design.md §4.8): the
//! devices a user registered, and the durable queue of pushes that commits
//! made due — written in the publish's own transaction, claimed by a
//! sender with a lease, finished device by device.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    push::{Destination, Device, DeviceId, When},
};

use crate::StoreError;

/// What registering a device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub device: Device,
    /// The user the address belonged to before, when it moved.
    pub moved_from: Option<UserId>,
    /// Devices of the user forgotten to stay within `MAX_DEVICES`.
    pub evicted: Vec<DeviceId>,
}

/// A push whose time has come, claimed by one sender until its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePush {
    pub message_id: MessageId,
    pub user: UserId,
    pub seq: u64,
    pub event: String,
    pub when: When,
    pub title: String,
    pub body: String,
    pub created: SystemTime,
    /// Claims before this one.
    pub attempts: u32,
    /// Devices a previous attempt finished (sent, or gave up on).
    pub devices_done: Vec<DeviceId>,
    /// A device acked the message (the user's acked seq reached it).
    pub acked: bool,
    /// The user has a live connection on some bridge.
    pub live: bool,
    /// The user's devices when claimed, oldest registration first (read
    /// with the claim: no round trip per push).
    pub devices: Vec<Device>,
}

/// How a sender leaves a claimed push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Nothing more to send: the row goes.
    Done,
    /// Some devices are left: try again at `at`, these devices done.
    Retry {
        at: SystemTime,
        devices_done: Vec<DeviceId>,
    },
}

/// A claim's end: which push, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub message_id: MessageId,
    pub user: UserId,
    pub finish: Finish,
}

#[async_trait]
pub trait Push: Send + Sync {
    /// Stores a device for the user (the same address again: the same
    /// device, registered now; another user's: moved to this one).
    async fn register_device(
        &self,
        user: &UserId,
        destination: &Destination,
    ) -> Result<Registered, StoreError>;

    /// The user's devices, oldest registration first.
    async fn devices(&self, user: &UserId) -> Result<Vec<Device>, StoreError>;

    /// Forgets a device: the user's own (`user` Some) or any (a provider
    /// said the address is gone). Whether it was there.
    async fn remove_device(
        &self,
        user: Option<&UserId>,
        device: &DeviceId,
    ) -> Result<bool, StoreError>;

    /// Claims up to `limit` due pushes nobody holds, for `lease`, with what
    /// the decision and the sends need (acked, live, the user's devices),
    /// oldest due first.
    async fn claim_pushes(&self, limit: u32, lease: Duration) -> Result<Vec<DuePush>, StoreError>;

    /// Ends claims, the done ones in one statement (a sender finishes what
    /// its providers answered together, not a transaction per push).
    async fn finish_pushes(&self, finished: &[Finished]) -> Result<(), StoreError>;

    /// When the next push is due (None: the queue is empty).
    async fn next_push_due(&self) -> Result<Option<SystemTime>, StoreError>;
}

/// A destination's provider-specific columns: (p256dh, auth, apns_topic,
/// sandbox), the same in both stores.
pub(crate) fn columns(d: &Destination) -> (Option<&str>, Option<&str>, Option<&str>, bool) {
    match d {
        Destination::WebPush { p256dh, auth, .. } => (Some(p256dh), Some(auth), None, false),
        Destination::Fcm { .. } => (None, None, None, false),
        Destination::Apns { topic, sandbox, .. } => (None, None, Some(topic), *sandbox),
    }
}

/// A destination back from its stored columns (see [`columns`]).
pub(crate) fn destination(
    provider: &str,
    address: String,
    p256dh: Option<String>,
    auth: Option<String>,
    topic: Option<String>,
    sandbox: bool,
) -> Result<Destination, StoreError> {
    Ok(match provider {
        "web_push" => Destination::WebPush {
            endpoint: address,
            p256dh: p256dh.unwrap_or_default(),
            auth: auth.unwrap_or_default(),
        },
        "fcm" => Destination::Fcm { token: address },
        "apns" => Destination::Apns {
            token: address,
            topic: topic.unwrap_or_default(),
            sandbox,
        },
        other => {
            return Err(StoreError::Internal(format!(
                "unknown push provider {other}"
            )));
        }
    })
}
