//! What nodes of a cluster tell each other over Redis pub/sub: the
//! [`Bus`] messages, the [`Envelope`] naming sender and addressee, and the
//! channel names. Plain data and its JSON encoding only; the threads that
//! move it are in `cluster/mod.rs`, and what a node does with it is the
//! chat core's (`commands/cluster.rs`).

use serde::{Deserialize, Serialize};

/// Channel every node listens on.
pub const ALL_CHANNEL: &str = "natter:all";

/// The channel only `node` listens on (direct messages for its users).
pub fn node_channel(node: &str) -> String {
    format!("natter:node:{node}")
}

/// One thing a node tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Bus {
    /// "I am alive" (every `HEARTBEAT`); a node not heard from for
    /// `NODE_EXPIRY` is taken for dead and its users for offline.
    Heartbeat,
    /// `user` logged in on the sending node at `since` (Unix ms). The
    /// newer login wins: another node's session of the user is replaced.
    Online { user: String, since: i64 },
    /// `user`'s session on the sending node ended at `at` (Unix seconds).
    Offline { user: String, at: i64 },
    /// Everyone online on the sending node, with their login times: the
    /// answer to [`Bus::Sync`], and sent on every (re)connection.
    Presence { users: Vec<(String, i64)> },
    /// "Tell me who you have": sent on every (re)connection, after which
    /// the sender's picture of the others is rebuilt from their answers.
    /// With `reload`, the sender was cut off from the others for a while:
    /// what any node announced meanwhile may be lost both ways, so every
    /// node reloads the accounts from the database.
    Sync { reload: bool },
    /// A committed direct message for `user`, online on the addressed node:
    /// `line` is its complete event line; `id` is its row, marked read
    /// once the line has left that node.
    Deliver { user: String, id: i64, line: String },
    /// A `broadcast` for everyone online on the other nodes.
    Broadcast { from: String, ts: i64, text: String },
    /// A new account (its id, and its password hash).
    Account { user: String, id: u64, hash: String },
    /// `user`'s password hash changed.
    Hash { user: String, hash: String },
    /// `user` blocks (`on`) or unblocks `other`.
    Block {
        user: String,
        other: String,
        on: bool,
    },
    /// The operator banned `user` (`on`) or lifted the ban.
    Banned { user: String, on: bool },
    /// The operator deleted `user`.
    Deleted { user: String },
    /// A wrong password for `user` from `ip`: it counts towards lockouts
    /// and the account's guessing budget on every node.
    LoginFailed { user: String, ip: std::net::IpAddr },
    /// `user` logged in from `ip`: that address group's failures for it
    /// are forgotten, and it is trusted for the account's budget.
    LoginOk { user: String, ip: std::net::IpAddr },
}

/// A [`Bus`] message with its sender (and addressee, for one node only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's id.
    pub from: String,
    /// The message.
    pub msg: Bus,
}

impl Envelope {
    /// The JSON text published.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail (string keys, no maps with
        // non-string keys); an empty payload is dropped by every receiver.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a published payload; `None` if it is not one of ours.
    pub fn decode(payload: &[u8]) -> Option<Envelope> {
        serde_json::from_slice(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_the_wire() {
        let all = vec![
            Bus::Heartbeat,
            Bus::Online {
                user: "alice".into(),
                since: 1,
            },
            Bus::Offline {
                user: "alice".into(),
                at: 2,
            },
            Bus::Presence {
                users: vec![("bob".into(), 3)],
            },
            Bus::Sync { reload: true },
            Bus::Deliver {
                user: "bob".into(),
                id: 7,
                line: "* msg alice 12:00 hi \"there\"\n".into(),
            },
            Bus::Broadcast {
                from: "alice".into(),
                ts: 5,
                text: "tab\tand ünïcode".into(),
            },
            Bus::Account {
                user: "carol".into(),
                id: 9,
                hash: "$argon2id$v=19$...".into(),
            },
            Bus::Hash {
                user: "carol".into(),
                hash: "h".into(),
            },
            Bus::Block {
                user: "a".into(),
                other: "b".into(),
                on: true,
            },
            Bus::Banned {
                user: "a".into(),
                on: false,
            },
            Bus::Deleted { user: "a".into() },
            Bus::LoginFailed {
                user: "a".into(),
                ip: "2001:db8::1".parse().unwrap(),
            },
            Bus::LoginOk {
                user: "a".into(),
                ip: "192.0.2.1".parse().unwrap(),
            },
        ];
        for msg in all {
            let env = Envelope {
                from: "n1".into(),
                msg,
            };
            assert_eq!(Envelope::decode(env.encode().as_bytes()), Some(env));
        }
    }

    #[test]
    fn foreign_payloads_are_ignored() {
        for junk in [
            &b""[..],
            b"{}",
            b"not json",
            b"{\"from\":\"x\",\"msg\":{\"t\":\"nope\"}}",
        ] {
            assert_eq!(Envelope::decode(junk), None);
        }
    }
}
