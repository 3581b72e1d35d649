//! Fuzzes command handling through the connection state machine: any line,
//! from a stranger or a member, gets exactly one completion line in clean
//! wire form once its jobs finish, and nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::commands::parse;
use natter::sim::{Sim, PASSWORD};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    for user in [None, Some("alice")] {
        if let Err(e) = parse(line, user) {
            let reply = e.reply();
            assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(!reply[..reply.len() - 1].iter().any(|b| b.is_ascii_control()));
        }
    }
    // A CR right before the LF is dropped by framing; a blank line is not
    // a command and gets no answer.
    let framed = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') || framed.trim_matches([' ', '\t']).is_empty() {
        return;
    }
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(4096, 1 << 20));
    let alice = sim.connect();
    let bob = sim.connect();
    sim.send(bob, format!("login bob {PASSWORD}\n").as_bytes());
    sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
    sim.settle_all();
    let before = sim.output(alice).len();
    sim.send(alice, format!("{line}\n").as_bytes());
    sim.settle_all();
    let out = sim.output(alice);
    let completions = out[before..]
        .lines()
        .filter(|l| l.starts_with("+ ") || l.starts_with("- "))
        .count();
    assert!(completions == 1 || out.contains("+ bye"), "{out:?}");
});
