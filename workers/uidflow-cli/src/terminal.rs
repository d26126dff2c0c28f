//! Text from a message (history details, reasons, field errors, dead-letter errors, headers
//! and bodies) on its way to a terminal. A message is written by whoever published it: a
//! control character could move the cursor, rewrite earlier lines or change the terminal's
//! settings, and a bidirectional override could make text read differently than it is. Every
//! human-readable print path of the CLI passes such text through [`escape`] (or [`block`] for
//! a multi-line body), and JSON output through [`json`].
//!
//! Every table the CLI prints goes through [`Table`]: on a terminal its columns shrink to the
//! terminal's width (a cut cell ends in `…`); piped, it is printed at full width. Whether to
//! draw a progress line is [`progress_on_stderr`]'s answer: escape codes and carriage returns
//! go to a terminal only.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

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

/// True when stderr is a terminal: only then may a progress line use `\r` and escape codes.
pub fn progress_on_stderr() -> bool {
    std::io::stderr().is_terminal()
}

/// The width of the terminal stdout writes to; `None` when stdout is not a terminal (a pipe,
/// a file), and tables are then printed at full width.
pub fn stdout_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(&stdout).map(|(terminal_size::Width(w), _)| usize::from(w))
}

/// How a column's cells stand in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// One column: its header, alignment, and whether it may be cut to fit (ids may not: a cut id
/// is of no use).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    header: &'static str,
    align: Align,
    shrink: bool,
}

impl Column {
    /// Left-aligned text that may be cut to fit.
    pub const fn text(header: &'static str) -> Self {
        Self {
            header,
            align: Align::Left,
            shrink: true,
        }
    }

    /// A right-aligned number (never cut).
    pub const fn number(header: &'static str) -> Self {
        Self {
            header,
            align: Align::Right,
            shrink: false,
        }
    }

    /// Left-aligned text that is never cut (ids, times).
    pub const fn fixed(header: &'static str) -> Self {
        Self {
            header,
            align: Align::Left,
            shrink: false,
        }
    }
}

/// Between two columns.
const GAP: &str = "  ";
/// The narrowest a shrinkable column is made (an ellipsis and two characters).
const MIN_WIDTH: usize = 3;

/// A table for people: columns separated by two spaces, a header line, one line per row. Every
/// cell passes through [`escape`] (escaping twice changes nothing).
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    indent: usize,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[Column]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
            indent: 0,
        }
    }

    /// Every line starts with `spaces` spaces (a table inside a block).
    pub fn indented(mut self, spaces: usize) -> Self {
        self.indent = spaces;
        self
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns.len())
            .map(|cell| escape(cell.as_ref()).into_owned())
            .collect();
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// Each column's width: the widest cell (or header), then, if the whole is wider than
    /// `width`, the widest shrinkable column cut by one, again and again, down to
    /// [`MIN_WIDTH`]. What cannot shrink further stays (the line is then longer than `width`).
    fn widths(&self, width: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                self.rows
                    .iter()
                    .map(|row| row[i].width())
                    .chain([column.header.width()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(width) = width else {
            return widths;
        };
        let gaps = GAP.len() * self.columns.len().saturating_sub(1) + self.indent;
        while widths.iter().sum::<usize>() + gaps > width {
            let widest = widths
                .iter()
                .enumerate()
                .filter(|&(i, &w)| self.columns[i].shrink && w > MIN_WIDTH)
                .max_by_key(|&(i, &w)| (w, i))
                .map(|(i, _)| i);
            match widest {
                Some(i) => widths[i] -= 1,
                None => break,
            }
        }
        widths
    }

    /// The lines, fitted to `width` columns (`None`: full width). No line ends in spaces.
    pub fn render(&self, width: Option<usize>) -> Vec<String> {
        let widths = self.widths(width);
        let header: Vec<String> = self.columns.iter().map(|c| c.header.to_owned()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let mut line = " ".repeat(self.indent);
                for (i, (cell, column)) in row.iter().zip(&self.columns).enumerate() {
                    if i > 0 {
                        line.push_str(GAP);
                    }
                    let cell = fit(cell, widths[i]);
                    let pad = " ".repeat(widths[i].saturating_sub(cell.width()));
                    match column.align {
                        Align::Left => {
                            line.push_str(&cell);
                            line.push_str(&pad);
                        }
                        Align::Right => {
                            line.push_str(&pad);
                            line.push_str(&cell);
                        }
                    }
                }
                line.truncate(line.trim_end_matches(' ').len());
                line
            })
            .collect()
    }

    /// Prints the table on stdout, fitted to the terminal when stdout is one; a closed stdout
    /// is ignored.
    pub fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        for line in self.render(stdout_width()) {
            let _ = writeln!(stdout, "{line}");
        }
    }
}

/// `text` cut to `width` display columns, the cut marked by `…`.
fn fit(text: &str, width: usize) -> Cow<'_, str> {
    if text.width() <= width {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    Cow::Owned(out)
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

    fn sample() -> Table {
        let mut table = Table::new(&[
            Column::fixed("id"),
            Column::text("kind"),
            Column::number("n"),
            Column::text("error"),
        ]);
        table.row([
            "a1",
            "exhausted",
            "20",
            "the MVD answered 503 after twenty attempts",
        ]);
        table.row(["b2", "permanent", "1", "400"]);
        table
    }

    #[test]
    fn without_a_width_every_cell_is_whole_and_columns_line_up() {
        let lines = sample().render(None);
        assert_eq!(
            lines,
            [
                "id  kind        n  error",
                "a1  exhausted  20  the MVD answered 503 after twenty attempts",
                "b2  permanent   1  400",
            ]
        );
    }

    #[test]
    fn on_a_narrow_terminal_the_widest_text_column_is_cut_first() {
        let lines = sample().render(Some(40));
        assert!(lines.iter().all(|l| l.width() <= 40), "{lines:#?}");
        assert_eq!(lines[1], "a1  exhausted  20  the MVD answered 503…");
        // The shorter cell of the cut column is not touched; ids and numbers never are.
        assert_eq!(lines[2], "b2  permanent   1  400");
    }

    #[test]
    fn narrower_still_every_text_column_shrinks_but_ids_and_numbers_stay() {
        let lines = sample().render(Some(16));
        assert_eq!(
            lines,
            ["id  ki…   n  er…", "a1  ex…  20  th…", "b2  pe…   1  400"]
        );
        assert!(lines.iter().all(|l| l.width() <= 16), "{lines:#?}");
    }

    #[test]
    fn a_width_too_small_for_the_fixed_columns_leaves_them_whole() {
        let mut table = Table::new(&[Column::fixed("application"), Column::text("status")]);
        table.row(["0b8f2c3e-7d2a-4c1f-9a6b-2f1e4d5c6b7a", "completed"]);
        let lines = table.render(Some(20));
        assert!(lines[1].starts_with("0b8f2c3e-7d2a-4c1f-9a6b-2f1e4d5c6b7a  "));
        assert!(lines[1].ends_with("  co…"), "{lines:#?}");
    }

    #[test]
    fn wide_characters_count_by_their_display_width_and_cells_are_escaped() {
        let mut table = Table::new(&[Column::text("name"), Column::text("x")]);
        table.row(["日本語テキスト", "a\u{1b}[2Jb"]);
        let full = table.render(None);
        assert_eq!(full[1], "日本語テキスト  a\\u{1b}[2Jb");
        let lines = table.render(Some(12));
        assert!(lines.iter().all(|l| l.width() <= 12), "{lines:#?}");
        assert!(!lines.concat().contains('\u{1b}'));
    }
}
