//! Fuzzes the PROXY header reader (`--proxy-protocol` listeners): any first
//! bytes give an answer without panicking, a complete header never claims
//! more bytes than it was given, and whatever a prefix of the input was
//! called, the whole input does not go back to "incomplete".

#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::proxy::{parse, ProxyHeader, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        ProxyHeader::Complete { len, .. } => assert!(*len > 0 && *len <= data.len()),
        ProxyHeader::Incomplete => assert!(data.len() < MAX_HEADER),
        ProxyHeader::Invalid(_) => {}
    }
    if let ProxyHeader::Complete { len, client } = whole {
        // More bytes after a header do not change it.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"ping\n");
        assert_eq!(parse(&longer), ProxyHeader::Complete { len, client });
    }
});
