//! TLS on the same loop: a rustls client pinned to the server's self-signed
//! certificate, openssl s_client as an outside client, and broken or
//! stalled handshakes that must not affect anyone else.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::util::{serial, stall_bound, Server, TIMEOUT};

const SELF_SIGNED: [&str; 2] = ["--tls-self-signed", "localhost"];

/// A line client over TLS.
struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, fingerprint: &str) -> TlsClient {
        // The natter client's own pinning, as a user of --fingerprint gets it.
        let pin = natter_client::tls::parse_fingerprint(fingerprint).expect("fingerprint");
        let config = natter_client::TlsConfig::new(natter_client::Trust::Pinned(pin))
            .expect("client TLS config")
            .config;
        let name = ServerName::try_from("localhost").expect("name");
        let conn = ClientConnection::new(config, name).expect("client connection");
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        tcp.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut c = TlsClient {
            reader: BufReader::new(StreamOwned::new(conn, tcp)),
        };
        assert_eq!(c.line(), "* hello natter 1");
        while !c.line().contains("help") {}
        c
    }

    fn send(&mut self, line: &str) {
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
        stream.flush().expect("flush");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("connection closed"),
            Ok(_) => line.trim_end_matches('\n').to_string(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no line within {TIMEOUT:?}")
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn cmd1(&mut self, line: &str) -> String {
        self.send(line);
        loop {
            let l = self.line();
            if l.starts_with("+ ") || l.starts_with("- ") {
                return l;
            }
        }
    }
}

fn tls_of(server: &Server) -> (SocketAddr, String) {
    server.tls.clone().expect("server has a TLS listener")
}

#[test]
fn login_send_and_broadcast_over_tls() {
    let server = Server::start(&SELF_SIGNED);
    let (addr, fingerprint) = tls_of(&server);
    let mut alice = TlsClient::connect(addr, &fingerprint);
    assert_eq!(
        alice.cmd1("register alice password-alice"),
        "+ registered alice"
    );
    let mut bob = TlsClient::connect(addr, &fingerprint);
    assert_eq!(bob.cmd1("register bob password-bob"), "+ registered bob");
    // A plaintext user and a TLS user talk to each other.
    let mut carol = server.user("carol");
    assert_eq!(alice.cmd1("send bob over tls"), "+ delivered");
    assert!(bob.line().ends_with(" over tls"));
    assert_eq!(alice.cmd1("broadcast hello everyone"), "+ sent to 2");
    assert!(bob.line().ends_with(" hello everyone"));
    assert!(carol.event().ends_with(" hello everyone"));
    assert_eq!(carol.cmd1("send alice from plaintext"), "+ delivered");
    assert!(alice.line().ends_with(" from plaintext"));
}

#[test]
fn a_large_burst_of_pushes_arrives_whole_over_tls() {
    let server = Server::start(&SELF_SIGNED);
    let (addr, fingerprint) = tls_of(&server);
    let mut bob = TlsClient::connect(addr, &fingerprint);
    assert_eq!(bob.cmd1("register bob password-bob"), "+ registered bob");
    let mut alice = server.user("alice");
    // Far more than one TLS record and one socket read: records are split
    // across reads on the client side and plaintext is metered into rustls.
    let text = "y".repeat(3000);
    let n = 300;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("send bob {i}-{text}\n"));
    }
    alice.send_raw(batch.as_bytes());
    for i in 0..n {
        let line = bob.line();
        assert!(
            line.ends_with(&format!(" {i}-{text}")),
            "message {i}: {}",
            &line[..60.min(line.len())]
        );
    }
    for _ in 0..n {
        assert_eq!(alice.reply(), vec!["+ delivered"]);
    }
}

#[test]
fn broken_and_stalled_handshakes_do_not_affect_others() {
    // Measures the ordinary client's latency.
    let _serial = serial();
    let server = Server::start(&["--tls-self-signed", "localhost", "--login-timeout", "1"]);
    let (addr, fingerprint) = tls_of(&server);
    let mut ordinary = server.user("ordinary");
    let baseline = ordinary.ping_baseline();

    // Plaintext spoken to the TLS port: an alert, then the server hangs up.
    let mut confused = TcpStream::connect(addr).expect("connect");
    confused.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    confused
        .write_all(b"login alice password\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = confused.read_to_end(&mut got);
    assert_eq!(
        got.first(),
        Some(&0x15),
        "expected a TLS alert record, got {got:?}"
    );

    // A client that sends half a ClientHello and vanishes.
    let mut quitter = TcpStream::connect(addr).expect("connect");
    quitter
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    drop(quitter);

    // A client that stalls mid-handshake is closed by the login timeout.
    let mut staller = TcpStream::connect(addr).expect("connect");
    staller.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    staller.write_all(&[0x16, 0x03, 0x01]).expect("write");
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = staller.read_to_end(&mut sink);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "staller was not timed out"
    );

    let ping = ordinary.ping();
    assert!(
        ping < stall_bound(baseline),
        "ping {ping:?}, {baseline:?} before the broken handshakes"
    );
    let mut fine = TlsClient::connect(addr, &fingerprint);
    assert_eq!(fine.cmd1("ping").split(' ').nth(1), Some("NOAUTH"));
    assert!(
        server.log().contains("TLS"),
        "handshake failures are not logged"
    );
}

#[test]
fn the_self_signed_certificate_is_kept_across_restarts() {
    let server = Server::start(&SELF_SIGNED);
    let (_, first) = tls_of(&server);
    let server = server.restart_after_kill();
    let (addr, second) = tls_of(&server);
    assert_eq!(first, second);
    let mut c = TlsClient::connect(addr, &second);
    assert_eq!(c.cmd1("register zed password-zed"), "+ registered zed");
}

#[test]
fn tls_only_serves_no_plaintext() {
    let server = Server::start(&["--tls-self-signed", "localhost", "--no-plaintext"]);
    let (addr, fingerprint) = tls_of(&server);
    let mut c = TlsClient::connect(addr, &fingerprint);
    assert_eq!(c.cmd1("register solo password-solo"), "+ registered solo");
}

#[test]
fn openssl_s_client_can_log_in_and_ping() {
    let server = Server::start(&SELF_SIGNED);
    drop(server.user("alice"));
    let (addr, _) = tls_of(&server);
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed (.ci/run installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"login alice password-alice\nping\n")
        .expect("write to openssl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while !seen.iter().any(|l: &String| l == "+ pong") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.starts_with("+ welcome alice")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l == "+ pong"), "{seen:?}");
}

#[test]
fn a_large_reply_reaches_a_tls_reader_that_starts_late() {
    // A 3 MB reply through rustls's 64 KiB record buffer to a reader that
    // lets every buffer fill first. (A review found that a flush which
    // drained rustls's buffer without the socket saying WouldBlock used to
    // stop there, with no WRITABLE edge to come; that depends on kernel
    // buffer timing and this test does not reproduce it reliably, but it
    // covers the path.)
    let server = Server::start(&SELF_SIGNED);
    let (addr, fingerprint) = tls_of(&server);
    drop(server.user("bob"));
    let mut alice = server.user("alice");
    let text = "h".repeat(3000);
    let n = 1000;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("send bob {i}-{text}\n"));
    }
    alice.send_raw(batch.as_bytes());
    for _ in 0..n {
        assert_eq!(alice.reply(), vec!["+ stored"]);
    }
    let mut bob = TlsClient::connect(addr, &fingerprint);
    assert!(bob
        .cmd1("login bob password-bob")
        .starts_with("+ welcome bob"));
    bob.send("history 1000");
    // Read nothing until every buffer on the way is full: bob's receive
    // window has closed and the server holds the rest.
    let bob_addr = bob
        .reader
        .get_ref()
        .sock
        .local_addr()
        .expect("bob's address");
    wait_for_zero_window(addr, bob_addr);
    for i in 0..n {
        let line = bob.line();
        assert!(
            line.ends_with(&format!(" alice bob {i}-{text}")),
            "line {i}"
        );
    }
    assert_eq!(bob.line(), "+ 1000 messages");
}

/// Waits until the server's side of the TCP connection `server`–`client` is
/// probing a zero window (in `/proc/net/tcp`, timer 4: the client's receive
/// buffer is full and the server has more queued for it). Panics if that
/// does not happen within [`TIMEOUT`].
fn wait_for_zero_window(server: SocketAddr, client: SocketAddr) {
    // /proc/net/tcp spells an IPv4 address as the hex of its four bytes
    // read as a native-endian u32, and the port in big-endian hex.
    let spell = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => panic!("{a} is not IPv4"),
    };
    let (local, remote) = (spell(server), spell(client));
    let deadline = Instant::now() + TIMEOUT;
    let mut last = String::new();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        // Fields: sl local rem st tx_queue:rx_queue tr:tm->when ...
        if let Some(row) = table.lines().find(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            f.len() > 5 && f[1] == local && f[2] == remote
        }) {
            if row
                .split_whitespace()
                .nth(5)
                .is_some_and(|t| t.starts_with("04:"))
            {
                return;
            }
            last = row.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the server never filled the reader's window; last row: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGHUP (or `natterctl reload`) re-reads the certificate: a renewed one
/// serves new connections, and a session already open stays.
#[test]
fn a_reload_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("natterd.toml");
    std::fs::write(&file, "tls-self-signed = [\"localhost\"]\n").expect("config file");
    let path = file.display().to_string();
    // --tls-port on the command line tells the fixture to expect TLS.
    let server = Server::start(&["--config", &path, "--tls-port", "0"]);
    let (addr, first) = tls_of(&server);
    let mut alice = TlsClient::connect(addr, &first);
    assert_eq!(
        alice.cmd1("register alice password-alice"),
        "+ registered alice"
    );
    // New names: the kept certificate no longer fits, so a new one is made.
    std::fs::write(
        &file,
        "tls-self-signed = [\"localhost\", \"chat.example.test\"]\n",
    )
    .expect("rewrite config file");
    crate::config::sighup(&server);
    let log = crate::config::log_with(&server, "for new connections");
    let second = log
        .lines()
        .find_map(|l| {
            let rest = l.split("TLS certificate sha256 ").nth(1)?;
            rest.split(' ').next().map(str::to_string)
        })
        .expect("the new fingerprint in the log");
    assert_ne!(second, first, "the certificate did not change");
    let mut bob = TlsClient::connect(addr, &second);
    assert_eq!(bob.cmd1("register bob password-bob"), "+ registered bob");
    assert_eq!(alice.cmd1("ping"), "+ pong");
}
