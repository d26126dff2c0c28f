//! Messages uidflow itself publishes: status events (`schemas/status-event.v1.json`) and the
//! hand-off to a step. Neither carries personal data: a step loads the application by id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Kind, Reason, Status};

/// One status change, published to `uid.events` as `application.<status>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// Unique per event; also the AMQP `message_id`, for consumers' deduplication.
    pub event_id: Uuid,
    /// The application.
    pub application_id: Uuid,
    /// Its kind, when readable.
    pub kind: Option<Kind>,
    /// Its issuing service, when valid.
    pub issuing_service: Option<String>,
    /// The new status.
    pub status: Status,
    /// The status before, `null` for the first.
    pub previous_status: Option<Status>,
    /// The step that made the change.
    pub step: String,
    /// Why, for `rejected` (and `failed`).
    pub reason: Option<Reason>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The hand-off to a step: which application, which attempt, and what for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The application.
    pub application_id: Uuid,
    /// The step to run.
    pub step: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Not to be run before this moment (a retry's wait, a `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// When the first attempt failed, for the dead letter's `x-uid-first-failed-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at: Option<DateTime<Utc>>,
    /// What the step is asked to do.
    #[serde(default, skip_serializing_if = "Purpose::is_run")]
    pub purpose: Purpose,
}

impl WorkItem {
    /// The first attempt of `step` for an application.
    pub fn first(application_id: Uuid, step: &str) -> Self {
        Self {
            application_id,
            step: step.to_owned(),
            attempt: 1,
            not_before: None,
            first_failed_at: None,
            purpose: Purpose::Run,
        }
    }
}

/// What a work item asks of its step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Purpose {
    /// Run the step (once: the ledger refuses a second time).
    #[default]
    Run,
    /// A phone-confirmation code's time is up: expire it if it is still the current one.
    ExpireCode {
        /// The code generation the timer was set for.
        generation: i32,
    },
}

impl Purpose {
    /// True for [`Purpose::Run`].
    pub fn is_run(&self) -> bool {
        matches!(self, Purpose::Run)
    }
}
