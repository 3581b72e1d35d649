//! Password hashing (Argon2id, PHC strings) and the small thread pool that
//! does it off the loop thread. Hashing is deliberately slow, so it must
//! never run on the loop: a login would stall every other session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use argon2::password_hash::phc::{Output, Salt};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use crate::config::HashCost;

/// Argon2 parameters for a cost level.
fn params(cost: HashCost) -> Result<Params, String> {
    match cost {
        // The smallest memory Argon2 allows: fast enough for tests and
        // benchmarks that register thousands of users.
        HashCost::Low => Params::new(8, 1, 1, None).map_err(|e| e.to_string()),
        HashCost::Normal => Ok(Params::default()),
    }
}

/// Hashes a new password at `cost` into a PHC string (salt and parameters included).
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params(cost)?);
    // A random 16-byte salt from the OS (argon2's "getrandom" feature).
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string. The parameters come from the
/// string, so hashes made at any cost verify. A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A stand-in for `hash` that costs exactly as much to verify: the same
/// algorithm, version, parameters and output length, with a fixed salt and
/// an all-zero output that no password produces in practice. Hashes with the
/// same parameters have the same stand-in, so it also serves as their
/// parameters' name. `None` for a string that is not a PHC hash.
///
/// Building one costs no hashing: verifying a password against it runs the
/// same Argon2 computation as against a real hash, then fails the compare.
pub fn stand_in(hash: &str) -> Option<String> {
    let mut parsed = PasswordHash::new(hash).ok()?;
    let len = parsed.hash.as_ref()?.len();
    parsed.salt = Some(Salt::new(b"natter-stand-in!").ok()?);
    parsed.hash = Some(Output::new(&vec![0; len]).ok()?);
    Some(parsed.to_string())
}

/// A hashing job.
#[derive(Debug)]
pub enum HashWork {
    /// Check `password` against `hash`; if it matches and `upgrade` is set,
    /// hash it again at that cost (its parameters are out of date).
    Verify {
        hash: String,
        password: String,
        upgrade: Option<HashCost>,
    },
    /// Hash a new password at `cost`.
    Hash { password: String, cost: HashCost },
}

/// Its result.
#[derive(Debug)]
pub enum HashOutcome {
    /// Whether the password matched.
    Verified(bool),
    /// It matched, and here it is hashed at the cost asked for.
    Upgraded(String),
    /// A new hash, or why there is none.
    Hashed(Result<String, String>),
    /// Not done: the queue for the hashing threads was full (never comes
    /// from a thread; see `hashqueue.rs`).
    Busy,
}

fn run(work: HashWork) -> HashOutcome {
    match work {
        HashWork::Verify {
            hash,
            password,
            upgrade,
        } => {
            let matched = verify_password(&hash, &password);
            match upgrade
                .filter(|_| matched)
                .map(|cost| hash_password(&password, cost))
            {
                Some(Ok(new)) => HashOutcome::Upgraded(new),
                Some(Err(e)) => {
                    // The login still succeeds; the next one tries again.
                    log::error!("could not re-hash a password: {e}");
                    HashOutcome::Verified(true)
                }
                None => HashOutcome::Verified(matched),
            }
        }
        HashWork::Hash { password, cost } => HashOutcome::Hashed(hash_password(&password, cost)),
    }
}

/// A fixed pool of hashing threads fed by one queue.
pub struct HasherPool<T> {
    tx: Option<Sender<(HashWork, T)>>,
    threads: Vec<JoinHandle<()>>,
    /// Set at shutdown: workers drop queued jobs instead of hashing them,
    /// so hundreds of queued logins cannot hold up the exit.
    cancelled: Arc<AtomicBool>,
}

impl<T: Send + 'static> HasherPool<T> {
    /// Starts `threads` workers; `on_done` runs on a worker with each result.
    pub fn spawn<F>(threads: usize, on_done: F) -> std::io::Result<Self>
    where
        F: Fn(T, HashOutcome) + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel::<(HashWork, T)>();
        let rx = Arc::new(Mutex::new(rx));
        let on_done = Arc::new(on_done);
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx: Arc<Mutex<Receiver<(HashWork, T)>>> = Arc::clone(&rx);
            let on_done = Arc::clone(&on_done);
            let cancelled = Arc::clone(&cancelled);
            handles.push(
                thread::Builder::new()
                    .name(format!("natter-hash-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while taking a job, never while hashing.
                        let next = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok((work, tag)) = next else { return };
                        if cancelled.load(Ordering::Relaxed) {
                            return;
                        }
                        on_done(tag, run(work));
                    })?,
            );
        }
        Ok(HasherPool {
            tx: Some(tx),
            threads: handles,
            cancelled,
        })
    }
}

impl<T> HasherPool<T> {
    /// Queues a job; gives it back if the pool is gone.
    pub fn submit(&self, work: HashWork, tag: T) -> Result<(), (HashWork, T)> {
        match &self.tx {
            Some(tx) => tx.send((work, tag)).map_err(|e| e.0),
            None => Err((work, tag)),
        }
    }

    /// Drops queued jobs, lets the ones being hashed finish, and joins the
    /// workers.
    pub fn close(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T> Drop for HasherPool<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password("correct horse", HashCost::Low).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
    }

    #[test]
    fn hashes_of_either_cost_verify() {
        let normal = hash_password("password1", HashCost::Normal).unwrap();
        assert!(verify_password(&normal, "password1"));
        assert!(normal.contains("m=19456"));
    }

    /// Users registered before the move to argon2 0.6 keep their passwords:
    /// these PHC strings were made by this module on argon2 0.5.
    #[test]
    fn hashes_made_by_argon2_0_5_still_verify() {
        let low = "$argon2id$v=19$m=8,t=1,p=1$U22M/EOxmatWzRd6H7AsTA$jjFn5A4iTMZJccYLObMWcheel8GTIBbpPXVbjedaZtk";
        let normal = "$argon2id$v=19$m=19456,t=2,p=1$4EORy737mdVbPRU/aUo3cQ$iCxchf5hlsdPDrAMmpbt3ZiQ0QqO19QAB/bMstLzhp4";
        for h in [low, normal] {
            assert!(verify_password(h, "correct horse"));
            assert!(!verify_password(h, "correct horsE"));
        }
    }

    #[test]
    fn a_stand_in_costs_what_its_hash_costs_and_matches_nothing() {
        let a = hash_password("one password", HashCost::Low).unwrap();
        let b = hash_password("another", HashCost::Low).unwrap();
        let normal = hash_password("one password", HashCost::Normal).unwrap();
        let stand_in = stand_in(&a).unwrap();
        // Same parameters, same stand-in: it names them.
        assert_eq!(stand_in, super::stand_in(&b).unwrap());
        assert_ne!(stand_in, super::stand_in(&normal).unwrap());
        assert!(
            stand_in.starts_with("$argon2id$v=19$m=8,t=1,p=1$"),
            "{stand_in}"
        );
        assert!(super::stand_in(&normal)
            .unwrap()
            .contains("m=19456,t=2,p=1"));
        assert!(!verify_password(&stand_in, "one password"));
        assert_eq!(super::stand_in("not a hash"), None);
    }

    #[test]
    fn a_matching_password_with_old_parameters_comes_back_rehashed() {
        let low = hash_password("correct horse", HashCost::Low).unwrap();
        let work = |password: &str| HashWork::Verify {
            hash: low.clone(),
            password: password.into(),
            upgrade: Some(HashCost::Normal),
        };
        let HashOutcome::Upgraded(new) = run(work("correct horse")) else {
            panic!("no new hash")
        };
        assert!(new.contains("m=19456") && verify_password(&new, "correct horse"));
        assert!(matches!(run(work("wrong")), HashOutcome::Verified(false)));
    }

    #[test]
    fn a_malformed_hash_never_matches() {
        assert!(!verify_password("not a hash", "anything"));
        assert!(!verify_password("", ""));
    }
}
