//! What natter-bench asks of the operating system: enough file descriptors
//! for thousands of sessions, and (through /proc) the server's resident
//! memory and the CPU time of the server and of the bench itself, so a report
//! can show which side was the bottleneck.

use std::fs;
use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::report::{Report, Value};

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 for
/// every program regardless of the kernel's internal tick rate.
const TICKS_PER_SEC: f64 = 100.0;

/// Raises the soft open-file limit to the hard one (each session is a
/// descriptor; the usual soft limit of 1024 is far below a 10,000-session
/// run). Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// `VmRSS` in KiB from the text of /proc/<pid>/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(n)
}

/// The resident memory of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no VmRSS line in /proc/{pid}/status"),
        )
    })
}

/// User plus system CPU seconds from the text of /proc/<pid>/stat.
pub fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces; the
    // numeric fields start after the last ')'. utime and stime are fields 14
    // and 15, so the 12th and 13th words after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut words = rest.split_whitespace().skip(11);
    let utime: u64 = words.next()?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU seconds used so far by `pid`, or by this process when `None`.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_secs(&fs::read_to_string(path).ok()?)
}

/// CPU used by natterd and by the bench over one measurement, as a share of
/// one core: it shows which side was saturated.
pub struct CpuWatch {
    server_pid: Option<u32>,
    server0: Option<f64>,
    bench0: Option<f64>,
    started: std::time::Instant,
}

impl CpuWatch {
    /// Starts watching; natterd is watched only when its pid is known.
    pub fn start(server_pid: Option<u32>) -> CpuWatch {
        CpuWatch {
            server_pid,
            server0: server_pid.and_then(|p| cpu_secs(Some(p))),
            bench0: cpu_secs(None),
            started: std::time::Instant::now(),
        }
    }

    /// Adds `server_cpu_pct` and `bench_cpu_pct` to `report`.
    pub fn finish(&self, report: &mut Report) {
        let secs = self.started.elapsed().as_secs_f64();
        let pct = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) if secs > 0.0 => Value::Float((n - b) / secs * 100.0, 0),
            _ => Value::Missing,
        };
        let server_now = self.server_pid.and_then(|p| cpu_secs(Some(p)));
        report.field(
            "server_cpu_pct",
            "natterd cpu%",
            pct(self.server0, server_now),
        );
        report.field(
            "bench_cpu_pct",
            "bench cpu%",
            pct(self.bench0, cpu_secs(None)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_found_among_other_lines() {
        let status = "Name:\tnatterd\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn cpu_time_skips_a_name_with_spaces_and_parens() {
        let stat = "42 (nat ter) d) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
        assert_eq!(parse_cpu_secs("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(cpu_secs(None).is_some());
        assert!(vm_rss_kib(std::process::id()).expect("own status") > 0);
    }
}
