//! The one error type of natter-bench: a message for the person running it.
//! A benchmark that cannot go on has nothing to recover; what matters is
//! saying why and, where the server's settings are the cause, which flag to
//! start natterd with.

use std::fmt;
use std::io;

use natter_proto::{ByeReason, ErrorCode};
use nix::errno::Errno;

/// Why a run stopped, worded for the person who started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError(pub String);

impl BenchError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        BenchError(msg.into())
    }

    /// The server answered `- <code> <text>` where the bench expected
    /// success. Codes that mean "the server is configured against a
    /// benchmark" get the flag that fixes them.
    pub fn refused(what: &str, code: &str, text: &str) -> Self {
        match ErrorCode::parse(code) {
            Some(ErrorCode::Closed) => BenchError::new(format!(
                "{what}: registration is closed (- {code}); start natterd with \
                 --registration open, or create the users with --users"
            )),
            Some(ErrorCode::AuthFail) => BenchError::new(format!(
                "{what}: the user exists with another password (- {code}); \
                 pick another --users-prefix or the --password it was made with"
            )),
            _ => BenchError::new(format!("{what}: - {code} {text}")),
        }
    }

    /// The server said `* bye <reason>`.
    pub fn bye(what: &str, reason: &str) -> Self {
        match ByeReason::parse(reason) {
            Some(ByeReason::Busy) => BenchError::new(format!(
                "{what}: natterd refused the connection (* bye {reason}): it holds too many \
                 connections; start it with --max-per-ip 0 (the default allows 64 per \
                 address) and --max-clients above the sessions this run opens"
            )),
            _ => BenchError::new(format!(
                "{what}: natterd closed the session (* bye {reason})"
            )),
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(Errno::EMFILE as i32) {
            return BenchError::new(format!(
                "{e}: raise the open-file limit (ulimit -n) or open fewer sessions"
            ));
        }
        BenchError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_settings_are_named_in_the_message() {
        assert!(BenchError::bye("connect", "busy")
            .0
            .contains("--max-per-ip 0"));
        assert!(BenchError::refused("login", "AUTHFAIL", "x")
            .0
            .contains("--users-prefix"));
        assert_eq!(
            BenchError::refused("send", "NOUSER", "no such user").0,
            "send: - NOUSER no such user"
        );
    }
}
