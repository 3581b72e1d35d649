//! The progress bar: drawn on stderr, only when stderr is a terminal, and
//! only once a phase has run for a few seconds, so short runs and piped or
//! logged output stay clean.

use std::io::IsTerminal;

use crate::error::BenchError;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a phase runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(2);

/// How often the watching thread checks whether the workers are done (and
/// moves the bar): short, because the measured CPU time runs until it sees
/// them done.
pub const TICK: Duration = Duration::from_millis(10);

/// One phase's bar.
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    /// Whether the bar may ever be drawn (stderr is a terminal).
    allowed: bool,
    shown: bool,
}

impl Progress {
    /// A bar for `total` units of `label`, hidden for now.
    pub fn new(label: &str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len}")
        {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        Progress {
            bar,
            started: Instant::now(),
            allowed: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Moves the bar to `pos`, showing it once the phase is long enough.
    pub fn set(&mut self, pos: u64) {
        if self.allowed && !self.shown && self.started.elapsed() >= SHOW_AFTER {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_position(pos);
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Shows `counter` on a bar while the scoped `workers` run, then joins them;
/// a worker that panicked counts as a failed one.
pub fn join_with_progress<T>(
    label: &str,
    total: u64,
    counter: &std::sync::atomic::AtomicU64,
    workers: Vec<std::thread::ScopedJoinHandle<'_, Result<T, BenchError>>>,
) -> Vec<Result<T, BenchError>> {
    let mut bar = Progress::new(label, total);
    while !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(TICK);
        bar.set(counter.load(std::sync::atomic::Ordering::Relaxed));
    }
    bar.finish();
    workers
        .into_iter()
        .map(|w| {
            w.join()
                .unwrap_or_else(|_| Err(BenchError::new("a bench thread panicked")))
        })
        .collect()
}
