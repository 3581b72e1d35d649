//! What interactive mode has left on the screen, kept so the screen can be
//! drawn again after the terminal is resized. Pure: it holds lines and
//! builds the text of a redraw; `interactive` writes it.
//!
//! Why a redraw at all: the line editor clears and redraws its input by
//! moving the cursor up as many rows as the input took at the *old* width.
//! Terminals that reflow on resize (tmux, VTE, kitty, iTerm2) have by then
//! re-wrapped those rows to the new width, so the editor moves up too far
//! (erasing the lines printed just above the prompt) or too little (leaving a
//! stale copy of the input). Whatever the terminal did, clearing the screen
//! and printing its last lines again, the way irssi or weechat repaint after
//! a resize, puts it back in a known state.

use std::collections::VecDeque;

use unicode_width::UnicodeWidthChar;

/// Lines kept: more than any terminal has rows, so a redraw can always fill
/// the screen, and few enough that memory stays small (a line is at most a
/// few KiB).
pub const KEPT_LINES: usize = 500;

/// Erase the whole screen and put the cursor in the top-left corner.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// The last lines shown, oldest first.
#[derive(Debug, Default)]
pub struct Transcript {
    lines: VecDeque<String>,
}

impl Transcript {
    /// Notes one line as shown (without its LF).
    pub fn push(&mut self, line: &str) {
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// The text that clears a `cols` by `rows` screen and prints the latest
    /// lines again, filling all but `reserved` rows (left for the prompt).
    /// It ends with a line feed, so whatever is printed next starts on a
    /// line of its own.
    pub fn redraw(&self, cols: usize, rows: usize, reserved: usize) -> String {
        let cols = cols.max(1);
        let mut room = rows.saturating_sub(reserved).max(1);
        let mut shown = Vec::new();
        for line in self.lines.iter().rev() {
            let height = rows_taken(line, cols);
            if height > room {
                break;
            }
            room -= height;
            shown.push(line.as_str());
        }
        let mut out = String::from(CLEAR_SCREEN);
        for line in shown.iter().rev() {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// How many terminal rows `line` takes at `cols` columns (at least one).
pub fn rows_taken(line: &str, cols: usize) -> usize {
    width(line).div_ceil(cols.max(1)).max(1)
}

/// The columns `text` fills: escape sequences (colour) take none, wide
/// characters take two.
pub fn width(text: &str) -> usize {
    let mut total = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final byte from @ to ~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        total += c.width().unwrap_or(0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(lines: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        for line in lines {
            t.push(line);
        }
        t
    }

    #[test]
    fn width_skips_colour_and_counts_wide_characters() {
        assert_eq!(width("\x1b[1m\x1b[36mbob\x1b[0m: hi"), 7);
        assert_eq!(width("日本"), 4);
        assert_eq!(width(""), 0);
    }

    #[test]
    fn rows_follow_the_width() {
        assert_eq!(rows_taken("", 10), 1);
        assert_eq!(rows_taken("0123456789", 10), 1);
        assert_eq!(rows_taken("0123456789a", 10), 2);
        assert_eq!(rows_taken("abc", 0), 3);
    }

    #[test]
    fn redraw_fills_the_screen_from_the_latest_line_up() {
        let t = transcript(&["one", "two", "three is long", "four"]);
        // 10 columns, 5 rows, 1 for the prompt: "four" (1), "three is
        // long" (2), "two" (1) fit; "one" would not.
        assert_eq!(
            t.redraw(10, 5, 1),
            "\x1b[H\x1b[2Jtwo\nthree is long\nfour\n"
        );
        assert_eq!(
            t.redraw(80, 24, 1),
            "\x1b[H\x1b[2Jone\ntwo\nthree is long\nfour\n"
        );
        // A line taller than the whole screen is left out, not cut.
        assert_eq!(t.redraw(2, 2, 1), "\x1b[H\x1b[2J");
    }

    #[test]
    fn only_the_latest_lines_are_kept() {
        let mut t = Transcript::default();
        for i in 0..KEPT_LINES + 10 {
            t.push(&i.to_string());
        }
        let all = t.redraw(80, KEPT_LINES + 100, 0);
        assert!(all.starts_with("\x1b[H\x1b[2J10\n"), "{}", &all[..20]);
        assert!(all.ends_with(&format!("\n{}\n", KEPT_LINES + 9)));
    }
}
