//! The vocabulary of natter's line protocol v1 (docs/PROTOCOL.md), written
//! once for natterd, the `natter` client and natter-bench: line framing,
//! word splitting, the username, password and text rules, the command table,
//! error codes, `bye` reasons, the shapes of server lines (building them for
//! the server, taking them apart for the clients) and the certificate
//! fingerprint format.
//!
//! Everything here is pure: no sockets, no threads, no clock (times come in
//! as numbers). It must never grow I/O or policy (limits on sessions, rates,
//! buffers belong to the server); a rule lives here only when both ends of
//! the wire have to agree on it.

mod codes;
mod commands;
mod fingerprint;
mod framing;
mod lines;
mod rules;

pub use codes::{ByeReason, ErrorCode, EventKind, UnknownWord};
pub use commands::{command, CommandSpec, COMMANDS};
pub use fingerprint::{format_fingerprint, parse_fingerprint, BadFingerprint, SHA256_LEN};
pub use framing::{Frame, LineFramer};
pub use lines::{
    bye, chat_event, err, event, format_time, hello, ok, split_chat, split_line, ChatFields, Line,
    Reply, PROTOCOL_NAME, PROTOCOL_VERSION, SIGIL_DATA, SIGIL_ERR, SIGIL_EVENT, SIGIL_OK,
};
pub use rules::{
    canonical_username, has_forbidden_control, is_blank, is_valid_username, relayable, split_word,
    MAX_PASSWORD_LEN, MAX_USERNAME_LEN, MIN_PASSWORD_LEN,
};
