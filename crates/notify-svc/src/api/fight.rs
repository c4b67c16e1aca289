//! `EmitFightEvent`: a typed fight event, checked per kind, becomes the
//! messages docs/design.md §8 names — who hears about which change of a fight.
//! Pure: the API validates and commits what comes out, each message under
//! its own idempotency key derived from the caller's (`{key}#{n}`, n in the
//! fixed order below), so a retried event fills in what is missing and
//! doubles nothing.
//!
//! | kind | inboxes | topics |
//! |---|---|---|
//! | created | creator | `fights:live` |
//! | accepted, completed, cancelled, expired | creator and acceptor (if any) | `fight:{id}`, `fights:live` |
//! | updated | — | `fight:{id}`, `fights:live` |
//!
//! An edit of a live fight (`updated`) changes what watchers see but asks
//! nothing of the fighters, so it stays out of their inboxes.

use notify_proto::v1::{self as pb, fight_event::Kind};
use serde_json::{Value, json};

/// The lobby topic every fight's state goes to.
pub const LOBBY_TOPIC: &str = "fights:live";
/// Longest fight id (it becomes part of a topic name).
const MAX_FIGHT_ID: usize = 100;
/// Longest currency code.
const MAX_CURRENCY: usize = 16;

/// Where one message of an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Inbox(String),
    Topic(String),
}

/// One message an event becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct FightMessage {
    pub to: Recipient,
    /// `fight_created`, `fight_accepted`, …
    pub event: &'static str,
    /// JSON text: the fight, plus what the kind adds (winner, payout, reason…).
    pub data: String,
}

/// Checks `event` and lists its messages, or says what is wrong with it.
pub fn messages(event: &pb::FightEvent) -> Result<Vec<FightMessage>, String> {
    use pb::FightStatus as S;
    let kind = event.kind.as_ref().ok_or(
        "event has no kind: set one of created, accepted, completed, cancelled, expired, updated",
    )?;
    let (name, fight, extra, expected): (_, _, Value, &[S]) = match kind {
        Kind::Created(k) => ("fight_created", &k.fight, json!({}), &[S::Open]),
        Kind::Accepted(k) => ("fight_accepted", &k.fight, json!({}), &[S::Accepted]),
        Kind::Completed(k) => (
            "fight_completed",
            &k.fight,
            json!({"winner_id": k.winner_id, "payout": k.payout}),
            &[S::Completed],
        ),
        Kind::Cancelled(k) => (
            "fight_cancelled",
            &k.fight,
            json!({"reason": k.reason}),
            &[S::Cancelled],
        ),
        // The tracker notices the deadline; the row may still say open.
        Kind::Expired(k) => ("fight_expired", &k.fight, json!({}), &[S::Open, S::Expired]),
        Kind::Updated(k) => (
            "fight_updated",
            &k.fight,
            json!({"previous_status": status_name(k.previous_status)}),
            &[S::Open, S::Accepted, S::Completed, S::Cancelled, S::Expired],
        ),
    };
    let fight = fight.as_ref().ok_or("fight is required")?;
    check_fight(fight)?;
    check_status(kind, fight, name, expected)?;

    let mut data = json!({ "fight": fight_json(fight) });
    if let (Value::Object(data), Value::Object(extra)) = (&mut data, extra) {
        data.extend(extra);
    }
    let data = data.to_string();
    let recipients = recipients(kind, fight);
    Ok(recipients
        .into_iter()
        .map(|to| FightMessage {
            to,
            event: name,
            data: data.clone(),
        })
        .collect())
}

/// The fight's status fits the event, and the fields the event needs are there.
fn check_status(
    kind: &Kind,
    fight: &pb::Fight,
    name: &str,
    expected: &[pb::FightStatus],
) -> Result<(), String> {
    use pb::FightStatus as S;
    let status = S::try_from(fight.status).unwrap_or(S::Unspecified);
    if !expected.contains(&status) {
        return Err(format!(
            "fight.status is {} but a {name} event needs {}",
            status.as_str_name(),
            expected
                .iter()
                .map(|s| s.as_str_name())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    match kind {
        Kind::Accepted(_) if fight.acceptor_id.is_empty() => {
            return Err("fight.acceptor_id is required once a fight is accepted".into());
        }
        Kind::Completed(k) => {
            if fight.acceptor_id.is_empty() {
                return Err("fight.acceptor_id is required for a completed fight".into());
            }
            if k.winner_id != fight.creator_id && k.winner_id != fight.acceptor_id {
                return Err("winner_id must be the fight's creator or acceptor".into());
            }
            if k.payout < 0 {
                return Err(format!("payout is {}, below 0", k.payout));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Who hears of an event: the fighters' inboxes, the fight's own topic and
/// the lobby, as the event's kind says.
fn recipients(kind: &Kind, fight: &pb::Fight) -> Vec<Recipient> {
    let fight_topic = format!("fight:{}", fight.fight_id);
    let fighters = || {
        let mut inboxes = vec![Recipient::Inbox(fight.creator_id.clone())];
        if !fight.acceptor_id.is_empty() {
            inboxes.push(Recipient::Inbox(fight.acceptor_id.clone()));
        }
        inboxes
    };
    match kind {
        Kind::Created(_) => vec![
            Recipient::Inbox(fight.creator_id.clone()),
            Recipient::Topic(LOBBY_TOPIC.into()),
        ],
        Kind::Updated(_) => vec![
            Recipient::Topic(fight_topic),
            Recipient::Topic(LOBBY_TOPIC.into()),
        ],
        _ => {
            let mut all = fighters();
            all.push(Recipient::Topic(fight_topic));
            all.push(Recipient::Topic(LOBBY_TOPIC.into()));
            all
        }
    }
}

fn check_fight(fight: &pb::Fight) -> Result<(), String> {
    let id = &fight.fight_id;
    if id.is_empty() {
        return Err("fight.fight_id is required".into());
    }
    if id.len() > MAX_FIGHT_ID
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "fight.fight_id must be 1 to {MAX_FIGHT_ID} characters of A-Z a-z 0-9 - _ . (it names the topic fight:{{id}})"
        ));
    }
    if fight.creator_id.is_empty() {
        return Err("fight.creator_id is required".into());
    }
    if fight.acceptor_id == fight.creator_id {
        return Err("fight.acceptor_id is the creator: nobody fights themselves".into());
    }
    if fight.stake < 0 {
        return Err(format!("fight.stake is {}, below 0", fight.stake));
    }
    if fight.currency.is_empty() || fight.currency.len() > MAX_CURRENCY {
        return Err(format!(
            "fight.currency must be 1 to {MAX_CURRENCY} characters"
        ));
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    match pb::FightStatus::try_from(status).unwrap_or(pb::FightStatus::Unspecified) {
        pb::FightStatus::Unspecified => "unspecified",
        pb::FightStatus::Open => "open",
        pb::FightStatus::Accepted => "accepted",
        pb::FightStatus::Completed => "completed",
        pb::FightStatus::Cancelled => "cancelled",
        pb::FightStatus::Expired => "expired",
    }
}

/// The fight as clients read it in `data.fight`.
fn fight_json(f: &pb::Fight) -> Value {
    json!({
        "fight_id": f.fight_id,
        "creator_id": f.creator_id,
        "acceptor_id": (!f.acceptor_id.is_empty()).then_some(&f.acceptor_id),
        "stake": f.stake,
        "currency": f.currency,
        "status": status_name(f.status),
        "accept_deadline_ms": f.accept_deadline_ms,
        "created_at_ms": f.created_at_ms,
        "updated_at_ms": f.updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fight(status: pb::FightStatus, acceptor: &str) -> Option<pb::Fight> {
        Some(pb::Fight {
            fight_id: "f-1".into(),
            creator_id: "cora".into(),
            acceptor_id: acceptor.into(),
            stake: 500,
            currency: "EUR".into(),
            status: status as i32,
            accept_deadline_ms: 1_700_000_000_000,
            created_at_ms: 1_699_999_000_000,
            updated_at_ms: 1_699_999_500_000,
        })
    }

    fn event(kind: Kind) -> pb::FightEvent {
        pb::FightEvent { kind: Some(kind) }
    }

    fn recipients(messages: &[FightMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match &m.to {
                Recipient::Inbox(u) => format!("inbox:{u}"),
                Recipient::Topic(t) => t.clone(),
            })
            .collect()
    }

    #[test]
    fn each_kind_reaches_the_recipients_of_the_design() {
        use pb::FightStatus as S;
        let created = event(Kind::Created(pb::FightCreated {
            fight: fight(S::Open, ""),
        }));
        assert_eq!(
            recipients(&messages(&created).unwrap()),
            ["inbox:cora", "fights:live"]
        );
        let accepted = event(Kind::Accepted(pb::FightAccepted {
            fight: fight(S::Accepted, "abe"),
        }));
        assert_eq!(
            recipients(&messages(&accepted).unwrap()),
            ["inbox:cora", "inbox:abe", "fight:f-1", "fights:live"]
        );
        // An open fight that expires has no acceptor: the creator alone.
        let expired = event(Kind::Expired(pb::FightExpired {
            fight: fight(S::Open, ""),
        }));
        let expired = messages(&expired).unwrap();
        assert_eq!(
            recipients(&expired),
            ["inbox:cora", "fight:f-1", "fights:live"]
        );
        assert!(expired.iter().all(|m| m.event == "fight_expired"));
        let updated = event(Kind::Updated(pb::FightUpdated {
            fight: fight(S::Open, ""),
            previous_status: S::Open as i32,
        }));
        assert_eq!(
            recipients(&messages(&updated).unwrap()),
            ["fight:f-1", "fights:live"]
        );
    }

    #[test]
    fn data_carries_the_fight_and_what_the_kind_adds() {
        let completed = event(Kind::Completed(pb::FightCompleted {
            fight: fight(pb::FightStatus::Completed, "abe"),
            winner_id: "abe".into(),
            payout: 950,
        }));
        let out = messages(&completed).unwrap();
        let data: Value = serde_json::from_str(&out[0].data).unwrap();
        assert_eq!(data["fight"]["status"], "completed");
        assert_eq!(data["fight"]["acceptor_id"], "abe");
        assert_eq!(data["fight"]["stake"], 500);
        assert_eq!(
            (data["winner_id"].as_str(), data["payout"].as_i64()),
            (Some("abe"), Some(950))
        );
        assert_eq!(out[0].event, "fight_completed");
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        use pb::FightStatus as S;
        let cases = [
            (pb::FightEvent { kind: None }, "no kind"),
            (
                event(Kind::Created(pb::FightCreated { fight: None })),
                "fight is required",
            ),
            (
                event(Kind::Created(pb::FightCreated {
                    fight: fight(S::Accepted, ""),
                })),
                "needs FIGHT_STATUS_OPEN",
            ),
            (
                event(Kind::Accepted(pb::FightAccepted {
                    fight: fight(S::Accepted, ""),
                })),
                "acceptor_id is required",
            ),
            (
                event(Kind::Completed(pb::FightCompleted {
                    fight: fight(S::Completed, "abe"),
                    winner_id: "zed".into(),
                    payout: 1,
                })),
                "winner_id must be",
            ),
            (
                event(Kind::Completed(pb::FightCompleted {
                    fight: fight(S::Completed, "abe"),
                    winner_id: "abe".into(),
                    payout: -1,
                })),
                "payout is -1",
            ),
            (
                event(Kind::Accepted(pb::FightAccepted {
                    fight: fight(S::Accepted, "cora"),
                })),
                "fights themselves",
            ),
        ];
        for (event, expected) in cases {
            let err = messages(&event).expect_err(expected);
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
        let mut bad_id = fight(S::Open, "").unwrap();
        bad_id.fight_id = "a b".into();
        let err = messages(&event(Kind::Created(pb::FightCreated {
            fight: Some(bad_id),
        })))
        .unwrap_err();
        assert!(err.contains("fight_id"), "{err}");
    }
}
