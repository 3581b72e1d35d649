//! Logging in and registering: the password check on the hashing pool, the
//! account write, and lockouts after repeated failures (per username and
//! address).

use std::net::IpAddr;
use std::time::Instant;

use crate::addr::AddrGroup;
use crate::auth::{self, HashOutcome, HashWork};
use crate::cluster::Bus;
use crate::config::Registration;
use crate::protocol::{err, event, ok, ErrorCode, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::store::{Marks, StoreOutput, StoreRequest};

use super::chat::Account;
use super::job::{write_failed, Cont, Delivery, Effects, Job, Step, Work, WorkResult};
use super::{Caller, Chat, Clock, LockKey, Name};

/// Login attempts for one (user, address) pair. An attempt counts from the
/// moment it is submitted, not when its verification finishes: otherwise
/// many guesses sent at once would all pass the limit before the first one
/// failed.
#[derive(Clone, Debug)]
pub(super) struct Failures {
    /// Consecutive failures.
    pub(super) count: u32,
    /// Verifications submitted and not yet back. They count against the
    /// limit already, and keep the record alive until they are back.
    pub(super) in_flight: u32,
    /// Set once `count` reaches the limit.
    pub(super) locked_until: Option<Instant>,
    /// When this record may be forgotten (if nothing is in flight):
    /// `block_time` after the last failure.
    pub(super) forget_at: Instant,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures {
            count: 0,
            in_flight: 0,
            locked_until: None,
            forget_at: now,
        }
    }
}

impl Chat {
    pub(super) fn login(
        &mut self,
        caller: &Caller,
        user: String,
        password: String,
        now: Clock,
    ) -> Step {
        let charged = match self.start_attempt(&user, caller.ip, true, now) {
            Ok(charged) => charged,
            Err(locked) => {
                self.counters.logins_locked += 1;
                return Step::Reply(locked);
            }
        };
        let (hash, known, upgrade) = match self.accounts.get(user.as_str()) {
            Some(a) => {
                let outdated = auth::stand_in(&a.hash).is_some_and(|p| p != self.current_params);
                let upgrade = outdated.then_some(self.settings.hash_cost);
                (a.hash.to_string(), true, upgrade)
            }
            None => (self.dummy_hash.clone(), false, None),
        };
        Step::Wait(Job {
            cont: Cont::Login {
                user,
                known,
                ip: caller.ip,
                charged,
            },
            work: Work::Hash(HashWork::Verify {
                hash,
                password,
                upgrade,
            }),
        })
    }

    /// Lockouts are per username and address group (IPv6: per
    /// `--ipv6-prefix`), so a host cannot take a fresh address per guess.
    fn lock_key(&self, user: &str, ip: IpAddr) -> LockKey {
        (
            user.to_string(),
            AddrGroup::of(ip, self.settings.ipv6_prefix),
        )
    }

    /// Counts a password check for `user` from `ip` as it starts, or says
    /// why it may not start (`- LOCKED`). The failures so far plus the
    /// checks already in flight may not pass the limit; an attempt over it
    /// is answered as locked without being checked, so its password does
    /// not matter. With `account_wide`, it must also fit the account's
    /// guessing budget (`budget.rs`); `Ok(true)` means it took a token.
    /// Every `Ok` is followed by one [`Chat::end_attempt`].
    fn start_attempt(
        &mut self,
        user: &str,
        ip: IpAddr,
        account_wide: bool,
        now: Clock,
    ) -> Result<bool, Vec<u8>> {
        if let Some(locked) = self.lock_message(user, ip, now) {
            return Err(locked);
        }
        let max = self.settings.max_login_failures;
        let key = self.lock_key(user, ip);
        let group = key.1;
        let attempts = self
            .failures
            .entry(key)
            .or_insert_with(|| Failures::new(now.mono));
        if attempts.count.saturating_add(attempts.in_flight) >= max {
            return Err(locked_reply(self.settings.block_time.as_secs()));
        }
        attempts.in_flight += 1;
        let charged = if account_wide {
            let trusted = self
                .accounts
                .get(user)
                .is_some_and(|a| a.trusted.contains(group));
            match self.budgets.charge(user, trusted, now.mono) {
                Ok(charged) => charged,
                Err(secs) => {
                    self.end_attempt(user, ip);
                    return Err(locked_reply(secs));
                }
            }
        } else {
            false
        };
        Ok(charged)
    }

    /// A check counted by [`Chat::start_attempt`] is back (or never ran).
    /// A record left with nothing in it is dropped here: no timer would
    /// (only failures set one), and names are the attacker's to choose.
    fn end_attempt(&mut self, user: &str, ip: IpAddr) {
        let key = self.lock_key(user, ip);
        if let Some(f) = self.failures.get_mut(&key) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if f.in_flight == 0 && f.count == 0 {
                self.failures.remove(&key);
            }
        }
    }

    /// Counts the stored hashes by their parameters and picks the dummy.
    pub(super) fn count_stored_hashes(&mut self) {
        self.hash_params.clear();
        for a in self.accounts.values() {
            if let Some(p) = auth::stand_in(&a.hash) {
                *self.hash_params.entry(p).or_default() += 1;
            }
        }
        self.pick_dummy();
    }

    /// Records that a stored hash changed from `old` (none for a new
    /// account) to `new`, and picks the dummy again.
    pub(super) fn hash_changed(&mut self, old: Option<&str>, new: &str) {
        if let Some(p) = old.and_then(auth::stand_in) {
            if let Some(n) = self.hash_params.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.hash_params.remove(&p);
                }
            }
        }
        if let Some(p) = auth::stand_in(new) {
            *self.hash_params.entry(p).or_default() += 1;
        }
        self.pick_dummy();
    }

    /// The dummy hash takes the parameters most stored hashes use, so an
    /// unknown name costs what most known ones cost; the current ones on a
    /// tie or when there are no accounts.
    fn pick_dummy(&mut self) {
        let current = self.hash_params.get(&self.current_params).copied();
        let most = self
            .hash_params
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .filter(|(_, n)| current.is_none_or(|c| **n > c))
            .map(|(p, _)| p.clone());
        self.dummy_hash = most.unwrap_or_else(|| self.current_params.clone());
    }

    /// `- LOCKED ...` if `user` is locked out from `ip` now; forgets a
    /// record whose time has passed and that has nothing in flight.
    fn lock_message(&mut self, user: &str, ip: IpAddr, now: Clock) -> Option<Vec<u8>> {
        let key = self.lock_key(user, ip);
        let f = self.failures.get(&key)?;
        if f.forget_at <= now.mono && f.in_flight == 0 {
            self.failures.remove(&key);
            return None;
        }
        let until = f.locked_until.filter(|u| *u > now.mono)?;
        Some(locked_reply(
            until.duration_since(now.mono).as_secs_f64().ceil() as u64,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_login(
        &mut self,
        caller: Option<&Caller>,
        user: String,
        known: bool,
        ip: IpAddr,
        charged: bool,
        result: WorkResult,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        self.end_attempt(&user, ip);
        let (matched, upgraded) = match result {
            // Not checked at all: no guess was made, nothing to count.
            WorkResult::Hash(HashOutcome::Busy) => {
                if charged {
                    self.budgets.refund(&user, now.mono);
                }
                self.counters.logins_busy += 1;
                return Step::Reply(busy());
            }
            WorkResult::Hash(HashOutcome::Verified(matched)) => (matched, None),
            WorkResult::Hash(HashOutcome::Upgraded(hash)) => (true, Some(hash)),
            result => {
                log::error!("login: unexpected result {result:?}");
                self.record_failure(user, known, ip, now, fx);
                return Step::Reply(err(ErrorCode::Internal, "internal error"));
            }
        };
        // A lock that began while this check was in flight holds whatever
        // the password: the right one and a wrong one get the same answer
        // and are counted the same (a longer lock, no token back), so
        // nothing checked while locked tells them apart. (Attempts count
        // when they start, so this is a second line of defence.)
        if let Some(locked) = self.lock_message(&user, ip, now) {
            self.counters.logins_locked += 1;
            self.record_failure(user, known, ip, now, fx);
            return Step::Reply(locked);
        }
        if !(known && matched) {
            self.counters.logins_failed += 1;
            // Counted even if the client hung up before the answer.
            self.record_failure(user, known, ip, now, fx);
            return Step::Reply(err(ErrorCode::AuthFail, "wrong username or password"));
        }
        self.forget_failures(&user, ip);
        self.tell(
            None,
            Bus::LoginOk {
                user: user.clone(),
                ip,
            },
        );
        if charged {
            self.budgets.refund(&user, now.mono);
        }
        // Only the right password learns of a ban, so it tells a guesser
        // nothing; the owner is told why.
        if self.accounts.get(user.as_str()).is_some_and(|a| a.banned) {
            self.counters.logins_banned += 1;
            return Step::Reply(err(
                ErrorCode::Banned,
                "this account is banned by the server's operator",
            ));
        }
        // The owner logs in from here: exempt from the account-wide budget.
        self.trust(&user, ip);
        // Unless a `passwd` replaced the hash meanwhile (it is at the
        // current cost then): the upgrade must not bring the old one back.
        let outdated = self
            .accounts
            .get(user.as_str())
            .is_some_and(|a| auth::stand_in(&a.hash).is_some_and(|p| p != self.current_params));
        if let (Some(hash), true) = (upgraded, outdated) {
            self.set_hash(&user, hash.clone());
            self.tell(
                None,
                Bus::Hash {
                    user: user.clone(),
                    hash: hash.clone(),
                },
            );
            fx.background.push(StoreRequest::SetPasswordHash {
                user: user.clone(),
                hash,
            });
        }
        let Some(caller) = caller else {
            return Step::Done;
        };
        self.counters.logins_ok += 1;
        log::info!(
            "session {}: {user} logged in from {}",
            caller.session.id,
            caller.ip
        );
        self.enter(caller, &user, now, fx);
        self.welcome_step(user)
    }

    /// Replaces `user`'s password hash in memory. A re-hash at login is
    /// written in the background (a crash before that write keeps the old
    /// hash, which still verifies the same password); a `passwd` only gets
    /// here once its write has committed.
    pub(super) fn set_hash(&mut self, user: &str, hash: String) {
        let Some(account) = self.accounts.get_mut(user) else {
            return;
        };
        let old = std::mem::replace(&mut account.hash, hash.into_boxed_str());
        let new = account.hash.clone();
        self.hash_changed(Some(&old), &new);
    }

    /// `passwd <old> <new>`: the new password follows `register`'s rules;
    /// the old one is checked like a login (it counts against the same
    /// lockout, so a session left open is no way to guess the password).
    pub(super) fn passwd(
        &mut self,
        caller: &Caller,
        user: String,
        old: String,
        new: String,
        now: Clock,
    ) -> Step {
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&new.len()) {
            return Step::Reply(password_length());
        }
        let Some(hash) = self.accounts.get(user.as_str()).map(|a| a.hash.to_string()) else {
            return Step::Reply(err(ErrorCode::Internal, "internal error"));
        };
        // Logged in from here, so the account-wide budget does not apply.
        if let Err(locked) = self.start_attempt(&user, caller.ip, false, now) {
            return Step::Reply(locked);
        }
        Step::Wait(Job {
            cont: Cont::PasswdChecked {
                user,
                ip: caller.ip,
                new,
            },
            work: Work::Hash(HashWork::Verify {
                hash,
                password: old,
                upgrade: None,
            }),
        })
    }

    pub(super) fn passwd_checked(
        &mut self,
        user: String,
        ip: IpAddr,
        new: String,
        result: WorkResult,
        now: Clock,
        fx: &mut Effects,
    ) -> Step {
        self.end_attempt(&user, ip);
        if matches!(result, WorkResult::Hash(HashOutcome::Busy)) {
            return Step::Reply(busy());
        }
        let matched = matches!(
            result,
            WorkResult::Hash(HashOutcome::Verified(true) | HashOutcome::Upgraded(_))
        );
        if let Some(locked) = self.lock_message(&user, ip, now) {
            self.record_failure(user, true, ip, now, fx);
            return Step::Reply(locked);
        }
        if !matched {
            self.record_failure(user, true, ip, now, fx);
            return Step::Reply(err(ErrorCode::AuthFail, "wrong password"));
        }
        self.forget_failures(&user, ip);
        Step::Wait(Job {
            cont: Cont::PasswdHashed { user },
            work: Work::Hash(HashWork::Hash {
                password: new,
                cost: self.settings.hash_cost,
            }),
        })
    }

    pub(super) fn passwd_hashed(&mut self, user: String, result: WorkResult) -> Step {
        if matches!(result, WorkResult::Hash(HashOutcome::Busy)) {
            return Step::Reply(busy());
        }
        let WorkResult::Hash(HashOutcome::Hashed(Ok(hash))) = result else {
            return Step::Reply(err(
                ErrorCode::Internal,
                "password not changed; try again later",
            ));
        };
        Step::Wait(Job {
            work: Work::Store(StoreRequest::SetPasswordHash {
                user: user.clone(),
                hash: hash.clone(),
            }),
            cont: Cont::PasswdStored { user, hash },
        })
    }

    pub(super) fn passwd_stored(
        &mut self,
        caller: Option<&Caller>,
        user: String,
        hash: String,
        result: WorkResult,
        fx: &mut Effects,
    ) -> Step {
        let WorkResult::Store(Ok(_)) = result else {
            return Step::Reply(write_failed(&result, "password not changed; try again"));
        };
        self.set_hash(&user, hash.clone());
        self.tell(
            None,
            Bus::Hash {
                user: user.clone(),
                hash,
            },
        );
        // Any other session of this user hears of it.
        if let Some(&session) = self.online.get(user.as_str()) {
            if caller.map(|c| c.session) != Some(session) {
                fx.deliveries.push(Delivery {
                    to: session,
                    line: event("notice your password was changed").into(),
                    stored: None,
                });
            }
        }
        Step::Reply(ok("password changed"))
    }

    /// A successful login resets the count; the record stays only while
    /// other verifications for it are in flight.
    pub(super) fn forget_failures(&mut self, user: &str, ip: IpAddr) {
        let key = self.lock_key(user, ip);
        match self.failures.get_mut(&key) {
            Some(f) if f.in_flight > 0 => {
                f.count = 0;
                f.locked_until = None;
            }
            Some(_) => {
                self.failures.remove(&key);
            }
            None => {}
        }
    }

    fn record_failure(
        &mut self,
        user: String,
        known: bool,
        ip: IpAddr,
        now: Clock,
        fx: &mut Effects,
    ) {
        // Every node counts it, so moving to another node resets nothing.
        self.tell(
            None,
            Bus::LoginFailed {
                user: user.clone(),
                ip,
            },
        );
        self.count_failure(user, known, ip, now, fx);
    }

    /// A failed login on another node: counted here as if it were ours,
    /// its guess taken from the account's budget here too.
    pub(super) fn remote_failure(
        &mut self,
        user: String,
        ip: IpAddr,
        now: Clock,
        fx: &mut Effects,
    ) {
        let group = AddrGroup::of(ip, self.settings.ipv6_prefix);
        let trusted = self
            .accounts
            .get(user.as_str())
            .is_some_and(|a| a.trusted.contains(group));
        let _ = self.budgets.charge(&user, trusted, now.mono);
        let known = self.accounts.contains_key(user.as_str());
        self.count_failure(user, known, ip, now, fx);
    }

    fn count_failure(
        &mut self,
        user: String,
        known: bool,
        ip: IpAddr,
        now: Clock,
        fx: &mut Effects,
    ) {
        // A name that is not an account may be a password typed into the
        // user field: it never reaches the log.
        if known {
            log::info!("failed login for {user} from {ip}");
        } else {
            log::info!("failed login for an unknown user from {ip}");
        }
        let block = self.settings.block_time;
        let key = (user, AddrGroup::of(ip, self.settings.ipv6_prefix));
        let f = self
            .failures
            .entry(key.clone())
            .or_insert_with(|| Failures::new(now.mono));
        f.count += 1;
        f.forget_at = now.mono + block;
        // Every failure at or past the limit (re)locks.
        if f.count >= self.settings.max_login_failures {
            f.locked_until = Some(now.mono + block);
            // A name that is not an account may be a password typed into
            // the user field: it never reaches the log.
            let who = if known {
                key.0.as_str()
            } else {
                "an unknown user"
            };
            log::warn!(
                "login locked for {who} from {} after {} failures",
                key.1,
                f.count
            );
        }
        fx.lock_timers.push((f.forget_at, key));
    }

    /// Drops a lockout record whose time has passed (timer callback).
    pub fn expire_lock(&mut self, key: &LockKey, now: Instant) {
        if self
            .failures
            .get(key)
            .is_some_and(|f| f.forget_at <= now && f.in_flight == 0)
        {
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
        self.create_account(user, password)
    }

    /// A new account, once registration is allowed (by the setting, or by
    /// the operator's `natterctl user add`).
    pub(super) fn create_account(&mut self, user: String, password: String) -> Step {
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Step::Reply(password_length());
        }
        if self.accounts.contains_key(user.as_str()) || !self.registering.insert(user.clone()) {
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
        if matches!(result, WorkResult::Hash(HashOutcome::Busy)) {
            self.registering.remove(&user);
            return Step::Reply(busy());
        }
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
        now: Clock,
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
        self.hash_changed(None, &hash);
        self.tell(
            None,
            Bus::Account {
                user: user.clone(),
                id: slot,
                hash: hash.clone(),
            },
        );
        self.accounts
            .insert(Name::from(user.as_str()), Account::new(hash, slot));
        match caller {
            Some(caller) if caller.user.is_none() => {
                self.trust(&user, caller.ip);
                self.counters.registrations += 1;
                log::info!(
                    "session {}: {user} registered from {}",
                    caller.session.id,
                    caller.ip
                );
                self.enter(caller, &user, now, fx);
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

/// The answer to a login while locked, the same whatever the password.
fn locked_reply(secs: u64) -> Vec<u8> {
    err(
        ErrorCode::Locked,
        &format!("too many failed logins; try again in {secs} seconds"),
    )
}

/// The refusal of a new password of the wrong length.
pub(super) fn password_length() -> Vec<u8> {
    err(
        ErrorCode::BadArg,
        &format!("a password is {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes"),
    )
}

/// The answer when the hashing queue had no room: nothing was checked.
fn busy() -> Vec<u8> {
    err(ErrorCode::Busy, "try again in a moment")
}
