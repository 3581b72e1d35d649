//! Fuzzes line framing: any bytes, split into reads at fuzzer-chosen points,
//! must frame exactly as the same bytes read whole, and never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::session::frame_chunks;

fuzz_target!(|data: &[u8]| {
    // First byte: line limit; second: split stride; rest: the stream.
    let [limit, stride, stream @ ..] = data else { return };
    let max_line = usize::from(*limit).max(1);
    let stride = usize::from(*stride).max(1);
    let chunks: Vec<&[u8]> = stream.chunks(stride).collect();
    assert_eq!(frame_chunks(max_line, &chunks), frame_chunks(max_line, &[stream]));
});
