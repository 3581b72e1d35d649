//! The loop's side of its background threads: it starts the store thread,
//! the reader (history reads on their own connection) and the hashing pool, hands them jobs tagged with where the answer goes,
//! and takes their results back from one channel, woken by the loop's one
//! `Waker`. It counts jobs in flight (shutdown waits for them) and never
//! blocks: a job that cannot be queued is answered as failed on the next
//! pass, never from inside the caller's own line handling.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use mio::Waker;

use crate::auth::{HashOutcome, HashWork, HasherPool};
use crate::commands::{Cont, Job, Work, WorkResult};
use crate::hashqueue::{FairQueue, Lane, MAX_QUEUED};
use crate::session::ReplyTo;
use crate::store::{self, Store, StoreError, StoreHandle, StoreRequest};
use crate::storequeue::StoreQueue;

/// Hashing threads. Argon2 at normal cost takes tens of milliseconds and
/// 19 MiB; two workers keep logins flowing without starving the loop's core.
const HASH_THREADS: usize = 2;

/// Routing for a job's result: the command it answers (none for background
/// writes) and what to do with it.
#[derive(Debug)]
pub struct Tag {
    /// The command the result answers, if any.
    pub reply_to: Option<ReplyTo>,
    /// What to do with the result.
    pub cont: Cont,
    /// Rows it counts for while with the store thread (0: not a write
    /// through the fair queue).
    rows: usize,
    /// Handed to the reader (counts against `MAX_READS_IN_FLIGHT`).
    read: bool,
}

/// A finished job on its way back to the loop.
#[derive(Debug)]
pub struct Completion {
    /// Where it goes.
    pub tag: Tag,
    /// What came of it.
    pub result: WorkResult,
}

/// The store thread and the hashing pool, as the loop sees them.
pub struct Background {
    store: StoreHandle<Tag>,
    /// `history` reads, on their own connection and thread.
    reader: StoreHandle<Tag>,
    hasher: HasherPool<Tag>,
    /// Hashing jobs waiting for a free thread, fair across address groups.
    hash_queue: FairQueue<(HashWork, Tag)>,
    /// Hashing jobs with the threads (at most `HASH_THREADS`).
    hashing: usize,
    completions: Receiver<Completion>,
    /// Results known when their job was dispatched (jobs that could not be
    /// handed to their thread, and work done on the loop itself);
    /// answered next pass, never from inside the caller's line handling.
    ready: Vec<Completion>,
    /// Jobs not yet answered.
    in_flight: usize,
    /// The last `take` left results in the channel.
    more: bool,
    /// Reads waiting for the reader to have room, oldest first.
    reads_waiting: VecDeque<(StoreRequest, Tag)>,
    /// Reads handed to the reader and not yet taken back.
    reads_in_flight: usize,
    /// Commands' writes waiting their turn for the store thread.
    store_queue: StoreQueue<(StoreRequest, Tag)>,
    /// Rows of those handed to the store thread and not yet back.
    store_rows_out: usize,
    /// See `store_bytes()`.
    store_bytes: usize,
    /// Past the shutdown deadline (see `stop_writes`).
    writes_stopped: bool,
}

/// Rows of commands' writes with the store thread at once: two batches, so
/// it always has the next one ready while committing one.
const STORE_ROWS_OUT: usize = 2 * store::MAX_BATCH_ROWS;

/// Reads handed to the reader at once (see `dispatch`).
const MAX_READS_IN_FLIGHT: usize = 4;

/// Rows of replies one pass formats at most (see `take`); a store result
/// without rows counts as one.
const PASS_BUDGET: usize = 4096;

impl Background {
    /// Starts the store thread over `store` and the hashing pool; both
    /// report through one channel and wake the loop with `waker`.
    pub fn spawn(store: Store, waker: &Arc<Waker>) -> io::Result<Background> {
        let (done_tx, completions) = mpsc::channel::<Completion>();
        let reader_tx = done_tx.clone();
        let reader_waker = Arc::clone(waker);
        let reader = store.spawn_reader(move |done| {
            for (tag, result) in done {
                let _ = reader_tx.send(Completion {
                    tag,
                    result: WorkResult::Store(result),
                });
            }
            let _ = reader_waker.wake();
        })?;
        let store_tx = done_tx.clone();
        let store_waker = Arc::clone(waker);
        let store = store.spawn(move |batch| {
            for (tag, result) in batch {
                let _ = store_tx.send(Completion {
                    tag,
                    result: WorkResult::Store(result),
                });
            }
            // One wake per batch: the loop drains the channel until empty.
            let _ = store_waker.wake();
        })?;
        let hash_waker = Arc::clone(waker);
        let hasher = HasherPool::spawn(HASH_THREADS, move |tag, outcome| {
            let _ = done_tx.send(Completion {
                tag,
                result: WorkResult::Hash(outcome),
            });
            let _ = hash_waker.wake();
        })?;
        Ok(Background {
            store,
            reader,
            hasher,
            hash_queue: FairQueue::new(MAX_QUEUED),
            hashing: 0,
            completions,
            ready: Vec::new(),
            in_flight: 0,
            more: false,
            reads_waiting: VecDeque::new(),
            reads_in_flight: 0,
            // Each session's share of the store queue, and the total the
            // loop enforces, bound what comes in.
            store_queue: StoreQueue::default(),
            store_rows_out: 0,
            store_bytes: 0,
            writes_stopped: false,
        })
    }

    /// Hands `job` to its thread; its result comes back from `take`.
    /// Hashing jobs wait their turn in `lane` (the address group of the
    /// session asking) and come back as `Busy` when the queue is full.
    pub fn dispatch(&mut self, job: Job, reply_to: Option<ReplyTo>, lane: Lane) {
        self.in_flight += 1;
        let mut tag = Tag {
            reply_to,
            cont: job.cont,
            rows: 0,
            read: false,
        };
        self.store_bytes += tag.cont.queued_bytes();
        let failed = match job.work {
            // Reads never queue behind writes; a few at a time, so the
            // pages read ahead of the loop stay a few, however many
            // sessions ask (each page is up to ~400 KB of rows).
            Work::Store(
                request @ (StoreRequest::History { .. }
                | StoreRequest::Backup { .. }
                | StoreRequest::LoadAccounts),
            ) => {
                tag.read = true;
                self.reads_waiting.push_back((request, tag));
                self.start_reads();
                None
            }
            // Upkeep (messages back to the inbox, read marks, last-seen
            // times) goes first, in order: the inbox rules rely on a
            // message put back before a later `inbox` reads.
            Work::Store(request) if request.is_upkeep() || self.writes_stopped => {
                self.store.submit(request, tag).err().map(|(_, tag)| {
                    (
                        tag,
                        WorkResult::Store(Err(StoreError::Failed(
                            "the store thread has stopped".into(),
                        ))),
                    )
                })
            }
            // Commands' writes wait in a queue fair by rows per session,
            // and only about two batches' worth is with the store thread
            // at a time: forty sessions flooding list broadcasts delay
            // someone else's `send` by what the store already has, not by
            // everything they queued.
            Work::Store(request) => {
                tag.rows = request.rows();
                let session = tag.reply_to.map_or(0, |r| r.session.id);
                self.store_queue.push(session, tag.rows, (request, tag));
                self.pump_store();
                None
            }
            // The next page of a long reply from memory: the loop makes
            // it when it takes this result, a page per pass at most.
            Work::Local => {
                self.ready.push(Completion {
                    tag,
                    result: WorkResult::Local,
                });
                None
            }
            Work::Hash(work) => {
                let busy = match self.hash_queue.push(lane, (work, tag)) {
                    Ok(evicted) => evicted,
                    Err(refused) => Some(refused),
                };
                if let Some((_, tag)) = busy {
                    log::debug!("hashing queue full ({} waiting)", self.hash_queue.len());
                    self.ready.push(Completion {
                        tag,
                        result: WorkResult::Hash(HashOutcome::Busy),
                    });
                }
                self.pump();
                None
            }
        };
        if let Some((tag, result)) = failed {
            log::error!("background job could not be queued");
            self.ready.push(Completion { tag, result });
        }
    }

    /// Hands waiting reads to the reader while fewer than
    /// `MAX_READS_IN_FLIGHT` are there.
    fn start_reads(&mut self) {
        while self.reads_in_flight < MAX_READS_IN_FLIGHT {
            let Some((request, tag)) = self.reads_waiting.pop_front() else {
                return;
            };
            match self.reader.submit(request, tag) {
                Ok(()) => self.reads_in_flight += 1,
                Err((_, tag)) => {
                    log::error!("background job could not be queued");
                    self.ready.push(Completion {
                        tag,
                        result: WorkResult::Store(Err(StoreError::Failed(
                            "the reader thread has stopped".into(),
                        ))),
                    });
                }
            }
        }
    }

    /// Hands commands' writes to the store thread, in turn by lane, while
    /// it has less than `STORE_ROWS_OUT` rows.
    fn pump_store(&mut self) {
        while self.store_rows_out < STORE_ROWS_OUT {
            let Some((request, tag)) = self.store_queue.pop() else {
                return;
            };
            let rows = tag.rows;
            match self.store.submit(request, tag) {
                Ok(()) => self.store_rows_out += rows,
                Err((_, mut tag)) => {
                    tag.rows = 0;
                    log::error!("background job could not be queued");
                    self.ready.push(Completion {
                        tag,
                        result: WorkResult::Store(Err(StoreError::Failed(
                            "the store thread has stopped".into(),
                        ))),
                    });
                }
            }
        }
    }

    /// Bytes the commands' writes hold while they wait for the store
    /// (what `Cont::queued_bytes` says), in all.
    pub fn store_bytes(&self) -> usize {
        self.store_bytes
    }

    /// Hands waiting hashing jobs to the threads while one is free.
    fn pump(&mut self) {
        while self.hashing < HASH_THREADS {
            let Some((work, tag)) = self.hash_queue.pop() else {
                return;
            };
            match self.hasher.submit(work, tag) {
                Ok(()) => self.hashing += 1,
                Err((work, tag)) => {
                    log::error!("background job could not be queued");
                    let outcome = match work {
                        HashWork::Verify { .. } => HashOutcome::Verified(false),
                        HashWork::Hash { .. } => {
                            HashOutcome::Hashed(Err("the hashing threads have stopped".into()))
                        }
                    };
                    self.ready.push(Completion {
                        tag,
                        result: WorkResult::Hash(outcome),
                    });
                }
            }
        }
    }

    /// The results there are now, as many as one loop pass should handle:
    /// several wakes can arrive as one event, so this takes more than one,
    /// but a pass formats at most `PASS_BUDGET` rows' worth (a page of
    /// history costs its rows), so a thousand sessions' history parts
    /// arriving at once are spread over passes with polls between them.
    pub fn take(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        let mut budget = PASS_BUDGET;
        // Results known at dispatch count too: a page of `whoelse` made
        // from memory costs what a page of history does.
        let mut ready = std::mem::take(&mut self.ready).into_iter();
        for c in ready.by_ref() {
            budget = budget.saturating_sub(c.tag.cont.rows_to_format().max(1));
            done.push(c);
            if budget == 0 {
                break;
            }
        }
        self.ready.extend(ready);
        while budget > 0 {
            match self.completions.try_recv() {
                Ok(c) => {
                    if c.tag.read {
                        self.reads_in_flight = self.reads_in_flight.saturating_sub(1);
                    }
                    if matches!(c.result, WorkResult::Hash(_)) {
                        self.hashing = self.hashing.saturating_sub(1);
                    }
                    self.store_rows_out = self.store_rows_out.saturating_sub(c.tag.rows);
                    budget = budget.saturating_sub(c.tag.cont.rows_to_format().max(1));
                    done.push(c);
                }
                Err(_) => break,
            }
        }
        // Threads freed up: the next jobs in turn.
        self.start_reads();
        self.pump();
        self.pump_store();
        for c in &done {
            self.store_bytes = self.store_bytes.saturating_sub(c.tag.cont.queued_bytes());
        }
        // Stopped by the budget: the rest is taken next pass, without a wake.
        self.more = budget == 0;
        self.in_flight = self.in_flight.saturating_sub(done.len());
        done
    }

    /// Whether results are waiting that no wake will announce.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || self.more
    }

    /// Password checks waiting for a hashing thread.
    pub fn hash_queue_len(&self) -> usize {
        self.hash_queue.len()
    }

    /// Jobs handed out and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Past the shutdown deadline: writes not yet started are refused
    /// rather than committed (see `StoreHandle::stop_writes`).
    pub fn stop_writes(&mut self) {
        self.store.stop_writes();
        self.writes_stopped = true;
        // Writes still waiting their turn are refused now, not later.
        while let Some((_, mut tag)) = self.store_queue.pop() {
            tag.rows = 0;
            self.ready.push(Completion {
                tag,
                result: WorkResult::Store(Err(StoreError::Failed(
                    "natterd is shutting down".into(),
                ))),
            });
        }
    }

    /// Stops the threads; the store commits what is still queued first.
    pub fn close(&mut self) {
        self.hasher.close();
        self.reader.close();
        self.store.close();
    }
}
