//! The tamper-evident audit trail (docs/AUDIT.md): hash chains over the history, signed
//! checkpoints, and their verification.
//!
//! Every `application_history` row stores its place in its application's chain (`seq`) and
//! `hash` = SHA-256(previous row's hash ‖ content); a trigger computes both (migration
//! `create_audit_chain`), so no insert site can forget or choose them. `audit_log` is a chain
//! of its own for events that belong to no application ([`record`]). The checkpointer
//! ([`run`], one process at a time) signs the heads of the chains that changed since the
//! previous checkpoint with an Ed25519 key kept outside the database ([`key`]); checkpoints
//! chain too. [`verify`] recomputes everything from the rows and checks every signature with a
//! key the caller trusts (never the one stored beside the checkpoint) and names the first row
//! that does not match; [`bundle`] carries one application's chain to another machine.
//!
//! This module recomputes exactly what the trigger computes: [`history_content`] and
//! [`log_content`] are the SQL functions `audit_history_content` and `audit_log_content`, and a
//! test checks them against the server. It does not decide what is worth recording: the
//! history's writers (`applications`) and the callers of [`record`] do.

pub mod bundle;
pub mod key;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures_lite::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;

/// The previous hash of each chain's first row, and of the first checkpoint.
pub const GENESIS: [u8; 32] = [0; 32];

/// The advisory lock that lets one process at a time make a checkpoint (`uidflow.audit`).
const LOCK: i64 = 0x7569_6466_6c6f_7702;

/// Most problems a [`Report`] lists (it counts the rest).
pub const MAX_PROBLEMS: usize = 1000;

// --- The encoding -------------------------------------------------------------------------

/// A text field: its length in bytes (big-endian i32) and its UTF-8 bytes; -1 for NULL.
fn field(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(text) => {
            let length = i32::try_from(text.len()).expect("a PostgreSQL text is under 1 GB");
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Microseconds since the epoch: what PostgreSQL stores of a `timestamptz`.
fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The content of a history row, as the SQL function `audit_history_content` encodes it.
pub fn history_content(
    application_id: Uuid,
    seq: i32,
    at: DateTime<Utc>,
    status: &str,
    step: &str,
    detail: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + detail.map_or(0, str::len));
    out.extend_from_slice(application_id.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&micros(at).to_be_bytes());
    field(&mut out, Some(status));
    field(&mut out, Some(step));
    field(&mut out, detail);
    out
}

/// The content of an `audit_log` row, as `audit_log_content` encodes it (`detail` is the
/// server's text form of the jsonb value, `detail::text`).
pub fn log_content(
    seq: i64,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    detail: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + detail.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&micros(at).to_be_bytes());
    field(&mut out, Some(actor));
    field(&mut out, Some(action));
    field(&mut out, subject);
    field(&mut out, Some(detail));
    out
}

/// The next link: SHA-256(previous hash ‖ content).
pub fn link(previous: &[u8; 32], content: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(content);
    hasher.finalize().into()
}

/// Which chain: an application's history, or the global `audit_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// The history of this application.
    Application(Uuid),
    /// The global chain (`audit_log`).
    Log,
}

impl Chain {
    /// From `audit_checkpoint_heads.application_id` (NULL: the global chain).
    pub fn from_column(application_id: Option<Uuid>) -> Self {
        application_id.map_or(Chain::Log, Chain::Application)
    }

    /// As stored in `audit_checkpoint_heads.application_id`.
    pub fn column(self) -> Option<Uuid> {
        match self {
            Chain::Application(id) => Some(id),
            Chain::Log => None,
        }
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Chain::Application(id) => write!(f, "application {id}"),
            Chain::Log => f.write_str("the audit log"),
        }
    }
}

impl Serialize for Chain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Chain::Application(id) => serializer.collect_str(id),
            Chain::Log => serializer.serialize_str("audit_log"),
        }
    }
}

/// A chain's head as a checkpoint signs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The chain.
    pub chain: Chain,
    /// Its last row's `seq`.
    pub seq: i64,
    /// Its last row's `hash`.
    pub hash: [u8; 32],
}

impl Head {
    /// The head's entry in the digest: tag (0 application, 1 log) ‖ uuid ‖ seq ‖ hash.
    fn entry(&self) -> [u8; 57] {
        let mut entry = [0u8; 57];
        if let Chain::Application(id) = self.chain {
            entry[1..17].copy_from_slice(id.as_bytes());
        } else {
            entry[0] = 1;
        }
        entry[17..25].copy_from_slice(&self.seq.to_be_bytes());
        entry[25..].copy_from_slice(&self.hash);
        entry
    }
}

/// SHA-256 over the heads' entries in byte order (so the order they are given in is free).
pub fn heads_digest(heads: &[Head]) -> [u8; 32] {
    let mut entries: Vec<[u8; 57]> = heads.iter().map(Head::entry).collect();
    entries.sort_unstable();
    let mut hasher = Sha256::new();
    for entry in &entries {
        hasher.update(entry);
    }
    hasher.finalize().into()
}

/// A checkpoint's hash, the message its signature signs: SHA-256(previous checkpoint's hash ‖
/// `at` in µs ‖ heads digest).
pub fn checkpoint_hash(previous: &[u8; 32], at: DateTime<Utc>, digest: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(micros(at).to_be_bytes());
    hasher.update(digest);
    hasher.finalize().into()
}

/// 32 stored bytes, or `None` when a column was shortened or lengthened.
fn bytes_32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

// --- Writing ------------------------------------------------------------------------------

/// Appends an event that belongs to no application (a key rotation, a retention run, a
/// subject export) to the global chain, in the caller's transaction. No personal data: ids,
/// counts and reasons only.
pub async fn record(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    detail: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, subject, detail) VALUES ($1, $2, $3, $4)")
        .bind(crate::db::pg_safe_text(actor))
        .bind(crate::db::pg_safe_text(action))
        .bind(subject.map(crate::db::pg_safe_text))
        .bind(crate::db::pg_safe_json(detail))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What a checkpoint round did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Checkpointed {
    /// A checkpoint was made.
    Made {
        /// Its id.
        id: i64,
        /// The heads it signed.
        heads: usize,
        /// Its hash (hex).
        hash: String,
    },
    /// No chain changed since the last checkpoint.
    NothingNew,
    /// Another process is making one right now.
    Busy,
    /// The last checkpoint is younger than the interval (another process made it).
    TooSoon,
}

/// Makes a checkpoint now: signs the heads of every chain that changed since the last one.
pub async fn checkpoint(pool: &PgPool, key: &SigningKey) -> sqlx::Result<Checkpointed> {
    checkpoint_after(pool, key, None).await
}

/// [`checkpoint`], unless the last one is younger than `min_gap` (several processes run the
/// checkpointer; one checkpoint per interval is enough).
async fn checkpoint_after(
    pool: &PgPool,
    key: &SigningKey,
    min_gap: Option<Duration>,
) -> sqlx::Result<Checkpointed> {
    let mut tx = pool.begin().await?;
    let locked = crate::db::try_advisory_xact_lock(&mut tx, LOCK).await?;
    if !locked {
        return Ok(Checkpointed::Busy);
    }
    let last: Option<(DateTime<Utc>, Vec<u8>)> =
        sqlx::query_as("SELECT at, hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let now = Utc::now().trunc_subsecs(6);
    if let (Some(gap), Some((at, _))) = (min_gap, &last)
        && now.signed_duration_since(*at).to_std().unwrap_or_default() < gap
    {
        return Ok(Checkpointed::TooSoon);
    }
    // Heads locked by a transaction in flight are skipped (their change is not committed
    // yet): the next checkpoint takes them. So a checkpoint never waits for an append, and
    // never deadlocks with a transaction that appends to several chains.
    let mut heads: Vec<Head> = Vec::new();
    let sealed: Vec<(Uuid, i64, Vec<u8>)> = sqlx::query_as(
        "WITH taken AS (
             SELECT application_id FROM audit_heads WHERE NOT sealed FOR UPDATE SKIP LOCKED)
         UPDATE audit_heads h SET sealed = true FROM taken
         WHERE h.application_id = taken.application_id
         RETURNING h.application_id, h.seq, h.hash",
    )
    .fetch_all(&mut *tx)
    .await?;
    let log: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "WITH taken AS (
             SELECT only_row FROM audit_log_head WHERE NOT sealed FOR UPDATE SKIP LOCKED)
         UPDATE audit_log_head h SET sealed = true FROM taken
         WHERE h.only_row = taken.only_row
         RETURNING h.seq, h.hash",
    )
    .fetch_optional(&mut *tx)
    .await?;
    for (application_id, seq, hash) in sealed {
        heads.push(Head {
            chain: Chain::Application(application_id),
            seq,
            hash: bytes_32(&hash).unwrap_or_default(),
        });
    }
    if let Some((seq, hash)) = log {
        heads.push(Head {
            chain: Chain::Log,
            seq,
            hash: bytes_32(&hash).unwrap_or_default(),
        });
    }
    if heads.is_empty() {
        return Ok(Checkpointed::NothingNew);
    }
    let previous = last
        .as_ref()
        .and_then(|(_, hash)| bytes_32(hash))
        .unwrap_or(GENESIS);
    let digest = heads_digest(&heads);
    let hash = checkpoint_hash(&previous, now, &digest);
    let signature = key.sign(&hash);
    let count = i32::try_from(heads.len()).unwrap_or(i32::MAX);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO audit_checkpoints (at, prev_hash, heads_digest, heads, hash, signature, public_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(now)
    .bind(previous.as_slice())
    .bind(digest.as_slice())
    .bind(count)
    .bind(hash.as_slice())
    .bind(signature.to_bytes().as_slice())
    .bind(key.verifying_key().as_bytes().as_slice())
    .fetch_one(&mut *tx)
    .await?;
    let chains: Vec<Option<Uuid>> = heads.iter().map(|h| h.chain.column()).collect();
    let seqs: Vec<i64> = heads.iter().map(|h| h.seq).collect();
    let hashes: Vec<Vec<u8>> = heads.iter().map(|h| h.hash.to_vec()).collect();
    sqlx::query(
        "INSERT INTO audit_checkpoint_heads (checkpoint_id, application_id, seq, hash)
         SELECT $1, * FROM unnest($2::uuid[], $3::bigint[], $4::bytea[])",
    )
    .bind(id)
    .bind(&chains)
    .bind(&seqs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Checkpointed::Made {
        id,
        heads: heads.len(),
        hash: hex::encode(hash),
    })
}

/// The checkpointer: a checkpoint every [`Settings::audit_checkpoint_interval`] (in the
/// processes that host the outbox; one of them at a time makes it), until cancelled.
pub async fn run(settings: Settings, pool: PgPool, key: SigningKey, token: CancellationToken) {
    let interval = settings.audit_checkpoint_interval;
    // A little under the interval, so a process whose turn comes just before another's
    // checkpoint is a checkpoint old still makes one.
    let min_gap = interval.mul_f64(0.9);
    loop {
        match checkpoint_after(&pool, &key, Some(min_gap)).await {
            Ok(Checkpointed::Made { id, heads, hash }) => {
                tracing::debug!(checkpoint = id, heads, hash = %hash, "audit checkpoint signed");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "audit checkpoint failed; it runs again");
            }
        }
        if !crate::retry::pause(&token, Some(interval)).await {
            return;
        }
    }
}

// --- Verifying ----------------------------------------------------------------------------

/// What does not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// The row's hash is not SHA-256(previous hash ‖ its content): it was changed (or forged).
    ContentChanged,
    /// Rows before this one are missing (its seq follows `after`; 0: the chain's start).
    RowsMissingBefore {
        /// The seq of the row before it that is there.
        after: i64,
    },
    /// The chain ends before its head: the rows after `ends_at` were deleted.
    RowsMissingAtEnd {
        /// The last seq there is (0: none).
        ends_at: i64,
        /// The head's seq.
        head: i64,
    },
    /// A row past the chain's head, or in a chain that has none: inserted around the trigger.
    RowInserted {
        /// The head's seq (`None`: the chain has no head).
        head: Option<i64>,
    },
    /// A row numbered below 1, which the trigger never writes.
    SeqBelowOne,
    /// The chain's last row and its head have the same seq and different hashes.
    HeadDiffers,
    /// A checkpoint signed another hash for this row.
    DiffersFromCheckpoint {
        /// The checkpoint.
        checkpoint: i64,
    },
    /// A checkpoint signed this row, and it is not there.
    MissingSinceCheckpoint {
        /// The checkpoint.
        checkpoint: i64,
    },
    /// The checkpoint does not add up: `why`.
    CheckpointBroken {
        /// What does not.
        why: String,
    },
    /// The checkpoint was signed by a key the verifier does not trust.
    SignedByAnotherKey {
        /// That key (hex), as stored beside it.
        public_key: String,
    },
    /// The signature does not verify with the trusted key.
    BadSignature,
}

/// One thing that does not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The chain (`None` for a checkpoint's own problems).
    pub chain: Option<Chain>,
    /// The row's seq in its chain.
    pub seq: Option<i64>,
    /// The row's id (`application_history.id` or `audit_log.id`).
    pub row_id: Option<i64>,
    /// The checkpoint, for a checkpoint's own problems.
    pub checkpoint: Option<i64>,
    /// What.
    pub what: What,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = match self.chain {
            Some(Chain::Log) => "audit_log",
            _ => "history",
        };
        match (self.chain, self.checkpoint) {
            (Some(chain), _) => write!(f, "{chain}")?,
            (None, Some(id)) => write!(f, "checkpoint {id}")?,
            (None, None) => f.write_str("audit trail")?,
        }
        match (self.row_id, self.seq) {
            (Some(id), Some(seq)) => write!(f, ", {table} row {id} (seq {seq})")?,
            (None, Some(seq)) => write!(f, ", seq {seq}")?,
            _ => {}
        }
        f.write_str(": ")?;
        match &self.what {
            What::ContentChanged => f.write_str(
                "content changed (its hash does not match its content and the row before it)",
            ),
            What::RowsMissingBefore { after: 0 } => {
                f.write_str("row missing before it (the chain does not start at seq 1)")
            }
            What::RowsMissingBefore { after } => write!(
                f,
                "row missing before it (the row before it is seq {after})"
            ),
            What::RowsMissingAtEnd { ends_at, head } => write!(
                f,
                "rows deleted at the end (the chain ends at seq {ends_at}, its head is at seq {head})"
            ),
            What::RowInserted { head: Some(head) } => write!(
                f,
                "row inserted (past the chain's head at seq {head}, around the trigger)"
            ),
            What::RowInserted { head: None } => {
                f.write_str("row inserted (its chain has no head: written around the trigger)")
            }
            What::SeqBelowOne => f.write_str("row inserted (numbered below 1, around the trigger)"),
            What::HeadDiffers => f.write_str("the chain's head differs from its last row"),
            What::DiffersFromCheckpoint { checkpoint } => write!(
                f,
                "differs from checkpoint {checkpoint} (which signed another hash for this row: it or a row before it was changed)"
            ),
            What::MissingSinceCheckpoint { checkpoint } => write!(
                f,
                "row missing (checkpoint {checkpoint} signed the chain up to it)"
            ),
            What::CheckpointBroken { why } => write!(f, "broken: {why}"),
            What::SignedByAnotherKey { public_key } => write!(
                f,
                "signed by another key ({public_key}), not one this verifier trusts"
            ),
            What::BadSignature => f.write_str("bad signature (not made by the trusted key)"),
        }
    }
}

/// The latest checkpoint, for the operator to note down (a copy kept elsewhere shows if
/// checkpoints were later deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRef {
    /// Its id.
    pub id: i64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Its hash (hex).
    pub hash: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Only rows and checkpoints from then on were checked.
    pub since: Option<DateTime<Utc>>,
    /// Application chains recomputed.
    pub chains: u64,
    /// History rows recomputed.
    pub rows: u64,
    /// `audit_log` rows recomputed.
    pub log_rows: u64,
    /// Checkpoints checked (chain, digest, signature).
    pub checkpoints: u64,
    /// The latest checkpoint.
    pub latest_checkpoint: Option<CheckpointRef>,
    /// Chains changed since the last checkpoint: their newest rows are only hash-chained.
    pub unsealed_chains: u64,
    /// What does not match, rows first (in chain order), then heads, then checkpoints; at
    /// most [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// How many problems there were in all.
    pub problem_count: u64,
}

impl Report {
    /// Everything matched.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    /// The first thing that does not match.
    pub fn first(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

/// Problems of one phase, capped.
#[derive(Default)]
struct Found {
    list: Vec<Problem>,
    total: u64,
}

impl Found {
    fn push(&mut self, problem: Problem) {
        self.total += 1;
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(problem);
        }
    }

    fn row(&mut self, chain: Chain, seq: i64, row_id: Option<i64>, what: What) {
        self.push(Problem {
            chain: Some(chain),
            seq: Some(seq),
            row_id,
            checkpoint: None,
            what,
        });
    }
}

/// Recomputes every chain (from `since` on: the row before is then taken as given) and every
/// checkpoint, compares the heads and what the checkpoints signed with the rows, and checks
/// each signature with one of `trusted` — never with the key stored in the database, which a
/// forger would have replaced with their own.
pub async fn verify(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    trusted: &[VerifyingKey],
) -> sqlx::Result<Report> {
    let mut report = Report {
        since,
        ..Report::default()
    };
    let mut checkpoints = Found::default();
    let bad_checkpoints =
        verify_checkpoints(pool, since, trusted, &mut report, &mut checkpoints).await?;
    let mut rows = Found::default();
    verify_history(pool, since, &mut report, &mut rows).await?;
    verify_log(pool, since, &mut report, &mut rows).await?;
    let mut heads = Found::default();
    verify_heads(pool, since, &mut heads).await?;
    verify_signed_heads(pool, since, &bad_checkpoints, &mut heads).await?;
    report.unsealed_chains = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM audit_heads WHERE NOT sealed)
              + (SELECT count(*) FROM audit_log_head WHERE NOT sealed)",
    )
    .fetch_one(pool)
    .await
    .map(|n: i64| u64::try_from(n).unwrap_or(0))?;
    for found in [rows, heads, checkpoints] {
        report.problem_count += found.total;
        let room = MAX_PROBLEMS.saturating_sub(report.problems.len());
        report.problems.extend(found.list.into_iter().take(room));
    }
    Ok(report)
}

/// The checkpoints' chain, digests and signatures; returns the ids of the bad ones.
async fn verify_checkpoints(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    trusted: &[VerifyingKey],
    report: &mut Report,
    found: &mut Found,
) -> sqlx::Result<std::collections::BTreeSet<i64>> {
    // From the last checkpoint before `since` (taken as given) on; all of them without.
    let mut rows = sqlx::query(
        "WITH start AS (
             SELECT coalesce(max(id), 0) AS id FROM audit_checkpoints
             WHERE $1::timestamptz IS NOT NULL AND at < $1)
         SELECT c.id, c.at, c.prev_hash, c.heads_digest, c.heads, c.hash, c.signature,
                c.public_key, c.at < $1 AS anchor, h.application_id, h.seq AS head_seq,
                h.hash AS head_hash
         FROM audit_checkpoints c
         LEFT JOIN audit_checkpoint_heads h ON h.checkpoint_id = c.id
         WHERE c.id >= (SELECT id FROM start)
         ORDER BY c.id",
    )
    .bind(since)
    .fetch(pool);
    let mut bad = std::collections::BTreeSet::new();
    let mut previous: Option<[u8; 32]> = None;
    let mut current: Option<StoredCheckpoint> = None;
    while let Some(row) = rows.try_next().await? {
        let id: i64 = row.get("id");
        if current.as_ref().is_none_or(|c| c.id != id) {
            if let Some(done) = current.take() {
                previous = Some(done.check(previous, trusted, report, found, &mut bad));
            }
            current = Some(StoredCheckpoint {
                id,
                at: row.get("at"),
                prev_hash: row.get("prev_hash"),
                heads_digest: row.get("heads_digest"),
                heads_count: row.get("heads"),
                hash: row.get("hash"),
                signature: row.get("signature"),
                public_key: row.get("public_key"),
                anchor: row.get::<Option<bool>, _>("anchor").unwrap_or(false),
                heads: Vec::new(),
            });
        }
        let head_seq: Option<i64> = row.get("head_seq");
        if let (Some(checkpoint), Some(seq)) = (current.as_mut(), head_seq) {
            let hash: Vec<u8> = row.get("head_hash");
            checkpoint.heads.push(Head {
                chain: Chain::from_column(row.get("application_id")),
                seq,
                // A stored hash of another length cannot match anything: the digest shows it.
                hash: bytes_32(&hash).unwrap_or([0xff; 32]),
            });
        }
    }
    if let Some(done) = current.take() {
        done.check(previous, trusted, report, found, &mut bad);
    }
    Ok(bad)
}

/// A checkpoint as read, with its heads.
struct StoredCheckpoint {
    id: i64,
    at: DateTime<Utc>,
    prev_hash: Vec<u8>,
    heads_digest: Vec<u8>,
    heads_count: i32,
    hash: Vec<u8>,
    signature: Vec<u8>,
    public_key: Vec<u8>,
    anchor: bool,
    heads: Vec<Head>,
}

impl StoredCheckpoint {
    /// Checks it after `previous` (the stored hash of the one before; `None`: it is the
    /// first); returns its stored hash for the next one.
    fn check(
        self,
        previous: Option<[u8; 32]>,
        trusted: &[VerifyingKey],
        report: &mut Report,
        found: &mut Found,
        bad: &mut std::collections::BTreeSet<i64>,
    ) -> [u8; 32] {
        let stored_hash = bytes_32(&self.hash).unwrap_or([0xff; 32]);
        report.latest_checkpoint = Some(CheckpointRef {
            id: self.id,
            at: self.at,
            hash: hex::encode(&self.hash),
        });
        if self.anchor {
            // Before `since`: taken as given.
            return stored_hash;
        }
        report.checkpoints += 1;
        let broken = |why: String| What::CheckpointBroken { why };
        let digest = heads_digest(&self.heads);
        let prev_hash = bytes_32(&self.prev_hash);
        let what = if prev_hash != Some(previous.unwrap_or(GENESIS)) {
            Some(broken(match previous {
                None => "it does not start the chain of checkpoints (a checkpoint before it was deleted?)".into(),
                Some(_) => "it does not follow the checkpoint before it (one between them was deleted, or either was changed)".into(),
            }))
        } else if usize::try_from(self.heads_count).ok() != Some(self.heads.len())
            || self.heads_digest != digest
        {
            Some(broken(
                "its heads were changed (their digest does not match)".into(),
            ))
        } else if checkpoint_hash(&prev_hash.unwrap_or(GENESIS), self.at, &digest) != stored_hash {
            Some(broken(
                "its hash does not match its time, heads and predecessor".into(),
            ))
        } else {
            let key = trusted
                .iter()
                .find(|key| key.as_bytes().as_slice() == self.public_key.as_slice());
            match key {
                None => Some(What::SignedByAnotherKey {
                    public_key: hex::encode(&self.public_key),
                }),
                Some(key) => {
                    let signed = Signature::from_slice(&self.signature)
                        .is_ok_and(|signature| key.verify_strict(&stored_hash, &signature).is_ok());
                    (!signed).then_some(What::BadSignature)
                }
            }
        };
        if let Some(what) = what {
            bad.insert(self.id);
            found.push(Problem {
                chain: None,
                seq: None,
                row_id: None,
                checkpoint: Some(self.id),
                what,
            });
        }
        stored_hash
    }
}

/// Walks one chain's rows in seq order: continuity and each link.
struct Walk {
    chain: Chain,
    /// The previous row's stored hash and seq, once there is one.
    previous: Option<([u8; 32], i64)>,
}

impl Walk {
    fn new(chain: Chain) -> Self {
        Self {
            chain,
            previous: None,
        }
    }

    /// Checks one row; `anchor`: before `since`, taken as given.
    fn step(
        &mut self,
        found: &mut Found,
        row_id: i64,
        seq: i64,
        stored: &[u8],
        anchor: bool,
        content: impl FnOnce() -> Vec<u8>,
    ) {
        let stored_hash = bytes_32(stored);
        if anchor {
            self.previous = Some((stored_hash.unwrap_or([0xff; 32]), seq));
            return;
        }
        let (previous_hash, previous_seq) = self.previous.unwrap_or((GENESIS, 0));
        if seq < 1 {
            // Rows come in seq order and seq is unique, so these come first; the chain
            // starts after them.
            found.row(self.chain, seq, Some(row_id), What::SeqBelowOne);
            return;
        }
        if seq != previous_seq + 1 {
            let what = What::RowsMissingBefore {
                after: previous_seq,
            };
            found.row(self.chain, seq, Some(row_id), what);
        } else if stored_hash != Some(link(&previous_hash, &content())) {
            found.row(self.chain, seq, Some(row_id), What::ContentChanged);
        }
        // Go on from what is stored, so that one bad row is named once, not with every
        // row after it.
        self.previous = Some((stored_hash.unwrap_or([0xff; 32]), seq));
    }
}

async fn verify_history(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    report: &mut Report,
    found: &mut Found,
) -> sqlx::Result<()> {
    let mut rows = sqlx::query(
        "WITH firsts AS (
             SELECT application_id, min(seq) AS first FROM application_history
             WHERE $1::timestamptz IS NULL OR at >= $1 GROUP BY application_id)
         SELECT h.id, h.application_id, h.seq, h.at, h.status, h.step, h.detail, h.hash,
                h.seq < f.first AS anchor
         FROM firsts f
         JOIN application_history h ON h.application_id = f.application_id AND h.seq >= f.first - 1
         ORDER BY h.application_id, h.seq",
    )
    .bind(since)
    .fetch(pool);
    let mut walk: Option<Walk> = None;
    while let Some(row) = rows.try_next().await? {
        let application_id: Uuid = row.get("application_id");
        let chain = Chain::Application(application_id);
        if walk.as_ref().is_none_or(|w| w.chain != chain) {
            report.chains += 1;
            walk = Some(Walk::new(chain));
        }
        let walk = walk.as_mut().expect("set above");
        let anchor: bool = row.get("anchor");
        if !anchor {
            report.rows += 1;
        }
        let seq: i32 = row.get("seq");
        let hash: Vec<u8> = row.get("hash");
        walk.step(found, row.get("id"), i64::from(seq), &hash, anchor, || {
            history_content(
                application_id,
                seq,
                row.get("at"),
                row.get("status"),
                row.get("step"),
                row.get("detail"),
            )
        });
    }
    Ok(())
}

async fn verify_log(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    report: &mut Report,
    found: &mut Found,
) -> sqlx::Result<()> {
    let mut rows = sqlx::query(
        "WITH first AS (
             SELECT min(seq) AS first FROM audit_log WHERE $1::timestamptz IS NULL OR at >= $1)
         SELECT l.id, l.seq, l.at, l.actor, l.action, l.subject, l.detail::text AS detail,
                l.hash, l.seq < f.first AS anchor
         FROM first f JOIN audit_log l ON l.seq >= f.first - 1
         ORDER BY l.seq",
    )
    .bind(since)
    .fetch(pool);
    let mut walk = Walk::new(Chain::Log);
    while let Some(row) = rows.try_next().await? {
        let anchor: bool = row.get("anchor");
        if !anchor {
            report.log_rows += 1;
        }
        let seq: i64 = row.get("seq");
        let hash: Vec<u8> = row.get("hash");
        walk.step(found, row.get("id"), seq, &hash, anchor, || {
            log_content(
                seq,
                row.get("at"),
                row.get("actor"),
                row.get("action"),
                row.get("subject"),
                row.get("detail"),
            )
        });
    }
    Ok(())
}

/// Each chain's last row against its head (`audit_heads`, `audit_log_head`).
async fn verify_heads(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    found: &mut Found,
) -> sqlx::Result<()> {
    let differing = sqlx::query(
        "SELECT h.application_id, h.seq AS head_seq, h.hash AS head_hash,
                l.id, l.seq::bigint AS last_seq, l.hash AS last_hash
         FROM audit_heads h
         LEFT JOIN LATERAL (
             SELECT id, seq, hash FROM application_history r
             WHERE r.application_id = h.application_id ORDER BY seq DESC LIMIT 1) l ON true
         WHERE l.seq IS DISTINCT FROM h.seq OR l.hash IS DISTINCT FROM h.hash
         UNION ALL
         SELECT NULL, h.seq, h.hash, l.id, l.seq, l.hash
         FROM audit_log_head h
         LEFT JOIN LATERAL (SELECT id, seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1) l ON true
         WHERE coalesce(l.seq, 0) <> h.seq OR (l.seq IS NOT NULL AND l.hash <> h.hash)
         ORDER BY 1 NULLS LAST",
    )
    .fetch_all(pool)
    .await?;
    for row in differing {
        let chain = Chain::from_column(row.get("application_id"));
        let head: i64 = row.get("head_seq");
        let last: Option<i64> = row.get("last_seq");
        let row_id: Option<i64> = row.get("id");
        match last {
            Some(last) if last > head => {
                found.row(chain, last, row_id, What::RowInserted { head: Some(head) });
            }
            Some(last) if last == head => found.row(chain, last, row_id, What::HeadDiffers),
            _ => found.row(
                chain,
                head,
                None,
                What::RowsMissingAtEnd {
                    ends_at: last.unwrap_or(0),
                    head,
                },
            ),
        }
    }
    // History without a head: written with the trigger off.
    let headless: Vec<(Uuid, i64, i32)> = sqlx::query_as(
        "SELECT DISTINCT ON (r.application_id) r.application_id, r.id, r.seq
         FROM application_history r
         WHERE ($1::timestamptz IS NULL OR r.at >= $1)
           AND NOT EXISTS (SELECT FROM audit_heads h WHERE h.application_id = r.application_id)
         ORDER BY r.application_id, r.seq",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    for (application_id, id, seq) in headless {
        found.row(
            Chain::Application(application_id),
            i64::from(seq),
            Some(id),
            What::RowInserted { head: None },
        );
    }
    Ok(())
}

/// What each checkpoint signed against the rows there are now (checkpoints that are bad
/// themselves are reported as such, not here).
async fn verify_signed_heads(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    bad: &std::collections::BTreeSet<i64>,
    found: &mut Found,
) -> sqlx::Result<()> {
    let mut rows = sqlx::query(
        "WITH checked AS (
             SELECT id FROM audit_checkpoints WHERE $1::timestamptz IS NULL OR at >= $1)
         SELECT c.checkpoint_id, c.application_id, c.seq, r.id
         FROM audit_checkpoint_heads c
         JOIN checked k ON k.id = c.checkpoint_id
         LEFT JOIN application_history r ON r.application_id = c.application_id AND r.seq = c.seq
         WHERE c.application_id IS NOT NULL AND r.hash IS DISTINCT FROM c.hash
         UNION ALL
         SELECT c.checkpoint_id, NULL, c.seq, l.id
         FROM audit_checkpoint_heads c
         JOIN checked k ON k.id = c.checkpoint_id
         LEFT JOIN audit_log l ON l.seq = c.seq
         WHERE c.application_id IS NULL AND l.hash IS DISTINCT FROM c.hash
         ORDER BY 2 NULLS LAST, 3, 1",
    )
    .bind(since)
    .fetch(pool);
    // One problem per row (the first checkpoint that signed it).
    let mut named = std::collections::BTreeSet::new();
    while let Some(row) = rows.try_next().await? {
        let checkpoint: i64 = row.get("checkpoint_id");
        if bad.contains(&checkpoint) {
            continue;
        }
        let chain = Chain::from_column(row.get("application_id"));
        let seq: i64 = row.get("seq");
        if !named.insert((chain, seq)) {
            continue;
        }
        let row_id: Option<i64> = row.get("id");
        let what = match row_id {
            Some(_) => What::DiffersFromCheckpoint { checkpoint },
            None => What::MissingSinceCheckpoint { checkpoint },
        };
        found.row(chain, seq, row_id, what);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap()
    }

    #[test]
    fn history_content_is_length_prefixed_and_big_endian() {
        let id = Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let content = history_content(id, 2, at(), "received", "intake", None);
        let mut expected = id.as_bytes().to_vec();
        expected.extend([0, 0, 0, 2]);
        expected.extend(1_800_000_000_123_456i64.to_be_bytes());
        expected.extend([0, 0, 0, 8]);
        expected.extend(b"received");
        expected.extend([0, 0, 0, 6]);
        expected.extend(b"intake");
        expected.extend([0xff, 0xff, 0xff, 0xff]);
        assert_eq!(content, expected);
        // Bytes, not characters: "é" is two.
        let accented = history_content(id, 2, at(), "received", "intake", Some("é"));
        assert_eq!(&accented[accented.len() - 6..], &[0, 0, 0, 2, 0xc3, 0xa9]);
        // An empty detail is not a missing one.
        assert_ne!(
            history_content(id, 2, at(), "received", "intake", Some("")),
            content
        );
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_content() {
        let id = Uuid::nil();
        assert_ne!(
            history_content(id, 1, at(), "ab", "c", None),
            history_content(id, 1, at(), "a", "bc", None)
        );
        assert_ne!(
            log_content(1, at(), "a", "b", None, "{}"),
            log_content(1, at(), "a", "b", Some(""), "{}")
        );
    }

    #[test]
    fn the_digest_ignores_order_and_tells_the_log_from_an_application() {
        let a = Head {
            chain: Chain::Application(Uuid::from_u128(1)),
            seq: 3,
            hash: [1; 32],
        };
        let log = Head {
            chain: Chain::Log,
            seq: 3,
            hash: [1; 32],
        };
        let nil = Head {
            chain: Chain::Application(Uuid::nil()),
            ..log
        };
        assert_eq!(heads_digest(&[a, log]), heads_digest(&[log, a]));
        assert_ne!(heads_digest(&[log]), heads_digest(&[nil]));
        assert_ne!(heads_digest(&[a]), heads_digest(&[Head { seq: 4, ..a }]));
    }

    #[test]
    fn a_checkpoint_hash_covers_its_predecessor_time_and_heads() {
        let base = checkpoint_hash(&GENESIS, at(), &[2; 32]);
        assert_ne!(base, checkpoint_hash(&[1; 32], at(), &[2; 32]));
        assert_ne!(
            base,
            checkpoint_hash(&GENESIS, at() + chrono::Duration::microseconds(1), &[2; 32])
        );
        assert_ne!(base, checkpoint_hash(&GENESIS, at(), &[3; 32]));
    }

    #[test]
    fn a_walk_names_each_bad_row_once() {
        let chain = Chain::Application(Uuid::from_u128(9));
        let content = |seq: i32| history_content(Uuid::from_u128(9), seq, at(), "s", "t", None);
        let mut hashes = vec![GENESIS];
        for seq in 1..=5 {
            let next = link(hashes.last().unwrap(), &content(seq));
            hashes.push(next);
        }
        let run = |rows: &[(i64, [u8; 32], i32)]| {
            let mut found = Found::default();
            let mut walk = Walk::new(chain);
            for (seq, hash, content_seq) in rows {
                walk.step(&mut found, *seq * 10, *seq, hash, false, || {
                    content(*content_seq)
                });
            }
            found.list
        };
        let good: Vec<_> = (1..=5).map(|s| (s, hashes[s as usize], s as i32)).collect();
        assert!(run(&good).is_empty());
        // Row 3's content changed: only row 3 is named.
        let mut changed = good.clone();
        changed[2].2 = 1;
        let found = run(&changed);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].seq, found[0].what.clone()),
            (Some(3), What::ContentChanged)
        );
        // Row 3 deleted: row 4 is named.
        let mut deleted = good.clone();
        deleted.remove(2);
        let found = run(&deleted);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].row_id, found[0].what.clone()),
            (Some(40), What::RowsMissingBefore { after: 2 })
        );
        assert_eq!(
            found[0].to_string(),
            format!(
                "application {}, history row 40 (seq 4): row missing before it (the row before it is seq 2)",
                Uuid::from_u128(9)
            )
        );
        // A row numbered 0 ahead of the chain: named, and the chain still starts at seq 1.
        let mut numbered_zero = vec![(0, [7; 32], 0)];
        numbered_zero.extend(good.clone());
        let found = run(&numbered_zero);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].seq, &found[0].what),
            (Some(0), &What::SeqBelowOne)
        );
    }
}
