//! The user's side of the inbox in the store: marks, badge counts, pages of
//! older items, mutes and a producer's revisions (docs/design.md §4.7).
//!
//! How counts stay right: they are two numbers in the inbox's head row,
//! changed only by statements that hold that row's lock and add the exact
//! delta of the rows they change (a publish: its unmuted rows; a mark: each
//! row's before/after, read from the locked rows; a retraction; the sweep
//! of expired rows). No statement recomputes them, so concurrent marks,
//! publishes and sweeps compose; [`Inbox::recount`] derives them from the
//! rows, and the conformance suite checks the two agree after concurrent
//! work on both stores.

use async_trait::async_trait;
use notify_core::{
    MessageId, UserId,
    inbox::{Breakdown, Counts, Mark, Marked, Mutes, Page, PageQuery, Revision, RevisionOutcome},
};

use crate::StoreError;

/// SQL text of "counts as unseen" / "counts as unread" for a `state` column,
/// the same in both dialects (see `notify_core::inbox::State`).
pub(crate) const UNSEEN_SQL: &str = "(state & 29) = 0";
pub(crate) const UNREAD_SQL: &str = "(state & 30) = 0";

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Applies each mark to its user's unretracted messages, all in one
    /// transaction (one statement on Postgres); counts change by exactly
    /// what changed. At most one mark per user: a batch with two for one
    /// user is refused (their order would be lost). Answers in mark order.
    async fn mark_many(&self, marks: &[(UserId, Mark)]) -> Result<Vec<Marked>, StoreError>;

    /// One mark (see [`Inbox::mark_many`]).
    async fn mark(&self, user: &UserId, mark: &Mark) -> Result<Marked, StoreError> {
        let mut answers = self.mark_many(&[(user.clone(), mark.clone())]).await?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Internal("a mark came back without its answer".into()))
    }

    /// The user's counts as kept.
    async fn counts(&self, user: &UserId) -> Result<Counts, StoreError>;

    /// The counts as kept and their split per event type, derived from the
    /// rows in the same snapshot (see [`notify_core::inbox::Breakdown`]).
    async fn counts_by_event(&self, user: &UserId) -> Result<Breakdown, StoreError>;

    /// The counts derived from the rows (unexpired, in the head's version):
    /// what [`Inbox::counts`] must equal.
    async fn recount(&self, user: &UserId) -> Result<Counts, StoreError>;

    /// A page of the user's messages, newest first (retracted ones never).
    async fn page(&self, user: &UserId, query: &PageQuery) -> Result<Page, StoreError>;

    /// What the user muted.
    async fn mutes(&self, user: &UserId) -> Result<Mutes, StoreError>;

    /// Adds `mute` and removes `unmute`; returns what is muted now. Applies
    /// to messages committed from now on.
    async fn change_mutes(
        &self,
        user: &UserId,
        mute: &Mutes,
        unmute: &Mutes,
    ) -> Result<Mutes, StoreError>;

    /// Edits or retracts every inbox copy of a message. `caller` Some: only
    /// that caller's messages ([`RevisionOutcome::NotYours`] otherwise).
    async fn revise(
        &self,
        caller: Option<&str>,
        id: MessageId,
        revision: &Revision,
    ) -> Result<RevisionOutcome, StoreError>;
}

/// SQL text of "counts somewhere": unseen or unread (both dialects).
pub(crate) const COUNTED_SQL: &str = "(state & 28) = 0 AND (state & 3) <> 3";

/// Refuses a batch that marks one user twice.
pub(crate) fn distinct_users(marks: &[(UserId, Mark)]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    match marks.iter().find(|(u, _)| !seen.insert(u)) {
        Some((user, _)) => Err(StoreError::Internal(format!(
            "a mark batch marks {user} twice; one mark per user per batch"
        ))),
        None => Ok(()),
    }
}

/// The seqs a mark listed that it did not find in the inbox.
pub(crate) fn missing(
    selection: &notify_core::inbox::Selection,
    found: &std::collections::BTreeSet<u64>,
) -> Vec<u64> {
    match selection {
        notify_core::inbox::Selection::Seqs(seqs) => seqs
            .iter()
            .copied()
            .filter(|s| !found.contains(s))
            .collect(),
        notify_core::inbox::Selection::UpTo(_) => Vec::new(),
    }
}

/// Whether seqs below the oldest kept one (`first_seq`, 0: none kept) were
/// handed out and removed by retention: a page that reaches the oldest kept
/// item says so instead of "no more".
pub(crate) fn older_expired(first_seq: u64, head_seq: u64) -> bool {
    if first_seq == 0 {
        head_seq > 0
    } else {
        first_seq > 1
    }
}

/// The count deltas of one state change.
pub(crate) fn delta(
    before: notify_core::inbox::State,
    after: notify_core::inbox::State,
) -> (i64, i64) {
    let d = |b: bool, a: bool| i64::from(a) - i64::from(b);
    (
        d(before.unseen(), after.unseen()),
        d(before.unread(), after.unread()),
    )
}

#[cfg(test)]
mod tests {
    use notify_core::inbox::State;

    use super::*;

    #[test]
    fn the_sql_masks_say_what_state_says() {
        let mask = |sql: &str| -> u16 { sql[9..11].parse().unwrap() };
        for bits in 0..32u16 {
            let s = State(bits);
            assert_eq!(bits & mask(UNSEEN_SQL) == 0, s.unseen(), "{bits}");
            assert_eq!(bits & mask(UNREAD_SQL) == 0, s.unread(), "{bits}");
            let counted = bits & 28 == 0 && bits & 3 != 3; // COUNTED_SQL
            assert_eq!(counted, s.unseen() || s.unread(), "{bits}");
        }
    }
}
