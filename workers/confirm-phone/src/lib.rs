//! Step `confirm-phone` (`issue`, `change_phone`) and the phone-confirmation consumer
//! (CONTRACT §2.2).
//!
//! The step refuses a phone that belongs to another UID (`phone_in_use`); otherwise it makes a
//! 6-digit code with a CSPRNG, stores only its argon2id hash (a new generation replaces the old:
//! only the code in the last SMS works), sends it, sets `awaiting_phone_confirmation` and starts
//! the expiry timer: a work item that comes back through the wait queue of `PHONE_CODE_TTL`, so
//! the code expires on time even when no confirmation arrives. Code generation and SMS happen
//! under the application's row lock, like the temporary password (see `send-sms`).
//!
//! The consumer of `uid.intake.phone-confirmation` checks each code against the hash: right →
//! `registering` and the register step; wrong → one attempt counted, the third is
//! `rejected phone_not_confirmed`; too late → the same. Confirmations are never deduplicated.
//! A code for an application that is not waiting for one is answered in its history.

mod consumer;

use std::time::Duration;

use chrono::Utc;
use secrecy::ExposeSecret;
use sqlx::{PgConnection, Row};
use uidflow::applications::Loaded;
use uidflow::domain::{Reason, ReasonCode, Status};
use uidflow::messages::{Purpose, WorkItem};
use uidflow::route;
use uidflow::runtime::{Outcome, Step, StepContext, StepError, Wait, enqueue_work};
use uidflow::secrets::{self, HashParams};
use uuid::Uuid;

pub use consumer::{MAX_WRONG_CODES, run_consumer};

/// The step.
pub struct ConfirmPhone {
    sms: uidflow::sms::SmsClient,
    hash_params: HashParams,
}

impl ConfirmPhone {
    /// A step that sends codes through the SMS gateway at `base_url`.
    pub fn new(sms_url: &str, client: reqwest::Client, hash_params: HashParams) -> Self {
        Self {
            sms: uidflow::sms::SmsClient::new(sms_url, client),
            hash_params,
        }
    }
}

fn not_confirmed(detail: &str) -> Outcome {
    Outcome::Rejected(Reason {
        code: ReasonCode::PhoneNotConfirmed,
        detail: detail.into(),
        errors: vec![],
    })
}

impl Step for ConfirmPhone {
    const NAME: &'static str = route::CONFIRM_PHONE;
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
        cx: &StepContext,
        tx: &mut PgConnection,
        application: &Loaded,
        item: &WorkItem,
        _prepared: (),
    ) -> Result<Outcome, StepError> {
        match item.purpose {
            Purpose::Run => self.send_code(cx, tx, application).await,
            Purpose::ExpireCode { generation } => {
                expire(tx, application, generation, cx.settings.phone_code_ttl).await
            }
        }
    }
}

impl ConfirmPhone {
    async fn send_code(
        &self,
        cx: &StepContext,
        tx: &mut PgConnection,
        application: &Loaded,
    ) -> Result<Outcome, StepError> {
        let id = application.application_id;
        let phone = application.phone.as_ref().ok_or_else(|| {
            StepError::permanent(anyhow::anyhow!("the application has no phone to confirm"))
        })?;
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM uid_registry WHERE phone = $1 AND uid <> $2)",
        )
        .bind(phone.as_str())
        .bind(application.identification_number.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Ok(Outcome::Rejected(Reason {
                code: ReasonCode::PhoneInUse,
                detail: "the phone number belongs to another UID".into(),
                errors: vec![],
            }));
        }
        let code = secrets::generate_code();
        let hash = secrets::hash_off_thread(code.clone(), self.hash_params).await;
        let ttl = cx.settings.phone_code_ttl;
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let generation: i32 = sqlx::query_scalar(
            "INSERT INTO phone_confirmations (application_id, code_hash, generation, wrong_attempts, sent_at, expires_at)
             VALUES ($1, $2, 1, 0, now(), $3)
             ON CONFLICT (application_id) DO UPDATE SET code_hash = EXCLUDED.code_hash,
               generation = phone_confirmations.generation + 1, wrong_attempts = 0,
               sent_at = EXCLUDED.sent_at, expires_at = EXCLUDED.expires_at
             RETURNING generation",
        )
        .bind(id)
        .bind(&hash)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        let timer = WorkItem {
            not_before: Some(expires_at),
            purpose: Purpose::ExpireCode { generation },
            ..WorkItem::first(id, route::CONFIRM_PHONE)
        };
        enqueue_work(tx, &timer, Some(Wait::Timer(ttl))).await?;
        let minutes = ttl.as_secs().div_ceil(60).max(1);
        let text = uidflow::sms::texts::confirmation_code(code.expose_secret(), minutes);
        self.sms.send(Uuid::new_v4(), phone.as_str(), &text).await?;
        tracing::info!(generation, "confirmation code sent");
        Ok(Outcome::Waiting(Status::AwaitingPhoneConfirmation))
    }
}

/// The expiry timer of code `generation` fired.
async fn expire(
    tx: &mut PgConnection,
    application: &Loaded,
    generation: i32,
    ttl: Duration,
) -> Result<Outcome, StepError> {
    if application.status != Status::AwaitingPhoneConfirmation {
        return Ok(Outcome::Nothing);
    }
    let row = sqlx::query("SELECT generation, expires_at <= now() AS expired FROM phone_confirmations WHERE application_id = $1")
        .bind(application.application_id)
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        Some(row)
            if row.get::<i32, _>("generation") == generation && row.get::<bool, _>("expired") =>
        {
            Ok(not_confirmed(&format!(
                "the confirmation code expired after {}",
                uidflow::config::format_duration(ttl)
            )))
        }
        _ => Ok(Outcome::Nothing),
    }
}
