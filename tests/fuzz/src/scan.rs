//! Finding personal data in text: identification numbers standing as words of their own, and
//! phone-like runs of digits.

use crate::reference;

/// Word characters for the purpose of "an identification number standing on its own": Unicode
/// letters and digits and `_`. An identification number glued to such a character is not
/// looked for (it does not stand on its own), so this is conservative.
fn word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every valid identification number (normalised) that stands as a word of its own in `text`.
pub fn id_numbers(text: &str) -> Vec<String> {
    text.split(|c: char| !word(c))
        .filter(|w| w.len() == 14)
        .filter_map(|w| reference::identification_number(w).map(|(n, _)| n))
        .collect()
}

/// The same for bytes that are not UTF-8: any non-ASCII byte counts as a word character.
pub fn id_numbers_in_bytes(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b.is_ascii() && !(b.is_ascii_alphanumeric() || b == b'_'))
        .filter(|w| w.len() == 14 && w.is_ascii())
        .filter_map(|w| {
            let w = std::str::from_utf8(w).ok()?;
            reference::identification_number(w).map(|(n, _)| n)
        })
        .collect()
}

/// The longest run of ASCII digits joined only by spaces, parentheses and dashes (what a phone
/// number typed with separators looks like).
pub fn longest_digit_run(bytes: &[u8]) -> usize {
    let (mut best, mut current) = (0, 0);
    for &b in bytes {
        match b {
            b'0'..=b'9' => {
                current += 1;
                best = best.max(current);
            }
            b' ' | b'(' | b')' | b'-' => {}
            _ => current = 0,
        }
    }
    best
}

/// A phone is 9 digits after the country code; the masking promise is about runs of 9 or more.
pub const PHONE_DIGITS: usize = 9;

/// True if `haystack` contains `needle`, ignoring ASCII case.
pub fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}
