//! Logging in and registering: the password check on the hashing pool, the
//! account write, and lockouts after repeated failures (per username and
//! address).

use std::net::IpAddr;
use std::time::Instant;

use crate::auth::{HashOutcome, HashWork};
use crate::config::Registration;
use crate::protocol::{err, ok, ErrorCode, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::store::{Marks, StoreOutput, StoreRequest};

use super::chat::Account;
use super::job::{write_failed, Cont, Effects, Job, Step, Work, WorkResult};
use super::{Caller, Chat, Clock, LockKey};

/// Failed logins for one (user, address) pair.
#[derive(Clone, Debug)]
pub(super) struct Failures {
    /// Consecutive failures.
    count: u32,
    /// Set once `count` reaches the limit.
    locked_until: Option<Instant>,
    /// When this record is forgotten: `block_time` after the last failure.
    forget_at: Instant,
}

impl Chat {
    pub(super) fn login(
        &mut self,
        caller: &Caller,
        user: String,
        password: String,
        now: Clock,
    ) -> Step {
        if let Some(locked) = self.lock_message(&user, caller.ip, now) {
            return Step::Reply(locked);
        }
        let (hash, known) = match self.accounts.get(&user) {
            Some(a) => (a.hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        Step::Wait(Job {
            cont: Cont::Login {
                user,
                known,
                ip: caller.ip,
            },
            work: Work::Hash(HashWork::Verify { hash, password }),
        })
    }

    /// `- LOCKED ...` if `user` is locked out from `ip` now; forgets a
    /// record whose time has passed.
    fn lock_message(&mut self, user: &str, ip: IpAddr, now: Clock) -> Option<Vec<u8>> {
        let key = (user.to_string(), ip);
        let f = self.failures.get(&key)?;
        if f.forget_at <= now.mono {
            self.failures.remove(&key);
            return None;
        }
        let until = f.locked_until.filter(|u| *u > now.mono)?;
        let secs = until.duration_since(now.mono).as_secs_f64().ceil() as u64;
        Some(err(
            ErrorCode::Locked,
            &format!("too many failed logins; try again in {secs} seconds"),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_login(
        &mut self,
        caller: Option<&Caller>,
        user: String,
        known: bool,
        ip: IpAddr,
        result: WorkResult,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        let WorkResult::Hash(HashOutcome::Verified(matched)) = result else {
            log::error!("login of {user}: unexpected result {result:?}");
            return Step::Reply(err(ErrorCode::Internal, "internal error"));
        };
        if !(known && matched) {
            // Counted even if the client hung up before the answer.
            self.record_failure(user, ip, now, fx);
            return Step::Reply(err(ErrorCode::AuthFail, "wrong username or password"));
        }
        let Some(caller) = caller else {
            return Step::Done;
        };
        // A lock that began while this check was in flight still holds,
        // even for the right password.
        if let Some(locked) = self.lock_message(&user, ip, now) {
            return Step::Reply(locked);
        }
        self.failures.remove(&(user.clone(), ip));
        self.enter(caller, &user, fx);
        let unread = self.accounts.get(&user).map_or(0, |a| a.unread);
        let plural = if unread == 1 { "" } else { "s" };
        Step::Reply(ok(&format!(
            "welcome {user} ({unread} unread message{plural})"
        )))
    }

    fn record_failure(&mut self, user: String, ip: IpAddr, now: Clock, fx: &mut Effects) {
        let block = self.settings.block_time;
        let key = (user, ip);
        let f = self.failures.entry(key.clone()).or_insert(Failures {
            count: 0,
            locked_until: None,
            forget_at: now.mono,
        });
        f.count += 1;
        f.forget_at = now.mono + block;
        // Every failure at or past the limit (re)locks: verifications that
        // were already in flight when the lock began must not reopen it.
        if f.count >= self.settings.max_login_failures {
            f.locked_until = Some(now.mono + block);
            log::warn!(
                "login locked for {} from {} after {} failures",
                key.0,
                key.1,
                f.count
            );
        }
        fx.lock_timers.push((f.forget_at, key));
    }

    /// Drops a lockout record whose time has passed (timer callback).
    pub fn expire_lock(&mut self, key: &LockKey, now: Instant) {
        if self.failures.get(key).is_some_and(|f| f.forget_at <= now) {
            self.failures.remove(key);
        }
    }

    pub(super) fn register(&mut self, user: String, password: String) -> Step {
        if self.settings.registration == Registration::Closed {
            return Step::Reply(err(
                ErrorCode::Closed,
                "registration is closed on this server",
            ));
        }
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Step::Reply(err(
                ErrorCode::BadArg,
                &format!("a password is {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes"),
            ));
        }
        if self.accounts.contains_key(&user) || !self.registering.insert(user.clone()) {
            return Step::Reply(err(ErrorCode::Exists, &format!("{user} is taken")));
        }
        Step::Wait(Job {
            cont: Cont::RegisterHashed { user },
            work: Work::Hash(HashWork::Hash {
                password,
                cost: self.settings.hash_cost,
            }),
        })
    }

    pub(super) fn register_hashed(&mut self, user: String, result: WorkResult, now: Clock) -> Step {
        let WorkResult::Hash(HashOutcome::Hashed(Ok(hash))) = result else {
            return self.register_failed(&user);
        };
        Step::Wait(Job {
            work: Work::Store(StoreRequest::CreateUser {
                name: user.clone(),
                hash: hash.clone(),
                created: now.wall,
            }),
            cont: Cont::RegisterStored { user, hash },
        })
    }

    pub(super) fn register_stored(
        &mut self,
        caller: Option<&Caller>,
        user: String,
        hash: String,
        result: WorkResult,
        fx: &mut Effects,
    ) -> Step {
        let WorkResult::Store(Ok(out)) = result else {
            self.registering.remove(&user);
            return Step::Reply(write_failed(&result, "could not register; try again later"));
        };
        self.registering.remove(&user);
        let slot = match out {
            StoreOutput::Ids(ids) => ids.first().map_or(0, |id| (*id).max(0) as u64),
            _ => 0,
        };
        // A new account's marks start at zero, whatever its slot held.
        fx.marks.push((slot, Marks::default()));
        self.accounts.insert(user.clone(), Account::new(hash, slot));
        match caller {
            Some(caller) if caller.user.is_none() => {
                self.enter(caller, &user, fx);
                Step::Reply(ok(&format!("registered {user}")))
            }
            _ => Step::Done,
        }
    }

    fn register_failed(&mut self, user: &str) -> Step {
        self.registering.remove(user);
        Step::Reply(err(
            ErrorCode::Internal,
            "could not register; try again later",
        ))
    }
}
