//! Fuzzes what a browser connection's bytes go through: any request gets
//! an answer without a panic, and any frame stream, split into reads at
//! fuzzer-chosen points, decodes to exactly what it decodes to read whole:
//! the same lines (none with a line break inside) and the same violation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::web::frames::{Control, Decoder, Violation};
use natter::web::{http, WebPolicy};

/// Decodes `pieces` one read at a time: the line bytes, the controls, and
/// the violation that ended it, if any.
fn decode(max_line: usize, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Control>, Option<Violation>) {
    let mut decoder = Decoder::default();
    let mut lines = Vec::new();
    let mut controls = Vec::new();
    let mut raw = Vec::new();
    for piece in pieces {
        raw.extend_from_slice(piece);
        loop {
            match decoder.decode(&raw, &mut lines, usize::MAX, max_line) {
                Ok((used, control)) => {
                    raw.drain(..used);
                    match control {
                        Some(c) => controls.push(c),
                        None => break,
                    }
                }
                Err(v) => return (lines, controls, Some(v)),
            }
        }
    }
    (lines, controls, None)
}

fuzz_target!(|data: &[u8]| {
    let _ = http::answer(data, &WebPolicy::default());
    // First byte: line limit; second: split stride; rest: the stream.
    let [limit, stride, stream @ ..] = data else { return };
    let max_line = usize::from(*limit).max(2);
    let stride = usize::from(*stride).max(1);
    let pieces: Vec<&[u8]> = stream.chunks(stride).collect();
    let whole = decode(max_line, &[stream]);
    let split = decode(max_line, &pieces);
    assert_eq!(split.1, whole.1);
    assert_eq!(split.2, whole.2);
    if whole.2.is_none() {
        assert_eq!(split.0, whole.0);
    }
    for line in whole.0.split(|&b| b == b'\n') {
        // At most the limit: enough for the line framer to refuse it.
        assert!(line.len() <= max_line, "a line past the limit: {}", line.len());
        assert!(!line.contains(&0xFF));
    }
});
