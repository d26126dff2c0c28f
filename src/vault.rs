//! Personal data at rest: sealed with XChaCha20-Poly1305 under the data keys of
//! `DATA_KEYS_FILE`, and looked up by value only through keyed blind indexes (HMAC-SHA-256
//! under a key of its own). See docs/PRIVACY.md.
//!
//! A sealed value is `0x01 ‖ nonce (24 bytes, random) ‖ ciphertext ‖ tag (16 bytes)`; its row
//! records the id of the key that sealed it. The associated data binds a value to its place
//! ([`Aad`]): a payload moved to another application's row does not open.
//!
//! The key file is TOML, owner-only:
//!
//! ```toml
//! active = "k20261202-3f9a"          # the key new values are sealed with
//! index_key = "<64 hex digits>"      # the blind-index key (never rotated by `keys rotate`)
//! [[key]]
//! id = "k20261202-3f9a"
//! secret = "<64 hex digits>"         # absent once the key is retired
//! created_at = "2026-12-02T11:50:00Z"
//! ```
//!
//! A running process re-reads the file when it changes (checked at most once a second when it
//! seals, and at once when it meets a key id it does not know), so `uidflow keys rotate` can
//! add and retire keys while uidflow runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::{RngCore, TryRngCore};
use secrecy::zeroize::Zeroizing;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// The format byte of a sealed value.
const FORMAT: u8 = 1;
/// Nonce length of XChaCha20-Poly1305.
const NONCE: usize = 24;
/// How often a sealing process looks at the key file's modification time.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What a vault operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key file cannot be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The key file is not valid.
    #[error("{path} is not a valid data key file: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Others may read the key file.
    #[error(
        "{path} is readable by others or writable by more than its owner (mode {mode:o}); make it owner-only (chmod 600)"
    )]
    NotOwnerOnly {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A value was sealed under a key the file does not have (or no longer has).
    #[error("data key {0:?} is not in the key file (retired, or the file of another installation)")]
    UnknownKey(String),
    /// A value does not authenticate under its key: changed, moved or truncated.
    #[error("a sealed value does not authenticate under key {0:?}: it was changed or moved")]
    Forged(String),
}

/// What a sealed value is bound to.
#[derive(Debug, Clone, Copy)]
pub enum Aad {
    /// The payload of one application.
    Application(Uuid),
    /// The body of a dead letter.
    DeadLetter,
}

impl Aad {
    fn bytes(self) -> Vec<u8> {
        match self {
            Aad::Application(id) => [b"uidflow/application/".as_slice(), id.as_bytes()].concat(),
            Aad::DeadLetter => b"uidflow/dead-letter".to_vec(),
        }
    }
}

/// What a blind index indexes: each purpose hashes into its own space.
#[derive(Debug, Clone, Copy)]
pub enum Index {
    /// A person's identification number (the subject of an application or dead letter).
    Subject,
    /// The content of an application (duplicate detection).
    Content,
}

impl Index {
    fn tag(self) -> &'static [u8] {
        match self {
            Index::Subject => b"subject",
            Index::Content => b"content",
        }
    }
}

/// A value sealed under a data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The key's id (stored beside the value).
    pub key_id: String,
    /// `0x01 ‖ nonce ‖ ciphertext ‖ tag`.
    pub bytes: Vec<u8>,
}

/// The key file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyFile {
    active: String,
    index_key: String,
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<DateTime<Utc>>,
}

/// A key as `uidflow keys list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Id.
    pub id: String,
    /// New values are sealed with it.
    pub active: bool,
    /// Made.
    pub created_at: DateTime<Utc>,
    /// Retired (its secret removed from the file).
    pub retired_at: Option<DateTime<Utc>>,
}

/// The keys in memory.
struct Ring {
    active: String,
    ciphers: BTreeMap<String, XChaCha20Poly1305>,
    index: Hmac<Sha256>,
    infos: Vec<KeyInfo>,
    /// Which version of the file this is (see [`Stamp`]).
    modified: Option<Stamp>,
    checked: Instant,
}

/// The data keys of a process.
pub struct Vault {
    path: Option<PathBuf>,
    ring: RwLock<Ring>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring.read().expect("vault lock");
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("active", &ring.active)
            .finish_non_exhaustive()
    }
}

fn secret_bytes(hex_text: &str, what: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text.trim(), bytes.as_mut_slice())
        .map_err(|_| format!("{what} is not 64 hex digits"))?;
    Ok(bytes)
}

fn random_secret() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng
        .unwrap_err()
        .fill_bytes(bytes.as_mut_slice());
    hex::encode(bytes.as_slice())
}

fn new_key_id(now: DateTime<Utc>) -> String {
    let mut suffix = [0u8; 2];
    rand::rngs::OsRng.unwrap_err().fill_bytes(&mut suffix);
    format!("k{}-{}", now.format("%Y%m%d"), hex::encode(suffix))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |cause| VaultError::Io {
        path: path.display().to_string(),
        cause,
    }
}

impl Ring {
    fn from_file(file: &KeyFile, modified: Option<Stamp>) -> Result<Self, String> {
        let mut ciphers = BTreeMap::new();
        let mut infos = Vec::new();
        for entry in &file.key {
            if entry.id.is_empty() || infos.iter().any(|i: &KeyInfo| i.id == entry.id) {
                return Err(format!("key id {:?} is empty or repeated", entry.id));
            }
            match (&entry.secret, entry.retired_at) {
                (Some(secret), None) => {
                    let bytes = secret_bytes(secret, &format!("the secret of key {:?}", entry.id))?;
                    ciphers.insert(
                        entry.id.clone(),
                        XChaCha20Poly1305::new(bytes.as_slice().into()),
                    );
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "key {:?} must have a secret, or be retired without one",
                        entry.id
                    ));
                }
            }
            infos.push(KeyInfo {
                id: entry.id.clone(),
                active: entry.id == file.active,
                created_at: entry.created_at,
                retired_at: entry.retired_at,
            });
        }
        if !ciphers.contains_key(&file.active) {
            return Err(format!(
                "the active key {:?} is not a key with a secret",
                file.active
            ));
        }
        let index_key = secret_bytes(&file.index_key, "index_key")?;
        let index = <Hmac<Sha256> as Mac>::new_from_slice(index_key.as_slice())
            .expect("HMAC takes a key of any length");
        Ok(Ring {
            active: file.active.clone(),
            ciphers,
            index,
            infos,
            modified,
            checked: Instant::now(),
        })
    }
}

/// A version of the key file: its inode (every write is a new file renamed into place), its
/// modification time and its length. The time alone misses two writes within one tick of the
/// file system's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified: Option<SystemTime>,
    length: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            inode: metadata.ino(),
            modified: metadata.modified().ok(),
            length: metadata.len(),
        }
    }
}

/// Reads and checks the key file at `path`.
fn read_file(path: &Path) -> Result<(KeyFile, Option<Stamp>), VaultError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(io(path))?;
    let mode = metadata.permissions().mode() & 0o777;
    // Others may not read it, nobody but its owner may write it. Group read is allowed: a
    // Kubernetes Secret volume gives the pod's group read access (mode 0440 with fsGroup).
    if mode & 0o027 != 0 {
        return Err(VaultError::NotOwnerOnly {
            path: path.display().to_string(),
            mode,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    let file: KeyFile = toml::from_str(&text).map_err(|e| VaultError::Invalid {
        path: path.display().to_string(),
        why: e.message().to_owned(),
    })?;
    Ok((file, Some(Stamp::of(&metadata))))
}

/// Writes `file` to `path` owner-only through a temporary file; with `replace` false, fails
/// (`AlreadyExists`) when `path` exists, so two processes never make two different key files.
fn write_file(path: &Path, file: &KeyFile, replace: bool) -> Result<(), VaultError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = Zeroizing::new(format!(
        "# uidflow data keys (DATA_KEYS_FILE): owner-only. Losing this file loses every sealed\n\
         # payload; keep a copy where the database's backups are not. See docs/PRIVACY.md.\n{}",
        toml::to_string(file).expect("a key file serialises")
    ));
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(&temporary))?;
    out.write_all(text.as_bytes()).map_err(io(&temporary))?;
    out.sync_all().map_err(io(&temporary))?;
    let placed = if replace {
        std::fs::rename(&temporary, path)
    } else {
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        linked
    };
    placed.map_err(io(path))
}

fn fresh_file(now: DateTime<Utc>) -> KeyFile {
    let id = new_key_id(now);
    KeyFile {
        active: id.clone(),
        index_key: random_secret(),
        key: vec![KeyEntry {
            id,
            secret: Some(random_secret()),
            created_at: now,
            retired_at: None,
        }],
    }
}

impl Vault {
    /// The keys of the file at `path` (owner-only).
    pub fn from_file(path: &Path) -> Result<Self, VaultError> {
        let (file, modified) = read_file(path)?;
        let ring = Ring::from_file(&file, modified).map_err(|why| VaultError::Invalid {
            path: path.display().to_string(),
            why,
        })?;
        Ok(Vault {
            path: Some(path.to_owned()),
            ring: RwLock::new(ring),
        })
    }

    /// The keys of `path`, made first (one key, a fresh index key) if the file does not exist.
    /// Returns whether it was made. Two processes starting at once end with the same file.
    pub fn create_or_open(path: &Path) -> Result<(Self, bool), VaultError> {
        let mut made = false;
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Owner-only, like the files in it (the audit key shares the directory).
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io(dir))?;
            }
            match write_file(path, &fresh_file(Utc::now()), false) {
                Ok(()) => made = true,
                Err(VaultError::Io { cause, .. })
                    if cause.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok((Self::from_file(path)?, made))
    }

    /// Keys held only in memory (tests and the benchmark's scratch runs).
    pub fn ephemeral() -> Self {
        let ring = Ring::from_file(&fresh_file(Utc::now()), None).expect("a fresh file is valid");
        Vault {
            path: None,
            ring: RwLock::new(ring),
        }
    }

    /// The key file, if the keys came from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The id of the key new values are sealed with.
    pub fn active_key(&self) -> String {
        self.reload_if_due();
        self.ring.read().expect("vault lock").active.clone()
    }

    /// The keys, without their secrets.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.ring.read().expect("vault lock").infos.clone()
    }

    /// Seals `plaintext` for `aad` under the active key.
    pub fn seal(&self, aad: Aad, plaintext: &[u8]) -> Sealed {
        self.reload_if_due();
        let ring = self.ring.read().expect("vault lock");
        let cipher = &ring.ciphers[&ring.active];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = aad.bytes();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length uidflow stores");
        let mut bytes = Vec::with_capacity(1 + NONCE + ciphertext.len());
        bytes.push(FORMAT);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: ring.active.clone(),
            bytes,
        }
    }

    /// Opens a value sealed under `key_id` for `aad`. A key id this process does not know makes
    /// it read the key file again first (another process may have rotated).
    pub fn open(&self, key_id: &str, aad: Aad, bytes: &[u8]) -> Result<Vec<u8>, VaultError> {
        if !self
            .ring
            .read()
            .expect("vault lock")
            .ciphers
            .contains_key(key_id)
        {
            self.reload()?;
        }
        let ring = self.ring.read().expect("vault lock");
        let cipher = ring
            .ciphers
            .get(key_id)
            .ok_or_else(|| VaultError::UnknownKey(key_id.to_owned()))?;
        let forged = || VaultError::Forged(key_id.to_owned());
        if bytes.len() < 1 + NONCE || bytes[0] != FORMAT {
            return Err(forged());
        }
        let nonce: [u8; NONCE] = bytes[1..1 + NONCE]
            .try_into()
            .expect("sliced to its length");
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &bytes[1 + NONCE..],
                    aad: &aad.bytes(),
                },
            )
            .map_err(|_| forged())
    }

    /// The blind index of `value` for `purpose`: HMAC-SHA-256 under the index key.
    pub fn index(&self, purpose: Index, value: &[u8]) -> Vec<u8> {
        let ring = self.ring.read().expect("vault lock");
        let mut mac = ring.index.clone();
        mac.update(purpose.tag());
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes().to_vec()
    }

    fn reload_if_due(&self) {
        let due = self.path.is_some()
            && self.ring.read().expect("vault lock").checked.elapsed() >= RELOAD_CHECK;
        if due && let Err(error) = self.reload() {
            // Keep sealing with the keys in memory: a half-written or unreadable file must not
            // stop the pipeline; the operator sees why.
            tracing::warn!(error = %error, "cannot re-read the data key file; keeping the keys in memory");
        }
    }

    /// Reads the key file again if it changed since it was read.
    pub fn reload(&self) -> Result<(), VaultError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let stamp = Stamp::of(&std::fs::metadata(path).map_err(io(path))?);
        if self.ring.read().expect("vault lock").modified == Some(stamp) {
            self.ring.write().expect("vault lock").checked = Instant::now();
            return Ok(());
        }
        let (file, modified) = read_file(path)?;
        let ring = Ring::from_file(&file, modified).map_err(|why| VaultError::Invalid {
            path: path.display().to_string(),
            why,
        })?;
        *self.ring.write().expect("vault lock") = ring;
        Ok(())
    }

    /// Adds a new key to the file, the active one if `activate` (else it only opens, until a
    /// rotation activates it: distributed first to every host, it is known everywhere before
    /// anything is sealed under it). The others stay, to open what they sealed. Returns its id.
    pub fn add_key(&self, activate: bool) -> Result<String, VaultError> {
        self.edit(|file, now| {
            let id = new_key_id(now);
            file.key.push(KeyEntry {
                id: id.clone(),
                secret: Some(random_secret()),
                created_at: now,
                retired_at: None,
            });
            if activate {
                file.active = id.clone();
            }
            Ok(id)
        })
    }

    /// Makes key `id` (not retired) the one new values are sealed with.
    pub fn activate_key(&self, id: &str) -> Result<(), VaultError> {
        self.edit(|file, _| {
            match file.key.iter().find(|k| k.id == id) {
                Some(k) if k.secret.is_some() => {}
                _ => return Err(format!("there is no key {id:?} with a secret")),
            }
            file.active = id.to_owned();
            Ok(())
        })
    }

    /// Removes the secret of key `id` from the file (it can open nothing after this), keeping
    /// its id and dates as a record. The active key cannot be retired.
    pub fn retire_key(&self, id: &str) -> Result<(), VaultError> {
        self.edit(|file, now| {
            if file.active == id {
                return Err(format!("key {id:?} is the active key"));
            }
            let entry = file
                .key
                .iter_mut()
                .find(|k| k.id == id)
                .ok_or_else(|| format!("there is no key {id:?}"))?;
            entry.secret = None;
            entry.retired_at.get_or_insert(now);
            Ok(())
        })
    }

    fn edit<T>(
        &self,
        change: impl FnOnce(&mut KeyFile, DateTime<Utc>) -> Result<T, String>,
    ) -> Result<T, VaultError> {
        let path = self.path.as_deref().ok_or_else(|| VaultError::Invalid {
            path: "(keys in memory)".into(),
            why: "keys held only in memory cannot be changed".into(),
        })?;
        let (mut file, _) = read_file(path)?;
        let invalid = |why| VaultError::Invalid {
            path: path.display().to_string(),
            why,
        };
        let result = change(&mut file, Utc::now()).map_err(invalid)?;
        Ring::from_file(&file, None).map_err(invalid)?;
        write_file(path, &file, true)?;
        self.reload()?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("uidflow-vault-{}", Uuid::new_v4()));
        dir.join("keys.toml")
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_place_and_unchanged() {
        let vault = Vault::ephemeral();
        let id = Uuid::new_v4();
        let sealed = vault.seal(Aad::Application(id), b"3140385A001PB5");
        assert!(!sealed.bytes.windows(14).any(|w| w == b"3140385A001PB5"));
        let opened = vault
            .open(&sealed.key_id, Aad::Application(id), &sealed.bytes)
            .unwrap();
        assert_eq!(opened, b"3140385A001PB5");
        let elsewhere = vault.open(
            &sealed.key_id,
            Aad::Application(Uuid::new_v4()),
            &sealed.bytes,
        );
        assert!(matches!(elsewhere, Err(VaultError::Forged(_))));
        let mut changed = sealed.bytes.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(matches!(
            vault.open(&sealed.key_id, Aad::Application(id), &changed),
            Err(VaultError::Forged(_))
        ));
        assert!(matches!(
            vault.open("k-other", Aad::Application(id), &sealed.bytes),
            Err(VaultError::UnknownKey(_))
        ));
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(
            vault.seal(Aad::DeadLetter, b"x").bytes,
            vault.seal(Aad::DeadLetter, b"x").bytes
        );
    }

    #[test]
    fn blind_indexes_are_keyed_and_kept_apart_by_purpose() {
        let (a, b) = (Vault::ephemeral(), Vault::ephemeral());
        let value = b"3140385A001PB5";
        assert_eq!(
            a.index(Index::Subject, value),
            a.index(Index::Subject, value)
        );
        assert_ne!(
            a.index(Index::Subject, value),
            b.index(Index::Subject, value)
        );
        assert_ne!(
            a.index(Index::Subject, value),
            a.index(Index::Content, value)
        );
    }

    #[test]
    fn the_file_is_made_once_owner_only_and_refused_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let path = scratch();
        let (first, made) = Vault::create_or_open(&path).unwrap();
        assert!(made);
        let (second, made_again) = Vault::create_or_open(&path).unwrap();
        assert!(!made_again);
        assert_eq!(first.active_key(), second.active_key());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Vault::from_file(&path),
            Err(VaultError::NotOwnerOnly { .. })
        ));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_rotation_seals_with_the_new_key_and_a_retired_key_opens_nothing() {
        let path = scratch();
        let (vault, _) = Vault::create_or_open(&path).unwrap();
        let (other_process, _) = Vault::create_or_open(&path).unwrap();
        let old = vault.active_key();
        let id = Uuid::new_v4();
        let before = vault.seal(Aad::Application(id), b"old");
        let pending = vault.add_key(false).unwrap();
        assert_eq!(
            vault.active_key(),
            old,
            "an added key only opens until activated"
        );
        vault.activate_key(&pending).unwrap();
        let new = vault.active_key();
        assert_eq!(new, pending);
        assert_ne!(old, new);
        let after = vault.seal(Aad::Application(id), b"new");
        assert_eq!(after.key_id, new);
        // Another process that still has the old file learns the new key when it meets it.
        assert_eq!(
            other_process
                .open(&new, Aad::Application(id), &after.bytes)
                .unwrap(),
            b"new"
        );
        assert!(matches!(
            vault.retire_key(&new),
            Err(VaultError::Invalid { .. })
        ));
        vault.retire_key(&old).unwrap();
        assert!(matches!(
            vault.open(&old, Aad::Application(id), &before.bytes),
            Err(VaultError::UnknownKey(_))
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches("secret =").count(),
            1,
            "the retired key's secret is gone"
        );
        assert!(
            vault
                .keys()
                .iter()
                .any(|k| k.id == old && k.retired_at.is_some())
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
