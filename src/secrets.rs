//! Secrets uidflow makes and keeps: temporary passwords and confirmation codes drawn from the
//! operating system's CSPRNG, and their argon2id hashes (PHC strings) for the database.
//!
//! Randomness comes straight from [`rand::rngs::OsRng`] (the OS generator: `getrandom`), not
//! from a user-space generator. Hashing is slow on purpose, so async code hashes and verifies
//! with [`hash_off_thread`] and [`verify_off_thread`], which run on tokio's blocking pool.
//! Delivering a secret (SMS texts) and storing its hash are left to the callers.

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use rand::{Rng, RngCore, TryRngCore, rngs::OsRng};
use secrecy::{ExposeSecret, SecretString, zeroize::Zeroize};

/// The characters of a temporary password: upper and lower case letters and digits, without
/// the ones people misread (`0 O o 1 l I i`).
pub const PASSWORD_ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";

/// How many characters a temporary password has.
pub const PASSWORD_LENGTH: usize = 12;

/// How many digits a confirmation code has.
pub const CODE_LENGTH: usize = 6;

/// The OS generator, panicking if the OS cannot give randomness (nothing sensible to do then).
fn os_rng() -> impl RngCore {
    OsRng.unwrap_err()
}

/// A temporary password: [`PASSWORD_LENGTH`] characters drawn uniformly from
/// [`PASSWORD_ALPHABET`] by the OS CSPRNG, with at least one upper case letter, one lower case
/// letter and one digit (a draw without all three is wiped and drawn again).
pub fn generate_password() -> SecretString {
    let alphabet = PASSWORD_ALPHABET.as_bytes();
    let mut rng = os_rng();
    loop {
        let mut candidate: String = (0..PASSWORD_LENGTH)
            .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
            .collect();
        let has = |class: fn(&u8) -> bool| candidate.as_bytes().iter().any(class);
        if has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit) {
            return SecretString::from(candidate);
        }
        candidate.zeroize();
    }
}

/// A confirmation code: exactly [`CODE_LENGTH`] ASCII digits, uniform over 000000–999999,
/// from the OS CSPRNG.
pub fn generate_code() -> SecretString {
    let number = os_rng().random_range(0..1_000_000_u32);
    SecretString::from(format!("{number:06}"))
}

/// The cost of an argon2id hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory per hash, in KiB (`m`).
    pub memory_kib: u32,
    /// Passes over the memory (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
}

impl HashParams {
    /// OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    pub const fn owasp() -> Self {
        HashParams {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Default for HashParams {
    /// [`HashParams::owasp`].
    fn default() -> Self {
        HashParams::owasp()
    }
}

/// The argon2id hash of `secret` as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`),
/// with a fresh random 16-byte salt, so two hashes of one secret differ.
///
/// # Panics
///
/// When `params` are outside what argon2 allows (for instance less than 8 KiB of memory per
/// lane, or zero iterations): a configuration defect.
pub fn hash(secret: &SecretString, params: HashParams) -> String {
    let mut salt = [0_u8; 16];
    os_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("a 16-byte salt is valid");
    let params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .expect("argon2 parameters are within argon2's limits");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret.expose_secret().as_bytes(), &salt)
        .expect("argon2 hashes with valid parameters and salt")
        .to_string()
}

/// Whether `secret` matches the PHC string `phc`, with the parameters written in it; `false`
/// for a malformed PHC string too.
pub fn verify(secret: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
}

/// [`hash`] on tokio's blocking pool, so that hashing never holds up an async worker thread.
///
/// # Panics
///
/// As [`hash`] does (the panic is carried over from the blocking thread).
pub async fn hash_off_thread(secret: SecretString, params: HashParams) -> String {
    let _permit = hashing_permit().await;
    match tokio::task::spawn_blocking(move || hash(&secret, params)).await {
        Ok(phc) => phc,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("the hashing task was cancelled"),
    }
}

/// One argon2 computation at a time per core: each takes `memory_kib` of memory, and without a
/// bound the blocking pool would run hundreds at once (gigabytes) without finishing any sooner.
async fn hashing_permit() -> tokio::sync::SemaphorePermit<'static> {
    static PERMITS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2);
        tokio::sync::Semaphore::new(cores)
    });
    PERMITS
        .acquire()
        .await
        .expect("the hashing semaphore is never closed")
}

/// [`verify`] on tokio's blocking pool; the secret is wiped from memory afterwards. `false`
/// if the blocking task does not finish (the runtime is shutting down).
pub async fn verify_off_thread(secret: String, phc: String) -> bool {
    let _permit = hashing_permit().await;
    tokio::task::spawn_blocking(move || {
        let mut secret = secret;
        let matches = verify(&secret, &phc);
        secret.zeroize();
        matches
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Cheap parameters for tests that are not about the cost.
    const CHEAP: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn the_alphabet_has_no_ambiguous_characters_and_all_three_classes() {
        for ambiguous in ['0', 'O', 'o', '1', 'l', 'I', 'i'] {
            assert!(
                !PASSWORD_ALPHABET.contains(ambiguous),
                "{ambiguous} is in the alphabet"
            );
        }
        let bytes = PASSWORD_ALPHABET.as_bytes();
        assert!(bytes.iter().all(u8::is_ascii_alphanumeric));
        assert!(bytes.iter().any(u8::is_ascii_uppercase));
        assert!(bytes.iter().any(u8::is_ascii_lowercase));
        assert!(bytes.iter().any(u8::is_ascii_digit));
        let distinct: HashSet<u8> = bytes.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            bytes.len(),
            "no character twice, so the draw stays uniform"
        );
    }

    #[test]
    fn passwords_have_the_length_the_alphabet_and_all_three_classes() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let password = generate_password();
            let password = password.expose_secret();
            assert_eq!(password.len(), PASSWORD_LENGTH);
            assert!(password.chars().all(|c| PASSWORD_ALPHABET.contains(c)));
            assert!(password.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(password.bytes().any(|b| b.is_ascii_lowercase()));
            assert!(password.bytes().any(|b| b.is_ascii_digit()));
            seen.insert(password.to_owned());
        }
        assert_eq!(seen.len(), 1000, "a thousand passwords are all different");
    }

    #[test]
    fn codes_are_six_digits_and_every_first_digit_turns_up() {
        let mut first_digits = HashSet::new();
        for _ in 0..10_000 {
            let code = generate_code();
            let code = code.expose_secret();
            assert_eq!(code.len(), CODE_LENGTH);
            assert!(
                code.bytes().all(|b| b.is_ascii_digit()),
                "{code:?} is not all digits"
            );
            first_digits.insert(code.as_bytes()[0]);
        }
        assert_eq!(first_digits.len(), 10, "leading zeros included");
    }

    #[test]
    fn the_default_parameters_are_owasps() {
        assert_eq!(
            HashParams::default(),
            HashParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
    }

    #[test]
    fn a_hash_is_an_argon2id_phc_string_that_verifies_its_secret_only() {
        let secret = SecretString::from("Kx7mPq2RtZ9a");
        let phc = hash(&secret, HashParams::default());
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("Kx7mPq2RtZ9a", &phc));
        assert!(!verify("Kx7mPq2RtZ9b", &phc));
        assert!(!verify("", &phc));
    }

    #[test]
    fn two_hashes_of_one_secret_differ_by_their_salt() {
        let secret = SecretString::from("482913");
        let first = hash(&secret, CHEAP);
        let second = hash(&secret, CHEAP);
        assert_ne!(first, second);
        assert!(verify("482913", &first) && verify("482913", &second));
    }

    #[test]
    fn a_malformed_phc_string_verifies_nothing() {
        let good = hash(&SecretString::from("482913"), CHEAP);
        let truncated = &good[..good.len() - 5];
        let cases = [
            "",
            "482913",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$",
            "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA",
            truncated,
        ];
        for phc in cases {
            assert!(!verify("482913", phc), "{phc:?}");
        }
    }

    #[tokio::test]
    async fn hashing_and_verifying_off_thread_agree_with_the_inline_versions() {
        let phc = hash_off_thread(SecretString::from("Kx7mPq2RtZ9a"), CHEAP).await;
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify_off_thread("Kx7mPq2RtZ9a".to_owned(), phc.clone()).await);
        assert!(!verify_off_thread("wrong".to_owned(), phc).await);
        assert!(!verify_off_thread("Kx7mPq2RtZ9a".to_owned(), "not a phc".to_owned()).await);
    }
}
