//! natter: a small, fast chat server that never loses an acknowledged
//! message. The library holds the whole server so that integration tests and
//! benchmarks can run it in-process; `natterd` (src/main.rs) only parses
//! flags, binds the listener and calls [`reactor::Server::run`].

pub mod addr;
pub mod admin;
mod admission;
pub mod auth;
mod background;
pub mod cluster;
pub mod commands;
pub mod config;
mod hashqueue;
pub mod logging;
pub mod metrics;
#[cfg(test)]
mod props;
pub mod protocol;
pub mod proxy;
pub mod reactor;
pub mod session;
#[doc(hidden)]
pub mod sim;
pub mod startup;
pub mod stats;
pub mod store;
mod storequeue;
pub mod tls;
pub mod web;

pub use config::Config;
pub use reactor::{Listeners, Server, ShutdownHandle};
pub use stats::Stats;
