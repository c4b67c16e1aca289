//! Conversions between `notify.v1` messages and domain types.

use std::time::{SystemTime, UNIX_EPOCH};

use notify_core::publish::RawPublish;

use crate::v1::{PublishRequest, publish_request::Target};

/// Borrows a request as the edge-neutral [`RawPublish`] that
/// [`notify_core::Publish::validate`] checks.
pub fn raw_publish(req: &PublishRequest) -> RawPublish<'_> {
    let mut raw = RawPublish {
        event: &req.event,
        data: &req.data,
        idempotency_key: &req.idempotency_key,
        ttl_seconds: req.ttl_seconds,
        ..Default::default()
    };
    match &req.target {
        Some(Target::UserId(user)) => raw.user_id = Some(user),
        Some(Target::Users(list)) => raw.users = Some(&list.user_ids),
        Some(Target::Topic(topic)) => raw.topic = Some(topic),
        Some(Target::Broadcast(b)) => raw.broadcast = *b,
        // Not a stored publish: the Notify API takes it apart (Publish alone).
        Some(Target::ConnectionId(_)) | None => {}
    }
    raw
}

/// A time as the protocol carries it: milliseconds since the Unix epoch (0
/// before it, saturating far after it).
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A gRPC code as its protocol name (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Badge counts as the protocol carries them.
pub fn counts(c: notify_core::inbox::Counts) -> crate::v1::InboxCounts {
    crate::v1::InboxCounts {
        unseen: c.unseen,
        unread: c.unread,
        version: c.version,
    }
}

pub fn breakdown(b: notify_core::inbox::Breakdown) -> crate::v1::GetInboxCountsResponse {
    crate::v1::GetInboxCountsResponse {
        counts: Some(counts(b.counts)),
        events: b
            .events
            .into_iter()
            .map(|e| crate::v1::EventCounts {
                event: e.event,
                unseen: e.unseen,
                unread: e.unread,
            })
            .collect(),
    }
}

pub fn breakdown_of(r: crate::v1::GetInboxCountsResponse) -> notify_core::inbox::Breakdown {
    notify_core::inbox::Breakdown {
        counts: counts_of(r.counts.as_ref()),
        events: r
            .events
            .into_iter()
            .map(|e| notify_core::inbox::EventCounts {
                event: e.event,
                unseen: e.unseen,
                unread: e.unread,
            })
            .collect(),
    }
}

/// Counts from the protocol (absent: zero, version 0).
pub fn counts_of(c: Option<&crate::v1::InboxCounts>) -> notify_core::inbox::Counts {
    c.map(|c| notify_core::inbox::Counts {
        unseen: c.unseen,
        unread: c.unread,
        version: c.version,
    })
    .unwrap_or_default()
}

/// Mutes as the protocol carries them.
pub fn mutes(m: &notify_core::inbox::Mutes) -> crate::v1::Mutes {
    crate::v1::Mutes {
        events: m.events.iter().cloned().collect(),
        namespaces: m.namespaces.iter().cloned().collect(),
    }
}

/// Mutes from the protocol, unchecked (they were checked on the way in).
pub fn mutes_of(m: Option<&crate::v1::Mutes>) -> notify_core::inbox::Mutes {
    m.map(|m| notify_core::inbox::Mutes {
        events: m.events.iter().cloned().collect(),
        namespaces: m.namespaces.iter().cloned().collect(),
    })
    .unwrap_or_default()
}

/// A mark's kind as the protocol carries it.
pub fn mark_as(kind: notify_core::inbox::MarkKind) -> crate::v1::MarkAs {
    use crate::v1::MarkAs as M;
    use notify_core::inbox::MarkKind as K;
    match kind {
        K::Seen => M::Seen,
        K::Read => M::Read,
        K::Archived => M::Archived,
        K::Unseen => M::Unseen,
        K::Unread => M::Unread,
        K::Unarchived => M::Unarchived,
    }
}

/// A mark's kind from the protocol; None for UNSPECIFIED or an unknown number.
pub fn mark_kind(raw: i32) -> Option<notify_core::inbox::MarkKind> {
    notify_core::inbox::MarkKind::ALL
        .into_iter()
        .find(|&k| mark_as(k) as i32 == raw)
}

/// Which archived state a page shows, as the protocol carries it.
pub fn shelf(shelf: notify_core::inbox::Shelf) -> crate::v1::InboxShelf {
    use crate::v1::InboxShelf as S;
    use notify_core::inbox::Shelf;
    match shelf {
        Shelf::Inbox => S::Inbox,
        Shelf::Archived => S::Archived,
        Shelf::All => S::All,
    }
}

/// The shelf from the protocol; None for an unknown number.
pub fn shelf_of(raw: i32) -> Option<notify_core::inbox::Shelf> {
    use notify_core::inbox::Shelf;
    [Shelf::Inbox, Shelf::Archived, Shelf::All]
        .into_iter()
        .find(|&s| shelf(s) as i32 == raw)
}

/// A push destination from the protocol (unchecked: see
/// `notify_core::push::Destination::check`). None when none is set.
pub fn destination_of(
    d: Option<&crate::v1::PushDestination>,
) -> Option<notify_core::push::Destination> {
    use crate::v1::push_destination::Destination as D;
    use notify_core::push::Destination;
    Some(match d?.destination.as_ref()? {
        D::WebPush(w) => Destination::WebPush {
            endpoint: w.endpoint.clone(),
            p256dh: w.p256dh.clone(),
            auth: w.auth.clone(),
        },
        D::Fcm(f) => Destination::Fcm {
            token: f.token.clone(),
        },
        D::Apns(a) => Destination::Apns {
            token: a.token.clone(),
            topic: a.topic.clone(),
            sandbox: a.sandbox,
        },
    })
}

/// A push destination as the protocol carries it.
pub fn destination(d: &notify_core::push::Destination) -> crate::v1::PushDestination {
    use crate::v1::push_destination::Destination as D;
    use notify_core::push::Destination;
    let destination = match d {
        Destination::WebPush {
            endpoint,
            p256dh,
            auth,
        } => D::WebPush(crate::v1::WebPushSubscription {
            endpoint: endpoint.clone(),
            p256dh: p256dh.clone(),
            auth: auth.clone(),
        }),
        Destination::Fcm { token } => D::Fcm(crate::v1::FcmToken {
            token: token.clone(),
        }),
        Destination::Apns {
            token,
            topic,
            sandbox,
        } => D::Apns(crate::v1::ApnsToken {
            token: token.clone(),
            topic: topic.clone(),
            sandbox: *sandbox,
        }),
    };
    crate::v1::PushDestination {
        destination: Some(destination),
    }
}

/// A registered device as the protocol carries it.
pub fn push_device(d: &notify_core::push::Device) -> crate::v1::PushDevice {
    crate::v1::PushDevice {
        device_id: d.id.to_string(),
        destination: Some(destination(&d.destination)),
        registered_ms: millis(d.registered),
    }
}
