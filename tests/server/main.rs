//! natterd tested the way users meet it: the real binary on port 0, spoken
//! to over TCP. One test binary, one module per concern.

mod admin;
mod browser;
mod cluster;
mod config;
mod contract;
mod deploy;
mod durability;
mod hostile;
mod logins;
mod migration;
mod postgres;
mod proxy;
mod tls;
mod to_postgres;
mod unread;
mod util;
mod web;
mod webdriver;
mod ws;

#[path = "../support/postgres.rs"]
mod pg;
#[path = "../support/redis.rs"]
mod redis;
