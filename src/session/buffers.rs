//! The small pure parts of a session: its output buffer with the counters
//! that tell replies from events and written from queued (and the stored
//! messages in it, until they reach the kernel), the lines it shares with
//! other sessions' outputs, the reply order that releases completions in
//! command order, and the rate bucket.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Buffer capacity an emptied WebSocket buffer may keep (see
/// `web::conn`). A session's own buffers keep none (see `Output::compact`).
pub const KEEP_BUFFER_CAPACITY: usize = 4096;

/// Room the first bytes of an empty output buffer get: the replies and
/// events of one loop pass usually fit, so a burst grows it once at most.
const FIRST_BUFFER_CAPACITY: usize = 512;

/// Capacity an emptied output buffer keeps until its output is released:
/// a fan-out receiver's next burst needs it again at once, and growing it
/// from nothing every time cost more copying than the lines themselves.
/// A larger one (a long reply's) is freed as soon as it is written.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

/// Most pieces handed to one vectored write. The kernel takes up to
/// `IOV_MAX` (1024); 64 lines already fill a socket's send buffer in one
/// call, and the array lives on the stack of every write.
pub const MAX_WRITE_PIECES: usize = 64;

/// Bytes waiting to be written, and what they are. An idle session's is
/// one word: the state below is allocated by the first push and freed by
/// `release` once everything in it is written (issue 16: ten thousand idle
/// sessions would otherwise carry its 96 bytes and their last burst's
/// buffer each). Stream positions restart from zero then, which nothing
/// notices: no queued line, unsent message or held event is left to refer
/// to the old ones.
#[derive(Debug, Default)]
pub struct Output(Option<Box<Stream>>);

/// What an [`Output`] holds while it has anything in it.
#[derive(Debug, Default)]
struct Stream {
    /// The session's own bytes: `buf[sent..]` is still unsent. Shared
    /// lines (`shared`) sit between them in the stream.
    buf: Vec<u8>,
    /// Lines queued by reference instead of copied (a broadcast's line,
    /// formatted once for all its recipients), each with the stream
    /// position (`pushed_total` before it) where it starts. Removed once
    /// wholly written. They count in every total like own bytes, so budgets
    /// and marks see one stream.
    shared: Queue<(u64, Rc<[u8]>)>,
    /// How much of `buf` the socket (or rustls) has taken.
    sent: usize,
    /// Bytes ever queued.
    pushed_total: u64,
    /// Bytes ever taken by the socket (or by rustls).
    written_total: u64,
    /// `pushed_total` right after the latest reply was queued.
    replies_end: u64,
    /// Stored messages queued but not yet in the kernel, as (`pushed_total`
    /// at the end of the line, which). If the session dies with some
    /// there, they are still unread.
    unsent: Queue<(u64, Unsent)>,
    /// Inbox rows of replies never queued (see `never_sent`). Boxed, like
    /// `held`: rare, and ten thousand idle sessions would carry them. A
    /// boxed `Vec` rather than a boxed slice: one word instead of two,
    /// which the shared-line queue needed (see `an_idle_session_stays_small`).
    #[allow(clippy::box_collection)]
    never_sent: Option<Box<Vec<i64>>>,
    /// Events that arrived while a reply goes out in parts (`Some` from
    /// its first part to its completion): queued after it, so that none
    /// lands inside it. With each stored message's (end in `held`, id).
    held: Option<Box<Held>>,
    /// Stored messages that reached the kernel since `take_left` last
    /// looked. Every id, not only the highest: a cluster marks them read
    /// one by one (see `commands/cluster.rs`). Boxed, like `never_sent`.
    #[allow(clippy::box_collection)]
    left: Option<Box<Vec<Unsent>>>,
}

/// A queue that an idle session holds as one word: allocated at its first
/// entry, freed by `free_if_empty`. Ten thousand idle sessions would
/// otherwise carry 32 bytes for each of `Output`'s two queues (issue 16).
#[allow(clippy::box_collection)] // the box is the point: one word when unused
#[derive(Debug)]
struct Queue<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(None)
    }
}

impl<T> Queue<T> {
    fn push_back(&mut self, item: T) {
        self.0.get_or_insert_default().push_back(item);
    }

    fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flat_map(|q| q.iter())
    }

    /// Every entry, leaving the queue unallocated.
    fn take(&mut self) -> VecDeque<T> {
        self.0.take().map(|q| *q).unwrap_or_default()
    }

    fn free_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    /// Heap bytes held: the queue and its entries' room.
    fn heap_capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |q| {
            std::mem::size_of::<VecDeque<T>>() + q.capacity() * std::mem::size_of::<T>()
        })
    }
}

/// Events held behind a reply in parts: their bytes, and each stored
/// message's (end in the bytes, id).
type Held = (Vec<u8>, Vec<(usize, i64)>);

/// A stored message in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unsent {
    /// A `* msg` (or list `* broadcast`) event.
    Push(i64),
    /// A row of an `inbox` reply.
    Inbox(i64),
}

impl Unsent {
    fn id(self) -> i64 {
        match self {
            Unsent::Push(id) | Unsent::Inbox(id) => id,
        }
    }
}

impl Stream {
    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(bytes.len().max(FIRST_BUFFER_CAPACITY));
        }
        self.buf.extend_from_slice(bytes);
        self.pushed_total += bytes.len() as u64;
    }

    /// Appends a line by reference: the stream carries `line` here without
    /// copying it.
    pub fn push_shared(&mut self, line: &Rc<[u8]>) {
        if line.is_empty() {
            return;
        }
        self.shared.push_back((self.pushed_total, Rc::clone(line)));
        self.pushed_total += line.len() as u64;
    }

    /// Appends a reply: the client asked for these bytes, so they never
    /// count as a backlog of events (see `event_backlog`).
    pub fn push_reply(&mut self, bytes: &[u8]) {
        self.push(bytes);
        self.replies_end = self.pushed_total;
    }

    /// Appends the event line of a stored direct message, remembering its
    /// id until the line reaches the kernel.
    pub fn push_direct(&mut self, bytes: &[u8], id: i64) {
        self.push(bytes);
        self.unsent.push_back((self.pushed_total, Unsent::Push(id)));
    }

    /// Appends an event (a stored message's if `id`), or holds it while a
    /// reply is going out in parts.
    pub fn push_event(&mut self, bytes: &[u8], id: Option<i64>) {
        match (self.held.as_deref_mut(), id) {
            (Some((held, ids)), id) => {
                held.extend_from_slice(bytes);
                ids.extend(id.map(|id| (held.len(), id)));
            }
            (None, Some(id)) => self.push_direct(bytes, id),
            (None, None) => self.push(bytes),
        }
    }

    /// [`Stream::push_event`] for a line shared with other outputs: queued
    /// by reference, unless held behind a reply in parts (rare: then it is
    /// copied into the held bytes).
    pub fn push_event_shared(&mut self, line: &Rc<[u8]>, id: Option<i64>) {
        if self.held.is_some() {
            return self.push_event(line, id);
        }
        self.push_shared(line);
        if let Some(id) = id {
            self.unsent.push_back((self.pushed_total, Unsent::Push(id)));
        }
    }

    /// Appends a part of a reply whose completion comes later; events wait
    /// until then.
    pub fn push_reply_part(&mut self, bytes: &[u8]) {
        self.push_reply(bytes);
        self.held.get_or_insert_with(Box::default);
    }

    /// Whether a reply is going out in parts (its completion not yet queued).
    pub fn in_parts(&self) -> bool {
        self.held.is_some()
    }

    /// Bytes of events held behind a reply in parts.
    pub fn held_len(&self) -> usize {
        self.held.as_deref().map_or(0, |(held, _)| held.len())
    }

    /// Appends an `inbox` reply, remembering each row's id until its line
    /// reaches the kernel; `rows` are (end offset in `bytes`, id).
    pub fn push_reply_rows(&mut self, bytes: &[u8], rows: &[(usize, i64)]) {
        let base = self.pushed_total;
        self.push_reply(bytes);
        for &(end, id) in rows {
            self.unsent
                .push_back((base + end as u64, Unsent::Inbox(id)));
        }
        // A reply sent in parts is complete: what waited goes out now.
        if let Some(held) = self.held.take() {
            let (held, ids) = *held;
            let base = self.pushed_total;
            self.push(&held);
            for (end, id) in ids {
                self.unsent.push_back((base + end as u64, Unsent::Push(id)));
            }
        }
    }

    /// Inbox rows that were never queued (their session was closing):
    /// tracked as unsent until `take_unsent`.
    pub fn never_sent(&mut self, rows: &[(usize, i64)]) {
        self.never_sent
            .get_or_insert_with(Box::default)
            .extend(rows.iter().map(|(_, id)| *id));
    }

    /// The first unsent piece: own bytes up to the next shared line, or
    /// what is left of that line. Empty only when nothing is pending.
    pub fn pending(&self) -> &[u8] {
        match self.shared.front() {
            Some((start, line)) if *start <= self.written_total => {
                &line[(self.written_total - start) as usize..]
            }
            Some((start, _)) => {
                let own = (start - self.written_total) as usize;
                &self.buf[self.sent..self.sent + own]
            }
            None => &self.buf[self.sent..],
        }
    }

    /// Fills `pieces` with the unsent bytes in stream order (own bytes and
    /// shared lines, as many as fit) for a vectored write; returns how many
    /// it filled.
    pub fn pending_pieces<'a>(&'a self, pieces: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut put = |piece: &'a [u8]| {
            if piece.is_empty() {
                return true;
            }
            match pieces.get_mut(filled) {
                Some(slot) => {
                    *slot = IoSlice::new(piece);
                    filled += 1;
                    true
                }
                None => false,
            }
        };
        let mut pos = self.written_total;
        let mut own = self.sent;
        for (start, line) in self.shared.iter() {
            if *start > pos {
                let n = (start - pos) as usize;
                if !put(&self.buf[own..own + n]) {
                    return filled;
                }
                own += n;
                pos = *start;
            }
            if !put(&line[(pos - start) as usize..]) {
                return filled;
            }
            pos = start + line.len() as u64;
        }
        put(&self.buf[own..]);
        filled
    }

    /// Bytes queued and not yet written (own and shared).
    pub fn pending_len(&self) -> usize {
        (self.pushed_total - self.written_total) as usize
    }

    /// Unsent bytes queued after the last reply: what the client has not
    /// read of what it did not ask for. A client reading a 4 MB `history`
    /// reply is not slow; one that leaves a megabyte of messages unread is.
    pub fn event_backlog(&self) -> u64 {
        self.pushed_total - self.written_total.max(self.replies_end) + self.held_len() as u64
    }

    /// The first `n` pending bytes were written.
    pub fn advance(&mut self, n: usize) {
        let mut n = n.min(self.pending_len()) as u64;
        while n > 0 {
            let taken = match self.shared.front() {
                Some((start, line)) if *start <= self.written_total => {
                    let left = start + line.len() as u64 - self.written_total;
                    if n >= left {
                        self.shared.pop_front();
                    }
                    n.min(left)
                }
                Some((start, _)) => {
                    let own = n.min(start - self.written_total);
                    self.sent += own as usize;
                    own
                }
                None => {
                    self.sent += n as usize;
                    n
                }
            };
            self.written_total += taken;
            n -= taken;
        }
    }

    /// Everything taken so far is in the kernel: the stored messages it
    /// holds count as read.
    pub fn reached_kernel(&mut self) {
        while let Some(&(end, which)) = self.unsent.front() {
            if end > self.written_total {
                break;
            }
            self.left.get_or_insert_default().push(which);
            self.unsent.pop_front();
        }
    }

    /// The highest (pushed, inbox) ids that reached the kernel since the
    /// last call, if any did; every one of them is added to `ids`.
    pub fn take_left(&mut self, ids: &mut Vec<i64>) -> Option<(i64, i64)> {
        let left = self.left.as_deref_mut().filter(|l| !l.is_empty())?;
        let mut highest = (0, 0);
        for which in left.drain(..) {
            match which {
                Unsent::Push(id) => highest.0 = highest.0.max(id),
                Unsent::Inbox(id) => highest.1 = highest.1.max(id),
            }
            ids.push(which.id());
        }
        Some(highest)
    }

    /// After writing: a written buffer is emptied, keeping its room up to
    /// `KEEP_OUTPUT_CAPACITY` (freeing it is `Output`'s call), a
    /// half-written one drops its front, and emptied queues are freed.
    fn compact(&mut self) {
        if self.sent == self.buf.len() {
            if self.buf.capacity() > KEEP_OUTPUT_CAPACITY {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.sent = 0;
        } else if self.sent > self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.shared.free_if_empty();
        self.unsent.free_if_empty();
        if self.left.as_deref().is_some_and(Vec::is_empty) {
            self.left = None;
        }
    }

    /// Whether nothing is left in it but room (after `compact`).
    fn is_spent(&self) -> bool {
        self.buf.is_empty()
            && self.shared.0.is_none()
            && self.unsent.0.is_none()
            && self.left.is_none()
            && self.held.is_none()
            && self.never_sent.is_none()
    }

    /// Heap bytes its buffers and queues hold (capacity, not length).
    pub fn heap_capacity(&self) -> usize {
        self.buf.capacity()
            + self.shared.heap_capacity()
            + self.unsent.heap_capacity()
            + self
                .left
                .as_deref()
                .map_or(0, |l| l.capacity() * std::mem::size_of::<Unsent>())
    }

    /// Ids of the pushed messages and inbox rows queued that never reached
    /// the kernel (for a closing session); from here on, none is tracked.
    pub fn take_unsent(&mut self) -> (Vec<i64>, Vec<i64>) {
        let mut inbox = self.never_sent.take().map(|ids| *ids).unwrap_or_default();
        let mut pushes = Vec::new();
        if let Some(held) = self.held.take() {
            pushes.extend(held.1.into_iter().map(|(_, id)| id));
        }
        for (_, which) in self.unsent.take() {
            match which {
                Unsent::Push(id) => pushes.push(id),
                Unsent::Inbox(id) => inbox.push(id),
            }
        }
        (pushes, inbox)
    }
}

// What the session sees: `Stream`'s operations, on a stream allocated by
// the first push. Reading an unallocated output finds it empty.
impl Output {
    fn stream(&mut self) -> &mut Stream {
        self.0.get_or_insert_default()
    }

    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.stream().push(bytes);
    }

    /// Appends a reply: the client asked for these bytes, so they never
    /// count as a backlog of events (see `event_backlog`).
    pub fn push_reply(&mut self, bytes: &[u8]) {
        self.stream().push_reply(bytes);
    }

    /// Appends an event (a stored message's if `id`), or holds it while a
    /// reply is going out in parts.
    pub fn push_event(&mut self, bytes: &[u8], id: Option<i64>) {
        self.stream().push_event(bytes, id);
    }

    /// [`Output::push_event`] for a line shared with other outputs: queued
    /// by reference, unless held behind a reply in parts.
    pub fn push_event_shared(&mut self, line: &Rc<[u8]>, id: Option<i64>) {
        self.stream().push_event_shared(line, id);
    }

    /// Appends a part of a reply whose completion comes later; events wait
    /// until then.
    pub fn push_reply_part(&mut self, bytes: &[u8]) {
        self.stream().push_reply_part(bytes);
    }

    /// Appends an `inbox` reply, remembering each row's id until its line
    /// reaches the kernel; `rows` are (end offset in `bytes`, id).
    pub fn push_reply_rows(&mut self, bytes: &[u8], rows: &[(usize, i64)]) {
        self.stream().push_reply_rows(bytes, rows);
    }

    /// Inbox rows that were never queued (their session was closing):
    /// tracked as unsent until `take_unsent`.
    pub fn never_sent(&mut self, rows: &[(usize, i64)]) {
        self.stream().never_sent(rows);
    }

    /// Whether a reply is going out in parts (its completion not yet queued).
    pub fn in_parts(&self) -> bool {
        self.0.as_deref().is_some_and(Stream::in_parts)
    }

    /// Bytes of events held behind a reply in parts.
    pub fn held_len(&self) -> usize {
        self.0.as_deref().map_or(0, Stream::held_len)
    }

    /// The first unsent piece: own bytes up to the next shared line, or
    /// what is left of that line. Empty only when nothing is pending.
    pub fn pending(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Stream::pending)
    }

    /// Fills `pieces` with the unsent bytes in stream order (own bytes and
    /// shared lines, as many as fit) for a vectored write; returns how many
    /// it filled.
    pub fn pending_pieces<'a>(&'a self, pieces: &mut [IoSlice<'a>]) -> usize {
        self.0.as_deref().map_or(0, |s| s.pending_pieces(pieces))
    }

    /// Bytes queued and not yet written (own and shared).
    pub fn pending_len(&self) -> usize {
        self.0.as_deref().map_or(0, Stream::pending_len)
    }

    /// Unsent bytes queued after the last reply (see `Stream::event_backlog`).
    pub fn event_backlog(&self) -> u64 {
        self.0.as_deref().map_or(0, Stream::event_backlog)
    }

    /// The first `n` pending bytes were written.
    pub fn advance(&mut self, n: usize) {
        if let Some(stream) = self.0.as_deref_mut() {
            stream.advance(n);
        }
    }

    /// Everything taken so far is in the kernel: the stored messages it
    /// holds count as read.
    pub fn reached_kernel(&mut self) {
        if let Some(stream) = self.0.as_deref_mut() {
            stream.reached_kernel();
        }
    }

    /// The highest (pushed, inbox) ids that reached the kernel since the
    /// last call, if any did; every one of them is added to `ids`.
    pub fn take_left(&mut self, ids: &mut Vec<i64>) -> Option<(i64, i64)> {
        let stream = self.0.as_deref_mut()?;
        let highest = stream.take_left(ids);
        // The last thing a delivery leaves behind.
        stream.compact();
        highest
    }

    /// Tidies up after writing: emptied queues are freed and a
    /// half-written buffer drops its front. An output emptied after a reply
    /// is freed at once: more comes only once the client asks again. One
    /// emptied after events keeps its room (up to `KEEP_OUTPUT_CAPACITY`)
    /// until `release`: in a busy fan-out, more is on its way. (Holding
    /// every output a moment would also cost idle memory: freed late, the
    /// buffers of ten thousand logins leave holes in the heap.)
    pub fn compact(&mut self) {
        if let Some(stream) = self.0.as_deref_mut() {
            stream.compact();
            if stream.is_spent() && stream.replies_end == stream.pushed_total {
                self.0 = None;
            }
        }
    }

    /// Whether its state is allocated with nothing in it: `release` would
    /// free it.
    pub fn is_spent(&self) -> bool {
        self.0.as_deref().is_some_and(Stream::is_spent)
    }

    /// Frees its state, buffer included, if nothing is in it. Not done at
    /// every write: a receiver of a busy fan-out empties its output on
    /// every pass, and allocating and growing it again each time cost the
    /// loop more than the copying of the lines (issue 16). The reactor
    /// calls this a moment after the output empties.
    pub fn release(&mut self) {
        if self.is_spent() {
            self.0 = None;
        }
    }

    /// Heap bytes it holds (capacity, not length).
    pub fn heap_capacity(&self) -> usize {
        self.0
            .as_deref()
            .map_or(0, |s| std::mem::size_of::<Stream>() + s.heap_capacity())
    }

    /// Ids of the pushed messages and inbox rows queued that never reached
    /// the kernel (for a closing session); from here on, none is tracked.
    pub fn take_unsent(&mut self) -> (Vec<i64>, Vec<i64>) {
        self.0
            .as_deref_mut()
            .map(Stream::take_unsent)
            .unwrap_or_default()
    }
}

/// Replies waiting for an earlier command's reply, so that each session's
/// completions go out in command order even when some wait on the store or
/// the hasher.
#[derive(Debug)]
pub struct ReplyOrder<R = Vec<u8>> {
    /// Sequence number the next parsed command gets.
    next_seq: u64,
    /// Replies for the commands not yet released, the oldest first (so the
    /// oldest's number is `next_seq - parked.len()`); `None` while still
    /// being worked on. Unallocated while none is in flight (issue 16).
    parked: Queue<Option<R>>,
}

impl<R> Default for ReplyOrder<R> {
    fn default() -> Self {
        ReplyOrder {
            // From 1, so a command's number fits a `NonZeroU64`.
            next_seq: 1,
            parked: Queue::default(),
        }
    }
}

impl<R> ReplyOrder<R> {
    /// Gives the next command its sequence number (never 0).
    pub fn begin(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.parked.push_back(None);
        seq
    }

    /// Records command `seq`'s reply and hands every reply that may now be
    /// written, in order, to `release`.
    pub fn finish(&mut self, seq: u64, reply: R, mut release: impl FnMut(R)) {
        let released_upto = self.next_seq - self.parked.len() as u64;
        let Some(index) = seq
            .checked_sub(released_upto)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        match self.parked.0.as_deref_mut().and_then(|q| q.get_mut(index)) {
            Some(slot @ None) => *slot = Some(reply),
            // A duplicate completion, or one for a command never begun.
            _ => return,
        }
        while let Some(Some(_)) = self.parked.front() {
            if let Some(Some(reply)) = self.parked.pop_front() {
                release(reply);
            }
        }
        // Nothing in flight: an idle session keeps no queue (issue 16).
        self.parked.free_if_empty();
    }

    /// Takes the replies finished but never released (their session is
    /// going away).
    pub fn take_parked(&mut self) -> Vec<R> {
        self.parked.take().into_iter().flatten().collect()
    }

    /// Heap bytes its queue holds.
    pub fn heap_capacity(&self) -> usize {
        self.parked.heap_capacity()
    }

    /// Commands started whose reply has not been released yet.
    pub fn outstanding(&self) -> usize {
        self.parked.len()
    }
}

/// What a [`RateBucket`] allows: the same for every session, so it is
/// passed in rather than kept in each bucket.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens added per second; 0 means unlimited.
    pub per_sec: f64,
    /// Bucket capacity.
    pub burst: u32,
}

impl Rate {
    fn capacity(self) -> f64 {
        f64::from(self.burst.max(1))
    }
}

/// A token bucket: `rate.per_sec` commands per second, up to `rate.burst`
/// at once.
#[derive(Debug, Clone)]
pub struct RateBucket {
    /// Tokens available at `updated`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl RateBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        RateBucket {
            tokens: rate.capacity(),
            updated: now,
        }
    }

    /// Adds what has accrued since the last look, up to the burst.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.capacity());
        self.updated = now;
    }

    /// Pays `cost` tokens if at least one is there (the balance may go
    /// below zero: a command that stores for many people is let through
    /// whole and paid for by the wait before the next). Otherwise says when
    /// a token will be there.
    pub fn take(&mut self, rate: Rate, cost: u32, now: Instant) -> Result<(), Instant> {
        if rate.per_sec <= 0.0 {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= f64::from(cost);
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate.per_sec;
        Err(now + Duration::from_secs_f64(wait))
    }

    /// Pays `cost` tokens whatever the balance (for a line already answered).
    pub fn charge(&mut self, rate: Rate, cost: u32, now: Instant) {
        if rate.per_sec > 0.0 {
            self.refill(rate, now);
            self.tokens -= f64::from(cost);
        }
    }
}
