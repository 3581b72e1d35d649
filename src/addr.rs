//! Address groups: what the per-address limits (`--max-per-ip`, lockout
//! keys, shares of the hashing pool) count by. One IPv4 address is one
//! group; IPv6 addresses are grouped by their first `--ipv6-prefix` bits
//! (a /64 by default), because one host or customer is routinely handed a
//! whole /64 and could otherwise take a fresh address for every attempt.
//! Pure values only.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The IPv6 prefix length used when none is configured: the subnet size
/// ISPs hand to one customer.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// An address with the bits that do not tell hosts apart cleared, and how
/// many bits are kept (32 for IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrGroup {
    /// The network address of the group.
    net: IpAddr,
    /// Leading bits that count.
    bits: u8,
}

impl AddrGroup {
    /// The group of `ip`: itself for IPv4 (an IPv4-mapped IPv6 address
    /// counts as the IPv4 address it carries), its first `ipv6_prefix` bits
    /// (clamped to 1..=128) for IPv6.
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> AddrGroup {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddrGroup {
                net: IpAddr::V4(v4),
                bits: 32,
            },
            IpAddr::V6(v6) => {
                let bits = ipv6_prefix.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(bits));
                AddrGroup {
                    net: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    bits,
                }
            }
        }
    }
}

impl fmt::Display for AddrGroup {
    /// `192.0.2.7` for one address, `2001:db8::/64` for a group.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpAddr::V4(_) => write!(f, "{}", self.net),
            IpAddr::V6(_) if self.bits == 128 => write!(f, "{}", self.net),
            IpAddr::V6(_) => write!(f, "{}/{}", self.net, self.bits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(ip: &str, bits: u8) -> AddrGroup {
        AddrGroup::of(ip.parse().unwrap(), bits)
    }

    #[test]
    fn ipv6_groups_by_prefix_and_ipv4_by_address() {
        assert_eq!(
            group("2001:db8:1:2:aaaa::1", 64),
            group("2001:db8:1:2::ffff", 64)
        );
        assert_ne!(group("2001:db8:1:2::1", 64), group("2001:db8:1:3::1", 64));
        assert_eq!(group("2001:db8:1:2::1", 48), group("2001:db8:1:3::1", 48));
        assert_ne!(group("2001:db8::1", 128), group("2001:db8::2", 128));
        assert_ne!(group("192.0.2.1", 64), group("192.0.2.2", 64));
        assert_eq!(group("::ffff:192.0.2.1", 64), group("192.0.2.1", 64));
        // Out-of-range prefixes are clamped, never a panic.
        assert_eq!(group("2001:db8::1", 0), group("::1", 1));
        assert_eq!(group("2001:db8::1", 200), group("2001:db8::1", 128));
    }

    #[test]
    fn groups_show_their_prefix_when_they_have_one() {
        assert_eq!(
            group("2001:db8:1:2:aaaa::1", 64).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(group("::1", 128).to_string(), "::1");
        assert_eq!(group("127.0.0.1", 64).to_string(), "127.0.0.1");
    }
}
