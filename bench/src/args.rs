//! The command line: every flag, its default, and the checks that reject a
//! run which could not measure anything meaningful before it connects.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

use natter_client::{TlsConfig, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TLS_PORT};

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1 sender broadcasts to N receivers: deliveries/s, delivery latency,
    /// and ping latency from an idle client during the load.
    Fanout,
    /// P sender→receiver pairs pipelining `send`: acknowledged (committed)
    /// messages/s, delivery and acknowledgement latency.
    Dm,
    /// C logged-in idle sessions: server memory per session.
    Idle,
    /// Logins per second on fresh connections.
    Login,
}

impl Scenario {
    /// The scenario's name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Dm => "dm",
            Scenario::Idle => "idle",
            Scenario::Login => "login",
        }
    }
}

/// The longest `--users-prefix`: a username is at most 32 characters and the
/// bench appends a role letter and an index of up to 8 digits.
pub const MAX_PREFIX: usize = 20;

/// The smallest `--payload`: the text carries a sequence number and a send
/// time in nanoseconds.
pub const MIN_PAYLOAD: usize = 24;

/// The largest `--payload`: natterd's default line limit is 4096 bytes, and
/// the command word and a username come before the text.
pub const MAX_PAYLOAD: usize = 4000;

/// The most broadcasts in one fanout run: the bench keeps a counter per
/// broadcast in flight-order.
pub const MAX_BROADCASTS: u64 = 10_000_000;

const LONG_ABOUT: &str = "\
Load generator for natterd, in the spirit of redis-benchmark. It drives a
running natterd over TCP (or TLS, with --tls) and prints one table per
scenario (or, with --json, one JSON object per line).

Start natterd for it like this (release build, same machine or not):

  natterd --rate 0 --hash-cost low --max-per-ip 0 --data /tmp/bench-data 4000

--rate 0 because the bench pipelines far past the default rate limit (over
it natterd paces a session rather than refusing, which would measure the
limit, not the server); --max-per-ip 0 because every session
comes from this one address and the default allows 64 (a * bye busy stops the
run and says so); --max-clients (default 10000) must exceed the sessions a
scenario opens. --hash-cost decides what `login` measures.

Users are created with `register <prefix><role><n> <password>`; a user that
already EXISTS is logged in instead, so runs can be repeated. Every phase
(setup, measurement) is capped by --max-seconds.";

const AFTER_HELP: &str = "\
Scenarios:
  fanout  1 sender, --receivers logged-in receivers, --broadcasts broadcasts of
          --payload bytes; at most --window broadcasts not yet received by
          every receiver. Reports deliveries/s and delivery latency (the send
          time travels in the text), plus the round trip of `ping` sent every
          --ping-interval-us from one more idle client (which blocks the
          sender, so broadcasts do not reach it).
  dm      --pairs sender/receiver pairs; each sender has at most --window
          `send`s unacknowledged, --messages in all; --rate-limit spreads a
          fixed total rate over the pairs (latency then counts from when each
          message was due, so falling behind shows). Reports acknowledged
          messages/s, delivery and acknowledgement latency.
  idle    --sessions logged-in sessions, then natterd's VmRSS (read from
          /proc/<--server-pid>/status) before and after, per session.
  login   --concurrency connections at a time, each connecting, logging in
          and quitting, --logins times in all. Reports logins/s and latency.

With --server-pid every report also shows the CPU used by natterd and by the
bench during the measurement (100% = one core), so a bench-bound run shows.

TLS: --tls runs every connection through natterd's TLS listener (port 4443
unless --port is given), so TLS's cost shows beside a plaintext run: the
handshake in login, record encryption in the others. The certificate is
checked as the natter client does it: the built-in web roots, --ca FILE, or
--fingerprint for a server started with --tls-self-signed:

  natterd --rate 0 --hash-cost low --max-per-ip 0 --data /tmp/bench-data \
          --tls-self-signed localhost 4000
  natter-bench --tls --fingerprint <the sha256 natterd printed> fanout

WebSocket: --ws PORT runs fanout's receivers, or idle's sessions, through
natterd's --web listener (one line per text frame), so its framing cost
shows beside a TCP run:

  natterd --rate 0 --hash-cost low --max-per-ip 0 --data /tmp/bench-data \
          --web 127.0.0.1:8080 4000
  natter-bench --ws 8080 fanout idle

Clusters: --nodes lists the nodes of one cluster (natterd --cluster; with
--tls, their TLS ports), each started as above, with its own --data, plus
--store postgres://... --cluster redis://... --node-id ID. The first node is where fanout's sender and ping client and
dm's senders connect; fanout's receivers go round-robin over all the nodes
(with 2, half of them on the other node), dm's receivers over the nodes
after the first (every message crosses nodes; --history-readers and
--list-flooders stay on the first), idle's sessions and login's
connections round-robin over all. Before measuring, fanout and dm wait
(within --max-seconds) until the first node lists every receiver in
`whoelse`, as a user registered on one node reaches the others a moment
later. --server-pid is then the first node's natterd; idle's memory per
session counts that node's sessions only. --ws takes one node.

  natter-bench --nodes 127.0.0.1:4000,127.0.0.1:4001 fanout dm

Exit status: 0 when every scenario ran, 1 when one failed, 2 for bad
arguments.";

/// natter-bench's command line.
#[derive(Parser, Debug, Clone)]
#[command(name = "natter-bench", version, about = "Load generator for natterd", long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Scenarios to run, in this order [default: fanout dm idle login]
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// natterd's host
    #[arg(short = 'H', long, default_value = DEFAULT_HOST)]
    pub host: String,

    /// natterd's port [default: 4000, or 4443 with --tls]
    #[arg(short, long)]
    pub port: Option<u16>,

    /// A cluster's nodes, instead of --host and --port (see "Clusters"
    /// below): fanout's receivers, idle's sessions and login's connections
    /// go round-robin over them; dm's senders use the first, their
    /// receivers the others
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        value_parser = parse_node,
        conflicts_with_all = ["host", "port"]
    )]
    pub nodes: Vec<Node>,

    /// Connect with TLS (natterd's TLS listener)
    #[arg(long)]
    pub tls: bool,

    /// fanout and idle: the receivers (fanout) or the idle sessions connect
    /// over a WebSocket to natterd's --web listener on this port, at /ws
    /// (the fanout sender and ping client stay on TCP)
    #[arg(long, value_name = "PORT", conflicts_with = "tls")]
    pub ws: Option<u16>,

    /// With --tls: trust the certificates in this PEM file (a CA, or the
    /// server's own certificate) instead of the built-in roots
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "fingerprint"
    )]
    pub ca: Option<PathBuf>,

    /// With --tls: accept exactly the server certificate with this SHA-256
    /// fingerprint (AB:CD:... as natterd prints it, or plain hex)
    #[arg(long, value_name = "SHA256", requires = "tls")]
    pub fingerprint: Option<String>,

    /// fanout: logged-in receivers of every broadcast
    #[arg(long, default_value_t = 1000)]
    pub receivers: usize,

    /// fanout: broadcasts the sender sends
    #[arg(long, default_value_t = 1000)]
    pub broadcasts: u64,

    /// dm: sender→receiver pairs
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,

    /// dm: messages each sender sends
    #[arg(long, default_value_t = 2000)]
    pub messages: u64,

    /// dm: total messages per second over all pairs (default: as fast as
    /// acknowledgements allow)
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate_limit: Option<u64>,

    /// dm: extra sessions that loop `history 1000` while the pairs run (each
    /// first sends its neighbour 500 messages, so there is history to
    /// read): what reads cost the writers' acknowledgements. 0 or at least 2
    #[arg(long, default_value_t = 0)]
    pub history_readers: usize,

    /// dm: extra sessions that loop `broadcast user <300 names> message
    /// <text>` while the pairs run (300 offline users stored to each time;
    /// the text fills the line to 4,000 bytes, at most 2.5 KB): what a flood
    /// of list broadcasts costs other people's acknowledgements and
    /// natterd's memory
    #[arg(long, default_value_t = 0)]
    pub list_flooders: usize,

    /// idle: logged-in sessions to hold
    #[arg(long, default_value_t = 10000)]
    pub sessions: usize,

    /// login: logins in all
    #[arg(long, default_value_t = 2000)]
    pub logins: u64,

    /// login: connections logging in at the same time
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Bytes of text per broadcast or message (it carries a sequence number
    /// and the send time, padded with `x`)
    #[arg(long, default_value_t = 64)]
    pub payload: usize,

    /// Messages in flight: fanout, broadcasts not yet received by every
    /// receiver; dm, unacknowledged sends per sender
    #[arg(long, default_value_t = 32)]
    pub window: u64,

    /// Threads reading (and, for dm, writing) the measured connections. On a
    /// 2-core machine shared with natterd, 1 measured best (fan-out to 1000:
    /// 2.7M deliveries/s with 1, 2.1M with 2)
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// fanout: microseconds between pings from the idle client (0: no ping
    /// client)
    #[arg(long, default_value_t = 1000, value_name = "MICROS")]
    pub ping_interval_us: u64,

    /// Cap on each phase (setup, then measurement) of each scenario; a
    /// measurement cut short reports what it got, with a note
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub max_seconds: u64,

    /// natterd's process id: enables idle's memory figure and the CPU
    /// columns
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Start of every username the bench creates; change it to keep runs
    /// apart (letters, digits, _ - ., starting with a letter)
    #[arg(long, default_value = "nb", value_name = "PREFIX")]
    pub users_prefix: String,

    /// Password of the bench's users
    #[arg(long, default_value = "natter-bench-pw")]
    pub password: String,

    /// Print one JSON object per scenario per line instead of tables
    #[arg(long)]
    pub json: bool,
}

/// One node of a cluster: where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

/// `HOST:PORT`, or `[V6ADDR]:PORT`.
fn parse_node(s: &str) -> Result<Node, String> {
    let bad = || format!("{s:?}: expected HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // A bare IPv6 address would split at its last colon into nonsense.
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(bad)?;
    Ok(Node {
        host: host.to_string(),
        port,
    })
}

impl Args {
    /// Where to connect: the --nodes, else the one node --host and --port
    /// name.
    pub fn nodes(&self) -> Vec<Node> {
        if self.nodes.is_empty() {
            vec![Node {
                host: self.host.clone(),
                port: self.port(),
            }]
        } else {
            self.nodes.clone()
        }
    }

    /// The port to connect to: --port, else natterd's default for the
    /// listener chosen.
    pub fn port(&self) -> u16 {
        let default = if self.tls {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        self.port.unwrap_or(default)
    }

    /// The TLS configuration asked for, if any; reading --ca happens here.
    pub fn tls_config(&self) -> Result<Option<TlsConfig>, String> {
        TlsConfig::from_flags(self.tls, self.ca.as_deref(), self.fingerprint.as_deref())
    }

    /// The scenarios to run, in order.
    pub fn scenarios(&self) -> Vec<Scenario> {
        if self.scenarios.is_empty() {
            vec![
                Scenario::Fanout,
                Scenario::Dm,
                Scenario::Idle,
                Scenario::Login,
            ]
        } else {
            self.scenarios.clone()
        }
    }

    /// Rejects arguments that cannot produce a meaningful run.
    pub fn validate(&self) -> Result<(), String> {
        let at_least_one = [
            ("--receivers", self.receivers as u64),
            ("--broadcasts", self.broadcasts),
            ("--pairs", self.pairs as u64),
            ("--messages", self.messages),
            ("--sessions", self.sessions as u64),
            ("--logins", self.logins),
            ("--concurrency", self.concurrency as u64),
            ("--window", self.window),
            ("--threads", self.threads as u64),
            ("--max-seconds", self.max_seconds),
        ];
        for (flag, n) in at_least_one {
            if n == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.threads > 64 {
            return Err("--threads must be at most 64".into());
        }
        if self.max_seconds > 86_400 {
            return Err("--max-seconds must be at most 86400".into());
        }
        if self.ws.is_some()
            && self
                .scenarios()
                .iter()
                .any(|s| !matches!(s, Scenario::Fanout | Scenario::Idle))
        {
            return Err("--ws drives the fanout and idle scenarios only: name them".into());
        }
        if self.ws.is_some() && self.nodes.len() > 1 {
            return Err("--ws takes one node: leave out --nodes, or --ws".into());
        }
        if self.nodes.len() > 64 {
            return Err("--nodes takes at most 64 nodes".into());
        }
        if self.broadcasts > MAX_BROADCASTS {
            return Err(format!("--broadcasts must be at most {MAX_BROADCASTS}"));
        }
        for (flag, n) in [
            ("--receivers", self.receivers),
            ("--pairs", self.pairs),
            ("--sessions", self.sessions),
            ("--concurrency", self.concurrency),
        ] {
            if n > 10_000_000 {
                return Err(format!("{flag} must be at most 10000000"));
            }
        }
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&self.payload) {
            return Err(format!(
                "--payload must be from {MIN_PAYLOAD} to {MAX_PAYLOAD} bytes"
            ));
        }
        if self.history_readers == 1 {
            return Err(
                "--history-readers must be 0 or at least 2 (they message each other)".into(),
            );
        }
        if self.rate_limit == Some(0) {
            return Err("--rate-limit must be at least 1 (leave it out for no limit)".into());
        }
        validate_prefix(&self.users_prefix)?;
        validate_password(&self.password)
    }
}

fn validate_prefix(p: &str) -> Result<(), String> {
    let ok_chars = p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let starts_with_letter = p.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok_chars || !starts_with_letter || p.len() > MAX_PREFIX {
        return Err(format!(
            "--users-prefix must be 1 to {MAX_PREFIX} ASCII letters, digits, _ - ., \
             starting with a letter"
        ));
    }
    Ok(())
}

fn validate_password(p: &str) -> Result<(), String> {
    // natterd takes the rest of the line, so blanks at the ends would be
    // trimmed away and control characters refused.
    let trimmed = p.trim_matches([' ', '\t']);
    if !(8..=256).contains(&p.len()) || trimmed != p || p.chars().any(char::is_control) {
        return Err(
            "--password must be 8 to 256 bytes, without control characters or \
             leading or trailing blanks"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["natter-bench"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn defaults_are_the_issue_sizes_and_valid() {
        let a = args(&[]);
        assert_eq!(a.receivers, 1000);
        assert_eq!(a.pairs, 50);
        assert_eq!(a.sessions, 10000);
        assert_eq!(a.port(), 4000);
        assert_eq!(args(&["--tls"]).port(), 4443);
        assert_eq!(args(&["--tls", "-p", "7"]).port(), 7);
        assert_eq!(a.scenarios().len(), 4);
        assert_eq!(a.validate(), Ok(()));
        Args::command().debug_assert();
    }

    #[test]
    fn scenarios_keep_their_order() {
        let a = args(&["login", "fanout"]);
        assert_eq!(a.scenarios(), [Scenario::Login, Scenario::Fanout]);
        assert!(Args::try_parse_from(["natter-bench", "bogus"]).is_err());
    }

    #[test]
    fn zero_counts_are_refused() {
        for flag in [
            "--receivers",
            "--broadcasts",
            "--pairs",
            "--messages",
            "--sessions",
            "--logins",
            "--concurrency",
            "--window",
            "--threads",
            "--max-seconds",
        ] {
            let err = args(&[flag, "0"]).validate().expect_err(flag);
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn payload_bounds() {
        assert!(args(&["--payload", "23"]).validate().is_err());
        assert!(args(&["--payload", "24"]).validate().is_ok());
        assert!(args(&["--payload", "4000"]).validate().is_ok());
        assert!(args(&["--payload", "4001"]).validate().is_err());
    }

    #[test]
    fn prefix_and_password_rules() {
        assert!(args(&["--users-prefix", "run-2.a_b"]).validate().is_ok());
        for bad in ["", "2run", "a b", "é", "abcdefghijklmnopqrstu"] {
            assert!(
                args(&["--users-prefix", bad]).validate().is_err(),
                "{bad:?}"
            );
        }
        assert!(args(&["--password", "has spaces inside"])
            .validate()
            .is_ok());
        for bad in ["short", " leading-blank", "trailing-blank ", "tab\there"] {
            assert!(args(&["--password", bad]).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nodes_parse_as_a_comma_separated_list() {
        let node = |host: &str, port| Node {
            host: host.to_string(),
            port,
        };
        assert_eq!(args(&[]).nodes(), [node(DEFAULT_HOST, 4000)]);
        assert_eq!(args(&["-H", "h", "-p", "7"]).nodes(), [node("h", 7)]);
        let a = args(&["--nodes", "127.0.0.1:4000,[::1]:4001,chat-2:9"]);
        assert_eq!(
            a.nodes(),
            [
                node("127.0.0.1", 4000),
                node("::1", 4001),
                node("chat-2", 9)
            ]
        );
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(
            args(&["--nodes", "a:1", "--nodes", "b:2"]).nodes(),
            [node("a", 1), node("b", 2)]
        );
        for bad in ["a", "a:", ":4000", "a:0", "a:65536", "::1:4000", "a:1,b"] {
            assert!(
                Args::try_parse_from(["natter-bench", "--nodes", bad]).is_err(),
                "{bad:?}"
            );
        }
        // Two ways to say where: refused rather than one silently ignored.
        for other in [["--port", "1"], ["--host", "h"]] {
            let mut argv = vec!["natter-bench", "--nodes", "a:1,b:2"];
            argv.extend(other);
            assert!(Args::try_parse_from(argv).is_err(), "{other:?}");
        }
    }

    #[test]
    fn websocket_and_too_many_nodes_are_refused() {
        let two = args(&["--nodes", "a:1,b:2", "--ws", "8080", "fanout"]);
        assert!(two.validate().expect_err("ws").contains("--ws"));
        assert!(args(&["--nodes", "a:1", "--ws", "8080", "fanout"])
            .validate()
            .is_ok());
        let many: Vec<String> = (1..=65).map(|p| format!("h:{p}")).collect();
        let many = many.join(",");
        assert!(args(&["--nodes", &many]).validate().is_err());
    }

    #[test]
    fn rate_limit_and_thread_bounds() {
        assert!(args(&["--rate-limit", "0"]).validate().is_err());
        assert!(args(&["--rate-limit", "25000"]).validate().is_ok());
        assert!(args(&["--threads", "65"]).validate().is_err());
        assert!(args(&["--broadcasts", "10000001"]).validate().is_err());
    }
}
