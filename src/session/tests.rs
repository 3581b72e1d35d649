//! The session's rules, driven without sockets through `crate::sim`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Sim, PASSWORD};

fn sim() -> Sim {
    Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20))
}

/// A connection logged in as `user`, its greeting and welcome consumed.
fn logged_in(sim: &mut Sim, user: &str) -> usize {
    let token = sim.connect();
    sim.send(token, format!("login {user} {PASSWORD}\n").as_bytes());
    assert!(sim.finish_job(0));
    sim.drain(token, usize::MAX);
    assert!(
        sim.output(token).contains("+ welcome"),
        "{}",
        sim.output(token)
    );
    sim.conns[token].socket.written.clear();
    token
}

#[test]
fn a_late_job_holds_back_the_replies_after_it() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"send bob hi\nping\n");
    assert_eq!(
        sim.output(alice),
        "",
        "ping must wait for the send before it"
    );
    assert!(sim.finish_job(0));
    assert_eq!(sim.output(alice), "+ stored\n+ pong\n");
}

#[test]
fn lines_after_a_login_wait_for_its_answer() {
    let mut sim = sim();
    let token = sim.connect();
    sim.send(
        token,
        format!("login alice {PASSWORD}\nwhoelse\n").as_bytes(),
    );
    sim.drain(token, usize::MAX);
    // Were whoelse handled now, it would get NOAUTH.
    assert_eq!(sim.output(token), "");
    assert!(sim.finish_job(0));
    let out = sim.output(token);
    assert!(out.starts_with("+ welcome alice"), "{out}");
    assert!(out.ends_with("+ 0 online\n"), "{out}");
}

#[test]
fn an_event_never_lands_inside_a_reply() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    let bob = logged_in(&mut sim, "bob");
    sim.send(bob, b"history 5\n");
    // Alice's broadcast is queued for bob while his history is read.
    sim.send(alice, b"broadcast hello\n");
    assert!(sim.finish_job(0));
    sim.drain(bob, usize::MAX);
    let out = sim.output(bob);
    let event = out.find("* broadcast").expect("event");
    let reply_end = out.find("+ 3 messages").expect("reply");
    let first_data = out.find("= ").expect("data");
    assert!(event < first_data || event > reply_end, "{out}");
}

#[test]
fn the_turn_limit_leaves_the_rest_for_the_next_pass() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.next_pass();
    let burst = "ping\n".repeat(MAX_LINES_PER_TURN + 10);
    sim.send(alice, burst.as_bytes());
    assert_eq!(sim.output(alice).lines().count(), MAX_LINES_PER_TURN);
    sim.next_pass();
    assert_eq!(sim.output(alice).lines().count(), MAX_LINES_PER_TURN + 10);
}

#[test]
fn a_large_fan_out_counts_against_the_turn_by_its_size() {
    // 2 * DELIVERIES_PER_LINE listeners: each broadcast queues that many
    // lines and costs 1 + 2 lines of its sender's turn, so a burst of them
    // is handled a third as fast per pass as pings are, and a pass queues
    // at most a turn's worth of deliveries, not 64 broadcasts' worth.
    let listeners = 2 * DELIVERIES_PER_LINE;
    let names: Vec<String> = (0..=listeners).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&refs, Sim::limits(4096, 1 << 20));
    let sender = logged_in(&mut sim, "u0");
    for name in &names[1..] {
        logged_in(&mut sim, name);
    }
    sim.next_pass();
    let burst = "broadcast hi\n".repeat(MAX_LINES_PER_TURN);
    sim.send(sender, burst.as_bytes());
    let handled = sim.output(sender).lines().count();
    assert_eq!(
        handled,
        MAX_LINES_PER_TURN.div_ceil(3),
        "{}",
        sim.output(sender)
    );
    // The rest, in later passes, all answered.
    for _ in 0..3 {
        sim.next_pass();
    }
    assert_eq!(sim.output(sender).lines().count(), MAX_LINES_PER_TURN);
}

#[test]
fn input_waits_while_output_is_backed_up_and_resumes_when_it_drains() {
    let mut sim = Sim::new(&["alice"], Sim::limits(4096, 64));
    let alice = logged_in(&mut sim, "alice");
    sim.conns[alice].socket.accept = 0;
    sim.send(alice, "whoelse\n".repeat(30).as_bytes());
    let held = sim.conns[alice].session.buffered_input();
    assert!(held > 0, "nothing held back");
    sim.drain(alice, usize::MAX);
    sim.next_pass();
    assert_eq!(sim.conns[alice].session.buffered_input(), 0);
    assert_eq!(sim.output(alice).matches("+ 0 online").count(), 30);
}

#[test]
fn a_reader_that_never_reads_is_dropped_and_its_direct_messages_go_back() {
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 256));
    let alice = logged_in(&mut sim, "alice");
    let bob = logged_in(&mut sim, "bob");
    sim.conns[bob].socket.accept = 0;
    for _ in 0..10 {
        sim.send(alice, format!("send bob {}\n", "x".repeat(60)).as_bytes());
        while let Some(i) = sim.jobs.iter().position(|j| j.reply_to.is_some()) {
            sim.finish_job(i);
        }
    }
    assert!(
        sim.conns[bob].reaped,
        "bob should have been dropped as slow"
    );
    let back: usize = sim
        .jobs
        .iter()
        .map(|j| match &j.job.work {
            crate::commands::Work::Store(crate::store::StoreRequest::MarkUnread { ids }) => {
                ids.len()
            }
            _ => 0,
        })
        .sum();
    assert!(back > 0, "unwritten messages must go back to the inbox");
}

#[test]
fn quit_ignores_later_lines_and_closes_after_the_reply() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"ping\nquit\nping\n");
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice), "+ pong\n+ bye\n");
    assert!(sim.conns[alice].reaped);
}

#[test]
fn a_last_line_without_lf_counts_at_eof() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"ping");
    sim.hang_up(alice);
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice), "+ pong\n");
    assert!(sim.conns[alice].reaped);
}

#[test]
fn shutdown_answers_what_is_in_flight_then_says_bye() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"send bob hi\n");
    sim.shutdown();
    sim.send(alice, b"ping\n");
    assert!(sim.finish_job(0));
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice), "+ stored\n* bye shutdown\n");
}

#[test]
fn timers_log_strangers_and_idlers_out() {
    let mut sim = sim();
    let stranger = sim.connect();
    let alice = logged_in(&mut sim, "alice");
    sim.advance(Duration::from_secs(61));
    sim.drain(stranger, usize::MAX);
    assert_eq!(sim.output(stranger), "* bye timeout\n");
    assert_eq!(sim.output(alice), "");
    sim.advance(Duration::from_secs(1800));
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice), "* bye idle\n");
}

#[test]
fn overlong_lines_and_bad_bytes_get_one_error_each() {
    let mut sim = Sim::new(&["alice"], Sim::limits(64, 1 << 20));
    let alice = logged_in(&mut sim, "alice");
    let mut input = "x".repeat(100).into_bytes();
    // 0xfe is not UTF-8; 0xff is telnet's IAC, dropped before parsing.
    input.extend_from_slice(b"\n\xfe\n \t\nping\x07\n\xffping\n");
    sim.send(alice, &input);
    sim.drain(alice, usize::MAX);
    assert_eq!(
        sim.output(alice),
        "- TOOLONG line longer than 64 bytes discarded\n\
         - BADUTF8 line is not valid UTF-8\n\
         - BADTEXT control characters are not allowed\n\
         + pong\n"
    );
}

const TWO_A_SECOND: Rate = Rate {
    per_sec: 2.0,
    burst: 3,
};
const UNLIMITED: Rate = Rate {
    per_sec: 0.0,
    burst: 1,
};

#[test]
fn rate_bucket_allows_a_burst_then_says_when_the_next_token_comes() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut b = RateBucket::new(TWO_A_SECOND, t0);
    assert_eq!(b.take(TWO_A_SECOND, 1, t0), Ok(()));
    assert_eq!(b.take(TWO_A_SECOND, 1, t0), Ok(()));
    assert_eq!(b.take(TWO_A_SECOND, 1, t0), Ok(()));
    assert_eq!(b.take(TWO_A_SECOND, 1, t0), Err(t0 + ms(500)));
    assert_eq!(b.take(TWO_A_SECOND, 1, t0 + ms(500)), Ok(()));
    // A costly command goes through whole and is paid for by the wait after it.
    let t1 = t0 + Duration::from_secs(100);
    assert_eq!(b.take(TWO_A_SECOND, 5, t1), Ok(()));
    assert_eq!(b.take(TWO_A_SECOND, 1, t1), Err(t1 + ms(1500)));
    // Refill is capped at the burst.
    let later = t1 + Duration::from_secs(100);
    assert!((0..3).all(|_| b.take(TWO_A_SECOND, 1, later).is_ok()));
    assert!(b.take(TWO_A_SECOND, 1, later).is_err());
}

#[test]
fn rate_zero_means_unlimited() {
    let t0 = Instant::now();
    let mut b = RateBucket::new(UNLIMITED, t0);
    assert!((0..10_000).all(|_| b.take(UNLIMITED, 1_000, t0).is_ok()));
}

#[test]
fn over_its_rate_a_session_waits_and_answers_every_line() {
    let limits = Limits {
        rate: Rate {
            per_sec: 10.0,
            burst: 3,
        },
        ..Sim::limits(4096, 1 << 20)
    };
    let mut sim = Sim::new(&["alice", "bob"], limits);
    let alice = logged_in(&mut sim, "alice");
    sim.advance(Duration::from_secs(1));
    sim.conns[alice].socket.written.clear();
    sim.send(alice, "ping\n".repeat(10).as_bytes());
    assert_eq!(
        sim.output(alice).lines().count(),
        3,
        "the burst goes at once"
    );
    for _ in 0..7 {
        sim.advance(Duration::from_millis(100));
    }
    sim.drain(alice, usize::MAX);
    assert_eq!(
        sim.output(alice),
        "+ pong\n".repeat(10),
        "then one per token"
    );
    assert!(!sim.conns[alice].reaped);
    // A list broadcast costs a token per name: the ping after it waits.
    sim.advance(Duration::from_secs(1));
    sim.conns[alice].socket.written.clear();
    sim.send(alice, b"broadcast user bob x y z w message hi\nping\n");
    assert!(sim.finish_job(0));
    assert!(sim.output(alice).ends_with("+ sent to 1 of 5\n"));
    sim.advance(Duration::from_millis(200));
    assert!(!sim.output(alice).contains("pong"), "paid for 5 names");
    sim.advance(Duration::from_millis(300));
    assert!(sim.output(alice).ends_with("+ pong\n"));
}

#[test]
fn replies_are_released_in_command_order() {
    let mut order = ReplyOrder::default();
    let mut out = Vec::new();
    let a = order.begin();
    let b = order.begin();
    let c = order.begin();
    order.finish(b, b"B".to_vec(), |r: Vec<u8>| out.extend_from_slice(&r));
    order.finish(c, b"C".to_vec(), |r: Vec<u8>| out.extend_from_slice(&r));
    assert!(out.is_empty());
    assert_eq!(order.outstanding(), 3);
    order.finish(a, b"A".to_vec(), |r: Vec<u8>| out.extend_from_slice(&r));
    assert_eq!(out, b"ABC");
    assert_eq!(order.outstanding(), 0);
    // A stale or duplicate completion is ignored.
    order.finish(a, b"again".to_vec(), |r: Vec<u8>| out.extend_from_slice(&r));
    assert_eq!(out, b"ABC");
}

/// A TLS client talking to a TLS session through the scripted socket.
struct TlsPeer {
    client: rustls::ClientConnection,
    plaintext: Vec<u8>,
}

impl TlsPeer {
    fn new(dir: &std::path::Path) -> (TlsPeer, Transport) {
        let (cert, key) =
            crate::tls::self_signed(dir, &["localhost".to_string()]).expect("certificate");
        let setup = crate::tls::load(&cert, &key).expect("load certificate");
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .expect("read certificate")
            .next()
            .expect("one certificate")
            .expect("PEM");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("trust the certificate");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let client =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let server = rustls::ServerConnection::new(setup.config).expect("server");
        let peer = TlsPeer {
            client,
            plaintext: Vec::new(),
        };
        (peer, Transport::Tls(Box::new(server)))
    }

    /// Moves records both ways until neither side has anything to say,
    /// with the server's socket taking at most `budget` bytes per round.
    fn pump(&mut self, sim: &mut Sim, token: usize, budget: usize) {
        for _ in 0..10_000 {
            let mut to_server = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut to_server).expect("client write");
            }
            sim.send(token, &to_server);
            sim.drain(token, budget);
            let from_server = std::mem::take(&mut sim.conns[token].socket.written);
            if !from_server.is_empty() {
                self.client
                    .read_tls(&mut &from_server[..])
                    .expect("client read");
                self.client.process_new_packets().expect("client TLS");
                let _ = self.client.reader().read_to_end(&mut self.plaintext);
            }
            if to_server.is_empty() && from_server.is_empty() {
                return;
            }
        }
    }

    fn say(&mut self, line: &str) {
        self.client
            .writer()
            .write_all(line.as_bytes())
            .expect("client plaintext");
    }
}

#[test]
fn a_tls_session_that_meets_would_block_keeps_asking_to_write_until_all_is_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = sim();
    sim.history_rows = 2000;
    let (mut peer, transport) = TlsPeer::new(dir.path());
    let token = sim.connect_with(transport);
    peer.say(&format!("login alice {PASSWORD}\nhistory 1000\n"));
    // The handshake and the login, through a socket that takes 100 bytes at a time.
    peer.pump(&mut sim, token, 100);
    assert!(sim.finish_job(0), "login job");
    assert!(sim.finish_job(0), "history job");
    // The reply is ~40 KB in parts of 100 rows; the socket takes 700
    // bytes per round, then would block. Whenever bytes remain, the
    // session must still want to write, or the reactor would never ask
    // for the WRITABLE edge that resumes it.
    for _ in 0..10_000 {
        let before = peer.plaintext.len();
        peer.pump(&mut sim, token, 700);
        let text = String::from_utf8_lossy(&peer.plaintext);
        if text.contains("+ 1000 messages") {
            break;
        }
        // The next part, once asked for.
        sim.finish_job(0);
        assert!(
            sim.conns[token].session.wants_write() || peer.plaintext.len() > before,
            "stalled with {} plaintext bytes out",
            peer.plaintext.len()
        );
        sim.drain(token, 0);
    }
    let text = String::from_utf8_lossy(&peer.plaintext);
    assert!(text.starts_with("+ welcome alice"), "{text:.80}");
    assert!(
        text.ends_with("+ 1000 messages\n"),
        "{}",
        &text[text.len().saturating_sub(80)..]
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("= ")).count(), 1000);
}

#[test]
fn input_left_in_the_socket_behind_a_full_buffer_is_read_once_the_barrier_lifts() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    let mut burst = String::from("inbox\n");
    for _ in 0..40 {
        burst.push_str(&format!("ping {}\n", "x".repeat(3000)));
    }
    sim.send(alice, burst.as_bytes());
    assert!(
        !sim.conns[alice].socket.incoming.is_empty(),
        "the burst should not fit the input buffer"
    );
    // The inbox answer lifts the barrier; no new bytes arrive after it.
    assert!(sim.finish_job(0));
    sim.next_pass();
    let out = sim.output(alice);
    assert_eq!(out.lines().count(), 41, "{}", &out[..out.len().min(200)]);
}

#[test]
fn blank_lines_count_against_the_turn() {
    let mut sim = sim();
    let stranger = sim.connect();
    sim.next_pass();
    sim.send(stranger, &vec![b'\n'; 200_000]);
    assert!(
        !sim.conns[stranger].socket.incoming.is_empty(),
        "one turn must not swallow a flood of blank lines"
    );
    sim.settle_all();
    assert!(sim.conns[stranger].socket.incoming.is_empty());
    assert_eq!(sim.output(stranger), "");
}

#[test]
fn quit_takes_the_user_offline() {
    let mut sim = sim();
    let bob = logged_in(&mut sim, "bob");
    assert_eq!(sim.chat.online_count(), 1);
    sim.send(bob, b"quit\n");
    assert_eq!(sim.output(bob), "+ bye\n");
    assert_eq!(sim.chat.online_count(), 0);
}

#[test]
fn history_is_read_only_after_the_sessions_earlier_writes_are_answered() {
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"send bob hi\nhistory 5\n");
    let pending: Vec<bool> = sim
        .jobs
        .iter()
        .map(|j| matches!(j.job.cont, Cont::History(_)))
        .collect();
    assert_eq!(pending, vec![false], "history must wait for the send");
    assert!(sim.finish_job(0));
    assert!(matches!(sim.jobs[0].job.cont, Cont::History(_)));
    assert!(sim.finish_job(0));
    assert!(sim.output(alice).starts_with("+ stored\n= "));
}

#[test]
fn an_idle_session_stays_small() {
    // Every session online is a slab entry of this size (issue 16: about a
    // third of an idle session's memory); it must not grow unnoticed (a job
    // kept inline once added 200 bytes, the output's two queues inline 48).
    assert!(
        std::mem::size_of::<Session>() <= 264,
        "Session is {} bytes",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn a_session_over_its_share_of_the_store_queue_waits_and_loses_nothing() {
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(64 * 1024, 1 << 20));
    let alice = logged_in(&mut sim, "alice");
    let names: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
    let line = format!(
        "broadcast user bob {} message {}\n",
        names.join(" "),
        "x".repeat(8000)
    );
    sim.send(alice, line.repeat(30).as_bytes());
    // Each waits with ~21 KB queued: the share admits about a dozen.
    let queued = sim.jobs.len();
    assert!((10..=14).contains(&queued), "{queued} jobs queued at once");
    sim.settle_all();
    let out = sim.output(alice);
    assert_eq!(out.matches("+ sent to 1 of 201").count(), 30);
}

#[test]
fn a_long_history_goes_out_a_part_at_a_time_with_events_after_it() {
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20));
    sim.history_rows = 1000;
    // 1 KB rows: a part (100 rows) is more than `PART_LOW_WATER`.
    sim.history_padding = 1000;
    let alice = logged_in(&mut sim, "alice");
    let bob = logged_in(&mut sim, "bob");
    // bob's socket takes nothing: he does not read.
    sim.conns[bob].socket.accept = 0;
    sim.send(bob, b"history 1000\n");
    assert!(sim.finish_job(0), "the first part is read");
    assert!(
        sim.jobs.is_empty(),
        "the next part waits until bob takes most of the first"
    );
    // Events meanwhile wait behind the reply.
    sim.send(alice, b"broadcast hello\n");
    let held = sim.conns[bob].session.pending_output();
    assert!(
        held < 120 * 1024,
        "bob holds {held} bytes: more than a part"
    );
    // bob reads; each part is asked for once the last has mostly left.
    let mut parts = 1;
    for _ in 0..100 {
        sim.drain(bob, usize::MAX);
        if !sim.finish_job(0) {
            break;
        }
        parts += 1;
    }
    assert_eq!(
        parts,
        10,
        "1000 rows in parts of {}",
        commands::HISTORY_PAGE
    );
    let out = sim.output(bob);
    let end = out.find("+ 1000 messages").expect("completion");
    let event = out.find("* broadcast alice").expect("the broadcast");
    assert!(event > end, "the event landed inside the reply");
    assert_eq!(
        out[..end].lines().filter(|l| l.starts_with("= ")).count(),
        1000
    );
    assert!(out[..end].lines().all(|l| l.starts_with("= ")));
}

#[test]
fn a_long_whoelse_goes_out_a_page_at_a_time_in_name_order() {
    const USERS: usize = 2500;
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = Sim::new(&refs, Sim::limits(4096, 1 << 20));
    let tokens: Vec<usize> = names.iter().map(|n| logged_in(&mut sim, n)).collect();
    let asker = tokens[0];
    for command in ["whoelse", "wholast 10"] {
        sim.conns[asker].socket.written.clear();
        sim.send(asker, format!("{command}\n").as_bytes());
        assert_eq!(
            sim.output(asker),
            "",
            "{command} of {USERS} goes out in pages"
        );
        let mut pages = 0;
        while sim.finish_job(0) {
            pages += 1;
            sim.drain(asker, usize::MAX);
        }
        assert_eq!(
            pages,
            3,
            "{command}: {USERS} names in pages of {}",
            commands::WHO_PAGE
        );
        let out = sim.output(asker);
        let lines: Vec<&str> = out.lines().collect();
        let data: Vec<&str> = lines[..lines.len() - 1]
            .iter()
            .map(|l| l.trim_start_matches("= ").split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            data,
            refs[1..],
            "{command}: every other user once, in name order"
        );
        let done = lines[lines.len() - 1];
        assert!(
            done.starts_with(&format!("+ {} ", USERS - 1)),
            "{command}: {done}"
        );
    }
}

/// Regression: telnet's Ctrl-C (IAC IP, IAC DO TIMING-MARK) got `BADUTF8`
/// and no timing-mark answer, after which telnet showed nothing.
#[test]
fn telnet_ctrl_c_discards_the_line_and_is_answered_without_badutf8() {
    let mut sim = Sim::new(&["alice"], Sim::limits(64, 1 << 20));
    let alice = logged_in(&mut sim, "alice");
    sim.send(alice, b"send bob half-typed\xff\xf4\xff\xfd\x06");
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.raw_output(alice), b"\xff\xfb\x06".to_vec());
    sim.send(alice, b"ping\r\n");
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice), "+ pong\n");
}

#[test]
fn a_tls_reader_dropped_as_slow_gets_back_only_what_never_reached_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = sim();
    let alice = logged_in(&mut sim, "alice");
    let (mut peer, transport) = TlsPeer::new(dir.path());
    let bob = sim.connect_with(transport);
    peer.say(&format!("login bob {PASSWORD}\n"));
    peer.pump(&mut sim, bob, usize::MAX);
    assert!(sim.finish_job(0), "login job");
    peer.pump(&mut sim, bob, usize::MAX);
    assert!(String::from_utf8_lossy(&peer.plaintext).contains("+ welcome bob"));
    sim.conns[bob].socket.accept = 0;
    // bob is on a slow link: messages come a little faster than it takes
    // them, so rustls always holds records not yet written, while those
    // before them have reached bob.
    let pad = "p".repeat(200);
    for round in 0..30 {
        for k in [2 * round, 2 * round + 1] {
            sim.send(alice, format!("send bob m{k}: {pad}\n").as_bytes());
            assert!(sim.finish_job(0), "the send's commit");
        }
        sim.drain(bob, 400);
        let from_server = std::mem::take(&mut sim.conns[bob].socket.written);
        peer.client
            .read_tls(&mut &from_server[..])
            .expect("client read");
        peer.client.process_new_packets().expect("client TLS");
        let _ = peer.client.reader().read_to_end(&mut peer.plaintext);
    }
    let text = String::from_utf8_lossy(&peer.plaintext).into_owned();
    let received: Vec<i64> = text
        .lines()
        .filter_map(|l| {
            l.split(' ')
                .find(|w| w.starts_with('m') && w.ends_with(':'))
        })
        .filter_map(|w| w[1..w.len() - 1].parse().ok())
        .collect();
    assert!(
        !received.is_empty(),
        "the link took nothing: proves nothing"
    );
    // Dropped as slow: what it never wrote goes back to the inbox.
    let (pushes, _) = sim.conns[bob].session.take_unsent();
    // Message k has id k + 2 in the fake store.
    let back: Vec<i64> = pushes.iter().map(|id| id - 2).collect();
    let twice: Vec<&i64> = received.iter().filter(|k| back.contains(k)).collect();
    assert!(
        twice.is_empty(),
        "{} messages bob's client got would go back to his inbox (received {}, back {})",
        twice.len(),
        received.len(),
        back.len()
    );
    let lost: Vec<i64> = (0..60)
        .filter(|k| !received.contains(k) && !back.contains(k))
        .collect();
    assert!(lost.is_empty(), "neither received nor back: {lost:?}");
}

#[test]
fn a_replaced_session_gets_no_event_inside_a_reply_in_parts() {
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20));
    sim.history_rows = 1000;
    sim.history_padding = 1000;
    let bob = logged_in(&mut sim, "bob");
    sim.conns[bob].socket.accept = 0;
    sim.send(bob, b"history 1000\n");
    assert!(sim.finish_job(0), "the first part is read");
    // bob logs in again elsewhere: the first session is replaced.
    let again = sim.connect();
    sim.send(again, format!("login bob {PASSWORD}\n").as_bytes());
    assert!(sim.finish_job(0));
    sim.drain(bob, usize::MAX);
    let out = sim.output(bob);
    let mut in_reply = false;
    for line in out.lines() {
        match line.as_bytes().first() {
            Some(b'=') => in_reply = true,
            Some(b'+' | b'-') => in_reply = false,
            Some(b'*') => assert!(!in_reply, "event inside a reply: {line:?}"),
            _ => {}
        }
    }
}

#[test]
fn a_long_broadcast_shared_by_several_sessions_reaches_each_whole_through_short_writes() {
    let mut sim = Sim::new(&["alice", "bob", "carol"], Sim::limits(4096, 1 << 20));
    let alice = logged_in(&mut sim, "alice");
    let bob = logged_in(&mut sim, "bob");
    let carol = logged_in(&mut sim, "carol");
    for reader in [bob, carol] {
        sim.conns[reader].socket.accept = 0;
    }
    // Long enough to be queued by reference; bob asks something in between,
    // so his reply sits between two shared lines in his output.
    let text = "x".repeat(2 * SHARE_MIN_LINE);
    sim.send(alice, format!("broadcast 1{text}\n").as_bytes());
    sim.send(bob, b"ping\n");
    sim.send(alice, format!("broadcast 2{text}\n").as_bytes());
    assert!(
        sim.conns[bob].session.pending_output() > 4 * SHARE_MIN_LINE,
        "the lines never reached bob's output"
    );
    // Each socket takes a different odd number of bytes per write.
    for cut in [7, 13, 101, 997] {
        sim.drain(bob, cut);
        sim.drain(carol, cut + 3);
    }
    sim.drain(bob, usize::MAX);
    sim.drain(carol, usize::MAX);
    for (who, want_pong) in [(bob, true), (carol, false)] {
        let out = sim.output(who);
        let lines: Vec<&str> = out.lines().collect();
        let events: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("* broadcast"))
            .collect();
        assert_eq!(events.len(), 2, "{out}");
        assert!(events[0].ends_with(&format!(" 1{text}")), "{out}");
        assert!(events[1].ends_with(&format!(" 2{text}")), "{out}");
        assert_eq!(lines.contains(&"+ pong"), want_pong, "{out}");
        assert_eq!(lines.len(), 2 + usize::from(want_pong), "{out}");
    }
}

#[test]
fn an_idle_session_keeps_no_buffers() {
    // Issue 16: what an idle session keeps is multiplied by every session
    // online. Once its replies are written it holds no input, output or
    // reply-queue allocation, whatever its last burst needed.
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(64 * 1024, 1 << 20));
    let alice = logged_in(&mut sim, "alice");
    let bob = logged_in(&mut sim, "bob");
    assert_eq!(sim.conns[alice].session.buffer_capacity(), 0);
    sim.send(alice, "ping\n".repeat(50).as_bytes());
    sim.send(alice, format!("send bob {}\n", "x".repeat(3000)).as_bytes());
    sim.settle_all();
    sim.drain(alice, usize::MAX);
    assert_eq!(sim.output(alice).matches("+ pong").count(), 50);
    // Replies written: nothing kept.
    assert_eq!(sim.conns[alice].session.buffer_capacity(), 0);
    // The receiver's stored message reached the kernel and was reported:
    // nothing of its delivery stays behind either.
    sim.drain(bob, usize::MAX);
    sim.settle_all();
    assert!(
        sim.output(bob).contains("* msg alice"),
        "{}",
        sim.output(bob)
    );
    // Events written: the output stays allocated until the reactor's
    // moment passes (a busy receiver would need it again at once).
    assert!(sim.conns[bob].session.output_spent());
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.conns[bob].session.buffer_capacity(), 0);
}
