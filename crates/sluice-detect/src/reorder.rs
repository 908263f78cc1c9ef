//! Event-time order for records that arrive live (`sluice detect
//! --follow`): the same rule as [`crate::replay`] on files. Records may
//! arrive up to `max_lateness` after later ones — two replicas publish
//! into one partition, and a replica that lost its bus for a while sends
//! what it queued late — and are judged earliest first; a record later
//! than that is dropped and counted, as offline.
//!
//! The watermark is the latest event time seen less `max_lateness`.
//! Live, a quiet spell must not hold records for ever: the caller passes
//! how long (wall time) nothing arrived, and the watermark moves on by
//! that much. The buffer holds at most `cap` records; beyond that the
//! earliest is released early (memory stays bounded at any rate). Pure:
//! no clock reads, no I/O.

use std::{cmp::Reverse, collections::BinaryHeap};

/// Records waiting for their turn, earliest event time first.
#[derive(Debug)]
pub struct Reorder<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    lateness_ms: i64,
    cap: usize,
    /// The latest event time pushed.
    max_seen_ms: i64,
    /// The latest event time released.
    released_ms: i64,
    seq: u64,
    late: u64,
}

#[derive(Debug)]
struct Entry<T> {
    at_ms: i64,
    seq: u64,
    item: T,
}

// === impl Reorder ===

impl<T> Reorder<T> {
    /// An empty buffer allowing `lateness_ms` of disorder and holding at
    /// most `cap` records (at least 1).
    pub fn new(lateness_ms: i64, cap: usize) -> Reorder<T> {
        Reorder {
            heap: BinaryHeap::new(),
            lateness_ms: lateness_ms.max(0),
            cap: cap.max(1),
            max_seen_ms: i64::MIN,
            released_ms: i64::MIN,
            seq: 0,
            late: 0,
        }
    }

    /// Takes a record of event time `at_ms`. A record earlier than one
    /// already released came more than `max_lateness` late: it is dropped
    /// and counted, and the answer is false.
    pub fn push(&mut self, at_ms: i64, item: T) -> bool {
        if at_ms < self.released_ms {
            self.late += 1;
            return false;
        }
        self.max_seen_ms = self.max_seen_ms.max(at_ms);
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at_ms,
            seq: self.seq,
            item,
        }));
        true
    }

    /// The next record whose turn has come: at or before the watermark
    /// (the latest event time seen, plus `idle_ms` of quiet, less
    /// `max_lateness`), or the earliest when the buffer is over its cap.
    pub fn pop_ready(&mut self, idle_ms: i64) -> Option<T> {
        let watermark = self
            .max_seen_ms
            .saturating_add(idle_ms.max(0))
            .saturating_sub(self.lateness_ms);
        let due = self
            .heap
            .peek()
            .is_some_and(|Reverse(e)| e.at_ms <= watermark || self.heap.len() > self.cap);
        if due { self.pop() } else { None }
    }

    /// The earliest record, its turn come or not (at exit).
    pub fn pop(&mut self) -> Option<T> {
        let Reverse(e) = self.heap.pop()?;
        self.released_ms = self.released_ms.max(e.at_ms);
        Some(e.item)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Records dropped for coming more than `max_lateness` late.
    pub fn late(&self) -> u64 {
        self.late
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(r: &mut Reorder<&'static str>, idle_ms: i64) -> Vec<&'static str> {
        std::iter::from_fn(|| r.pop_ready(idle_ms)).collect()
    }

    #[test]
    fn records_within_the_lateness_come_out_in_event_time() {
        let mut r = Reorder::new(1_000, 100);
        assert!(r.push(5_000, "b"));
        assert!(r.push(4_500, "a"));
        // Nothing is older than 6000 - 1000 yet.
        assert_eq!(ready(&mut r, 0), Vec::<&str>::new());
        assert!(r.push(6_000, "c"));
        assert_eq!(ready(&mut r, 0), vec!["a", "b"]);
        // Earlier than what was released: too late, dropped and counted.
        assert!(!r.push(4_900, "late"));
        assert_eq!(r.late(), 1);
        // A quiet spell moves the watermark on.
        assert_eq!(ready(&mut r, 999), Vec::<&str>::new());
        assert_eq!(ready(&mut r, 1_000), vec!["c"]);
        assert!(r.is_empty());
    }

    #[test]
    fn the_cap_releases_the_earliest_early_and_ties_keep_arrival_order() {
        let mut r = Reorder::new(i64::MAX, 2);
        for (t, s) in [(3, "x"), (1, "a1"), (1, "a2")] {
            r.push(t, s);
        }
        assert_eq!(ready(&mut r, 0), vec!["a1"]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.pop(), Some("a2"));
        assert_eq!(r.pop(), Some("x"));
        assert_eq!(r.pop(), None);
    }
}
