//! Fuzzes the connection state machine the server runs: any bytes, split
//! into reads at fuzzer-chosen points, must produce exactly the output the
//! same bytes produce read whole, in clean wire lines, and never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::sim::{Sim, PASSWORD};

fn run(max_line: usize, pieces: &[&[u8]]) -> String {
    let mut sim = Sim::new(&["alice", "bob"], Sim::limits(max_line, 1 << 20));
    let alice = sim.connect();
    sim.send(alice, format!("login alice {PASSWORD}\n").as_bytes());
    for piece in pieces {
        sim.send(alice, piece);
        sim.finish_job(0);
    }
    sim.settle_all();
    sim.output(alice)
}

fuzz_target!(|data: &[u8]| {
    // First byte: line limit; second: split stride; rest: the stream.
    let [limit, stride, stream @ ..] = data else { return };
    let max_line = usize::from(*limit).max(16);
    let stride = usize::from(*stride).max(1);
    let pieces: Vec<&[u8]> = stream.chunks(stride).collect();
    let whole = run(max_line, &[stream]);
    assert_eq!(run(max_line, &pieces), whole);
    for line in whole.lines() {
        assert!(matches!(line.as_bytes().first(), Some(b'+' | b'-' | b'=' | b'*')), "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
});
