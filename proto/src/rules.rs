//! The rules both ends apply to words and text: what separates words, what a
//! username is, how long a password may be, which characters a line may not
//! carry.

/// Longest username accepted, in characters (all ASCII, so also bytes).
pub const MAX_USERNAME_LEN: usize = 32;
/// Shortest new password, in bytes.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest new password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;

/// True for the characters the contract treats as word separators (space
/// and TAB; nothing else, not even other Unicode white space).
pub fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Splits off the first blank-separated word; returns it and the rest with
/// leading blanks removed. Both are empty when `s` is blank.
pub fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(is_blank);
    match s.find(is_blank) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_blank)),
        None => (s, ""),
    }
}

/// Whether `raw` is a username by the contract: 1 to [`MAX_USERNAME_LEN`]
/// ASCII letters, digits, `_`, `-` or `.`, starting with a letter. Names are
/// case-insensitive; see [`canonical_username`] for the stored form.
pub fn is_valid_username(raw: &str) -> bool {
    let mut chars = raw.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && raw.len() <= MAX_USERNAME_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks a username against the contract and returns its canonical
/// (lowercase) form, or `None` if it is not a valid name.
pub fn canonical_username(raw: &str) -> Option<String> {
    is_valid_username(raw).then(|| raw.to_ascii_lowercase())
}

/// True if the line holds a control character the contract refuses
/// (anything in Unicode category Cc except TAB).
pub fn has_forbidden_control(line: &str) -> bool {
    line.chars().any(|c| c.is_control() && c != '\t')
}

/// Makes text safe to relay: TAB is the one control character a line may
/// carry, and the server never relays control characters, so it becomes a
/// space.
pub fn relayable(text: &str) -> String {
    text.replace('\t', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_contract() {
        assert_eq!(canonical_username("Alice"), Some("alice".into()));
        assert_eq!(canonical_username("a.b-c_9"), Some("a.b-c_9".into()));
        assert_eq!(canonical_username(&"a".repeat(32)), Some("a".repeat(32)));
        assert_eq!(canonical_username(&"a".repeat(33)), None);
        assert_eq!(canonical_username(""), None);
        assert_eq!(canonical_username("9lives"), None);
        assert_eq!(canonical_username("_x"), None);
        assert_eq!(canonical_username("a b"), None);
        assert_eq!(canonical_username("é"), None);
        assert!(is_valid_username("bob_1.x-y"));
        assert!(!is_valid_username("<user>"));
    }

    #[test]
    fn words_are_split_on_spaces_and_tabs_only() {
        assert_eq!(
            split_word("  send\t bob  hi there "),
            ("send", "bob  hi there ")
        );
        assert_eq!(split_word("ping"), ("ping", ""));
        assert_eq!(split_word(" \t "), ("", ""));
        assert_eq!(split_word(""), ("", ""));
        // A no-break space is not a separator.
        assert_eq!(split_word("a\u{a0}b c"), ("a\u{a0}b", "c"));
    }

    #[test]
    fn control_characters_other_than_tab_are_forbidden() {
        assert!(!has_forbidden_control("send bob hi\tthere"));
        assert!(has_forbidden_control("send bob \u{1b}[31mred"));
        assert!(has_forbidden_control("x\u{85}"));
        assert!(has_forbidden_control("x\r"));
        assert_eq!(relayable("a\tb"), "a b");
    }
}
