//! Who may connect: `--max-clients` and `--max-per-ip`, the count of open
//! connections per address, and the refusal log (throttled, because a
//! refusal flood is exactly when logging costs most). Bookkeeping only: the
//! reactor accepts, refuses and closes the sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::config::Config;
use crate::stats::{LogThrottle, Stats};

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-clients` connections are open.
    Busy,
    /// Its address holds `--max-per-ip` connections.
    PerAddress,
}

/// The connection limits and what counts against them.
#[derive(Debug)]
pub struct Admission {
    /// --max-clients.
    max_clients: usize,
    /// --max-per-ip (0: no limit).
    max_per_ip: usize,
    /// Open connections per peer address.
    per_ip: HashMap<IpAddr, usize>,
    /// Open connections in all.
    open: usize,
    /// Refusals are logged at most once a second.
    log: LogThrottle,
}

impl Admission {
    /// Limits from the configuration, nobody connected.
    pub fn new(config: &Config) -> Self {
        Admission {
            max_clients: config.max_clients,
            max_per_ip: config.max_per_ip,
            per_ip: HashMap::new(),
            open: 0,
            log: LogThrottle::default(),
        }
    }

    /// Counts a new connection from `addr` in, or says why not (and logs
    /// and counts the refusal).
    pub fn admit(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<(), Refusal> {
        let ip = addr.ip();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if self.open >= self.max_clients {
            stats.refused_busy += 1;
            Refusal::Busy
        } else if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            stats.refused_per_ip += 1;
            Refusal::PerAddress
        } else {
            self.open += 1;
            *self.per_ip.entry(ip).or_default() += 1;
            stats.accepted += 1;
            return Ok(());
        };
        if let Some(note) = self.log.allow(now) {
            match refusal {
                Refusal::Busy => {
                    log::warn!("refusing {addr}: {} clients connected{note}", self.open)
                }
                Refusal::PerAddress => {
                    log::warn!("refusing {addr}: {from_ip} connections from that address{note}")
                }
            }
        }
        Err(refusal)
    }

    /// A connection from `ip` has closed.
    pub fn left(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 5000))
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
        let now = Instant::now();
        assert_eq!(admission.admit(addr(1), now, &mut stats), Ok(()));
        assert_eq!(admission.admit(addr(1), now, &mut stats), Ok(()));
        assert_eq!(
            admission.admit(addr(1), now, &mut stats),
            Err(Refusal::PerAddress)
        );
        assert_eq!(admission.admit(addr(2), now, &mut stats), Ok(()));
        assert_eq!(
            admission.admit(addr(3), now, &mut stats),
            Err(Refusal::Busy)
        );
        admission.left(addr(1).ip());
        assert_eq!(admission.admit(addr(3), now, &mut stats), Ok(()));
        assert_eq!(
            (stats.accepted, stats.refused_busy, stats.refused_per_ip),
            (4, 1, 1)
        );
    }
}
