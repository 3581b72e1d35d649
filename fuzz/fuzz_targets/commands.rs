//! Fuzzes command parsing: any line, logged in or not, parses to a command
//! or to exactly one clean error line, and never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::commands::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    for logged_in in [false, true] {
        if let Err(reply) = parse(line, logged_in) {
            assert_eq!(reply.iter().filter(|b| **b == b'\n').count(), 1);
            assert!(reply.ends_with(b"\n"));
            assert!(!reply[..reply.len() - 1].iter().any(|b| b.is_ascii_control()));
        }
    }
});
