//! Belarusian mobile phone numbers: parsed from the forms clerks type and kept
//! normalised as `+375XXXXXXXXX`.
//!
//! Accepted forms, after trimming surrounding whitespace:
//!
//! - international `+375 29 1234567`;
//! - international without the plus, `375 29 1234567`;
//! - domestic `8 029 1234567`: `8`, then `0`, then the operator code.
//!
//! Spaces, dashes and balanced parentheses may stand anywhere between the digits
//! (`+375 (29) 123-45-67`, `8 (029) 123-45-67`, `8-029-123-45-67`). The operator
//! code must be a mobile one: 25, 29, 33 or 44. Nothing else is corrected or
//! guessed: a number in any other shape is rejected with a sentence saying why,
//! which never contains the number itself.

use std::fmt;

use thiserror::Error;

use super::mask::mask_phone;

/// Country code of Belarus.
const COUNTRY: &str = "375";

/// Domestic trunk prefix: `8`, then `0` before the operator code.
const DOMESTIC: &str = "80";

/// Digits after the country code: the operator code and the subscriber number.
const NATIONAL_DIGITS: usize = 9;

/// Operator codes of the mobile networks.
const MOBILE_OPERATORS: [&str; 4] = ["25", "29", "33", "44"];

/// A validated Belarusian mobile number, always normalised as `+375XXXXXXXXX`.
///
/// `Debug` prints the masked form; there is no `Display`, so that callers choose
/// between [`as_str`](Self::as_str) and [`masked`](Self::masked).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

/// Why a text is not a valid Belarusian mobile number.
///
/// Each message is one plain sentence and never contains the number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhoneError {
    /// Nothing but whitespace was given.
    #[error("must not be empty")]
    Empty,
    /// A character other than a digit, space, dash, parenthesis or leading `+`.
    #[error(
        "contains '{}': may contain only digits, spaces, dashes, parentheses and a leading '+'",
        .found.escape_debug()
    )]
    InvalidCharacter {
        /// The offending character.
        found: char,
    },
    /// A `+` somewhere other than at the start.
    #[error("may contain '+' only at the start")]
    PlusNotAtStart,
    /// Parentheses that do not pair up.
    #[error("has unbalanced parentheses")]
    UnbalancedParentheses,
    /// Separators only, no digit.
    #[error("contains no digits")]
    NoDigits,
    /// A `+` followed by a country code other than 375.
    #[error("must be a Belarusian number starting with +375")]
    NotBelarusian,
    /// Neither `+375`, `375` nor the domestic `80` at the start.
    #[error("must start with +375, 375 or 80 (for example +375 29 123-45-67 or 8 029 123-45-67)")]
    UnknownPrefix,
    /// The wrong number of digits for the form used.
    #[error("must have {expected} digits in the form starting with {prefix}, found {found}")]
    WrongDigitCount {
        /// The form's prefix: `+375`, `375` or `80`.
        prefix: &'static str,
        /// Digits the form has, prefix included.
        expected: usize,
        /// Digits found, prefix included.
        found: usize,
    },
    /// An operator code that is not a mobile network's.
    #[error("operator code {code} is not a mobile operator code (25, 29, 33, 44)")]
    NotMobile {
        /// The two digits found after the country code.
        code: String,
    },
}

impl Phone {
    /// Parses a Belarusian mobile number in any accepted form and normalises it.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }

        let mut digits = String::with_capacity(trimmed.len());
        let mut depth: usize = 0;
        for (index, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                '+' if index == 0 => {}
                '+' => return Err(PhoneError::PlusNotAtStart),
                '(' => depth += 1,
                ')' => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(PhoneError::UnbalancedParentheses)?;
                }
                _ => return Err(PhoneError::InvalidCharacter { found: c }),
            }
        }
        if depth != 0 {
            return Err(PhoneError::UnbalancedParentheses);
        }
        if digits.is_empty() {
            return Err(PhoneError::NoDigits);
        }

        let plus = trimmed.starts_with('+');
        let (prefix, national) = match (
            plus,
            digits.strip_prefix(COUNTRY),
            digits.strip_prefix(DOMESTIC),
        ) {
            (true, Some(national), _) => ("+375", national),
            (true, None, _) => return Err(PhoneError::NotBelarusian),
            (false, Some(national), _) => ("375", national),
            (false, None, Some(national)) => ("80", national),
            (false, None, None) => return Err(PhoneError::UnknownPrefix),
        };
        if national.len() != NATIONAL_DIGITS {
            let prefix_digits = prefix.trim_start_matches('+').len();
            return Err(PhoneError::WrongDigitCount {
                prefix,
                expected: prefix_digits + NATIONAL_DIGITS,
                found: digits.len(),
            });
        }

        let code = &national[..2];
        if !MOBILE_OPERATORS.contains(&code) {
            return Err(PhoneError::NotMobile {
                code: code.to_owned(),
            });
        }
        Ok(Self(format!("+{COUNTRY}{national}")))
    }

    /// The normalised number, `+375XXXXXXXXX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The masked form, safe for logs: `+37529***4567`.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Phone").field(&self.masked()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_accepted_form_is_normalised_to_plus_375() {
        let cases = [
            ("+375291234567", "+375291234567"),
            ("375291234567", "+375291234567"),
            ("80291234567", "+375291234567"),
            ("+375 (29) 123-45-67", "+375291234567"),
            ("8 (029) 123-45-67", "+375291234567"),
            ("8-029-123-45-67", "+375291234567"),
            ("375 29 1234567", "+375291234567"),
            ("  +375 29 123 45 67\t", "+375291234567"),
            ("+(375)(29)(1234567)", "+375291234567"),
            ("8(0(29))1234567", "+375291234567"),
            ("+375-25-765-43-21", "+375257654321"),
            ("+375 33 000 00 00", "+375330000000"),
            ("8 044 999-99-99", "+375449999999"),
        ];
        for (input, expected) in cases {
            let phone = Phone::parse(input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
            assert_eq!(phone.as_str(), expected, "{input:?}");
        }
    }

    #[test]
    fn every_rejection_is_a_plain_sentence() {
        let cases = [
            ("", "must not be empty"),
            ("  \t ", "must not be empty"),
            (
                "+375 29 123-45-6x",
                "contains 'x': may contain only digits, spaces, dashes, parentheses and a leading '+'",
            ),
            (
                "+375.29.1234567",
                "contains '.': may contain only digits, spaces, dashes, parentheses and a leading '+'",
            ),
            (
                "+375 29 1234567 ext",
                "contains 'e': may contain only digits, spaces, dashes, parentheses and a leading '+'",
            ),
            (
                "+375 29 ٧234567",
                "contains '٧': may contain only digits, spaces, dashes, parentheses and a leading '+'",
            ),
            ("375+291234567", "may contain '+' only at the start"),
            ("++375291234567", "may contain '+' only at the start"),
            (" 375 29 1234567+", "may contain '+' only at the start"),
            ("+375 (29 1234567", "has unbalanced parentheses"),
            ("+375 29) 1234567", "has unbalanced parentheses"),
            ("+375 )29( 1234567", "has unbalanced parentheses"),
            ("( - )", "contains no digits"),
            ("+", "contains no digits"),
            (
                "+7 916 123-45-67",
                "must be a Belarusian number starting with +375",
            ),
            (
                "+80291234567",
                "must be a Belarusian number starting with +375",
            ),
            (
                "291234567",
                "must start with +375, 375 or 80 (for example +375 29 123-45-67 or 8 029 123-45-67)",
            ),
            (
                "8 29 1234567",
                "must start with +375, 375 or 80 (for example +375 29 123-45-67 or 8 029 123-45-67)",
            ),
            (
                "+375 29 123456",
                "must have 12 digits in the form starting with +375, found 11",
            ),
            (
                "+375 29 12345678",
                "must have 12 digits in the form starting with +375, found 13",
            ),
            (
                "375 29 123456",
                "must have 12 digits in the form starting with 375, found 11",
            ),
            (
                "8 029 123 45 678",
                "must have 11 digits in the form starting with 80, found 12",
            ),
            (
                "8 029",
                "must have 11 digits in the form starting with 80, found 4",
            ),
            (
                "+375 17 123-45-67",
                "operator code 17 is not a mobile operator code (25, 29, 33, 44)",
            ),
            (
                "8 017 123-45-67",
                "operator code 17 is not a mobile operator code (25, 29, 33, 44)",
            ),
            (
                "375 24 1234567",
                "operator code 24 is not a mobile operator code (25, 29, 33, 44)",
            ),
        ];
        for (input, message) in cases {
            let error = Phone::parse(input).expect_err(input);
            assert_eq!(error.to_string(), message, "{input:?}");
        }
    }

    #[test]
    fn error_messages_never_contain_the_subscriber_number() {
        let inputs = [
            "+375 17 123-45-67",
            "+375 29 123456",
            "+7 916 1234567",
            "+375 29 1234567 x",
            "+375 (29 1234567",
        ];
        for input in inputs {
            let message = Phone::parse(input).expect_err(input).to_string();
            assert!(!message.contains("1234"), "{message}");
        }
    }

    #[test]
    fn debug_and_masked_show_only_the_masked_number() {
        let phone = Phone::parse("+375 29 123-45-67").expect("valid number");
        assert_eq!(phone.masked(), "+37529***4567");
        assert_eq!(format!("{phone:?}"), "Phone(\"+37529***4567\")");
    }

    /// Separators that may be inserted between two digits.
    fn separator() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "-", "  ", " - ", "--"])
    }

    /// `digits` with the chosen separator after each digit but the last.
    fn interleave(digits: &str, separators: &[&str]) -> String {
        let mut out = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 {
                out.push_str(separators[index % separators.len()]);
            }
            out.push(digit);
        }
        out
    }

    proptest! {
        #[test]
        fn every_form_with_random_separators_normalises_to_the_same_number(
            code in prop::sample::select(vec!["25", "29", "33", "44"]),
            subscriber in "[0-9]{7}",
            separators in prop::collection::vec(separator(), 12),
            parenthesised in any::<bool>(),
            padding in prop::sample::select(vec!["", " ", "\t", "  "]),
        ) {
            let expected = format!("+375{code}{subscriber}");
            let tail = interleave(&subscriber, &separators);
            let code_split = interleave(code, &separators[9..]);
            let (open, close) = if parenthesised { ("(", ")") } else { ("", "") };
            let forms = [
                format!("+{}{open}{code_split}{close}{}{tail}", interleave("375", &separators), separators[3]),
                format!("{}{open}{code_split}{close}{}{tail}", interleave("375", &separators), separators[4]),
                format!("8{}{open}{}{close}{}{tail}", separators[5], interleave(&format!("0{code}"), &separators), separators[6]),
                format!("{open}{}{close}{}{tail}", interleave(&format!("375{code}"), &separators), separators[7]),
            ];
            for form in forms {
                let input = format!("{padding}{form}{padding}");
                let phone = Phone::parse(&input);
                prop_assert!(phone.is_ok(), "{input:?} rejected: {phone:?}");
                let phone = phone.expect("checked above");
                prop_assert_eq!(phone.as_str(), expected.as_str());
            }
        }
    }
}
