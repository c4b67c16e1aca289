//! The user's side of the inbox on a socket (docs/design.md §5.2): the
//! client's `mark`, `history`, `counts`, `mute`, `unmute` and `preferences`
//! actions, and its push devices (`register_push`, `push_devices`,
//! `unregister_push`),
//! each a Notify API call made on the user's behalf off the connection's
//! loop, and the frames that keep a socket's badge and list current —
//! `counts` (only when newer than what the socket has: copies of two
//! commits may cross on the way), `updated`, `retracted`, `preferences`.

use notify_core::inbox::{Counts, MarkKind, Mutes, Shelf};
use notify_proto::{convert, v1 as pb};
use serde_json::value::RawValue;
use tonic::{Code, Status};

use notify_proto::json::PushDestinationJson;

use crate::protocol::{
    ApnsJson, CountsJson, ErrorCode, FcmJson, FrameId, HistoryItem, MutesJson, PushDeviceJson,
    ServerFrame, WebPushJson, error_text,
};

/// Inbox calls one socket may have in flight: a client that floods marks
/// is told `rate_limited` instead of queueing calls without bound.
pub const CALLS_PER_CONNECTION: u8 = 4;

pub fn counts_json(c: Counts) -> CountsJson {
    CountsJson {
        unseen: c.unseen,
        unread: c.unread,
    }
}

pub fn mutes_json(m: &Mutes) -> MutesJson<'_> {
    MutesJson {
        events: m.events.iter().map(String::as_str).collect(),
        namespaces: m.namespaces.iter().map(String::as_str).collect(),
    }
}

/// The counts a socket was last sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Badge(Counts);

impl Badge {
    pub fn new(counts: Counts) -> Self {
        Self(counts)
    }

    /// A `counts` frame if `counts` is newer than the socket's and shows
    /// other numbers; remembers it either way when newer.
    pub fn update(&mut self, counts: Counts) -> Option<String> {
        if counts.version <= self.0.version {
            return None;
        }
        let changed = (counts.unseen, counts.unread) != (self.0.unseen, self.0.unread);
        self.0 = counts;
        changed.then(|| {
            ServerFrame::Counts {
                unseen: counts.unseen,
                unread: counts.unread,
                events: None,
                id: None,
            }
            .to_text()
        })
    }
}

/// The frames an inbox change from notify-svc becomes on one socket, in
/// order (the counts last, after what changed them).
pub fn change_frames(change: &pb::InboxChange, badge: &mut Badge) -> Vec<String> {
    use pb::inbox_change::Change;
    let mut frames = Vec::new();
    match &change.change {
        Some(Change::Updated(m)) => {
            if let Ok(data) = RawValue::from_string(m.data.clone()) {
                frames.push(
                    ServerFrame::Updated {
                        id: &m.message_id,
                        seq: m.seq,
                        event: &m.event,
                        data: &data,
                        ts: m.ts_ms,
                    }
                    .to_text(),
                );
            }
        }
        Some(Change::Retracted(r)) => frames.push(
            ServerFrame::Retracted {
                id: &r.message_id,
                seq: r.seq,
            }
            .to_text(),
        ),
        Some(Change::Mutes(m)) => {
            let mutes = convert::mutes_of(Some(m));
            frames.push(
                ServerFrame::Preferences {
                    mutes: mutes_json(&mutes),
                    id: None,
                }
                .to_text(),
            );
        }
        Some(Change::CountsOnly(_)) | None => {}
    }
    if let Some(c) = &change.counts
        && let Some(frame) = badge.update(convert::counts_of(Some(c)))
    {
        frames.push(frame);
    }
    frames
}

/// A client's inbox action, checked enough to call notify-svc with.
#[derive(Debug)]
pub enum Call {
    Mark(pb::MarkInboxRequest),
    List(pb::ListInboxRequest),
    Preferences(pb::GetPreferencesRequest),
    Mutes(pb::UpdatePreferencesRequest),
    Counts(pb::GetInboxCountsRequest),
    /// Push devices: each answered with the user's devices after it.
    RegisterDevice(pb::RegisterDeviceRequest),
    ListDevices(pb::ListDevicesRequest),
    RemoveDevice(pb::RemoveDeviceRequest),
}

/// The call a `mark` frame makes; the shapes notify-svc checks (bounds,
/// one of `seqs` and `up_to`) are left to it, so its messages reach the client.
pub fn mark(
    user: &str,
    kind: &str,
    seqs: Option<Vec<u64>>,
    up_to: Option<u64>,
) -> Result<Call, String> {
    let as_ = convert::mark_as(MarkKind::parse(kind).map_err(|e| e.to_string())?);
    if seqs.as_ref().is_some_and(Vec::is_empty) {
        return Err("seqs is empty".into());
    }
    if up_to == Some(0) {
        return Err("up_to is 0: seqs start at 1".into());
    }
    Ok(Call::Mark(pb::MarkInboxRequest {
        user_id: user.to_owned(),
        r#as: as_ as i32,
        seqs: seqs.unwrap_or_default(),
        up_to: up_to.unwrap_or(0),
    }))
}

/// The call a `history` frame makes.
pub fn history(
    user: &str,
    before: Option<u64>,
    limit: Option<u32>,
    unread_only: bool,
    show: Option<&str>,
    events: Vec<String>,
) -> Result<Call, String> {
    let shelf = convert::shelf(Shelf::parse(show.unwrap_or_default()).map_err(|e| e.to_string())?);
    Ok(Call::List(pb::ListInboxRequest {
        user_id: user.to_owned(),
        before: before.unwrap_or(0),
        limit: limit.unwrap_or(0),
        unread_only,
        shelf: shelf as i32,
        events,
    }))
}

/// The call a `mute` (`mute` true) or `unmute` frame makes.
pub fn mutes(user: &str, mute: bool, events: Vec<String>, namespaces: Vec<String>) -> Call {
    let change = Some(pb::Mutes { events, namespaces });
    let (mute, unmute) = if mute { (change, None) } else { (None, change) };
    Call::Mutes(pb::UpdatePreferencesRequest {
        user_id: user.to_owned(),
        mute,
        unmute,
    })
}

/// The call a `register_push` frame makes: exactly one destination.
pub fn register_push(
    user: &str,
    web_push: Option<WebPushJson>,
    fcm: Option<FcmJson>,
    apns: Option<ApnsJson>,
) -> Result<Call, String> {
    let destination = PushDestinationJson {
        web_push,
        fcm,
        apns,
    }
    .into_destination()?;
    Ok(Call::RegisterDevice(pb::RegisterDeviceRequest {
        user_id: user.to_owned(),
        destination: Some(destination),
    }))
}

pub fn push_devices(user: &str) -> Call {
    Call::ListDevices(pb::ListDevicesRequest {
        user_id: user.to_owned(),
    })
}

pub fn unregister_push(user: &str, device_id: String) -> Call {
    Call::RemoveDevice(pb::RemoveDeviceRequest {
        user_id: user.to_owned(),
        device_id,
    })
}

/// The call a `counts` frame makes.
pub fn counts(user: &str) -> Call {
    Call::Counts(pb::GetInboxCountsRequest {
        user_id: user.to_owned(),
    })
}

pub fn preferences(user: &str) -> Call {
    Call::Preferences(pb::GetPreferencesRequest {
        user_id: user.to_owned(),
    })
}

/// The reply frame of an answered call; `badge` learns the counts it carries.
pub fn reply(answer: Answer, id: Option<&FrameId>) -> (String, Option<Counts>) {
    match answer {
        Answer::Marked(r) => {
            let counts = convert::counts_of(r.counts.as_ref());
            let text = ServerFrame::Marked {
                changed: r.changed,
                missing: &r.missing,
                counts: counts_json(counts),
                id,
            }
            .to_text();
            (text, Some(counts))
        }
        Answer::Listed(r) => {
            let counts = convert::counts_of(r.counts.as_ref());
            (history_frame(&r, counts, id), Some(counts))
        }
        Answer::Counts(r) => {
            let split = convert::breakdown_of(r);
            let events = split
                .events
                .iter()
                .map(|e| {
                    let counts = CountsJson {
                        unseen: e.unseen,
                        unread: e.unread,
                    };
                    (e.event.as_str(), counts)
                })
                .collect();
            let text = ServerFrame::Counts {
                unseen: split.counts.unseen,
                unread: split.counts.unread,
                events: Some(events),
                id,
            }
            .to_text();
            (text, Some(split.counts))
        }
        Answer::Devices(r) => {
            let vapid_public_key = r.vapid_public_key;
            let devices: Vec<PushDeviceJson> = r.devices.into_iter().map(Into::into).collect();
            let text = ServerFrame::PushDevices {
                devices: &devices,
                vapid_public_key: (!vapid_public_key.is_empty())
                    .then_some(vapid_public_key.as_str()),
                id,
            }
            .to_text();
            (text, None)
        }
        Answer::Preferences(p) => {
            let mutes = convert::mutes_of(p.mutes.as_ref());
            let text = ServerFrame::Preferences {
                mutes: mutes_json(&mutes),
                id,
            }
            .to_text();
            (text, None)
        }
    }
}

fn history_frame(r: &pb::ListInboxResponse, counts: Counts, id: Option<&FrameId>) -> String {
    let datas: Vec<Box<RawValue>> = r
        .items
        .iter()
        .map(|i| {
            let data = i.message.as_ref().map_or("null", |m| m.data.as_str());
            RawValue::from_string(data.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
        })
        .collect();
    let items: Vec<HistoryItem<'_>> = r
        .items
        .iter()
        .zip(&datas)
        .filter_map(|(i, data)| {
            let m = i.message.as_ref()?;
            Some(HistoryItem {
                id: &m.message_id,
                seq: m.seq,
                event: &m.event,
                data,
                ts: m.ts_ms,
                seen: i.seen,
                read: i.read,
                archived: i.archived,
                muted: i.muted,
                edited: (i.edited_ms > 0).then_some(i.edited_ms),
            })
        })
        .collect();
    ServerFrame::History {
        items: &items,
        next_before: (r.next_before > 0).then_some(r.next_before),
        first_seq: r.first_seq,
        older_expired: r.older_expired,
        counts: counts_json(counts),
        id,
    }
    .to_text()
}

/// What notify-svc answered.
#[derive(Debug)]
pub enum Answer {
    Marked(pb::MarkInboxResponse),
    Listed(pb::ListInboxResponse),
    Preferences(pb::Preferences),
    Counts(pb::GetInboxCountsResponse),
    Devices(pb::ListDevicesResponse),
}

/// The error frame for a refused or failed call: the client's fault
/// (`bad_request`, with notify-svc's reason), or not now (`unavailable`).
pub fn refused(status: &Status, id: Option<&FrameId>) -> String {
    let code = match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::OutOfRange => ErrorCode::BadRequest,
        Code::PermissionDenied => ErrorCode::Forbidden,
        _ => ErrorCode::Unavailable,
    };
    let message = match code {
        ErrorCode::Unavailable => "the inbox cannot be reached now; retry",
        _ => status.message(),
    };
    error_text(code, message, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(unseen: u64, unread: u64, version: u64) -> Counts {
        Counts {
            unseen,
            unread,
            version,
        }
    }

    #[test]
    fn a_badge_takes_only_newer_counts_and_says_only_changes() {
        let mut badge = Badge::new(counts(1, 1, 5));
        assert_eq!(
            badge.update(counts(9, 9, 4)),
            None,
            "older: crossed on the way"
        );
        assert_eq!(badge.update(counts(1, 1, 6)), None, "newer, same numbers");
        assert_eq!(
            badge.update(counts(2, 2, 7)).as_deref(),
            Some(r#"{"type":"counts","unseen":2,"unread":2}"#)
        );
        assert_eq!(badge.update(counts(2, 2, 7)), None, "the same copy twice");
    }

    #[test]
    fn frames_ask_for_what_notify_svc_checks() {
        assert!(mark("u", "read", Some(vec![1]), None).is_ok());
        assert!(mark("u", "reed", Some(vec![1]), None).is_err());
        assert!(mark("u", "read", Some(vec![]), None).is_err());
        assert!(mark("u", "read", None, Some(0)).is_err());
        assert!(history("u", None, None, false, Some("sideways"), Vec::new()).is_err());
        let Ok(Call::List(list)) = history("u", Some(9), Some(5), true, Some("all"), Vec::new())
        else {
            panic!("not a list call");
        };
        assert_eq!(
            (list.before, list.limit, list.shelf),
            (9, 5, pb::InboxShelf::All as i32)
        );
    }
}
