//! Property tests (proptest) for the parts every byte from the network goes
//! through: framing, parsing, the chat logic's replies and the line encoder.
//! They run in the normal test suite; `fuzz/` drives the same code with
//! coverage-guided fuzzers.

use std::collections::HashMap;
use std::time::Instant;

use proptest::prelude::*;

use crate::commands::{self, Caller, Chat, ChatSettings, Clock, Effects, SessionRef, Step};
use crate::config::Config;
use crate::protocol;
use crate::session::frame_chunks;

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

fn test_chat() -> Chat {
    let accounts = ["alice", "bob"]
        .iter()
        .map(|u| {
            let account = commands::Account {
                hash: "h".into(),
                unread: 0,
                last_seen: Some(0),
                blocks: Default::default(),
            };
            (u.to_string(), account)
        })
        .collect::<HashMap<_, _>>();
    Chat::new(
        ChatSettings::from(&Config::default()),
        accounts,
        "dummy".into(),
    )
}

proptest! {
    #[test]
    fn framing_does_not_depend_on_how_reads_split_the_stream(
        bytes in traffic(),
        points in prop::collection::vec(any::<usize>(), 0..12),
        max_line in 1usize..64,
    ) {
        let whole = frame_chunks(max_line, &[&bytes]);
        let pieces = split_at_points(&bytes, &points);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(frame_chunks(max_line, &refs), whole);
    }

    #[test]
    fn framed_lines_respect_the_limit_and_carry_no_lf(bytes in traffic(), max_line in 1usize..64) {
        for line in frame_chunks(max_line, &[&bytes]).into_iter().flatten() {
            prop_assert!(line.len() < max_line);
            prop_assert!(!line.contains(&b'\n'));
        }
    }

    #[test]
    fn any_line_parses_or_gets_one_clean_error(line in "\\PC{0,200}", logged_in in any::<bool>()) {
        match commands::parse(&line, logged_in) {
            Ok(_) => {}
            Err(reply) => {
                assert_wire_lines(&reply);
                prop_assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
            }
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
        let line = words.join(" ");
        let mut chat = test_chat();
        let mut caller = Caller {
            session: SessionRef { token: 0, id: 1 },
            ip: "127.0.0.1".parse().expect("ip"),
            user: Some("alice".into()),
        };
        let now = Clock { mono: Instant::now(), wall: 1_800_000_000 };
        if protocol::has_forbidden_control(&line) {
            return Ok(());
        }
        let mut fx = Effects::default();
        match commands::parse(&line, true) {
            Ok(cmd) => {
                if let Step::Reply(reply) = chat.execute(&mut caller, cmd, now, &mut fx) {
                    assert_wire_lines(&reply);
                }
            }
            Err(reply) => assert_wire_lines(&reply),
        }
        for push in &fx.pushes {
            assert_wire_lines(&push.line);
        }
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
