//! The certificate fingerprint format: a SHA-256 digest shown as upper-case
//! hex pairs joined by colons (`AB:CD:...`, as natterd prints it and as
//! `openssl x509 -fingerprint -sha256` does), and read back in that form or
//! as plain hex, in any case. Hashing is left to the caller's crypto library;
//! this module only owns the text.

use std::fmt::{self, Write as _};

/// Bytes in a SHA-256 digest.
pub const SHA256_LEN: usize = 32;

/// A digest as `AB:CD:...`.
pub fn format_fingerprint(digest: &[u8]) -> String {
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// A fingerprint that is not 32 bytes of hex, plain or as `:`-joined pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFingerprint;

impl fmt::Display for BadFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a fingerprint is a SHA-256 digest: 64 hex digits, optionally as pairs joined by ':'",
        )
    }
}

impl std::error::Error for BadFingerprint {}

/// Reads a fingerprint: 32 bytes of hex, with or without `:` between the
/// pairs (as natterd prints it, or as `sha256sum` would), in any case;
/// white space around it is ignored.
pub fn parse_fingerprint(s: &str) -> Result<[u8; SHA256_LEN], BadFingerprint> {
    let s = s.trim();
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
    if hex.len() != 2 * SHA256_LEN {
        return Err(BadFingerprint);
    }
    // With colons, each one must sit between two pairs (AB:CD, not A:BCD).
    if s.contains(':') && !s.split(':').all(|p| p.len() == 2) {
        return Err(BadFingerprint);
    }
    let mut out = [0u8; SHA256_LEN];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digit = |b: u8| (b as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            // Two hex digits make at most 255.
            (Some(hi), Some(lo)) => *byte = (hi * 16 + lo) as u8,
            _ => return Err(BadFingerprint),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ce5497a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a25df";

    fn colons_of(hex: &str) -> String {
        hex.as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons_in_any_case() {
        let plain = parse_fingerprint(HEX).expect("plain hex");
        let upper = parse_fingerprint(&HEX.to_uppercase()).expect("upper");
        let colons = parse_fingerprint(&colons_of(&HEX.to_uppercase())).expect("pairs");
        let lower_colons = parse_fingerprint(&colons_of(HEX)).expect("lower pairs");
        assert_eq!(plain, upper);
        assert_eq!(plain, colons);
        assert_eq!(plain, lower_colons);
        assert_eq!(plain[0], 0xce);
        assert_eq!(plain[31], 0xdf);
        assert_eq!(format_fingerprint(&plain), colons_of(&HEX.to_uppercase()));
        assert_eq!(parse_fingerprint(&format!(" {HEX}\n")), Ok(plain));
    }

    #[test]
    fn bad_fingerprints_are_refused() {
        for bad in [
            "",
            "abcd",
            &HEX[..62],
            &format!("{HEX}00"),
            &format!("{}zz", &HEX[..62]),
            &format!("C:E{}", &HEX[3..]),
            &format!("{}é", &HEX[..62]),
        ] {
            assert_eq!(parse_fingerprint(bad), Err(BadFingerprint), "{bad:?}");
        }
    }

    #[test]
    fn formatting_is_upper_case_pairs() {
        assert_eq!(format_fingerprint(&[0x0a, 0xff, 0x00]), "0A:FF:00");
        assert_eq!(format_fingerprint(&[]), "");
    }
}
