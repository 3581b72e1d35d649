//! The wire vocabulary of protocol v1 as the server uses it. It is written
//! once, in the `natter-proto` crate (proto/), which the client and the bench
//! share; this module only re-exports it, so server code keeps writing
//! `crate::protocol::X`. Nothing may be defined here: a protocol rule that
//! lives only in the server is one the clients cannot agree with.

pub use natter_proto::*;
