//! End-to-end tests of the `natter` binary against a real natterd: piped
//! mode with scripts (plaintext and TLS), and interactive mode through a
//! pseudo-terminal. One test binary, so natterd is located (or built) once and the fixtures live
//! in one `util` module.

mod interactive;
mod piped;
mod resize;
mod settings;
mod staying;
mod tls;
mod util;
