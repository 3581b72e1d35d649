//! The PROXY protocol header (HAProxy's; text v1 or binary v2) that a load
//! balancer sends first on each connection to say whose it really is. Read
//! only on a listener started with `--proxy-protocol`: anywhere else a
//! client could pick the address natterd's per-address limits count it by.
//! ppp parses; this file decides what each outcome means for a connection.

use std::net::SocketAddr;

use ppp::v1;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};

/// The longest header natterd waits for (a v1 header is at most 107 bytes;
/// v2 with the addresses and a few TLVs well under this). A connection
/// whose first bytes reach it without a complete header is closed.
pub const MAX_HEADER: usize = 1024;

/// What the first bytes of a proxied connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not all of it yet.
    Incomplete,
    /// A header of `len` bytes (the protocol's bytes follow it). `client`
    /// is the address it gives, or `None` for a connection the proxy made
    /// itself (a v2 LOCAL health check, v1 UNKNOWN): counted as the proxy's.
    Complete {
        client: Option<SocketAddr>,
        len: usize,
    },
    /// Not a PROXY header, or a malformed one: the connection is closed.
    Invalid(String),
}

/// The longest v1 header, CRLF included (the specification's bound).
const MAX_V1: usize = 107;

/// Parses the header at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> ProxyHeader {
    // A v1 header is a line: ppp reads a cut-off one as malformed rather
    // than incomplete, so it gets the bytes once the line has ended.
    let seen = bytes.len().min(5);
    let looks_v1 = seen > 0 && bytes[..seen] == b"PROXY"[..seen];
    if looks_v1 && !bytes.windows(2).any(|w| w == b"\r\n") {
        return if bytes.len() >= MAX_V1 {
            ProxyHeader::Invalid(format!("no end of the PROXY line within {MAX_V1} bytes"))
        } else {
            ProxyHeader::Incomplete
        };
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return if bytes.len() >= MAX_HEADER {
            ProxyHeader::Invalid(format!("no PROXY header within {MAX_HEADER} bytes"))
        } else {
            ProxyHeader::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(header)) => ProxyHeader::Complete {
            client: match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
            len: header.header.len(),
        },
        HeaderResult::V2(Ok(header)) => ProxyHeader::Complete {
            client: match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            },
            len: header.len(),
        },
        HeaderResult::V1(Err(e)) => ProxyHeader::Invalid(format!("bad PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => ProxyHeader::Invalid(format!("bad PROXY header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_header_gives_the_client_and_its_length() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 4000\r\nlogin alice x\n";
        assert_eq!(
            parse(line),
            ProxyHeader::Complete {
                client: Some("203.0.113.7:51234".parse().unwrap()),
                len: 44,
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(v6),
            ProxyHeader::Complete {
                client: Some(SocketAddr::V6(_)),
                len: 40
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Complete {
                client: None,
                len: 15
            }
        );
    }

    #[test]
    fn a_header_arriving_in_pieces_is_incomplete_until_its_end() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 4000\r\n";
        for cut in 1..line.len() {
            assert_eq!(parse(&line[..cut]), ProxyHeader::Incomplete, "{cut}");
        }
    }

    #[test]
    fn a_v2_header_proxy_and_local() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        v2.extend([198, 51, 100, 9, 10, 0, 0, 1, 0xc8, 0x1c, 0x0f, 0xa0]);
        v2.extend(b"ping\n");
        assert_eq!(
            parse(&v2),
            ProxyHeader::Complete {
                client: Some("198.51.100.9:51228".parse().unwrap()),
                len: 28,
            }
        );
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            ProxyHeader::Complete {
                client: None,
                len: 16
            }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bytes in [
            &b"login alice secret\n"[..],
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(parse(bytes), ProxyHeader::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let endless = vec![b' '; MAX_HEADER];
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(&endless);
        assert!(matches!(parse(&long), ProxyHeader::Invalid(_)));
    }
}
