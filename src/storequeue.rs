//! The loop's queue of commands' writes waiting for the store thread, fair
//! by the rows each session has had written (start-time fair queuing): a
//! write is stamped with when its session's earlier writes would be done,
//! counted in rows, and the earliest stamp goes first. A session flooding
//! 300-row list broadcasts and another sending one `send` now and then
//! alternate by rows, so the `send` goes next rather than behind every
//! broadcast queued before it; a session alone gets the whole store.
//!
//! Pure data: the loop owns it and hands writes to the store thread only a
//! couple of batches ahead, so its channel stays short and the order
//! decided here is the order committed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Writes waiting, fair by session.
#[derive(Debug)]
pub struct StoreQueue<T> {
    /// Waiting writes by (start stamp, arrival): the smallest goes next.
    waiting: BinaryHeap<Reverse<Entry<T>>>,
    /// Per session: the stamp at which its queued writes will be done.
    finish: HashMap<u64, u64>,
    /// The start stamp of the write handed out last.
    now: u64,
    /// Arrivals so far (breaks ties in arrival order).
    arrivals: u64,
}

#[derive(Debug)]
struct Entry<T> {
    start: u64,
    arrival: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.start, self.arrival) == (other.start, other.arrival)
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
        (self.start, self.arrival).cmp(&(other.start, other.arrival))
    }
}

impl<T> Default for StoreQueue<T> {
    fn default() -> Self {
        StoreQueue {
            waiting: BinaryHeap::new(),
            finish: HashMap::new(),
            now: 0,
            arrivals: 0,
        }
    }
}

impl<T> StoreQueue<T> {
    /// Queues `item` for session `lane`, costing `rows`.
    pub fn push(&mut self, lane: u64, rows: usize, item: T) {
        let finish = self.finish.entry(lane).or_insert(0);
        let start = (*finish).max(self.now);
        *finish = start + rows.max(1) as u64;
        self.arrivals += 1;
        self.waiting.push(Reverse(Entry {
            start,
            arrival: self.arrivals,
            item,
        }));
    }

    /// The write that goes next.
    pub fn pop(&mut self) -> Option<T> {
        let Reverse(entry) = self.waiting.pop()?;
        self.now = entry.start;
        if self.waiting.is_empty() {
            // Everyone is even again; forget the sessions.
            self.finish.clear();
        }
        Some(entry.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_write_goes_before_a_floods_backlog() {
        let mut q = StoreQueue::default();
        for n in 0..40 {
            q.push(1, 300, format!("flood {n}"));
        }
        assert_eq!(q.pop().as_deref(), Some("flood 0"));
        q.push(2, 1, "send".to_string());
        assert_eq!(q.pop().as_deref(), Some("send"));
        assert_eq!(q.pop().as_deref(), Some("flood 1"));
    }

    #[test]
    fn sessions_alternate_by_rows_and_each_keeps_its_order() {
        let mut q = StoreQueue::default();
        for n in 0..3 {
            q.push(1, 10, (1, n));
            q.push(2, 5, (2, n));
        }
        let order: Vec<(u64, i32)> = std::iter::from_fn(|| q.pop()).collect();
        // Session 2's writes are half the size: two of them per one of 1's.
        assert_eq!(order, [(1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (1, 2)]);
        assert!(q.pop().is_none());
    }
}
