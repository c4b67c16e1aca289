//! The Notify API's side of the user's inbox (docs/design.md §4.7): marks,
//! pages with state, mutes, and a producer's edits and retractions. Every
//! change is told to the user's live connections on every bridge through
//! the router (`InboxChange`), after the store has it.

use notify_core::{
    MessageId, UserId, ValidationError,
    inbox::{
        MAX_MUTES, Mark, MarkKind, Mutes, PageQuery, Revised, Revision, RevisionOutcome, Shelf,
        State,
    },
};
use notify_proto::{
    convert::{self, millis},
    v1 as pb,
};
use tonic::{Request, Status};

use super::{NotifyApi, user_id};
use crate::{caller::Right, status};

/// Who may do what here: the user's own actions come through a bridge; a
/// service that publishes may mark and set preferences for its users; reading
/// someone's inbox is an admin's (or a bridge's, for the user).
const MARK: &[Right] = &[Right::Publish, Right::Admin, Right::Bridge];
const READ: &[Right] = &[Right::Admin, Right::Bridge];
const REVISE: &[Right] = &[Right::Publish, Right::Admin];

fn mark_kind(as_: i32) -> Result<MarkKind, Status> {
    convert::mark_kind(as_).ok_or_else(|| {
        Status::invalid_argument(
            "as: say what to mark (MARK_AS_SEEN, _READ, _ARCHIVED, _UNSEEN, _UNREAD, _UNARCHIVED)",
        )
    })
}

fn shelf(raw: i32) -> Result<Shelf, Status> {
    convert::shelf_of(raw)
        .ok_or_else(|| Status::invalid_argument(format!("shelf {raw} is not an InboxShelf")))
}

fn message_id(raw: &str) -> Result<MessageId, Status> {
    MessageId::parse("message_id", raw).map_err(status::invalid)
}

/// An inbox message with its state, as the API answers it.
pub fn inbox_item(user: &UserId, item: notify_core::inbox::Item) -> pb::InboxItem {
    let state = item.state;
    pb::InboxItem {
        message: Some(pb::StoredMessage {
            message_id: item.message_id.to_string(),
            seq: item.seq,
            user_id: user.to_string(),
            event: item.event,
            data: item.data,
            ts_ms: millis(item.ts),
            muted: state.has(State::MUTED),
            ..Default::default()
        }),
        seen: state.has(State::SEEN),
        read: state.has(State::READ),
        archived: state.has(State::ARCHIVED),
        muted: state.has(State::MUTED),
        edited_ms: item.edited.map_or(0, millis),
    }
}

impl NotifyApi {
    pub(super) async fn mark_inbox(
        &self,
        req: Request<pb::MarkInboxRequest>,
    ) -> Result<pb::MarkInboxResponse, Status> {
        self.services.auth.authorize_any(&req, MARK).await?;
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let kind = mark_kind(req.r#as)?;
        let seqs = (!req.seqs.is_empty()).then_some(req.seqs.as_slice());
        let up_to = (req.up_to > 0).then_some(req.up_to);
        let mark = Mark::new(kind, seqs, up_to).map_err(status::invalid)?;
        let marked = self
            .services
            .marks
            .mark(user.clone(), mark)
            .await
            .map_err(status::mark)?;
        let live_connections = if marked.changed > 0 {
            self.tell(
                &user,
                Some(marked.counts),
                pb::inbox_change::Change::CountsOnly(true),
            )
        } else {
            0
        };
        Ok(pb::MarkInboxResponse {
            changed: marked.changed,
            missing: marked.missing,
            counts: Some(convert::counts(marked.counts)),
            live_connections,
        })
    }

    pub(super) async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<pb::ListInboxResponse, Status> {
        self.services.auth.authorize_any(&req, READ).await?;
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let query = PageQuery::new(
            Some(req.before),
            req.limit,
            req.unread_only,
            shelf(req.shelf)?,
            &req.events,
        )
        .map_err(status::invalid)?;
        let page = self
            .services
            .store
            .page(&user, &query)
            .await
            .map_err(status::store)?;
        Ok(pb::ListInboxResponse {
            items: page
                .items
                .into_iter()
                .map(|i| inbox_item(&user, i))
                .collect(),
            next_before: page.next_before.unwrap_or(0),
            first_seq: page.first_seq,
            older_expired: page.older_expired,
            counts: Some(convert::counts(page.counts)),
        })
    }

    pub(super) async fn get_inbox_counts(
        &self,
        req: Request<pb::GetInboxCountsRequest>,
    ) -> Result<pb::GetInboxCountsResponse, Status> {
        self.services.auth.authorize_any(&req, MARK).await?;
        let user = user_id(&req.get_ref().user_id)?;
        let split = self
            .services
            .store
            .counts_by_event(&user)
            .await
            .map_err(status::store)?;
        Ok(convert::breakdown(split))
    }

    pub(super) async fn get_preferences(
        &self,
        req: Request<pb::GetPreferencesRequest>,
    ) -> Result<pb::Preferences, Status> {
        self.services.auth.authorize_any(&req, MARK).await?;
        let user = user_id(&req.get_ref().user_id)?;
        let mutes = self
            .services
            .store
            .mutes(&user)
            .await
            .map_err(status::store)?;
        Ok(pb::Preferences {
            mutes: Some(convert::mutes(&mutes)),
        })
    }

    pub(super) async fn update_preferences(
        &self,
        req: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<pb::Preferences, Status> {
        self.services.auth.authorize_any(&req, MARK).await?;
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let mute = self.mutes(req.mute.as_ref())?;
        let unmute = self.mutes(req.unmute.as_ref())?;
        let both = mute
            .events
            .intersection(&unmute.events)
            .next()
            .or(mute.namespaces.intersection(&unmute.namespaces).next());
        if let Some(name) = both {
            return Err(Status::invalid_argument(format!(
                "{name:?} is both muted and unmuted in one request"
            )));
        }
        // Checked against what is muted now; two devices racing may pass
        // the bound by their last change, which is harmless.
        let now = self
            .services
            .store
            .mutes(&user)
            .await
            .map_err(status::store)?;
        let after = now.events.union(&mute.events).count()
            - now.events.intersection(&unmute.events).count()
            + now.namespaces.union(&mute.namespaces).count()
            - now.namespaces.intersection(&unmute.namespaces).count();
        if after > MAX_MUTES {
            return Err(status::invalid(ValidationError::TooMany {
                field: "mutes",
                count: after,
                max: MAX_MUTES,
            }));
        }
        let mutes = self
            .services
            .store
            .change_mutes(&user, &mute, &unmute)
            .await
            .map_err(status::store)?;
        self.tell(
            &user,
            None,
            pb::inbox_change::Change::Mutes(convert::mutes(&mutes)),
        );
        Ok(pb::Preferences {
            mutes: Some(convert::mutes(&mutes)),
        })
    }

    /// Mutes as a request gives them, checked (namespaces must be configured).
    fn mutes(&self, raw: Option<&pb::Mutes>) -> Result<Mutes, Status> {
        let Some(raw) = raw else {
            return Ok(Mutes::default());
        };
        let mutes = Mutes::new(&raw.events, &raw.namespaces).map_err(status::invalid)?;
        for namespace in &mutes.namespaces {
            if !self.services.topics.iter().any(|(n, _)| n == namespace) {
                let known: Vec<&str> = self.services.topics.iter().map(|(n, _)| n).collect();
                return Err(status::invalid(ValidationError::UnknownNamespace {
                    namespace: namespace.clone(),
                    known: known.join(", "),
                }));
            }
        }
        Ok(mutes)
    }

    pub(super) async fn update_message(
        &self,
        req: Request<pb::UpdateMessageRequest>,
    ) -> Result<pb::UpdateMessageResponse, Status> {
        let caller = self.services.auth.authorize_any(&req, REVISE).await?;
        let req = req.into_inner();
        let id = message_id(&req.message_id)?;
        // An empty event keeps the stored one; the data is checked as a publish's.
        let kept = if req.event.is_empty() {
            "kept"
        } else {
            &req.event
        };
        let checked = notify_core::publish::check_content(kept, &req.data, &self.services.limits)
            .map_err(status::invalid)?;
        let event = (!req.event.is_empty()).then_some(checked);
        let revision = Revision::Update {
            event,
            data: req.data,
        };
        let revised = self.revise(&caller, id, &revision).await?;
        Ok(pb::UpdateMessageResponse {
            updated: inbox_seqs(&revised),
        })
    }

    pub(super) async fn retract_message(
        &self,
        req: Request<pb::RetractMessageRequest>,
    ) -> Result<pb::RetractMessageResponse, Status> {
        let caller = self.services.auth.authorize_any(&req, REVISE).await?;
        let id = message_id(&req.get_ref().message_id)?;
        let revised = self.revise(&caller, id, &Revision::Retract).await?;
        Ok(pb::RetractMessageResponse {
            retracted: inbox_seqs(&revised),
        })
    }

    /// Revises a message (a caller's own, unless an admin's) and tells each
    /// of its users' live connections.
    async fn revise(
        &self,
        caller: &crate::caller::Caller,
        id: MessageId,
        revision: &Revision,
    ) -> Result<Vec<Revised>, Status> {
        let own = (!caller.rights.contains(&Right::Admin)).then_some(caller.name.as_str());
        let outcome = self
            .services
            .store
            .revise(own, id, revision)
            .await
            .map_err(status::store)?;
        let revised = match outcome {
            RevisionOutcome::Done(revised) => revised,
            RevisionOutcome::NotFound => {
                return Err(Status::not_found(format!(
                    "no inbox message {id}: never published to an inbox, expired or retracted"
                )));
            }
            RevisionOutcome::NotYours { .. } => {
                return Err(Status::permission_denied(format!(
                    "message {id} was published by another caller; only it (or an admin) may change it"
                )));
            }
        };
        for r in &revised {
            let change = match &r.item {
                Some(item) => pb::inbox_change::Change::Updated(pb::StoredMessage {
                    message_id: item.message_id.to_string(),
                    seq: item.seq,
                    user_id: r.user.to_string(),
                    event: item.event.clone(),
                    data: item.data.clone(),
                    ts_ms: millis(item.ts),
                    muted: item.state.has(State::MUTED),
                    ..Default::default()
                }),
                None => pb::inbox_change::Change::Retracted(pb::Retracted {
                    message_id: id.to_string(),
                    seq: r.seq,
                }),
            };
            self.tell(&r.user, Some(r.counts), change);
        }
        Ok(revised)
    }

    /// Tells the user's live connections; returns how many it reached.
    fn tell(
        &self,
        user: &UserId,
        counts: Option<notify_core::inbox::Counts>,
        change: pb::inbox_change::Change,
    ) -> u32 {
        self.services.router.inbox_change(
            user,
            pb::InboxChange {
                user_id: user.to_string(),
                counts: counts.map(convert::counts),
                change: Some(change),
            },
        )
    }
}

fn inbox_seqs(revised: &[Revised]) -> Vec<pb::InboxSeq> {
    revised
        .iter()
        .map(|r| pb::InboxSeq {
            user_id: r.user.to_string(),
            seq: r.seq,
        })
        .collect()
}
