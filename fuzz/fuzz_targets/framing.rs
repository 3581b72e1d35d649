//! Fuzzes line framing: any bytes, split into reads at fuzzer-chosen points,
//! must frame exactly as the same bytes read whole, and never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::session::{Frame, LineFramer};

fn frame(max_line: usize, chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut framer = LineFramer::new(max_line);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut consumed = 0;
        loop {
            let (used, frame) = framer.next_frame(&buf[consumed..]);
            consumed += used;
            match frame {
                Some(Frame::Line(line)) => out.push(Some(line.to_vec())),
                Some(Frame::TooLong) => out.push(None),
                None if used == 0 => break,
                None => {}
            }
        }
        buf.drain(..consumed);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // First byte: line limit; second: split stride; rest: the stream.
    let [limit, stride, stream @ ..] = data else { return };
    let max_line = usize::from(*limit).max(1);
    let stride = usize::from(*stride).max(1);
    let chunks: Vec<&[u8]> = stream.chunks(stride).collect();
    assert_eq!(frame(max_line, &chunks), frame(max_line, &[stream]));
});
