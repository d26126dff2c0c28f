//! The SMS texts uidflow sends, and the parsers that read a secret back out of one.
//!
//! CONTRACT: the confirmation code and the temporary password each stand in the text as the
//! only run of their kind — the code as the only run of exactly six digits, the password
//! after `: ` at the very end. [`code_in`] and [`password_in`] rely on that; tests and the
//! demo use them to read an SMS as a person would. Making the secrets is left to
//! `crate::secrets`, sending the texts to `sms`.

/// The text carrying a confirmation code, e.g. "Portal UID: to confirm this phone, give the
/// clerk the code 482913. Valid for 10 minutes."
///
/// `code` is expected to be six digits (`crate::secrets::generate_code`); it then is the
/// only run of six digits in the text for any `valid_minutes` below 100000.
pub fn confirmation_code(code: &str, valid_minutes: u64) -> String {
    format!(
        "Portal UID: to confirm this phone, give the clerk the code {code}. \
         Valid for {valid_minutes} minutes."
    )
}

/// The text carrying a temporary password; it ends with `: <password>` exactly, e.g.
/// `Portal UID issued. Change this temporary password at first login, valid 72 h: <password>`.
pub fn temporary_password(password: &str, valid_hours: u64) -> String {
    format!(
        "Portal UID issued. Change this temporary password at first login, \
         valid {valid_hours} h: {password}"
    )
}

/// The notification that the person's UID has been blocked. No `: ` in it, so no reader takes
/// any part of it for a password.
pub fn blocked() -> String {
    "Portal UID. Your identifier has been blocked. To unblock it, visit an issuing office \
     with your passport."
        .to_owned()
}

/// The notification, sent to the new phone, that the UID's phone number has been changed.
pub fn phone_changed() -> String {
    "Portal UID. The phone number of your identifier has been changed. If you did not ask \
     for this, visit an issuing office with your passport."
        .to_owned()
}

/// The confirmation code in `text`: its only run of exactly six ASCII digits (a longer or
/// shorter run does not count). `None` when there is no such run, or more than one.
pub fn code_in(text: &str) -> Option<&str> {
    let mut runs = digit_runs(text).filter(|run| run.len() == 6);
    let code = runs.next()?;
    runs.next().is_none().then_some(code)
}

/// The temporary password in `text`: everything after its last `: `. `None` when there is
/// no `: ` or nothing after it.
pub fn password_in(text: &str) -> Option<&str> {
    let (_, password) = text.rsplit_once(": ")?;
    (!password.is_empty()).then_some(password)
}

/// The maximal runs of ASCII digits in `text`, in order.
fn digit_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn notifications_carry_neither_a_code_nor_a_password() {
        for text in [super::blocked(), super::phone_changed()] {
            assert_eq!(super::password_in(&text), None, "{text}");
            assert_eq!(super::code_in(&text), None, "{text}");
        }
    }

    use secrecy::ExposeSecret;

    use super::*;
    use crate::secrets::{generate_code, generate_password};

    #[test]
    fn the_confirmation_text_reads_as_the_contract_shows() {
        assert_eq!(
            confirmation_code("482913", 10),
            "Portal UID: to confirm this phone, give the clerk the code 482913. Valid for 10 minutes."
        );
    }

    #[test]
    fn the_password_text_ends_with_colon_space_and_the_password() {
        let text = temporary_password("Kx7mPq2RtZ9a", 72);
        assert_eq!(
            text,
            "Portal UID issued. Change this temporary password at first login, valid 72 h: Kx7mPq2RtZ9a"
        );
        assert!(text.ends_with(": Kx7mPq2RtZ9a"));
    }

    #[test]
    fn notifications_carry_no_digits_and_nothing_that_reads_as_a_secret() {
        for text in [blocked(), phone_changed()] {
            assert!(text.starts_with("Portal UID"), "{text}");
            assert!(!text.bytes().any(|b| b.is_ascii_digit()), "{text}");
            assert_eq!(code_in(&text), None, "{text}");
        }
    }

    #[test]
    fn code_in_finds_the_only_run_of_six_digits() {
        let cases = [
            (
                "give the clerk the code 482913. Valid for 10 minutes.",
                Some("482913"),
            ),
            ("000000", Some("000000")),
            ("code 012345, valid 9999 minutes", Some("012345")),
            ("1234567 is not a code but 654321 is", Some("654321")),
            ("12345 is too short", None),
            ("1234567 is too long", None),
            ("two codes 111111 and 222222", None),
            ("no digits at all", None),
            ("", None),
            ("a1b2c3d4e5f6", None),
        ];
        for (text, expected) in cases {
            assert_eq!(code_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn password_in_takes_what_follows_the_last_colon_space() {
        let cases = [
            ("valid 72 h: Kx7mPq2RtZ9a", Some("Kx7mPq2RtZ9a")),
            (
                "Portal UID: issued, valid 72 h: Kx7mPq2RtZ9a",
                Some("Kx7mPq2RtZ9a"),
            ),
            ("password:Kx7mPq2RtZ9a", None),
            ("nothing after: ", None),
            ("no password here", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(password_in(text), expected, "{text:?}");
        }
    }

    #[test]
    fn a_generated_code_is_the_only_six_digit_run_for_any_validity_up_to_9999_minutes() {
        for valid_minutes in 0..=9999 {
            let code = generate_code();
            let text = confirmation_code(code.expose_secret(), valid_minutes);
            assert_eq!(
                code_in(&text),
                Some(code.expose_secret()),
                "valid for {valid_minutes} minutes"
            );
        }
        for valid_minutes in [99_999, 10_000, 12_345] {
            let text = confirmation_code("482913", valid_minutes);
            assert_eq!(
                code_in(&text),
                Some("482913"),
                "valid for {valid_minutes} minutes"
            );
        }
    }

    #[test]
    fn a_generated_password_reads_back_from_its_text() {
        for valid_hours in (0..=1000).chain([u64::MAX]) {
            let password = generate_password();
            let text = temporary_password(password.expose_secret(), valid_hours);
            assert_eq!(password_in(&text), Some(password.expose_secret()));
            assert!(text.ends_with(&format!(": {}", password.expose_secret())));
        }
    }
}
