//! Fuzzes what other nodes of a cluster can say to this one: any sequence
//! of bus messages (JSON lines, as published) and link events (Redis lost
//! or back, a node silent or heard again), applied to a clustered chat
//! with two local sessions. Nothing panics, every byte a session gets
//! stays in clean wire form (whole lines with a known sigil, no control
//! characters), and whatever this node says back survives the wire.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::cluster::{Envelope, Inbound};
use natter::sim::{Sim, PASSWORD};

fuzz_target!(|data: &[u8]| {
    let mut sim = Sim::new(&["alice", "bob", "carol"], Sim::limits(4096, 1 << 20));
    sim.chat.join_cluster("n1".into());
    let alice = sim.connect();
    let bob = sim.connect();
    sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
    sim.send(bob, format!("login bob {PASSWORD}\n").as_bytes());
    sim.settle_all();
    for chunk in data.split(|b| *b == b'\n').take(64) {
        let inbound = match chunk.first() {
            Some(0) => Inbound::Connected,
            Some(1) => Inbound::Subscribed,
            Some(2) => Inbound::Lost,
            Some(3) => Inbound::NodeDown(String::from_utf8_lossy(&chunk[1..]).into_owned()),
            Some(4) => Inbound::NodeUp(String::from_utf8_lossy(&chunk[1..]).into_owned()),
            _ => match Envelope::decode(chunk) {
                Some(env) => Inbound::Message(env),
                None => continue,
            },
        };
        sim.from_cluster(inbound);
        sim.settle_all();
        // And a command that reads the merged view, between messages.
        sim.send(alice, b"whoelse\n");
        sim.settle_all();
    }
    for token in [alice, bob] {
        let out = sim.output(token);
        assert!(out.is_empty() || out.ends_with('\n'), "{out:?}");
        for line in out.lines() {
            assert!(
                ["* ", "+ ", "- ", "= "].iter().any(|s| line.starts_with(s)),
                "{line:?}"
            );
            assert!(!line.chars().any(|c| c.is_control() && c != '\t'), "{line:?}");
        }
    }
    for (_, msg) in sim.chat.take_outgoing() {
        let env = Envelope {
            from: "n1".into(),
            msg,
        };
        assert_eq!(Envelope::decode(env.encode().as_bytes()), Some(env));
    }
});
