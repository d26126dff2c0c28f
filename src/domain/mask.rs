//! Masking of personal data for logs, errors and `Debug` output.
//!
//! An identification number keeps its first 8 characters (sex, century, date of
//! birth and the region letter) and its last 3; a phone keeps `+375`, the operator
//! code and the last 4 digits. Anything that does not have the expected shape is
//! replaced by `***` as a whole, so a malformed value never leaks.

/// What every value that cannot be masked safely is replaced with.
const HIDDEN: &str = "***";

/// Masks a 14-character identification number as first 8, `***`, last 3
/// (`3140385A001PB5` → `3140385A***PB5`); any other input becomes `***`.
pub fn mask_identification_number(s: &str) -> String {
    if s.len() == 14
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        format!("{}{HIDDEN}{}", &s[..8], &s[11..])
    } else {
        HIDDEN.to_owned()
    }
}

/// Masks a normalised phone `+375XXXXXXXXX` as first 6, `***`, last 4
/// (`+375291234567` → `+37529***4567`); any other input becomes `***`.
pub fn mask_phone(s: &str) -> String {
    let normalised =
        s.len() == 13 && s.starts_with("+375") && s[4..].bytes().all(|b| b.is_ascii_digit());
    if normalised {
        format!("{}{HIDDEN}{}", &s[..6], &s[9..])
    } else {
        HIDDEN.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identification_numbers_keep_first_eight_and_last_three_characters() {
        let cases = [
            ("3140385A001PB5", "3140385A***PB5"),
            ("4150690H123BA9", "4150690H***BA9"),
            // The shape is all that matters: masking does not check the check digit.
            ("ABCDEFGHIJKLMN", "ABCDEFGH***LMN"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_identification_number(input), expected, "{input:?}");
        }
    }

    #[test]
    fn identification_numbers_of_another_shape_are_hidden_entirely() {
        let cases = [
            "",
            "3",
            "3140385A001PB",
            "3140385A001PB51",
            "3140385A001PB5 ",
            "3140385А001PB5", // Cyrillic А: 14 characters, but not ASCII
            "314038ää1PB5",   // 14 bytes, 12 characters
            "3140385A001PB5-3140385A001PB5",
            // Not normalised (what a rejected application may hold): hidden whole.
            "3140385a001pb5",
            "              ",
        ];
        for input in cases {
            assert_eq!(mask_identification_number(input), "***", "{input:?}");
        }
    }

    #[test]
    fn normalised_phones_keep_first_six_and_last_four_characters() {
        let cases = [
            ("+375291234567", "+37529***4567"),
            ("+375441112233", "+37544***2233"),
            ("+375000000000", "+37500***0000"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_phone(input), expected, "{input:?}");
        }
    }

    #[test]
    fn phones_that_are_not_normalised_are_hidden_entirely() {
        let cases = [
            "",
            "+375",
            "375291234567",
            "80291234567",
            "+37529123456",
            "+3752912345678",
            "+375 29 123-45-67",
            "+374291234567",
            "+37529123456x",
            "+37529123456٧", // Arabic-Indic digit seven: not ASCII
            "+７５291234567",
        ];
        for input in cases {
            assert_eq!(mask_phone(input), "***", "{input:?}");
        }
    }
}
