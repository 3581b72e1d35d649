//! Who may connect: `--max-clients`, `--max-per-ip` (counted per address
//! group, see [`crate::addr`]) and `--max-unauthenticated`, the counts
//! behind them, and the refusal log (throttled, because a refusal flood is
//! exactly when logging costs most). Bookkeeping only: the reactor accepts,
//! refuses and closes the sockets.
//!
//! Connections that have not logged in are the cheap class: holding one
//! costs an attacker a socket and nothing else. They are kept in arrival
//! order, and when they reach `--max-unauthenticated`, or the server is
//! full, a newcomer takes the place of the oldest of them. So idle
//! connections that never log in cannot keep anyone out: a newcomer has
//! until as many connections again arrive after it to log in.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::addr::AddrGroup;
use crate::commands::SessionRef;
use crate::config::Config;
use crate::stats::{LogThrottle, Stats};

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-clients` connections are open, all of them logged in.
    Busy,
    /// Its address group holds `--max-per-ip` connections.
    PerAddress,
}

/// The connection limits and what counts against them.
#[derive(Debug)]
pub struct Admission {
    /// --max-clients.
    max_clients: usize,
    /// --max-per-ip (0: no limit).
    max_per_ip: usize,
    /// --max-unauthenticated.
    max_strangers: usize,
    /// --ipv6-prefix.
    ipv6_prefix: u8,
    /// Open connections per address group.
    per_group: HashMap<AddrGroup, usize>,
    /// Open connections in all (including ones told to leave that have not
    /// closed yet).
    open: usize,
    /// Open connections not logged in, by session id: ids grow, so the
    /// first is the oldest.
    strangers: BTreeMap<u64, SessionRef>,
    /// Refusals are logged at most once a second.
    log: LogThrottle,
}

/// A connection let in.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// A connection not logged in that must leave (`* bye busy`) to make
    /// room for this one.
    pub displaces: Option<SessionRef>,
}

impl Admission {
    /// Limits from the configuration, nobody connected.
    pub fn new(config: &Config) -> Self {
        Admission {
            max_clients: config.max_clients,
            max_per_ip: config.max_per_ip,
            max_strangers: config.max_unauthenticated.max(1),
            ipv6_prefix: config.ipv6_prefix,
            per_group: HashMap::new(),
            open: 0,
            strangers: BTreeMap::new(),
            log: LogThrottle::default(),
        }
    }

    /// The group `ip` counts in.
    pub fn group(&self, ip: IpAddr) -> AddrGroup {
        AddrGroup::of(ip, self.ipv6_prefix)
    }

    /// Counts a new connection from `addr` in, possibly in place of the
    /// oldest connection not logged in, or says why not (and logs and
    /// counts the refusal). A connection let in is a stranger from
    /// [`Admission::joined`] until [`Admission::logged_in`].
    pub fn admit(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<Admitted, Refusal> {
        let group = self.group(addr.ip());
        let from_group = self.per_group.get(&group).copied().unwrap_or(0);
        let full = self.open >= self.max_clients;
        let refusal = if self.max_per_ip > 0 && from_group >= self.max_per_ip {
            stats.refused_per_ip += 1;
            Refusal::PerAddress
        } else if full && self.strangers.is_empty() {
            stats.refused_busy += 1;
            Refusal::Busy
        } else {
            let displaces = if full || self.strangers.len() >= self.max_strangers {
                stats.displaced_unauthenticated += 1;
                self.strangers.pop_first().map(|(_, sref)| sref)
            } else {
                None
            };
            self.open += 1;
            *self.per_group.entry(group).or_default() += 1;
            stats.accepted += 1;
            return Ok(Admitted { displaces });
        };
        if let Some(note) = self.log.allow(now) {
            match refusal {
                Refusal::Busy => {
                    log::warn!("refusing {addr}: {} clients connected{note}", self.open)
                }
                Refusal::PerAddress => {
                    log::warn!("refusing {addr}: {from_group} connections from {group}{note}")
                }
            }
        }
        Err(refusal)
    }

    /// The session let in by the last [`Admission::admit`] exists now.
    pub fn joined(&mut self, session: SessionRef) {
        self.strangers.insert(session.id, session);
    }

    /// `session` has logged in: it no longer counts as a stranger.
    pub fn logged_in(&mut self, session: SessionRef) {
        self.strangers.remove(&session.id);
    }

    /// A connection from `ip` has closed (`session`: if it got that far).
    pub fn left(&mut self, ip: IpAddr, session: Option<SessionRef>) {
        self.open = self.open.saturating_sub(1);
        if let Some(s) = session {
            self.strangers.remove(&s.id);
        }
        let group = self.group(ip);
        if let Some(n) = self.per_group.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                self.per_group.remove(&group);
            }
        }
    }

    /// Connections not logged in.
    #[cfg(test)]
    pub fn strangers(&self) -> usize {
        self.strangers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 5000))
    }

    fn sref(id: u64) -> SessionRef {
        SessionRef {
            token: id as usize,
            id,
        }
    }

    /// Admits `addr` as session `id`; what it displaced, if anything.
    fn admit(
        a: &mut Admission,
        addr: SocketAddr,
        id: u64,
        stats: &mut Stats,
    ) -> Result<Option<u64>, Refusal> {
        let admitted = a.admit(addr, Instant::now(), stats)?;
        a.joined(sref(id));
        Ok(admitted.displaces.map(|s| s.id))
    }

    #[test]
    fn limits_count_per_address_and_in_all_and_free_up_on_leaving() {
        let config = Config {
            max_clients: 3,
            max_per_ip: 2,
            ..Config::default()
        };
        let mut admission = Admission::new(&config);
        let mut stats = Stats::default();
        let a = &mut admission;
        assert_eq!(admit(a, addr(1), 1, &mut stats), Ok(None));
        assert_eq!(admit(a, addr(1), 2, &mut stats), Ok(None));
        assert_eq!(admit(a, addr(1), 3, &mut stats), Err(Refusal::PerAddress));
        assert_eq!(admit(a, addr(2), 4, &mut stats), Ok(None));
        // Full, and everyone logged in: no room.
        for id in [1, 2, 4] {
            a.logged_in(sref(id));
        }
        assert_eq!(admit(a, addr(3), 5, &mut stats), Err(Refusal::Busy));
        a.left(addr(1).ip(), Some(sref(1)));
        assert_eq!(admit(a, addr(3), 6, &mut stats), Ok(None));
        assert_eq!(
            (stats.accepted, stats.refused_busy, stats.refused_per_ip),
            (4, 1, 1)
        );
    }

    #[test]
    fn newcomers_take_the_place_of_the_oldest_connection_not_logged_in() {
        let config = Config {
            max_clients: 4,
            max_per_ip: 0,
            max_unauthenticated: 2,
            ..Config::default()
        };
        let mut admission = Admission::new(&config);
        let mut stats = Stats::default();
        let a = &mut admission;
        assert_eq!(admit(a, addr(1), 1, &mut stats), Ok(None));
        assert_eq!(admit(a, addr(2), 2, &mut stats), Ok(None));
        // Two strangers already: the third takes the first's place.
        assert_eq!(admit(a, addr(3), 3, &mut stats), Ok(Some(1)));
        a.left(addr(1).ip(), Some(sref(1)));
        // A logged-in session is never displaced.
        a.logged_in(sref(2));
        assert_eq!(admit(a, addr(4), 4, &mut stats), Ok(None));
        assert_eq!(admit(a, addr(5), 5, &mut stats), Ok(Some(3)));
        assert_eq!(a.strangers(), 2);
        // Full (4 open counting the one leaving): a stranger makes room.
        assert_eq!(admit(a, addr(6), 6, &mut stats), Ok(Some(4)));
        assert_eq!(stats.displaced_unauthenticated, 3);
    }

    #[test]
    fn ipv6_addresses_in_one_prefix_share_the_per_address_limit() {
        let config = Config {
            max_per_ip: 2,
            ..Config::default()
        };
        let mut admission = Admission::new(&config);
        let mut stats = Stats::default();
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 5000);
        let a = &mut admission;
        assert_eq!(admit(a, v6("2001:db8:0:1::1"), 1, &mut stats), Ok(None));
        assert_eq!(admit(a, v6("2001:db8:0:1::2"), 2, &mut stats), Ok(None));
        assert_eq!(
            admit(a, v6("2001:db8:0:1:ffff::3"), 3, &mut stats),
            Err(Refusal::PerAddress)
        );
        assert_eq!(admit(a, v6("2001:db8:0:2::1"), 4, &mut stats), Ok(None));
        a.left(v6("2001:db8:0:1::2").ip(), Some(sref(2)));
        assert_eq!(admit(a, v6("2001:db8:0:1::3"), 5, &mut stats), Ok(None));
    }
}
