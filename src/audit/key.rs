//! The checkpoints' signing key: an Ed25519 seed (32 bytes, 64 hex digits) in an owner-only
//! file outside the database, `AUDIT_KEY_FILE`, or a local one made once in
//! `.uidflow/keys/audit-signing.key`; and the public keys a verifier trusts.
//!
//! The local key is made atomically: the seed is written to a temporary file of this process,
//! which is then hard-linked to its name. A hard link never replaces a file, so of two
//! processes starting at once one wins and the other reads the winner's key.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use secrecy::ExposeSecret;

use crate::config::Settings;

/// Where the local signing key lives when `AUDIT_KEY_FILE` is unset.
pub const LOCAL_KEY_FILE: &str = ".uidflow/keys/audit-signing.key";

/// A signing key and where it came from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The key (its `Debug` shows only the public half).
    pub key: SigningKey,
    /// Its file.
    pub path: PathBuf,
    /// True when this call made it (a fresh local key).
    pub created: bool,
}

/// Reads a signing key: one line of 64 hex digits in a file that no one but its owner (and
/// its group, as Kubernetes mounts a secret for a pod's `fsGroup`) may read, and no one but
/// its owner may write.
pub fn load(path: &Path) -> Result<SigningKey, String> {
    check_private(path, 0o027)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {} ({e})", path.display()))?;
    let seed = parse_32(text.trim()).ok_or_else(|| {
        format!(
            "{} does not hold an Ed25519 seed (one line of 64 hex digits)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The key of `AUDIT_KEY_FILE`, or else the local one ([`LOCAL_KEY_FILE`]), made if missing.
pub fn signing_key(settings: &Settings) -> Result<KeySource, String> {
    match &settings.audit_key_file {
        Some(path) => Ok(KeySource {
            key: load(path).map_err(|e| format!("AUDIT_KEY_FILE: {e}"))?,
            path: path.clone(),
            created: false,
        }),
        None => local(Path::new(LOCAL_KEY_FILE)),
    }
}

/// The key a verifier uses when given none: `AUDIT_KEY_FILE`'s, or the local one if it
/// exists. Never made here: a fresh key would only call every checkpoint forged.
pub fn existing_key(settings: &Settings) -> Result<Option<KeySource>, String> {
    match &settings.audit_key_file {
        Some(_) => signing_key(settings).map(Some),
        None => {
            let path = Path::new(LOCAL_KEY_FILE);
            if !path.exists() {
                return Ok(None);
            }
            Ok(Some(KeySource {
                key: load(path)?,
                path: path.to_owned(),
                created: false,
            }))
        }
    }
}

/// Reads the key at `path`, or makes it (owner-only, in an owner-only directory) if missing.
pub fn local(path: &Path) -> Result<KeySource, String> {
    let describe =
        |e: std::io::Error| format!("cannot make the audit key {} ({e})", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            check_private(dir, 0o077)?;
        } else {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(describe)?;
        }
    }
    if path.exists() {
        // Made owner-only here: kept so.
        check_private(path, 0o077)?;
        return Ok(KeySource {
            key: load(path)?,
            path: path.to_owned(),
            created: false,
        });
    }
    let temporary = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = write_seed(&temporary).map_err(describe);
    let linked = written.and_then(|()| match std::fs::hard_link(&temporary, path) {
        Ok(()) => Ok(true),
        // Another process made it first: its key is the key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(describe(e)),
    });
    let _ = std::fs::remove_file(&temporary);
    let created = linked?;
    Ok(KeySource {
        key: load(path)?,
        path: path.to_owned(),
        created,
    })
}

fn write_seed(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let seed = crate::secrets::generate_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(seed.expose_secret().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Refuses a key file or directory with any of the `forbidden` permission bits.
fn check_private(path: &Path, forbidden: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {} ({e})", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & forbidden != 0 {
        return Err(format!(
            "{} is open to others (mode {mode:o}), so the audit key may have been read or \
             replaced; make it 0600 (0440 where a group must read it) if it was not, else make \
             a new key",
            path.display()
        ));
    }
    Ok(())
}

/// A public key as 64 lower-case hex digits (what `uidflow audit public-key` prints).
pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

/// A public key given on the command line: 64 hex digits, or a file holding them.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let hex_digits = match parse_32(text.trim()) {
        Some(bytes) => bytes,
        None => {
            let read = std::fs::read_to_string(text).map_err(|e| {
                format!("{text:?} is neither 64 hex digits nor a readable file ({e})")
            })?;
            parse_32(read.trim()).ok_or_else(|| {
                format!("{text} does not hold a public key (one line of 64 hex digits)")
            })?
        }
    };
    VerifyingKey::from_bytes(&hex_digits)
        .map_err(|_| format!("{text:?} is not an Ed25519 public key"))
}

/// 32 bytes written as 64 hex digits.
pub fn parse_32(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("uidflow-audit-key-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn a_local_key_is_made_once_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch();
        let path = dir.join("keys/audit-signing.key");
        let first = local(&path).unwrap();
        assert!(first.created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let again = local(&path).unwrap();
        assert!(!again.created);
        assert_eq!(again.key.to_bytes(), first.key.to_bytes());
        // Nothing but the key is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        // The local key stays owner-only; a key file given may be read by its group.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let refused = local(&path).unwrap_err();
        assert!(refused.contains("open to others (mode 640)"), "{refused}");
        assert!(load(&path).is_ok());
        for open in [0o644, 0o660, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open)).unwrap();
            assert!(
                load(&path).unwrap_err().contains("open to others"),
                "{open:o}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn processes_racing_to_make_the_local_key_all_get_the_same_one() {
        let dir = scratch();
        let path = dir.join("keys/audit-signing.key");
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| local(&path).map(|k| k.key.to_bytes())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_key_files_and_public_keys_are_named() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = scratch();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.key");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(load(&path).unwrap_err().contains("64 hex digits"));

        let key = SigningKey::from_bytes(&[7; 32]);
        let public = public_hex(&key.verifying_key());
        assert_eq!(parse_public(&public).unwrap(), key.verifying_key());
        let file = dir.join("public.hex");
        std::fs::write(&file, format!("{public}\n")).unwrap();
        assert_eq!(
            parse_public(file.to_str().unwrap()).unwrap(),
            key.verifying_key()
        );
        assert!(
            parse_public("abc")
                .unwrap_err()
                .contains("neither 64 hex digits")
        );
        std::fs::write(&file, "abc").unwrap();
        assert!(
            parse_public(file.to_str().unwrap())
                .unwrap_err()
                .contains("does not hold a public key")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
