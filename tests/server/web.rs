//! The web listener (`--web`) the way a browser, or someone pretending to
//! be one, meets it: the page and `/healthz` over HTTP, the WebSocket
//! handshake and its refusals, frames a browser never sends, the same
//! limits as TCP, and a WebSocket user talking to a terminal user.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::util::{serial, stall_bound, Server, TIMEOUT};
use crate::ws::{self, http, upgrade_request, Ws, BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};

fn start(args: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--web", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let web = server.web.expect("natterd printed its web address");
    (server, web)
}

#[test]
fn the_page_and_healthz_are_served_with_their_headers() {
    let (_server, web) = start(&[]);
    let (head, body) = http(web, &format!("GET / HTTP/1.1\r\nHost: {web}\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("Cache-Control: no-cache"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .unwrap_or_else(|| panic!("no CSP in {head}"));
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let page = String::from_utf8(body).expect("UTF-8 page");
    assert!(
        page.contains("<script type=\"module\" src=\"/app.js\">"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "no inline script");
    let (head, body) = http(web, &format!("GET /app.js HTTP/1.1\r\nHost: {web}\r\n\r\n"));
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(!body.is_empty());
    let (head, body) = http(
        web,
        &format!("GET /healthz HTTP/1.1\r\nHost: {web}\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, b"ok\n");
    let (head, _) = http(
        web,
        &format!("GET /nothing HTTP/1.1\r\nHost: {web}\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn handshake_errors_are_refused_with_their_status() {
    let (_server, web) = start(&[]);
    let good = upgrade_request(web, "");
    let cases = [
        (
            "bad key",
            good.replace(ws::KEY, "not-a-key"),
            "HTTP/1.1 400",
        ),
        (
            "wrong version",
            good.replace("Version: 13", "Version: 8"),
            "HTTP/1.1 426",
        ),
        (
            "missing upgrade",
            good.replace("Upgrade: websocket\r\n", ""),
            "HTTP/1.1 426",
        ),
        (
            "another site's page",
            upgrade_request(web, "Origin: http://evil.example\r\n"),
            "HTTP/1.1 403",
        ),
        (
            "not a request",
            "\u{1}\u{2}\u{3} garbage\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
    ];
    for (what, request, status) in cases {
        let (head, _) = http(web, &request);
        assert!(head.starts_with(status), "{what}: {head}");
    }
    let (head, _) = http(web, &good.replace("Version: 13", "Version: 8"));
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    // The page's own origin is welcome.
    let own = format!("Origin: http://{web}\r\n");
    assert!(Ws::try_open(web, &own).is_ok());
}

#[test]
fn a_browser_user_and_a_terminal_user_talk() {
    let (server, web) = start(&[]);
    let mut browser = Ws::user(web, "alice");
    let mut terminal = server.user("bob");
    assert_eq!(
        browser.cmd1("send bob hello from the browser"),
        "+ delivered"
    );
    let event = terminal.event();
    assert!(event.starts_with("* msg alice "), "{event}");
    assert!(event.ends_with(" hello from the browser"), "{event}");
    assert_eq!(
        terminal.cmd1("send alice hello from the terminal"),
        "+ delivered"
    );
    let event = browser.event();
    assert!(event.starts_with("* msg bob "), "{event}");
    assert!(event.ends_with(" hello from the terminal"), "{event}");
    assert_eq!(browser.cmd1("ping"), "+ pong");
}

#[test]
fn fragments_make_one_line_and_pings_get_pongs() {
    let (server, web) = start(&[]);
    let mut terminal = server.user("bob");
    let mut browser = Ws::user(web, "alice");
    browser.send_frame(TEXT, false, b"send bob ");
    browser.send_frame(PING, true, b"are you there");
    browser.send_frame(CONTINUATION, false, b"in ");
    browser.send_frame(CONTINUATION, true, b"pieces");
    assert_eq!(browser.frame(), Some((PONG, b"are you there".to_vec())));
    assert_eq!(browser.reply(), vec!["+ delivered"]);
    // Not UTF-8: the same answer as over TCP, and the session goes on.
    browser.send_frame(TEXT, true, b"send bob \xc3\x28");
    let reply = browser.reply();
    assert!(reply[0].starts_with("- BADUTF8 "), "{reply:?}");
    let event = terminal.event();
    assert!(
        event.starts_with("* msg alice ") && event.ends_with(" in pieces"),
        "{event}"
    );
}

/// Sends `frames` on a fresh WebSocket; the close frame that answers them.
fn refused(web: SocketAddr, frames: &[u8]) -> (u16, String) {
    let mut ws = Ws::open(web);
    ws.stream.write_all(frames).expect("write");
    let (lines, code, reason) = ws.until_close();
    assert!(lines.is_empty(), "{lines:?}");
    assert!(ws.ends(), "the connection stays open after its close frame");
    (code, reason)
}

#[test]
fn frames_a_browser_never_sends_are_answered_with_a_close_code() {
    let (server, web) = start(&["--max-line", "100"]);
    let binary = ws::client_frame(BINARY, true, b"\x00\x01\x02");
    assert_eq!(refused(web, &binary).0, 1003);
    // Past MAX_MESSAGE (1 MiB), announced in the header alone: no
    // payload needs to follow.
    let mut huge = ws::client_frame(TEXT, true, b"");
    huge[1] = 0x80 | 127;
    huge.splice(2..2, (1u64 << 40).to_be_bytes());
    let (code, reason) = refused(web, &huge);
    assert_eq!((code, reason.as_str()), (1009, "message too long"));
    let two_lines = ws::client_frame(TEXT, true, b"ping\nping");
    assert_eq!(refused(web, &two_lines).0, 1007);
    let mut unmasked = ws::client_frame(TEXT, true, b"ping");
    unmasked[1] &= 0x7f;
    unmasked.drain(2..6);
    assert_eq!(refused(web, &unmasked).0, 1002);
    let lone_continuation = ws::client_frame(CONTINUATION, true, b"ping");
    assert_eq!(refused(web, &lone_continuation).0, 1002);
    assert!(server.log().contains("WebSocket"));
}

#[test]
fn an_overlong_message_gets_toolong_as_over_tcp_and_the_session_goes_on() {
    let (server, web) = start(&["--max-line", "100"]);
    // Before login a line may be 512 bytes at most (as over TCP).
    let mut stranger = Ws::open(web);
    stranger.send(&"a".repeat(600));
    let reply = stranger.reply();
    assert!(reply[0].starts_with("- TOOLONG "), "{reply:?}");
    assert_eq!(stranger.cmd1("ping").split(' ').nth(1), Some("NOAUTH"));
    // Once logged in, --max-line applies: 99 bytes and the LF fit; in
    // fragments, with a ping between them, the same.
    let mut browser = Ws::user(web, "alice");
    let mut bob = server.user("bob");
    let fits = format!("send bob {}", "x".repeat(99 - 9));
    assert_eq!(browser.cmd1(&fits), "+ delivered");
    assert!(bob.event().ends_with(&"x".repeat(90)));
    browser.send(&format!("{fits}x"));
    let reply = browser.reply();
    assert!(reply[0].starts_with("- TOOLONG "), "{reply:?}");
    browser.send_frame(TEXT, false, fits.as_bytes());
    browser.send_frame(PING, true, b"still there?");
    browser.send_frame(CONTINUATION, true, &[b'y'; 5000]);
    assert_eq!(browser.frame(), Some((PONG, b"still there?".to_vec())));
    let reply = browser.reply();
    assert!(reply[0].starts_with("- TOOLONG "), "{reply:?}");
    assert_eq!(browser.cmd1("send bob short"), "+ delivered");
    let event = bob.event();
    assert!(event.ends_with(" short"), "{event}");
}

#[test]
fn goodbyes_arrive_as_close_codes_with_the_reason() {
    let (_server, web) = start(&["--login-timeout", "1"]);
    let mut quitter = Ws::user(web, "alice");
    quitter.send("quit");
    let (lines, code, reason) = quitter.until_close();
    assert_eq!(lines, vec!["+ bye"]);
    assert_eq!((code, reason.as_str()), (1000, "quit"));
    assert!(quitter.ends());
    let mut slow = Ws::open(web);
    let (lines, code, reason) = slow.until_close();
    assert_eq!(lines, vec!["* bye timeout"]);
    assert_eq!((code, reason.as_str()), (1008, "timeout"));
    // The client closing first gets its close answered.
    let mut closer = Ws::open(web);
    closer.send_frame(CLOSE, true, &1000u16.to_be_bytes());
    let (lines, code, _) = closer.until_close();
    assert_eq!((lines.len(), code), (0, 1000));
    // A second login of the same user replaces the first.
    let mut first = Ws::user(web, "carol");
    let mut second = Ws::open(web);
    assert!(second
        .cmd1("login carol password-carol")
        .starts_with("+ welcome carol"));
    let (lines, code, reason) = first.until_close();
    assert_eq!(lines, vec!["* bye replaced"]);
    assert_eq!((code, reason.as_str()), (1000, "replaced"));
}

#[test]
fn shutdown_says_goodbye_with_going_away() {
    let (mut server, web) = start(&[]);
    let mut browser = Ws::user(web, "alice");
    assert_eq!(browser.cmd1("ping"), "+ pong");
    let (status, _) = server.signal(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let (lines, code, reason) = browser.until_close();
    assert_eq!(lines, vec!["* bye shutdown"]);
    assert_eq!((code, reason.as_str()), (1001, "shutdown"));
}

#[test]
fn the_page_and_the_websocket_are_served_over_tls_with_the_tls_certificate() {
    let server = Server::start(&["--tls-self-signed", "localhost", "--web-tls", "127.0.0.1:0"]);
    let (_, fingerprint) = server.tls.clone().expect("a TLS listener");
    let web = server.web_tls.expect("natterd printed its https address");
    let mut browser = Ws::open_tls(web, &fingerprint);
    assert_eq!(
        browser.cmd1("register alice password-alice"),
        "+ registered alice"
    );
    let mut terminal = server.user("bob");
    // Long enough that frames span TLS records.
    let text = "t".repeat(3000);
    assert_eq!(terminal.cmd1(&format!("send alice {text}")), "+ delivered");
    let event = browser.event();
    assert!(
        event.starts_with("* msg bob ") && event.ends_with(&text),
        "{event}"
    );
    assert_eq!(browser.cmd1("send bob over wss"), "+ delivered");
    assert!(terminal.event().ends_with(" over wss"));
    browser.send("quit");
    let (lines, code, reason) = browser.until_close();
    assert_eq!(lines, vec!["+ bye"]);
    assert_eq!((code, reason.as_str()), (1000, "quit"));
    // Plain HTTP on the TLS port gets a TLS alert, never the page.
    let mut plain = TcpStream::connect_timeout(&web, TIMEOUT).expect("connect");
    plain.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    plain
        .write_all(format!("GET / HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes())
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}

#[test]
fn the_per_address_limit_covers_web_connections_too() {
    let (server, web) = start(&["--max-per-ip", "2"]);
    let _a = server.connect();
    let _b = Ws::open(web);
    let (head, body) = http(web, &format!("GET / HTTP/1.1\r\nHost: {web}\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(body, b"busy\n");
}

#[test]
fn a_websocket_reader_that_never_reads_is_dropped_and_others_are_unaffected() {
    let _serial = serial();
    let (server, web) = start(&["--max-outbuf", "65536"]);
    let mut alice = server.user("alice");
    let mut carol = server.user("carol");
    // A small receive window, never read after login: kernel buffers fill,
    // then its output passes --max-outbuf.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .connect_timeout(&web.into(), TIMEOUT)
        .expect("connect");
    let mut slow =
        Ws::upgrade_on(TcpStream::from(socket), &upgrade_request(web, "")).expect("upgraded");
    // Its greeting and this reply are the last it reads.
    assert_eq!(
        slow.cmd1("register slow password-slow"),
        "+ registered slow"
    );
    let text = "z".repeat(4000);
    let baseline = carol.ping_baseline();
    let started = Instant::now();
    let mut dropped = false;
    for round in 0..5000 {
        let reply = alice.cmd1(&format!("broadcast {text}"));
        if reply == "+ sent to 1" {
            dropped = true;
            break;
        }
        assert_eq!(reply, "+ sent to 2", "round {round}");
        assert!(carol.event().ends_with(&text));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still not dropped"
        );
    }
    assert!(
        dropped,
        "the WebSocket reader that never reads was never dropped"
    );
    let ping = carol.ping();
    assert!(
        ping < stall_bound(baseline),
        "ping {ping:?}, baseline {baseline:?}"
    );
    assert!(server.log().contains("output backlog"));
    // What it had been sent ends cut off, with no close frame after it.
    let mut rest = Vec::new();
    let _ = slow.stream.read_to_end(&mut rest);
}

#[test]
fn a_silent_socket_is_pinged_and_one_that_never_answers_is_closed() {
    // Pings after 1 s of silence here (30 s by default).
    let (server, web) = start(&["--web-keepalive", "1"]);
    let mut answering = Ws::user(web, "alice");
    let mut silent = Ws::user(web, "bob");
    let started = Instant::now();
    // One that answers its pings stays, well past two silent periods.
    let mut pongs = 0;
    while started.elapsed() < Duration::from_secs(4) {
        match answering.frame() {
            Some((PING, payload)) => {
                answering.send_frame(PONG, true, &payload);
                pongs += 1;
            }
            other => panic!("expected pings, got {other:?}"),
        }
    }
    assert!(pongs >= 2, "{pongs} pings in 4 s");
    assert_eq!(answering.cmd1("ping"), "+ pong");
    // One that never answers got its ping and was closed after another
    // silent second (no close frame: it is not listening).
    assert_eq!(silent.frame().map(|(op, _)| op), Some(PING));
    assert!(silent.frame().is_none(), "still open");
    let log = server.log();
    assert!(log.contains("no answer to ping"), "{log}");
}
