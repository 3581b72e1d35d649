//! The natter client library: everything a program needs to talk to natterd
//! over the v1 line protocol (docs/PROTOCOL.md) without a terminal. It owns
//! connecting (plaintext or TLS), framing lines in both directions, parsing what the server
//! sends, and turning a server line into the text a person is shown. It never
//! touches the terminal, stdin or the process: the `natter` binary and later
//! tools (the load generator) decide what to do with what it returns.

pub mod conn;
pub mod display;
pub mod parse;
pub mod stream;
pub mod tls;

pub use conn::{connect, split, LineReader, LineWriter};
pub use display::{render, show, Style};
pub use parse::{parse, Event, ServerLine};
pub use stream::{open, Stream};
pub use tls::{TlsConfig, Trust, DEFAULT_TLS_PORT};

/// The port natterd listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 4000;

/// The host the client connects to unless told otherwise.
pub const DEFAULT_HOST: &str = "127.0.0.1";
