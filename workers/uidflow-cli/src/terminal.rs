//! Text from a message (history details, reasons, field errors, dead-letter errors, headers
//! and bodies) on its way to a terminal. A message is written by whoever published it: a
//! control character could move the cursor, rewrite earlier lines or change the terminal's
//! settings, and a bidirectional override could make text read differently than it is. Every
//! human-readable print path of the CLI passes such text through [`escape`] (or [`block`] for
//! a multi-line body), and JSON output through [`json`].

use std::borrow::Cow;
use std::fmt::Write;

/// True for what must not reach a terminal as is: C0 controls, DEL, C1 controls, and the
/// bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character written as a visible escape (`\u{1b}`), newlines and
/// tabs included: one value, one line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_except(text, |_| false)
}

/// [`escape`] that keeps newlines and tabs: a body shown as text, line by line.
pub fn block(text: &str) -> Cow<'_, str> {
    escape_except(text, |c| c == '\n' || c == '\t')
}

fn escape_except(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) && !keep(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Pretty JSON that is safe on a terminal and still the same JSON: serde_json escapes C0
/// controls but writes DEL, C1 controls and bidirectional overrides as they are; those (which
/// can only be inside strings) become `\uXXXX`.
pub fn json(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    if !text.chars().any(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        // Newlines here are the pretty printer's own (a newline in a string is `\n`).
        if unsafe_char(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_made_visible() {
        let hostile =
            "ok\u{1b}[2J\u{7}\r\u{7f}\u{9b}31m\u{202e}cod.exe\u{2066}x\u{2069}\nnext\ttab";
        let shown = escape(hostile);
        assert_eq!(
            shown,
            "ok\\u{1b}[2J\\u{7}\\u{d}\\u{7f}\\u{9b}31m\\u{202e}cod.exe\\u{2066}x\\u{2069}\\u{a}next\\u{9}tab"
        );
        assert!(!shown.chars().any(unsafe_char));
        let lines = block(hostile);
        assert!(lines.contains("\nnext\ttab") && lines.contains("\\u{1b}"));
        // Plain text, Cyrillic and other scripts pass as they are, without a copy.
        assert!(matches!(escape("Іванoў — ok ✓"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_the_same_json_without_raw_control_characters() {
        let value = serde_json::json!({
            "error": "a\u{1b}[31mred\u{7f}\u{85}\u{202e}", "\u{9b}key": ["\n"]
        });
        let text = json(&value);
        assert!(!text.chars().any(|c| unsafe_char(c) && c != '\n'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}
