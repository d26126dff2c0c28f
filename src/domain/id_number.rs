//! The identification number of a Belarusian citizen: 14 characters
//! `D DDMMYY L DDD LL C`, parsed, validated and kept in its normalised form.
//!
//! | position | meaning |
//! | --- | --- |
//! | 1 | sex and century of birth: `1`/`2` 1800–1899, `3`/`4` 1900–1999, `5`/`6` 2000–2099 |
//! | 2–7 | date of birth `DDMMYY`, a real calendar date in that century |
//! | 8 | a Latin capital letter `A`–`Z` |
//! | 9–11 | three digits |
//! | 12–13 | two Latin capital letters |
//! | 14 | check digit |
//!
//! The input is trimmed and upper-cased first. A Cyrillic letter that looks like a
//! Latin one (`А В Е К М Н О Р С Т Х І`, upper or lower case) is rejected with a
//! message naming each such letter and its position; it is never converted.
//!
//! The checks run in this order, and the first failing one is reported: Cyrillic
//! look-alikes, any other non-ASCII character, length, the character class of each
//! position, the first digit, the date, the check digit. A number whose date is not
//! real is therefore reported for its date, whatever its check digit.
//!
//! # Check digit
//!
//! Each of the first 13 characters has a value (a digit itself, a letter `A` = 10 …
//! `Z` = 35), multiplied by the weights 7, 3, 1, 7, 3, 1, … from position 1; the sum
//! modulo 10 is the check digit.
//!
//! # What a single wrong character can hide
//!
//! Changing one character at position `p` from value `a` to value `b` shifts the
//! weighted sum by `w(p) · (b − a)`. Every weight (7, 3, 1) is coprime to 10, so the
//! check digit notices the change unless `b − a` is a multiple of 10. Digits differ
//! by at most 9, so every digit-for-digit substitution is caught (a date that stays
//! a real date, a different sex, a changed check digit: all caught). A digit put
//! where a letter belongs, or a letter where a digit belongs, fails the character
//! class check. What remains, and is exactly what goes **undetected**, is a letter
//! replaced by another letter whose value is the same modulo 10, at the letter
//! positions 8, 12 and 13: the groups `A K U`, `B L V`, `C M W`, `D N X`, `E O Y`,
//! `F P Z`, `G Q`, `H R`, `I S`, `J T`. The property test in this module checks this
//! characterisation for every position and every replacement character.

use std::fmt;

use chrono::NaiveDate;
use thiserror::Error;

use super::mask::mask_identification_number;

/// Number of characters of an identification number.
const LENGTH: usize = 14;

/// Weights of positions 1, 2, 3, … (repeating) in the check digit.
const WEIGHTS: [u32; 3] = [7, 3, 1];

/// Cyrillic capitals that look like Latin capitals, which the input is checked for.
const CYRILLIC_LOOKALIKES: [char; 12] =
    ['А', 'В', 'Е', 'К', 'М', 'Н', 'О', 'Р', 'С', 'Т', 'Х', 'І'];

/// A validated identification number, always the normalised 14 characters.
///
/// `Debug` prints the masked form; there is no `Display`, so that callers choose
/// between [`as_str`](Self::as_str) and [`masked`](Self::masked).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentificationNumber(String);

/// Why a text is not a valid identification number.
///
/// Each message is one sentence a clerk understands and never contains the whole
/// number: at most one character or the date part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdNumberError {
    /// Nothing but whitespace was given.
    #[error("must not be empty")]
    Empty,
    /// Cyrillic letters that look like Latin ones, in order, with 1-based positions.
    #[error("{}", cyrillic_message(.0))]
    CyrillicLookalikes(Vec<(usize, char)>),
    /// A non-ASCII character that is not a Cyrillic look-alike.
    #[error("position {position} holds '{}', which is not a Latin letter or digit", .found.escape_debug())]
    NotLatin {
        /// 1-based position in the trimmed input.
        position: usize,
        /// The character as given.
        found: char,
    },
    /// Not 14 characters long.
    #[error("must be 14 characters, found {found}")]
    WrongLength {
        /// Number of characters found.
        found: usize,
    },
    /// A position that must hold a digit holds something else.
    #[error("position {position} must be a digit, found '{}'", .found.escape_debug())]
    DigitExpected {
        /// 1-based position.
        position: usize,
        /// The (upper-cased) character found.
        found: char,
    },
    /// A position that must hold a Latin capital letter holds something else.
    #[error("position {position} must be a Latin capital letter, found '{}'", .found.escape_debug())]
    LetterExpected {
        /// 1-based position.
        position: usize,
        /// The (upper-cased) character found.
        found: char,
    },
    /// The first digit is not 1–6.
    #[error("position 1 must be 1–6 (sex and century of birth), found '{found}'")]
    SexAndCentury {
        /// The digit found.
        found: char,
    },
    /// Positions 2–7 are not a real calendar date in the century of position 1.
    #[error("positions 2–7 ({digits}) are not a real date: {day:02}.{month:02}.{year}")]
    NotADate {
        /// The six digits `DDMMYY`.
        digits: String,
        /// Day as written.
        day: u32,
        /// Month as written.
        month: u32,
        /// Full year, with the century taken from position 1.
        year: i32,
    },
    /// The check digit does not match the first 13 characters.
    #[error("check digit is {found} but must be {expected}")]
    CheckDigit {
        /// The check digit given.
        found: u8,
        /// The check digit computed from the first 13 characters.
        expected: u8,
    },
}

/// The message for Cyrillic look-alikes, one or several.
fn cyrillic_message(found: &[(usize, char)]) -> String {
    let listed = found
        .iter()
        .map(|(position, letter)| format!("'{letter}' at position {position}"))
        .collect::<Vec<_>>()
        .join(", ");
    if found.len() == 1 {
        format!("Cyrillic letter {listed}: use the Latin letter")
    } else {
        format!("Cyrillic letters {listed}: use the Latin letters")
    }
}

/// The Cyrillic look-alike capital that `c` is or upper-cases to, if any.
fn cyrillic_lookalike(c: char) -> Option<char> {
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) if CYRILLIC_LOOKALIKES.contains(&u) => Some(u),
        _ => None,
    }
}

/// The value of a character in the check digit: `0`–`9` themselves, `A`–`Z` 10–35.
fn char_value(c: char) -> Option<u32> {
    match c {
        '0'..='9' | 'A'..='Z' => c.to_digit(36),
        _ => None,
    }
}

/// Computes the check digit of the first 13 characters of an identification number.
///
/// Returns `None` unless `first13` is exactly 13 characters, each `0`–`9` or `A`–`Z`.
pub fn check_digit(first13: &str) -> Option<u8> {
    if first13.chars().count() != LENGTH - 1 {
        return None;
    }
    let mut sum = 0;
    for (index, c) in first13.chars().enumerate() {
        sum += char_value(c)? * WEIGHTS[index % WEIGHTS.len()];
    }
    u8::try_from(sum % 10).ok()
}

/// The first year of the century that the first digit (`1`–`6`) stands for.
fn century_start(first: u8) -> Option<i32> {
    match first {
        b'1' | b'2' => Some(1800),
        b'3' | b'4' => Some(1900),
        b'5' | b'6' => Some(2000),
        _ => None,
    }
}

/// Two ASCII digits as a number.
fn two_digits(pair: &[u8]) -> u32 {
    pair.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
}

/// Decodes the date of birth of a number whose characters have the right classes.
fn decode_date(number: &[u8]) -> Result<NaiveDate, IdNumberError> {
    let Some(century) = century_start(number[0]) else {
        return Err(IdNumberError::SexAndCentury {
            found: char::from(number[0]),
        });
    };
    let day = two_digits(&number[1..3]);
    let month = two_digits(&number[3..5]);
    // At most 99, so the conversion is lossless.
    let year = century + two_digits(&number[5..7]) as i32;
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| IdNumberError::NotADate {
        digits: String::from_utf8_lossy(&number[1..7]).into_owned(),
        day,
        month,
        year,
    })
}

impl IdentificationNumber {
    /// Parses an identification number: trims and upper-cases it, then validates it.
    pub fn parse(input: &str) -> Result<Self, IdNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(IdNumberError::Empty);
        }

        let lookalikes: Vec<(usize, char)> = trimmed
            .chars()
            .enumerate()
            .filter_map(|(index, c)| cyrillic_lookalike(c).map(|u| (index + 1, u)))
            .collect();
        if !lookalikes.is_empty() {
            return Err(IdNumberError::CyrillicLookalikes(lookalikes));
        }
        if let Some((index, found)) = trimmed.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
            return Err(IdNumberError::NotLatin {
                position: index + 1,
                found,
            });
        }

        // Only ASCII from here on: bytes are characters.
        let number = trimmed.to_ascii_uppercase();
        if number.len() != LENGTH {
            return Err(IdNumberError::WrongLength {
                found: number.len(),
            });
        }

        let bytes = number.as_bytes();
        for (index, &b) in bytes.iter().enumerate() {
            let position = index + 1;
            let found = char::from(b);
            let letter_position = matches!(position, 8 | 12 | 13);
            if letter_position && !b.is_ascii_uppercase() {
                return Err(IdNumberError::LetterExpected { position, found });
            }
            if !letter_position && !b.is_ascii_digit() {
                return Err(IdNumberError::DigitExpected { position, found });
            }
        }

        decode_date(bytes)?;

        let found = bytes[LENGTH - 1] - b'0';
        let expected = check_digit(&number[..LENGTH - 1])
            .expect("the first 13 characters were checked to be 0-9 or A-Z");
        if expected != found {
            return Err(IdNumberError::CheckDigit { found, expected });
        }

        Ok(Self(number))
    }

    /// The normalised 14 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The date of birth encoded in positions 1–7.
    pub fn date_of_birth(&self) -> NaiveDate {
        decode_date(self.0.as_bytes()).expect("an IdentificationNumber holds a real date")
    }

    /// The masked form, safe for logs: first 8, `***`, last 3.
    pub fn masked(&self) -> String {
        mask_identification_number(&self.0)
    }
}

impl fmt::Debug for IdentificationNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdentificationNumber")
            .field(&self.masked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The vectors of the specification and the dates of birth they encode.
    const VALID: [(&str, (i32, u32, u32)); 8] = [
        ("3140385A001PB5", (1985, 3, 14)),
        ("3270287A012PB2", (1987, 2, 27)),
        ("3041088A042PB2", (1988, 10, 4)),
        ("4250799K031PB8", (1999, 7, 25)),
        ("5010106M007PB0", (2006, 1, 1)),
        ("6291208C115PB7", (2008, 12, 29)),
        ("2311299E002PB9", (1899, 12, 31)),
        ("4150690H123BA9", (1990, 6, 15)),
    ];

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("test dates are real")
    }

    #[test]
    fn specification_vectors_parse_with_their_dates_of_birth() {
        for (number, (y, m, d)) in VALID {
            let parsed = IdentificationNumber::parse(number)
                .unwrap_or_else(|e| panic!("{number} rejected: {e}"));
            assert_eq!(parsed.as_str(), number);
            assert_eq!(parsed.date_of_birth(), date(y, m, d), "{number}");
        }
    }

    #[test]
    fn check_digit_of_the_first_thirteen_characters_matches_the_vectors() {
        for (number, _) in VALID {
            let expected = number.as_bytes()[13] - b'0';
            assert_eq!(check_digit(&number[..13]), Some(expected), "{number}");
        }
    }

    #[test]
    fn check_digit_refuses_anything_but_thirteen_digits_or_latin_capitals() {
        let cases = [
            "",
            "3140385A001P",
            "3140385A001PB5",
            "3140385a001PB",
            "3140385А001PB", // Cyrillic А
            "3140385-001PB",
            "3140385 001PB",
        ];
        for input in cases {
            assert_eq!(check_digit(input), None, "{input:?}");
        }
    }

    #[test]
    fn lowercase_and_surrounding_whitespace_are_normalised() {
        let cases = [
            "3270287a012pb2",
            "  3270287A012PB2  ",
            "\t3270287a012Pb2\n",
            "3270287A012PB2\u{00A0}",
        ];
        for input in cases {
            let parsed = IdentificationNumber::parse(input)
                .unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
            assert_eq!(parsed.as_str(), "3270287A012PB2", "{input:?}");
        }
    }

    #[test]
    fn invalid_numbers_are_rejected_with_a_plain_sentence() {
        let cases = [
            ("", "must not be empty"),
            ("   ", "must not be empty"),
            ("3270287A012PB3", "check digit is 3 but must be 2"),
            ("3270287A012PB", "must be 14 characters, found 13"),
            ("3270287A012PB22", "must be 14 characters, found 15"),
            (
                "7270287A012PB2",
                "position 1 must be 1–6 (sex and century of birth), found '7'",
            ),
            (
                "0270287A012PB2",
                "position 1 must be 1–6 (sex and century of birth), found '0'",
            ),
            (
                "3270287A012P52",
                "position 13 must be a Latin capital letter, found '5'",
            ),
            (
                "32702875012PB2",
                "position 8 must be a Latin capital letter, found '5'",
            ),
            ("3270287AA12PB2", "position 9 must be a digit, found 'A'"),
            ("A270287A012PB2", "position 1 must be a digit, found 'A'"),
            ("3270287A012PBX", "position 14 must be a digit, found 'X'"),
            ("3270287A 12PB2", "position 9 must be a digit, found ' '"),
            ("3270-87A012PB2", "position 5 must be a digit, found '-'"),
            (
                "3270287A012PB\u{7}",
                "position 14 must be a digit, found '\\u{7}'",
            ),
            (
                "3270287Ä012PB2",
                "position 8 holds 'Ä', which is not a Latin letter or digit",
            ),
            (
                "3270287Д012PB2",
                "position 8 holds 'Д', which is not a Latin letter or digit",
            ),
            (
                "３270287A012PB2",
                "position 1 holds '３', which is not a Latin letter or digit",
            ),
            (
                "3000000A000AA0",
                "positions 2–7 (000000) are not a real date: 00.00.1900",
            ),
            (
                "3321287A012PB2",
                "positions 2–7 (321287) are not a real date: 32.12.1987",
            ),
            (
                "3011387A012PB2",
                "positions 2–7 (011387) are not a real date: 01.13.1987",
            ),
            // 1900 is not a leap year, 2000 is.
            (
                "3290200A012PB2",
                "positions 2–7 (290200) are not a real date: 29.02.1900",
            ),
        ];
        for (input, message) in cases {
            let error = IdentificationNumber::parse(input).expect_err(input);
            assert_eq!(error.to_string(), message, "{input:?}");
        }
    }

    #[test]
    fn cyrillic_lookalike_is_named_with_its_position() {
        let cases = [
            (
                "3270287А012PB2",
                "Cyrillic letter 'А' at position 8: use the Latin letter",
            ),
            (
                "3270287а012PB2",
                "Cyrillic letter 'А' at position 8: use the Latin letter",
            ),
            (
                "  3270287A012PС2 ",
                "Cyrillic letter 'С' at position 13: use the Latin letter",
            ),
            (
                "3270287A012ІB2",
                "Cyrillic letter 'І' at position 12: use the Latin letter",
            ),
            (
                "3270287А012РВ2",
                "Cyrillic letters 'А' at position 8, 'Р' at position 12, 'В' at position 13: use the Latin letters",
            ),
            (
                "3270287а012рв2",
                "Cyrillic letters 'А' at position 8, 'Р' at position 12, 'В' at position 13: use the Latin letters",
            ),
            // Reported before the length and before other non-ASCII characters.
            (
                "ЕКМНОТХ",
                "Cyrillic letters 'Е' at position 1, 'К' at position 2, 'М' at position 3, 'Н' at position 4, 'О' at position 5, 'Т' at position 6, 'Х' at position 7: use the Latin letters",
            ),
            (
                "Д270287А012PB2",
                "Cyrillic letter 'А' at position 8: use the Latin letter",
            ),
        ];
        for (input, message) in cases {
            let error = IdentificationNumber::parse(input).expect_err(input);
            assert_eq!(error.to_string(), message, "{input:?}");
        }
    }

    #[test]
    fn an_impossible_date_is_reported_whatever_the_check_digit() {
        for check in '0'..='9' {
            let input = format!("3310287A012PB{check}");
            let error = IdentificationNumber::parse(&input).expect_err(&input);
            assert_eq!(
                error.to_string(),
                "positions 2–7 (310287) are not a real date: 31.02.1987",
                "{input}"
            );
        }
    }

    #[test]
    fn error_messages_never_contain_the_whole_number() {
        let inputs = [
            "3270287A012PB3",
            "3270287A012PB",
            "7270287A012PB2",
            "3310287A012PB2",
            "3270287А012РВ2",
            "3270287A012P52",
            "3270287Ä012PB2",
        ];
        for input in inputs {
            let message = IdentificationNumber::parse(input)
                .expect_err(input)
                .to_string();
            assert!(!message.contains(input), "{message}");
            assert!(!message.contains(&input[..7]), "{message}");
        }
    }

    #[test]
    fn debug_and_masked_show_only_the_masked_number() {
        let number = IdentificationNumber::parse("3140385A001PB5").expect("valid vector");
        assert_eq!(number.masked(), "3140385A***PB5");
        assert_eq!(
            format!("{number:?}"),
            "IdentificationNumber(\"3140385A***PB5\")"
        );
    }

    /// The characters a number may consist of, for the substitution property.
    const ALPHABET: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

    /// True exactly for the single-character substitutions that a number still
    /// passes validation with: letter for letter, at a letter position (8, 12, 13),
    /// where both letters have the same value modulo 10 (A↔K↔U, B↔L↔V, …).
    fn is_undetectable_substitution(position: usize, from: char, to: char) -> bool {
        let same_value_mod_10 = match (char_value(from), char_value(to)) {
            (Some(a), Some(b)) => a % 10 == b % 10,
            _ => false,
        };
        matches!(position, 8 | 12 | 13)
            && from != to
            && from.is_ascii_uppercase()
            && to.is_ascii_uppercase()
            && same_value_mod_10
    }

    #[test]
    fn undetectable_substitutions_are_same_letter_groups_at_letter_positions() {
        let cases = [
            (8, 'A', 'K', true),
            (8, 'K', 'U', true),
            (12, 'A', 'U', true),
            (13, 'J', 'T', true),
            (13, 'F', 'Z', true),
            (8, 'A', 'B', false),
            (8, 'A', 'A', false),
            (8, 'A', '0', false),
            (9, '0', '1', false),
            (1, '3', '4', false),
            (14, '2', '3', false),
            (2, 'A', 'K', false),
        ];
        for (position, from, to, expected) in cases {
            assert_eq!(
                is_undetectable_substitution(position, from, to),
                expected,
                "{position} {from}→{to}"
            );
        }
    }

    /// A valid number for a date, a sex and the free characters, with its check digit.
    fn build_number(
        birth: NaiveDate,
        female: bool,
        region: char,
        digits: &str,
        letters: &str,
    ) -> String {
        use chrono::Datelike;
        let base = match birth.year() {
            1800..=1899 => 1,
            1900..=1999 => 3,
            _ => 5,
        };
        let first = base + u32::from(female);
        let first13 = format!(
            "{first}{:02}{:02}{:02}{region}{digits}{letters}",
            birth.day(),
            birth.month(),
            birth.year() % 100
        );
        let check = check_digit(&first13).expect("generated characters are valid");
        format!("{first13}{check}")
    }

    /// Valid numbers with the date of birth they encode.
    fn valid_number() -> impl Strategy<Value = (String, NaiveDate)> {
        let first = date(1800, 1, 1);
        let span = (date(2099, 12, 31) - first).num_days();
        (0..=span, any::<bool>(), "[A-Z]", "[0-9]{3}", "[A-Z]{2}").prop_map(
            move |(offset, female, region, digits, letters)| {
                let birth = first + chrono::Duration::days(offset);
                let region = region.chars().next().expect("one letter");
                let number = build_number(birth, female, region, &digits, &letters);
                (number, birth)
            },
        )
    }

    proptest! {
        #[test]
        fn generated_valid_numbers_parse_and_round_trip((number, birth) in valid_number()) {
            let parsed = IdentificationNumber::parse(&number);
            prop_assert!(parsed.is_ok(), "{number} rejected: {parsed:?}");
            let parsed = parsed.expect("checked above");
            prop_assert_eq!(parsed.as_str(), number.as_str());
            prop_assert_eq!(parsed.date_of_birth(), birth);

            let sloppy = format!("  {} ", number.to_lowercase());
            prop_assert_eq!(IdentificationNumber::parse(&sloppy), Ok(parsed));
        }

        #[test]
        fn single_substitutions_are_rejected_unless_characterised_as_undetectable(
            (number, _) in valid_number()
        ) {
            for (index, from) in number.chars().enumerate() {
                let position = index + 1;
                for to in ALPHABET.chars().filter(|&c| c != from) {
                    let mut changed: Vec<char> = number.chars().collect();
                    changed[index] = to;
                    let changed: String = changed.into_iter().collect();
                    let result = IdentificationNumber::parse(&changed);
                    if is_undetectable_substitution(position, from, to) {
                        prop_assert!(
                            result.is_ok(),
                            "{position} {from}→{to}: {changed} rejected: {result:?}"
                        );
                    } else {
                        prop_assert!(
                            result.is_err(),
                            "{position} {from}→{to}: {changed} accepted"
                        );
                    }
                }
            }
        }
    }
}
