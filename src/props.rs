//! Property tests (proptest) for what every byte from the network goes
//! through: the connection state machine (framing, reply order, barriers,
//! turns, backpressure) driven through `crate::sim` with input split and
//! jobs finished in any order, parsing, and the line encoder. They run in
//! the normal test suite; `fuzz/` drives the same machine with
//! coverage-guided fuzzers.

use std::io::IoSlice;
use std::rc::Rc;
use std::time::Duration;

use proptest::prelude::*;

use crate::commands;
use crate::protocol;
use crate::session::{Output, MAX_IN_FLIGHT, MAX_LINES_PER_TURN, MAX_WRITE_PIECES};
use crate::sim::{Sim, PASSWORD};

/// Splits `bytes` at the given (unsorted, possibly repeated) points.
fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(bytes[start..cut].to_vec());
        start = cut;
    }
    pieces.push(bytes[start..].to_vec());
    pieces
}

/// Byte streams that look like protocol traffic often enough to reach deep
/// into framing: mostly printable, with LFs, CRs and bytes of every kind.
fn traffic() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::num::u8::ANY.prop_map(|b| b' ' + b % 95),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => prop::num::u8::ANY,
        ],
        0..400,
    )
}

/// Checks the invariant of everything the server writes: lines of one sigil,
/// a space, and no control characters, each ending in LF.
fn assert_wire_lines(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("server output is UTF-8");
    if text.is_empty() {
        return;
    }
    assert!(text.ends_with('\n'), "{text:?}");
    for line in text[..text.len() - 1].split('\n') {
        let mut chars = line.chars();
        let sigil = chars.next().expect("empty line");
        assert!(matches!(sigil, '+' | '-' | '=' | '*'), "{line:?}");
        assert_eq!(chars.next(), Some(' '), "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}

/// One step of a client's and the server's life, in any order.
#[derive(Clone, Debug)]
enum Op {
    /// Alice's client sends the next `n` bytes of her script.
    Send(usize),
    /// Bob's client sends a line.
    Bob(&'static str),
    /// A background job (picked by index) finishes.
    Finish(usize),
    /// Alice's socket takes `n` more bytes.
    Drain(usize),
    /// A new loop pass.
    Pass,
    /// A second goes by.
    Tick,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1usize..40).prop_map(Op::Send),
            1 => prop_oneof![Just("send alice hey"), Just("broadcast all"), Just("ping")].prop_map(Op::Bob),
            4 => any::<usize>().prop_map(Op::Finish),
            2 => (0usize..200).prop_map(Op::Drain),
            1 => Just(Op::Pass),
            1 => Just(Op::Tick),
        ],
        0..120,
    )
}

/// Alice's command lines; each has a completion that tells which it was.
fn commands_script() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop_oneof![
            Just("ping"),
            Just("whoelse"),
            Just("history 3"),
            Just("send bob hi"),
            Just("broadcast hi all"),
            Just("inbox"),
            Just("wholast 5"),
            Just("dance"),
            Just("block bob"),
            Just("   "),
        ],
        0..40,
    )
}

/// The completion a command line must get, as the start of its `+`/`-` line.
fn expected_completion(line: &str) -> Option<&'static str> {
    Some(match line.split(' ').next().unwrap_or("") {
        "ping" => "+ pong",
        "whoelse" => "+ 1 online",
        "history" => "+ 3 messages",
        "send" => "+ delivered",
        "broadcast" => "+ sent to",
        "inbox" => "+ 0 unread",
        "wholast" => "+ 1 users",
        "dance" => "- BADCMD",
        "block" => "+ blocked bob",
        _ => return None,
    })
}

/// Splits a client's output into completions and checks the shape rules:
/// every line clean, `=` lines followed by their completion with no event
/// in between.
fn completions(out: &str) -> Vec<String> {
    assert_wire_lines(out.as_bytes());
    let mut done = Vec::new();
    let mut in_reply = false;
    for line in out.lines() {
        match line.as_bytes().first() {
            Some(b'=') => in_reply = true,
            Some(b'*') => assert!(!in_reply, "event inside a reply:\n{out}"),
            Some(b'+' | b'-') => {
                in_reply = false;
                done.push(line.to_string());
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    done
}

proptest! {
    #[test]
    fn every_command_gets_one_completion_in_order_whatever_the_interleaving(
        script in commands_script(),
        ops in ops(),
    ) {
        let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20));
        let alice = sim.connect();
        let bob = sim.connect();
        let mut input = format!("login alice {PASSWORD}\n");
        for line in &script {
            input.push_str(line);
            input.push('\n');
        }
        let input = input.into_bytes();
        sim.send(bob, format!("login bob {PASSWORD}\n").as_bytes());
        while sim.finish_job(0) {}
        let mut sent = 0;
        for op in ops {
            match op {
                Op::Send(n) => {
                    let end = (sent + n).min(input.len());
                    sim.send(alice, &input[sent..end]);
                    sent = end;
                }
                Op::Bob(line) => sim.send(bob, format!("{line}\n").as_bytes()),
                Op::Finish(i) => { sim.finish_job(i); }
                Op::Drain(n) => sim.drain(alice, n),
                Op::Pass => sim.next_pass(),
                Op::Tick => sim.advance(Duration::from_secs(1)),
            }
            let session = &sim.conns[alice].session;
            prop_assert!(session.buffered_input() <= 4096 + crate::session::INBUF_SLACK_LOGGED_IN);
            // Held input stops growing output: at most the backlog limit
            // plus the replies of the commands already in flight.
            prop_assert!(session.pending_output() <= (1 << 20) + MAX_IN_FLIGHT * 4096);
            prop_assert!(sim.breaches.is_empty(), "{:?}", sim.breaches);
        }
        sim.send(alice, &input[sent..]);
        sim.settle_all();
        prop_assert!(sim.breaches.is_empty(), "{:?}", sim.breaches);
        let got = completions(&sim.output(alice));
        let want: Vec<&str> = std::iter::once("+ welcome alice")
            .chain(script.iter().filter_map(|l| expected_completion(l)))
            .collect();
        prop_assert_eq!(got.len(), want.len(), "completions: {:?}", got);
        for (got, want) in got.iter().zip(&want) {
            prop_assert!(got.starts_with(want), "got {:?}, want {:?}", got, want);
        }
    }

    #[test]
    fn what_a_client_sees_does_not_depend_on_how_reads_split_its_stream(
        bytes in traffic(),
        points in prop::collection::vec(any::<usize>(), 0..12),
        max_line in 16usize..64,
    ) {
        let run = |pieces: &[Vec<u8>]| {
            let mut sim = Sim::new(&["alice"], Sim::limits(max_line, 1 << 20));
            let alice = sim.connect();
            sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
            sim.finish_job(0);
            for piece in pieces {
                sim.send(alice, piece);
            }
            sim.settle_all();
            sim.output(alice)
        };
        let whole = run(std::slice::from_ref(&bytes));
        assert_wire_lines(whole.as_bytes());
        prop_assert_eq!(run(&split_at_points(&bytes, &points)), whole);
    }

    #[test]
    fn a_burst_is_handled_a_turn_at_a_time(n in 1usize..300) {
        let mut sim = Sim::new(&["alice"], Sim::limits(4096, 1 << 20));
        let alice = sim.connect();
        sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
        sim.finish_job(0);
        sim.drain(alice, usize::MAX);
        sim.conns[alice].socket.written.clear();
        sim.next_pass();
        sim.send(alice, "ping\n".repeat(n).as_bytes());
        prop_assert_eq!(sim.output(alice).lines().count(), n.min(MAX_LINES_PER_TURN));
        sim.settle_all();
        prop_assert_eq!(sim.output(alice).lines().count(), n);
    }

    #[test]
    fn any_line_parses_or_gets_one_clean_error(line in "\\PC{0,200}", logged_in in any::<bool>()) {
        let user = logged_in.then_some("alice");
        if let Err(e) = commands::parse(&line, user) {
            let reply = e.reply();
            assert_wire_lines(&reply);
            prop_assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
        }
    }

    #[test]
    fn every_reply_and_event_is_clean_wire_lines(
        words in prop::collection::vec(
            prop_oneof![
                Just("send".to_string()), Just("broadcast".to_string()), Just("user".to_string()),
                Just("message".to_string()), Just("bob".to_string()), Just("alice".to_string()),
                Just("history".to_string()), Just("wholast".to_string()), Just("block".to_string()),
                Just("whoelse".to_string()), Just("5".to_string()), "[ -~\t]{0,12}",
            ],
            0..8,
        ),
    ) {
        let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20));
        let alice = sim.connect();
        let bob = sim.connect();
        for (token, user) in [(alice, "alice"), (bob, "bob")] {
            sim.send(token, format!("login {user} {PASSWORD}\n").as_bytes());
        }
        sim.send(alice, format!("{}\n", words.join(" ")).as_bytes());
        sim.settle_all();
        assert_wire_lines(sim.output(alice).as_bytes());
        assert_wire_lines(sim.output(bob).as_bytes());
    }

    #[test]
    fn the_encoder_never_emits_a_control_character(text in any::<String>()) {
        assert_wire_lines(&protocol::event(&text));
        assert_wire_lines(&protocol::ok(&text));
        assert_wire_lines(&protocol::err(protocol::ErrorCode::BadArg, &text));
        let mut reply = protocol::Reply::new();
        reply.data(&text);
        assert_wire_lines(&reply.ok(&text));
    }
}

/// A step in the life of bob's sessions while alice writes to him.
#[derive(Clone, Debug)]
enum MarkOp {
    /// alice sends bob a message.
    Send,
    /// A job (by index) finishes.
    Finish(usize),
    /// bob's newest connection's socket takes `n` more bytes.
    Drain(usize),
    /// bob logs in again on a new connection (the old one is replaced).
    Relogin,
    /// bob's newest connection is dropped as slow.
    DropSlow,
    /// bob's newest connection hangs up.
    HangUp,
    /// Time passes (lingering sessions are given up on).
    Tick,
}

fn mark_ops() -> impl Strategy<Value = Vec<MarkOp>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(MarkOp::Send),
            4 => any::<usize>().prop_map(MarkOp::Finish),
            3 => (0usize..300).prop_map(MarkOp::Drain),
            1 => Just(MarkOp::Relogin),
            1 => Just(MarkOp::DropSlow),
            1 => Just(MarkOp::HangUp),
            1 => Just(MarkOp::Tick),
        ],
        0..150,
    )
}

proptest! {
    #[test]
    fn a_recorded_pushed_mark_covers_only_messages_that_left_or_went_back(ops in mark_ops()) {
        use std::collections::{BTreeSet, HashMap};
        use crate::commands::Work;
        use crate::store::StoreRequest;
        let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 4096));
        let alice = sim.connect();
        sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
        while sim.finish_job(0) {}
        sim.drain(alice, usize::MAX);
        let mut bobs = vec![sim.connect()];
        sim.send(bobs[0], format!("login bob {PASSWORD}\n").as_bytes());
        while sim.finish_job(0) {}
        // Accounts get slots 1, 2, ... in the order given.
        let slot = 2u64;
        let mut pushed: BTreeSet<i64> = BTreeSet::new();
        // The fake store numbers messages from 2 in the order it commits them.
        let mut next_id = 1i64;
        let mut sent = 0usize;
        let mut id_of: HashMap<usize, i64> = HashMap::new();
        let mut back: BTreeSet<i64> = BTreeSet::new();
        let received = |sim: &Sim, bobs: &[usize], id_of: &HashMap<usize, i64>| -> BTreeSet<i64> {
            bobs.iter()
                .flat_map(|t| {
                    let out = sim.output(*t);
                    let end = out.rfind('\n').map_or(0, |i| i + 1);
                    out[..end].lines().map(str::to_string).collect::<Vec<_>>()
                })
                .filter(|l| l.starts_with("* msg alice"))
                .filter_map(|l| l.rsplit(' ').next().and_then(|w| w.strip_prefix('m')).and_then(|k| k.parse().ok()))
                .filter_map(|k: usize| id_of.get(&k).copied())
                .collect()
        };
        for op in ops {
            match op {
                MarkOp::Send => {
                    sim.send(alice, format!("send bob m{sent}\n").as_bytes());
                    sent += 1;
                }
                MarkOp::Finish(i) => {
                    if sim.jobs.is_empty() {
                        continue;
                    }
                    let i = i % sim.jobs.len();
                    match &sim.jobs[i].job.work {
                        Work::Store(StoreRequest::InsertMessages(m)) => {
                            next_id += 1;
                            let k: usize = m[0].body.strip_prefix('m').unwrap().parse().unwrap();
                            id_of.insert(k, next_id);
                            if !m[0].unread {
                                pushed.insert(next_id);
                            }
                        }
                        Work::Store(StoreRequest::MarkUnread { ids }) => back.extend(ids),
                        _ => {}
                    }
                    sim.finish_job(i);
                }
                MarkOp::Drain(n) => {
                    let t = *bobs.last().unwrap();
                    sim.drain(t, n);
                }
                MarkOp::Relogin => {
                    let t = sim.connect();
                    sim.drain(t, usize::MAX);
                    sim.send(t, format!("login bob {PASSWORD}\n").as_bytes());
                    bobs.push(t);
                }
                MarkOp::DropSlow => {
                    let t = *bobs.last().unwrap();
                    sim.conns[t].session.drop_slow();
                    sim.serve(t);
                }
                MarkOp::HangUp => {
                    let t = *bobs.last().unwrap();
                    sim.hang_up(t);
                }
                MarkOp::Tick => sim.advance(Duration::from_secs(3)),
            }
            let got = received(&sim, &bobs, &id_of);
            if let Some(m) = sim.marks.get(&slot) {
                for (_, id) in id_of.iter().filter(|(_, id)| **id <= m.pushed) {
                    prop_assert!(
                        got.contains(id) || back.contains(id) || !pushed.contains(id),
                        "pushed mark {} covers message {id}, neither received nor back in the inbox",
                        m.pushed
                    );
                }
            }
        }
    }
}

/// The model's events held behind a reply in parts: bytes, (end, id) each.
type ModelHeld = (Vec<u8>, Vec<(usize, i64)>);

/// What is done to an [`Output`] in `shared_lines_go_out_in_order_and_marks_follow_the_kernel`.
#[derive(Clone, Debug)]
enum OutOp {
    /// An event copied in (a stored message's if `Some`).
    Own(u8, Option<()>),
    /// A shared line queued by reference (a stored message's if `Some`).
    Shared(u8, Option<()>),
    /// A whole reply.
    Reply(u8),
    /// A part of a reply whose completion comes later.
    Part(u8),
    /// That completion.
    Completion(u8),
    /// A vectored write of at most this many pieces and bytes.
    Write(usize, usize),
    Compact,
}

fn out_ops() -> impl Strategy<Value = Vec<OutOp>> {
    let len = 1u8..40;
    let id = prop::option::of(Just(()));
    prop::collection::vec(
        prop_oneof![
            3 => (len.clone(), id.clone()).prop_map(|(n, id)| OutOp::Own(n, id)),
            4 => (len.clone(), id).prop_map(|(n, id)| OutOp::Shared(n, id)),
            1 => len.clone().prop_map(OutOp::Reply),
            1 => len.clone().prop_map(OutOp::Part),
            1 => len.prop_map(OutOp::Completion),
            3 => (1..MAX_WRITE_PIECES + 1, 0usize..200).prop_map(|(p, n)| OutOp::Write(p, n)),
            1 => Just(OutOp::Compact),
        ],
        0..80,
    )
}

proptest! {
    #[test]
    fn shared_lines_go_out_in_order_and_marks_follow_the_kernel(ops in out_ops()) {
        let mut out = Output::default();
        // The stream a client must see, and what is held behind a reply in parts.
        let mut model: Vec<u8> = Vec::new();
        let mut held: Option<ModelHeld> = None;
        // (end in `model`, id) of each stored message.
        let mut ends: Vec<(usize, i64)> = Vec::new();
        let mut written: Vec<u8> = Vec::new();
        let mut next_id = 0i64;
        let mut marked = 0i64;
        let mut fill = 0u8;
        let mut line = |n: u8| {
            fill = fill.wrapping_add(1);
            let mut l = vec![b'a' + fill % 26; usize::from(n)];
            l.push(b'\n');
            l
        };
        for op in ops {
            match op {
                OutOp::Own(n, id) | OutOp::Shared(n, id) => {
                    let bytes = line(n);
                    let id = id.map(|()| { next_id += 1; next_id });
                    if matches!(op, OutOp::Shared(..)) {
                        out.push_event_shared(&Rc::from(bytes.clone()), id);
                    } else {
                        out.push_event(&bytes, id);
                    }
                    match held.as_mut() {
                        Some((h, ids)) => {
                            h.extend_from_slice(&bytes);
                            ids.extend(id.map(|id| (h.len(), id)));
                        }
                        None => {
                            model.extend_from_slice(&bytes);
                            ends.extend(id.map(|id| (model.len(), id)));
                        }
                    }
                }
                OutOp::Reply(n) => {
                    let bytes = line(n);
                    out.push_reply(&bytes);
                    model.extend_from_slice(&bytes);
                }
                OutOp::Part(n) => {
                    let bytes = line(n);
                    out.push_reply_part(&bytes);
                    model.extend_from_slice(&bytes);
                    held.get_or_insert_with(Default::default);
                }
                OutOp::Completion(n) => {
                    let bytes = line(n);
                    out.push_reply_rows(&bytes, &[]);
                    model.extend_from_slice(&bytes);
                    if let Some((h, ids)) = held.take() {
                        let base = model.len();
                        model.extend_from_slice(&h);
                        ends.extend(ids.into_iter().map(|(end, id)| (base + end, id)));
                    }
                }
                OutOp::Write(pieces, max) => {
                    let mut slots = [IoSlice::new(&[]); MAX_WRITE_PIECES];
                    let filled = out.pending_pieces(&mut slots[..pieces]);
                    let mut taken = 0;
                    for piece in &slots[..filled] {
                        let n = piece.len().min(max - taken);
                        written.extend_from_slice(&piece[..n]);
                        taken += n;
                    }
                    out.advance(taken);
                    out.reached_kernel();
                    if let Some((pushed, _)) = out.take_left(&mut Vec::new()) {
                        marked = marked.max(pushed);
                    }
                }
                OutOp::Compact => out.compact(),
            }
            prop_assert_eq!(&written[..], &model[..written.len()]);
            prop_assert_eq!(out.pending_len(), model.len() - written.len());
            let first = out.pending();
            prop_assert_eq!(first, &model[written.len()..written.len() + first.len()]);
            prop_assert_eq!(first.is_empty(), out.pending_len() == 0);
            // A stored message counts as read exactly once all of its line is out.
            let expected = ends.iter().filter(|(end, _)| *end <= written.len()).map(|(_, id)| *id).max().unwrap_or(0);
            prop_assert_eq!(marked, expected);
        }
    }
}
