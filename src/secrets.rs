//! Secrets uidflow makes and keeps: temporary passwords and confirmation codes drawn from the
//! operating system's CSPRNG, and their argon2id hashes (PHC strings) for the database.
//!
//! Randomness comes straight from [`rand::rngs::OsRng`] (the OS generator: `getrandom`), not
//! from a user-space generator. Hashing is slow on purpose, so async code hashes and verifies
//! with [`hash_off_thread`] and [`verify_off_thread`], which run on the hashing threads: one
//! per core, for the life of the process (see [`off_thread`]).
//! Delivering a secret (SMS texts) and storing its hash are left to the callers.

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString},
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

/// A bearer token: 32 bytes of the OS CSPRNG, as 64 lower-case hex digits.
pub fn generate_token() -> SecretString {
    let mut bytes = [0u8; 32];
    os_rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    bytes.zeroize();
    SecretString::from(token)
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
    hash_in(secret, params, &mut Vec::new())
}

/// [`hash`] with `memory` as argon2's working memory (grown to the parameters' size and kept,
/// so a thread that hashes again allocates nothing).
fn hash_in(secret: &SecretString, params: HashParams, memory: &mut Vec<Block>) -> String {
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
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let output = output_in(
        &argon2,
        secret.expose_secret().as_bytes(),
        salt.as_salt(),
        memory,
    )
    .expect("argon2 hashes with valid parameters and salt");
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).expect("valid parameters encode"),
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string()
}

/// The argon2 output of `secret` with `salt` (PHC base64, decoded as argon2's own
/// `PasswordHasher` decodes it), computed in `memory`.
fn output_in(
    argon2: &Argon2<'_>,
    secret: &[u8],
    salt: Salt<'_>,
    memory: &mut Vec<Block>,
) -> password_hash::Result<Output> {
    let mut salt_bytes = [0_u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let blocks = argon2.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let length = argon2
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(length, |out| {
        Ok(argon2.hash_password_into_with_memory(secret, salt, out, &mut memory[..blocks])?)
    })
}

/// Whether `secret` matches the PHC string `phc`, with the parameters written in it; `false`
/// for a malformed PHC string too.
pub fn verify(secret: &str, phc: &str) -> bool {
    verify_in(secret, phc, &mut Vec::new())
}

/// [`verify`] with `memory` as argon2's working memory. The comparison is `Output`'s, in
/// constant time.
fn verify_in(secret: &str, phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    output_in(&argon2, secret.as_bytes(), salt, memory).is_ok_and(|computed| computed == expected)
}

/// [`hash`] on the hashing threads, so that hashing never holds up an async worker thread.
///
/// # Panics
///
/// As [`hash`] does (the panic is carried over from the hashing thread).
pub async fn hash_off_thread(secret: SecretString, params: HashParams) -> String {
    match off_thread(move |memory| hash_in(&secret, params, memory)).await {
        Ok(phc) => phc,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// [`verify`] on the hashing threads; the secret is wiped from memory afterwards. `false` if
/// the verification panicked.
pub async fn verify_off_thread(secret: String, phc: String) -> bool {
    off_thread(move |memory| {
        let mut secret = secret;
        let matches = verify_in(&secret, &phc, memory);
        secret.zeroize();
        matches
    })
    .await
    .unwrap_or(false)
}

/// Runs `work` on the hashing threads, with that thread's argon2 working memory, and waits for
/// it without blocking the async thread.
///
/// There is one hashing thread per core, for the life of the process, and jobs queue for
/// them. That bounds both the CPU and the memory: each argon2 computation needs `memory_kib`
/// (19 MiB by default), and each hashing thread keeps one such block and reuses it, so the
/// process holds `cores × memory_kib` and allocates nothing per hash. (Allocating per hash on
/// tokio's blocking pool left the freed blocks in many allocator arenas: 0.3–0.9 GiB of RSS
/// under load.)
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
) -> std::thread::Result<T> {
    thread_local! {
        /// A hashing thread's argon2 working memory (empty on every other thread).
        static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    static HASHERS: std::sync::LazyLock<rayon::ThreadPool> = std::sync::LazyLock::new(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(2),
            )
            .thread_name(|i| format!("uidflow-hash-{i}"))
            .build()
            .expect("the hashing threads start")
    });
    let (done, result) = tokio::sync::oneshot::channel();
    HASHERS.spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            MEMORY.with_borrow_mut(|memory| work(memory))
        }));
        // The caller may have stopped waiting (its future was dropped): nothing to tell.
        let _ = done.send(outcome);
    });
    result
        .await
        .expect("a hashing job always answers: it catches its own panic")
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

    #[tokio::test]
    #[should_panic(expected = "argon2 parameters are within argon2's limits")]
    async fn a_hash_that_panics_on_its_thread_panics_in_the_caller() {
        let impossible = HashParams {
            memory_kib: 0,
            ..CHEAP
        };
        hash_off_thread(SecretString::from("Kx7mPq2RtZ9a"), impossible).await;
    }

    #[tokio::test]
    async fn hashes_run_on_the_hashing_threads_and_many_at_once_all_finish() {
        let mut jobs = tokio::task::JoinSet::new();
        for _ in 0..16 {
            jobs.spawn(off_thread(|_| {
                std::thread::current().name().map(str::to_owned)
            }));
        }
        let names: Vec<String> = jobs
            .join_all()
            .await
            .into_iter()
            .map(|name| name.unwrap().unwrap_or_default())
            .collect();
        assert_eq!(names.len(), 16);
        assert!(
            names.iter().all(|n| n.starts_with("uidflow-hash-")),
            "{names:?}"
        );
    }

    #[test]
    fn reused_memory_gives_what_argon2s_own_hasher_and_verifier_give() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = Vec::new();
        let bigger = HashParams {
            memory_kib: 256,
            iterations: 2,
            parallelism: 2,
        };
        // Ours, in one reused buffer across parameters, verified by argon2's verifier…
        for params in [bigger, CHEAP, bigger] {
            let phc = hash_in(&SecretString::from("Kx7mPq2RtZ9a"), params, &mut memory);
            let parsed = PasswordHash::new(&phc).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"Kx7mPq2RtZ9a", &parsed)
                    .is_ok()
            );
            assert!(
                Argon2::default()
                    .verify_password(b"wrong", &parsed)
                    .is_err()
            );
        }
        assert_eq!(
            memory.len(),
            256,
            "the buffer grows to the largest and stays"
        );
        // …and argon2's own hashes (other versions and algorithms too) verified by ours.
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        for (algorithm, version) in [
            (Algorithm::Argon2id, Version::V0x13),
            (Algorithm::Argon2i, Version::V0x10),
        ] {
            let params = Params::new(64, 1, 1, Some(24)).unwrap();
            let phc = Argon2::new(algorithm, version, params)
                .hash_password(b"Kx7mPq2RtZ9a", &salt)
                .unwrap()
                .to_string();
            assert!(verify_in("Kx7mPq2RtZ9a", &phc, &mut memory), "{phc}");
            assert!(!verify_in("Kx7mPq2RtZ9b", &phc, &mut memory), "{phc}");
        }
    }
}
