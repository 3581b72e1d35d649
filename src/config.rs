//! The server's settings: every limit and timer from the contract's flags,
//! with its default and the reason for it, and the optional TOML file
//! (`--config`) that holds the same keys. `main` parses the command line
//! into [`Flags`] and builds the settings with [`Config::load`] (defaults,
//! then the file, then the flags given); tests and benches build them with
//! `Config::default()` and struct update. Nothing here touches a socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logging::LogFormat;
pub use crate::store::StoreLocation;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Deserializer};

/// Whether `register` is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Closed,
}

/// Password-hashing cost for new hashes. The parameters travel inside each
/// PHC hash string, so a hash made at one cost verifies under the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// TCP port to listen on (the same as --port).
    #[arg(value_name = "PORT", conflicts_with = "port")]
    pub port_arg: Option<u16>,

    /// Read settings from this TOML file: its keys are the long flags'
    /// names without `--`; flags given here override it.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// TCP port to listen on; 0 picks a free port.
    #[arg(long, default_value_t = 4000)]
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

    /// Behind a load balancer: every connection to the plaintext and TLS
    /// listeners starts with a PROXY protocol header (v1 or v2, as HAProxy's
    /// send-proxy sends), whose client address natterd uses for its
    /// per-address limits and logs; a connection without one is closed. Only
    /// for listeners nobody but the proxy can reach.
    #[arg(long)]
    pub proxy_protocol: bool,

    /// Where accounts and messages are kept: `sqlite` (the embedded
    /// database `<data>/natter.db`, nothing to install) or a PostgreSQL URL
    /// (`postgres://user[:password]@host[:port]/db`). The data directory
    /// still holds the lock, the read marks and the admin socket.
    #[arg(long, value_name = "sqlite|URL", default_value = "sqlite", value_parser = parse_store)]
    pub store: StoreLocation,

    /// Join a cluster: the nodes sharing this Redis (7 or later, for
    /// presence and routing over pub/sub) and the same PostgreSQL
    /// `--store` serve one chat together. Needs a PostgreSQL store.
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub cluster: Option<String>,

    /// This node's name in the cluster, unique among its nodes; by default
    /// `<hostname>:<port>`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Days direct messages are kept once read (0: forever). Older ones are
    /// deleted by the store thread a thousand at a time, between batches;
    /// unread messages are never deleted (--max-inbox bounds those).
    #[arg(long, default_value_t = 0)]
    pub history_retention_days: u32,

    /// Log lines as text for people, or as JSON objects (one per line) for
    /// log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off unless set;
    /// bind it to a private address: the figures are not secret, but they
    /// are not for everyone).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Serve the chat page and its WebSocket at http://ADDR:PORT/ (off
    /// unless set): browsers speak the same protocol, with the same limits.
    #[arg(long, value_name = "ADDR:PORT")]
    pub web: Option<std::net::SocketAddr>,

    /// Serve the page and its WebSocket over TLS too, at https://ADDR:PORT/
    /// (wss:// for the socket), with the TLS listener's certificate (needs
    /// --tls-cert/--tls-key or --tls-self-signed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub web_tls: Option<std::net::SocketAddr>,

    /// Origins allowed to open the WebSocket (comma-separated, e.g.
    /// `https://chat.example.com`); by default only the page's own.
    /// Needed when a proxy serves the page under another name.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    pub web_origin: Vec<String>,

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

    /// For tests: seconds of silence before a WebSocket gets a ping (and
    /// as long again before it is given up).
    #[arg(long, hide = true, default_value_t = 30)]
    pub web_keepalive: u64,
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

    /// This node's id in a cluster: `--node-id`, or `<hostname>:<port>`.
    pub fn node_name(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let host = if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            "natterd".to_string()
        };
        format!("{host}:{}", self.port)
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
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.tls_cert.is_some() && self.tls_self_signed.is_some() {
            return Err("--tls-self-signed cannot be used with --tls-cert/--tls-key".into());
        }
        if let Some(names) = &self.tls_self_signed {
            if names.is_empty() || names.iter().any(|n| n.trim().is_empty()) {
                return Err("--tls-self-signed needs host names, none of them empty".into());
            }
        }
        if self.web_tls.is_some() && !self.tls_enabled() {
            return Err("--web-tls needs TLS: --tls-cert/--tls-key or --tls-self-signed".into());
        }
        if self.no_plaintext && !self.tls_enabled() {
            return Err(
                "--no-plaintext needs TLS: --tls-cert/--tls-key or --tls-self-signed".into(),
            );
        }
        if let Some(url) = &self.cluster {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err("--cluster expects a redis://host:port URL".into());
            }
            // Every node must see every account and message: a node's own
            // SQLite file would split the chat.
            if !matches!(self.store, StoreLocation::Postgres(_)) {
                return Err("--cluster needs --store postgres://... shared by every node".into());
            }
        }
        if let Some(id) = &self.node_id {
            if id.is_empty()
                || id.len() > 64
                || id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err("--node-id must be 1 to 64 characters without spaces".into());
            }
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

/// The command line as given. Kept after start-up so that the settings can
/// be built again, from the config file as it is then, with the same flags
/// on top ([`Config::load`]): what a reload needs.
#[derive(Clone, Debug)]
pub struct Flags {
    matches: ArgMatches,
}

impl Flags {
    /// Parses the process's arguments; on a bad flag clap prints its usage
    /// message and exits with status 2, as for any command-line tool.
    pub fn parse() -> Flags {
        Flags {
            matches: Config::command().get_matches(),
        }
    }

    /// Parses `args` (the program name first).
    pub fn try_parse_from<I, T>(args: I) -> Result<Flags, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Flags {
            matches: Config::command().try_get_matches_from(args)?,
        })
    }

    /// The `--config` file, if one was given.
    pub fn config_file(&self) -> Option<&Path> {
        self.matches
            .get_one::<PathBuf>("config_file")
            .map(PathBuf::as_path)
    }

    /// Whether the setting with this clap id was given on the command line
    /// (rather than taking its default).
    fn given(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine)
        )
    }
}

impl Config {
    /// The settings in effect: the defaults, then the keys of the `--config`
    /// file (read now), then every flag given on the command line. Reading
    /// the file again later, with the same `flags`, is a reload. Does not
    /// [`validate`](Config::validate).
    pub fn load(flags: &Flags) -> Result<Config, String> {
        let mut config = Config::from_arg_matches(&flags.matches).map_err(|e| e.to_string())?;
        if let Some(port) = config.port_arg.take() {
            config.port = port;
        }
        if let Some(path) = flags.config_file() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            let file = FileConfig::parse(&text)
                .map_err(|e| format!("config file {}: {e}", path.display()))?;
            file.apply(&mut config, |id| flags.given(id));
        }
        Ok(config)
    }
}

/// The `--config` file: every key optional, each one a long flag's name
/// without `--`, with the flag's type. An unknown key is an error, so a typo
/// never silently leaves a default in place. The test-only flags have no key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    port: Option<u16>,
    bind: Option<IpAddr>,
    data: Option<PathBuf>,
    users: Option<PathBuf>,
    max_clients: Option<usize>,
    max_per_ip: Option<usize>,
    ipv6_prefix: Option<u8>,
    max_unauthenticated: Option<usize>,
    max_line: Option<usize>,
    max_outbuf: Option<usize>,
    idle_timeout: Option<u64>,
    login_timeout: Option<u64>,
    rate: Option<f64>,
    burst: Option<u32>,
    max_output_total: Option<usize>,
    max_inbox: Option<u32>,
    max_login_failures: Option<u32>,
    account_guesses_per_hour: Option<u32>,
    block_time: Option<u64>,
    registration: Option<Registration>,
    hash_cost: Option<HashCost>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_self_signed: Option<Names>,
    tls_port: Option<u16>,
    no_plaintext: Option<bool>,
    proxy_protocol: Option<bool>,
    history_retention_days: Option<u32>,
    #[serde(default, deserialize_with = "store")]
    store: Option<StoreLocation>,
    cluster: Option<String>,
    node_id: Option<String>,
    #[serde(default, deserialize_with = "log_format")]
    log_format: Option<LogFormat>,
    admin_socket: Option<PathBuf>,
    no_admin_socket: Option<bool>,
    metrics: Option<std::net::SocketAddr>,
    web: Option<std::net::SocketAddr>,
    web_tls: Option<std::net::SocketAddr>,
    web_origin: Option<Names>,
}

/// `url` (a `--store` or `--cluster` URL) without its password, for logs
/// and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `--store`: `sqlite`, or a PostgreSQL URL.
fn parse_store(value: &str) -> Result<StoreLocation, String> {
    if value == "sqlite" {
        Ok(StoreLocation::Sqlite)
    } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        Ok(StoreLocation::Postgres(value.to_string()))
    } else {
        Err("expected `sqlite` or a postgres://user@host/db URL".to_string())
    }
}

/// `store` in the file, as the flag takes it.
fn store<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StoreLocation>, D::Error> {
    let value = String::deserialize(d)?;
    parse_store(&value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `log-format`, by the flag's value names (`text`, `json`).
fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LogFormat>, D::Error> {
    let name = String::deserialize(d)?;
    LogFormat::from_str(&name, false).map(Some).map_err(|_| {
        serde::de::Error::custom(format!("log-format must be text or json, not {name:?}"))
    })
}

/// `tls-self-signed`: a list of names, or one string of comma-separated
/// names as the flag takes them.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a list of host names, or one string of comma-separated names"
)]
enum Names {
    List(Vec<String>),
    Commas(String),
}

impl Names {
    fn into_vec(self) -> Vec<String> {
        match self {
            Names::List(names) => names,
            Names::Commas(names) => names.split(',').map(str::to_string).collect(),
        }
    }
}

impl FileConfig {
    /// Parses the file's text; an error names the line (and, for an unknown
    /// key, the key).
    fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| describe_toml_error(text, &e))
    }

    /// Copies every key the file sets into `config`, except those whose flag
    /// was `given` on the command line: flags override the file.
    fn apply(self, config: &mut Config, given: impl Fn(&str) -> bool) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {$(
                if let Some(value) = self.$field {
                    if !given(stringify!($field)) {
                        config.$field = value;
                    }
                }
            )*};
        }
        take!(
            bind,
            data,
            max_clients,
            max_per_ip,
            ipv6_prefix,
            max_unauthenticated,
            max_line,
            max_outbuf,
            idle_timeout,
            login_timeout,
            rate,
            burst,
            max_output_total,
            max_inbox,
            max_login_failures,
            account_guesses_per_hour,
            block_time,
            registration,
            hash_cost,
            tls_port,
            no_plaintext,
            proxy_protocol,
            history_retention_days,
            store,
            log_format,
            no_admin_socket,
        );
        if let Some(port) = self.port {
            if !given("port") && !given("port_arg") {
                config.port = port;
            }
        }
        if self.users.is_some() && !given("users") {
            config.users = self.users;
        }
        if self.admin_socket.is_some() && !given("admin_socket") {
            config.admin_socket = self.admin_socket;
        }
        if self.cluster.is_some() && !given("cluster") {
            config.cluster = self.cluster;
        }
        if self.node_id.is_some() && !given("node_id") {
            config.node_id = self.node_id;
        }
        if self.metrics.is_some() && !given("metrics") {
            config.metrics = self.metrics;
        }
        if self.web.is_some() && !given("web") {
            config.web = self.web;
        }
        if self.web_tls.is_some() && !given("web_tls") {
            config.web_tls = self.web_tls;
        }
        if let Some(origins) = self.web_origin.filter(|_| !given("web_origin")) {
            config.web_origin = origins.into_vec();
        }
        // The certificate's source is one setting: a source given on the
        // command line replaces the file's, whichever kind each is.
        let flag_source = given("tls_cert") || given("tls_key") || given("tls_self_signed");
        let file_source =
            self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_self_signed.is_some();
        if file_source && !flag_source {
            config.tls_cert = self.tls_cert;
            config.tls_key = self.tls_key;
            config.tls_self_signed = self.tls_self_signed.map(Names::into_vec);
        }
    }
}

/// `line N: <what is wrong>`, from toml's error and the file's text. For an
/// unknown key, the key is named with the flag it was probably meant to be.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    if message.starts_with("unknown field") {
        let key = text
            .get(span.clone())
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        let hint = Config::command()
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .find(|long| *long != "config" && *long == key.replace('_', "-"))
            .map(|long| format!(" (did you mean `{long}`?)"))
            .unwrap_or_default();
        return format!(
            "line {line}: unknown key `{key}`{hint}; the keys are natterd's long flags \
             without `--` (natterd --help)"
        );
    }
    let source = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} (`{source}`): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], file: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("natterd.toml");
        std::fs::write(&path, file).map_err(|e| e.to_string())?;
        let mut argv = vec!["natterd".to_string(), "--config".into()];
        argv.push(path.display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let flags = Flags::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::load(&flags)
    }

    #[test]
    fn the_file_sets_what_no_flag_gives_and_flags_win() {
        let file = "port = 5000\nmax-clients = 7\nregistration = \"closed\"\n\
                    rate = 3\ntls-self-signed = \"a.test,b.test\"\n";
        let config = load(&["--max-clients", "9"], file).unwrap();
        assert_eq!(config.port, 5000);
        assert_eq!(config.max_clients, 9);
        assert_eq!(config.registration, Registration::Closed);
        assert_eq!(config.rate, 3.0);
        assert_eq!(config.max_line, Config::default().max_line);
        assert_eq!(
            config.tls_self_signed,
            Some(vec!["a.test".to_string(), "b.test".to_string()])
        );
        // Both spellings of the port override the file's.
        assert_eq!(load(&["6000"], file).unwrap().port, 6000);
        assert_eq!(load(&["--port", "6001"], file).unwrap().port, 6001);
        // A certificate given on the command line replaces the file's source.
        let config = load(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], file).unwrap();
        assert_eq!(config.tls_self_signed, None);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = load(&[], "port = 5000\n\nmax_clients = 7\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("unknown key `max_clients`"), "{err}");
        assert!(err.contains("did you mean `max-clients`"), "{err}");
        let err = load(&[], "[limits]\nmax-clients = 7\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("`limits`"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_line() {
        let err = load(&[], "\nmax-clients = \"lots\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err = load(&[], "registration = \"maybe\"\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = load(&[], "\n\nlog-format = \"xml\"\n").unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("text or json"),
            "{err}"
        );
        let config = load(&[], "log-format = \"json\"\nno-admin-socket = true\n").unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(config.no_admin_socket);
    }

    /// Every flag but the file itself and the hidden test-only ones is a
    /// key of the file: a new flag without a key fails here.
    #[test]
    fn every_flag_is_a_key_of_the_file() {
        let err = FileConfig::parse("no-such-key = 1").unwrap_err();
        assert!(err.contains("no-such-key"), "{err}");
        let message = toml::from_str::<FileConfig>("no-such-key = 1")
            .unwrap_err()
            .message()
            .to_string();
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" || arg.is_hide_set() {
                continue;
            }
            assert!(message.contains(&format!("`{long}`")), "{long}: {message}");
        }
    }

    /// deploy/natterd.toml is valid as shipped and with every commented-out
    /// key put back, and it shows every key.
    #[test]
    fn the_shipped_example_file_is_valid_and_complete() {
        let text = include_str!("../deploy/natterd.toml");
        FileConfig::parse(text).unwrap();
        let is_key_line = |line: &str| {
            line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
        };
        let all: Vec<&str> = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if is_key_line(rest) => rest,
                _ => l,
            })
            .collect();
        let all = all.join("\n");
        FileConfig::parse(&all).unwrap();
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" || arg.is_hide_set() {
                continue;
            }
            assert!(
                all.lines().any(|l| l.starts_with(&format!("{long} = "))),
                "{long} is not in deploy/natterd.toml"
            );
        }
    }

    #[test]
    fn web_tls_needs_a_certificate() {
        let addr = Some("127.0.0.1:8443".parse().unwrap());
        let bare = Config {
            web_tls: addr,
            ..Config::default()
        };
        assert!(bare.validate().unwrap_err().contains("--web-tls needs TLS"));
        let with_tls = Config {
            web_tls: addr,
            tls_self_signed: Some(vec!["localhost".into()]),
            ..Config::default()
        };
        assert_eq!(with_tls.validate(), Ok(()));
    }

    #[test]
    fn the_port_can_be_given_both_ways_but_not_twice() {
        let port = |args: &[&str]| {
            Flags::try_parse_from(args)
                .map_err(|e| e.to_string())
                .and_then(|f| Config::load(&f))
                .map(|c| c.port)
        };
        assert_eq!(port(&["natterd"]), Ok(4000));
        assert_eq!(port(&["natterd", "5000"]), Ok(5000));
        assert_eq!(port(&["natterd", "--port", "5001"]), Ok(5001));
        assert!(port(&["natterd", "--port", "5001", "5002"]).is_err());
    }
}
