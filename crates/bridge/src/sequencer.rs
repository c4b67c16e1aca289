//! Gap-free, duplicate-free ordering of one connection's feed (its inbox or a
//! topic), across the seam between replay from the store and live delivery.
//!
//! The connection registers first (live deliveries start flowing), then reads
//! the store after its resume point. Live messages that arrive meanwhile wait
//! here; stored pages are emitted in order; at the seam, waiting messages
//! already emitted from the store are dropped and the rest follow. A live
//! message that skips ahead (it overtook one committed by another replica, or
//! a live copy was dropped) asks for a store read to fill the gap. Every live
//! message is committed before it is delivered, so messages held back can be
//! shed (their memory bounded) and read back from the store instead. Pure: the
//! caller does the reading and the sending.

use std::collections::BTreeMap;

/// What the caller must do after an event.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    /// Send these, in this order.
    pub emit: Vec<T>,
    /// Read the store after this seq and pass the page to [`Sequencer::stored`].
    pub fetch_after: Option<u64>,
}

impl<T> Outcome<T> {
    fn nothing() -> Self {
        Self {
            emit: Vec::new(),
            fetch_after: None,
        }
    }
}

/// The ordering state of one feed on one connection.
#[derive(Debug)]
pub struct Sequencer<T> {
    /// Highest seq sent (or skipped as gone).
    last: u64,
    /// Live messages not sent yet, by seq.
    waiting: BTreeMap<u64, T>,
    /// A store read is under way: do not ask for another.
    reading: bool,
    /// The highest live seq waiting when the current read was asked for:
    /// seqs are committed in order, so that read sees everything below it.
    read_covers: u64,
    /// The highest seq shed while held back: the store owes everything up
    /// to it.
    owed: u64,
}

impl<T> Sequencer<T> {
    /// Starts a feed whose client has everything up to `after`; the caller
    /// reads the store after it first (the returned fetch).
    pub fn resume(after: u64) -> (Self, u64) {
        let sequencer = Self {
            last: after,
            waiting: BTreeMap::new(),
            reading: true,
            read_covers: after,
            owed: after,
        };
        (sequencer, after)
    }

    /// Live messages held back (waiting for a store read or a hole to fill).
    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.waiting.values()
    }

    /// Drops the live messages held back; the reads under way (or the next)
    /// bring them from the store instead. Held messages only exist while a
    /// read is under way or asked for, so one always follows.
    pub fn shed(&mut self) {
        if let Some((&highest, _)) = self.waiting.last_key_value() {
            self.owed = self.owed.max(highest);
        }
        self.waiting.clear();
    }

    /// Highest seq the client has been sent.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The last seq sent, if the feed is live with nothing held back or
    /// read: then the next live message, if it is `last + 1`, may be sent
    /// as it comes, outside [`live`](Self::live) (a direct write).
    pub fn in_sync(&self) -> Option<u64> {
        (!self.reading && self.waiting.is_empty()).then_some(self.last)
    }

    /// Messages up to `last` were sent outside [`live`](Self::live) while the
    /// feed was [in sync](Self::in_sync).
    pub fn advance(&mut self, last: u64) {
        self.last = self.last.max(last);
    }

    /// A live delivery.
    pub fn live(&mut self, seq: u64, item: T) -> Outcome<T> {
        if seq <= self.last {
            return Outcome::nothing(); // already sent from the store
        }
        self.waiting.insert(seq, item);
        if self.reading {
            return Outcome::nothing();
        }
        let emit = self.drain();
        let fetch_after = self.gap();
        Outcome { emit, fetch_after }
    }

    /// A page read from the store after the last requested seq, in seq order;
    /// `complete` when the store had nothing more.
    pub fn stored(&mut self, page: Vec<(u64, T)>, complete: bool) -> Outcome<T> {
        let mut emit = Vec::new();
        let page_first = page.first().map(|(seq, _)| *seq);
        for (seq, item) in page {
            if seq > self.last {
                self.waiting.entry(seq).or_insert(item);
            }
        }
        // The store holds nothing between `last` and the page's first seq
        // (trimmed from a short topic log, or expired): the live copies held
        // there go out in order, the rest is gone. Dropping the held ones
        // lost messages the bridge had in hand when a read came back after
        // the log had moved on.
        if let Some(first) = page_first {
            while let Some(entry) = self.waiting.first_entry() {
                if *entry.key() >= first {
                    break;
                }
                self.last = *entry.key();
                emit.push(entry.remove());
            }
            self.last = self.last.max(first - 1);
        }
        emit.extend(self.drain());
        self.waiting = self.waiting.split_off(&(self.last + 1));
        if !complete {
            return Outcome {
                emit,
                fetch_after: Some(self.ask()),
            };
        }
        loop {
            emit.extend(self.drain());
            // Everything up to `owed` was committed; a read asked for after
            // it was shed saw all of it, so what that read lacked is gone.
            let next = if self.owed > self.last {
                self.owed
            } else if let Some((&first, _)) = self.waiting.first_key_value() {
                first - 1
            } else {
                break;
            };
            if next > self.read_covers {
                // It arrived after this read was asked for: the read may
                // predate its (or its predecessors') commits. Read again.
                return Outcome {
                    emit,
                    fetch_after: Some(self.ask()),
                };
            }
            // The read saw everything committed up to `next` and holds
            // nothing more: those seqs expired or were trimmed from the log.
            // Skip ahead rather than wait forever.
            self.last = next;
            self.waiting = self.waiting.split_off(&(self.last + 1));
        }
        self.reading = false;
        Outcome {
            emit,
            fetch_after: None,
        }
    }

    /// The store may hold messages that were never delivered live (the
    /// replica that committed them had no link to this bridge then): read
    /// after `last` unless a read is under way already. Returns its start.
    pub fn catch_up(&mut self) -> Option<u64> {
        (!self.reading).then(|| self.ask())
    }

    /// Records what the read about to happen will cover; returns its start.
    fn ask(&mut self) -> u64 {
        self.reading = true;
        let held = self.waiting.last_key_value().map_or(self.last, |(&s, _)| s);
        self.read_covers = held.max(self.owed);
        self.last
    }

    /// Sends the waiting messages that follow `last` without a hole.
    fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() != self.last + 1 {
                break;
            }
            self.last += 1;
            out.push(entry.remove());
        }
        out
    }

    /// A hole before the waiting messages: read the store (once at a time).
    fn gap(&mut self) -> Option<u64> {
        if self.waiting.is_empty() || self.reading {
            return None;
        }
        Some(self.ask())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a store that holds 1..=head and answers reads in pages of `page`.
    fn read(head: u64, after: u64, page: u64) -> (Vec<(u64, u64)>, bool) {
        let items: Vec<(u64, u64)> = (after + 1..=head.min(after + page))
            .map(|s| (s, s))
            .collect();
        let complete = after + page >= head;
        (items, complete)
    }

    #[test]
    fn replay_then_live_has_no_gap_and_no_duplicate_at_the_seam() {
        let (mut seq, after) = Sequencer::resume(60);
        assert_eq!(after, 60);
        let mut sent = Vec::new();
        // Live 101..=103 arrive while the store (head 102 at read time) is read.
        for s in 101..=103 {
            sent.extend(seq.live(s, s).emit);
        }
        assert!(sent.is_empty(), "nothing goes out before the replay");
        let (page, complete) = read(102, 60, 1000);
        let out = seq.stored(page, complete);
        sent.extend(out.emit);
        assert_eq!(out.fetch_after, None);
        sent.extend(seq.live(104, 104).emit);
        sent.extend(seq.live(103, 103).emit); // a late duplicate
        assert_eq!(sent, (61..=104).collect::<Vec<_>>());
    }

    #[test]
    fn pages_are_read_until_the_store_is_done() {
        let (mut seq, mut after) = Sequencer::resume(0);
        let mut sent = Vec::new();
        loop {
            let (page, complete) = read(250, after, 100);
            let out = seq.stored(page, complete);
            sent.extend(out.emit);
            match out.fetch_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(sent, (1..=250).collect::<Vec<_>>());
    }

    #[test]
    fn a_live_message_that_skips_ahead_asks_for_the_store_once() {
        let (mut seq, _) = Sequencer::resume(0);
        seq.stored(Vec::new(), true);
        assert_eq!(seq.live(1, 1).emit, [1]);
        let out = seq.live(3, 3);
        assert_eq!((out.emit, out.fetch_after), (vec![], Some(1)));
        assert_eq!(seq.live(4, 4).fetch_after, None, "one read at a time");
        let out = seq.stored(vec![(2, 2), (3, 3)], true);
        assert_eq!(out.emit, [2, 3, 4]);
        assert_eq!(seq.last(), 4);
    }

    #[test]
    fn seqs_gone_from_the_store_are_skipped_not_awaited() {
        let (mut seq, _) = Sequencer::resume(0);
        seq.live(10, 10);
        // 10 arrived during the first read, which may predate its commit:
        // read again. That read must have seen 1..=9 if they existed.
        let out = seq.stored(Vec::new(), true);
        assert_eq!((out.emit, out.fetch_after), (vec![], Some(0)));
        // The log was trimmed: the store holds nothing before 10.
        let out = seq.stored(Vec::new(), true);
        assert_eq!(out.emit, [10]);
        assert_eq!(seq.live(11, 11).emit, [11]);
    }

    #[test]
    fn messages_shed_while_held_are_read_back_from_the_store() {
        let (mut seq, _) = Sequencer::resume(0);
        seq.stored(vec![(1, 1)], true);
        // 2 is late; 3..=50 arrive and wait for the gap read.
        for s in 3..=50 {
            seq.live(s, s);
        }
        seq.shed();
        assert_eq!(seq.waiting().count(), 0);
        // More arrive (and are shed) while the read, asked for when 50 was
        // the highest held, is under way.
        for s in 51..=80 {
            seq.live(s, s);
        }
        seq.shed();
        let out = seq.stored((2..=60).map(|s| (s, s)).collect(), true);
        assert_eq!(out.emit, (2..=60).collect::<Vec<_>>());
        assert_eq!(
            out.fetch_after,
            Some(60),
            "80 was shed after that read began"
        );
        seq.live(81, 81);
        let out = seq.stored((61..=81).map(|s| (s, s)).collect(), true);
        assert_eq!(out.emit, (61..=81).collect::<Vec<_>>());
        assert_eq!(out.fetch_after, None);
        assert_eq!(seq.live(82, 82).emit, [82]);
    }

    #[test]
    fn held_live_messages_older_than_a_trimmed_page_are_sent_not_dropped() {
        let (mut seq, _) = Sequencer::resume(0);
        seq.stored(vec![(1, 1)], true);
        // 3 arrives before 2: a read is asked for after 1; live copies keep coming.
        let out = seq.live(3, 3);
        assert_eq!(out.fetch_after, Some(1));
        for s in (2..=6).chain(8..=9) {
            seq.live(s, s);
        }
        // The read comes back after the 5-long log moved on: it holds 5..=9.
        let page = (5..=9).map(|s| (s, s)).collect();
        let out = seq.stored(page, true);
        assert_eq!(
            out.emit,
            (2..=9).collect::<Vec<_>>(),
            "held 2..=4 go out first"
        );
        assert_eq!((out.fetch_after, seq.in_sync()), (None, Some(9)));
        // A hole nobody holds below a page's first seq is skipped once.
        let (mut seq, _) = Sequencer::resume(0);
        seq.live(1, 1);
        seq.live(4, 4);
        let out = seq.stored(vec![(3, 3), (4, 4)], true);
        assert_eq!(out.emit, vec![1, 3, 4]);
        assert_eq!(seq.in_sync(), Some(4));
    }

    #[test]
    fn shed_seqs_gone_from_the_store_are_skipped_once_a_read_covers_them() {
        let (mut seq, _) = Sequencer::resume(0);
        for s in 1..=10 {
            seq.live(s, s);
        }
        seq.shed();
        // The first read was asked for before 1..=10 arrived: read again.
        let out = seq.stored(vec![(1, 1), (2, 2)], true);
        assert_eq!((out.emit, out.fetch_after), (vec![1, 2], Some(2)));
        // 3..=10 expired meanwhile: the second read covers them and lacks them.
        let out = seq.stored(Vec::new(), true);
        assert_eq!((out.emit, out.fetch_after), (vec![], None));
        assert_eq!(seq.last(), 10);
        assert_eq!(seq.live(11, 11).emit, [11]);
    }

    #[test]
    fn an_interleaved_storm_comes_out_exactly_once_in_order() {
        storm(false);
    }

    #[test]
    fn an_interleaved_storm_shed_under_a_bound_comes_out_exactly_once_in_order() {
        storm(true);
    }

    fn storm(bounded: bool) {
        // 5,000 messages; 3,200 are committed when the client connects, the
        // rest commit while it replays. Live copies of 3,000..=5,000 arrive
        // shuffled (within a window: a later commit is delivered at most a
        // little before an earlier one) and some twice. The store holds
        // every seq that has been delivered live, as commits precede delivery.
        let mut live: Vec<u64> = (3000..=5000).collect();
        let mut x: u64 = 7;
        for chunk in live.chunks_mut(40) {
            for i in (1..chunk.len()).rev() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                chunk.swap(i, (x >> 33) as usize % (i + 1));
            }
        }
        live.extend(3500..=3600);
        let (mut seq, mut after) = Sequencer::resume(0);
        let mut sent = Vec::new();
        let mut head = 3200;
        let mut fetch = Some(after);
        let mut live = live.into_iter();
        loop {
            for s in live.by_ref().take(300) {
                head = head.max(s);
                let out = seq.live(s, s);
                sent.extend(out.emit);
                fetch = fetch.or(out.fetch_after);
                // A small bound: held messages are shed often.
                if bounded && seq.waiting().count() > 50 {
                    seq.shed();
                }
            }
            let Some(from) = fetch.take() else {
                if live.len() == 0 {
                    break;
                }
                continue;
            };
            after = from;
            let (page, complete) = read(head, after, 700);
            let out = seq.stored(page, complete);
            sent.extend(out.emit);
            fetch = out.fetch_after;
        }
        assert_eq!(sent, (1..=5000).collect::<Vec<_>>());
    }
}
