//! What a change of a fight means: an outbox row (the status before and
//! after, and the row as the trigger saw it) becomes the typed event that
//! `EmitFightEvent` takes. Pure.
//!
//! | change | event |
//! |---|---|
//! | insert | `created` |
//! | status open → accepted | `accepted` |
//! | status → completed | `completed` (winner; payout = the pot, both stakes) |
//! | status → cancelled | `cancelled` |
//! | anything else (stake, deadline edited; same status) | `updated` |
//!
//! `expired` does not come from the outbox: the tracker emits it for open
//! fights past their deadline.

use notify_proto::v1::{self as pb, fight_event::Kind};
use serde::Deserialize;

/// The row as the outbox trigger stored it (`to_jsonb(NEW)`, or SQLite's
/// `json_object` of every column).
#[derive(Debug, Clone, Deserialize)]
pub struct FightRow {
    pub id: String,
    pub creator_id: String,
    pub acceptor_id: Option<String>,
    pub stake: i64,
    pub currency: String,
    pub status: String,
    pub winner_id: Option<String>,
    /// Timestamps in RFC 3339, as the database writes them in JSON.
    pub accept_deadline: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct Change {
    pub outbox_id: i64,
    /// `None` for the fight's insert.
    pub old_status: Option<String>,
    pub fight: FightRow,
}

/// The outbox row could not be read as a fight.
#[derive(Debug, thiserror::Error)]
#[error("outbox row {outbox_id}: {why}")]
pub struct BadRow {
    pub outbox_id: i64,
    pub why: String,
}

fn status(raw: &str) -> pb::FightStatus {
    match raw {
        "open" => pb::FightStatus::Open,
        "accepted" => pb::FightStatus::Accepted,
        "completed" => pb::FightStatus::Completed,
        "cancelled" => pb::FightStatus::Cancelled,
        "expired" => pb::FightStatus::Expired,
        _ => pb::FightStatus::Unspecified,
    }
}

/// Unix milliseconds of an RFC 3339 timestamp as Postgres writes it in JSON
/// (`2026-11-23T15:04:05.123456+00:00`: `YYYY-MM-DDTHH:MM:SS[.f]±HH[:MM]`)
/// or as the SQLite schema keeps it (`2026-11-23T15:04:05.123Z`).
fn millis(raw: &str) -> Option<i64> {
    let utc;
    let raw = match raw.strip_suffix('Z') {
        Some(clock) => {
            utc = format!("{clock}+00:00");
            utc.as_str()
        }
        None => raw,
    };
    let (date, rest) = raw.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let offset_at = rest.rfind(['+', '-']).filter(|&i| i >= 8)?;
    let (clock, offset) = rest.split_at(offset_at);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (c.next()??, c.next()??, c.next()??);
    let ms = frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(3)
        .collect::<String>()
        .parse::<i64>()
        .ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut o = offset[1..].splitn(2, ':').map(|p| p.parse::<i64>().ok());
    let (oh, om) = (o.next()??, o.next().unwrap_or(Some(0))?);
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s - sign * (oh * 3600 + om * 60);
    Some(secs * 1000 + ms)
}

impl FightRow {
    /// The fight as the Notify API types it.
    pub fn to_proto(&self) -> Result<pb::Fight, String> {
        let ms = |field: &str, raw: &str| {
            millis(raw).ok_or_else(|| format!("{field} {raw:?} is not a timestamp"))
        };
        Ok(pb::Fight {
            fight_id: self.id.clone(),
            creator_id: self.creator_id.clone(),
            acceptor_id: self.acceptor_id.clone().unwrap_or_default(),
            stake: self.stake,
            currency: self.currency.clone(),
            status: status(&self.status) as i32,
            accept_deadline_ms: ms("accept_deadline", &self.accept_deadline)?,
            created_at_ms: ms("created_at", &self.created_at)?,
            updated_at_ms: ms("updated_at", &self.updated_at)?,
        })
    }
}

impl Change {
    /// The event this change is.
    pub fn event(&self) -> Result<pb::FightEvent, BadRow> {
        let bad = |why: String| BadRow {
            outbox_id: self.outbox_id,
            why,
        };
        let fight = Some(self.fight.to_proto().map_err(bad)?);
        let new = self.fight.status.as_str();
        let kind = match (self.old_status.as_deref(), new) {
            (None, _) => Kind::Created(pb::FightCreated { fight }),
            (Some(old), new) if old == new => Kind::Updated(pb::FightUpdated {
                fight,
                previous_status: status(old) as i32,
            }),
            (_, "accepted") => Kind::Accepted(pb::FightAccepted { fight }),
            (_, "completed") => Kind::Completed(pb::FightCompleted {
                fight,
                winner_id: self.fight.winner_id.clone().unwrap_or_default(),
                // The winner takes the pot: both stakes.
                payout: self.fight.stake.saturating_mul(2),
            }),
            (_, "cancelled") => Kind::Cancelled(pb::FightCancelled {
                fight,
                reason: String::new(),
            }),
            (Some(old), _) => Kind::Updated(pb::FightUpdated {
                fight,
                previous_status: status(old) as i32,
            }),
        };
        Ok(pb::FightEvent { kind: Some(kind) })
    }

    /// The idempotency key of this change: the same row, the same key, on
    /// every tracker and every retry.
    pub fn idempotency_key(&self) -> String {
        format!("fight-outbox:{}", self.outbox_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, acceptor: Option<&str>, winner: Option<&str>) -> FightRow {
        FightRow {
            id: "f-1".into(),
            creator_id: "cora".into(),
            acceptor_id: acceptor.map(Into::into),
            stake: 500,
            currency: "EUR".into(),
            status: status.into(),
            winner_id: winner.map(Into::into),
            accept_deadline: "2026-11-23T16:00:00+00:00".into(),
            created_at: "2026-11-23T15:04:05.123456+00:00".into(),
            updated_at: "2026-11-23T17:04:05.5+02:00".into(),
        }
    }

    fn change(old: Option<&str>, fight: FightRow) -> Change {
        Change {
            outbox_id: 42,
            old_status: old.map(Into::into),
            fight,
        }
    }

    fn kind_name(change: &Change) -> &'static str {
        match change.event().unwrap().kind.unwrap() {
            Kind::Created(_) => "created",
            Kind::Accepted(_) => "accepted",
            Kind::Completed(_) => "completed",
            Kind::Cancelled(_) => "cancelled",
            Kind::Expired(_) => "expired",
            Kind::Updated(_) => "updated",
        }
    }

    #[test]
    fn each_change_is_its_event() {
        let cases = [
            (None, row("open", None, None), "created"),
            (Some("open"), row("accepted", Some("abe"), None), "accepted"),
            (
                Some("accepted"),
                row("completed", Some("abe"), Some("abe")),
                "completed",
            ),
            (Some("open"), row("cancelled", None, None), "cancelled"),
            (
                Some("accepted"),
                row("cancelled", Some("abe"), None),
                "cancelled",
            ),
            (Some("open"), row("open", None, None), "updated"),
        ];
        for (old, fight, expected) in cases {
            assert_eq!(
                kind_name(&change(old, fight)),
                expected,
                "{old:?} → {expected}"
            );
        }
    }

    #[test]
    fn completed_carries_the_winner_and_the_pot() {
        let c = change(Some("accepted"), row("completed", Some("abe"), Some("abe")));
        let Some(Kind::Completed(done)) = c.event().unwrap().kind else {
            panic!("completed expected")
        };
        assert_eq!((done.winner_id.as_str(), done.payout), ("abe", 1000));
        assert_eq!(c.idempotency_key(), "fight-outbox:42");
    }

    #[test]
    fn rfc3339_timestamps_become_unix_milliseconds() {
        let fight = row("open", None, None).to_proto().unwrap();
        assert_eq!(fight.accept_deadline_ms, 1_795_449_600_000);
        assert_eq!(fight.created_at_ms, 1_795_446_245_123);
        // +02:00 is two hours ahead of UTC.
        assert_eq!(fight.updated_at_ms, 1_795_446_245_500);
        assert_eq!(millis("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(millis("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(millis("not a time"), None);
        let mut bad = row("open", None, None);
        bad.created_at = "yesterday".into();
        assert!(change(None, bad).event().is_err());
    }
}
