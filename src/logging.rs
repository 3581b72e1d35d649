//! natterd's log: `RUST_LOG` picks the level (default `info`), and
//! `--log-format` the shape: text for people, or one JSON object per line
//! (`time`, `level`, `target`, `msg`) for log shippers.

use std::io::Write;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the logger. Call once, first thing.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": buf.timestamp().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}
