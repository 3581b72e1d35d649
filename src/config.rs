//! The server's settings: every limit and timer from the contract's flags,
//! with its default and the reason for it. `main` parses them with clap;
//! tests and benches build them with `Config::default()` and struct update.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;
use clap::{Parser, ValueEnum};

/// Whether `register` is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    Open,
    Closed,
}

/// Password-hashing cost for new hashes. The parameters travel inside each
/// PHC hash string, so a hash made at one cost verifies under the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HashCost {
    /// Minimal Argon2id parameters: for tests and benchmarks only.
    Low,
    /// Argon2id with the RustCrypto defaults (19 MiB, 2 passes).
    Normal,
}

/// The admin socket's name inside the data directory (natterctl looks for
/// it there too).
pub const ADMIN_SOCKET_FILE: &str = "natterd.sock";

/// natterd: a small, fast chat server speaking the natter line protocol v1.
#[derive(Clone, Debug, Parser)]
#[command(name = "natterd", version, about, long_about = None)]
pub struct Config {
    /// TCP port to listen on; 0 picks a free port.
    #[arg(default_value_t = 4000)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Directory holding the database; created if missing.
    #[arg(long, default_value = "natter-data")]
    pub data: PathBuf,

    /// Import `<user> <password>` lines from this file at start (existing users are kept as they are).
    #[arg(long)]
    pub users: Option<PathBuf>,

    /// Connections beyond this many get `* bye busy`. Each session costs a
    /// few KiB plus its buffers, so the default fits comfortably in memory.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,

    /// Connections one IP address may hold at once (0: no limit). Enough for
    /// an office behind one NAT address; far too few for one host to take
    /// every slot of --max-clients.
    #[arg(long, default_value_t = 64)]
    pub max_per_ip: usize,

    /// IPv6 addresses sharing this many leading bits count as one address
    /// for --max-per-ip, lockouts and hashing shares (IPv4: each address
    /// on its own). 64 is the subnet one customer or host is usually given.
    #[arg(long, default_value_t = crate::addr::DEFAULT_IPV6_PREFIX)]
    pub ipv6_prefix: u8,

    /// Connections that have not logged in yet, at most. Past it (or once
    /// --max-clients are connected) a newcomer takes the place of the
    /// oldest such connection, which gets `* bye busy`: connections that
    /// never log in cannot keep logged-in users or new logins out. Far
    /// more than the logins a busy server sees within a login timeout.
    #[arg(long, default_value_t = 1000)]
    pub max_unauthenticated: usize,

    /// Longest accepted line in bytes, LF included. Long enough for any chat
    /// message a person types; short enough that framing memory stays small.
    #[arg(long, default_value_t = 4096)]
    pub max_line: usize,

    /// A session whose unsent output passes this many bytes is closed (`slow`).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_outbuf: usize,

    /// Seconds a logged-in session may stay silent before `* bye idle`.
    #[arg(long, default_value_t = 1800)]
    pub idle_timeout: u64,

    /// Seconds a connection has to log in before `* bye timeout`.
    #[arg(long, default_value_t = 60)]
    pub login_timeout: u64,

    /// Commands per second each session may send; beyond it its commands
    /// wait (unread, so TCP slows the sender), never refused. A list
    /// broadcast costs one per name. 0 turns rate limiting off.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Commands a session may send at once before the rate applies.
    #[arg(long, default_value_t = 20)]
    pub burst: u32,

    /// Unsent output all sessions together may hold, in bytes; past it the
    /// sessions holding the most are dropped (`slow`) until it fits again.
    /// --max-outbuf bounds one session, this bounds them all (Redis's
    /// maxmemory-clients). 0: an eighth of the machine's memory.
    #[arg(long, default_value_t = 0)]
    pub max_output_total: usize,

    /// Unread messages one user's inbox may hold (0: no limit); a `send` to
    /// a full inbox gets `- FULL`. Bounds what one sender can make the disk
    /// hold for someone who never logs in: at the default, about 40 MiB per
    /// user at the longest lines.
    #[arg(long, default_value_t = 10_000)]
    pub max_inbox: u32,

    /// Consecutive failed logins (same user, same address) before a lockout.
    #[arg(long, default_value_t = 3)]
    pub max_login_failures: u32,

    /// Wrong passwords checked per hour for one account from addresses its
    /// owner never logged in from, however many addresses try (0: no such
    /// budget). Also the burst: at most N + N×hours in any period. Past it,
    /// such logins get `- LOCKED` unchecked; the owner's own addresses are
    /// exempt, so an attack cannot lock the owner out.
    #[arg(long, default_value_t = 10)]
    pub account_guesses_per_hour: u32,

    /// Seconds a lockout lasts.
    #[arg(long, default_value_t = 60)]
    pub block_time: u64,

    /// Whether `register` is accepted.
    #[arg(long, value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Password-hashing cost for new hashes (`low` is for tests and benchmarks).
    #[arg(long, value_enum, default_value_t = HashCost::Normal)]
    pub hash_cost: HashCost,

    /// PEM certificate chain for TLS (enables the TLS listener; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Generate (once, kept in the data directory) a self-signed certificate
    /// for these comma-separated host names and serve TLS with it.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_self_signed: Option<Vec<String>>,

    /// TCP port of the TLS listener; 0 picks a free port.
    #[arg(long, default_value_t = 4443)]
    pub tls_port: u16,

    /// Serve TLS only: no plaintext listener.
    #[arg(long)]
    pub no_plaintext: bool,

    /// Days direct messages are kept once read (0: forever). Older ones are
    /// deleted by the store thread a thousand at a time, between batches;
    /// unread messages are never deleted (--max-inbox bounds those).
    #[arg(long, default_value_t = 0)]
    pub history_retention_days: u32,

    /// Log lines as text for people, or as JSON objects (one per line) for
    /// log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// natterctl's Unix socket (mode 0600); default `<data>/natterd.sock`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,

    /// Serve no admin socket (natterctl cannot reach this server).
    #[arg(long)]
    pub no_admin_socket: bool,

    /// Fault injection for tests: while this file exists, every store batch
    /// fails as a full disk would make it fail.
    #[arg(long, hide = true)]
    pub store_fault_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        // The flag defaults are the single source of truth.
        Config::parse_from(["natterd"])
    }
}

impl Config {
    /// `--idle-timeout` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }

    /// `--max-output-total`, with 0 resolved to an eighth of physical memory
    /// (at least 64 MiB).
    pub fn output_budget(&self) -> usize {
        if self.max_output_total > 0 {
            return self.max_output_total;
        }
        // SAFETY: sysconf only reads system configuration.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let memory = usize::try_from(pages.max(0))
            .unwrap_or(0)
            .saturating_mul(usize::try_from(page.max(0)).unwrap_or(0));
        (memory / 8).max(64 << 20)
    }

    /// `--history-retention-days` as a duration; `None` keeps messages forever.
    pub fn history_retention(&self) -> Option<Duration> {
        (self.history_retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.history_retention_days) * 86_400))
    }

    /// `--login-timeout` as a duration.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout)
    }

    /// Whether a TLS listener is configured.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() || self.tls_self_signed.is_some()
    }

    /// `--block-time` as a duration.
    pub fn block_time(&self) -> Duration {
        Duration::from_secs(self.block_time)
    }
}

impl Config {
    /// Where the admin socket goes, unless it is turned off.
    pub fn admin_socket_path(&self) -> Option<PathBuf> {
        if self.no_admin_socket {
            return None;
        }
        Some(
            self.admin_socket
                .clone()
                .unwrap_or_else(|| self.data.join(ADMIN_SOCKET_FILE)),
        )
    }

    /// Rejects settings that cannot work, with a message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err("--rate must be 0 (unlimited) or a positive number".into());
        }
        if self.max_line < 16 {
            return Err("--max-line must be at least 16 bytes".into());
        }
        if self.max_clients == 0 {
            return Err("--max-clients must be at least 1".into());
        }
        if self.max_outbuf < self.max_line {
            return Err("--max-outbuf must be at least --max-line".into());
        }
        if self.burst == 0 {
            return Err("--burst must be at least 1".into());
        }
        if self.no_plaintext && !self.tls_enabled() {
            return Err(
                "--no-plaintext needs TLS: --tls-cert/--tls-key or --tls-self-signed".into(),
            );
        }
        // Far beyond any sensible setting, and small enough that adding it
        // to a monotonic clock reading can never overflow.
        const MAX_SECS: u64 = 365 * 24 * 3600;
        for (flag, secs) in [
            ("--idle-timeout", self.idle_timeout),
            ("--login-timeout", self.login_timeout),
            ("--block-time", self.block_time),
        ] {
            if secs == 0 || secs > MAX_SECS {
                return Err(format!("{flag} must be from 1 to {MAX_SECS} seconds"));
            }
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err("--ipv6-prefix must be from 1 to 128".into());
        }
        if self.max_unauthenticated == 0 {
            return Err("--max-unauthenticated must be at least 1".into());
        }
        if self.max_login_failures == 0 {
            return Err("--max-login-failures must be at least 1".into());
        }
        Ok(())
    }
}
