//! The closed word lists of the protocol: error codes (`- <CODE> <text>`),
//! `bye` reasons (`* bye <reason>`) and event words (`* <event> ...`). Each
//! word is written once, in the table that defines its enum; `as_str` and
//! `parse` are generated from that table so they cannot disagree.

use std::fmt;
use std::str::FromStr;

/// Defines a fieldless enum whose variants each stand for one wire word,
/// with `ALL`, `as_str`, `parse`, `Display` and `FromStr`.
macro_rules! wire_words {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $word:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every value, in the order the contract lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }

            /// The value a wire word stands for; `None` for a word this
            /// version does not know (a newer peer may send one). Exact
            /// match: the wire spells each word one way.
            pub fn parse(word: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == word)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<$name, UnknownWord> {
                $name::parse(s).ok_or(UnknownWord)
            }
        }
    };
}

/// A word that is not in the list being parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownWord;

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a word of natter protocol v1")
    }
}

impl std::error::Error for UnknownWord {}

wire_words! {
    /// The one-word failure codes of `- <CODE> <text>`.
    pub enum ErrorCode {
        /// Not a command word.
        BadCmd => "BADCMD",
        /// Wrong arguments for the command.
        BadArg => "BADARG",
        /// The line holds a forbidden control character.
        BadText => "BADTEXT",
        /// The line is not UTF-8.
        BadUtf8 => "BADUTF8",
        /// The line passed the length limit.
        TooLong => "TOOLONG",
        /// The command needs a login.
        NoAuth => "NOAUTH",
        /// Already logged in.
        Already => "ALREADY",
        /// Wrong username or password.
        AuthFail => "AUTHFAIL",
        /// Too many failed logins for this user.
        Locked => "LOCKED",
        /// The username is taken.
        Exists => "EXISTS",
        /// Registration is closed.
        Closed => "CLOSED",
        /// No such user.
        NoUser => "NOUSER",
        /// The recipient blocks the sender.
        Blocked => "BLOCKED",
        /// The recipient's inbox holds as many unread messages as it may.
        Full => "FULL",
        /// The server failed; the command may be retried.
        Internal => "INTERNAL",
        /// The password-hashing queue is full; retry in a moment.
        Busy => "BUSY",
        /// The account is banned by the server's operator.
        Banned => "BANNED",
    }
}

wire_words! {
    /// Why the server is closing a connection (`* bye <reason>`).
    pub enum ByeReason {
        /// Logged in but idle for too long.
        Idle => "idle",
        /// Did not log in in time.
        Timeout => "timeout",
        /// The same user logged in elsewhere.
        Replaced => "replaced",
        /// The server is shutting down.
        Shutdown => "shutdown",
        /// The client did not read its output fast enough.
        Slow => "slow",
        /// The server holds too many connections (in all or from this address).
        Busy => "busy",
        /// The operator banned the account.
        Banned => "banned",
        /// The operator closed the session (`natterctl kick`).
        Kicked => "kicked",
    }
}

wire_words! {
    /// The event words of `* <event> <fields>`.
    pub enum EventKind {
        /// `* hello natter <version>`: the first line on every connection.
        Hello => "hello",
        /// `* notice <text>`: a message from the server for a person.
        Notice => "notice",
        /// `* msg <from> <time> <text>`: a direct message.
        Msg => "msg",
        /// `* broadcast <from> <time> <text>`: a broadcast.
        Broadcast => "broadcast",
        /// `* bye <reason>`: the server is closing the connection.
        Bye => "bye",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_are_none() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.to_string().parse::<ErrorCode>(), Ok(code));
        }
        for &reason in ByeReason::ALL {
            assert_eq!(ByeReason::parse(reason.as_str()), Some(reason));
        }
        for &kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorCode::parse("NOUSER"), Some(ErrorCode::NoUser));
        assert_eq!(ErrorCode::parse("nouser"), None);
        assert_eq!(ErrorCode::parse("NEWCODE"), None);
        assert_eq!(ByeReason::parse("busy"), Some(ByeReason::Busy));
        assert_eq!("later".parse::<ByeReason>(), Err(UnknownWord));
        assert_eq!(ErrorCode::ALL.len(), 17);
        assert_eq!(ByeReason::ALL.len(), 8);
    }
}
