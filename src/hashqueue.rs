//! The loop's queue of password-hashing jobs waiting for a free hashing
//! thread: one FIFO per address group, served round-robin, bounded in all.
//! A plain FIFO let one address with many sessions (or a botnet) keep the
//! two hashing threads busy so that everyone else's login waited behind it;
//! round-robin makes a newcomer wait for about one job per group that has
//! any queued, and the bound makes an attempt that cannot be queued fail at
//! once (`- BUSY`) rather than wait minutes.
//!
//! When the queue is full, a newcomer takes the place of the newest job of
//! the group with the most waiting, if that group has more than the
//! newcomer's own would then have (the job put out gets `- BUSY`). So one
//! group alone may use the whole queue (an office behind one NAT address, a
//! benchmark), yet can never keep another group out of it: the shares tend
//! to equal (max-min fairness, "longest queue drop").
//!
//! Pure data: the loop owns it (no locks) and hands jobs to the threads only
//! as they free up, so the threads' own channel never holds more than one
//! job each.

use std::collections::{HashMap, VecDeque};

use crate::addr::AddrGroup;

/// Jobs waiting in all. At `--hash-cost normal` (about 20–40 ms a job on
/// two threads) a full queue drains in a few seconds, well inside the login
/// timeout; past it, waiting longer would help nobody.
pub const MAX_QUEUED: usize = 128;

/// Who a job is for: an address group, or `None` for work no session waits
/// on (those share one lane).
pub type Lane = Option<AddrGroup>;

/// Round-robin queues per lane.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Waiting jobs per lane; a lane is here only while it has some.
    lanes: HashMap<Lane, VecDeque<T>>,
    /// Lanes with jobs, in the order they are served.
    turn: VecDeque<Lane>,
    /// Jobs waiting in all.
    len: usize,
    /// Bound in all.
    max: usize,
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `max` jobs.
    pub fn new(max: usize) -> Self {
        FairQueue {
            lanes: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
            max: max.max(1),
        }
    }

    /// Queues `job` at the back of its lane. When the queue is full, it
    /// takes the place of the newest job of the longest lane, which comes
    /// back as `Ok(Some(..))`, if that lane is longer than this one would
    /// be; otherwise `job` itself comes back as `Err`.
    pub fn push(&mut self, lane: Lane, job: T) -> Result<Option<T>, T> {
        let mut evicted = None;
        if self.len >= self.max {
            let own = self.lanes.get(&lane).map_or(0, VecDeque::len);
            // At most 128 lanes (one job each at least): a short scan.
            let longest = self
                .lanes
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(l, q)| (*l, q.len()));
            match longest {
                Some((victim, n)) if n > own + 1 => {
                    evicted = self.pop_back(victim);
                }
                _ => return Err(job),
            }
        }
        let queue = self.lanes.entry(lane).or_default();
        if queue.is_empty() {
            self.turn.push_back(lane);
        }
        queue.push_back(job);
        self.len += 1;
        Ok(evicted)
    }

    /// Takes the newest job of `lane` out.
    fn pop_back(&mut self, lane: Lane) -> Option<T> {
        let queue = self.lanes.get_mut(&lane)?;
        let job = queue.pop_back()?;
        if queue.is_empty() {
            self.lanes.remove(&lane);
            self.turn.retain(|l| *l != lane);
        }
        self.len -= 1;
        Some(job)
    }

    /// The next job: the oldest of the lane whose turn it is.
    pub fn pop(&mut self) -> Option<T> {
        let lane = self.turn.pop_front()?;
        let queue = self.lanes.get_mut(&lane)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.lanes.remove(&lane);
        } else {
            self.turn.push_back(lane);
        }
        self.len -= usize::from(job.is_some());
        job
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(last: u8) -> Lane {
        Some(AddrGroup::of([192, 0, 2, last].into(), 64))
    }

    #[test]
    fn lanes_take_turns_and_keep_their_own_order() {
        let mut q = FairQueue::new(100);
        for i in 0..5 {
            q.push(lane(1), (1, i)).unwrap();
        }
        q.push(lane(2), (2, 0)).unwrap();
        q.push(None, (0, 0)).unwrap();
        q.push(lane(2), (2, 1)).unwrap();
        let order: Vec<(u8, u8)> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                (1, 0),
                (2, 0),
                (0, 0),
                (1, 1),
                (2, 1),
                (1, 2),
                (1, 3),
                (1, 4)
            ]
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_newcomer_waits_for_one_job_per_busy_lane_not_for_the_backlog() {
        let mut q = FairQueue::new(1000);
        for g in 1..=8 {
            for i in 0..64 {
                let _ = q.push(lane(g), (g, i));
            }
        }
        // Some jobs were taken already; then a newcomer arrives.
        for _ in 0..20 {
            q.pop();
        }
        q.push(lane(100), (100, 0)).unwrap();
        let ahead = std::iter::from_fn(|| q.pop())
            .take_while(|j| j.0 != 100)
            .count();
        assert!(ahead <= 8, "{ahead} jobs ahead of the newcomer");
    }

    #[test]
    fn a_full_queue_makes_room_by_taking_from_the_longest_lane() {
        let mut q = FairQueue::new(4);
        // One lane alone may fill it.
        for i in 0..4 {
            assert_eq!(q.push(lane(1), (1, i)), Ok(None));
        }
        // A newcomer puts out the hog's newest job.
        assert_eq!(q.push(lane(2), (2, 0)), Ok(Some((1, 3))));
        assert_eq!(q.push(lane(2), (2, 1)), Ok(Some((1, 2))));
        // Now even: whoever comes next from either lane is refused.
        assert_eq!(q.push(lane(2), (2, 2)), Err((2, 2)));
        assert_eq!(q.push(lane(1), (1, 9)), Err((1, 9)));
        assert_eq!(q.len(), 4);
        // A third lane still gets in.
        assert!(matches!(q.push(lane(3), (3, 0)), Ok(Some(_))));
        let order: Vec<(u8, u8)> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order.len(), 4);
        assert!(order.contains(&(3, 0)));
    }
}
