//! The newest commits of the active segment, kept in memory so that a follow-mode reader
//! that has caught up gets what the batcher just wrote without a directory listing, an
//! open, a read and a CRC check on the blocking pool (and without waiting for a blocking
//! thread on a busy machine). It holds the committed events themselves (`Bytes` that
//! share the request buffers), so a hit costs one reference count per event.
//!
//! Only commits that are already durable are pushed (after `write_batch` returned), and
//! only positions inside the active segment are served: a rotation empties it, so a
//! segment that retention may remove is always read from disk, where a removal shows as
//! a gap. Anything the tail does not hold (an older position, a position that is not a
//! record start) is read from disk as before: the tail is a cache, never the only copy.

use crate::StoredEvent;
use crate::framing::HEADER;
use std::collections::VecDeque;

/// Bytes a record takes on disk (header, receive time, event).
fn framed_len(e: &StoredEvent) -> u64 {
    (HEADER + 8 + e.raw.len()) as u64
}

struct Commit {
    /// Offset in the segment of each record, ascending.
    starts: Vec<u64>,
    /// Offset just past the last record.
    end: u64,
    events: Vec<StoredEvent>,
}

/// A bounded window over the newest commits of one segment.
pub(super) struct Tail {
    segment: u64,
    commits: VecDeque<Commit>,
    /// Event bytes held.
    bytes: usize,
    max_bytes: usize,
}

/// Events read from the tail and the position after the last one.
pub(super) struct Hit {
    pub events: Vec<StoredEvent>,
    pub end: (u64, u64),
}

impl Tail {
    /// An empty tail holding at most `max_bytes` of events (0: hold nothing).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self { segment: 0, commits: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// Records a commit of `events` written at `start` of `segment` (already durable).
    pub(super) fn push(&mut self, segment: u64, start: u64, events: Vec<StoredEvent>) {
        if self.max_bytes == 0 || events.is_empty() {
            return;
        }
        let contiguous = self.segment == segment && self.commits.back().is_none_or(|c| c.end == start);
        if !contiguous {
            self.commits.clear();
            self.bytes = 0;
            self.segment = segment;
        }
        let mut starts = Vec::with_capacity(events.len());
        let mut at = start;
        let mut bytes = 0;
        for e in &events {
            starts.push(at);
            at += framed_len(e);
            bytes += e.raw.len();
        }
        self.commits.push_back(Commit { starts, end: at, events });
        self.bytes += bytes;
        while self.bytes > self.max_bytes && self.commits.len() > 1 {
            let old = self.commits.pop_front().expect("more than one commit");
            self.bytes -= old.events.iter().map(|e| e.raw.len()).sum::<usize>();
        }
    }

    /// Up to `limit` events from `from`, when `from` is a record start the tail holds.
    pub(super) fn read(&self, from: (u64, u64), limit: usize) -> Option<Hit> {
        if from.0 != self.segment || limit == 0 {
            return None;
        }
        let first = self.commits.iter().rposition(|c| c.starts.first().is_some_and(|&s| s <= from.1))?;
        let index = self.commits[first].starts.binary_search(&from.1).ok()?;
        let mut events = Vec::with_capacity(limit.min(4096));
        let mut end = from;
        let mut skip = index;
        for c in self.commits.iter().skip(first) {
            let take = (limit - events.len()).min(c.events.len() - skip);
            events.extend_from_slice(&c.events[skip..skip + take]);
            end = (self.segment, c.starts.get(skip + take).copied().unwrap_or(c.end));
            skip = 0;
            if events.len() >= limit {
                break;
            }
        }
        Some(Hit { events, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(n: usize) -> StoredEvent {
        StoredEvent { received_at_ms: n as i64, raw: Bytes::from(vec![b'x'; 10 + n % 7]) }
    }

    fn commit(tail: &mut Tail, segment: u64, start: u64, n: std::ops::Range<usize>) -> u64 {
        let events: Vec<StoredEvent> = n.map(ev).collect();
        let end = start + events.iter().map(framed_len).sum::<u64>();
        tail.push(segment, start, events);
        end
    }

    #[test]
    fn reads_across_commits_from_any_record_start() {
        let mut t = Tail::new(1 << 20);
        let a = commit(&mut t, 3, 100, 0..5);
        let b = commit(&mut t, 3, a, 5..8);
        let all = t.read((3, 100), 100).expect("held");
        assert_eq!(all.events, (0..8).map(ev).collect::<Vec<_>>());
        assert_eq!(all.end, (3, b));
        // From the third record, two at a time: positions chain exactly.
        let second = 100 + framed_len(&ev(0)) + framed_len(&ev(1));
        let p = t.read((3, second), 2).expect("held");
        assert_eq!(p.events, vec![ev(2), ev(3)]);
        let q = t.read(p.end, 2).expect("held");
        assert_eq!(q.events, vec![ev(4), ev(5)]);
        let r = t.read(q.end, 10).expect("held");
        assert_eq!(r.events, vec![ev(6), ev(7)]);
        assert_eq!(r.end, (3, b));
    }

    #[test]
    fn what_it_does_not_hold_goes_to_disk() {
        let mut t = Tail::new(1 << 20);
        let a = commit(&mut t, 3, 100, 0..5);
        assert!(t.read((3, 0), 10).is_none(), "before the tail");
        assert!(t.read((3, 101), 10).is_none(), "not a record start");
        assert!(t.read((2, 100), 10).is_none(), "another segment");
        assert!(t.read((3, a), 10).is_none(), "the end: nothing held there yet");
        // A rotation drops the old segment's commits.
        commit(&mut t, 4, 0, 5..6);
        assert!(t.read((3, 100), 10).is_none());
        assert_eq!(t.read((4, 0), 10).expect("held").events, vec![ev(5)]);
        // A commit that does not follow the last one (a write was cut back) starts over.
        commit(&mut t, 4, 5000, 6..7);
        assert!(t.read((4, 0), 10).is_none());
        assert_eq!(t.read((4, 5000), 10).expect("held").events, vec![ev(6)]);
    }

    #[test]
    fn holds_at_most_its_budget_but_always_the_newest_commit() {
        let mut t = Tail::new(100);
        let mut at = 0;
        for i in 0..20 {
            at = commit(&mut t, 1, at, i * 3..i * 3 + 3);
        }
        assert!(t.bytes <= 100, "{}", t.bytes);
        assert!(t.read((1, 0), 10).is_none(), "the oldest commits were dropped");
        let newest = t.commits.back().expect("kept").starts[0];
        assert_eq!(t.read((1, newest), 10).expect("held").events.len(), 3);
        let mut off = Tail::new(0);
        commit(&mut off, 1, 0, 0..3);
        assert!(off.read((1, 0), 10).is_none(), "a zero budget holds nothing");
    }
}
