//! The consumer of `uid.intake.phone-confirmation` (CONTRACT §2.2): every message counts.

use std::sync::Arc;

use serde::Deserialize;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uidflow::applications::{self, Loaded};
use uidflow::config::Settings;
use uidflow::consumer::{self, ConsumerConfig, Handled, Handler, Message};
use uidflow::dead_letters::{self, ErrorKind, Parked};
use uidflow::domain::{Reason, ReasonCode, Status};
use uidflow::intake::{Decoded, decode};
use uidflow::route;
use uidflow::runtime::hand_off;
use uidflow::topology::PHONE_CONFIRMATION_QUEUE;
use uidflow::vault::Vault;
use uuid::Uuid;

/// The third wrong code rejects the application.
pub const MAX_WRONG_CODES: i32 = 3;

/// The step name in history rows and dead letters.
const STEP: &str = "phone-confirmation";

#[derive(Debug, Deserialize)]
struct Confirmation {
    application_id: Uuid,
    code: String,
}

/// Consumes phone confirmations until cancelled.
pub async fn run_consumer(
    settings: Settings,
    pool: PgPool,
    vault: Arc<Vault>,
    prefetch: u16,
    token: CancellationToken,
) {
    let config = ConsumerConfig {
        role: "phone-confirmation",
        queue: PHONE_CONFIRMATION_QUEUE.into(),
        prefetch,
    };
    consumer::run(
        settings,
        config,
        Arc::new(Confirmations { pool, vault }),
        token,
    )
    .await;
}

struct Confirmations {
    pool: PgPool,
    vault: Arc<Vault>,
}

/// What happened to one confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The right code: on to registering.
    Confirmed,
    /// A wrong code, `n` of [`MAX_WRONG_CODES`].
    Wrong(i32),
    /// The application was refused (third wrong code, or too late).
    Rejected,
    /// The application was not waiting for a code; noted in its history.
    Ignored,
}

impl Handler for Confirmations {
    async fn handle(&self, message: &Message) -> anyhow::Result<Handled> {
        let mut tx = self.pool.begin().await?;
        let parsed = match decode(&message.body) {
            Decoded::Malformed(why) => Err((ErrorKind::Malformed, why, None)),
            Decoded::Object(object) => {
                let id = object
                    .get("application_id")
                    .and_then(|v| v.as_str())
                    .and_then(|s| Uuid::parse_str(s).ok());
                if !uidflow::validation::phone_confirmation_schema_is_valid(&object) {
                    Err((
                        ErrorKind::Invalid,
                        "not a phone confirmation: application_id must be a UUID and code 6 digits"
                            .to_owned(),
                        id,
                    ))
                } else {
                    serde_json::from_value::<Confirmation>(object).map_err(|e| {
                        (
                            ErrorKind::Invalid,
                            format!("not a phone confirmation ({e})"),
                            id,
                        )
                    })
                }
            }
        };
        match parsed {
            Err((kind, why, id)) => {
                if let Some(id) = id
                    && applications::lock_status(&mut tx, id).await?.is_some()
                {
                    applications::note(
                        &mut tx,
                        id,
                        STEP,
                        &format!("a confirmation message was refused: {why}"),
                    )
                    .await?;
                }
                let parked = Parked {
                    application_id: id,
                    step: STEP,
                    kind,
                    error: why,
                    reason_code: None,
                    message,
                    attempts: 1,
                    first_failed_at: message.received_at,
                };
                dead_letters::park(&mut tx, &self.vault, &parked).await?;
            }
            Ok(confirmation) => {
                match applications::load(&mut tx, &self.vault, confirmation.application_id, true)
                    .await?
                {
                    Some(application) => {
                        let verdict = check(&mut tx, &application, &confirmation.code).await?;
                        tracing::info!(application.id = %application.application_id, verdict = ?verdict, "phone confirmation handled");
                    }
                    None => {
                        let parked = Parked {
                            application_id: Some(confirmation.application_id),
                            step: STEP,
                            kind: ErrorKind::Invalid,
                            error: format!(
                                "no application {} is known",
                                confirmation.application_id
                            ),
                            reason_code: None,
                            message,
                            attempts: 1,
                            first_failed_at: message.received_at,
                        };
                        dead_letters::park(&mut tx, &self.vault, &parked).await?;
                    }
                }
            }
        }
        uidflow::outbox::commit(tx, &self.pool).await?;
        Ok(Handled::Ack)
    }
}

/// Checks `code` for a locked application and records the verdict (history, status, hand-off).
pub async fn check(
    tx: &mut sqlx::PgConnection,
    application: &Loaded,
    code: &str,
) -> anyhow::Result<Verdict> {
    let id = application.application_id;
    if application.status != Status::AwaitingPhoneConfirmation {
        let detail = format!(
            "a confirmation code arrived while the application is {}; it was not used",
            application.status.as_str()
        );
        applications::note(tx, id, STEP, &detail).await?;
        return Ok(Verdict::Ignored);
    }
    let row = sqlx::query(
        "SELECT code_hash, wrong_attempts, expires_at <= now() AS expired FROM phone_confirmations WHERE application_id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let reject = |detail: &str| Reason {
        code: ReasonCode::PhoneNotConfirmed,
        detail: detail.into(),
        errors: vec![],
    };
    if row.get::<bool, _>("expired") {
        let reason = reject("the confirmation code had expired");
        applications::transition(tx, id, Status::Rejected, STEP, Some(&reason), None).await?;
        return Ok(Verdict::Rejected);
    }
    let hash: String = row.get("code_hash");
    if uidflow::secrets::verify_off_thread(code.to_owned(), hash).await {
        applications::transition(
            tx,
            id,
            Status::Registering,
            STEP,
            None,
            Some("phone confirmed"),
        )
        .await?;
        let confirmed = Loaded {
            status: Status::Registering,
            ..application.clone()
        };
        hand_off(tx, &confirmed, route::CONFIRM_PHONE).await?;
        return Ok(Verdict::Confirmed);
    }
    let wrong: i32 = sqlx::query_scalar(
        "UPDATE phone_confirmations SET wrong_attempts = wrong_attempts + 1 WHERE application_id = $1 RETURNING wrong_attempts",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if wrong >= MAX_WRONG_CODES {
        let reason = reject(&format!("{MAX_WRONG_CODES} wrong confirmation codes"));
        applications::transition(tx, id, Status::Rejected, STEP, Some(&reason), None).await?;
        return Ok(Verdict::Rejected);
    }
    applications::note(
        tx,
        id,
        STEP,
        &format!("wrong confirmation code ({wrong} of {MAX_WRONG_CODES})"),
    )
    .await?;
    Ok(Verdict::Wrong(wrong))
}
