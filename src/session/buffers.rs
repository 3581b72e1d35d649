//! The small pure parts of a session: its output buffer with the counters
//! that tell replies from events and written from queued, the reply order
//! that releases completions in command order, and the rate bucket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Buffer capacity an emptied buffer may keep. Enough for the typical
/// command or event, so a busy session does not reallocate per message, yet
/// small enough that ten thousand idle sessions cost little.
pub const KEEP_BUFFER_CAPACITY: usize = 4096;

/// Bytes waiting to be written, and what they are.
#[derive(Debug, Default)]
pub struct Output {
    /// `buf[sent..]` is still unsent.
    buf: Vec<u8>,
    /// How much of `buf` the socket (or rustls) has taken.
    sent: usize,
    /// Bytes ever queued.
    pushed_total: u64,
    /// Bytes ever taken by the socket (or by rustls).
    written_total: u64,
    /// `pushed_total` right after the latest reply was queued.
    replies_end: u64,
    /// Stored direct messages queued but not yet written, as
    /// (`pushed_total` at the end of the line, message id). If the session
    /// dies with some unwritten, they go back to the inbox.
    unsent_direct: VecDeque<(u64, i64)>,
}

impl Output {
    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        self.buf.extend_from_slice(bytes);
        self.pushed_total += bytes.len() as u64;
    }

    /// Appends a reply: the client asked for these bytes, so they never
    /// count as a backlog of events (see `event_backlog`).
    pub fn push_reply(&mut self, bytes: &[u8]) {
        self.push(bytes);
        self.replies_end = self.pushed_total;
    }

    /// Appends the event line of a stored direct message, remembering its
    /// id until the line is written.
    pub fn push_direct(&mut self, bytes: &[u8], id: i64) {
        self.push(bytes);
        self.unsent_direct.push_back((self.pushed_total, id));
    }

    /// Unsent bytes.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Bytes buffered and not yet written.
    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Unsent bytes queued after the last reply: what the client has not
    /// read of what it did not ask for. A client reading a 4 MB `history`
    /// reply is not slow; one that leaves a megabyte of messages unread is.
    pub fn event_backlog(&self) -> u64 {
        self.pushed_total - self.written_total.max(self.replies_end)
    }

    /// The first `n` pending bytes were written.
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.pending_len());
        self.sent += n;
        self.written_total += n as u64;
        while self
            .unsent_direct
            .front()
            .is_some_and(|(end, _)| *end <= self.written_total)
        {
            self.unsent_direct.pop_front();
        }
    }

    /// Gives memory back after writing: an emptied buffer keeps at most
    /// `KEEP_BUFFER_CAPACITY`, and a half-written one drops its front.
    pub fn compact(&mut self) {
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            // A burst can leave a large allocation behind; idle sessions
            // should cost little, so give it back.
            if self.buf.capacity() > KEEP_BUFFER_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.sent > self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Ids of direct messages queued but never written (for a closing session).
    pub fn take_unsent_direct(&mut self) -> Vec<i64> {
        let written = self.written_total;
        self.unsent_direct
            .drain(..)
            .filter(|(end, _)| *end > written)
            .map(|(_, id)| id)
            .collect()
    }
}

/// Replies waiting for an earlier command's reply, so that each session's
/// completions go out in command order even when some wait on the store or
/// the hasher.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    /// Sequence number the next parsed command gets.
    next_seq: u64,
    /// Sequence number of the oldest command whose reply has not been released.
    released_upto: u64,
    /// Replies for `released_upto..next_seq`; `None` while still being worked on.
    parked: VecDeque<Option<Vec<u8>>>,
}

impl ReplyOrder {
    /// Gives the next command its sequence number.
    pub fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.parked.push_back(None);
        seq
    }

    /// Records command `seq`'s reply and hands every reply that may now be
    /// written, in order, to `release`.
    pub fn finish(&mut self, seq: u64, reply: Vec<u8>, mut release: impl FnMut(&[u8])) {
        let Some(index) = seq
            .checked_sub(self.released_upto)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        match self.parked.get_mut(index) {
            Some(slot @ None) => *slot = Some(reply),
            // A duplicate completion, or one for a command never begun.
            _ => return,
        }
        while let Some(Some(_)) = self.parked.front() {
            if let Some(Some(bytes)) = self.parked.pop_front() {
                release(&bytes);
            }
            self.released_upto += 1;
        }
    }

    /// Commands started whose reply has not been released yet.
    pub fn outstanding(&self) -> usize {
        self.parked.len()
    }
}

/// A token bucket: `rate` commands per second, up to `burst` at once.
#[derive(Debug, Clone)]
pub struct RateBucket {
    /// Tokens added per second; 0 means unlimited.
    rate: f64,
    /// Bucket capacity.
    burst: f64,
    /// Tokens available at `updated`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl RateBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateBucket {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Adds what has accrued since the last look, up to the burst.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// Pays `cost` tokens if at least one is there (the balance may go
    /// below zero: a command that stores for many people is let through
    /// whole and paid for by the wait before the next). Otherwise says when
    /// a token will be there.
    pub fn take(&mut self, cost: u32, now: Instant) -> Result<(), Instant> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= f64::from(cost);
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Err(now + Duration::from_secs_f64(wait))
    }

    /// Pays `cost` tokens whatever the balance (for a line already answered).
    pub fn charge(&mut self, cost: u32, now: Instant) {
        if self.rate > 0.0 {
            self.refill(now);
            self.tokens -= f64::from(cost);
        }
    }
}
