//! One application's chain as a file that another machine checks offline: the history rows
//! with their seq and hash, the latest checkpoint that signed the chain (with every head it
//! signed, which the digest needs), and the public key.
//!
//! A bundle proves the rows up to the checkpoint's seq were there, unchanged, when the key's
//! holder signed; rows after it are only hash-chained (anyone can recompute those hashes).
//! Whether the public key is the right one is the reader's to know: [`verify_bundle`] checks
//! against the key it is given, and otherwise says that it used the bundle's own.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Chain, GENESIS, Head, checkpoint_hash, heads_digest, history_content, link};

/// The `format` of a bundle this version writes and reads.
pub const FORMAT: &str = "uidflow-audit-bundle/1";

/// An exported chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The application.
    pub application_id: Uuid,
    /// When it was exported (not signed).
    pub exported_at: DateTime<Utc>,
    /// Its history, in seq order.
    pub history: Vec<BundleRow>,
    /// The latest checkpoint that signed the chain (`None`: none has yet).
    pub checkpoint: Option<BundleCheckpoint>,
    /// The key the exporting installation signs with (hex).
    pub public_key: String,
}

/// A history row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRow {
    /// `application_history.id` (not hashed: it names the row).
    pub id: i64,
    /// Its place in the chain.
    pub seq: i32,
    /// When (to the microsecond).
    pub at: DateTime<Utc>,
    /// Status.
    pub status: String,
    /// Step.
    pub step: String,
    /// Detail.
    pub detail: Option<String>,
    /// Its hash (hex).
    pub hash: String,
}

/// A checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCheckpoint {
    /// Its id.
    pub id: i64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The previous checkpoint's hash (hex).
    pub prev_hash: String,
    /// The digest of its heads (hex).
    pub heads_digest: String,
    /// Its hash (hex), the signed message.
    pub hash: String,
    /// The Ed25519 signature (hex).
    pub signature: String,
    /// The key that signed it (hex).
    pub public_key: String,
    /// Every head it signed.
    pub heads: Vec<BundleHead>,
}

/// A head a checkpoint signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHead {
    /// The application (`None`: the global audit log).
    pub application_id: Option<Uuid>,
    /// Its seq.
    pub seq: i64,
    /// Its hash (hex).
    pub hash: String,
}

/// Why a bundle does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle this version reads, or a field that is not what it should be.
    #[error("not a valid bundle: {0}")]
    Format(String),
    /// The application has no history.
    #[error("application {0} has no history")]
    Unknown(Uuid),
    /// The rows are not seq 1, 2, 3 …
    #[error("row {id}: seq {seq} where seq {expected} should be (a row is missing or was added)")]
    Sequence {
        /// The row.
        id: i64,
        /// Its seq.
        seq: i32,
        /// The seq it should have.
        expected: i32,
    },
    /// A row's hash does not match its content and the row before it.
    #[error(
        "row {id} (seq {seq}): content changed (its hash does not match its content and the row before it)"
    )]
    ContentChanged {
        /// The row.
        id: i64,
        /// Its seq.
        seq: i32,
    },
    /// No checkpoint has signed the chain yet: nothing in it is signed.
    #[error(
        "no checkpoint covers this chain yet, so nothing in it is signed; run `uidflow audit checkpoint` and export again"
    )]
    Unsigned,
    /// The checkpoint does not sign this chain's rows.
    #[error("checkpoint {checkpoint}: {why}")]
    NotCovered {
        /// The checkpoint.
        checkpoint: i64,
        /// Why.
        why: String,
    },
    /// The checkpoint does not add up.
    #[error("checkpoint {checkpoint} is broken: {why}")]
    CheckpointBroken {
        /// The checkpoint.
        checkpoint: i64,
        /// Why.
        why: String,
    },
    /// Signed by a key other than the one expected.
    #[error("checkpoint {checkpoint} was signed by {found}, not by the expected key {expected}")]
    OtherKey {
        /// The checkpoint.
        checkpoint: i64,
        /// The key it names.
        found: String,
        /// The key expected.
        expected: String,
    },
    /// The signature does not verify.
    #[error("checkpoint {checkpoint}: bad signature")]
    BadSignature {
        /// The checkpoint.
        checkpoint: i64,
    },
}

/// What a bundle that verifies proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// The application.
    pub application_id: Uuid,
    /// Its rows.
    pub rows: usize,
    /// Rows 1 to this were signed.
    pub signed_up_to: i64,
    /// By this checkpoint.
    pub checkpoint: i64,
    /// Made then.
    pub checkpoint_at: DateTime<Utc>,
    /// With this key (hex).
    pub public_key: String,
    /// True when the key was the one expected, not just the bundle's own.
    pub pinned: bool,
}

fn hex_32(what: &str, text: &str) -> Result<[u8; 32], BundleError> {
    super::key::parse_32(text)
        .ok_or_else(|| BundleError::Format(format!("{what} is not 64 hex digits")))
}

/// The bundle of `application_id`, signed by the installation whose key is `public_key`.
pub async fn export(
    pool: &PgPool,
    application_id: Uuid,
    public_key: &VerifyingKey,
) -> Result<Bundle, anyhow::Error> {
    let rows = sqlx::query(
        "SELECT id, seq, at, status, step, detail, hash FROM application_history
         WHERE application_id = $1 ORDER BY seq",
    )
    .bind(application_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(BundleError::Unknown(application_id).into());
    }
    let history = rows
        .iter()
        .map(|row| BundleRow {
            id: row.get("id"),
            seq: row.get("seq"),
            at: row.get("at"),
            status: row.get("status"),
            step: row.get("step"),
            detail: row.get("detail"),
            hash: hex::encode(row.get::<Vec<u8>, _>("hash")),
        })
        .collect();
    let checkpoint = sqlx::query(
        "SELECT c.id, c.at, c.prev_hash, c.heads_digest, c.hash, c.signature, c.public_key
         FROM audit_checkpoints c
         WHERE c.id = (SELECT max(checkpoint_id) FROM audit_checkpoint_heads WHERE application_id = $1)",
    )
    .bind(application_id)
    .fetch_optional(pool)
    .await?;
    let checkpoint = match checkpoint {
        None => None,
        Some(row) => {
            let id: i64 = row.get("id");
            let heads: Vec<(Option<Uuid>, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT application_id, seq, hash FROM audit_checkpoint_heads
                 WHERE checkpoint_id = $1 ORDER BY application_id NULLS LAST",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let hexed = |column: &str| hex::encode(row.get::<Vec<u8>, _>(column));
            Some(BundleCheckpoint {
                id,
                at: row.get("at"),
                prev_hash: hexed("prev_hash"),
                heads_digest: hexed("heads_digest"),
                hash: hexed("hash"),
                signature: hexed("signature"),
                public_key: hexed("public_key"),
                heads: heads
                    .into_iter()
                    .map(|(application_id, seq, hash)| BundleHead {
                        application_id,
                        seq,
                        hash: hex::encode(hash),
                    })
                    .collect(),
            })
        }
    };
    Ok(Bundle {
        format: FORMAT.to_owned(),
        application_id,
        exported_at: Utc::now(),
        history,
        checkpoint,
        public_key: super::key::public_hex(public_key),
    })
}

/// Checks a bundle offline: the chain from seq 1, the checkpoint's head for it, the
/// checkpoint's digest and hash, and its signature by `expected` (or, without it, by the
/// bundle's own key: then [`BundleReport::pinned`] is false).
pub fn verify_bundle(
    bundle: &Bundle,
    expected: Option<&VerifyingKey>,
) -> Result<BundleReport, BundleError> {
    if bundle.format != FORMAT {
        return Err(BundleError::Format(format!(
            "format {:?}, this version reads {FORMAT:?}",
            bundle.format
        )));
    }
    let mut previous = GENESIS;
    let mut hashes = Vec::with_capacity(bundle.history.len());
    for (index, row) in bundle.history.iter().enumerate() {
        let expected_seq = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if row.seq != expected_seq {
            return Err(BundleError::Sequence {
                id: row.id,
                seq: row.seq,
                expected: expected_seq,
            });
        }
        let stored = hex_32(&format!("row {} hash", row.id), &row.hash)?;
        let content = history_content(
            bundle.application_id,
            row.seq,
            row.at,
            &row.status,
            &row.step,
            row.detail.as_deref(),
        );
        if link(&previous, &content) != stored {
            return Err(BundleError::ContentChanged {
                id: row.id,
                seq: row.seq,
            });
        }
        hashes.push(stored);
        previous = stored;
    }
    if hashes.is_empty() {
        return Err(BundleError::Unknown(bundle.application_id));
    }
    let Some(checkpoint) = &bundle.checkpoint else {
        return Err(BundleError::Unsigned);
    };
    let id = checkpoint.id;
    let broken = |why: &str| BundleError::CheckpointBroken {
        checkpoint: id,
        why: why.to_owned(),
    };
    let mut heads = Vec::with_capacity(checkpoint.heads.len());
    for head in &checkpoint.heads {
        heads.push(Head {
            chain: Chain::from_column(head.application_id),
            seq: head.seq,
            hash: hex_32("a checkpoint head's hash", &head.hash)?,
        });
    }
    let own = heads
        .iter()
        .find(|h| h.chain == Chain::Application(bundle.application_id))
        .ok_or_else(|| BundleError::NotCovered {
            checkpoint: id,
            why: "it lists no head for this application".into(),
        })?;
    let signed_row = usize::try_from(own.seq)
        .ok()
        .and_then(|seq| seq.checked_sub(1))
        .and_then(|index| hashes.get(index))
        .ok_or_else(|| BundleError::NotCovered {
            checkpoint: id,
            why: format!(
                "it signed seq {}, and the bundle's rows end at seq {}",
                own.seq,
                hashes.len()
            ),
        })?;
    if *signed_row != own.hash {
        return Err(BundleError::NotCovered {
            checkpoint: id,
            why: format!(
                "it signed another hash for seq {} (a row up to it was changed)",
                own.seq
            ),
        });
    }
    let digest = heads_digest(&heads);
    if hex_32("the checkpoint's heads_digest", &checkpoint.heads_digest)? != digest {
        return Err(broken("its heads do not match their digest"));
    }
    let prev = hex_32("the checkpoint's prev_hash", &checkpoint.prev_hash)?;
    let hash = checkpoint_hash(&prev, checkpoint.at, &digest);
    if hex_32("the checkpoint's hash", &checkpoint.hash)? != hash {
        return Err(broken(
            "its hash does not match its time, heads and predecessor",
        ));
    }
    let named = hex_32("the checkpoint's public_key", &checkpoint.public_key)?;
    let own_key = hex_32("public_key", &bundle.public_key)?;
    let key = match expected {
        Some(expected) => *expected,
        None => VerifyingKey::from_bytes(&own_key)
            .map_err(|_| BundleError::Format("public_key is not an Ed25519 key".into()))?,
    };
    if named != *key.as_bytes() || own_key != *key.as_bytes() {
        let found = if named == *key.as_bytes() {
            own_key
        } else {
            named
        };
        return Err(BundleError::OtherKey {
            checkpoint: id,
            found: hex::encode(found),
            expected: hex::encode(key.as_bytes()),
        });
    }
    let signature = hex::decode(&checkpoint.signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or_else(|| BundleError::Format("the signature is not 128 hex digits".into()))?;
    key.verify_strict(&hash, &signature)
        .map_err(|_| BundleError::BadSignature { checkpoint: id })?;
    Ok(BundleReport {
        application_id: bundle.application_id,
        rows: hashes.len(),
        signed_up_to: own.seq,
        checkpoint: id,
        checkpoint_at: checkpoint.at,
        public_key: hex::encode(key.as_bytes()),
        pinned: expected.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    /// A bundle of three rows, signed at seq 2, with another application's head beside it.
    fn bundle(key: &SigningKey) -> Bundle {
        let application_id = Uuid::from_u128(42);
        let at = DateTime::from_timestamp_micros(1_800_000_000_000_001).unwrap();
        let mut previous = GENESIS;
        let mut history = Vec::new();
        for (seq, status) in [(1, "received"), (2, "verifying_identity"), (3, "completed")] {
            let hash = link(
                &previous,
                &history_content(application_id, seq, at, status, "intake", Some("é")),
            );
            history.push(BundleRow {
                id: i64::from(seq) * 10,
                seq,
                at,
                status: status.into(),
                step: "intake".into(),
                detail: Some("é".into()),
                hash: hex::encode(hash),
            });
            previous = hash;
        }
        let heads = vec![
            Head {
                chain: Chain::Application(application_id),
                seq: 2,
                hash: super::super::key::parse_32(&history[1].hash).unwrap(),
            },
            Head {
                chain: Chain::Log,
                seq: 7,
                hash: [7; 32],
            },
        ];
        let digest = heads_digest(&heads);
        let hash = checkpoint_hash(&[5; 32], at, &digest);
        Bundle {
            format: FORMAT.into(),
            application_id,
            exported_at: at,
            history,
            checkpoint: Some(BundleCheckpoint {
                id: 9,
                at,
                prev_hash: hex::encode([5; 32]),
                heads_digest: hex::encode(digest),
                hash: hex::encode(hash),
                signature: hex::encode(key.sign(&hash).to_bytes()),
                public_key: hex::encode(key.verifying_key().as_bytes()),
                heads: heads
                    .iter()
                    .map(|h| BundleHead {
                        application_id: h.chain.column(),
                        seq: h.seq,
                        hash: hex::encode(h.hash),
                    })
                    .collect(),
            }),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        }
    }

    #[test]
    fn a_signed_bundle_verifies_pinned_or_not() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let bundle = bundle(&key);
        let report = verify_bundle(&bundle, Some(&key.verifying_key())).unwrap();
        assert_eq!(
            (report.rows, report.signed_up_to, report.pinned),
            (3, 2, true)
        );
        assert!(!verify_bundle(&bundle, None).unwrap().pinned);
        // Through JSON and back.
        let text = serde_json::to_string(&bundle).unwrap();
        let read: Bundle = serde_json::from_str(&text).unwrap();
        assert_eq!(read, bundle);
    }

    #[test]
    fn every_kind_of_edit_is_named() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let pinned = key.verifying_key();
        let check = |edit: &dyn Fn(&mut Bundle), needle: &str| {
            let mut edited = bundle(&key);
            edit(&mut edited);
            let error = verify_bundle(&edited, Some(&pinned))
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{needle:?} not in {error:?}");
        };
        check(
            &|b| b.history[1].status = "completed".into(),
            "row 20 (seq 2): content changed",
        );
        check(
            &|b| b.history[2].detail = None,
            "row 30 (seq 3): content changed",
        );
        check(
            &|b| {
                b.history.remove(1);
            },
            "seq 3 where seq 2 should be",
        );
        check(&|b| b.history.truncate(1), "the bundle's rows end at seq 1");
        check(
            &|b| b.checkpoint.as_mut().unwrap().heads[1].seq = 8,
            "do not match their digest",
        );
        check(
            &|b| b.checkpoint.as_mut().unwrap().prev_hash = hex::encode([6; 32]),
            "hash does not match",
        );
        check(
            &|b| {
                b.checkpoint.as_mut().unwrap().heads.remove(0);
            },
            "lists no head",
        );
        check(&|b| b.checkpoint = None, "no checkpoint covers");
        check(&|b| b.format = "other/2".into(), "format");
        check(
            &|b| b.history[0].hash = "zz".into(),
            "row 10 hash is not 64 hex digits",
        );
        check(
            &|b| {
                let c = b.checkpoint.as_mut().unwrap();
                let mut signature = hex::decode(&c.signature).unwrap();
                signature[0] ^= 1;
                c.signature = hex::encode(signature);
            },
            "bad signature",
        );
        // Re-signed by a forger with their own key, which the bundle names: refused when
        // pinned.
        check(
            &|b| {
                let c = b.checkpoint.as_mut().unwrap();
                let hash = super::super::key::parse_32(&c.hash).unwrap();
                c.signature = hex::encode(other.sign(&hash).to_bytes());
                c.public_key = hex::encode(other.verifying_key().as_bytes());
                b.public_key = c.public_key.clone();
            },
            "not by the expected key",
        );
    }
}
