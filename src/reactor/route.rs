//! Routing what sessions produce: jobs to the background threads and their
//! results back to the session that asked, deliveries and goodbyes to other
//! sessions, background writes and lockout timers. Part of the reactor;
//! split out by topic only.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use crate::background::{Completion, Tag};
use crate::commands::{Cont, Delivery, Effects, Job, SessionRef, Step, Work};
use crate::session::{Outbox, Pushed, ReplyTo};
use crate::store::StoreRequest;

use super::{Conn, Server, Timer};

impl Server {
    pub(super) fn apply(&mut self, outbox: Outbox) {
        for (job, reply_to) in outbox.jobs {
            self.dispatch(job, reply_to);
        }
        self.apply_effects(outbox.effects);
    }

    pub(super) fn apply_effects(&mut self, mut fx: Effects) {
        let mut deliveries = std::mem::take(&mut fx.deliveries);
        for delivery in deliveries.drain(..) {
            self.deliver(delivery);
        }
        self.chat.give_back(deliveries);
        let now = self.clock.mono;
        for (sref, reason) in fx.closes {
            if let Some(conn) = self.live_conn(sref) {
                conn.session.say_bye(reason, now);
                self.settle(sref.token);
                self.write_soon(sref.token);
            }
        }
        for request in fx.background {
            self.background(request);
        }
        for (at, key) in fx.lock_timers {
            self.deadlines
                .push(Reverse((at, Timer::Lock(Box::new(key)))));
        }
        self.record_marks(fx.marks);
    }

    /// Queues an event line for one session; one whose unread backlog
    /// passes the limit is dropped rather than allowed to grow without
    /// bound. A stored message that no session took goes back to the inbox.
    pub(super) fn deliver(&mut self, delivery: Delivery) {
        let stored_id = delivery.stored.as_ref().map(|s| s.id);
        let token = delivery.to.token;
        let conn = self
            .conns
            .get_mut(token)
            .filter(|c| c.session.id() == delivery.to.id);
        let taken = match conn {
            None => false,
            Some(conn) => match conn.session.push_event(&delivery.line, stored_id) {
                Pushed::Refused => false,
                Pushed::Taken => {
                    // `count_output` and `write_soon` on the connection at
                    // hand: this runs once per recipient of every fan-out.
                    // Taken means open, so everything pending counts.
                    let now = conn.session.pending_output();
                    self.output_total = self.output_total - conn.counted_output + now;
                    conn.counted_output = now;
                    if !conn.in_events {
                        conn.in_events = true;
                        self.events.push_back(token);
                    }
                    true
                }
                Pushed::OverLimit => {
                    // Its backlog may only be waiting for its turn to be
                    // written: see what the socket takes before calling
                    // the reader slow.
                    if !conn.write_interest {
                        let _ = conn.session.write_to(&mut conn.stream);
                    }
                    if conn.session.is_open() && conn.session.over_backlog() {
                        conn.session.drop_slow();
                    }
                    self.settle(token);
                    self.write_soon(token);
                    true
                }
            },
        };
        if let (false, Some(stored)) = (taken, delivery.stored) {
            if let Some(job) = self.chat.undelivered(&stored.recipient, &[stored.id], &[]) {
                self.dispatch(job, None);
            }
        }
    }

    pub(super) fn live_conn(&mut self, sref: SessionRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(sref.token)
            .filter(|c| c.session.id() == sref.id)
    }

    pub(super) fn is_live(&self, sref: SessionRef) -> bool {
        self.conns
            .get(sref.token)
            .is_some_and(|c| c.session.id() == sref.id)
    }

    // ----- background work -------------------------------------------------

    pub(super) fn background(&mut self, request: StoreRequest) {
        self.dispatch(
            Job {
                cont: Cont::Background,
                work: Work::Store(request),
            },
            None,
        );
    }

    pub(super) fn dispatch(&mut self, job: Job, reply_to: Option<ReplyTo>) {
        // Hashing is shared out fairly by the asking session's address group.
        let lane = reply_to
            .and_then(|r| {
                self.conns
                    .get(r.session.token)
                    .filter(|c| c.session.id() == r.session.id)
            })
            .map(|c| self.admission.group(c.session.caller().ip));
        self.background.dispatch(job, reply_to, lane);
        self.note_store_backlog();
    }

    pub(super) fn drain_completions(&mut self) {
        for c in self.background.take() {
            self.on_completion(c);
        }
        self.note_store_backlog();
    }

    /// Tells every session (through their shared limits) what all their
    /// writes waiting for the store hold (see `STORE_TOTAL`).
    fn note_store_backlog(&self) {
        self.limits
            .store_backlog
            .store(self.background.store_bytes(), Ordering::Relaxed);
    }

    pub(super) fn on_completion(&mut self, c: Completion) {
        let Tag { reply_to, cont, .. } = c.tag;
        let clock = self.clock;
        match cont {
            Cont::Admin { conn, id } => {
                self.admin_finish(conn, id, c.result);
                return;
            }
            Cont::Operator {
                conn,
                id,
                then,
                done,
            } => {
                let mut fx = Effects::default();
                let step = self.chat.complete(None, *then, c.result, clock, &mut fx);
                self.apply_effects(fx);
                self.operator_step(conn, id, step, done);
                return;
            }
            _ => {}
        }
        // A reply for a session that has gone, or is closing, or whose slot
        // now holds a newer session, must not reach it; the state change
        // still happens.
        let live = reply_to.filter(|r| {
            self.conns
                .get(r.session.token)
                .is_some_and(|c| c.session.id() == r.session.id && c.session.is_open())
        });
        match live.and_then(|r| Some((r, self.conns.get_mut(r.session.token)?))) {
            Some((reply_to, conn)) => {
                let stranger = conn.session.caller().user.is_none();
                let mut outbox = Outbox::default();
                conn.session.complete(
                    &mut self.chat,
                    reply_to.seq,
                    cont,
                    c.result,
                    clock,
                    &mut outbox,
                );
                if stranger && conn.session.caller().user.is_some() {
                    // Logged in: no longer in the class a newcomer may displace.
                    self.admission.logged_in(reply_to.session);
                }
                self.apply(outbox);
                // If that ended it (a queued quit, say), it leaves the chat
                // now, before the next completion can deliver to it.
                self.settle(reply_to.session.token);
                self.mark_ready(reply_to.session.token);
            }
            None => {
                let mut fx = Effects::default();
                if let Step::Wait(job) = self.chat.complete(None, cont, c.result, clock, &mut fx) {
                    self.dispatch(job, None);
                }
                self.apply_effects(fx);
            }
        }
    }
}
