//! What the operator changes from `natterctl` (see `crate::admin`): bans,
//! registration, accounts and passwords, and the account list. Changes take effect at once in
//! memory; a ban is also written, so it outlasts a restart.

use crate::auth::HashWork;
use crate::cluster::Bus;
use crate::config::Registration;
use crate::protocol::{err, ByeReason, ErrorCode, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::store::StoreRequest;

use super::job::{Cont, Effects, Job, Step, Work};
use super::login::password_length;
use super::Chat;

/// One account as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// Canonical name.
    pub name: String,
    /// Logged in now.
    pub online: bool,
    /// When its last session ended (Unix seconds).
    pub last_seen: Option<i64>,
    /// Messages in its inbox.
    pub unread: u32,
    /// Banned by the operator.
    pub banned: bool,
}

impl Chat {
    /// Bans `user` (`on`) or lifts the ban: from now on their logins are
    /// refused with `- BANNED`, and their open session ends with
    /// `* bye banned`. Returns the write that keeps it, or `None` if there
    /// is no such user.
    pub fn set_banned(&mut self, user: &str, on: bool, fx: &mut Effects) -> Option<StoreRequest> {
        let write = self.ban_here(user, on, fx)?;
        self.tell(
            None,
            Bus::Banned {
                user: user.to_string(),
                on,
            },
        );
        Some(write)
    }

    /// [`Chat::set_banned`] on this node only.
    pub(super) fn ban_here(
        &mut self,
        user: &str,
        on: bool,
        fx: &mut Effects,
    ) -> Option<StoreRequest> {
        let account = self.accounts.get_mut(user)?;
        account.banned = on;
        if on {
            if let Some(session) = self.online.get(user) {
                fx.closes.push((*session, ByeReason::Banned));
            }
        }
        Some(StoreRequest::SetBanned {
            user: user.to_string(),
            on,
        })
    }

    /// Deletes `user`: gone from memory at once (a login fails as for any
    /// unknown name, their open session ends with `* bye kicked`, nobody's
    /// block list names them). Returns the write that deletes the account,
    /// its inbox and blocks and detaches its history, or `None` if there is
    /// no such user.
    pub fn delete_user(&mut self, user: &str, fx: &mut Effects) -> Option<StoreRequest> {
        let write = self.delete_here(user, fx)?;
        self.tell(
            None,
            Bus::Deleted {
                user: user.to_string(),
            },
        );
        Some(write)
    }

    /// [`Chat::delete_user`] on this node only.
    pub(super) fn delete_here(&mut self, user: &str, fx: &mut Effects) -> Option<StoreRequest> {
        let gone = self.accounts.remove(user)?;
        if let Some(session) = self.online.remove(user) {
            fx.closes.push((session, ByeReason::Kicked));
        }
        for blocker in self.blocked_by.remove(user).unwrap_or_default() {
            if let Some(account) = self.accounts.get_mut(blocker.as_str()) {
                account.blocks.remove(user);
            }
        }
        for blocked in gone.blocks.iter() {
            if let Some(blockers) = self.blocked_by.get_mut(blocked) {
                blockers.remove(user);
                if blockers.is_empty() {
                    self.blocked_by.remove(blocked);
                }
            }
        }
        Some(StoreRequest::DeleteUser {
            user: user.to_string(),
        })
    }

    /// `natterctl user add`: an account made as `register` makes one, even
    /// while registration is closed.
    pub fn add_user(&mut self, user: String, password: String) -> Step {
        self.create_account(user, password)
    }

    /// `natterctl user passwd`: a new password, no old one asked for. The
    /// user's open session is told, as after a `passwd` elsewhere.
    pub fn set_password(&mut self, user: String, password: String) -> Step {
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
            return Step::Reply(password_length());
        }
        if !self.accounts.contains_key(user.as_str()) {
            return Step::Reply(err(ErrorCode::NoUser, &format!("no such user {user}")));
        }
        Step::Wait(Job {
            cont: Cont::PasswdHashed { user },
            work: Work::Hash(HashWork::Hash {
                password,
                cost: self.settings.hash_cost,
            }),
        })
    }

    /// Changes `--max-inbox` (a reload).
    pub fn set_max_inbox(&mut self, max_inbox: u32) {
        self.settings.max_inbox = max_inbox;
    }

    /// Opens or closes registration (until the next restart).
    pub fn set_registration(&mut self, registration: Registration) {
        self.settings.registration = registration;
    }

    /// Accounts whose name contains `pattern`, by name.
    pub fn users(&self, pattern: Option<&str>) -> Vec<UserSummary> {
        let mut users: Vec<UserSummary> = self
            .accounts
            .iter()
            .filter(|(name, _)| pattern.is_none_or(|p| name.contains(p)))
            .map(|(name, a)| UserSummary {
                name: name.to_string(),
                online: self.is_online(name),
                last_seen: a.last_seen,
                unread: a.unread,
                banned: a.banned,
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }
}
