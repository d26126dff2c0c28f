//! Validation of applicants' names (surname, given name, patronymic).
//!
//! A name is 1–100 characters of one script, Cyrillic (Belarusian or Russian:
//! `А`–`Я`, `а`–`я`, `Ё ё`, `І і`, `Ў ў`) or Latin (`A`–`Z`, `a`–`z` and the Latin
//! letters of U+00C0–U+017F, which excludes `×` and `÷`), with single spaces,
//! hyphens or apostrophes (`'` U+0027, `’` U+2019, `ʼ` U+02BC) between letters.
//! Mixing the two scripts is refused, because a name such as `Ivanоv` with a
//! Cyrillic `о` looks right and is not. The name is checked as given: nothing is
//! trimmed or converted.
//!
//! Checks run in this order, the first failing one reported: empty, length, each
//! character, mixed scripts, first and last character, consecutive separators.

use thiserror::Error;

/// Most characters a name may have.
const MAX_CHARS: usize = 100;

/// Why a text is not an acceptable name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("must not be empty")]
    Empty,
    /// More than 100 characters.
    #[error("must be at most 100 characters, found {found}")]
    TooLong {
        /// Number of characters found.
        found: usize,
    },
    /// A character that is neither a letter of the two scripts nor a separator.
    #[error(
        "contains '{}' (U+{:04X}), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe",
        .found.escape_debug(),
        u32::from(*.found)
    )]
    InvalidCharacter {
        /// The first such character.
        found: char,
    },
    /// Both Cyrillic and Latin letters.
    #[error("mixes Cyrillic and Latin letters")]
    MixedScripts,
    /// A separator at the start or at the end.
    #[error("must start and end with a letter")]
    NotLetterAtEdge,
    /// Two separators next to each other.
    #[error("has two separators in a row")]
    ConsecutiveSeparators,
}

/// What a character of a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A Belarusian or Russian Cyrillic letter.
    Cyrillic,
    /// A Latin letter.
    Latin,
    /// Space, hyphen or apostrophe.
    Separator,
}

/// Classifies a character, `None` for anything a name may not contain.
fn classify(c: char) -> Option<Class> {
    match c {
        'А'..='я' | 'Ё' | 'ё' | 'І' | 'і' | 'Ў' | 'ў' => Some(Class::Cyrillic),
        '×' | '÷' => None,
        'A'..='Z' | 'a'..='z' | '\u{00C0}'..='\u{017F}' => Some(Class::Latin),
        ' ' | '-' | '\'' | '\u{2019}' | '\u{02BC}' => Some(Class::Separator),
        _ => None,
    }
}

/// Checks that `input` is an acceptable person name; see the module documentation.
pub fn validate_person_name(input: &str) -> Result<(), NameError> {
    if input.is_empty() {
        return Err(NameError::Empty);
    }
    let count = input.chars().count();
    if count > MAX_CHARS {
        return Err(NameError::TooLong { found: count });
    }

    let mut classes = Vec::with_capacity(count);
    for c in input.chars() {
        classes.push(classify(c).ok_or(NameError::InvalidCharacter { found: c })?);
    }

    if classes.contains(&Class::Cyrillic) && classes.contains(&Class::Latin) {
        return Err(NameError::MixedScripts);
    }
    if classes.first() == Some(&Class::Separator) || classes.last() == Some(&Class::Separator) {
        return Err(NameError::NotLetterAtEdge);
    }
    if classes
        .windows(2)
        .any(|pair| pair == [Class::Separator, Class::Separator])
    {
        return Err(NameError::ConsecutiveSeparators);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_one_script_with_single_separators_are_accepted() {
        let cases = [
            "Іваноў",
            "Мікалаевіч",
            "Д'Артаньян",
            "Д’Артаньян",
            "Дʼяконаў",
            "Ёлкін",
            "Ўладзімір",
            "Петров-Водкин",
            "Анна Мария",
            "Ян",
            "Я",
            "Anna-Maria",
            "O’Neil",
            "O'Neil",
            "Müller",
            "Łukašėnka",
            "Ægir",
            "Øster",
            "ŁŹŻćęńśźż",
            "de la Cruz",
            "X",
        ];
        for name in cases {
            assert_eq!(validate_person_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn a_name_of_exactly_one_hundred_characters_is_accepted() {
        assert_eq!(validate_person_name(&"я".repeat(100)), Ok(()));
        assert_eq!(validate_person_name(&"a".repeat(100)), Ok(()));
    }

    #[test]
    fn unacceptable_names_are_rejected_with_a_plain_sentence() {
        let long = "Ы".repeat(130);
        let cases = [
            ("", "must not be empty".to_owned()),
            (
                long.as_str(),
                "must be at most 100 characters, found 130".to_owned(),
            ),
            (
                "Ivan4",
                "contains '4' (U+0034), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Іван😀",
                "contains '😀' (U+1F600), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "A×B",
                "contains '×' (U+00D7), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Ann÷a",
                "contains '÷' (U+00F7), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Їжак",
                "contains 'Ї' (U+0407), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Ivan_Petrov",
                "contains '_' (U+005F), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Anna\tMaria",
                "contains '\\t' (U+0009), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Anna\u{00A0}Maria",
                "contains '\\u{a0}' (U+00A0), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            (
                "Anna–Maria",
                "contains '–' (U+2013), which is not a Cyrillic or Latin letter, space, hyphen or apostrophe"
                    .to_owned(),
            ),
            ("Ivanоv", "mixes Cyrillic and Latin letters".to_owned()),
            ("Рetrov", "mixes Cyrillic and Latin letters".to_owned()),
            ("Иван Smith", "mixes Cyrillic and Latin letters".to_owned()),
            ("Müllер", "mixes Cyrillic and Latin letters".to_owned()),
            (" ", "must start and end with a letter".to_owned()),
            ("   ", "must start and end with a letter".to_owned()),
            (" Ivan", "must start and end with a letter".to_owned()),
            ("Ivan ", "must start and end with a letter".to_owned()),
            ("-Іван", "must start and end with a letter".to_owned()),
            ("O'", "must start and end with a letter".to_owned()),
            ("’", "must start and end with a letter".to_owned()),
            ("Anna  Maria", "has two separators in a row".to_owned()),
            ("Anna- Maria", "has two separators in a row".to_owned()),
            ("Д''Артаньян", "has two separators in a row".to_owned()),
            ("Д’-Артаньян", "has two separators in a row".to_owned()),
        ];
        for (name, message) in cases {
            let error = validate_person_name(name).expect_err(name);
            assert_eq!(error.to_string(), message, "{name:?}");
        }
    }
}
