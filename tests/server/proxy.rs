//! `--proxy-protocol`: behind a load balancer, natterd takes each client's
//! address from the PROXY header (v1 or v2) its listener is sent first, for
//! the per-address limits, the logs and `natterctl sessions`; without the
//! flag a PROXY line is just an unknown command. Last, through a real
//! HAProxy with deploy/haproxy.cfg's settings.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Client, Server};

/// The address natterd shows for `user` in `natterctl sessions`.
fn address_of(server: &Server, user: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_natterctl"))
        .arg("--data")
        .arg(&server.data)
        .args(["sessions", "--json"])
        .output()
        .expect("run natterctl");
    let sessions: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    sessions
        .as_array()
        .and_then(|s| s.iter().find(|s| s["user"] == user))
        .and_then(|s| s["address"].as_str())
        .unwrap_or_else(|| panic!("no session of {user}: {sessions}"))
        .to_string()
}

/// Registers `name` on `c` (logged in from then on).
fn register(c: &mut Client, name: &str) {
    assert_eq!(
        c.cmd1(&format!("register {name} password-{name}")),
        format!("+ registered {name}")
    );
}

/// A connection that first says it is `client` (a v1 header).
fn proxied(server: &Server, client: &str) -> Client {
    let mut c = Client::connect(server.addr);
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let to = if client.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    c.send_raw(format!("PROXY {family} {client} {to} 40000 4000\r\n").as_bytes());
    c.skip_greeting();
    c
}

#[test]
fn the_proxy_header_gives_the_address_natterd_counts_by() {
    let server = Server::start(&["--proxy-protocol", "--max-per-ip", "2"]);
    let mut a = proxied(&server, "203.0.113.9");
    register(&mut a, "alice");
    assert_eq!(address_of(&server, "alice"), "203.0.113.9");
    let mut b = proxied(&server, "2001:db8::7");
    register(&mut b, "bob");
    assert_eq!(address_of(&server, "bob"), "2001:db8::7");

    // The per-address limit counts the header's address, not the proxy's.
    let _second = proxied(&server, "203.0.113.9");
    let mut third = Client::connect(server.addr);
    third.send_raw(b"PROXY TCP4 203.0.113.9 127.0.0.1 40001 4000\r\n");
    assert_eq!(third.line(), "* bye busy");
    let _other = proxied(&server, "198.51.100.1");

    // A v2 header, arriving in the same write as the first command.
    let mut v2 = Client::connect(server.addr);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([
        0x21, 0x11, 0, 12, 192, 0, 2, 44, 127, 0, 0, 1, 0x9c, 0x40, 0x0f, 0xa0,
    ]);
    header.extend(b"register carol password-carol\n");
    v2.send_raw(&header);
    v2.skip_greeting();
    assert_eq!(v2.line(), "+ registered carol");
    assert_eq!(address_of(&server, "carol"), "192.0.2.44");
    assert!(
        server.log().contains("192.0.2.44"),
        "the log names the client"
    );
}

#[test]
fn a_proxy_listener_closes_a_connection_without_a_header() {
    let server = Server::start(&["--proxy-protocol"]);
    let mut c = Client::connect(server.addr);
    c.send_raw(b"login alice password-alice\n");
    assert!(c.until_closed().is_empty(), "no greeting, nothing read");
    // One that says nothing is closed when the login timeout is up.
    let server = Server::start(&["--proxy-protocol", "--login-timeout", "1"]);
    let started = Instant::now();
    let mut silent = Client::connect(server.addr);
    assert!(silent.until_closed().is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    // And the server still serves proxied clients.
    register(&mut proxied(&server, "203.0.113.10"), "dave");
}

#[test]
fn without_the_flag_a_proxy_line_is_not_trusted() {
    let server = Server::start(&[]);
    let mut c = server.connect();
    c.send("PROXY TCP4 203.0.113.9 127.0.0.1 40000 4000");
    assert!(c.line().starts_with("- "), "an unknown command");
    register(&mut c, "erin");
    assert_eq!(address_of(&server, "erin"), "127.0.0.1");
}

/// HAProxy on a free port in front of natterd, with the example config's
/// settings (send-proxy-v2, greeting health checks); stopped on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_in_front_of(server: &Server) -> Haproxy {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg"))
            .expect("deploy/haproxy.cfg");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The example, pointed at this natterd: one frontend, one server.
    let mut config = String::new();
    let mut skip = false;
    for line in example.lines() {
        let t = line.trim_start();
        if t.starts_with("frontend ") || t.starts_with("backend ") {
            skip = t.ends_with("_tls");
        }
        if skip || t.starts_with("log ") || t.starts_with("option tcplog") {
            continue;
        }
        if t.starts_with("maxconn ") {
            // The example's figure needs a larger descriptor limit than a
            // test machine grants.
            config.push_str("    maxconn 1000\n");
        } else if t.starts_with("bind :4000") {
            config.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if t.starts_with("server n1 ") && !t.contains(":4443") {
            config.push_str(&format!("    server n1 {}\n", server.addr));
        } else if t.starts_with("server ") || t.starts_with("bind :") {
            continue;
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, &config).expect("write haproxy.cfg");
    let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
    let mut child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haproxy must be installed (apt-get install haproxy) for this test");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
            panic!("haproxy did not start ({exited:?}):\n{log}\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy {
        child,
        addr,
        _dir: dir,
    }
}

#[test]
fn through_haproxy_natterd_sees_the_clients_own_address() {
    let server = Server::start(&["--proxy-protocol"]);
    let proxy = haproxy_in_front_of(&server);
    // The client connects from 127.0.0.5; HAProxy itself from 127.0.0.1.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.5:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind 127.0.0.5");
    socket
        .connect(&proxy.addr.into())
        .expect("connect through haproxy");
    let mut c = Client::from_stream(socket.into());
    c.skip_greeting();
    register(&mut c, "frank");
    assert_eq!(address_of(&server, "frank"), "127.0.0.5");
    // HAProxy's health checks (a LOCAL header, the greeting, quit) pass:
    // after long enough for three failed checks to mark natterd down
    // (fall 3, inter 2s), a new client still gets through.
    std::thread::sleep(Duration::from_secs(7));
    c.stream.flush().expect("flush");
    assert_eq!(c.cmd1("ping"), "+ pong");
    let mut later = Client::connect(proxy.addr);
    later.skip_greeting();
    assert!(
        later.cmd1("ping").starts_with("- NOAUTH"),
        "natterd answers"
    );
    assert!(server.log().contains("127.0.0.5"));
}
