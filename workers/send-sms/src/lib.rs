//! Step `send-sms`: the last step of every kind (CONTRACT §4, §5.2).
//!
//! `issue` and `unblock` get a new temporary password. It is generated here, hashed (argon2id),
//! written to the registry, and sent — all inside the runtime's transaction, which holds the
//! application's row lock, so two attempts never interleave. The password exists only in this
//! process's memory between generation and the gateway's answer: it is never logged, queued or
//! stored in clear. Each attempt makes a new password and a new `message_id`; the hash of the
//! last attempt that committed is the one in the registry, and that attempt's SMS is the last
//! one the gateway accepted. A crash after the gateway accepted but before the commit leaves a
//! password that never worked; the redelivery sends a new one, which is then the last SMS.
//! (Why and what remains: ARCHITECTURE.md, "the temporary password".)
//!
//! `block` and `change_phone` end with a notification whose `message_id` is derived from the
//! application id, so every retry is deduplicated by the gateway.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{PgConnection, Row};
use uidflow::applications::Loaded;
use uidflow::domain::Kind;
use uidflow::messages::WorkItem;
use uidflow::route;
use uidflow::runtime::{Outcome, Step, StepContext, StepError};
use uidflow::secrets::{self, HashParams};
use uuid::Uuid;

use uidflow::sms::{SmsClient, texts};

/// The step.
pub struct SendSms {
    client: SmsClient,
    hash_params: HashParams,
}

impl SendSms {
    /// A step that sends through the gateway at `base_url`.
    pub fn new(base_url: &str, client: reqwest::Client, hash_params: HashParams) -> Self {
        Self {
            client: SmsClient::new(base_url, client),
            hash_params,
        }
    }
}

/// The `message_id` of an application's notification SMS: the same for every attempt.
pub fn notification_message_id(application_id: Uuid) -> Uuid {
    Uuid::new_v5(&application_id, b"uidflow:notification")
}

async fn registry_phone(conn: &mut PgConnection, uid: &str) -> Result<String, StepError> {
    let row = sqlx::query("SELECT phone FROM uid_registry WHERE uid = $1")
        .bind(uid)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StepError::permanent(anyhow::anyhow!(
                "the registry has no row for this application's UID"
            ))
        })?;
    Ok(row.get("phone"))
}

impl Step for SendSms {
    const NAME: &'static str = route::SEND_SMS;
    type Prepared = ();

    async fn call(
        &self,
        cx: &StepContext,
        application: &Loaded,
        _item: &WorkItem,
    ) -> Result<(), StepError> {
        let text = match application.kind {
            Kind::Block => texts::blocked(),
            Kind::ChangePhone => texts::phone_changed(),
            Kind::Issue | Kind::Unblock => return Ok(()),
        };
        let mut conn = cx.pool.acquire().await?;
        let phone = registry_phone(&mut conn, application.identification_number.as_str()).await?;
        drop(conn);
        let message_id = notification_message_id(application.application_id);
        self.client.send(message_id, &phone, &text).await?;
        Ok(())
    }

    async fn commit(
        &self,
        cx: &StepContext,
        tx: &mut PgConnection,
        application: &Loaded,
        _item: &WorkItem,
        _prepared: (),
    ) -> Result<Outcome, StepError> {
        if !matches!(application.kind, Kind::Issue | Kind::Unblock) {
            return Ok(Outcome::Next);
        }
        let uid = application.identification_number.as_str();
        let phone = registry_phone(tx, uid).await?;
        let password = secrets::generate_password();
        let hash = secrets::hash_off_thread(password.clone(), self.hash_params).await;
        let ttl = cx.settings.temp_password_ttl;
        let expires_at = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        sqlx::query(
            "UPDATE uid_registry SET password_hash = $2, password_temporary = true, password_expires_at = $3,
               updated_at = now() WHERE uid = $1",
        )
        .bind(uid)
        .bind(&hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        uidflow_registry_history(tx, uid, application.application_id, expires_at).await?;
        let hours = ttl.as_secs().div_ceil(3600).max(1);
        let text = texts::temporary_password(password.expose_secret(), hours);
        // A new message id per attempt: each attempt carries a new password.
        self.client.send(Uuid::new_v4(), &phone, &text).await?;
        tracing::info!(valid_for = %uidflow::config::format_duration(Duration::from_secs(ttl.as_secs())), "temporary password sent");
        Ok(Outcome::Next)
    }
}

async fn uidflow_registry_history(
    tx: &mut PgConnection,
    uid: &str,
    application_id: Uuid,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO uid_registry_history (uid, application_id, change, detail) VALUES ($1, $2, 'password_reset', $3)")
        .bind(uid)
        .bind(application_id)
        .bind(json!({"temporary": true, "expires_at": expires_at}))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
