//! Step `register`: the registry change of each kind (CONTRACT §4, §7), in the runtime's
//! transaction, so the change, its `uid_registry_history` row, the ledger and the status commit
//! together or not at all.
//!
//! - `issue`: `already_issued` if the person has a UID, else a new active row (no password yet:
//!   `send-sms` sets it). The phone's uniqueness is the database's: a lost race is `phone_in_use`.
//! - `block`: `not_issued` / `already_blocked` / blocked (nothing is deleted).
//! - `unblock`: `not_issued` / `not_blocked` / active again, same row and history.
//! - `change_phone`: `not_issued` / `phone_in_use` / the new phone.

use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use uidflow::applications::Loaded;
use uidflow::domain::{Kind, Reason, ReasonCode, mask_phone};
use uidflow::messages::WorkItem;
use uidflow::route;
use uidflow::runtime::{Outcome, Step, StepContext, StepError};
use uuid::Uuid;

/// The step.
pub struct Register;

fn rejected(code: ReasonCode, detail: &str) -> Outcome {
    Outcome::Rejected(Reason {
        code,
        detail: detail.into(),
        errors: vec![],
    })
}

/// Appends a row to `uid_registry_history`.
pub async fn record(
    tx: &mut PgConnection,
    uid: &str,
    application_id: Uuid,
    change: &str,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO uid_registry_history (uid, application_id, change, detail) VALUES ($1, $2, $3, $4)")
        .bind(uid)
        .bind(application_id)
        .bind(change)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Applies the registry change of `application`; returns the step's decision.
pub async fn apply(tx: &mut PgConnection, application: &Loaded) -> Result<Outcome, StepError> {
    let uid = application.identification_number.as_str();
    let id = application.application_id;
    let current = sqlx::query("SELECT status, phone FROM uid_registry WHERE uid = $1 FOR UPDATE")
        .bind(uid)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| {
            (
                row.get::<String, _>("status"),
                row.get::<String, _>("phone"),
            )
        });
    match (application.kind, current) {
        (Kind::Issue, Some(_)) => Ok(rejected(
            ReasonCode::AlreadyIssued,
            "this person already has a UID",
        )),
        (Kind::Issue, None) => {
            let phone = application.phone.as_ref().ok_or_else(|| {
                StepError::permanent(anyhow::anyhow!("an issue application without a phone"))
            })?;
            let inserted = sqlx::query(
                "INSERT INTO uid_registry (uid, phone, status, password_temporary, issued_at, updated_at)
                 VALUES ($1, $2, 'active', true, now(), now()) ON CONFLICT DO NOTHING",
            )
            .bind(uid)
            .bind(phone.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // The uid did not exist a moment ago (we looked), so the phone is taken — or a
                // concurrent issue for the same person won: tell which.
                let taken_by_uid: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM uid_registry WHERE uid = $1)")
                        .bind(uid)
                        .fetch_one(&mut *tx)
                        .await?;
                return Ok(if taken_by_uid {
                    rejected(ReasonCode::AlreadyIssued, "this person already has a UID")
                } else {
                    rejected(
                        ReasonCode::PhoneInUse,
                        "the phone number belongs to another UID",
                    )
                });
            }
            record(
                tx,
                uid,
                id,
                "issued",
                json!({"phone": mask_phone(phone.as_str())}),
            )
            .await?;
            Ok(Outcome::Next)
        }
        (_, None) => Ok(rejected(ReasonCode::NotIssued, "this person has no UID")),
        (Kind::Block, Some((status, _))) if status == "blocked" => Ok(rejected(
            ReasonCode::AlreadyBlocked,
            "the UID is already blocked",
        )),
        (Kind::Block, Some(_)) => {
            sqlx::query("UPDATE uid_registry SET status = 'blocked', blocked_at = now(), updated_at = now() WHERE uid = $1")
                .bind(uid)
                .execute(&mut *tx)
                .await?;
            record(tx, uid, id, "blocked", json!({})).await?;
            Ok(Outcome::Next)
        }
        (Kind::Unblock, Some((status, _))) if status == "active" => {
            Ok(rejected(ReasonCode::NotBlocked, "the UID is not blocked"))
        }
        (Kind::Unblock, Some(_)) => {
            sqlx::query("UPDATE uid_registry SET status = 'active', blocked_at = NULL, updated_at = now() WHERE uid = $1")
                .bind(uid)
                .execute(&mut *tx)
                .await?;
            record(tx, uid, id, "unblocked", json!({})).await?;
            Ok(Outcome::Next)
        }
        (Kind::ChangePhone, Some((_, old_phone))) => {
            let phone = application.phone.as_ref().ok_or_else(|| {
                StepError::permanent(anyhow::anyhow!(
                    "a change_phone application without a phone"
                ))
            })?;
            // A savepoint: a unique violation must not abort the runtime's transaction.
            let mut savepoint = tx.begin().await?;
            let updated = sqlx::query(
                "UPDATE uid_registry SET phone = $2, updated_at = now() WHERE uid = $1",
            )
            .bind(uid)
            .bind(phone.as_str())
            .execute(&mut *savepoint)
            .await;
            match updated {
                Err(error) if is_unique_violation(&error) => {
                    savepoint.rollback().await?;
                    Ok(rejected(
                        ReasonCode::PhoneInUse,
                        "the phone number belongs to another UID",
                    ))
                }
                Err(error) => Err(error.into()),
                Ok(_) => {
                    savepoint.commit().await?;
                    let detail =
                        json!({"from": mask_phone(&old_phone), "to": mask_phone(phone.as_str())});
                    record(tx, uid, id, "phone_changed", detail).await?;
                    Ok(Outcome::Next)
                }
            }
        }
    }
}

impl Step for Register {
    const NAME: &'static str = route::REGISTER;
    type Prepared = ();
    const CALLS_OUT: bool = false;

    async fn call(
        &self,
        _cx: &StepContext,
        _application: &Loaded,
        _item: &WorkItem,
    ) -> Result<(), StepError> {
        Ok(())
    }

    async fn commit(
        &self,
        _cx: &StepContext,
        tx: &mut PgConnection,
        application: &Loaded,
        _item: &WorkItem,
        _prepared: (),
    ) -> Result<Outcome, StepError> {
        apply(tx, application).await
    }
}
