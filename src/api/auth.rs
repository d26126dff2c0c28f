//! Bearer tokens (CONTRACT §3, §8): who is calling, and what they may see.
//!
//! The token file (`API_TOKENS_FILE`) holds only SHA-256 hashes. A presented token is hashed
//! and compared with every known hash in constant time (`subtle`), so neither the comparison
//! nor the lookup order tells an attacker how close a guess was. Without a file, `uidflow run`
//! makes a local operator token and one clerk token per example issuing service in
//! `.uidflow/tokens/` (owner-only permissions) and prints where they are. Existing local token
//! files are reused only while the directory and the files are still owner-only; otherwise
//! `uidflow run` refuses to start, since the tokens may have been read by others.
//! [`add_token`] mints a token for `uidflow tokens add`; only its hash is kept.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The issuing services of `schemas/examples`, each given a local clerk token.
pub const EXAMPLE_SERVICES: [&str; 4] = [
    "brest-len-oa",
    "grodno-okt-oa",
    "minsk-frunz-oa",
    "minsk-sov-oa",
];

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees every application, the queues and the dead letters.
    Operator,
    /// Sees the applications of one issuing service, and confirms phones.
    Clerk,
}

/// A caller, once its token matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name for the history ("who").
    pub name: String,
    /// Role.
    pub role: Role,
    /// The clerk's issuing service.
    pub issuing_service: Option<String>,
}

impl Caller {
    /// True if the caller may see applications of `service`.
    pub fn sees(&self, service: Option<&str>) -> bool {
        match self.role {
            Role::Operator => true,
            Role::Clerk => service.is_some() && service == self.issuing_service.as_deref(),
        }
    }
}

/// One `[[token]]` entry of the token file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Optional name, shown in histories; defaults to role and hash prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Role.
    pub role: Role,
    /// The clerk's issuing service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing_service: Option<String>,
    /// Hex of the token's SHA-256.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// The known tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

/// The SHA-256 of a token, as 32 bytes.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads and checks a token file; the error says what is wrong and where.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {} ({e})", path.display()))?;
        let file: TokenFile = toml::from_str(&text).map_err(|e| {
            format!(
                "{} is not a valid token file ({})",
                path.display(),
                e.message()
            )
        })?;
        Self::from_entries(file.token).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Builds the table from entries, checking each.
    pub fn from_entries(entries: Vec<TokenEntry>) -> Result<Self, String> {
        let mut table = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let bytes = hex::decode(&entry.sha256)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("token {} has no valid sha256 (64 hex digits)", index + 1)
                })?;
            if (entry.role == Role::Clerk) != entry.issuing_service.is_some() {
                return Err(format!(
                    "token {}: a clerk token needs issuing_service, an operator token has none",
                    index + 1
                ));
            }
            let name = entry.name.unwrap_or_else(|| {
                let service = entry
                    .issuing_service
                    .as_deref()
                    .map(|s| format!("-{s}"))
                    .unwrap_or_default();
                format!("{:?}{service}-{}", entry.role, &entry.sha256[..8]).to_lowercase()
            });
            table.push((
                bytes,
                Caller {
                    name,
                    role: entry.role,
                    issuing_service: entry.issuing_service,
                },
            ));
        }
        if table.is_empty() {
            return Err("no [[token]] entries".into());
        }
        Ok(Self { entries: table })
    }

    /// The caller a presented token belongs to. Compares with every entry in constant time.
    pub fn caller(&self, presented: &str) -> Option<Caller> {
        let hash = digest(presented);
        let mut found = None;
        for (known, caller) in &self.entries {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// Local tokens made by `uidflow run` when `API_TOKENS_FILE` is unset.
pub struct LocalTokens {
    /// The table.
    pub tokens: Tokens,
    /// Where the token files are.
    pub dir: PathBuf,
}

/// The issuing service of a clerk: 1 to 64 of `a-z`, `0-9` and `-`.
pub fn check_service(service: &str) -> Result<(), String> {
    let fine = (1..=64).contains(&service.len())
        && service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{service:?} is not an issuing service: 1 to 64 of a-z, 0-9 and -"
        ))
    }
}

/// The entries of the token file at `path` (none if it does not exist yet).
pub fn read_entries(path: &Path) -> Result<Vec<TokenEntry>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {} ({e})", path.display())),
    };
    let file: TokenFile = toml::from_str(&text).map_err(|e| {
        format!(
            "{} is not a valid token file ({})",
            path.display(),
            e.message()
        )
    })?;
    Ok(file.token)
}

/// Mints a token (32 bytes of the OS CSPRNG, hex) for `role` (a clerk of `service`), adds its
/// SHA-256 entry to the token file at `path` (made owner-only if new; existing entries kept) and
/// returns the token, which is stored nowhere else.
pub fn add_token(
    path: &Path,
    role: Role,
    service: Option<&str>,
    name: Option<&str>,
) -> Result<SecretString, String> {
    match (&role, service) {
        (Role::Clerk, Some(service)) => check_service(service)?,
        (Role::Clerk, None) => return Err("a clerk token needs --service".into()),
        (Role::Operator, Some(_)) => return Err("an operator token has no --service".into()),
        (Role::Operator, None) => {}
    }
    let mut entries = read_entries(path)?;
    if let Some(name) = name
        && entries.iter().any(|e| e.name.as_deref() == Some(name))
    {
        return Err(format!(
            "{} already has a token named {name:?}",
            path.display()
        ));
    }
    let token = crate::secrets::generate_token();
    entries.push(TokenEntry {
        name: name.map(str::to_owned),
        role,
        issuing_service: service.map(str::to_owned),
        sha256: hex::encode(digest(token.expose_secret())),
    });
    Tokens::from_entries(entries.clone())?;
    let text = toml::to_string(&TokenFile { token: entries }).map_err(|e| e.to_string())?;
    write_owner_only(path, &text).map_err(|e| format!("cannot write {} ({e})", path.display()))?;
    Ok(token)
}

/// Replaces `path` with `text` through a temporary file (owner-only) and a rename, so a
/// reader sees the old file or the new one, never half of one.
fn write_owner_only(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Refuses a local token path that others may read or write (group or other bits set).
fn check_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not owner-only (mode {mode:o}), so its tokens may have been read by others; \
             delete it to make new tokens, or set API_TOKENS_FILE",
            path.display()
        )));
    }
    Ok(())
}

/// Makes (or reuses) the local tokens in `dir`: `operator.token`, `clerk-<service>.token`,
/// and `tokens.toml` with their hashes. Files are readable by the owner only.
pub fn local_tokens(dir: &Path) -> std::io::Result<LocalTokens> {
    if dir.exists() {
        check_owner_only(dir)?;
    } else {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    restrict(dir, 0o700)?;
    let mut entries = Vec::new();
    let mut wanted = vec![("operator".to_owned(), Role::Operator, None)];
    for service in EXAMPLE_SERVICES {
        wanted.push((
            format!("clerk-{service}"),
            Role::Clerk,
            Some(service.to_owned()),
        ));
    }
    for (name, role, issuing_service) in wanted {
        let path = dir.join(format!("{name}.token"));
        if path.exists() {
            check_owner_only(&path)?;
        }
        let token = match std::fs::read_to_string(&path) {
            Ok(existing) if !existing.trim().is_empty() => {
                SecretString::from(existing.trim().to_owned())
            }
            _ => {
                let fresh: String = crate::secrets::generate_password()
                    .expose_secret()
                    .to_owned()
                    + crate::secrets::generate_password().expose_secret()
                    + crate::secrets::generate_password().expose_secret();
                write_owner_only(&path, &format!("{fresh}\n"))?;
                SecretString::from(fresh)
            }
        };
        restrict(&path, 0o600)?;
        entries.push(TokenEntry {
            name: Some(name),
            role,
            issuing_service,
            sha256: hex::encode(digest(token.expose_secret())),
        });
    }
    // Entries added with `uidflow tokens add` stay; the local ones are written afresh.
    let hashes = dir.join("tokens.toml");
    if hashes.exists() {
        check_owner_only(&hashes)?;
    }
    let local: Vec<Option<String>> = entries.iter().map(|e| e.name.clone()).collect();
    for added in read_entries(&hashes).unwrap_or_default() {
        if !local.contains(&added.name) {
            entries.push(added);
        }
    }
    let file = TokenFile {
        token: entries.clone(),
    };
    write_owner_only(
        &hashes,
        &toml::to_string(&file).map_err(std::io::Error::other)?,
    )?;
    let tokens = Tokens::from_entries(entries).map_err(std::io::Error::other)?;
    Ok(LocalTokens {
        tokens,
        dir: dir.to_owned(),
    })
}

fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(role: Role, service: Option<&str>, token: &str) -> TokenEntry {
        TokenEntry {
            name: None,
            role,
            issuing_service: service.map(str::to_owned),
            sha256: hex::encode(digest(token)),
        }
    }

    #[test]
    fn a_token_finds_its_caller_and_nothing_else_does() {
        let tokens = Tokens::from_entries(vec![
            entry(Role::Operator, None, "op-secret"),
            entry(Role::Clerk, Some("minsk-sov-oa"), "clerk-secret"),
        ])
        .unwrap();
        assert_eq!(tokens.caller("op-secret").unwrap().role, Role::Operator);
        let clerk = tokens.caller("clerk-secret").unwrap();
        assert!(
            clerk.sees(Some("minsk-sov-oa"))
                && !clerk.sees(Some("grodno-okt-oa"))
                && !clerk.sees(None)
        );
        assert!(tokens.caller("op-secreT").is_none());
        assert!(tokens.caller("").is_none());
    }

    #[test]
    fn bad_token_files_are_named_precisely() {
        let bad_hash = TokenEntry {
            sha256: "xyz".into(),
            ..entry(Role::Operator, None, "t")
        };
        assert!(
            Tokens::from_entries(vec![bad_hash])
                .unwrap_err()
                .contains("sha256")
        );
        assert!(
            Tokens::from_entries(vec![entry(Role::Clerk, None, "t")])
                .unwrap_err()
                .contains("issuing_service")
        );
        assert!(
            Tokens::from_entries(vec![])
                .unwrap_err()
                .contains("no [[token]]")
        );
        let parsed: TokenFile = toml::from_str(
            "[[token]]\nrole = \"clerk\"\nissuing_service = \"minsk-sov-oa\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        assert_eq!(parsed.token[0].role, Role::Clerk);
    }

    #[test]
    fn local_tokens_are_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("uidflow-tokens-{}", uuid::Uuid::new_v4()));
        let first = local_tokens(&dir).unwrap();
        let operator = std::fs::read_to_string(dir.join("operator.token")).unwrap();
        assert_eq!(
            first.tokens.caller(operator.trim()).unwrap().role,
            Role::Operator
        );
        let mode = std::fs::metadata(dir.join("operator.token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = local_tokens(&dir).unwrap();
        assert!(
            again.tokens.caller(operator.trim()).is_some(),
            "the same token works after a restart"
        );
        let from_file = Tokens::from_file(&dir.join("tokens.toml")).unwrap();
        assert!(from_file.caller(operator.trim()).is_some());

        // A token added by `uidflow tokens add` survives the next start.
        let added = add_token(
            &dir.join("tokens.toml"),
            Role::Clerk,
            Some("gomel-sov-oa"),
            Some("anna"),
        )
        .unwrap();
        let third = local_tokens(&dir).unwrap();
        let anna = third.tokens.caller(added.expose_secret()).unwrap();
        assert_eq!(anna.name, "anna");
        assert!(third.tokens.caller(operator.trim()).is_some());

        // Once others may read a token file, it is not reused.
        std::fs::set_permissions(
            dir.join("operator.token"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let refused = local_tokens(&dir)
            .err()
            .expect("a readable token is refused");
        assert!(refused.to_string().contains("not owner-only"), "{refused}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let refused = local_tokens(&dir)
            .err()
            .expect("an open directory is refused");
        assert!(refused.to_string().contains("mode 755"), "{refused}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn added_tokens_keep_only_their_hash_and_the_entries_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("uidflow-add-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let operator = add_token(&path, Role::Operator, None, None).unwrap();
        let clerk = add_token(&path, Role::Clerk, Some("minsk-sov-oa"), Some("ivan")).unwrap();
        assert_ne!(operator.expose_secret(), clerk.expose_secret());
        assert_eq!(clerk.expose_secret().len(), 64);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(clerk.expose_secret()) && !text.contains(operator.expose_secret()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tokens = Tokens::from_file(&path).unwrap();
        assert_eq!(
            tokens.caller(operator.expose_secret()).unwrap().role,
            Role::Operator
        );
        let ivan = tokens.caller(clerk.expose_secret()).unwrap();
        assert_eq!(
            (ivan.name.as_str(), ivan.issuing_service.as_deref()),
            ("ivan", Some("minsk-sov-oa"))
        );
        for (role, service, name, needle) in [
            (Role::Clerk, None, None, "needs --service"),
            (Role::Clerk, Some("Minsk!"), None, "not an issuing service"),
            (Role::Clerk, Some(""), None, "not an issuing service"),
            (
                Role::Operator,
                Some("minsk-sov-oa"),
                None,
                "has no --service",
            ),
            (
                Role::Clerk,
                Some("minsk-sov-oa"),
                Some("ivan"),
                "already has",
            ),
        ] {
            let error = add_token(&path, role, service, name).unwrap_err();
            assert!(error.contains(needle), "{error}");
        }
        assert_eq!(
            read_entries(&path).unwrap().len(),
            2,
            "a refusal changes nothing"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
