//! Latency histograms and the arithmetic of rates. Each measuring thread
//! records into its own histogram (no sharing on the hot path); they are
//! merged once at the end.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::report::Value;

/// Smallest latency told apart: 1 µs. Loopback round trips are tens of
/// microseconds, so finer steps only cost memory.
const LOWEST_NS: u64 = 1_000;
/// Largest latency recorded as itself; anything above saturates. One hour is
/// beyond any run's `--max-seconds` cap.
const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Three significant figures: 0.1% error on every percentile.
const SIGFIG: u8 = 3;

/// Latencies in nanoseconds.
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // The bounds are constants that hdrhistogram accepts; this cannot fail.
        Latency(
            Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGFIG)
                .expect("constant histogram bounds are valid"),
        )
    }

    /// Records one latency.
    pub fn record(&mut self, nanos: u64) {
        self.0.saturating_record(nanos);
    }

    /// Records one latency given as a duration.
    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot run out of range.
        let _ = self.0.add(&other.0);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0.5 = median) in milliseconds; missing when empty.
    pub fn quantile_ms(&self, q: f64) -> Value {
        if self.count() == 0 {
            return Value::Missing;
        }
        Value::Float(ms(self.0.value_at_quantile(q)), 3)
    }

    /// The largest value in milliseconds; missing when empty.
    pub fn max_ms(&self) -> Value {
        if self.count() == 0 {
            return Value::Missing;
        }
        Value::Float(ms(self.0.max()), 3)
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Nanoseconds as milliseconds.
pub fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// `count` per second over `elapsed`; missing when nothing was timed.
pub fn per_sec(count: u64, elapsed: Duration) -> Value {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || count == 0 {
        return Value::Missing;
    }
    Value::Float(count as f64 / secs, 0)
}

/// Seconds since `epoch`-relative nanoseconds, for reports.
pub fn secs(d: Duration) -> Value {
    Value::Float(d.as_secs_f64(), 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=50u64 {
            a.record(i * 1_000_000);
        }
        for i in 51..=100u64 {
            b.record(i * 1_000_000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        let close = |v: Value, want: f64| match v {
            Value::Float(x, _) => assert!((x - want).abs() <= want * 0.002, "{x} vs {want}"),
            other => panic!("not a number: {other:?}"),
        };
        close(a.quantile_ms(0.5), 50.0);
        close(a.quantile_ms(0.99), 99.0);
        close(a.max_ms(), 100.0);
    }

    #[test]
    fn empty_and_out_of_range() {
        let mut h = Latency::new();
        assert_eq!(h.quantile_ms(0.5), Value::Missing);
        assert_eq!(h.max_ms(), Value::Missing);
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.count(), 2);
    }

    #[test]
    fn rates() {
        assert_eq!(
            per_sec(500, Duration::from_millis(250)),
            Value::Float(2000.0, 0)
        );
        assert_eq!(per_sec(0, Duration::from_secs(1)), Value::Missing);
        assert_eq!(per_sec(5, Duration::ZERO), Value::Missing);
    }
}
