//! The loop's counters and the throttle that keeps floods of refusals or
//! failed handshakes from becoming floods of log lines. Plain data: the
//! reactor counts, operators read the totals in the shutdown log.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::protocol::ByeReason;
use crate::session::Ending;

/// Counters for the log at shutdown (and for operators reading it).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Refused at --max-clients.
    pub refused_busy: u64,
    /// Refused at --max-per-ip.
    pub refused_per_ip: u64,
    /// Connections not logged in that made room for a newcomer
    /// (--max-unauthenticated, or --max-clients reached).
    pub displaced_unauthenticated: u64,
    /// Dropped for not reading their output.
    pub closed_slow: u64,
    /// Dropped because all sessions together held too much output.
    pub closed_budget: u64,
    /// Closed by the idle timeout.
    pub closed_idle: u64,
    /// Closed by the login timeout.
    pub closed_login_timeout: u64,
    /// Failed accept calls.
    pub accept_errors: u64,
    /// Sessions closed, by `Ending::label`.
    pub closed_by: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    /// The counters as one readable line (for the log at shutdown).
    pub fn summary(&self) -> String {
        let closed: Vec<String> = self
            .closed_by
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        format!(
            "connections accepted {}, refused busy {}, refused per address {}, \
             strangers displaced {}, accept errors {}; sessions closed: {}",
            self.accepted,
            self.refused_busy,
            self.refused_per_ip,
            self.displaced_unauthenticated,
            self.accept_errors,
            if closed.is_empty() {
                "none".to_string()
            } else {
                closed.join(", ")
            }
        )
    }

    /// Counts a session's end and logs it: a reader dropped as slow at
    /// warn, every other end at info, with user, address and duration.
    pub fn departure(&mut self, who: &Departing<'_>, ending: Ending, max_outbuf: usize) {
        *self.closed_by.entry(ending.label()).or_default() += 1;
        let Departing {
            id,
            ip,
            user,
            lasted,
        } = *who;
        let user = user.unwrap_or("not logged in");
        let secs = lasted.as_secs();
        match ending {
            Ending::Bye(ByeReason::Slow) => {
                self.closed_slow += 1;
                log::warn!(
                    "session {id} ({user} from {ip}): closing after {secs} s, output backlog passed {max_outbuf} bytes"
                );
            }
            Ending::Bye(ByeReason::Idle) => self.closed_idle += 1,
            Ending::Bye(ByeReason::Timeout) => self.closed_login_timeout += 1,
            _ => {}
        }
        if !matches!(ending, Ending::Bye(ByeReason::Slow)) {
            log::info!(
                "session {id} ({user} from {ip}): closed after {secs} s: {}",
                ending.describe()
            );
        }
    }
}

/// Who a departing session was, for the log.
#[derive(Clone, Copy, Debug)]
pub struct Departing<'a> {
    /// Session id.
    pub id: u64,
    /// Peer address.
    pub ip: IpAddr,
    /// The user, if logged in.
    pub user: Option<&'a str>,
    /// How long it was connected.
    pub lasted: std::time::Duration,
}

/// Keeps a flood of one kind of event from becoming a flood of log lines
/// written synchronously from the loop: at most one line a second, which
/// says how many were skipped. The stats counters still count every one.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// No line before this.
    quiet_until: Option<Instant>,
    /// Lines skipped since the last one written.
    skipped: u64,
}

impl LogThrottle {
    /// Whether to log now; if so, the note to append about lines skipped
    /// before (empty if none).
    pub fn allow(&mut self, now: Instant) -> Option<String> {
        if self.quiet_until.is_some_and(|t| now < t) {
            self.skipped += 1;
            return None;
        }
        self.quiet_until = Some(now + Duration::from_secs(1));
        Some(match std::mem::take(&mut self.skipped) {
            0 => String::new(),
            skipped => format!(" ({skipped} more like it not logged)"),
        })
    }
}
