//! The guessing budget per account, across all addresses (issue 11, item
//! 2). The per-address lockout (`login.rs`) alone let an attacker with many
//! addresses guess without end; this bounds what all of them together may
//! try against one name, without letting them lock its owner out.
//!
//! Policy: every name has a bucket of `--account-guesses-per-hour` tokens
//! that refills at that many per hour. A password check for the name from
//! an address group it has never logged in from takes a token when it
//! starts (so concurrent attempts cannot overdraw it) and gives it back if
//! the password was right or the check never ran; with the bucket empty,
//! such attempts get `- LOCKED` unchecked. Address groups the owner has
//! logged in from (the last [`TRUSTED_PER_ACCOUNT`], kept in memory since
//! start) are exempt, so the owner still gets in from home while the
//! account is under attack. Unknown names have buckets too, so the answer
//! never tells which names exist.
//!
//! The bound: with a budget of B per hour, at most B + B×t wrong passwords
//! are checked for one name in any t hours from addresses it never logged
//! in from, however many addresses there are: at most 2B in any one hour
//! and about 24B a day (B = 10 by default: 20 in an hour, 250 a day).

use std::collections::HashMap;
use std::time::Instant;

use crate::addr::AddrGroup;

/// Address groups remembered per account as ones its owner logged in from:
/// home, work, phone, a few networks more.
pub const TRUSTED_PER_ACCOUNT: usize = 16;

/// One name's bucket.
#[derive(Clone, Debug)]
struct Bucket {
    /// Tokens left, up to the budget.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Budgets and trusted address groups, by name.
#[derive(Debug, Default)]
pub struct Budgets {
    /// Tokens per hour and bucket size (0: no account-wide budget).
    per_hour: u32,
    /// Buckets of names with recent attempts; a full one is forgotten.
    buckets: HashMap<String, Bucket>,
    /// Size of `buckets` after the last sweep of full ones: the next sweep
    /// waits until it has doubled, so sweeping costs O(1) per attempt.
    swept_at: usize,
}

/// The address groups an account's owner logged in from, oldest first: a
/// field of the account, not a table of their own (issue 16: a second
/// table keyed by name cost every account ~50 bytes). Exact-sized: most
/// hold one group, and a login from the newest changes nothing.
#[derive(Clone, Debug, Default)]
pub struct Trusted(Box<[AddrGroup]>);

impl Trusted {
    /// Whether the owner logged in from `group`.
    pub fn contains(&self, group: AddrGroup) -> bool {
        self.0.contains(&group)
    }

    /// The owner logged in from `group`: it becomes the newest, and the
    /// oldest goes past [`TRUSTED_PER_ACCOUNT`].
    pub fn add(&mut self, group: AddrGroup) {
        if self.0.last() == Some(&group) {
            return;
        }
        let mut kept: Vec<AddrGroup> = self.0.iter().copied().filter(|g| *g != group).collect();
        if kept.len() >= TRUSTED_PER_ACCOUNT {
            kept.remove(0);
        }
        kept.push(group);
        self.0 = kept.into_boxed_slice();
    }
}

impl Budgets {
    /// Budgets of `per_hour` guesses (0 turns them off).
    pub fn new(per_hour: u32) -> Self {
        Budgets {
            per_hour,
            ..Budgets::default()
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let cap = f64::from(self.per_hour);
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * cap / 3600.0).min(cap);
        bucket.at = now;
    }

    /// Charges a check for `name` as it starts: `Ok(true)` if a token was
    /// taken, `Ok(false)` if none was needed (it comes from a `trusted`
    /// group, or budgets are off), or the seconds until the next token.
    pub fn charge(&mut self, name: &str, trusted: bool, now: Instant) -> Result<bool, u64> {
        if self.per_hour == 0 || trusted {
            return Ok(false);
        }
        if self.buckets.len() > 2 * self.swept_at.max(512) {
            self.sweep(now);
        }
        let cap = f64::from(self.per_hour);
        let mut bucket = self.buckets.remove(name).unwrap_or(Bucket {
            tokens: cap,
            at: now,
        });
        self.refill(&mut bucket, now);
        let result = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(true)
        } else {
            let secs = (1.0 - bucket.tokens) * 3600.0 / cap;
            Err(secs.ceil() as u64)
        };
        self.buckets.insert(name.to_string(), bucket);
        result
    }

    /// Gives back a token taken for a check that did not count: the
    /// password was right, or it was never checked.
    pub fn refund(&mut self, name: &str, now: Instant) {
        let cap = f64::from(self.per_hour);
        if let Some(mut bucket) = self.buckets.remove(name) {
            self.refill(&mut bucket, now);
            bucket.tokens = (bucket.tokens + 1.0).min(cap);
            if bucket.tokens < cap {
                self.buckets.insert(name.to_string(), bucket);
            }
        }
    }

    /// Forgets buckets that have refilled: they say nothing a new one would not.
    fn sweep(&mut self, now: Instant) {
        let cap = f64::from(self.per_hour);
        let rate = cap / 3600.0;
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
        });
        self.swept_at = self.buckets.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(last: u8) -> AddrGroup {
        AddrGroup::of([192, 0, 2, last].into(), 64)
    }

    #[test]
    fn guesses_from_any_number_of_addresses_share_one_budget_that_refills() {
        let t0 = Instant::now();
        let mut b = Budgets::new(10);
        let charged = (0..40u8)
            .filter(|_| b.charge("alice", false, t0).is_ok())
            .count();
        assert_eq!(charged, 10);
        // One token every 6 minutes.
        assert_eq!(b.charge("alice", false, t0), Err(360));
        let later = t0 + Duration::from_secs(360);
        assert_eq!(b.charge("alice", false, later), Ok(true));
        assert!(b.charge("alice", false, later).is_err());
        // Other names are not affected.
        assert_eq!(b.charge("bob", false, later), Ok(true));
    }

    #[test]
    fn the_owners_addresses_are_exempt_and_right_passwords_cost_nothing() {
        let t0 = Instant::now();
        let mut b = Budgets::new(2);
        assert_eq!(b.charge("alice", false, t0), Ok(true));
        b.refund("alice", t0);
        assert_eq!(b.charge("alice", false, t0), Ok(true));
        assert_eq!(b.charge("alice", false, t0), Ok(true));
        assert!(b.charge("alice", false, t0).is_err());
        for _ in 0..5 {
            assert_eq!(b.charge("alice", true, t0), Ok(false));
        }
    }

    #[test]
    fn full_buckets_are_forgotten_and_zero_turns_budgets_off() {
        let t0 = Instant::now();
        let mut b = Budgets::new(10);
        for i in 0..2000 {
            let _ = b.charge(&format!("n{i}"), false, t0);
        }
        // An hour later they have refilled; the next sweep drops them.
        let later = t0 + Duration::from_secs(3600);
        for i in 0..200 {
            let _ = b.charge(&format!("m{i}"), false, later);
        }
        assert!(b.buckets.len() <= 200, "{} buckets kept", b.buckets.len());
        let mut off = Budgets::new(0);
        for _ in 0..100 {
            assert_eq!(off.charge("alice", false, t0), Ok(false));
        }
    }

    #[test]
    fn the_oldest_trusted_group_goes_first_and_a_repeat_login_renews_its_own() {
        let mut t = Trusted::default();
        for last in 0..TRUSTED_PER_ACCOUNT as u8 {
            t.add(group(last));
        }
        // Group 0 logs in again: now the newest, so group 1 is the oldest.
        t.add(group(0));
        t.add(group(0));
        t.add(group(200));
        assert!(t.contains(group(0)));
        assert!(!t.contains(group(1)));
        assert!(t.contains(group(2)));
        assert!(t.contains(group(200)));
        assert_eq!(t.0.len(), TRUSTED_PER_ACCOUNT);
    }
}
